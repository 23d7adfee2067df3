//! `Fx`: a thin layer over Cranelift's `FunctionBuilder` for writing kernels: the kernel ABI's
//! parameters, run-time dims, counted loops, typed loads and stores, error exits and calls into
//! the host's math library.

use std::sync::Arc;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, AbiParam, Block, InstBuilder, MemFlagsData, Signature, Type, Value};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_frontend::{FunctionBuilder, Variable};
use tessera_ir::{DType, Dim};

use crate::CpuError;

/// f32x4: the vector type every float kernel is written for (128-bit, as NEON).
pub const F4: Type = types::F32X4;

pub struct Fx<'a> {
    pub b: FunctionBuilder<'a>,
    bufs: Value,
    syms_ptr: Value,
    pub lo: Value,
    pub hi: Value,
    syms: &'a [Arc<str>],
    err: Block,
    cc: CallConv,
    /// Added to every `buf(i)`: lets two kernels' code share one function (a region's head
    /// and its epilogue) with their own buffer numbering.
    pub buf_base: usize,
    /// Host functions imported so far, by index in [`crate::host::symbols`].
    host_refs: std::collections::HashMap<usize, cranelift_codegen::ir::FuncRef>,
}

/// The namespace of the user external names that stand for host functions ([`Fx::call_host`])
/// until [`crate::jit::Jit::define`] declares them in the module.
pub const HOST_NAMESPACE: u32 = 7;

