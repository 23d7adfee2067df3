//! `tessera generate`: stream text from a GGUF decoder model, or from its artifact
//! (`tessera compile model.gguf -o model.tsa`: nothing is compiled at startup).

use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use tessera_runtime::llm::{Llm, LlmOptions, Sampling};

#[derive(Args)]
pub struct GenerateArgs {
    /// The model (.gguf; architectures gemma3 and llama), or its artifact (.tsa, from `tessera
    /// compile model.gguf`: loads without compiling; --target and --numerics are the artifact's).
    pub model: PathBuf,
    /// The prompt, tokenized with the model's BOS.
    #[arg(long, short)]
    pub prompt: String,
    /// Tokens to generate at most (an end-of-sequence token stops earlier).
    #[arg(short = 'n', long = "tokens", default_value_t = 32)]
    pub tokens: usize,
    /// 0 picks the most likely token every time (greedy, deterministic); higher values sample.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the K most likely tokens only (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Sample among the most likely tokens whose probabilities sum to P (1: all).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Seed of the sampler: the same seed, prompt and model give the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tokens the KV cache holds, prompt included (at most the model's training context).
    #[arg(long, default_value_t = 1024)]
    pub context: usize,
    /// Where to run: the CPU target (JIT) or the reference interpreter (slow).
    #[arg(long, value_enum, default_value_t = super::run::RunTarget::Cpu)]
    pub target: super::run::RunTarget,
    /// Threads for the CPU target (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// `exact` computes in f32 throughout (the weights' values, exactly); `ggml` rounds as
    /// llama.cpp's CPU backend does (8-bit activation blocks before each quantized product,
    /// GELU from an f16 table): its error statistics, though not its exact text.
    #[arg(long, value_enum, default_value_t = NumericsArg::Exact)]
    pub numerics: NumericsArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum NumericsArg {
    /// f32 throughout: exact products with the weights' values.
    Exact,
    /// llama.cpp's rounding (q8_0 before Q4_0/Q5_0/Q8_0 weights, q8_K before K-quant and
    /// ternary weights, f16 before f16 weights; GELU in f16).
    Ggml,
}

impl From<NumericsArg> for tessera_compiler::llm::Numerics {
    fn from(a: NumericsArg) -> Self {
        match a {
            NumericsArg::Ggml => tessera_compiler::llm::Numerics::Ggml,
            NumericsArg::Exact => tessera_compiler::llm::Numerics::Exact,
        }
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    crate::must_exist(&args.model, "the model file")?;
    let mut opts = LlmOptions {
        target: args.target.into(),
        context: args.context,
        numerics: args.numerics.into(),
        ..Default::default()
    };
    if let Some(t) = args.threads {
        opts.threads = t;
    }
    let mut llm = if args.model.extension().is_some_and(|e| e == "tsa") {
        Llm::from_artifact(&args.model, &opts)
    } else {
        Llm::from_gguf(&args.model, &opts)
    }
    .with_context(|| format!("loading {}", args.model.display()))?;
    let c = &llm.config;
    eprintln!(
        "[tessera] {}: {:?}, {} layers, width {}, {} heads ({} KV), vocabulary {}; loaded in {:.0} ms, compiled in {:.0} ms; KV cache {:.1} MiB for {} tokens",
        args.model.display(),
        c.arch,
        c.n_layer,
        c.n_embd,
        c.n_head,
        c.n_head_kv,
        c.vocab,
        llm.startup.load_ms,
        llm.startup.compile_ms,
        llm.cache_bytes() as f64 / (1 << 20) as f64,
        args.context
    );
    if let Some(p) = llm.session().cpu_program() {
        eprintln!(
            "[tessera] {} kernels for {}: {} KiB of code, {:.1} MiB of packed weights",
            p.stats.kernels,
            p.stats.isa,
            p.stats.code_bytes / 1024,
            p.stats.packed_weight_bytes as f64 / (1 << 20) as f64
        );
    }
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        stop: Vec::new(),
    };
    let mut out = std::io::stdout().lock();
    let stats = llm.generate(&args.prompt, args.tokens, &sampling, |text| {
        // A closed pipe (`| head`) stops the generation quietly.
        out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_ok()
    })?;
    let _ = writeln!(out);
    eprintln!(
        "[tessera] prompt {} tokens in {:.0} ms ({:.1} tokens/s); generated {} tokens, decode {:.1} tokens/s{}",
        stats.prompt_tokens,
        stats.prefill_s * 1e3,
        stats.prefill_tokens_per_s(),
        stats.generated.len(),
        stats.decode_tokens_per_s(),
        if stats.stopped { " (stopped at end of sequence)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}
