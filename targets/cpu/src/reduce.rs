//! Reductions (`reduce_*` over attribute axes) and `argmax`: strided loop nests, one output
//! element at a time, accumulating sequentially in row-major order as the interpreter does.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use tessera_ir::{DType, Dim, Graph, Node, Op, ReduceOp};

use crate::ew::{self, Sv};
use crate::fx::{elem_bytes, mem, Fx, F4};
use crate::lower::{dims, BufRef, Lowered};
use crate::CpuError;

fn unsupported<T>(msg: impl Into<String>) -> Result<T, CpuError> {
    Err(CpuError::Unsupported(msg.into()))
}

fn axis_of(axis: i64, rank: usize, op: &str) -> Result<usize, CpuError> {
    tessera_ir::types::normalize_axis(axis, rank)
        .ok_or_else(|| CpuError::Codegen(format!("`{op}` axis {axis} is out of range for rank {rank}")))
}

/// Row-major element strides of `dims` as run-time values.
fn strides(fx: &mut Fx, dims: &[Dim]) -> Result<Vec<Value>, CpuError> {
    let mut st = vec![fx.iconst(1); dims.len()];
    for j in (0..dims.len().saturating_sub(1)).rev() {
        let d = fx.dim(&dims[j + 1])?;
        st[j] = fx.b.ins().imul(st[j + 1], d);
    }
    Ok(st)
}

/// Loops over `dims` (outermost first) with element strides `strides`, calling `body` with
/// `off + sum(index_j * stride_j)`.
fn nest(
    fx: &mut Fx,
    dims: &[Value],
    strides: &[Value],
    off: Value,
    body: &mut dyn FnMut(&mut Fx, Value) -> Result<(), CpuError>,
) -> Result<(), CpuError> {
    match dims.split_first() {
        None => body(fx, off),
        Some((&d, rest)) => {
            let s = strides[0];
            fx.for_n(d, |fx, i| {
                let o = fx.b.ins().imul(i, s);
                let o = fx.b.ins().iadd(off, o);
                nest(fx, rest, &strides[1..], o, body)
            })
        }
    }
}

/// One element as a scalar: f32 for floats, i64 for integers and bools.
fn load_elem(fx: &mut Fx, dt: DType, addr: Value) -> Value {
    match ew::load(fx, dt, addr, false, true) {
        Sv::F(x) => fx.b.ins().extractlane(x, 0),
        Sv::I(x) => x,
        Sv::B(x) => fx.b.ins().uextend(types::I64, x),
    }
}

