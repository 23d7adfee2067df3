//! A compiled program and its executor: input validation, symbol binding, arena planning per
//! set of sizes, and kernel calls split across the thread pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tessera_ir::{Bindings, Blob, DType, Dim, Graph, Node, Tensor, TensorData};
use tessera_passes::memory;

use crate::{CpuError, KernelFault};

/// A kernel buffer: a graph value, or bytes the program owns (packed weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BufRef {
    Value(tessera_ir::Value),
    Owned(usize),
}

/// The signature of every kernel: `fn(bufs: *const *mut u8, syms: *const i64, lo: i64, hi: i64) -> i32`.
/// `bufs` holds one pointer per operand and result, `syms` the run-time sizes of the graph's
/// symbolic dims, `[lo, hi)` the part of the kernel's parallel range this call does. The return
/// value is 0, or an error code (see [`crate::KernelFault`]).
pub type KernelFn = unsafe extern "C" fn(*const *mut u8, *const i64, i64, i64) -> i32;

/// A dim as data (artifacts hold it): a size, or a symbol's name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DimSpec {
    N(u64),
    S(String),
}

impl DimSpec {
    pub fn of(d: &Dim) -> DimSpec {
        match d {
            Dim::Static(n) => DimSpec::N(*n),
            Dim::Sym(s) => DimSpec::S(s.to_string()),
            // Never in a compiled program (`symbols` refuses it); binds to nothing.
            Dim::Unknown => DimSpec::S("?".into()),
        }
    }

    pub fn dim(&self) -> Dim {
        match self {
            DimSpec::N(n) => Dim::Static(*n),
            DimSpec::S(s) => Dim::Sym(s.as_str().into()),
        }
    }

    fn resolve(&self, b: &Bindings) -> i64 {
        match self {
            DimSpec::N(n) => *n as i64,
            DimSpec::S(s) => b.get(s).unwrap_or(0) as i64,
        }
    }
}

/// A kernel's run-time parameters (or scratch bytes per chunk) as a function of the bound
/// symbol sizes, as data: a JIT-compiled program and a loaded artifact compute them alike.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ParamSpec {
    /// One value: `prod(dims) * mul + add`.
    Product { dims: Vec<DimSpec>, mul: i64, add: i64 },
    /// Attention's scratch bytes per chunk: the transposed keys, the values and `mr` rows of
    /// scores (`4 * (ceil8(sk) * d + ceil8(dv) * sk + mr * ceil16(sk))`).
    AttentionScratch { sk: DimSpec, d: DimSpec, dv: DimSpec, mr: i64 },
    /// A slice's clamped start on every axis (0 on axes it does not slice): `axes[i]` is sliced
    /// from `starts[i]` to `ends[i]` (an integer, or a symbol's size) by `steps[axes[i]]`.
    SliceStarts {
        in_dims: Vec<DimSpec>,
        axes: Vec<usize>,
        starts: Vec<SliceBound>,
        ends: Vec<SliceBound>,
        steps: Vec<i64>,
    },
}

/// A slice bound: an integer, or a symbol's size.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum SliceBound {
    Int(i64),
    Sym(String),
}

impl ParamSpec {
    pub fn eval(&self, b: &Bindings) -> Vec<i64> {
        match self {
            ParamSpec::Product { dims, mul, add } => {
                vec![dims.iter().map(|d| d.resolve(b)).product::<i64>() * mul + add]
            }
            ParamSpec::AttentionScratch { sk, d, dv, mr } => {
                let (sk, d, dv) = (sk.resolve(b), d.resolve(b), dv.resolve(b));
                let floats = (sk + 7) / 8 * 8 * d + (dv + 7) / 8 * 8 * sk + mr * ((sk + 15) / 16 * 16);
                vec![floats * 4]
            }
            ParamSpec::SliceStarts { in_dims, axes, starts, ends, steps } => {
                let mut out = vec![0i64; in_dims.len()];
                let t = |d: &SliceBound| match d {
                    SliceBound::Int(v) => *v,
                    SliceBound::Sym(s) => b.get(s).unwrap_or(0) as i64,
                };
                for (i, &a) in axes.iter().enumerate() {
                    let (Some(n), Some(s), Some(e), Some(&step)) =
                        (in_dims.get(a), starts.get(i), ends.get(i), steps.get(a))
                    else {
                        continue;
                    };
                    out[a] = tessera_ir::infer::slice_bounds(n.resolve(b), t(s), t(e), step).0;
                }
                out
            }
        }
    }
}

