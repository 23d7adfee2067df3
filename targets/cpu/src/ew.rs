//! Elementwise code: one loop nest per kernel over the output's elements, evaluating a region
//! body (unary and binary functions, `where`, `cast`, per-tensor `quantize`/`dequantize`) at each
//! element with every operand broadcast by strides. When every value is f32 the innermost loop
//! runs four lanes at a time (f32x4), with a scalar tail; otherwise elements go one by one.
//!
//! Values inside a body: floats are f32x4 (in the scalar loop only lane 0 matters, so one
//! implementation of each float function serves both loops), integers i64 (wrapped into their
//! dtype after every op, as the interpreter does), bools i8 (0 or 1).

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, Value};
use tessera_ir::{BinaryOp, DType, Dim, Graph, Op, UnaryOp};

use crate::fx::{broadcast_strides, elem_bytes, mem, Fx, F4};
use crate::{math, CpuError, KernelFault};

/// A value inside a body.
#[derive(Clone, Copy, Debug)]
pub enum Sv {
    F(Value),
    I(Value),
    B(Value),
}

/// Whether `op` can appear in an elementwise body, and why not.
pub fn body_op_supported(g: &Graph, op: &Op, inputs: &[tessera_ir::Value], out_rank: usize) -> Result<(), String> {
    let sub_byte = inputs.iter().any(|v| g.ty(*v).dtype.is_sub_byte());
    if sub_byte {
        return Err("sub-byte operands in an elementwise op".into());
    }
    match op {
        Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Identity => Ok(()),
        Op::Cast { to } if !to.is_sub_byte() => Ok(()),
        Op::Quantize { axis, block: 0, to } if !to.is_sub_byte() => per_tensor_or_last(g, inputs, *axis, out_rank),
        Op::Dequantize { axis, block: 0 } if inputs.len() >= 2 => per_tensor_or_last(g, inputs, *axis, out_rank),
        _ => Err(format!("`{}` is not elementwise", op.name())),
    }
}

/// Per-tensor parameters, or per-axis ones along the last axis (which broadcast like any operand).
fn per_tensor_or_last(g: &Graph, inputs: &[tessera_ir::Value], axis: i64, rank: usize) -> Result<(), String> {
    let p = g.ty(inputs[1]);
    let last =
        tessera_ir::types::normalize_axis(axis, g.ty(inputs[0]).rank()) == Some(g.ty(inputs[0]).rank().max(1) - 1);
    if p.rank() == 0 || (p.rank() == 1 && last && g.ty(inputs[0]).rank() == rank) {
        Ok(())
    } else {
        Err("per-axis quantization parameters on an inner axis".into())
    }
}

/// Loads an element (or four, `vector`) of `dtype` at `addr` as a body value.
pub fn load(fx: &mut Fx, dtype: DType, addr: Value, vector: bool, splat: bool) -> Sv {
    let f = mem();
    match dtype {
        DType::F32 if vector && !splat => Sv::F(fx.b.ins().load(F4, f, addr, 0)),
        DType::F32 => {
            let s = fx.b.ins().load(types::F32, f, addr, 0);
            Sv::F(fx.b.ins().splat(F4, s))
        }
        DType::F16 => {
            let h = fx.b.ins().uload16(types::I32, f, addr, 0);
            let s = fx
                .call_host(crate::host::id("tessera_host_f16_to_f32"), &[types::I32], Some(types::F32), &[h])
                .expect("ret");
            Sv::F(fx.b.ins().splat(F4, s))
        }
        DType::BF16 => {
            let h = fx.b.ins().uload16(types::I32, f, addr, 0);
            let sh = fx.b.ins().ishl_imm_s(h, 16);
            let s = fx.b.ins().bitcast(types::F32, cranelift_codegen::ir::MemFlagsData::new(), sh);
            Sv::F(fx.b.ins().splat(F4, s))
        }
        DType::I64 => Sv::I(fx.b.ins().load(types::I64, f, addr, 0)),
        DType::I32 => Sv::I(fx.b.ins().sload32(f, addr, 0)),
        DType::I16 => Sv::I(fx.b.ins().sload16(types::I64, f, addr, 0)),
        DType::I8 => Sv::I(fx.b.ins().sload8(types::I64, f, addr, 0)),
        DType::U8 => Sv::I(fx.b.ins().uload8(types::I64, f, addr, 0)),
        DType::Bool => Sv::B(fx.b.ins().load(types::I8, f, addr, 0)),
        DType::I4 | DType::U4 | DType::Ternary | DType::Binary => unreachable!("refused by body_op_supported"),
    }
}