/// `reduce_*` over attribute axes and `argmax`: a loop nest over the kept dims (in order, the
/// output's order), and inside it one over the reduced dims accumulating sequentially in
/// row-major order, as the interpreter. Floats accumulate in f32 (f16/bf16 rounded on store),
/// integers in i64 wrapping into their dtype on store. Not parallel.
pub(crate) fn lower_reduce(g: &Graph, n: Node) -> Result<Lowered<'_>, CpuError> {
    let nd = g.node(n);
    let (x, out) = (nd.inputs[0], nd.outputs[0]);
    let dt = g.ty(x).dtype;
    let odt = g.ty(out).dtype;
    let xd = dims(g, x);
    let r = xd.len();
    let (Some(e), Some(oe)) = (elem_bytes(dt), elem_bytes(odt)) else {
        return unsupported(format!("{dt} operands of `{}`", nd.op.name()));
    };
    let bufs = vec![BufRef::Value(x), BufRef::Value(out)];
    match nd.op {
        Op::Reduce { op, ref axes, .. } => {
            if nd.inputs.len() > 1 {
                return unsupported("reduction axes given at run time");
            }
            let float = dt.is_float();
            if !(float || dt.is_int()) {
                return unsupported(format!("`{}` on {dt}", op.name()));
            }
            if !float && op == ReduceOp::Mean {
                return unsupported("`reduce_mean` on integers (the interpreter refuses it)");
            }
            let mut red: Vec<usize> = if axes.is_empty() {
                (0..r).collect()
            } else {
                axes.iter().map(|&a| axis_of(a, r, op.name())).collect::<Result<_, _>>()?
            };
            red.sort_unstable();
            red.dedup();
            let kept: Vec<usize> = (0..r).filter(|i| !red.contains(i)).collect();
            let (lo, hi) = dt.int_range().unwrap_or((0, 0));
            Ok(Lowered::new(
                op.name(),
                bufs,
                Box::new(move |fx| {
                    let xp = fx.buf(0);
                    let yp = fx.buf(1);
                    let st = strides(fx, &xd)?;
                    let dv: Vec<Value> = xd.iter().map(|d| fx.dim(d)).collect::<Result<_, _>>()?;
                    let (kd, ks): (Vec<Value>, Vec<Value>) = kept.iter().map(|&i| (dv[i], st[i])).unzip();
                    let (rd, rs): (Vec<Value>, Vec<Value>) = red.iter().map(|&i| (dv[i], st[i])).unzip();
                    let mut count = fx.iconst(1);
                    for &d in &rd {
                        count = fx.b.ins().imul(count, d);
                    }
                    let zero = fx.iconst(0);
                    let oc = fx.var(types::I64, zero);
                    nest(fx, &kd, &ks, zero, &mut |fx, off| {
                        let init = if float {
                            fx.fconst(match op {
                                ReduceOp::Sum | ReduceOp::Mean => 0.0,
                                ReduceOp::Prod => 1.0,
                                ReduceOp::Max => f32::NEG_INFINITY,
                                ReduceOp::Min => f32::INFINITY,
                            })
                        } else {
                            fx.iconst(match op {
                                ReduceOp::Sum | ReduceOp::Mean => 0,
                                ReduceOp::Prod => 1,
                                ReduceOp::Max => lo,
                                ReduceOp::Min => hi,
                            })
                        };
                        let acc = fx.var(if float { types::F32 } else { types::I64 }, init);
                        nest(fx, &rd, &rs, off, &mut |fx, o| {
                            let a = fx.addr(xp, o, e);
                            let v = load_elem(fx, dt, a);
                            let s = fx.b.use_var(acc);
                            let s = match (op, float) {
                                (ReduceOp::Sum | ReduceOp::Mean, true) => fx.b.ins().fadd(s, v),
                                (ReduceOp::Prod, true) => fx.b.ins().fmul(s, v),
                                (ReduceOp::Max, true) => fx.b.ins().fmax(s, v),
                                (ReduceOp::Min, true) => fx.b.ins().fmin(s, v),
                                (ReduceOp::Sum | ReduceOp::Mean, false) => fx.b.ins().iadd(s, v),
                                (ReduceOp::Prod, false) => fx.b.ins().imul(s, v),
                                (ReduceOp::Max, false) => fx.b.ins().smax(s, v),
                                (ReduceOp::Min, false) => fx.b.ins().smin(s, v),
                            };
                            fx.b.def_var(acc, s);
                            Ok(())
                        })?;
                        let mut s = fx.b.use_var(acc);
                        if op == ReduceOp::Mean {
                            let c = fx.b.ins().fcvt_from_sint(types::F32, count);
                            s = fx.b.ins().fdiv(s, c);
                        }
                        let i = fx.b.use_var(oc);
                        let a = fx.addr(yp, i, oe);
                        let sv = if float {
                            let v = fx.b.ins().splat(F4, s);
                            Sv::F(v)
                        } else {
                            Sv::I(s)
                        };
                        ew::store(fx, odt, sv, a, false);
                        let i1 = fx.iadd_imm(i, 1);
                        fx.b.def_var(oc, i1);
                        Ok(())
                    })
                }),
            ))
        }
        Op::ArgMax { axis, last, .. } => {
            let a = axis_of(axis, r, "argmax")?;
            if xd[a] == Dim::Static(0) {
                return unsupported("`argmax` over an empty axis (the interpreter refuses it)");
            }
            if odt != DType::I64 {
                return Err(CpuError::Codegen(format!("argmax result of {odt}")));
            }
            let outer = xd[..a].to_vec();
            let axis_dim = xd[a].clone();
            let inner = xd[a + 1..].to_vec();
            Ok(Lowered::new(
                "argmax",
                bufs,
                Box::new(move |fx| {
                    let xp = fx.buf(0);
                    let yp = fx.buf(1);
                    let on = fx.numel(&outer)?;
                    let n = fx.dim(&axis_dim)?;
                    let inn = fx.numel(&inner)?;
                    let ninf = fx.b.ins().f64const(f64::NEG_INFINITY);
                    let zero = fx.iconst(0);
                    fx.for_n(on, |fx, o| {
                        fx.for_n(inn, |fx, i| {
                            let on_ = fx.b.ins().imul(o, n);
                            let oni = fx.b.ins().imul(on_, inn);
                            let base = fx.b.ins().iadd(oni, i);
                            // Starting from (0, -inf) and visiting every index picks what the
                            // interpreter's loop from (0, x[0]) picks.
                            let bi = fx.var(types::I64, zero);
                            let bv = fx.var(types::F64, ninf);
                            fx.for_n(n, |fx, j| {
                                let t = fx.b.ins().imul(j, inn);
                                let t = fx.b.ins().iadd(base, t);
                                let ad = fx.addr(xp, t, e);
                                let v = load_elem(fx, dt, ad);
                                // Compared as f64, as the interpreter (large i64 values round).
                                let v = if dt.is_float() {
                                    fx.b.ins().fpromote(types::F64, v)
                                } else {
                                    fx.b.ins().fcvt_from_sint(types::F64, v)
                                };
                                let best = fx.b.use_var(bv);
                                let cc = if last { FloatCC::GreaterThanOrEqual } else { FloatCC::GreaterThan };
                                let better = fx.b.ins().fcmp(cc, v, best);
                                let vnan = fx.b.ins().fcmp(FloatCC::Unordered, v, v);
                                let bnum = fx.b.ins().fcmp(FloatCC::Ordered, best, best);
                                let nan = fx.b.ins().band(vnan, bnum);
                                let better = fx.b.ins().bor(better, nan);
                                let nb = fx.b.ins().select(better, v, best);
                                fx.b.def_var(bv, nb);
                                let cur = fx.b.use_var(bi);
                                let ni = fx.b.ins().select(better, j, cur);
                                fx.b.def_var(bi, ni);
                                Ok(())
                            })?;
                            let oi = fx.b.ins().imul(o, inn);
                            let oi = fx.b.ins().iadd(oi, i);
                            let ya = fx.addr(yp, oi, 8);
                            let b = fx.b.use_var(bi);
                            fx.b.ins().store(mem(), b, ya, 0);
                            Ok(())
                        })
                    })
                }),
            ))
        }
        ref other => unsupported(format!("`{}` is not a reduction", other.name())),
    }
}