pub(crate) struct Step {
    pub node: Node,
    pub op: &'static str,
    pub kernel: KernelFn,
    pub bufs: Vec<BufRef>,
    /// Parallel range: `ceil(prod(dims) / div)` units, split evenly across threads.
    pub par: Option<(Vec<Dim>, u64)>,
    pub params: Option<ParamSpec>,
    /// Scratch bytes each parallel chunk needs (f32 rows for attention scores).
    pub scratch: Option<ParamSpec>,
    pub serial: bool,
    pub name: String,
}

/// What keeps the kernels' machine code mapped: the JIT module, or an artifact's code mapping.
pub(crate) struct Code(#[allow(dead_code)] pub Box<dyn std::any::Any>);
// SAFETY: the holder is only kept alive (its memory holds the finalized code); nothing mutates it
// once the kernels are callable, and the kernels are plain functions of their arguments.
unsafe impl Send for Code {}
unsafe impl Sync for Code {}

/// Figures about a compiled program.
#[derive(Clone, Debug, Default)]
pub struct ProgramStats {
    pub kernels: usize,
    pub code_bytes: usize,
    pub packed_weight_bytes: usize,
    pub compile_ms: f64,
    pub isa: String,
}

/// Options for one run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Collect per-step times into the returned profile.
    pub profile: bool,
}

/// A graph compiled for the host CPU; runs any number of times, from any number of threads.
pub struct Program {
    _code: Code,
    /// The compiled graph; constants no kernel reads keep only their summary.
    graph: Graph,
    /// Per value: whether a kernel reads it or it is a graph output.
    reads: Vec<bool>,
    steps: Vec<Step>,
    owned: Vec<Blob>,
    syms: Vec<Arc<str>>,
    plans: Mutex<HashMap<Vec<usize>, Arc<RunPlan>>>,
    arenas: Mutex<Vec<Vec<Chunk>>>,
    /// Kernel scratch kept between runs (its pages stay mapped).
    scratches: Mutex<Vec<Vec<Chunk>>>,
    pool: Option<crate::pool::Pool>,
    threads: usize,
    min_split_bytes: u64,
    pub stats: ProgramStats,
    /// (kernel, Cranelift IR) when compiled with `listing.clif`.
    pub clif: Vec<(String, String)>,
    /// (kernel, machine code listing) when compiled with `listing.asm`.
    pub asm: Vec<(String, String)>,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Chunk([u8; 64]);

/// Takes a run's outputs while the arena holds them: (index, dtype, shape, bytes).
type OutputSink<'a> = dyn FnMut(usize, tessera_ir::DType, &[usize], &[u8]) -> Result<(), CpuError> + 'a;

struct RunPlan {
    bindings: Bindings,
    offsets: Vec<Option<u64>>,
    arena_bytes: u64,
    shapes: Vec<Vec<usize>>,
    /// Per step: whether its buffers are big enough to be worth splitting across threads
    /// (`CpuOptions::min_split_bytes`).
    split: Vec<bool>,
}

/// The graph's symbols, in input order; every symbolic dim must be bound by a graph input.
/// Where every value lives for one set of symbol sizes: its shape, its bytes, its offset in
/// the activation arena (inputs and constants have none).
pub(crate) struct Layout {
    pub shapes: Vec<Vec<usize>>,
    pub sizes: Vec<u64>,
    pub offsets: Vec<Option<u64>>,
    pub arena_bytes: u64,
}

pub(crate) fn layout(g: &Graph, b: &Bindings) -> Result<Layout, CpuError> {
    let mut shapes = vec![Vec::new(); g.n_values()];
    for (v, vd) in g.values() {
        shapes[v.index()] = vd
            .ty
            .shape
            .dims()
            .iter()
            .map(|d| b.resolve(d).ok_or_else(|| CpuError::Memory(format!("{v}: dim {d} is not bound"))))
            .collect::<Result<_, _>>()?;
    }
    let sizes = memory::sizes(g, b).map_err(|e| CpuError::Memory(e.to_string()))?;
    let order = memory::current_order(g);
    let plan = memory::best_plan(g, &order, &sizes);
    let mut offsets = vec![None; g.n_values()];
    for (v, off) in plan.offsets {
        offsets[v.index()] = Some(off);
    }
    Ok(Layout { shapes, sizes, offsets, arena_bytes: plan.arena_bytes })
}

/// Checks inputs against the graph's signature and binds its symbols.
pub(crate) fn bind(graph: &Graph, inputs: &[Tensor]) -> Result<Bindings, CpuError> {
    use tessera_ir::InterpError as E;
    tessera_ir::bind_inputs(graph, inputs).map_err(|e| match e {
        E::InputCount { expected, actual } => CpuError::InputCount { expected, actual },
        E::InputDtype { name, expected, actual } => CpuError::InputDtype { name, expected, actual },
        E::InputShape { name, actual, message } => CpuError::InputShape { name, actual, message },
        other => CpuError::Memory(other.to_string()),
    })
}

pub(crate) fn symbols(g: &Graph) -> Result<Vec<Arc<str>>, CpuError> {
    let mut syms: Vec<Arc<str>> = Vec::new();
    for (_, v) in g.inputs() {
        for d in g.ty(*v).shape.dims() {
            if let Dim::Sym(s) = d {
                if !syms.contains(s) {
                    syms.push(s.clone());
                }
            }
        }
    }
    let mut problems: Vec<String> = Vec::new();
    for (v, vd) in g.values() {
        for d in vd.ty.shape.dims() {
            match d {
                Dim::Unknown => {
                    problems.push(format!("{v}: a dim `?` known only from data (the CPU target needs shapes that follow from the input shapes)"));
                    break;
                }
                Dim::Sym(s) if !syms.contains(s) => {
                    problems.push(format!("{v}: symbol `{s}` is not bound by any input"));
                    break;
                }
                _ => {}
            }
        }
    }
    if !problems.is_empty() {
        return Err(CpuError::UnsupportedNodes { count: problems.len(), list: list(&problems) });
    }
    Ok(syms)
}

pub(crate) fn list(items: &[String]) -> String {
    items.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n")
}

/// Marks the values kernels read through `bufs` and the graph's outputs (an output may be a
/// constant itself, copied out of the graph's bytes after a run), and releases every other
/// constant's bytes (packed into the program's own, or unused). Returns the marks per value.
pub(crate) fn release_unread<'a>(graph: &mut Graph, bufs: impl Iterator<Item = &'a BufRef>) -> Vec<bool> {
    let mut reads = vec![false; graph.n_values()];
    for (_, v) in graph.outputs() {
        reads[v.index()] = true;
    }
    for b in bufs {
        if let BufRef::Value(v) = b {
            reads[v.index()] = true;
        }
    }
    graph.release_constants(|v| reads[v.index()]);
    reads
}