/// Stores a body value (four lanes when `vector`) as `dtype` at `addr`.
pub fn store(fx: &mut Fx, dtype: DType, v: Sv, addr: Value, vector: bool) {
    let f = mem();
    match (dtype, v) {
        (DType::F32, Sv::F(x)) if vector => {
            fx.b.ins().store(f, x, addr, 0);
        }
        (DType::F32, Sv::F(x)) => {
            let s = fx.b.ins().extractlane(x, 0);
            fx.b.ins().store(f, s, addr, 0);
        }
        (DType::F16 | DType::BF16, Sv::F(x)) => {
            let s = fx.b.ins().extractlane(x, 0);
            let h = if dtype == DType::F16 {
                crate::host::id("tessera_host_f32_to_f16")
            } else {
                crate::host::id("tessera_host_f32_to_bf16")
            };
            let bits = fx.call_host(h, &[types::F32], Some(types::I32), &[s]).expect("ret");
            fx.b.ins().istore16(f, bits, addr, 0);
        }
        (DType::I64, Sv::I(x)) => {
            fx.b.ins().store(f, x, addr, 0);
        }
        (DType::I32, Sv::I(x)) => {
            fx.b.ins().istore32(f, x, addr, 0);
        }
        (DType::I16, Sv::I(x)) => {
            fx.b.ins().istore16(f, x, addr, 0);
        }
        (DType::I8 | DType::U8, Sv::I(x)) => {
            fx.b.ins().istore8(f, x, addr, 0);
        }
        (DType::Bool, Sv::B(x)) => {
            fx.b.ins().store(f, x, addr, 0);
        }
        (d, v) => unreachable!("storing {v:?} as {d}: the verifier keeps domains consistent"),
    }
}

/// Wraps an i64 into an integer dtype (two's complement truncation).
fn wrap(fx: &mut Fx, dtype: DType, x: Value) -> Value {
    match dtype {
        DType::I64 => x,
        DType::I32 => {
            let r = fx.b.ins().ireduce(types::I32, x);
            fx.b.ins().sextend(types::I64, r)
        }
        DType::I16 => {
            let r = fx.b.ins().ireduce(types::I16, x);
            fx.b.ins().sextend(types::I64, r)
        }
        DType::I8 => {
            let r = fx.b.ins().ireduce(types::I8, x);
            fx.b.ins().sextend(types::I64, r)
        }
        DType::U8 => fx.b.ins().band_imm_s(x, 0xff),
        _ => x,
    }
}

/// Rounds a float body value to an f16/bf16 dtype (f32 unchanged).
fn round_float(fx: &mut Fx, dtype: DType, x: Value) -> Value {
    let h = match dtype {
        DType::F16 => crate::host::id("tessera_host_round_f16"),
        DType::BF16 => crate::host::id("tessera_host_round_bf16"),
        _ => return x,
    };
    let s = fx.b.ins().extractlane(x, 0);
    let r = fx.call_host(h, &[types::F32], Some(types::F32), &[s]).expect("ret");
    fx.b.ins().splat(F4, r)
}

/// Saturates an i64 into `dtype`'s range.
fn saturate(fx: &mut Fx, dtype: DType, x: Value) -> Value {
    match dtype.int_range() {
        Some((lo, hi)) if dtype != DType::I64 => {
            let l = fx.iconst(lo);
            let h = fx.iconst(hi);
            let x = fx.b.ins().smax(x, l);
            fx.b.ins().smin(x, h)
        }
        _ => x,
    }
}

fn f_of(v: Sv) -> Value {
    match v {
        Sv::F(x) => x,
        other => unreachable!("expected a float, got {other:?}"),
    }
}
fn i_of(v: Sv) -> Value {
    match v {
        Sv::I(x) => x,
        other => unreachable!("expected an integer, got {other:?}"),
    }
}
fn b_of(v: Sv) -> Value {
    match v {
        Sv::B(x) => x,
        other => unreachable!("expected a bool, got {other:?}"),
    }
}

/// A float compare mask's lane 0 as a bool.
fn mask_to_bool(fx: &mut Fx, m: Value) -> Value {
    let l = fx.b.ins().extractlane(m, 0);
    let one = fx.b.ins().band_imm_s(l, 1);
    fx.b.ins().ireduce(types::I8, one)
}

