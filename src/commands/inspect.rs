//! `tessera inspect`: what a GGUF file holds (metadata, tensor table), checked as the importer
//! checks it; or what an ahead-of-time artifact holds, checked as the runtime checks it.

use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use tessera_compiler::gguf::Gguf;

#[derive(Args)]
pub struct InspectArgs {
    /// The model file (.gguf) or artifact (.tsa).
    pub file: PathBuf,
    /// Print every tensor (default: a summary per type and the first 12).
    #[arg(long)]
    pub all: bool,
    /// Print the artifact's optimized IR (the graph its kernels run).
    #[arg(long)]
    pub ir: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    crate::must_exist(&args.file, "the model file")?;
    if args.file.extension().is_some_and(|e| e == "tsa") {
        return inspect_artifact(&args);
    }
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

fn inspect_artifact(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    use tessera_runtime::artifact::Artifact;
    let a = Artifact::open(&args.file).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let h = &a.header;
    println!(
        "Tessera artifact ({} bytes), format {}, built by Tessera {}: every section's checksum verified",
        a.len(),
        tessera_runtime::artifact::FORMAT_VERSION,
        h.tessera_version
    );
    println!("  target: {}", h.triple);
    let feats: Vec<&str> = h.features.iter().map(|f| f.trim_start_matches("has_")).collect();
    println!(
        "  needs CPU features: {}",
        if feats.is_empty() { "none beyond the baseline".into() } else { feats.join(" ") }
    );
    println!("  model: {} (xxh3-128 {})", h.model.source, h.model.hash);
    for i in &h.model.inputs {
        println!("    input  {i}");
    }
    for o in &h.model.outputs {
        println!("    output {o}");
    }
    if let Some(p) = &h.profile {
        println!("  placed for: {p}");
    }
    println!("  sections:");
    for s in &h.sections {
        println!("    {:<11} {:>12} bytes at {:>10}  xxh3 {}", s.name, s.bytes, s.offset, s.xxh3);
    }
    let meta = a.cpu_meta().map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "  CPU program: {} kernel calls, {} distinct kernels, {} KiB of code, {} packed weights, compiled in {:.0} ms",
        meta.steps.len(),
        meta.kernels,
        meta.code_bytes / 1024,
        h.packed.len(),
        meta.compile_ms
    );
    if let Some(code) = a.section_bytes("cpu.code") {
        let o = tessera_target_cpu::image::describe_object(code).map_err(|e| anyhow::anyhow!("cpu.code: {e}"))?;
        println!(
            "  object: ELF {}, {} kernels, {} relocations, sections {}",
            o.architecture,
            o.kernels,
            o.relocations,
            o.sections.iter().map(|(n, b)| format!("{n} ({b} B)")).collect::<Vec<_>>().join(", ")
        );
        println!(
            "  host functions the kernels call: {}",
            if o.imports.is_empty() { "none".into() } else { o.imports.join(" ") }
        );
    }
    let t0 = std::time::Instant::now();
    match a.cpu_program(1) {
        Ok(p) => println!(
            "  loads on this machine: yes ({} kernels mapped and relocated in {:.2} ms; nothing was run)",
            p.stats.kernels,
            t0.elapsed().as_secs_f64() * 1e3
        ),
        Err(e) => println!("  loads on this machine: no: {e}"),
    }
    if let Some(p) = a.section_bytes("placement") {
        println!("placement (from `tessera compile --profile`):");
        print!("{}", String::from_utf8_lossy(p));
    }
    if args.ir {
        println!("{}", String::from_utf8_lossy(a.section_bytes("ir").unwrap_or_default()));
    }
    Ok(ExitCode::SUCCESS)
}
