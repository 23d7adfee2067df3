//! `fold-dequantize`: weight-only quantization kept packed. A `dequantize` of a constant integer
//! weight with constant scale (and zero point) that only feeds the right operand of `matmul`
//! nodes becomes a quantized type on the weight (`i4[384, 384] quant(block(axis=0, size=32),
//! scale=.., zero=..)`), and each such `matmul x, dequantize(w)` becomes `qmatmul x, w`. By the
//! definition of `qmatmul` the results are identical; targets then keep the weight packed and
//! dequantize in registers. Dequantizes with other users, or of non-constant data, are left alone.
//! It runs `dce` afterwards to drop the folded dequantizes.

use crate::manager::{Pass, PassError, PassReport};
use tessera_ir::{Graph, Node, Op, Quant, QuantGranularity, TensorType, Value, ValueDef};

pub struct FoldDequantize;

fn is_const(g: &Graph, v: Value) -> bool {
    matches!(g.value(v).def, ValueDef::Const(_)) && g.ty(v).quant.is_none()
}

impl Pass for FoldDequantize {
    fn name(&self) -> &'static str {
        "fold-dequantize"
    }

    fn description(&self) -> &'static str {
        "turn matmul(x, dequantize(constant weight)) into qmatmul with a packed quantized weight"
    }

    fn run(&self, g: &mut Graph) -> Result<PassReport, PassError> {
        let users = g.users();
        let mut folded = 0;
        let nodes: Vec<Node> = g.nodes().map(|(n, _)| n).collect();
        for n in nodes {
            let nd = g.node(n).clone();
            let Op::Dequantize { axis, block } = nd.op else { continue };
            if nd.inputs.len() < 2 || !nd.inputs.iter().all(|&v| is_const(g, v)) {
                continue;
            }
            let (w, scale, zero) = (nd.inputs[0], nd.inputs[1], nd.inputs.get(2).copied());
            if g.ty(nd.outputs[0]).dtype != tessera_ir::DType::F32 {
                continue;
            }
            let out = nd.outputs[0];
            let readers = &users[out.index()];
            let only_matmul_weights = !readers.is_empty()
                && readers.iter().all(|&u| {
                    matches!(g.node(u).op, Op::MatMul) && g.node(u).inputs[1] == out && g.node(u).inputs[0] != out
                })
                && !g.outputs().iter().any(|(_, v)| *v == out);
            if !only_matmul_weights {
                continue;
            }
            let scale_numel = g.ty(scale).shape.static_numel().unwrap_or(0);
            let granularity = if block > 0 {
                QuantGranularity::PerBlock { axis, size: block }
            } else if scale_numel == 1 {
                QuantGranularity::PerTensor
            } else {
                QuantGranularity::PerAxis { axis }
            };
            // The weight gets a quantized type: a new constant sharing the same bytes.
            let mut ty: TensorType = g.ty(w).clone();
            ty.quant = Some(Box::new(Quant { granularity, scale, zero_point: zero, offset: None }));
            let data = g.const_data(w).expect("constant").clone();
            let qw = g.add_const(ty, data);
            for &u in readers {
                let node = g.node_mut(u);
                node.op = Op::QMatMul;
                node.inputs[1] = qw;
            }
            folded += 1;
        }
        if folded > 0 {
            // The dequantizes and float-typed weight copies are dead now.
            crate::dce::Dce.run(g)?;
        }
        Ok(PassReport::changed(folded > 0).note(format!("{folded} weights kept packed")))
    }
}
