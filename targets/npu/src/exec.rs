//! Running a graph with the NPU: every integer matrix product the NPU accepts runs as a compiled
//! stream on the simulator, everything else on the host through the reference interpreter
//! (`tessera_ir::run_node`), and the report says which ran where and why.
//!
//! What the NPU takes: `matmul_integer` (8-bit activations, 8- or constant 4-bit weights, zero
//! points per tensor, per row of `a` or per column of `b`), together with the output stage
//! that follows it when there is one: `cast` to f32, `mul` by a per-tensor or per-column
//! scale, optionally `add` of a per-tensor or per-column offset, and optionally `quantize` by
//! 1 into u8 or i8 (the form the ONNX importer gives QLinearMatMul and the dynamic-quantized
//! models' dequantization). Float ops stay on the host: the NPU computes on integers and no
//! float op carries quantization parameters to run it with.
//!
//! Kernels compile per shape at their first run and are cached in the [`NpuModel`].

use crate::compile::{compile, Compiled, Decline, Epilogue, MatMulKernel, Role, Src, Tiling};
use crate::device::Device;
use crate::sim::Stats;
use crate::stream::ElemType;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tessera_passes::ir::{self, BinaryOp, DType, Graph, InterpError, Node, Op, Tensor, TensorType, Value, ValueDef};

#[derive(Debug, thiserror::Error)]
pub enum NpuError {
    #[error("interpreter: {0}")]
    Host(#[from] InterpError),
    #[error("{place}: the NPU's stream failed: {message}")]
    Kernel { place: String, message: String },
    #[error("input {name:?}: {message}")]
    Input { name: String, message: String },
}

/// One NPU kernel run.
#[derive(Clone, Debug)]
pub struct KernelRun {
    /// Where it is in the graph (`n12` or `n12/n3` inside a fused kernel) and what it computes.
    pub place: String,
    pub what: String,
    pub batch: u32,
    pub m: u32,
    pub k: u32,
    pub n: u32,
    pub tiling: Tiling,
    pub stats: Stats,
}

/// What ran where.
#[derive(Clone, Debug, Default)]
pub struct NpuReport {
    pub kernels: Vec<KernelRun>,
    /// Nodes run on the host: (op, why not on the NPU), in execution order.
    pub host: Vec<(String, String)>,
}

impl NpuReport {
    /// The kernels' counters added up (kernels run one after another).
    pub fn total(&self) -> Stats {
        let mut t = Stats::default();
        for k in &self.kernels {
            t.add(&k.stats);
        }
        t
    }