/// What [`Program::assemble`] takes besides the code and the steps.
pub(crate) struct Parts {
    /// The graph the steps were lowered from (all its constants; those no kernel reads are
    /// released here).
    pub graph: Graph,
    pub owned: Vec<Blob>,
    pub syms: Vec<Arc<str>>,
    pub threads: usize,
    pub min_split_bytes: u64,
    pub stats: ProgramStats,
}

impl Program {
    pub(crate) fn assemble(code: Code, steps: Vec<Step>, parts: Parts) -> Result<Program, CpuError> {
        let Parts { mut graph, owned, syms, threads, min_split_bytes, stats } = parts;
        let reads = release_unread(&mut graph, steps.iter().flat_map(|s| &s.bufs));
        let threads = threads.max(1);
        let pool = if threads > 1 {
            Some(crate::pool::Pool::new(threads).map_err(|e| CpuError::Codegen(format!("thread pool: {e}")))?)
        } else {
            None
        };
        Ok(Program {
            _code: code,
            graph,
            reads,
            steps,
            owned,
            syms,
            plans: Mutex::new(HashMap::new()),
            arenas: Mutex::new(Vec::new()),
            scratches: Mutex::new(Vec::new()),
            pool,
            threads,
            min_split_bytes,
            stats,
            clif: Vec::new(),
            asm: Vec::new(),
        })
    }
}

/// A raw pointer the kernels write through; chunks of one step never overlap.
#[derive(Clone, Copy)]
struct Ptrs<'a>(&'a [*mut u8]);
// SAFETY: the pointers address buffers that outlive the step; parallel chunks of a kernel write
// disjoint parts of its results (each kernel's parallel range partitions its output).
unsafe impl Send for Ptrs<'_> {}
unsafe impl Sync for Ptrs<'_> {}

impl<'a> Ptrs<'a> {
    fn get(self) -> &'a [*mut u8] {
        self.0
    }
}

