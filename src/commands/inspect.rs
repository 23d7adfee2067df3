//! `tessera inspect`: what a GGUF file holds (metadata, tensor table), checked as the importer
//! checks it.

use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use tessera_compiler::gguf::Gguf;

#[derive(Args)]
pub struct InspectArgs {
    /// The model file (.gguf).
    pub file: PathBuf,
    /// Print every tensor (default: a summary per type and the first 12).
    #[arg(long)]
    pub all: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    crate::must_exist(&args.file, "the model file")?;
    let g = Gguf::open(&args.file).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    println!(
        "GGUF v{}: {} metadata entries, {} tensors, alignment {}, data from byte {} of {}",
        g.version,
        g.metadata.len(),
        g.tensors.len(),
        g.alignment,
        g.data_offset,
        g.file_bytes()
    );
    for (k, v) in &g.metadata {
        println!("  {k} = {v}");
    }
    let mut per_type: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
    for t in &g.tensors {
        let e = per_type.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.elements();
        e.2 += t.bytes;
    }
    println!("tensor types:");
    for (ty, (n, elems, bytes)) in &per_type {
        println!(
            "  {ty:<6} {n:>4} tensors {:>12} elements {:>10.1} MiB ({:.2} bits per weight)",
            elems,
            *bytes as f64 / (1 << 20) as f64,
            *bytes as f64 * 8.0 / (*elems).max(1) as f64
        );
    }
    let shown = if args.all { g.tensors.len() } else { g.tensors.len().min(12) };
    println!("tensors (shape outermost first):");
    for t in &g.tensors[..shown] {
        println!("  {:<40} {:<6} {:?} {} bytes at {}", t.name, t.ty.name(), t.shape(), t.bytes, t.offset);
    }
    if shown < g.tensors.len() {
        println!("  ... {} more (--all lists them)", g.tensors.len() - shown);
    }
    Ok(ExitCode::SUCCESS)
}
