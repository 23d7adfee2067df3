//! `tessera bench model.onnx --vs onnxruntime`: Tessera's CPU target and onnxruntime on the
//! same inputs, alternating rounds, medians and ratios, plus startup (JIT compile vs session
//! creation). onnxruntime runs in a Python subprocess (scripts/ort_bench.py, the pip package in
//! .cache/venv) with spinning threads off, so it does not steal cores between rounds.

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use tessera_ir::{DType, Dim, Tensor};
use tessera_runtime::{Session, SessionOptions};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Peer {
    /// onnxruntime (for .onnx models).
    Onnxruntime,
    /// llama.cpp through llama-cpp-python (for .gguf models).
    #[value(name = "llama.cpp", alias = "llama-cpp")]
    LlamaCpp,
    /// No peer: Tessera alone.
    None,
}

#[derive(Args)]
pub struct BenchArgs {
    /// The model: .onnx (against onnxruntime) or .gguf (against llama.cpp).
    pub model: PathBuf,
    /// The engine to compare with, in the same run [default: onnxruntime for .onnx, llama.cpp
    /// for .gguf].
    #[arg(long, value_enum)]
    pub vs: Option<Peer>,
    /// Sequence length for symbolic sequence dims (batch dims are 1); for a .gguf model, the
    /// prompt's length in tokens (the prefill).
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// For a .gguf model: tokens generated greedily after the prompt (the decode).
    #[arg(long, default_value_t = 32)]
    pub gen: usize,
    /// Thread counts to measure, comma-separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Alternating rounds per thread count.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Runs per round (each round's median is kept; the result is the median of rounds).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Python with onnxruntime (default: .cache/venv/bin/python, made by scripts/fetch_models.sh).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// After the timings, profile Tessera's kernels at each thread count: the median time of each
    /// step over `--runs` runs, summed by kernel kind, and the slowest steps.
    #[arg(long)]
    pub kernel_times: bool,
    /// Also place the model on this device profile's CPU, GPU and NPU (an .onnx model): time the
    /// placed model here (the units running concurrently: CPU JIT, Vulkan, NPU simulator) and
    /// print the simulated latency on the phone against its best single unit.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Also time Tessera with Cranelift-only code (`--ukernel off`), next to the default that
    /// calls the `std::arch` inner tiles where the CPU has them; `false` times the default only.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub both_ways: bool,
    /// The `std::arch` routines Tessera's timed column may call (an .onnx model): `auto` the
    /// widest this CPU has, `avx2` the 256-bit ones only (what an AVX2 host runs, on an AVX-512
    /// machine), `off` Cranelift's code only.
    #[arg(long, value_enum, default_value = "auto")]
    pub ukernel: super::UkernelArg,
    /// Compute u8 x i8 MatMulInteger as onnxruntime's x86 AVX2 kernel does (adjacent products
    /// summed in saturating int16, `tessera run --match-onnxruntime`) instead of exactly as the
    /// ONNX spec defines it: the same arithmetic as the peer, for an int8 model, on a host
    /// without VNNI (with it, onnxruntime is exact).
    #[arg(long)]
    pub match_onnxruntime: bool,
    /// For a .gguf model: `exact` (f32 activations) or `ggml` (llama.cpp's 8-bit activation
    /// rounding and f16 GELU table), as `tessera generate --numerics`.
    #[arg(long, value_enum, default_value_t = super::generate::NumericsArg::Exact)]
    pub numerics: super::generate::NumericsArg,
    /// For a .gguf model: Tessera opens this artifact of it (`tessera compile MODEL.gguf -o
    /// FILE.tsa`) instead of compiling at startup, as a deployed app would; llama.cpp still
    /// loads the .gguf. Startup and time to first token then compare loading with loading.
    #[arg(long, value_name = "FILE.tsa")]
    pub artifact: Option<PathBuf>,
}

pub(super) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Deterministic inputs: ids in range, masks of ones, token types zero, floats in [-1, 1).
fn make_inputs(session: &Session, seq: usize) -> anyhow::Result<Vec<Tensor>> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::new();
    for (name, ty) in session.inputs() {
        let dims: Vec<usize> = ty
            .shape
            .dims()
            .iter()
            .map(|d| match d {
                Dim::Static(n) => Ok(*n as usize),
                Dim::Sym(s) if s.starts_with("batch") => Ok(1),
                Dim::Sym(_) => Ok(seq),
                Dim::Unknown => bail!("input {name:?} has a dim `?`"),
            })
            .collect::<anyhow::Result<_>>()?;
        let n: usize = dims.iter().product();
        let lname = name.to_lowercase();
        let t = match ty.dtype {
            DType::I64 | DType::I32 => {
                let v: Vec<i64> = (0..n)
                    .map(|i| {
                        if lname.contains("mask") {
                            1
                        } else if lname.contains("type") {
                            0
                        } else if i == 0 {
                            101
                        } else {
                            1000 + (next() % 20000) as i64
                        }
                    })
                    .collect();
                Tensor::from_i64(ty.dtype, &dims, v)?
            }
            DType::F32 => {
                let v: Vec<f32> = (0..n).map(|_| (next() % 2000) as f32 / 1000.0 - 1.0).collect();
                Tensor::from_f32(DType::F32, &dims, v)?
            }
            d => bail!("input {name:?}: cannot make {d} inputs"),
        };
        out.push(t);
    }
    Ok(out)
}

