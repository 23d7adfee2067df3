//! `tessera bench model.gguf --vs llama.cpp`: prefill and decode speed of Tessera's CPU target
//! and llama.cpp on the same prompt ids, alternating rounds, medians and ratios; the machine's
//! memory bandwidth (a STREAM-style triad) and the decode ceiling it sets; startup, time to
//! first token and resident memory. llama.cpp runs in a Python subprocess
//! (scripts/llama_bench.py, llama-cpp-python in .cache/venv).

use anyhow::Context;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use tessera_runtime::llm::{Llm, LlmOptions};

use super::bench::{median, BenchArgs, Peer};

/// Text repeated into the benchmark prompt (any text works; its ids are what both engines get).
const FILLER: &str = "Phones ship a CPU, a GPU and an NPU side by side. On-device language models must run \
within the memory bandwidth of a phone, so every byte of weights read per token counts. ";

struct LlamaCpp {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    loaded_ms: f64,
}

impl LlamaCpp {
    fn start(python: &Path, model: &Path, threads: usize, ctx: usize) -> anyhow::Result<LlamaCpp> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llama_bench.py");
        let mut child = Command::new(python)
            .arg(&script)
            .arg(model)
            .arg(threads.to_string())
            .arg(ctx.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} with llama-cpp-python (install it into .cache/venv as ../shared/MODELS.md says)",
                    python.display()
                )
            })?;
        let mut out = BufReader::new(child.stdout.take().context("llama.cpp stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        let loaded_ms = line.strip_prefix("loaded ").and_then(|s| s.trim().parse::<f64>().ok()).with_context(|| {
            format!("llama.cpp did not start: {line:?} (is llama-cpp-python installed in the venv?)")
        })?;
        Ok(LlamaCpp { child, out, loaded_ms })
    }

    /// (prefill ms, decode ms, tokens decoded, first token).
    fn round(&mut self, ids: &[u32], gen: usize) -> anyhow::Result<(f64, f64, usize, u32)> {
        let stdin = self.child.stdin.as_mut().context("llama.cpp stdin")?;
        let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        writeln!(stdin, "round {gen} {}", list.join(" "))?;
        stdin.flush()?;
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        let v: Vec<f64> = line
            .strip_prefix("times ")
            .with_context(|| format!("llama.cpp said {line:?}"))?
            .split_whitespace()
            .map(|s| s.parse::<f64>().context("a figure"))
            .collect::<Result<_, _>>()?;
        anyhow::ensure!(v.len() == 4, "llama.cpp said {line:?}");
        Ok((v[0], v[1], v[2] as usize, v[3] as u32))
    }
}

impl Drop for LlamaCpp {
    fn drop(&mut self) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = writeln!(stdin, "quit");
        }
        let _ = self.child.wait();
    }
}

/// STREAM's triad `a = b + s * c` on three arrays of 32 Mi f32 (128 MiB each, far beyond any
/// cache), split across `threads`; the best of 5 in GB/s, counting 12 bytes per element as
/// STREAM does.
pub fn triad_bandwidth(threads: usize) -> f64 {
    let n = 32 << 20;
    let mut a = vec![0f32; n];
    let b = vec![1f32; n];
    let c = vec![2f32; n];
    let chunk = n.div_ceil(threads.max(1));
    let mut best = 0f64;
    for _ in 0..5 {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for ((a, b), c) in a.chunks_mut(chunk).zip(b.chunks(chunk)).zip(c.chunks(chunk)) {
                s.spawn(move || {
                    for ((x, y), z) in a.iter_mut().zip(b).zip(c) {
                        *x = y + 3.0 * z;
                    }
                });
            }
        });
        best = best.max((12 * n) as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    std::hint::black_box(&a);
    best
}

/// The process's resident memory (VmRSS), in bytes.
fn resident_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |b, j| if v[j] > v[b] { j } else { b }) as u32
}

const MB: f64 = 1e6;