impl Program {
    /// The graph this program was compiled from.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Kernel names in execution order (for profiles).
    pub fn step_names(&self) -> Vec<String> {
        self.steps.iter().map(|s| format!("{} {}", s.node, s.name)).collect()
    }

    fn plan(&self, b: &Bindings) -> Result<Arc<RunPlan>, CpuError> {
        let key: Vec<usize> = self.syms.iter().map(|s| b.get(s).unwrap_or(0)).collect();
        if let Some(p) = self.plans.lock().expect("plan cache").get(&key) {
            return Ok(p.clone());
        }
        let Layout { shapes, sizes, offsets, arena_bytes } = layout(&self.graph, b)?;
        let split = self
            .steps
            .iter()
            .map(|st| {
                let bytes: u64 = st
                    .bufs
                    .iter()
                    .map(|r| match r {
                        BufRef::Value(v) => sizes[v.index()],
                        BufRef::Owned(i) => self.owned[*i].len() as u64,
                    })
                    .sum();
                bytes >= self.min_split_bytes
            })
            .collect();
        let rp = Arc::new(RunPlan { bindings: b.clone(), offsets, arena_bytes, shapes, split });
        self.plans.lock().expect("plan cache").insert(key, rp.clone());
        Ok(rp)
    }

    /// Bytes of the activation arena for the sizes `inputs` bind (plans and caches it).
    pub fn arena_bytes(&self, inputs: &[Tensor]) -> Result<u64, CpuError> {
        let b = bind(&self.graph, inputs)?;
        Ok(self.plan(&b)?.arena_bytes)
    }