struct Ort {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    created_ms: f64,
}

impl Ort {
    fn start(python: &Path, model: &Path, inputs: &Path, threads: usize) -> anyhow::Result<Ort> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ort_bench.py");
        let mut child = Command::new(python)
            .arg(&script)
            .arg(model)
            .arg(inputs)
            .arg(threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!("cannot start {} (run scripts/fetch_models.sh to make .cache/venv)", python.display())
            })?;
        let mut out = BufReader::new(child.stdout.take().context("onnxruntime stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        let created_ms = line
            .strip_prefix("created ")
            .and_then(|s| s.trim().parse::<f64>().ok())
            .with_context(|| format!("onnxruntime did not start: {line:?}"))?;
        Ok(Ort { child, out, created_ms })
    }

    fn run(&mut self, n: usize) -> anyhow::Result<Vec<f64>> {
        let stdin = self.child.stdin.as_mut().context("onnxruntime stdin")?;
        writeln!(stdin, "run {n}")?;
        stdin.flush()?;
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        line.strip_prefix("times ")
            .with_context(|| format!("onnxruntime said {line:?}"))?
            .split_whitespace()
            .map(|s| s.parse::<f64>().context("a time"))
            .collect()
    }
}

impl Drop for Ort {
    fn drop(&mut self) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = writeln!(stdin, "quit");
        }
        let _ = self.child.wait();
    }
}

/// `--profile NAME`: the model placed on the profile's units, timed here, and its simulated
/// latency on the phone.
fn placed(args: &BenchArgs, name: &str, import: &tessera_compiler::onnx::ImportOptions) -> anyhow::Result<()> {
    let opts = SessionOptions {
        target: tessera_runtime::Target::Hetero,
        device_profile: name.to_string(),
        placement_bindings: vec![("sequence_length".into(), args.seq)],
        import: import.clone(),
        ..Default::default()
    };
    let session = Session::from_file(&args.model, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    let m = session.hetero_model().expect("a placed session");
    let inputs = make_inputs(&session, args.seq)?;
    m.run(&inputs).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (mut times, mut overlap) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let (_, r) = m.run(&inputs).map_err(|e| anyhow::anyhow!("{e}"))?;
        times.push(r.total_us / 1e3);
        overlap.push(r.overlap_us() / 1e3);
    }
    println!(
        "\nplaced on {name} ({} segments): here {:.1} ms (median of {} runs; units busy together {:.1} ms; GPU on {}, NPU simulated)",
        m.segments.len(),
        median(&mut times),
        args.rounds,
        median(&mut overlap),
        if m.unavailable.is_empty() { "Vulkan" } else { "nothing here" }
    );
    print!("{}", tessera_compiler::place::report::summary(&m.problem, &m.placement));
    Ok(())
}