/// One float unary function on f32x4.
pub fn unary_f(fx: &mut Fx, op: UnaryOp, x: Value) -> Value {
    match op {
        UnaryOp::Neg => fx.b.ins().fneg(x),
        UnaryOp::Abs => fx.b.ins().fabs(x),
        UnaryOp::Exp => math::exp(fx, x),
        UnaryOp::Log => fx.map_lanes1("tessera_host_log", x),
        UnaryOp::Sqrt => fx.b.ins().sqrt(x),
        UnaryOp::Rsqrt => {
            let s = fx.b.ins().sqrt(x);
            let one = fx.fsplat(1.0);
            fx.b.ins().fdiv(one, s)
        }
        UnaryOp::Reciprocal => {
            let one = fx.fsplat(1.0);
            fx.b.ins().fdiv(one, x)
        }
        UnaryOp::Tanh => math::tanh(fx, x),
        UnaryOp::Erf => math::erf(fx, x),
        UnaryOp::Sigmoid => math::sigmoid(fx, x),
        UnaryOp::Relu => {
            // x > 0 or NaN keeps x.
            let zero = fx.fsplat(0.0);
            let le = fx.vfcmp(FloatCC::LessThanOrEqual, x, zero);
            fx.vselect(le, zero, x)
        }
        UnaryOp::Gelu => math::gelu(fx, x),
        UnaryOp::GeluTanh => math::gelu_tanh(fx, x),
        UnaryOp::Silu => {
            let s = math::sigmoid(fx, x);
            fx.b.ins().fmul(x, s)
        }
        UnaryOp::Sin => fx.map_lanes1("tessera_host_sin", x),
        UnaryOp::Cos => fx.map_lanes1("tessera_host_cos", x),
        UnaryOp::Floor => fx.b.ins().floor(x),
        UnaryOp::Ceil => fx.b.ins().ceil(x),
        UnaryOp::Round => fx.b.ins().nearest(x),
        UnaryOp::Sign => {
            let zero = fx.fsplat(0.0);
            let one = fx.fsplat(1.0);
            let mone = fx.fsplat(-1.0);
            let gt = fx.vfcmp(FloatCC::GreaterThan, x, zero);
            let lt = fx.vfcmp(FloatCC::LessThan, x, zero);
            let r = fx.vselect(lt, mone, zero);
            fx.vselect(gt, one, r)
        }
        UnaryOp::Not | UnaryOp::IsNan | UnaryOp::IsInf => unreachable!("bool-valued"),
    }
}

/// One float binary function on f32x4.
pub fn binary_f(fx: &mut Fx, op: BinaryOp, x: Value, y: Value) -> Value {
    match op {
        BinaryOp::Add => fx.b.ins().fadd(x, y),
        BinaryOp::Sub => fx.b.ins().fsub(x, y),
        BinaryOp::Mul => fx.b.ins().fmul(x, y),
        BinaryOp::Div => fx.b.ins().fdiv(x, y),
        BinaryOp::Pow => fx.map_lanes2("tessera_host_pow", x, y),
        BinaryOp::Max => fx.b.ins().fmax(x, y),
        BinaryOp::Min => fx.b.ins().fmin(x, y),
        BinaryOp::Fmod => fx.map_lanes2("tessera_host_fmod", x, y),
        BinaryOp::Mod => fx.map_lanes2("tessera_host_mod", x, y),
        _ => unreachable!("not float arithmetic"),
    }
}