#[cfg(test)]
mod tests {
    use tessera_ir::{DType, Tensor, TensorData};

    use crate::CpuOptions;

    /// A deterministic stream of floats in [-3, 3).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 3.0
        }
        fn floats(&mut self, shape: &[usize]) -> Tensor {
            let n = shape.iter().product();
            Tensor::from_f32(DType::F32, shape, (0..n).map(|_| self.next()).collect()).unwrap()
        }
        fn bools(&mut self, shape: &[usize]) -> Tensor {
            let n = shape.iter().product();
            Tensor::from_bool(shape, (0..n).map(|_| self.next() > -1.5).collect()).unwrap()
        }
        fn ints(&mut self, dtype: DType, shape: &[usize]) -> Tensor {
            let n = shape.iter().product();
            Tensor::from_i64(dtype, shape, (0..n).map(|_| (self.next() * 4.0) as i64).collect()).unwrap()
        }
    }

    fn close(a: f32, b: f32) -> bool {
        (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 5e-7 + 1e-5 * b.abs()
    }

    /// Compiles `text` for 1 and 3 threads, runs it on `inputs` and compares every output with
    /// the interpreter's (floats within 5e-7 + 1e-5 relative, the rest exactly).
    fn check(text: &str, inputs: Vec<Tensor>) {
        let g = tessera_ir::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let want = tessera_ir::run(&g, inputs.clone()).expect("interpreter");
        for threads in [1, 3] {
            let p = crate::compile(&g, &CpuOptions { threads, ..Default::default() }).expect("compile");
            let got = p.run(&inputs).expect("run");
            for (k, (w, o)) in want.iter().zip(&got).enumerate() {
                assert_eq!(w.shape(), o.shape(), "output {k}");
                match (w.data(), o.data()) {
                    (TensorData::Float(x), TensorData::Float(y)) => {
                        for (i, (a, b)) in y.iter().zip(x.iter()).enumerate() {
                            assert!(close(*a, *b), "output {k} element {i}: {a} vs {b} ({threads} threads)\n{text}");
                        }
                    }
                    _ => assert_eq!(w, o, "output {k} ({threads} threads)\n{text}"),
                }
            }
        }
    }

    #[test]
    fn reductions() {
        let mut r = Rng(3);
        let x = r.floats(&[3, 4, 5]);
        let xi = r.ints(DType::I64, &[3, 4, 5]);
        let xs = r.ints(DType::I32, &[3, 4, 5]);
        let mut text = String::from(
            "graph @g {\n  v0: f32[3, 4, 5] = input \"x\"\n  v1: i64[3, 4, 5] = input \"y\"\n  v2: i32[3, 4, 5] = input \"z\"\n",
        );
        let mut v = 3;
        let cases: [(&str, Vec<usize>); 5] =
            [("[]", vec![]), ("[1]", vec![1]), ("[0, 2]", vec![0, 2]), ("[-1]", vec![2]), ("[2, 0, 1]", vec![0, 1, 2])];
        for (axes, red) in cases {
            for keep in [false, true] {
                let red = if red.is_empty() { vec![0, 1, 2] } else { red.clone() };
                let shape: Vec<usize> = [3usize, 4, 5]
                    .iter()
                    .enumerate()
                    .filter_map(|(i, &d)| match (red.contains(&i), keep) {
                        (true, true) => Some(1),
                        (true, false) => None,
                        (false, _) => Some(d),
                    })
                    .collect();
                for (src, dt) in [("v0", "f32"), ("v1", "i64"), ("v2", "i32")] {
                    for op in ["sum", "mean", "max", "min", "prod"] {
                        if op == "mean" && dt != "f32" {
                            continue;
                        }
                        text += &format!(
                            "  v{v}: {dt}{shape:?} = reduce_{op} {src} {{axes = {axes}, keepdims = {keep}}}\n  output \"o{v}\" = v{v}\n"
                        );
                        v += 1;
                    }
                }
            }
        }
        for (src, dt) in [("v0", "f32"), ("v1", "i64"), ("v2", "i32")] {
            let _ = dt;
            for (axis, shape) in [(0, "[4, 5]"), (1, "[3, 5]"), (-1, "[3, 4]")] {
                for last in [false, true] {
                    text += &format!(
                        "  v{v}: i64{shape} = argmax {src} {{axis = {axis}, keepdims = false, last = {last}}}\n  output \"o{v}\" = v{v}\n"
                    );
                    v += 1;
                }
            }
        }
        text += "}";
        let x0 = x.clone();
        check(&text, vec![x, xi, xs]);
        // Other dtypes: f16 and bf16 (accumulated in f32, rounded on store), u8, i8, bool argmax.
        let h = Tensor::from_f32(DType::F16, &[3, 4, 5], x0.as_float().unwrap().iter().copied().collect()).unwrap();
        let bf = Tensor::from_f32(DType::BF16, &[3, 4, 5], x0.as_float().unwrap().iter().copied().collect()).unwrap();
        let u = Tensor::from_i64(DType::U8, &[3, 4], (0..12).map(|i| (i * 37) % 256).collect()).unwrap();
        let s8 = Tensor::from_i64(DType::I8, &[3, 4], (0..12).map(|i| (i * 37) % 256 - 128).collect()).unwrap();
        let b = r.bools(&[3, 4]);
        check(
            "graph @g {
  v0: f16[3, 4, 5] = input \"h\"
  v1: bf16[3, 4, 5] = input \"bf\"
  v2: u8[3, 4] = input \"u\"
  v3: i8[3, 4] = input \"s\"
  v4: bool[3, 4] = input \"b\"
  v5: f16[3, 5] = reduce_sum v0 {axes = [1], keepdims = false}
  v6: f16[1, 1, 1] = reduce_mean v0 {axes = [], keepdims = true}
  v7: bf16[4] = reduce_max v1 {axes = [0, 2], keepdims = false}
  v8: u8[3] = reduce_sum v2 {axes = [1], keepdims = false}
  v9: u8[4] = reduce_prod v2 {axes = [0], keepdims = false}
  v10: i8[3] = reduce_min v3 {axes = [1], keepdims = false}
  v11: i8[4] = reduce_sum v3 {axes = [0], keepdims = false}
  v12: i64[3] = argmax v4 {axis = 1, keepdims = false, last = false}
  v13: i64[4] = argmax v4 {axis = 0, keepdims = false, last = true}
  v14: i64[3, 5] = argmax v0 {axis = 1, keepdims = false, last = false}
  v15: i64[3] = argmax v2 {axis = 1, keepdims = false, last = false}
  output \"a\" = v5
  output \"b\" = v6
  output \"c\" = v7
  output \"d\" = v8
  output \"e\" = v9
  output \"f\" = v10
  output \"g\" = v11
  output \"h\" = v12
  output \"i\" = v13
  output \"j\" = v14
  output \"k\" = v15
}",
            vec![h, bf, u, s8, b],
        );
        // Ties, NaN and -inf in argmax; NaN in max.
        let vals = vec![
            1.0,
            f32::NAN,
            3.0,
            3.0,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            2.0,
            2.0,
            f32::NAN,
            -1.0,
            f32::NAN,
            5.0,
        ];
        let x = Tensor::from_f32(DType::F32, &[3, 4], vals).unwrap();
        check(
            "graph @g {
  v0: f32[3, 4] = input \"x\"
  v1: i64[3] = argmax v0 {axis = 1, keepdims = false, last = false}
  v2: i64[3, 1] = argmax v0 {axis = 1, keepdims = true, last = true}
  v3: i64[4] = argmax v0 {axis = 0, keepdims = false, last = true}
  v4: f32[3] = reduce_max v0 {axes = [1], keepdims = false}
  v5: f32[4] = reduce_min v0 {axes = [0], keepdims = false}
  output \"a\" = v1
  output \"b\" = v2
  output \"c\" = v3
  output \"d\" = v4
  output \"e\" = v5
}",
            vec![x],
        );
    }
}