    /// Host nodes grouped by op and reason, most frequent first.
    pub fn host_summary(&self) -> Vec<(String, String, usize)> {
        let mut m: Vec<(String, String, usize)> = Vec::new();
        for (op, why) in &self.host {
            match m.iter_mut().find(|(o, w, _)| o == op && w == why) {
                Some(e) => e.2 += 1,
                None => m.push((op.clone(), why.clone(), 1)),
            }
        }
        m.sort_by_key(|e| std::cmp::Reverse(e.2));
        m
    }
}

fn elem(d: DType) -> Option<ElemType> {
    Some(match d {
        DType::U8 => ElemType::U8,
        DType::I8 => ElemType::I8,
        DType::U4 => ElemType::U4,
        DType::I4 => ElemType::I4,
        DType::I32 => ElemType::I32,
        DType::F32 => ElemType::F32,
        _ => return None,
    })
}

/// A matched product and its output stage: the nodes it covers and the values it reads.
#[derive(Clone, Debug)]
struct Chain {
    nodes: Vec<Node>,
    a: Value,
    b: Value,
    za: Option<Value>,
    zb: Option<Value>,
    scale: Option<Value>,
    offset: Option<Value>,
    /// Some when the output stage exists: its output type.
    out: Option<DType>,
    result: Value,
}

/// A value whose static shape is one element, or `[.., n]` with every other dim 1.
fn per_column(ty: &TensorType, rank: usize) -> bool {
    let Some(s) = ty.shape.as_static() else { return false };
    s.len() <= rank && (s.iter().product::<usize>() == 1 || s[..s.len().saturating_sub(1)].iter().all(|&d| d == 1))
}

fn is_const_one(g: &Graph, v: Value) -> bool {
    matches!(g.value(v).def, ValueDef::Const(_))
        && ir::const_value(g, v, false).ok().is_some_and(|t| t.numel() == 1 && t.to_f64_vec()[0] == 1.0)
}

/// The chain starting at `matmul_integer` node `n`, or why the NPU declines it.
fn chain(g: &Graph, users: &[Vec<Node>], n: Node) -> Result<Chain, String> {
    let nd = g.node(n);
    match nd.op {
        Op::MatMulInteger { pair_saturate: false } => {}
        Op::MatMulInteger { pair_saturate: true } => {
            return Err("onnxruntime's pair-saturating u8 x s8 variant is a CPU quirk the NPU does not reproduce".into())
        }
        _ => return Err("not an integer matrix product".into()),
    }
    let mut c = Chain {
        nodes: vec![n],
        a: nd.inputs[0],
        b: nd.inputs[1],
        za: nd.inputs.get(2).copied(),
        zb: nd.inputs.get(3).copied(),
        scale: None,
        offset: None,
        out: None,
        result: nd.outputs[0],
    };
    let rank = g.ty(c.result).rank();
    let is_output = |v: Value| g.outputs().iter().any(|(_, o)| *o == v);
    // The single user of `v`, when `v` is not also a graph output.
    let only_user = |v: Value| -> Option<Node> {
        match users[v.index()].as_slice() {
            [u] if !is_output(v) && g.node(*u).inputs.iter().filter(|&&x| x == v).count() == 1 => Some(*u),
            _ => None,
        }
    };
    let Some(cast) = only_user(c.result) else { return Ok(c) };
    if g.node(cast).op != (Op::Cast { to: DType::F32 }) {
        return Ok(c);
    }
    c.nodes.push(cast);
    c.result = g.node(cast).outputs[0];
    c.out = Some(DType::F32);
    // `other` operand of a binary node reading `v`, when it is per tensor or per column.
    let other = |u: Node, v: Value, op: BinaryOp| -> Option<Value> {
        let un = g.node(u);
        if un.op != Op::Binary(op) || g.ty(un.outputs[0]).rank() != rank {
            return None;
        }
        let o = if un.inputs[0] == v { un.inputs[1] } else { un.inputs[0] };
        (g.ty(o).dtype == DType::F32 && per_column(g.ty(o), rank)).then_some(o)
    };
    let Some(mul) = only_user(c.result) else { return Ok(c) };
    let Some(s) = other(mul, c.result, BinaryOp::Mul) else { return Ok(c) };
    c.nodes.push(mul);
    c.scale = Some(s);
    c.result = g.node(mul).outputs[0];
    let mut next = only_user(c.result);
    if let Some(add) = next {
        if let Some(o) = other(add, c.result, BinaryOp::Add) {
            c.nodes.push(add);
            c.offset = Some(o);
            c.result = g.node(add).outputs[0];
            next = only_user(c.result);
        }
    }
    if let Some(q) = next {
        let qn = g.node(q);
        if let Op::Quantize { block: 0, to: to @ (DType::U8 | DType::I8), .. } = qn.op {
            if qn.inputs.len() == 2 && is_const_one(g, qn.inputs[1]) {
                c.nodes.push(q);
                c.out = Some(to);
                c.result = qn.outputs[0];
            }
        }
    }
    Ok(c)
}

fn operand<'e>(env: &'e [Option<Tensor>], n: Node, nd: &ir::NodeData, v: Value) -> Result<&'e Tensor, InterpError> {
    env[v.index()].as_ref().ok_or_else(|| InterpError::Op {
        node: n,
        op: nd.op.name(),
        message: format!("operand {v} is not defined"),
    })
}