/// Evaluates one body op. `g` is the body graph; `args` the operand values.
pub fn eval_op(
    fx: &mut Fx,
    g: &Graph,
    op: &Op,
    inputs: &[tessera_ir::Value],
    args: &[Sv],
    out: DType,
) -> Result<Sv, CpuError> {
    let in_dtype = g.ty(inputs[0]).dtype;
    Ok(match op {
        Op::Identity => args[0],
        Op::Unary(u) => match (u, args[0]) {
            (UnaryOp::Not, Sv::B(b)) => Sv::B(fx.b.ins().bxor_imm_s(b, 1)),
            (UnaryOp::IsNan, Sv::F(x)) => {
                let m = fx.vfcmp(FloatCC::Unordered, x, x);
                Sv::B(mask_to_bool(fx, m))
            }
            (UnaryOp::IsInf, Sv::F(x)) => {
                let a = fx.b.ins().fabs(x);
                let inf = fx.fsplat(f32::INFINITY);
                let m = fx.vfcmp(FloatCC::Equal, a, inf);
                Sv::B(mask_to_bool(fx, m))
            }
            (_, Sv::F(x)) => {
                let r = unary_f(fx, *u, x);
                Sv::F(round_float(fx, out, r))
            }
            (UnaryOp::Neg, Sv::I(x)) => {
                let r = fx.b.ins().ineg(x);
                Sv::I(wrap(fx, out, r))
            }
            (UnaryOp::Abs, Sv::I(x)) => {
                let n = fx.b.ins().ineg(x);
                let r = fx.b.ins().smax(x, n);
                Sv::I(wrap(fx, out, r))
            }
            (UnaryOp::Relu, Sv::I(x)) => {
                let z = fx.iconst(0);
                Sv::I(fx.b.ins().smax(x, z))
            }
            (UnaryOp::Sign, Sv::I(x)) => {
                let z = fx.iconst(0);
                let gt = fx.b.ins().icmp(IntCC::SignedGreaterThan, x, z);
                let lt = fx.b.ins().icmp(IntCC::SignedLessThan, x, z);
                let gt = fx.b.ins().uextend(types::I64, gt);
                let lt = fx.b.ins().uextend(types::I64, lt);
                Sv::I(fx.b.ins().isub(gt, lt))
            }
            (u, v) => return Err(CpuError::Codegen(format!("`{}` on {v:?}", u.name()))),
        },
        Op::Binary(bop) => {
            let (x, y) = (args[0], args[1]);
            if bop.is_comparison() {
                let r = match (x, y) {
                    (Sv::F(a), Sv::F(b)) => {
                        let cc = match bop {
                            BinaryOp::Equal => FloatCC::Equal,
                            BinaryOp::Less => FloatCC::LessThan,
                            BinaryOp::LessEqual => FloatCC::LessThanOrEqual,
                            BinaryOp::Greater => FloatCC::GreaterThan,
                            _ => FloatCC::GreaterThanOrEqual,
                        };
                        let m = fx.vfcmp(cc, a, b);
                        mask_to_bool(fx, m)
                    }
                    (Sv::I(a), Sv::I(b)) | (Sv::B(a), Sv::B(b)) => {
                        let cc = match bop {
                            BinaryOp::Equal => IntCC::Equal,
                            BinaryOp::Less => IntCC::SignedLessThan,
                            BinaryOp::LessEqual => IntCC::SignedLessThanOrEqual,
                            BinaryOp::Greater => IntCC::SignedGreaterThan,
                            _ => IntCC::SignedGreaterThanOrEqual,
                        };
                        fx.b.ins().icmp(cc, a, b)
                    }
                    _ => return Err(CpuError::Codegen("comparison of mixed domains".into())),
                };
                Sv::B(r)
            } else if bop.is_logical() {
                let (a, b) = (b_of(x), b_of(y));
                Sv::B(match bop {
                    BinaryOp::And => fx.b.ins().band(a, b),
                    BinaryOp::Or => fx.b.ins().bor(a, b),
                    _ => fx.b.ins().bxor(a, b),
                })
            } else {
                match (x, y) {
                    (Sv::F(a), Sv::F(b)) => {
                        let r = binary_f(fx, *bop, a, b);
                        Sv::F(round_float(fx, out, r))
                    }
                    (Sv::I(a), Sv::I(b)) => Sv::I(int_binary(fx, *bop, a, b, out)),
                    _ => return Err(CpuError::Codegen(format!("`{}` on mixed domains", bop.name()))),
                }
            }
        }
        Op::Where => {
            let c = b_of(args[0]);
            match (args[1], args[2]) {
                (Sv::F(a), Sv::F(b)) => Sv::F(fx.b.ins().select(c, a, b)),
                (Sv::I(a), Sv::I(b)) => Sv::I(fx.b.ins().select(c, a, b)),
                (Sv::B(a), Sv::B(b)) => Sv::B(fx.b.ins().select(c, a, b)),
                _ => return Err(CpuError::Codegen("`where` branches of mixed domains".into())),
            }
        }
        Op::Cast { to } => cast(fx, args[0], in_dtype, *to),
        Op::Dequantize { .. } => {
            let q = i_of(args[0]);
            let q = match args.get(2) {
                Some(z) => fx.b.ins().isub(q, i_of(*z)),
                None => q,
            };
            let f = fx.b.ins().fcvt_from_sint(types::F32, q);
            let f = fx.b.ins().splat(F4, f);
            let r = fx.b.ins().fmul(f, f_of(args[1]));
            Sv::F(round_float(fx, out, r))
        }
        Op::Quantize { to, .. } => {
            let x = f_of(args[0]);
            let d = fx.b.ins().fdiv(x, f_of(args[1]));
            let r = fx.b.ins().nearest(d);
            let s = fx.b.ins().extractlane(r, 0);
            let lim = fx.fconst(1e15);
            let nlim = fx.fconst(-1e15);
            let s = fx.b.ins().fmin(s, lim);
            let s = fx.b.ins().fmax(s, nlim);
            let q = fx.b.ins().fcvt_to_sint_sat(types::I64, s);
            let q = match args.get(2) {
                Some(z) => fx.b.ins().iadd(q, i_of(*z)),
                None => q,
            };
            Sv::I(saturate(fx, *to, q))
        }
        other => return Err(CpuError::Codegen(format!("`{}` is not elementwise", other.name()))),
    })
}

