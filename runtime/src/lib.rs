//! Tessera's runtime: the public Rust API for compiling a model when an app starts and running
//! it many times.
//!
//! ```no_run
//! use tessera_runtime::{Session, SessionOptions, Tensor, DType};
//!
//! // Import, optimize and JIT-compile (CPU target, all cores).
//! let session = Session::from_file("model.onnx", &SessionOptions::default())?;
//! for (name, ty) in session.inputs() {
//!     println!("input {name}: {ty}");
//! }
//! let ids = Tensor::from_i64(DType::I64, &[1, 4], vec![101, 7592, 2088, 102])?;
//! let mask = Tensor::from_i64(DType::I64, &[1, 4], vec![1, 1, 1, 1])?;
//! let outputs = session.run_named(&[("input_ids", ids), ("attention_mask", mask)])?;
//! println!("{}", outputs[0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A [`Session`] is `Send + Sync`: share it across threads (`Arc<Session>`); each call to
//! [`Session::run`] uses its own activation arena from a small pool, and kernels split across
//! the session's thread pool. Inputs are checked against the model's signature (names, dtypes,
//! shapes with symbolic dims such as `sequence_length`) before any kernel runs.

pub mod artifact;
#[cfg(feature = "jit")]
pub mod hetero;
#[cfg(feature = "jit")]
pub mod llm;
#[cfg(feature = "jit")]
pub mod vulkan;

use std::path::Path;
use std::time::Instant;

#[cfg(feature = "jit")]
pub use tessera_compiler as compiler;
pub use tessera_ir::{DType, Tensor, TensorType};
pub use tessera_target_cpu::{CpuError, RunOptions};
#[cfg(feature = "jit")]
pub use tessera_target_npu as npu;

/// Where a session runs its kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Target {
    /// The CPU target: Cranelift JIT code for the host.
    #[default]
    Cpu,
    /// The reference interpreter (slow; the semantics every target is checked against).
    Interpreter,
    /// The GPU target: SPIR-V kernels run through Vulkan (lavapipe where there is no GPU);
    /// nodes it declines run on the host through the interpreter.
    Gpu,
    /// The NPU target: integer products compiled to command streams and run on the simulated
    /// NPU of [`SessionOptions::device_profile`]; the rest on the host through the interpreter.
    Npu,
    /// Every unit: the partitioner places each kernel on the CPU, GPU or NPU of
    /// [`SessionOptions::device_profile`] by its cost model, and the runtime runs the segments
    /// concurrently, one queue per unit ([`hetero::HeteroModel`]).
    Hetero,
}

/// The passes `default` means for the GPU target: the optimizer without `plan-memory`
/// (Vulkan buffers are per value). Fused regions the GPU target has one shader for
/// (elementwise chains, a matmul with an elementwise epilogue) run as one kernel; the others
/// run their bodies node by node.
pub const GPU_PIPELINE: &str = "canonicalize,saturate,fold-dequantize,fuse,schedule";

/// The passes before heterogeneous placement: those of the GPU target, so that a kernel is one
/// node (a fused region is one) whichever unit runs it.
pub const HETERO_PIPELINE: &str = GPU_PIPELINE;

/// The passes `default` means for the NPU target: those of the GPU target (fused regions run
/// their bodies, with each integer product and its output stage on the NPU).
pub const NPU_PIPELINE: &str = GPU_PIPELINE;