/// Why a host node is not on the NPU.
fn host_reason(op: &Op) -> &'static str {
    match op {
        Op::MatMul | Op::Gemm { .. } | Op::QMatMul | Op::Attention { .. } => {
            "float activations without quantization parameters: the NPU multiplies integers"
        }
        Op::LayerNorm { .. } | Op::RmsNorm { .. } | Op::Softmax { .. } | Op::Unary(_) => {
            "a float op without quantization parameters"
        }
        _ => "not an integer matrix product (the NPU target compiles matmul_integer and its output stage)",
    }
}

type Key = (String, Vec<Vec<usize>>);

/// A compiled kernel and where it is in the graph (`n12`, `n12/n3`).
pub type PlacedKernel = (String, Arc<Compiled>);

/// A graph prepared to run with the NPU.
pub struct NpuModel {
    graph: Graph,
    device: Device,
    cache: Mutex<HashMap<Key, Arc<Compiled>>>,
}

struct Ctx<'a> {
    model: &'a NpuModel,
    report: NpuReport,
}

fn src_of(t: &Tensor, constant: bool, vector: bool, int: bool) -> Result<Src, String> {
    let ty = elem(t.dtype()).ok_or_else(|| format!("a parameter of type {}", t.dtype()))?;
    if !vector {
        if constant {
            let v = t.to_f64_vec()[0];
            return Ok(if int { Src::Int(v as i32) } else { Src::Float(v as f32) });
        }
        return Ok(Src::Input { ty, vector: false });
    }
    if constant {
        let vals = t.to_f64_vec();
        let bytes: Vec<u8> = if int {
            vals.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect()
        } else {
            vals.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect()
        };
        return Ok(Src::Const { ty: if int { ElemType::I32 } else { ElemType::F32 }, bytes, vector: true });
    }
    Ok(Src::Input { ty, vector: true })
}