fn int_binary(fx: &mut Fx, op: BinaryOp, a: Value, b: Value, out: DType) -> Value {
    let r = match op {
        BinaryOp::Add => fx.b.ins().iadd(a, b),
        BinaryOp::Sub => fx.b.ins().isub(a, b),
        BinaryOp::Mul => fx.b.ins().imul(a, b),
        BinaryOp::Max => fx.b.ins().smax(a, b),
        BinaryOp::Min => fx.b.ins().smin(a, b),
        BinaryOp::Div => {
            let zero = fx.b.ins().icmp_imm_s(IntCC::Equal, b, 0);
            fx.fail_if(zero, KernelFault::DivisionByZero);
            // i64::MIN / -1 wraps (Cranelift's sdiv would trap): x / -1 is -x.
            let m1 = fx.b.ins().icmp_imm_s(IntCC::Equal, b, -1);
            let one = fx.iconst(1);
            let safe_b = fx.b.ins().select(m1, one, b);
            let q = fx.b.ins().sdiv(a, safe_b);
            let n = fx.b.ins().ineg(a);
            fx.b.ins().select(m1, n, q)
        }
        BinaryOp::Pow => {
            let neg = fx.b.ins().icmp_imm_s(IntCC::SignedLessThan, b, 0);
            fx.fail_if(neg, KernelFault::NegativeExponent);
            fx.call_host(crate::host::id("tessera_host_ipow"), &[types::I64, types::I64], Some(types::I64), &[a, b])
                .expect("ret")
        }
        BinaryOp::Mod | BinaryOp::Fmod => {
            let zero = fx.b.ins().icmp_imm_s(IntCC::Equal, b, 0);
            fx.fail_if(zero, KernelFault::DivisionByZero);
            let h = if op == BinaryOp::Mod {
                crate::host::id("tessera_host_imod")
            } else {
                crate::host::id("tessera_host_irem")
            };
            fx.call_host(h, &[types::I64, types::I64], Some(types::I64), &[a, b]).expect("ret")
        }
        _ => unreachable!("not integer arithmetic"),
    };
    wrap(fx, out, r)
}

fn cast(fx: &mut Fx, x: Sv, _from: DType, to: DType) -> Sv {
    match (x, to.domain()) {
        (Sv::F(v), tessera_ir::dtype::Domain::Float) => Sv::F(round_float(fx, to, v)),
        (Sv::F(v), tessera_ir::dtype::Domain::Int) => {
            let s = fx.b.ins().extractlane(v, 0);
            let t = fx.b.ins().trunc(s);
            let i = fx.b.ins().fcvt_to_sint_sat(types::I64, t);
            Sv::I(wrap(fx, to, i))
        }
        (Sv::F(v), tessera_ir::dtype::Domain::Bool) => {
            let zero = fx.fsplat(0.0);
            let m = fx.vfcmp(FloatCC::NotEqual, v, zero);
            Sv::B(mask_to_bool(fx, m))
        }
        (Sv::I(v), tessera_ir::dtype::Domain::Float) => {
            let f = fx.b.ins().fcvt_from_sint(types::F32, v);
            let f = fx.b.ins().splat(F4, f);
            Sv::F(round_float(fx, to, f))
        }
        (Sv::I(v), tessera_ir::dtype::Domain::Int) => Sv::I(wrap(fx, to, v)),
        (Sv::I(v), tessera_ir::dtype::Domain::Bool) => Sv::B(fx.b.ins().icmp_imm_s(IntCC::NotEqual, v, 0)),
        (Sv::B(v), tessera_ir::dtype::Domain::Float) => {
            let i = fx.b.ins().uextend(types::I32, v);
            let f = fx.b.ins().fcvt_from_uint(types::F32, i);
            let f = fx.b.ins().splat(F4, f);
            Sv::F(round_float(fx, to, f))
        }
        (Sv::B(v), tessera_ir::dtype::Domain::Int) => Sv::I(fx.b.ins().uextend(types::I64, v)),
        (Sv::B(v), tessera_ir::dtype::Domain::Bool) => Sv::B(v),
    }
}

/// Evaluates a body graph on its inputs; returns its outputs.
pub fn eval_body(fx: &mut Fx, body: &Graph, inputs: &[Sv]) -> Result<Vec<Sv>, CpuError> {
    let mut env: Vec<Option<Sv>> = vec![None; body.n_values()];
    for ((_, v), x) in body.inputs().iter().zip(inputs) {
        env[v.index()] = Some(*x);
    }
    for (_, nd) in body.nodes() {
        let args: Vec<Sv> = nd
            .inputs
            .iter()
            .map(|v| env[v.index()].ok_or_else(|| CpuError::Codegen(format!("{v} used before it is computed"))))
            .collect::<Result<_, _>>()?;
        let out = body.ty(nd.outputs[0]).dtype;
        let r = eval_op(fx, body, &nd.op, &nd.inputs, &args, out)?;
        env[nd.outputs[0].index()] = Some(r);
    }
    body.outputs()
        .iter()
        .map(|(_, v)| env[v.index()].ok_or_else(|| CpuError::Codegen(format!("output {v} is not computed"))))
        .collect()
}

/// An elementwise kernel: operands `0..n` (buffers `0..n`), one result (buffer `n`).
pub struct EwKernel<'g> {
    pub body: std::borrow::Cow<'g, Graph>,
    pub out_dims: Vec<Dim>,
    pub out_dtype: DType,
    pub operands: Vec<(DType, Vec<Dim>)>,
}