/// Options for [`Session::from_file`] and [`Session::from_graph`].
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub target: Target,
    /// Threads for the CPU target's kernels (default: all cores).
    pub threads: usize,
    /// Passes to run before code generation (`default`, `none`, or `a,b,c`).
    pub passes: String,
    /// ONNX import options.
    #[cfg(feature = "jit")]
    pub import: tessera_compiler::onnx::ImportOptions,
    /// Whether the CPU target's kernels may call `std::arch` inner tiles (AVX2 f32 GEMM tile)
    /// where the host has the features; `Off` keeps all code Cranelift's.
    pub ukernels: tessera_target_cpu::Ukernels,
    /// The device profile (a built-in name or a `.toml` path) whose NPU the NPU target
    /// compiles for and simulates.
    pub device_profile: String,
    /// Sizes of symbolic dims to price kernels at for [`Target::Hetero`] (others: batch 1,
    /// the rest 128).
    pub placement_bindings: Vec<(String, usize)>,
    /// A folder for the JIT cache (CPU target): a model compiled once is stored there as an
    /// artifact keyed by the model's bytes, the options, the Tessera version and the CPU's
    /// features, and later sessions load it instead of compiling ([`StartupTimes::cache`]).
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            target: Target::Cpu,
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            passes: "default".into(),
            #[cfg(feature = "jit")]
            import: Default::default(),
            ukernels: Default::default(),
            device_profile: "snapdragon-8-gen-2".into(),
            placement_bindings: Vec::new(),
            cache_dir: None,
        }
    }
}

/// Why a session could not be made or run.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Import(String),
    #[error("passes: {0}")]
    Passes(String),
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error("interpreter: {0}")]
    Interpreter(#[from] tessera_ir::InterpError),
    #[cfg(feature = "jit")]
    #[error("GPU: {0}")]
    Gpu(#[from] vulkan::GpuRunError),
    #[cfg(feature = "jit")]
    #[error("NPU: {0}")]
    Npu(#[from] tessera_target_npu::NpuError),
    #[cfg(feature = "jit")]
    #[error(transparent)]
    Hetero(#[from] hetero::HeteroError),
    #[error("device profile: {0}")]
    Profile(String),
    #[error("input {name:?} given twice")]
    DuplicateInput { name: String },
    #[error(transparent)]
    Artifact(#[from] artifact::ArtifactError),
}

/// How long each stage of making a session took.
#[derive(Clone, Debug, Default)]
pub struct StartupTimes {
    pub import_ms: f64,
    pub passes_ms: f64,
    pub codegen_ms: f64,
    /// Opening, checking and mapping an artifact (sessions from `.tsa` files or the JIT cache).
    pub load_ms: f64,
    /// What the JIT cache did, when [`SessionOptions::cache_dir`] is set.
    pub cache: Option<CacheOutcome>,
}

/// The JIT cache's default folder: `$TESSERA_CACHE_DIR`, else `~/.cache/tessera/jit`.
pub fn default_cache_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("TESSERA_CACHE_DIR") {
        return d.into();
    }
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache/tessera/jit")
}

/// What the JIT cache did for a session.
#[derive(Clone, Debug, PartialEq)]
pub enum CacheOutcome {
    /// Loaded from the cache: nothing was compiled.
    Hit { path: std::path::PathBuf },
    /// Compiled and stored.
    Miss { path: std::path::PathBuf },
    /// Compiled, and stored again in place of an entry that would not load (the reason).
    Replaced { path: std::path::PathBuf, reason: String },
    /// Not cacheable (a target other than the CPU, or shapes that follow from input values):
    /// compiled as without a cache.
    Bypassed { reason: String },
}

impl StartupTimes {
    pub fn total_ms(&self) -> f64 {
        self.import_ms + self.passes_ms + self.codegen_ms + self.load_ms
    }
}

#[cfg(feature = "jit")]
/// Options for [`compile_artifact`].
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Passes before code generation (`default`: the CPU target's pipeline).
    pub passes: String,
    pub import: tessera_compiler::onnx::ImportOptions,
    /// A target triple (`aarch64-linux-android`, `x86_64-linux`), or None for this machine
    /// with all its CPU features.
    pub triple: Option<String>,
    pub ukernels: tessera_target_cpu::Ukernels,
    /// A device profile to place the model on; its placement is stored for inspection.
    pub profile: Option<String>,
}

#[cfg(feature = "jit")]
impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            passes: "default".into(),
            import: Default::default(),
            triple: None,
            ukernels: Default::default(),
            profile: None,
        }
    }
}