pub fn run(args: &BenchArgs, vs: Peer) -> anyhow::Result<std::process::ExitCode> {
    let python = args.python.clone().unwrap_or_else(|| PathBuf::from(".cache/venv/bin/python"));
    let (n_prompt, gen) = (args.seq.max(1), args.gen.max(2));
    let threads = *args.threads.iter().max().unwrap_or(&2);
    let ctx = (n_prompt + gen + 8).next_power_of_two().max(256);
    println!(
        "model: {}  (prompt {n_prompt} tokens, {gen} generated greedily, {threads} threads, {} alternating rounds, medians)",
        args.model.display(),
        args.rounds
    );
    let bw = triad_bandwidth(threads);
    println!("memory bandwidth (STREAM triad, {threads} threads, best of 5): {bw:.1} GB/s");

    let t0 = Instant::now();
    let opts = LlmOptions { threads, context: ctx, numerics: args.numerics.into(), ..Default::default() };
    let mut llm = match &args.artifact {
        Some(a) => {
            if !matches!(args.numerics, super::generate::NumericsArg::Exact) {
                anyhow::bail!("an artifact computes with the numerics it was compiled with (exact): drop --numerics or --artifact");
            }
            println!("tessera: the artifact {} (compiled ahead of time)", a.display());
            let llm = Llm::from_artifact(a, &opts).map_err(|e| anyhow::anyhow!("{}: {e}", a.display()))?;
            let size = std::fs::metadata(&args.model).with_context(|| args.model.display().to_string())?.len();
            if llm.file_bytes != size {
                anyhow::bail!(
                    "{} was compiled from a {}-byte file, not {} ({size} bytes): compile it again with `tessera compile {} -o {}`",
                    a.display(),
                    llm.file_bytes,
                    args.model.display(),
                    args.model.display(),
                    a.display()
                );
            }
            llm
        }
        None => Llm::from_gguf(&args.model, &opts).map_err(|e| anyhow::anyhow!("{}: {e}", args.model.display()))?,
    };
    let tess_start_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut ids = llm.tokenizer.encode(FILLER, true);
    while ids.len() < n_prompt {
        let more = llm.tokenizer.encode(FILLER, false);
        ids.extend(more);
    }
    ids.truncate(n_prompt);

    // Read per decoded token: the weight matrices as the file stores them, and the KV cache at
    // the prompt's length.
    let weight_bytes = llm.matrix_bytes;
    let c = &llm.config;
    let kv_bytes = (2 * c.n_layer * n_prompt * c.n_head_kv * c.head_dim * 4) as u64;
    let per_token = weight_bytes + kv_bytes;
    let ceiling = bw * 1e9 / per_token as f64;

    let mut peer = match vs {
        Peer::LlamaCpp => Some(LlamaCpp::start(&python, &args.model, threads, ctx)?),
        _ => None,
    };
    // Tessera's first round: time to first token after startup.
    let tess_round = |llm: &mut Llm| -> anyhow::Result<(f64, f64, u32)> {
        llm.reset();
        let t0 = Instant::now();
        let mut logits = Vec::new();
        llm.eval_into(&ids, &mut logits).map_err(|e| anyhow::anyhow!("{e}"))?;
        let first = argmax(&logits);
        let prefill = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let mut t = first;
        for _ in 0..gen - 1 {
            llm.eval_into(&[t], &mut logits).map_err(|e| anyhow::anyhow!("{e}"))?;
            t = argmax(&logits);
        }
        Ok((prefill, t1.elapsed().as_secs_f64() * 1e3, first))
    };
    let (first_prefill, _, tess_first) = tess_round(&mut llm)?;
    let rss = resident_bytes();
    let (mut tp, mut td, mut lp, mut ld) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut llama_first = None;
    for _ in 0..args.rounds.max(1) {
        let (p, d, _) = tess_round(&mut llm)?;
        tp.push(p);
        td.push(d);
        if let Some(l) = peer.as_mut() {
            let (p, d, _, first) = l.round(&ids, gen)?;
            lp.push(p);
            ld.push(d);
            llama_first = Some(first);
        }
    }
    let (tp, td, lp, ld) = (median(&mut tp), median(&mut td), median(&mut lp), median(&mut ld));
    let tps = |n: usize, ms: f64| n as f64 / (ms / 1e3);
    let (t_pre, t_dec) = (tps(n_prompt, tp), tps(gen - 1, td));
    let (l_pre, l_dec) = (tps(n_prompt, lp), tps(gen - 1, ld));
    println!("{:>10} {:>18} {:>18} {:>10}", "", "tessera", "llama.cpp", "ratio");
    println!("{:>10} {:>12.1} tok/s {:>12} tok/s {:>10}", "prefill", t_pre, num(l_pre, 1), num(t_pre / l_pre, 2));
    println!("{:>10} {:>12.1} tok/s {:>12} tok/s {:>10}", "decode", t_dec, num(l_dec, 1), num(t_dec / l_dec, 2));
    println!("ratio = tessera / llama.cpp tokens per second (above 1.0: Tessera is faster)");
    println!(
        "decode ceiling: {:.1} MB read per token ({:.1} MB of weights as the file stores them + {:.1} MB of KV cache) / {bw:.1} GB/s = {ceiling:.1} tok/s; tessera {:.0}%, llama.cpp {}% of it",
        per_token as f64 / MB,
        weight_bytes as f64 / MB,
        kv_bytes as f64 / MB,
        100.0 * t_dec / ceiling,
        num(100.0 * l_dec / ceiling, 0)
    );
    println!(
        "startup: tessera load {:.0} ms + compile {:.0} ms (total {tess_start_ms:.0} ms); llama.cpp model load {} ms",
        llm.startup.load_ms,
        llm.startup.compile_ms,
        num(peer.as_ref().map_or(f64::NAN, |p| p.loaded_ms), 0)
    );
    println!(
        "time to first token: tessera {:.0} ms (startup + first prefill {first_prefill:.0} ms); llama.cpp {} ms (load + median prefill)",
        tess_start_ms + first_prefill,
        num(peer.as_ref().map_or(f64::NAN, |p| p.loaded_ms) + lp, 0)
    );
    if let Some(rss) = rss {
        let budget = llm.file_bytes + llm.cache_bytes() as u64 + (50 << 20);
        println!(
            "resident memory (tessera process): {:.0} MB; file {:.0} MB + KV cache {:.1} MB + 50 MB = {:.0} MB{}",
            rss as f64 / MB,
            llm.file_bytes as f64 / MB,
            llm.cache_bytes() as f64 / MB,
            budget as f64 / MB,
            if rss <= budget { "" } else { " (over)" }
        );
    }
    if args.kernel_times {
        // The prompt's prefill, then one decode step after it, profiled kernel by kernel.
        llm.reset();
        let inputs = llm.inputs_for(&ids).map_err(|e| anyhow::anyhow!("{e}"))?;
        let text = super::bench::profile(llm.session(), &inputs, 3)?;
        println!("\nprefill of {n_prompt} tokens, by kernel:\n{text}");
        llm.reset();
        llm.eval(&ids).map_err(|e| anyhow::anyhow!("{e}"))?;
        let inputs = llm.inputs_for(&[tess_first]).map_err(|e| anyhow::anyhow!("{e}"))?;
        let text = super::bench::profile(llm.session(), &inputs, 5)?;
        println!("\ndecode step at position {n_prompt}, by kernel:\n{text}");
    }
    if let Some(lf) = llama_first {
        println!(
            "first generated token: tessera {tess_first}, llama.cpp {lf}{}",
            if tess_first == lf { " (same)" } else { " (differ)" }
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A figure, or `-` where there is none (no peer measured).
fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".into()
    }
}