impl EwKernel<'_> {
    /// Whether every value is f32, so the inner loop can run f32x4.
    fn all_f32(&self) -> bool {
        self.out_dtype == DType::F32
            && self.operands.iter().all(|(d, _)| *d == DType::F32)
            && self.body.values().all(|(_, vd)| vd.ty.dtype == DType::F32)
    }

    pub fn emit(&self, fx: &mut Fx) -> Result<(), CpuError> {
        let r = self.out_dims.len();
        let n = self.operands.len();
        // Per operand: base pointer and, per output axis, the element stride (0 when broadcast).
        let mut bases = Vec::new();
        let mut strides: Vec<Vec<Option<Value>>> = Vec::new();
        let mut inner_moves = Vec::new();
        for (k, (dtype, dims)) in self.operands.iter().enumerate() {
            let eb = elem_bytes(*dtype).ok_or_else(|| CpuError::Unsupported(format!("{dtype} operand")))?;
            bases.push(fx.buf(k));
            let st = broadcast_strides(fx, dims, &self.out_dims, eb)?;
            inner_moves.push(r > 0 && st[r - 1].is_some());
            strides.push(st);
        }
        let out_eb =
            elem_bytes(self.out_dtype).ok_or_else(|| CpuError::Unsupported(format!("{} result", self.out_dtype)))?;
        let out_base = fx.buf(n);
        let mut out_strides = vec![fx.iconst(out_eb); r];
        for j in (0..r.saturating_sub(1)).rev() {
            let d = fx.dim(&self.out_dims[j + 1])?;
            out_strides[j] = fx.b.ins().imul(out_strides[j + 1], d);
        }
        let dims: Vec<Value> = self.out_dims.iter().map(|d| fx.dim(d)).collect::<Result<_, _>>()?;
        let vector = self.all_f32() && r > 0;
        self.nest(fx, 0, &dims, bases, out_base, &strides, &out_strides, vector, &inner_moves)
    }

    #[allow(clippy::too_many_arguments)]
    fn nest(
        &self,
        fx: &mut Fx,
        depth: usize,
        dims: &[Value],
        bases: Vec<Value>,
        out: Value,
        strides: &[Vec<Option<Value>>],
        out_strides: &[Value],
        vector: bool,
        inner_moves: &[bool],
    ) -> Result<(), CpuError> {
        let r = dims.len();
        if r == 0 {
            return self.element(fx, &bases, out, false, inner_moves);
        }
        // Operand and result addresses at index `i` of axis `depth`.
        let step = |fx: &mut Fx, i: Value| -> (Vec<Value>, Value) {
            let at = bases
                .iter()
                .zip(strides)
                .map(|(b, st)| match st[depth] {
                    Some(s) => {
                        let off = fx.b.ins().imul(i, s);
                        fx.b.ins().iadd(*b, off)
                    }
                    None => *b,
                })
                .collect();
            let off = fx.b.ins().imul(i, out_strides[depth]);
            (at, fx.b.ins().iadd(out, off))
        };
        if depth + 1 < r {
            return fx.for_n(dims[depth], |fx, i| {
                let (at, o) = step(fx, i);
                self.nest(fx, depth + 1, dims, at, o, strides, out_strides, vector, inner_moves)
            });
        }
        // Innermost axis: four lanes at a time when every value is f32, then one by one.
        let n = dims[depth];
        let zero = fx.iconst(0);
        let start = if vector {
            fx.for_range(zero, n, 4, true, |fx, i| {
                let (at, o) = step(fx, i);
                self.element(fx, &at, o, true, inner_moves)
            })?
        } else {
            zero
        };
        fx.for_range(start, n, 1, false, |fx, i| {
            let (at, o) = step(fx, i);
            self.element(fx, &at, o, false, inner_moves)
        })?;
        Ok(())
    }

    fn element(
        &self,
        fx: &mut Fx,
        at: &[Value],
        out: Value,
        vector: bool,
        inner_moves: &[bool],
    ) -> Result<(), CpuError> {
        let args: Vec<Sv> = self
            .operands
            .iter()
            .zip(at)
            .zip(inner_moves)
            .map(|(((d, _), a), moves)| load(fx, *d, *a, vector, !moves))
            .collect();
        let outs = eval_body(fx, &self.body, &args)?;
        store(fx, self.out_dtype, outs[0], out, vector);
        Ok(())
    }
}