impl NpuModel {
    pub fn new(graph: Graph, device: Device) -> NpuModel {
        NpuModel { graph, device, cache: Mutex::new(HashMap::new()) }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs on inputs in the graph's input order.
    pub fn run(&self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, NpuReport), NpuError> {
        let mut ctx = Ctx { model: self, report: NpuReport::default() };
        let consts = vec![false; inputs.len()];
        let out = ctx.graph(&self.graph, "", inputs.to_vec(), &consts)?;
        Ok((out, ctx.report))
    }

    /// The kernels the NPU compiles for the graph at the given input shapes, with their
    /// streams (for `--emit npu-asm`), and the run's report: runs the graph once on `inputs`.
    pub fn compile_for(&self, inputs: &[Tensor]) -> Result<(Vec<PlacedKernel>, NpuReport), NpuError> {
        let (_, report) = self.run(inputs)?;
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<PlacedKernel> = cache.iter().map(|(k, c)| (k.0.clone(), c.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((v, report))
    }
}

impl Ctx<'_> {
    /// Runs graph `g` (the model or a fused kernel's body); `consts[i]` says input `i` is a
    /// constant of the enclosing graph.
    fn graph(
        &mut self,
        g: &Graph,
        prefix: &str,
        inputs: Vec<Tensor>,
        consts: &[bool],
    ) -> Result<Vec<Tensor>, NpuError> {
        let mut env: Vec<Option<Tensor>> = vec![None; g.n_values()];
        let mut is_const = vec![false; g.n_values()];
        let mut bindings = ir::bind_inputs(g, &inputs)?;
        for (i, ((_, v), t)) in g.inputs().iter().zip(inputs).enumerate() {
            env[v.index()] = Some(t);
            is_const[v.index()] = consts.get(i).copied().unwrap_or(false);
        }
        for c in g.constants() {
            env[c.value.index()] = Some(ir::const_value(g, c.value, false)?);
            is_const[c.value.index()] = true;
        }
        // Chains run at their last node, where every value they read is defined (a scale
        // may be computed after the product); their other nodes are skipped.
        let users = g.users();
        let mut chains: HashMap<Node, Chain> = HashMap::new();
        let mut declined: HashMap<Node, String> = HashMap::new();
        for (n, nd) in g.nodes() {
            if matches!(nd.op, Op::MatMulInteger { .. }) {
                match chain(g, &users, n) {
                    Ok(c) => {
                        chains.insert(*c.nodes.last().unwrap_or(&n), c);
                    }
                    Err(why) => {
                        declined.insert(n, why);
                    }
                }
            }
        }
        let skip: std::collections::HashSet<Node> =
            chains.values().flat_map(|c| c.nodes[..c.nodes.len() - 1].iter().copied()).collect();
        for (n, nd) in g.nodes() {
            if skip.contains(&n) {
                continue;
            }
            let place = format!("{prefix}{n}");
            if let (Op::Kernel { .. }, Some(body)) = (&nd.op, &nd.body) {
                let args =
                    nd.inputs.iter().map(|&v| operand(&env, n, nd, v).cloned()).collect::<Result<Vec<_>, _>>()?;
                let consts: Vec<bool> = nd.inputs.iter().map(|v| is_const[v.index()]).collect();
                let outs = self.graph(body, &format!("{place}/"), args, &consts)?;
                for (&v, t) in nd.outputs.iter().zip(outs) {
                    env[v.index()] = Some(t);
                }
                continue;
            }
            let mut on_host = vec![n];
            if let Some(c) = chains.get(&n) {
                let first = c.nodes[0];
                match self.product(g, &format!("{prefix}{first}"), c, &env, &is_const)? {
                    Ok(t) => {
                        env[c.result.index()] = Some(t);
                        continue;
                    }
                    Err(why) => {
                        self.report.host.push((g.node(first).op.name().to_string(), why.0));
                        for &x in &c.nodes[1..] {
                            self.report.host.push((
                                g.node(x).op.name().to_string(),
                                "the output stage of a product the NPU declined".into(),
                            ));
                        }
                        on_host = c.nodes.clone();
                    }
                }
            } else if let Some(why) = declined.get(&n) {
                self.report.host.push((nd.op.name().to_string(), why.clone()));
            } else {
                self.report.host.push((nd.op.name().to_string(), host_reason(&nd.op).to_string()));
            }
            for x in on_host {
                let xd = g.node(x);
                let args = xd.inputs.iter().map(|&v| operand(&env, x, xd, v)).collect::<Result<Vec<_>, _>>()?;
                let outs = ir::run_node(g, x, &args, &mut bindings)?;
                for (&v, t) in xd.outputs.iter().zip(outs) {
                    env[v.index()] = Some(t);
                }
            }
        }
        g.outputs()
            .iter()
            .map(|(_, v)| {
                env[v.index()].clone().ok_or_else(|| NpuError::Kernel {
                    place: prefix.to_string(),
                    message: format!("output {v} was not computed"),
                })
            })
            .collect()
    }

    /// Runs a matched chain on the NPU; `Ok(Err(decline))` when the NPU does not take it.
    fn product(
        &mut self,
        g: &Graph,
        place: &str,
        c: &Chain,
        env: &[Option<Tensor>],
        is_const: &[bool],
    ) -> Result<Result<Tensor, Decline>, NpuError> {
        let get = |v: Value| {
            env[v.index()]
                .as_ref()
                .ok_or_else(|| NpuError::Kernel { place: place.into(), message: format!("{v} undefined") })
        };
        let (a, b) = (get(c.a)?, get(c.b)?);
        let (ash, bsh) = (a.shape().to_vec(), b.shape().to_vec());
        if ash.len() < 2 || bsh.len() < 2 {
            return Ok(Err(Decline("a rank-1 operand".into())));
        }
        let (m, k) = (ash[ash.len() - 2], ash[ash.len() - 1]);
        let (kb, n) = (bsh[bsh.len() - 2], bsh[bsh.len() - 1]);
        if k != kb {
            return Ok(Err(Decline(format!("inner dims {k} and {kb} differ"))));
        }
        let a_batch: usize = ash[..ash.len() - 2].iter().product();
        let b_batch: usize = bsh[..bsh.len() - 2].iter().product();
        let b_batched = b_batch > 1;
        if b_batched && ash[..ash.len() - 2] != bsh[..bsh.len() - 2] {
            return Ok(Err(Decline(format!("batch dims {ash:?} and {bsh:?} that broadcast"))));
        }
        let param = |v: Option<Value>, len: usize, int: bool| -> Result<Result<Src, Decline>, NpuError> {
            let Some(v) = v else { return Ok(Ok(Src::None)) };
            let t = get(v)?;
            let vector = t.numel() != 1;
            if vector && t.numel() != len {
                return Ok(Err(Decline(format!("a parameter of {} values for {len} rows or columns", t.numel()))));
            }
            Ok(src_of(t, is_const[v.index()], vector, int).map_err(Decline))
        };
        // Per-row zero points stay with their rows: only a 2-D `a` folds its batch into rows.
        let za_vector = c.za.is_some_and(|v| env[v.index()].as_ref().is_some_and(|t| t.numel() != 1));
        let (batch, rows) = if b_batched || za_vector { (a_batch, m) } else { (1, a_batch * m) };
        macro_rules! tryd {
            ($e:expr) => {
                match $e? {
                    Ok(x) => x,
                    Err(d) => return Ok(Err(d)),
                }
            };
        }
        let a_zero = tryd!(param(c.za, m, true));
        let b_zero = tryd!(param(c.zb, n, true));
        let epilogue = match c.out {
            None => None,
            Some(out) => Some(Epilogue {
                scale: tryd!(param(c.scale, n, false)),
                offset: tryd!(param(c.offset, n, false)),
                out: elem(out).unwrap_or(ElemType::F32),
            }),
        };
        let (Some(a_ty), Some(b_ty)) = (elem(a.dtype()), elem(b.dtype())) else {
            return Ok(Err(Decline(format!("{} x {} operands", a.dtype(), b.dtype()))));
        };
        let b_const = is_const[c.b.index()];
        let shapes: Vec<Vec<usize>> = [Some(c.a), Some(c.b), c.za, c.zb, c.scale, c.offset]
            .iter()
            .map(|v| v.and_then(|v| env[v.index()].as_ref()).map_or(vec![], |t| t.shape().to_vec()))
            .collect();
        let key = (place.to_string(), shapes);
        let cached = self.model.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        let compiled = match cached {
            Some(c) => c,
            None => {
                let kernel = MatMulKernel {
                    batch: batch as u32,
                    m: rows as u32,
                    k: k as u32,
                    n: n as u32,
                    a_ty,
                    b_ty,
                    b_const: b_const.then(|| b.to_bytes()),
                    b_batched,
                    a_zero,
                    b_zero,
                    epilogue,
                };
                let compiled = match compile(&kernel, &self.model.device) {
                    Ok(c) => Arc::new(c),
                    Err(d) => return Ok(Err(d)),
                };
                self.model.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, compiled.clone());
                compiled
            }
        };
        let feeds = compiled
            .inputs
            .iter()
            .map(|r| {
                let v = match r {
                    Role::A => Some(c.a),
                    Role::B => Some(c.b),
                    Role::AZero => c.za,
                    Role::BZero => c.zb,
                    Role::Scale => c.scale,
                    Role::Offset => c.offset,
                };
                Ok(match v {
                    Some(v) => get(v)?.to_bytes(),
                    None => vec![],
                })
            })
            .collect::<Result<Vec<_>, NpuError>>()?;
        let (bytes, stats) = compiled
            .run(&self.model.device, &feeds)
            .map_err(|e| NpuError::Kernel { place: place.into(), message: e.to_string() })?;
        let out_dtype = c.out.unwrap_or(DType::I32);
        let mut shape = ash[..ash.len() - 1].to_vec();
        shape.push(n);
        let t = Tensor::from_bytes(out_dtype, &shape, &bytes)
            .map_err(|e| NpuError::Kernel { place: place.into(), message: e.to_string() })?;
        let what = c.nodes.iter().map(|&x| g.node(x).op.name()).collect::<Vec<_>>().join("+");
        self.report.kernels.push(KernelRun {
            place: place.to_string(),
            what,
            batch: batch as u32,
            m: rows as u32,
            k: k as u32,
            n: n as u32,
            tiling: compiled.tiling,
            stats,
        });
        Ok(Ok(t))
    }
}