/// Loads and stores: never trapping by construction (shapes are checked before kernels run),
/// not assumed aligned.
pub fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Flags for loads of memory the kernel never writes (a product's operands, packed weights: the
/// memory planner never lets a kernel region's result share a slot with an operand). Cranelift
/// treats such loads as pure, so it can fold them into their use (`vbroadcastss mem`, FMA with a
/// memory operand) and hoist invariant ones out of loops.
pub fn mem_ro() -> MemFlagsData {
    MemFlagsData::new().with_notrap().with_readonly()
}

/// [`mem_ro`] plus `can_move`: the load is pure for Cranelift's e-graph, which then places it
/// right before its use (so `splat(load)` becomes one `vbroadcastss mem`). Only for loads that
/// are in bounds wherever the e-graph might place them: unconditional loads in a loop body
/// whose address depends on the loop index.
pub fn mem_pure() -> MemFlagsData {
    mem_ro().with_can_move()
}

impl<'a> Fx<'a> {
    pub fn new(mut b: FunctionBuilder<'a>, syms: &'a [Arc<str>], cc: CallConv) -> Fx<'a> {
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        let err = b.create_block();
        b.append_block_param(err, types::I32);
        Fx {
            b,
            bufs: p[0],
            syms_ptr: p[1],
            lo: p[2],
            hi: p[3],
            syms,
            err,
            cc,
            buf_base: 0,
            host_refs: Default::default(),
        }
    }

    /// Returns 0 from the current position and seals the function.
    pub fn finish(mut self, cfg: TargetFrontendConfig) {
        let zero = self.b.ins().iconst(types::I32, 0);
        self.b.ins().return_(&[zero]);
        self.b.switch_to_block(self.err);
        self.b.set_cold_block(self.err);
        let code = self.b.block_params(self.err)[0];
        self.b.ins().return_(&[code]);
        self.b.seal_all_blocks();
        self.b.finalize(cfg);
    }

    pub fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    pub fn fconst(&mut self, v: f32) -> Value {
        self.b.ins().f32const(v)
    }

    pub fn fsplat(&mut self, v: f32) -> Value {
        let s = self.b.ins().f32const(v);
        self.b.ins().splat(F4, s)
    }

    /// The pointer to operand or result `i` of the kernel.
    pub fn buf(&mut self, i: usize) -> Value {
        self.b.ins().load(types::I64, mem(), self.bufs, ((self.buf_base + i) * 8) as i32)
    }

    /// A dim as a run-time value: a constant when static, else read from the symbol table.
    pub fn dim(&mut self, d: &Dim) -> Result<Value, CpuError> {
        match d {
            Dim::Static(n) => Ok(self.iconst(*n as i64)),
            Dim::Sym(s) => {
                let i = self
                    .syms
                    .iter()
                    .position(|x| x == s)
                    .ok_or_else(|| CpuError::Codegen(format!("symbol {s} is not bound by any graph input")))?;
                Ok(self.b.ins().load(types::I64, mem(), self.syms_ptr, (i * 8) as i32))
            }
            Dim::Unknown => Err(CpuError::Codegen("a data-dependent dim `?` reached code generation".into())),
        }
    }

    /// Run-time parameter `j` of this kernel (computed by the executor, after the symbols).
    pub fn param(&mut self, j: usize) -> Value {
        self.b.ins().load(types::I64, mem(), self.syms_ptr, ((self.syms.len() + j) * 8) as i32)
    }

    /// Product of dims (1 for none).
    pub fn numel(&mut self, dims: &[Dim]) -> Result<Value, CpuError> {
        let mut acc = self.iconst(1);
        for d in dims {
            let v = self.dim(d)?;
            acc = self.b.ins().imul(acc, v);
        }
        Ok(acc)
    }

    pub fn imul_imm(&mut self, x: Value, k: i64) -> Value {
        let c = self.iconst(k);
        self.b.ins().imul(x, c)
    }

    pub fn iadd_imm(&mut self, x: Value, k: i64) -> Value {
        self.b.ins().iadd_imm_s(x, k)
    }

    /// `base + index * scale` (byte address of element `index`).
    pub fn addr(&mut self, base: Value, index: Value, scale: i64) -> Value {
        let off = if scale == 1 { index } else { self.imul_imm(index, scale) };
        self.b.ins().iadd(base, off)
    }

    pub fn var(&mut self, ty: Type, init: Value) -> Variable {
        let v = self.b.declare_var(ty);
        self.b.def_var(v, init);
        v
    }

    /// `for i in (start..end).step_by(step)` while `i + step <= end` when `whole`, else `i < end`.
    /// Returns the loop counter's final value (the first index not done).
    pub fn for_range(
        &mut self,
        start: Value,
        end: Value,
        step: i64,
        whole: bool,
        body: impl FnOnce(&mut Self, Value) -> Result<(), CpuError>,
    ) -> Result<Value, CpuError> {
        let header = self.b.create_block();
        let body_block = self.b.create_block();
        let exit = self.b.create_block();
        let counter = self.b.declare_var(types::I64);
        self.b.def_var(counter, start);
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(header);
        let i = self.b.use_var(counter);
        let cond = if whole && step > 1 {
            let last = self.iadd_imm(i, step);
            self.b.ins().icmp(IntCC::SignedGreaterThan, last, end)
        } else {
            self.b.ins().icmp(IntCC::SignedGreaterThanOrEqual, i, end)
        };
        // Branch to the exit on the inverted condition: Cranelift 0.135's loop analysis only hoists
        // loop-invariant code when the loop body is the fall-through target.
        self.b.ins().brif(cond, exit, &[], body_block, &[]);
        self.b.switch_to_block(body_block);
        body(self, i)?;
        let i = self.b.use_var(counter);
        let next = self.iadd_imm(i, step);
        self.b.def_var(counter, next);
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(exit);
        Ok(self.b.use_var(counter))
    }

    /// The rows `[lo * unit, min(hi * unit, rows))` of a call whose parallel range counts blocks
    /// of `unit` rows.
    pub fn par_rows(&mut self, rows: Value, unit: usize) -> (Value, Value) {
        let r0 = self.imul_imm(self.lo, unit as i64);
        let r1 = self.imul_imm(self.hi, unit as i64);
        (r0, self.b.ins().smin(r1, rows))
    }

    /// Rows `r0..r1` in blocks of `mr`, then the rest one by one: `body(fx, first row, rows)`.
    pub fn for_row_blocks(
        &mut self,
        r0: Value,
        r1: Value,
        mr: usize,
        body: impl Fn(&mut Self, Value, usize) -> Result<(), CpuError>,
    ) -> Result<(), CpuError> {
        let after = self.for_range(r0, r1, mr as i64, true, |fx, m0| body(fx, m0, mr))?;
        self.for_range(after, r1, 1, false, |fx, m0| body(fx, m0, 1))?;
        Ok(())
    }

    /// `for i in 0..n`.
    pub fn for_n(
        &mut self,
        n: Value,
        body: impl FnOnce(&mut Self, Value) -> Result<(), CpuError>,
    ) -> Result<(), CpuError> {
        let zero = self.iconst(0);
        self.for_range(zero, n, 1, false, body).map(|_| ())
    }

    /// Runs `then` when `cond` (an i8) is true.
    pub fn if_then(
        &mut self,
        cond: Value,
        then: impl FnOnce(&mut Self) -> Result<(), CpuError>,
    ) -> Result<(), CpuError> {
        let t = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(cond, t, &[], done, &[]);
        self.b.switch_to_block(t);
        then(self)?;
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
        Ok(())
    }

    /// Returns `code` from the kernel when `cond` (an i8) is true.
    pub fn fail_if(&mut self, cond: Value, code: crate::KernelFault) {
        let cont = self.b.create_block();
        let c = self.b.ins().iconst(types::I32, code as i64);
        self.b.ins().brif(cond, self.err, &[c.into()], cont, &[]);
        self.b.switch_to_block(cont);
    }

    /// The address of a new `bytes`-sized stack slot aligned to `1 << align_shift`.
    pub fn stack_buf(&mut self, bytes: u32, align_shift: u8) -> Value {
        use cranelift_codegen::ir::{StackSlotData, StackSlotKind};
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, bytes, align_shift));
        self.b.ins().stack_addr(types::I64, slot, 0)
    }

    /// Calls host function `index` (an id from [`crate::host::id`] or the tile lookups there),
    /// `fn(args) -> ret`, through a named import: the code holds a relocation, never an address.
    pub fn call_host(&mut self, index: usize, params: &[Type], ret: Option<Type>, args: &[Value]) -> Option<Value> {
        use cranelift_codegen::ir::{ExtFuncData, ExternalName, UserExternalName};
        let fref = match self.host_refs.get(&index) {
            Some(r) => *r,
            None => {
                let mut sig = Signature::new(self.cc);
                sig.params.extend(params.iter().map(|t| AbiParam::new(*t)));
                if let Some(r) = ret {
                    sig.returns.push(AbiParam::new(r));
                }
                let sref = self.b.import_signature(sig);
                let name =
                    self.b.func.declare_imported_user_function(UserExternalName::new(HOST_NAMESPACE, index as u32));
                let r = self.b.import_function(ExtFuncData {
                    name: ExternalName::user(name),
                    signature: sref,
                    colocated: false,
                    patchable: false,
                });
                self.host_refs.insert(index, r);
                r
            }
        };
        let call = self.b.ins().call(fref, args);
        ret.map(|_| self.b.inst_results(call)[0])
    }

    /// Applies a host `f32 -> f32` function to each lane of an f32x4.
    pub fn map_lanes1(&mut self, name: &str, x: Value) -> Value {
        let f = crate::host::id(name);
        let mut out = x;
        for lane in 0..4u8 {
            let e = self.b.ins().extractlane(x, lane);
            let r = self.call_host(f, &[types::F32], Some(types::F32), &[e]).expect("returns");
            out = self.b.ins().insertlane(out, r, lane);
        }
        out
    }

    /// Applies a host `(f32, f32) -> f32` function to each lane.
    pub fn map_lanes2(&mut self, name: &str, x: Value, y: Value) -> Value {
        let f = crate::host::id(name);
        let mut out = x;
        for lane in 0..4u8 {
            let a = self.b.ins().extractlane(x, lane);
            let c = self.b.ins().extractlane(y, lane);
            let r = self.call_host(f, &[types::F32, types::F32], Some(types::F32), &[a, c]).expect("returns");
            out = self.b.ins().insertlane(out, r, lane);
        }
        out
    }

    /// Reinterprets a vector's bits as another vector type.
    pub fn vcast(&mut self, to: Type, x: Value) -> Value {
        self.b.ins().bitcast(to, MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little), x)
    }

    /// `mask ? a : b` lane-wise, for a float-compare mask.
    pub fn vselect(&mut self, mask: Value, a: Value, b: Value) -> Value {
        let m = self.vcast(F4, mask);
        self.b.ins().bitselect(m, a, b)
    }

    pub fn vfcmp(&mut self, cc: FloatCC, a: Value, b: Value) -> Value {
        self.b.ins().fcmp(cc, a, b)
    }
}