/// `cast` from or to a 4-bit integer (`i4`, `u4`; two per byte, the low nibble first): one
/// element at a time on one thread, through the same conversions as the other casts (the
/// 4-bit side is an i64 in the integer domain: sign-extended from its nibble when read,
/// wrapped to its nibble when written, as the interpreter's `wrap_int`).
pub(crate) fn lower_subbyte_cast(g: &Graph, n: tessera_ir::Node) -> Result<crate::lower::Lowered<'_>, CpuError> {
    let nd = g.node(n);
    let (x, y) = (nd.inputs[0], nd.outputs[0]);
    let (from, to) = (g.ty(x).dtype, g.ty(y).dtype);
    let four = |d: DType| matches!(d, DType::I4 | DType::U4);
    let plain = |d: DType| !d.is_sub_byte();
    if !((four(from) && (plain(to) || four(to))) || (four(to) && plain(from))) {
        return Err(CpuError::Unsupported(format!("cast from {from} to {to}")));
    }
    let xd = crate::lower::dims(g, x);
    let bufs = crate::lower::values(&[x, y]);
    let mut lw = crate::lower::Lowered::new(
        "cast_4bit",
        bufs,
        Box::new(move |fx| {
            let (xp, yp) = (fx.buf(0), fx.buf(1));
            let n = fx.numel(&xd)?;
            fx.for_n(n, |fx, i| {
                let v = if four(from) {
                    Sv::I(load_int_at(fx, from, xp, i)?)
                } else {
                    let eb = crate::fx::elem_bytes(from).ok_or_else(|| CpuError::Codegen(format!("{from}")))?;
                    let a = fx.addr(xp, i, eb);
                    load(fx, from, a, false, true)
                };
                if four(to) {
                    let Sv::I(w) = cast(fx, v, from, DType::I64) else {
                        return Err(CpuError::Codegen("cast to i64".into()));
                    };
                    store_int_at(fx, to, yp, i, w)
                } else {
                    let r = cast(fx, v, DType::I64, to);
                    let eb = crate::fx::elem_bytes(to).ok_or_else(|| CpuError::Codegen(format!("{to}")))?;
                    let a = fx.addr(yp, i, eb);
                    store(fx, to, r, a, false);
                    Ok(())
                }
            })
        }),
    );
    lw.serial = true;
    Ok(lw)
}

/// Element `i` of an integer buffer of `dt` (8-bit or wider, or 4-bit packed two per byte) as
/// an i64.
fn load_int_at(fx: &mut Fx, dt: DType, base: Value, i: Value) -> Result<Value, CpuError> {
    if matches!(dt, DType::I4 | DType::U4) {
        let half = fx.b.ins().ushr_imm_u(i, 1);
        let odd = fx.b.ins().band_imm_u(i, 1);
        let shift = fx.b.ins().ishl_imm_s(odd, 2);
        let a = fx.b.ins().iadd(base, half);
        let byte = fx.b.ins().uload8(types::I64, mem(), a, 0);
        let code = fx.b.ins().ushr(byte, shift);
        let code = fx.b.ins().band_imm_u(code, 15);
        return Ok(if dt == DType::I4 {
            let t = fx.b.ins().ishl_imm_s(code, 60);
            fx.b.ins().sshr_imm_s(t, 60)
        } else {
            code
        });
    }
    let eb = crate::fx::elem_bytes(dt).ok_or_else(|| CpuError::Unsupported(format!("{dt} operand")))?;
    let a = fx.addr(base, i, eb);
    match load(fx, dt, a, false, true) {
        Sv::I(v) => Ok(v),
        _ => Err(CpuError::Unsupported(format!("{dt} where an integer is needed"))),
    }
}

/// Stores the integer `v` (already in `dt`'s range) as element `i` of a buffer of `dt`; a 4-bit
/// element writes its byte when even (high nibble 0) and adds its nibble when odd, so elements
/// must be written in order by one thread.
fn store_int_at(fx: &mut Fx, dt: DType, base: Value, i: Value, v: Value) -> Result<(), CpuError> {
    if matches!(dt, DType::I4 | DType::U4) {
        let half = fx.b.ins().ushr_imm_u(i, 1);
        let odd = fx.b.ins().band_imm_u(i, 1);
        let shift = fx.b.ins().ishl_imm_s(odd, 2);
        let code = fx.b.ins().band_imm_u(v, 15);
        let code = fx.b.ins().ishl(code, shift);
        let a = fx.b.ins().iadd(base, half);
        let is_odd = fx.b.ins().icmp_imm_s(IntCC::NotEqual, odd, 0);
        let old = fx.b.ins().uload8(types::I64, mem(), a, 0);
        let zero = fx.iconst(0);
        let keep = fx.b.ins().select(is_odd, old, zero);
        let byte = fx.b.ins().bor(keep, code);
        fx.b.ins().istore8(mem(), byte, a, 0);
        return Ok(());
    }
    let eb = crate::fx::elem_bytes(dt).ok_or_else(|| CpuError::Unsupported(format!("{dt} result")))?;
    let a = fx.addr(base, i, eb);
    store(fx, dt, Sv::I(v), a, false);
    Ok(())
}

