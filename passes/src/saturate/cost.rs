//! The extraction cost model: a `CostModel` prices one op from its result and operand types
//! (taken from the e-graph's type analysis); `Extract` adapts it to egg's `CostFunction` (the cost
//! of a term is the sum over its ops). The default, `FlopsBytes`, is FLOPs plus bytes moved (every
//! operand read once, the result written once). Leaves, attributes and scalar literals cost 0;
//! markers cost infinity, so they are never extracted.

use super::lang::{TensorEGraph, TensorLang};
use egg::{CostFunction, Id, Language};
use tessera_ir::{Dim, TensorType};

/// Prices one op of the e-graph.
pub trait CostModel {
    /// The cost of `node` alone, with its result type and operand types (None where unknown).
    /// Must be at least 1 for every op, so extraction never picks a cycle.
    fn op_cost(&self, node: &TensorLang, result: Option<&TensorType>, operands: &[Option<&TensorType>]) -> f64;
}

/// FLOPs plus bytes moved. Symbolic and unknown dims count as `sym_size`.
#[derive(Clone, Debug)]
pub struct FlopsBytes {
    pub sym_size: f64,
}

impl Default for FlopsBytes {
    fn default() -> Self {
        FlopsBytes { sym_size: 64.0 }
    }
}

impl FlopsBytes {
    fn dim(&self, d: &Dim) -> f64 {
        match d {
            Dim::Static(n) => *n as f64,
            _ => self.sym_size,
        }
    }

    fn numel(&self, t: Option<&TensorType>) -> f64 {
        t.map_or(self.sym_size, |t| t.shape.dims().iter().map(|d| self.dim(d)).product())
    }

    fn bytes(&self, t: Option<&TensorType>) -> f64 {
        let bits = t.map_or(32, |t| t.dtype.bits()) as f64;
        self.numel(t) * bits / 8.0
    }

    fn last_dim(&self, t: Option<&TensorType>) -> f64 {
        t.and_then(|t| t.shape.dims().last()).map_or(self.sym_size, |d| self.dim(d))
    }
}

impl CostModel for FlopsBytes {
    fn op_cost(&self, node: &TensorLang, result: Option<&TensorType>, operands: &[Option<&TensorType>]) -> f64 {
        let (flops, moved) = self.flops_bytes(node, result, operands);
        1.0 + flops + moved
    }
}

impl FlopsBytes {
    /// The op's floating-point operations and the bytes it moves.
    pub fn flops_bytes(
        &self,
        node: &TensorLang,
        result: Option<&TensorType>,
        operands: &[Option<&TensorType>],
    ) -> (f64, f64) {
        use TensorLang as T;
        let n = self.numel(result);
        let flops_per_element = match node {
            T::Add(_) | T::Sub(_) | T::Mul(_) | T::Neg(_) => 1.0,
            T::Div(_) | T::Reciprocal(_) | T::Sqrt(_) | T::Rsqrt(_) => 4.0,
            T::Pow(_) | T::Exp(_) | T::Erf(_) | T::Tanh(_) | T::Sigmoid(_) => 8.0,
            T::Silu(_) => 9.0,
            T::Gelu(_) | T::GeluTanh(_) => 12.0,
            T::Softmax(_) => 5.0,
            T::RmsNorm(_) => 4.0,
            T::LayerNorm(_) | T::LayerNormNoBias(_) => 8.0,
            T::Quantize(_) | T::QuantizeNoZero(_) | T::Dequantize(_) | T::DequantizeNoZero(_) => 4.0,
            T::Transpose(_) => 0.0,
            _ => 0.0,
        };
        let flops = match node {
            // 2 * M * N * K: the result has M * N elements per batch, K is a's last dim.
            T::MatMul(_) => 2.0 * n * self.last_dim(operands.first().copied().flatten()),
            T::Attention(_) | T::AttentionNoMask(_) => {
                // operands: scale, q, k, v[, mask]
                let q = operands.get(1).copied().flatten();
                let k = operands.get(2).copied().flatten();
                let d = self.last_dim(q);
                let dv = self.last_dim(result).max(1.0);
                let sk = k.and_then(|k| k.shape.dims().iter().rev().nth(1)).map_or(self.sym_size, |x| self.dim(x));
                let scores = n / dv * sk;
                2.0 * scores * d + 2.0 * scores * dv + 6.0 * scores
            }
            // One add (or compare) per reduced element.
            T::ReduceMean(_) | T::ReduceSum(_) | T::ReduceMax(_) => operands.get(1).map_or(n, |t| self.numel(*t)),
            // operands: name, x, w1, w3, w2. The three matmuls, the gate and the product; only
            // the operands and the result move (the intermediates stay in the kernel).
            T::GatedFfn(_) => {
                let (x, w1, w2) = (
                    operands.get(1).copied().flatten(),
                    operands.get(2).copied().flatten(),
                    operands.get(4).copied().flatten(),
                );
                let rows = self.numel(x) / self.last_dim(x).max(1.0);
                let hidden = self.last_dim(w1);
                let k = self.last_dim(x);
                let out = self.last_dim(w2);
                2.0 * rows * k * hidden * 2.0 + 2.0 * rows * hidden * out + 11.0 * rows * hidden
            }
            _ => flops_per_element * n,
        };
        let moved: f64 =
            operands.iter().filter(|t| t.is_some()).map(|t| self.bytes(*t)).sum::<f64>() + self.bytes(result);
        (flops, moved)
    }
}