    /// Runs the program on inputs in the graph's input order; returns outputs in its output order.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, CpuError> {
        self.run_profiled(inputs, &RunOptions::default()).map(|(o, _)| o)
    }

    /// Frees the activation arenas and kernel scratch kept between runs (the next run
    /// allocates what it needs): after a run much larger than the ones to follow, such as a
    /// prompt before token-by-token decoding, so its buffers do not stay resident.
    pub fn release_buffers(&self) {
        self.arenas.lock().expect("buffer pool").clear();
        self.scratches.lock().expect("buffer pool").clear();
    }

    /// Whether a kernel reads value `v` (a constant that none reads was packed into the
    /// program's own bytes, or is unused).
    pub fn reads(&self, v: tessera_ir::Value) -> bool {
        self.reads.get(v.index()).copied().unwrap_or(false)
    }

    /// Runs, and with `opts.profile` returns the seconds each step took.
    pub fn run_profiled(&self, inputs: &[Tensor], opts: &RunOptions) -> Result<(Vec<Tensor>, Vec<f64>), CpuError> {
        let mut outputs = Vec::with_capacity(self.graph.outputs().len());
        let times = self.run_with(inputs, opts, &mut |j, dtype, shape, bytes| {
            outputs.push(
                Tensor::from_bytes(dtype, shape, bytes).map_err(|e| CpuError::Memory(format!("output {j}: {e}")))?,
            );
            Ok(())
        })?;
        Ok((outputs, times))
    }

    /// Runs and writes each output's bytes (its dtype's packed layout, row-major) straight
    /// from the program's arena into the caller's buffers, which must have exactly the
    /// output's byte size (no output tensor is allocated).
    pub fn run_into(&self, inputs: &[Tensor], outputs: &mut [&mut [u8]]) -> Result<(), CpuError> {
        check_output_count(outputs.len(), self.graph.outputs().len())?;
        self.run_with(inputs, &RunOptions::default(), &mut |j, _, _, bytes| copy_output(j, bytes, outputs[j]))
            .map(|_| ())
    }

    /// Runs, hands `out` each output (index, dtype, shape, bytes) in order while the arena
    /// still holds it, and with `opts.profile` returns the seconds each step took.
    fn run_with(&self, inputs: &[Tensor], opts: &RunOptions, out: &mut OutputSink) -> Result<Vec<f64>, CpuError> {
        let g = &self.graph;
        let b = bind(&self.graph, inputs)?;
        let plan = self.plan(&b)?;
        let syms: Vec<i64> = self.syms.iter().map(|s| b.get(s).unwrap_or(0) as i64).collect();
        // Input bytes: f32 and i64 tensors in standard layout are read where they are (on a
        // little-endian host their storage is the packed layout); others are packed.
        let input_bytes: Vec<std::borrow::Cow<[u8]>> = inputs.iter().map(tensor_bytes).collect();
        let mut arena = self.take_arena(plan.arena_bytes as usize);
        let arena_ptr = arena.as_mut_ptr() as *mut u8;
        let mut ptrs: Vec<*mut u8> = vec![std::ptr::NonNull::<u8>::dangling().as_ptr(); g.n_values()];
        for ((_, v), bytes) in g.inputs().iter().zip(&input_bytes) {
            if !bytes.is_empty() {
                ptrs[v.index()] = bytes.as_ptr() as *mut u8;
            }
        }
        for c in g.constants() {
            if !self.reads[c.value.index()] {
                continue;
            }
            if let Some(bytes) = c.data.bytes() {
                if !bytes.is_empty() {
                    ptrs[c.value.index()] = bytes.as_ptr() as *mut u8;
                }
            } else {
                self.put_arena(arena);
                return Err(CpuError::Memory(format!(
                    "constant {} holds only a summary of its data: load the graph with its weights",
                    c.value
                )));
            }
        }
        for (v, off) in plan.offsets.iter().enumerate() {
            if let Some(off) = off {
                // SAFETY: offsets come from the plan, which sizes the arena to hold every slot.
                ptrs[v] = unsafe { arena_ptr.add(*off as usize) };
            }
        }
        let mut times = Vec::new();
        // Scratch grows to what the steps ask (`ensure`), so any kept one will do.
        let mut scratch = take_chunks(&self.scratches, 0);
        let result = self.run_steps(&plan, &syms, &ptrs, &mut scratch, opts.profile.then_some(&mut times));
        keep_chunks(&self.scratches, scratch);
        let outputs = result.and_then(|()| {
            for (j, (_, v)) in g.outputs().iter().enumerate() {
                let ty = g.ty(*v);
                let shape = &plan.shapes[v.index()];
                let n: usize = shape.iter().product();
                let len = ty.dtype.storage_bytes(n);
                let bytes: &[u8] = if len == 0 {
                    &[]
                } else {
                    // SAFETY: the value's buffer holds `len` bytes (planned from the same shape).
                    unsafe { std::slice::from_raw_parts(ptrs[v.index()], len) }
                };
                out(j, ty.dtype, shape, bytes)?;
            }
            Ok(())
        });
        self.put_arena(arena);
        outputs.map(|()| times)
    }

    fn take_arena(&self, bytes: usize) -> Vec<Chunk> {
        take_chunks(&self.arenas, bytes.div_ceil(64).max(1))
    }

    fn put_arena(&self, a: Vec<Chunk>) {
        keep_chunks(&self.arenas, a)
    }

    fn run_steps(
        &self,
        plan: &RunPlan,
        syms: &[i64],
        ptrs: &[*mut u8],
        scratch: &mut Vec<Chunk>,
        mut times: Option<&mut Vec<f64>>,
    ) -> Result<(), CpuError> {
        let mut bufs: Vec<*mut u8> = Vec::with_capacity(16);
        let mut args: Vec<i64> = Vec::with_capacity(syms.len() + 8);
        for (si, step) in self.steps.iter().enumerate() {
            let t0 = times.as_ref().map(|_| Instant::now());
            bufs.clear();
            for r in &step.bufs {
                bufs.push(match r {
                    BufRef::Value(v) => ptrs[v.index()],
                    BufRef::Owned(i) => self.owned[*i].as_ptr() as *mut u8,
                });
            }
            args.clear();
            args.extend_from_slice(syms);
            if let Some(p) = &step.params {
                args.extend(p.eval(&plan.bindings));
            }
            let units = match &step.par {
                Some((dims, div)) => {
                    let n: u64 = dims.iter().map(|d| plan.bindings.resolve(d).unwrap_or(0) as u64).product();
                    n.div_ceil((*div).max(1)) as i64
                }
                None => 1,
            };
            let chunks = if step.par.is_some() && self.pool.is_some() && !step.serial && plan.split[si] {
                (self.threads as i64).min(units).max(1)
            } else {
                1
            };
            let scratch_per = step.scratch.as_ref().map(|f| f.eval(&plan.bindings)[0] as usize).unwrap_or(0);
            let code = if chunks <= 1 {
                if scratch_per > 0 {
                    ensure(scratch, scratch_per);
                    bufs.push(scratch.as_mut_ptr() as *mut u8);
                }
                // SAFETY: buffers and sizes were checked against the plan; the kernel reads and
                // writes only inside them for the bound sizes.
                unsafe { (step.kernel)(bufs.as_ptr(), args.as_ptr(), 0, units) }
            } else {
                let per = scratch_per.div_ceil(64) * 64;
                ensure(scratch, per * chunks as usize);
                let base = scratch.as_mut_ptr() as *mut u8;
                let pool = self.pool.as_ref().expect("pool");
                let bufs_ref = Ptrs(&bufs);
                let base = base as usize;
                let codes: Vec<std::sync::atomic::AtomicI32> =
                    (0..chunks).map(|_| std::sync::atomic::AtomicI32::new(0)).collect();
                let args = &args;
                pool.run(chunks as usize, &|c| {
                    let c = c as i64;
                    let lo = units * c / chunks;
                    let hi = units * (c + 1) / chunks;
                    let mut local: Vec<*mut u8> = bufs_ref.get().to_vec();
                    if per > 0 {
                        local.push((base + per * c as usize) as *mut u8);
                    }
                    // SAFETY: as above; chunks cover disjoint parts of the parallel range.
                    let code = unsafe { (step.kernel)(local.as_ptr(), args.as_ptr(), lo, hi) };
                    codes[c as usize].store(code, std::sync::atomic::Ordering::Relaxed);
                });
                codes.iter().map(|c| c.load(std::sync::atomic::Ordering::Relaxed)).find(|&c| c != 0).unwrap_or(0)
            };
            if let (Some(t), Some(t0)) = (times.as_deref_mut(), t0) {
                t.push(t0.elapsed().as_secs_f64());
            }
            if code != 0 {
                let message = KernelFault::from_code(code)
                    .map(|f| f.message().to_string())
                    .unwrap_or_else(|| format!("kernel returned code {code}"));
                return Err(CpuError::Kernel { node: step.node, op: step.op, message });
            }
        }
        Ok(())
    }
}