/// `quantize` and `dequantize` with parameters per axis (any axis) or per block along an axis,
/// and 4-bit data or zero points: one element at a time on one thread, with the interpreter's
/// arithmetic (`(q - zero) as f32 * scale`; `saturate(round_half_even(x / scale) + zero)`, NaN
/// to the zero point). For what the elementwise kernels do not take.
pub(crate) fn lower_quant_general(g: &Graph, n: tessera_ir::Node) -> Result<crate::lower::Lowered<'_>, CpuError> {
    let nd = g.node(n);
    let (x, y) = (nd.inputs[0], nd.outputs[0]);
    let (axis, block, quantize) = match nd.op {
        Op::Quantize { axis, block, .. } => (axis, block, true),
        Op::Dequantize { axis, block } if nd.inputs.len() >= 2 => (axis, block, false),
        _ => return Err(CpuError::Unsupported(format!("`{}` with its parameters in its type", nd.op.name()))),
    };
    let (xt, st, yt) = (g.ty(x), g.ty(nd.inputs[1]), g.ty(y));
    let float_side = if quantize { xt } else { yt };
    if float_side.dtype != DType::F32 || st.dtype != DType::F32 {
        return Err(CpuError::Unsupported(format!(
            "`{}` on {} with {} scales",
            nd.op.name(),
            float_side.dtype,
            st.dtype
        )));
    }
    let xd = crate::lower::dims(g, x);
    let r = xd.len();
    let a = if r == 0 {
        0
    } else {
        tessera_ir::types::normalize_axis(axis, r).ok_or_else(|| CpuError::Codegen("axis".into()))?
    };
    // Which parameter each element uses: one, one per index along the axis, or per block.
    #[derive(Clone, Copy, PartialEq)]
    enum Per {
        Tensor,
        Axis,
        Block(i64),
    }
    let per = if st.shape.static_numel() == Some(1) {
        Per::Tensor
    } else if block > 0 {
        Per::Block(block as i64)
    } else {
        Per::Axis
    };
    let (xdt, ydt) = (xt.dtype, yt.dtype);
    let zdt = nd.inputs.get(2).map(|&z| g.ty(z).dtype);
    let (outer, lane, inner) = if r == 0 {
        (Vec::new(), Dim::Static(1), Vec::new())
    } else {
        (xd[..a].to_vec(), xd[a].clone(), xd[a + 1..].to_vec())
    };
    let bufs = crate::lower::values(&nd.inputs).into_iter().chain(crate::lower::values(&[y])).collect::<Vec<_>>();
    let k = nd.inputs.len();
    let mut lw = crate::lower::Lowered::new(
        if quantize { "quantize_general" } else { "dequantize_general" },
        bufs,
        Box::new(move |fx| {
            let (xp, sp, out) = (fx.buf(0), fx.buf(1), fx.buf(k));
            let zp = zdt.map(|_| fx.buf(2));
            let on = fx.numel(&outer)?;
            let ln = fx.dim(&lane)?;
            let inn = fx.numel(&inner)?;
            let blocks = match per {
                Per::Block(b) => {
                    let t = fx.iadd_imm(ln, b - 1);
                    let bv = fx.iconst(b);
                    fx.b.ins().udiv(t, bv)
                }
                _ => ln,
            };
            fx.for_n(on, |fx, o| {
                fx.for_n(ln, |fx, ai| {
                    fx.for_n(inn, |fx, j| {
                        let t = fx.b.ins().imul(o, ln);
                        let t = fx.b.ins().iadd(t, ai);
                        let t = fx.b.ins().imul(t, inn);
                        let i = fx.b.ins().iadd(t, j);
                        let p = match per {
                            Per::Tensor => fx.iconst(0),
                            Per::Axis => ai,
                            Per::Block(b) => {
                                let bv = fx.iconst(b);
                                let ab = fx.b.ins().udiv(ai, bv);
                                let t = fx.b.ins().imul(o, blocks);
                                let t = fx.b.ins().iadd(t, ab);
                                let t = fx.b.ins().imul(t, inn);
                                fx.b.ins().iadd(t, j)
                            }
                        };
                        let sa = fx.addr(sp, p, 4);
                        let s = fx.b.ins().load(types::F32, mem(), sa, 0);
                        let z = match (zp, zdt) {
                            (Some(zp), Some(zdt)) => load_int_at(fx, zdt, zp, p)?,
                            _ => fx.iconst(0),
                        };
                        if quantize {
                            let xa = fx.addr(xp, i, 4);
                            let v = fx.b.ins().load(types::F32, mem(), xa, 0);
                            let d = fx.b.ins().fdiv(v, s);
                            let rr = fx.b.ins().nearest(d);
                            let lim = fx.fconst(1e15);
                            let nlim = fx.fconst(-1e15);
                            let rr = fx.b.ins().fmin(rr, lim);
                            let rr = fx.b.ins().fmax(rr, nlim);
                            let q = fx.b.ins().fcvt_to_sint_sat(types::I64, rr);
                            let q = fx.b.ins().iadd(q, z);
                            let q = saturate(fx, ydt, q);
                            store_int_at(fx, ydt, out, i, q)
                        } else {
                            let q = load_int_at(fx, xdt, xp, i)?;
                            let d = fx.b.ins().isub(q, z);
                            let f = fx.b.ins().fcvt_from_sint(types::F32, d);
                            let v = fx.b.ins().fmul(f, s);
                            let ya = fx.addr(out, i, 4);
                            fx.b.ins().store(mem(), v, ya, 0);
                            Ok(())
                        }
                    })
                })
            })
        }),
    );
    lw.serial = true;
    Ok(lw)
}
