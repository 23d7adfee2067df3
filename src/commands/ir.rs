//! `tessera ir`: parse, verify and print.

use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use tessera_ir::{print_with, PrintOptions, WeightMode};

#[derive(Clone, Copy, ValueEnum)]
pub enum Weights {
    /// Large constants as `summary(bytes, hash)`: readable, not runnable.
    Summary,
    /// Every constant in the text (`hex"..."` for large ones): runnable, large.
    Inline,
    /// Large constants in a sidecar file next to `--output` (FILE.weights): runnable and compact.
    Sidecar,
}

#[derive(Args)]
pub struct IrArgs {
    /// The graph to read (.tir).
    pub file: PathBuf,
    /// How to write constants larger than 16 elements.
    #[arg(long, value_enum, default_value_t = Weights::Summary)]
    pub weights: Weights,
    /// Write the printed graph here instead of stdout (required for `--weights sidecar`).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

pub fn run(args: IrArgs) -> anyhow::Result<ExitCode> {
    let g = super::load_graph(&args.file)?;
    let mut opts = PrintOptions {
        weights: match args.weights {
            Weights::Summary => WeightMode::Summary,
            Weights::Inline => WeightMode::Inline,
            Weights::Sidecar => WeightMode::Sidecar,
        },
        ..PrintOptions::default()
    };
    if let (Weights::Sidecar, Some(out)) = (args.weights, &args.output) {
        let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        opts.sidecar_name = format!("{name}.weights");
    }
    let (text, sidecar) = print_with(&g, &opts);
    match &args.output {
        Some(out) => {
            std::fs::write(out, &text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
            if matches!(args.weights, Weights::Sidecar) {
                let side = out.with_file_name(&opts.sidecar_name);
                std::fs::write(&side, &sidecar).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", side.display()))?;
                eprintln!("wrote {} and {} ({} bytes of weights)", out.display(), side.display(), sidecar.len());
            }
        }
        None => {
            anyhow::ensure!(
                !matches!(args.weights, Weights::Sidecar),
                "`--weights sidecar` needs `--output FILE` (the sidecar goes next to it)"
            );
            print!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