#[cfg(feature = "jit")]
/// What [`compile_artifact`] produced besides the bytes.
#[derive(Clone, Debug)]
pub struct CompileReport {
    pub kernels: usize,
    pub distinct_kernels: usize,
    pub code_bytes: usize,
    pub packed_weight_bytes: usize,
    pub triple: String,
    pub features: Vec<String>,
    pub times: StartupTimes,
    /// The placement on [`CompileOptions::profile`], when one was named (its summary is
    /// stored in the artifact).
    pub placed: Option<Placed>,
}

#[cfg(feature = "jit")]
/// Loads a model file (`.onnx`, `.tir`; GGUF files go through `llm::lower_for_artifact`).
fn import_model(
    path: &Path,
    import: &tessera_compiler::onnx::ImportOptions,
) -> Result<tessera_ir::Graph, SessionError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("onnx") => {
            tessera_compiler::onnx::import_file_with(path, import).map_err(|e| SessionError::Import(e.to_string()))
        }
        Some("tir") => {
            let g = tessera_ir::parse_file(path).map_err(|e| SessionError::Import(e.to_string()))?;
            tessera_ir::verify(&g).map_err(|e| SessionError::Import(format!("{}: {e}", path.display())))?;
            Ok(g)
        }
        _ => Err(SessionError::Import(format!(
            "{}: unknown model type (expected .onnx, .tir or a .tsa artifact)",
            path.display()
        ))),
    }
}

#[cfg(feature = "jit")]
/// xxh3-128 of a file's bytes (mapped, not read), hex.
fn hash_file(path: &Path) -> Result<String, SessionError> {
    let b = tessera_ir::Blob::map_file(path).map_err(|e| SessionError::Import(format!("{}: {e}", path.display())))?;
    Ok(artifact::hash_bytes(&b))
}

#[cfg(feature = "jit")]
/// Compiles a model file into an ahead-of-time artifact's bytes ([`artifact`]): imported,
/// optimized, its kernels compiled for `opts.triple` (or this machine) into an object file.
pub fn compile_artifact(path: &Path, opts: &CompileOptions) -> Result<(Vec<u8>, CompileReport), SessionError> {
    compile_hashed(path, opts, hash_file(path)?)
}

#[cfg(feature = "jit")]
/// [`compile_artifact`] for a model whose hash the caller has (the JIT cache keys on it).
fn compile_hashed(path: &Path, opts: &CompileOptions, hash: String) -> Result<(Vec<u8>, CompileReport), SessionError> {
    let t0 = Instant::now();
    // A GGUF decoder model: the graph `llm::Llm` compiles, with its configuration and tokenizer.
    let (mut g, extra) = if path.extension().is_some_and(|e| e == "gguf") {
        llm::lower_for_artifact(path).map_err(|e| SessionError::Import(format!("{}: {e}", path.display())))?
    } else {
        (import_model(path, &opts.import)?, Vec::new())
    };
    let import_ms = t0.elapsed().as_secs_f64() * 1e3;
    // The placement starts from the imported graph, under its own pipeline.
    let placed = match &opts.profile {
        Some(name) => Some(place_on_profile(g.clone(), name)?),
        None => None,
    };
    let placement = placed.as_ref().map(|p| tessera_compiler::place::report::summary(&p.problem, &p.placement));
    let t1 = Instant::now();
    let mut pipeline =
        tessera_compiler::passes::Pipeline::parse(&opts.passes).map_err(|e| SessionError::Passes(e.to_string()))?;
    pipeline.verify_each = false;
    pipeline.run(&mut g, &mut |_| {}).map_err(|e| SessionError::Passes(e.to_string()))?;
    let passes_ms = t1.elapsed().as_secs_f64() * 1e3;
    let t2 = Instant::now();
    let copts = tessera_target_cpu::CpuOptions { ukernels: opts.ukernels, ..Default::default() };
    let target = match &opts.triple {
        None => tessera_target_cpu::ObjectTarget::Host,
        Some(t) => tessera_target_cpu::ObjectTarget::Triple(t.clone()),
    };
    let image = tessera_target_cpu::compile_image(&g, &copts, &target)?;
    let codegen_ms = t2.elapsed().as_secs_f64() * 1e3;
    let model = artifact::ModelInfo {
        source: path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        hash,
        inputs: g.inputs().iter().map(|(n, v)| format!("{n}: {}", g.ty(*v))).collect(),
        outputs: g.outputs().iter().map(|(n, v)| format!("{n}: {}", g.ty(*v))).collect(),
    };
    let report = CompileReport {
        kernels: image.meta.steps.len(),
        distinct_kernels: image.meta.kernels,
        code_bytes: image.meta.code_bytes,
        packed_weight_bytes: image.owned.iter().map(|o| o.len()).sum(),
        triple: image.meta.triple.clone(),
        features: image.meta.features.clone(),
        times: StartupTimes { import_ms, passes_ms, codegen_ms, load_ms: 0.0, cache: None },
        placed,
    };
    let extra: Vec<(&str, &[u8])> = extra.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let out = artifact::write(&image, model, opts.profile.clone(), placement, &extra)?;
    Ok((out, report))
}