/// The placement cost model as the extraction's: each op at the time its best unit of a device
/// profile takes by the profile's roofline (CPU or GPU, with their fixed per-kernel costs), in
/// nanoseconds, so that the terms egg extracts are the ones the partitioner prices cheapest.
#[derive(Clone, Debug)]
pub struct ProfileCost {
    pub profile: crate::profile::DeviceProfile,
    pub counts: FlopsBytes,
}

impl ProfileCost {
    pub fn new(profile: crate::profile::DeviceProfile) -> ProfileCost {
        ProfileCost { profile, counts: FlopsBytes::default() }
    }
}

impl CostModel for ProfileCost {
    fn op_cost(&self, node: &TensorLang, result: Option<&TensorType>, operands: &[Option<&TensorType>]) -> f64 {
        let (flops, bytes) = self.counts.flops_bytes(node, result, operands);
        if flops == 0.0 && bytes == 0.0 {
            return 1.0;
        }
        let (flops, bytes) = (flops as u64, bytes as u64);
        let cpu = self.profile.cpu_estimate_us(flops, 0, bytes);
        let gpu = self.profile.gpu_estimate_us(flops, bytes).unwrap_or(f64::INFINITY);
        1.0 + 1e3 * cpu.min(gpu)
    }
}

/// Adapts a `CostModel` to egg's extractor, reading types from the e-graph.
pub struct Extract<'a, M: CostModel> {
    pub egraph: &'a TensorEGraph,
    pub model: &'a M,
}

impl<M: CostModel> CostFunction<TensorLang> for Extract<'_, M> {
    type Cost = f64;

    fn cost<C>(&mut self, enode: &TensorLang, mut costs: C) -> f64
    where
        C: FnMut(Id) -> f64,
    {
        if enode.is_marker() {
            return f64::INFINITY;
        }
        if matches!(enode, TensorLang::Leaf(_) | TensorLang::Attr(_) | TensorLang::Scalar(_)) {
            return 0.0;
        }
        let result = self.egraph.lookup(enode.clone()).and_then(|id| self.egraph[id].data.ty.as_ref());
        let operands: Vec<Option<&TensorType>> =
            enode.children().iter().map(|&c| self.egraph[c].data.ty.as_ref()).collect();
        let own = self.model.op_cost(enode, result, &operands);
        enode.fold(own, |sum, id| sum + costs(id))
    }
}