/// Median time of each step over `runs` profiled runs, summed by kernel kind, then the slowest steps.
pub(super) fn profile(session: &Session, inputs: &[Tensor], runs: usize) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let p = session.cpu_program().context("profiling needs the CPU target")?;
    let names = p.step_names();
    let mut per_step: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for _ in 0..runs.max(1) {
        let (_, times) = p
            .run_profiled(inputs, &tessera_runtime::RunOptions { profile: true })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (v, t) in per_step.iter_mut().zip(times) {
            v.push(t * 1e3);
        }
    }
    let med: Vec<f64> = per_step.iter_mut().map(|v| median(v)).collect();
    let total: f64 = med.iter().sum();
    let mut kinds: Vec<(String, f64, usize)> = Vec::new();
    for (n, t) in names.iter().zip(&med) {
        // Step names are "NODE KIND ..."; group by the kernel kind.
        let kind = n.split_whitespace().nth(1).unwrap_or(n).to_string();
        match kinds.iter_mut().find(|k| k.0 == kind) {
            Some(k) => {
                k.1 += t;
                k.2 += 1;
            }
            None => kinds.push((kind, *t, 1)),
        }
    }
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut s = String::new();
    writeln!(s, "  {total:.3} ms in kernels (sum of per-step medians), by kernel kind:")?;
    for (k, t, n) in &kinds {
        writeln!(s, "  {t:8.3} ms {:5.1}%  {k} x{n}", 100.0 * t / total.max(1e-12))?;
    }
    let mut rows: Vec<(f64, &String)> = med.iter().copied().zip(&names).collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    writeln!(s, "  slowest steps:")?;
    for (t, n) in rows.iter().take(12) {
        writeln!(s, "  {t:8.3} ms {:5.1}%  {n}", 100.0 * t / total.max(1e-12))?;
    }
    Ok(s)
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    crate::must_exist(&args.model, "the model file")?;
    let gguf = args.model.extension().is_some_and(|e| e == "gguf");
    let peer = args.vs.unwrap_or(if gguf { Peer::LlamaCpp } else { Peer::Onnxruntime });
    match (gguf, peer) {
        (true, Peer::Onnxruntime) => {
            bail!("a .gguf model is compared with llama.cpp (--vs llama.cpp) or nothing (--vs none)")
        }
        (false, Peer::LlamaCpp) => bail!("llama.cpp runs .gguf models; compare an .onnx model with onnxruntime"),
        (true, _) => return super::bench_llm::run(&args, peer),
        _ => {}
    }
    let python = args.python.clone().unwrap_or_else(|| PathBuf::from(".cache/venv/bin/python"));
    let dir = tempfile::tempdir()?;
    println!(
        "model: {}  (batch 1, seq {}, {} rounds x {} runs, medians)",
        args.model.display(),
        args.seq,
        args.rounds,
        args.runs
    );
    let mode: tessera_target_cpu::Ukernels = args.ukernel.into();
    let ukernel = tessera_target_cpu::ukernel::describe(mode);
    let both = args.both_ways && ukernel.is_some();
    match ukernel {
        Some(u) => println!(
            "tessera: Cranelift code calling the {u} tile{}",
            if both { "; cranelift-only: --ukernel off" } else { "" }
        ),
        None => println!("tessera: Cranelift code only (no std::arch tile for this CPU)"),
    }
    if both {
        println!(
            "{:>8} {:>12} {:>16} {:>15} {:>8} {:>16}",
            "threads", "tessera ms", "cranelift-only ms", "onnxruntime ms", "ratio", "cranelift ratio"
        );
    } else {
        println!("{:>8} {:>14} {:>14} {:>10}", "threads", "tessera ms", "onnxruntime ms", "ratio");
    }
    if args.match_onnxruntime {
        println!("u8 x i8 MatMulInteger as onnxruntime computes it (saturating int16 pair sums), not exactly");
    }
    let import = tessera_compiler::onnx::ImportOptions { onnxruntime_x86_matmul_integer: args.match_onnxruntime };
    let mut startup: Option<(f64, f64)> = None;
    let mut split = String::new();
    let mut profiles = Vec::new();
    for &threads in &args.threads {
        let opts = SessionOptions { threads, ukernels: mode, import: import.clone(), ..Default::default() };
        let session = Session::from_file(&args.model, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
        let plain = if both {
            let o = SessionOptions {
                threads,
                ukernels: tessera_target_cpu::Ukernels::Off,
                import: import.clone(),
                ..Default::default()
            };
            Some(Session::from_file(&args.model, &o).map_err(|e| anyhow::anyhow!("{e}"))?)
        } else {
            None
        };
        let inputs = make_inputs(&session, args.seq)?;
        for (i, ((name, _), t)) in session.inputs().iter().zip(&inputs).enumerate() {
            tessera_compiler::onnx::write_tensor_pb(&dir.path().join(format!("input_{i}.pb")), name, t)?;
        }
        // Warm-up (plans the arena).
        for s in std::iter::once(&session).chain(&plain) {
            s.run(&inputs).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let time = |s: &Session, runs: usize| -> anyhow::Result<f64> {
            let mut t = Vec::new();
            for _ in 0..runs {
                let t0 = std::time::Instant::now();
                s.run(&inputs).map_err(|e| anyhow::anyhow!("{e}"))?;
                t.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            Ok(median(&mut t))
        };
        let mut ort = match peer {
            Peer::Onnxruntime => Some(Ort::start(&python, &args.model, dir.path(), threads)?),
            _ => None,
        };
        if startup.is_none() {
            let st = &session.startup;
            startup = Some((st.total_ms(), ort.as_ref().map_or(f64::NAN, |o| o.created_ms)));
            split = format!(
                " (import {:.1} + passes {:.1} + JIT compile {:.1})",
                st.import_ms, st.passes_ms, st.codegen_ms
            );
        }
        let (mut ts, mut ps, mut os) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            ts.push(time(&session, args.runs)?);
            if let Some(p) = &plain {
                ps.push(time(p, args.runs)?);
            }
            if let Some(o) = ort.as_mut() {
                let mut v = o.run(args.runs)?;
                os.push(median(&mut v));
            }
        }
        let (tm, pm, om) = (median(&mut ts), median(&mut ps), median(&mut os));
        if both {
            println!("{threads:>8} {tm:>12.3} {pm:>16.3} {om:>15.3} {:>8.2} {:>16.2}", tm / om, pm / om);
        } else {
            println!("{threads:>8} {tm:>14.3} {om:>14.3} {:>10.2}", tm / om);
        }
        if args.kernel_times {
            profiles.push((threads, profile(&session, &inputs, args.runs)?));
            if let Some(p) = &plain {
                profiles.push((threads, format!("(cranelift-only)\n{}", profile(p, &inputs, args.runs)?)));
            }
        }
    }
    for (threads, text) in profiles {
        println!("\nprofile at {threads} thread(s):\n{text}");
    }
    if let Some(name) = &args.profile {
        placed(&args, name, &import)?;
    }
    if let Some((t, o)) = startup {
        println!(
            "startup: tessera import + passes + JIT compile {t:.1} ms{split}; onnxruntime session creation {o:.1} ms; ratio {:.2}",
            t / o
        );
        if let Some((load, first, cold, warm)) = aot_startup(&args, &import, dir.path())? {
            println!(
                "startup from an artifact (tessera compile): load {load:.2} ms, load + first run {first:.2} ms (median of 7); ratio to onnxruntime session creation {:.3}",
                load / o
            );
            println!("JIT cache: cold start {cold:.1} ms (compile and store), warm start {warm:.2} ms (hash the model, load; median of 7)");
        }
    }
    println!("ratio = tessera / onnxruntime (below 1.0: Tessera is faster)");
    Ok(ExitCode::SUCCESS)
}

/// Startup without compiling: the model compiled into an artifact, loaded 7 times (median load,
/// and load + first run); the JIT cache's cold start and warm start (median of 7). None when
/// the model does not compile ahead of time (shapes that follow from input values).
fn aot_startup(
    args: &BenchArgs,
    import: &tessera_compiler::onnx::ImportOptions,
    dir: &std::path::Path,
) -> anyhow::Result<Option<(f64, f64, f64, f64)>> {
    let copts = tessera_runtime::CompileOptions { import: import.clone(), ..Default::default() };
    let bytes = match tessera_runtime::compile_artifact(&args.model, &copts) {
        Ok((b, _)) => b,
        Err(tessera_runtime::SessionError::Cpu(e)) if e.is_unsupported() => return Ok(None),
        Err(e) => anyhow::bail!("{e}"),
    };
    let path = dir.join("model.tsa");
    std::fs::write(&path, bytes)?;
    let (mut loads, mut firsts) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let t0 = std::time::Instant::now();
        let s = Session::from_artifact(&path, 1).map_err(|e| anyhow::anyhow!("{e}"))?;
        loads.push(t0.elapsed().as_secs_f64() * 1e3);
        let inputs = make_inputs(&s, args.seq)?;
        let t1 = std::time::Instant::now();
        s.run(&inputs).map_err(|e| anyhow::anyhow!("{e}"))?;
        firsts.push(loads.last().copied().unwrap_or(0.0) + t1.elapsed().as_secs_f64() * 1e3);
    }
    let cache = dir.join("jit-cache");
    let opts = SessionOptions { threads: 1, import: import.clone(), cache_dir: Some(cache), ..Default::default() };
    let t0 = std::time::Instant::now();
    Session::from_file(&args.model, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cold = t0.elapsed().as_secs_f64() * 1e3;
    let mut warm = Vec::new();
    for _ in 0..7 {
        let t0 = std::time::Instant::now();
        let s = Session::from_file(&args.model, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
        warm.push(t0.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            matches!(s.startup.cache, Some(tessera_runtime::CacheOutcome::Hit { .. })),
            "the JIT cache missed on a warm start"
        );
    }
    Ok(Some((median(&mut loads), median(&mut firsts), cold, median(&mut warm))))
}

/// `tessera bench-kernels`: the CPU target's micro-benchmarks.
pub fn kernels() -> anyhow::Result<ExitCode> {
    println!("medians of repeated runs (best run in parentheses); percentages are of the median");
    println!("CPU: {}", tessera_target_cpu::host_isa_name().map_err(|e| anyhow::anyhow!("{e}"))?);
    for f in tessera_target_cpu::microbench::run().map_err(|e| anyhow::anyhow!("{e}"))? {
        let best = f.best.map(|b| format!(" (best {b:.2})")).unwrap_or_default();
        match f.of_peak {
            Some((pct, of)) => println!("{:<42} {:>7.2} {}{best:<14} {pct:5.1}% of the {of}", f.name, f.value, f.unit),
            None => println!("{:<42} {:>7.2} {}", f.name, f.value, f.unit),
        }
    }
    Ok(ExitCode::SUCCESS)
}