/// A model priced and partitioned on a phone profile (what `tessera explain` reports).
#[cfg(feature = "jit")]
#[derive(Clone, Debug)]
pub struct Placed {
    pub problem: tessera_compiler::place::Problem,
    pub placement: tessera_compiler::place::Placement,
}

#[cfg(feature = "jit")]
/// Places the imported graph on `profile`: the placement pipeline (rewrites extracted by the
/// profile's cost model), kernels priced at the default bindings, then partitioned.
fn place_on_profile(mut g: tessera_ir::Graph, profile: &str) -> Result<Placed, SessionError> {
    let p = tessera_compiler::passes::profile::DeviceProfile::load(profile)
        .map_err(|e| SessionError::Profile(e.to_string()))?;
    tessera_compiler::passes::saturate::run_pipeline_for_profile(&mut g, HETERO_PIPELINE, &p)
        .map_err(|e| SessionError::Passes(e.to_string()))?;
    let b = tessera_compiler::place::Problem::default_bindings(&g, &[]);
    let problem =
        tessera_compiler::place::Problem::build(&g, &b, &p).map_err(|e| SessionError::Profile(e.to_string()))?;
    let placement = tessera_compiler::place::partition(&problem).map_err(|e| SessionError::Profile(e.to_string()))?;
    Ok(Placed { problem, placement })
}

enum Engine {
    Cpu(Box<tessera_target_cpu::Program>),
    /// A graph whose shapes follow from input values, compiled per value at run time.
    #[cfg(feature = "jit")]
    CpuSpecializing(Box<tessera_target_cpu::Specializing>),
    #[cfg(feature = "jit")]
    Interpreter,
    #[cfg(feature = "jit")]
    Gpu(Box<vulkan::GpuModel>),
    #[cfg(feature = "jit")]
    Npu(Box<tessera_target_npu::NpuModel>),
    #[cfg(feature = "jit")]
    Hetero(Box<hetero::HeteroModel>),
}

/// A compiled model, ready to run many times.
pub struct Session {
    graph: tessera_ir::Graph,
    engine: Engine,
    pub startup: StartupTimes,
}

impl Session {
    /// Loads a model (`.onnx`, or Tessera's text IR `.tir`), optimizes and compiles it.
    pub fn from_file(path: impl AsRef<Path>, opts: &SessionOptions) -> Result<Session, SessionError> {
        let path = path.as_ref();
        if path.extension().is_some_and(|e| e == "tsa") {
            return Session::from_artifact(path, opts.threads);
        }
        #[cfg(feature = "jit")]
        {
            if let Some(dir) = &opts.cache_dir {
                return Session::from_cache(path, dir, opts);
            }
            let t0 = Instant::now();
            let g = import_model(path, &opts.import)?;
            let import_ms = t0.elapsed().as_secs_f64() * 1e3;
            let mut s = Session::from_graph(g, opts)?;
            s.startup.import_ms = import_ms;
            Ok(s)
        }
        #[cfg(not(feature = "jit"))]
        Err(SessionError::Import(format!(
            "{}: this runtime loads ahead-of-time artifacts only (built without the `jit` feature): \
             compile the model with `tessera compile {} -o model.tsa` and open the .tsa",
            path.display(),
            path.display()
        )))
    }