/// A tensor's bytes in the packed layout kernels read: borrowed where its storage already is
/// that layout, packed otherwise.
fn tensor_bytes(t: &Tensor) -> std::borrow::Cow<'_, [u8]> {
    fn bytes_of<T>(s: &[T]) -> &[u8] {
        // SAFETY: f32 and i64 have no padding and every byte pattern is a valid u8.
        unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
    }
    let borrowed = match (t.dtype(), t.data()) {
        _ if cfg!(target_endian = "big") => None,
        (DType::F32, TensorData::Float(a)) => a.as_slice().map(bytes_of),
        (DType::I64, TensorData::Int(a)) => a.as_slice().map(bytes_of),
        _ => None,
    };
    borrowed.map_or_else(|| std::borrow::Cow::Owned(t.to_bytes()), std::borrow::Cow::Borrowed)
}

/// For `run_into`: as many buffers as outputs.
pub fn check_output_count(given: usize, outputs: usize) -> Result<(), CpuError> {
    if given != outputs {
        return Err(CpuError::Memory(format!("{given} output buffers given for {outputs} outputs")));
    }
    Ok(())
}

/// For `run_into`: output `j`'s bytes into its buffer, which must be exactly their size.
pub fn copy_output(j: usize, bytes: &[u8], buf: &mut [u8]) -> Result<(), CpuError> {
    if bytes.len() != buf.len() {
        return Err(CpuError::Memory(format!("output {j} needs {} bytes, its buffer has {}", bytes.len(), buf.len())));
    }
    buf.copy_from_slice(bytes);
    Ok(())
}

/// A kept buffer of at least `chunks` chunks from `pool`, or a new one.
fn take_chunks(pool: &Mutex<Vec<Vec<Chunk>>>, chunks: usize) -> Vec<Chunk> {
    let mut pool = pool.lock().expect("buffer pool");
    match pool.iter().position(|a| a.len() >= chunks) {
        Some(i) => pool.swap_remove(i),
        // None is large enough (a decode step with a few more cached rows than the last): a
        // kept one is replaced rather than joined, so the pool does not collect a buffer per
        // size.
        None => {
            drop(pool.pop());
            vec![Chunk([0; 64]); chunks]
        }
    }
}

/// Keeps `a` for a later run (at most 4 per pool: one per concurrent run is typical).
fn keep_chunks(pool: &Mutex<Vec<Vec<Chunk>>>, a: Vec<Chunk>) {
    let mut pool = pool.lock().expect("buffer pool");
    if pool.len() < 4 {
        pool.push(a);
    }
}

fn ensure(v: &mut Vec<Chunk>, bytes: usize) {
    let chunks = bytes.div_ceil(64);
    if v.len() < chunks {
        v.resize(chunks, Chunk([0; 64]));
    }
}