/// The storage type of a dtype's elements in buffers (sub-byte types have none).
pub fn storage_type(d: DType) -> Option<Type> {
    Some(match d {
        DType::F32 => types::F32,
        DType::F16 | DType::BF16 | DType::I16 => types::I16,
        DType::I64 => types::I64,
        DType::I32 => types::I32,
        DType::I8 | DType::U8 | DType::Bool => types::I8,
        DType::I4 | DType::U4 | DType::Ternary | DType::Binary => return None,
    })
}

/// Bytes per element of a byte-addressable dtype.
pub fn elem_bytes(d: DType) -> Option<i64> {
    storage_type(d).map(|t| t.bytes() as i64)
}

/// Which output axes an operand moves along when broadcast (right-aligned) against `out`:
/// an axis the operand lacks or holds as a static 1 does not move; an equal dim moves. Any
/// other pair (two different symbols, say) is decided only at run time: unsupported.
pub fn broadcast_moves(od: &[Dim], out: &[Dim]) -> Result<Vec<bool>, CpuError> {
    let r = out.len();
    let pad = r
        .checked_sub(od.len())
        .ok_or_else(|| CpuError::Unsupported(format!("an operand of rank {} broadcast to rank {r}", od.len())))?;
    (0..r)
        .map(|j| match j.checked_sub(pad).map(|i| &od[i]) {
            None => Ok(false),
            Some(Dim::Static(1)) if out[j] != Dim::Static(1) => Ok(false),
            Some(x) if *x == out[j] => Ok(true),
            Some(x) => {
                Err(CpuError::Unsupported(format!("dim {x} broadcast against {} is decided only at run time", out[j])))
            }
        })
        .collect()
}

/// Byte strides of a row-major operand broadcast against `out`: per output axis, the stride
/// when the operand moves along it, `None` when it is broadcast.
pub fn broadcast_strides(fx: &mut Fx, od: &[Dim], out: &[Dim], elem: i64) -> Result<Vec<Option<Value>>, CpuError> {
    let moves = broadcast_moves(od, out)?;
    let mut acc = fx.iconst(elem);
    let mut st = vec![None; out.len()];
    for j in (0..out.len()).rev() {
        if moves[j] {
            st[j] = Some(acc);
            let d = fx.dim(&out[j])?;
            acc = fx.b.ins().imul(acc, d);
        }
    }
    Ok(st)
}