    /// Opens an ahead-of-time artifact (`tessera compile`), checks it and maps its code:
    /// no compiler runs. `threads` as [`SessionOptions::threads`].
    pub fn from_artifact(path: impl AsRef<Path>, threads: usize) -> Result<Session, SessionError> {
        let t0 = Instant::now();
        let a = artifact::Artifact::open(path)?;
        Session::from_opened_artifact(&a, threads, t0)
    }

    /// A session from an artifact already opened and checked (`t0`: when opening began).
    pub(crate) fn from_opened_artifact(
        a: &artifact::Artifact,
        threads: usize,
        t0: Instant,
    ) -> Result<Session, SessionError> {
        let program = a.cpu_program(threads.max(1))?;
        let graph = program.graph().clone();
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(Session {
            graph,
            engine: Engine::Cpu(Box::new(program)),
            startup: StartupTimes { load_ms, ..Default::default() },
        })
    }

    #[cfg(feature = "jit")]
    /// The JIT cache: the artifact for this model and these options if one is stored and
    /// loads, else compiled into one, stored (written to a temporary file, then renamed), and
    /// loaded.
    fn from_cache(path: &Path, dir: &Path, opts: &SessionOptions) -> Result<Session, SessionError> {
        let bypass = |reason: &str| -> Result<Session, SessionError> {
            let mut o = opts.clone();
            o.cache_dir = None;
            let mut s = Session::from_file(path, &o)?;
            s.startup.cache = Some(CacheOutcome::Bypassed { reason: reason.into() });
            Ok(s)
        };
        if opts.target != Target::Cpu {
            return bypass("the JIT cache holds CPU code only");
        }
        let t0 = Instant::now();
        let hash = hash_file(path)?;
        let key = format!(
            "{}|{}|{:?}|{}|{}|{}|{}",
            hash,
            opts.passes,
            opts.ukernels,
            opts.import.onnxruntime_x86_matmul_integer,
            artifact::TESSERA_VERSION,
            tessera_target_cpu::CODEGEN_REVISION,
            tessera_target_cpu::host_features()?.join(",")
        );
        let entry = dir.join(format!("{}.tsa", &artifact::hash_bytes(key.as_bytes())[..24]));
        let mut replaced = None;
        if entry.exists() {
            match Session::from_artifact(&entry, opts.threads) {
                Ok(mut s) => {
                    s.startup.load_ms = t0.elapsed().as_secs_f64() * 1e3;
                    s.startup.cache = Some(CacheOutcome::Hit { path: entry });
                    return Ok(s);
                }
                Err(e) => replaced = Some(e.to_string()),
            }
        }
        let copts = CompileOptions {
            passes: opts.passes.clone(),
            import: opts.import.clone(),
            triple: None,
            ukernels: opts.ukernels,
            profile: None,
        };
        let (data, report) = match compile_hashed(path, &copts, hash) {
            Ok(r) => r,
            // Shapes that follow from input values compile per value: not cacheable.
            Err(SessionError::Cpu(e)) if e.is_unsupported() => {
                return bypass(&format!("not compiled ahead of time: {e}"))
            }
            Err(e) => return Err(e),
        };
        std::fs::create_dir_all(dir).map_err(|e| SessionError::Import(format!("JIT cache {}: {e}", dir.display())))?;
        let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &data)
            .and_then(|()| std::fs::rename(&tmp, &entry))
            .map_err(|e| SessionError::Import(format!("JIT cache {}: {e}", entry.display())))?;
        let t1 = Instant::now();
        let mut s = Session::from_artifact(&entry, opts.threads)?;
        s.startup = StartupTimes { load_ms: t1.elapsed().as_secs_f64() * 1e3, ..report.times };
        s.startup.cache = Some(match replaced {
            Some(reason) => CacheOutcome::Replaced { path: entry, reason },
            None => CacheOutcome::Miss { path: entry },
        });
        Ok(s)
    }

    #[cfg(feature = "jit")]
    /// Optimizes and compiles a graph.
    pub fn from_graph(mut g: tessera_ir::Graph, opts: &SessionOptions) -> Result<Session, SessionError> {
        let t0 = Instant::now();
        if opts.target == Target::Cpu && tessera_target_cpu::specialize::shapes_depend_on_data(&g) {
            // Shapes that follow from input values: the passes and the compiler run per value,
            // at the first run with it.
            let copts = tessera_target_cpu::CpuOptions {
                threads: opts.threads.max(1),
                ukernels: opts.ukernels,
                ..Default::default()
            };
            let spec = tessera_target_cpu::Specializing::with_pipeline(&g, &copts, &opts.passes)?;
            let engine = Engine::CpuSpecializing(Box::new(spec));
            let startup = StartupTimes { codegen_ms: t0.elapsed().as_secs_f64() * 1e3, ..Default::default() };
            return Ok(Session { graph: g, engine, startup });
        }
        let passes = match (opts.target, opts.passes.trim()) {
            (Target::Gpu, "default") => GPU_PIPELINE,
            (Target::Npu, "default") => NPU_PIPELINE,
            (Target::Hetero, "default") => HETERO_PIPELINE,
            (_, p) => p,
        };
        // The NPU and placement targets read the device profile.
        let profile = match opts.target {
            Target::Npu | Target::Hetero => Some(
                tessera_compiler::passes::profile::DeviceProfile::load(&opts.device_profile)
                    .map_err(|e| SessionError::Profile(e.to_string()))?,
            ),
            _ => None,
        };
        if let (Target::Hetero, "default", Some(p)) = (opts.target, opts.passes.trim(), &profile) {
            // The rewrites extract by the same cost model the placement uses.
            tessera_compiler::passes::saturate::run_pipeline_for_profile(&mut g, passes, p)
                .map_err(|e| SessionError::Passes(e.to_string()))?;
        } else {
            let mut pipeline =
                tessera_compiler::passes::Pipeline::parse(passes).map_err(|e| SessionError::Passes(e.to_string()))?;
            pipeline.verify_each = false;
            pipeline.run(&mut g, &mut |_| {}).map_err(|e| SessionError::Passes(e.to_string()))?;
        }
        let passes_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let engine = match opts.target {
            Target::Cpu => {
                let copts = tessera_target_cpu::CpuOptions {
                    threads: opts.threads.max(1),
                    ukernels: opts.ukernels,
                    ..Default::default()
                };
                if tessera_target_cpu::specialize::shapes_depend_on_data(&g) {
                    // `?` dims the passes left: compiled at the first run, per value.
                    Engine::CpuSpecializing(Box::new(tessera_target_cpu::Specializing::new(&g, &copts)?))
                } else {
                    let p = tessera_target_cpu::compile(&g, &copts)?;
                    // Weights the program packed into its own bytes are not kept twice.
                    if g.release_constants(|v| p.reads(v)) > 0 {
                        release_free_memory();
                    }
                    Engine::Cpu(Box::new(p))
                }
            }
            Target::Interpreter => Engine::Interpreter,
            Target::Gpu => {
                let vk = std::sync::Arc::new(vulkan::Vulkan::new()?);
                Engine::Gpu(Box::new(vulkan::GpuModel::new(vk, g.clone())))
            }
            Target::Npu => {
                let p = profile.as_ref().expect("loaded for the NPU target");
                let dev = tessera_target_npu::Device::from_profile(p).ok_or_else(|| {
                    SessionError::Profile(format!("profile {:?} describes no NPU (no [npu] section)", p.name))
                })?;
                Engine::Npu(Box::new(tessera_target_npu::NpuModel::new(g.clone(), dev)))
            }
            Target::Hetero => {
                let p = profile.as_ref().expect("loaded for placement");
                let b = tessera_compiler::place::Problem::default_bindings(&g, &opts.placement_bindings);
                let copts = tessera_target_cpu::CpuOptions {
                    threads: opts.threads.max(1),
                    ukernels: opts.ukernels,
                    ..Default::default()
                };
                Engine::Hetero(Box::new(hetero::HeteroModel::new(g.clone(), p, &b, &copts)?))
            }
        };
        let codegen_ms = t1.elapsed().as_secs_f64() * 1e3;
        Ok(Session { graph: g, engine, startup: StartupTimes { passes_ms, codegen_ms, ..Default::default() } })
    }

    /// The model's inputs: names and types (dims may be symbols bound at run time).
    pub fn inputs(&self) -> Vec<(String, TensorType)> {
        self.graph.inputs().iter().map(|(n, v)| (n.clone(), self.graph.ty(*v).clone())).collect()
    }

    /// The model's outputs: names and types.
    pub fn outputs(&self) -> Vec<(String, TensorType)> {
        self.graph.outputs().iter().map(|(n, v)| (n.clone(), self.graph.ty(*v).clone())).collect()
    }

    /// The optimized graph the session runs.
    pub fn graph(&self) -> &tessera_ir::Graph {
        &self.graph
    }

    /// The CPU program, when the target is the CPU.
    pub fn cpu_program(&self) -> Option<&tessera_target_cpu::Program> {
        match &self.engine {
            Engine::Cpu(p) => Some(p),
            #[cfg(feature = "jit")]
            _ => None,
        }
    }

    #[cfg(feature = "jit")]
    /// The GPU model, when the target is the GPU: run it directly for a report of what ran
    /// where ([`vulkan::GpuModel::run`]).
    pub fn gpu_model(&self) -> Option<&vulkan::GpuModel> {
        match &self.engine {
            Engine::Gpu(m) => Some(m),
            _ => None,
        }
    }

    #[cfg(feature = "jit")]
    /// The NPU model, when the target is the NPU: run it directly for the simulator's report
    /// ([`tessera_target_npu::NpuModel::run`]).
    pub fn npu_model(&self) -> Option<&tessera_target_npu::NpuModel> {
        match &self.engine {
            Engine::Npu(m) => Some(m),
            _ => None,
        }
    }

    #[cfg(feature = "jit")]
    /// The placed model, when the target is [`Target::Hetero`]: run it directly for the
    /// timeline of what ran where ([`hetero::HeteroModel::run`]).
    pub fn hetero_model(&self) -> Option<&hetero::HeteroModel> {
        match &self.engine {
            Engine::Hetero(m) => Some(m),
            _ => None,
        }
    }

    /// Runs on inputs in the model's input order; returns owned outputs in its output order.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, SessionError> {
        match &self.engine {
            Engine::Cpu(p) => Ok(p.run(inputs)?),
            #[cfg(feature = "jit")]
            Engine::CpuSpecializing(s) => Ok(s.run(inputs)?),
            #[cfg(feature = "jit")]
            Engine::Interpreter => Ok(tessera_ir::run(&self.graph, inputs.to_vec())?),
            #[cfg(feature = "jit")]
            Engine::Gpu(m) => Ok(m.run(inputs, vulkan::Fallback::Host)?.0),
            #[cfg(feature = "jit")]
            Engine::Npu(m) => Ok(m.run(inputs)?.0),
            #[cfg(feature = "jit")]
            Engine::Hetero(m) => Ok(m.run(inputs)?.0),
        }
    }

    /// Runs on named inputs (any order); every input must be given exactly once.
    pub fn run_named(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<Tensor>, SessionError> {
        let mut ordered: Vec<Option<Tensor>> = vec![None; self.graph.inputs().len()];
        let expected = || self.graph.inputs().iter().map(|(n, _)| format!("{n:?}")).collect::<Vec<_>>().join(", ");
        for (name, t) in inputs {
            let i = self.graph.inputs().iter().position(|(n, _)| n == name).ok_or_else(|| {
                SessionError::Cpu(CpuError::UnknownInput { name: name.to_string(), expected: expected() })
            })?;
            if ordered[i].replace(t.clone()).is_some() {
                return Err(SessionError::DuplicateInput { name: name.to_string() });
            }
        }
        let mut all = Vec::new();
        for (slot, (name, _)) in ordered.into_iter().zip(self.graph.inputs()) {
            all.push(slot.ok_or_else(|| {
                SessionError::Cpu(CpuError::MissingInput { name: name.clone(), expected: expected() })
            })?);
        }
        self.run(&all)
    }

    /// Runs and writes each output's bytes (its dtype's packed layout, row-major) into the
    /// caller's buffers, which must have exactly the output's byte size.
    pub fn run_into(&self, inputs: &[Tensor], outputs: &mut [&mut [u8]]) -> Result<(), SessionError> {
        match &self.engine {
            // Straight from the program's arena: no output tensor is allocated.
            Engine::Cpu(p) => Ok(p.run_into(inputs, outputs)?),
            #[cfg(feature = "jit")]
            _ => self.run_into_by_copy(inputs, outputs),
        }
    }

    /// [`Session::run_into`] for the engines that return owned tensors.
    #[cfg(feature = "jit")]
    fn run_into_by_copy(&self, inputs: &[Tensor], outputs: &mut [&mut [u8]]) -> Result<(), SessionError> {
        let outs = self.run(inputs)?;
        tessera_target_cpu::check_output_count(outputs.len(), outs.len())?;
        for (j, (t, buf)) in outs.iter().zip(outputs.iter_mut()).enumerate() {
            tessera_target_cpu::copy_output(j, &t.to_bytes(), buf)?;
        }
        Ok(())
    }
}

/// Hands freed heap memory back to the system now: glibc keeps freed blocks below its mmap
/// threshold (most weight matrices, a model file's parsed metadata) resident otherwise.
#[cfg(feature = "jit")]
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn session_is_send_and_sync() {
        assert_send_sync::<Session>();
    }

    /// Outputs written into caller buffers hold what `run` returns; a wrong number of buffers
    /// or a buffer of the wrong size is an error naming it, and a failed call can be retried.
    #[cfg(feature = "jit")]
    #[test]
    fn run_into_writes_what_run_returns_and_checks_the_buffers() {
        let g = tessera_ir::parse(
            "graph @g {
  v0: f32[2, 3] = input \"x\"
  v1: f32[2, 3] = exp v0
  v2: f32[3, 2] = transpose v1 {perm = [1, 0]}
  v3: f32[2, 3] = add v0, v1
  output \"t\" = v2
  output \"s\" = v3
}
",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let x = Tensor::from_f32(DType::F32, &[2, 3], vec![0.5, -1.0, 2.0, 0.0, 1.5, -0.25]).unwrap();
        let session = Session::from_graph(g, &SessionOptions::default()).unwrap();
        assert!(session.cpu_program().is_some(), "the default target compiles for the CPU");
        let expected: Vec<Vec<u8>> =
            session.run(std::slice::from_ref(&x)).unwrap().iter().map(|t| t.to_bytes().to_vec()).collect();
        let (mut a, mut b) = (vec![0u8; 24], vec![0u8; 24]);
        let too_few = session.run_into(std::slice::from_ref(&x), &mut [&mut a[..]]).unwrap_err().to_string();
        assert!(too_few.contains("1 output buffers given for 2 outputs"), "{too_few}");
        let mut short = [0u8; 20];
        let wrong =
            session.run_into(std::slice::from_ref(&x), &mut [&mut a[..], &mut short[..]]).unwrap_err().to_string();
        assert!(wrong.contains("output 1 needs 24 bytes, its buffer has 20"), "{wrong}");
        session.run_into(std::slice::from_ref(&x), &mut [&mut a[..], &mut b[..]]).unwrap();
        assert_eq!([a, b], [expected[0].clone(), expected[1].clone()]);
        // Releasing the pooled buffers changes nothing but memory.
        session.cpu_program().unwrap().release_buffers();
        let again: Vec<Vec<u8>> =
            session.run(std::slice::from_ref(&x)).unwrap().iter().map(|t| t.to_bytes().to_vec()).collect();
        assert_eq!(again, expected);
    }
}
