//! A small structured-code builder over `rspirv`'s: one GLCompute entry point `main` with `n`
//! storage buffers of f32 (descriptor set 0, bindings 0..n), a push-constant block of u32 words,
//! optional workgroup-shared f32 memory, and helpers for the arithmetic, loops and branches the
//! kernels use. Loop counters live in Function variables (no phis), which `spirv-val` accepts
//! and every driver promotes to registers.

use rspirv::dr::{Builder, Instruction, Operand};
use rspirv::spirv::{
    self, AddressingModel, BuiltIn, Capability, Decoration, ExecutionMode, ExecutionModel, FunctionControl,
    LoopControl, MemoryModel, SelectionControl, StorageClass, Word,
};

/// GLSL.std.450 extended instructions the kernels use.
#[derive(Clone, Copy)]
#[repr(u32)]
pub(crate) enum Glsl {
    Floor = 8,
    Ceil = 9,
    FAbs = 4,
    Sin = 13,
    Cos = 14,
    Pow = 26,
    Exp = 27,
    Log = 28,
    Sqrt = 31,
    InverseSqrt = 32,
    FMin = 37,
    FMax = 40,
    Fma = 50,
    RoundEven = 2,
}

/// `pub fn name(&mut self, a, b) -> Word`: rspirv's `op` with result type `self.ty`.
macro_rules! binary_ops {
    ($($name:ident = $op:ident -> $ty:ident),* $(,)?) => {
        $(
            pub fn $name(&mut self, a: Word, b: Word) -> Word {
                self.b.$op(self.$ty, None, a, b).expect(stringify!($op))
            }
        )*
    };
}

pub(crate) struct Sb {
    pub b: Builder,
    glsl: Word,
    pub f32: Word,
    pub u32: Word,
    pub bool: Word,
    ptr_f32: Word,
    ptr_u32_sb: Word,
    ptr_u32_pc: Word,
    ptr_u32_fn: Word,
    ptr_f32_fn: Word,
    ptr_f32_shared: Word,
    bufs: Vec<Word>,
    push: Word,
    shared: Option<Word>,
    gid: Word,
    lid: Word,
    wid: Word,
    uvec3: Word,
    /// SubgroupId, SubgroupLocalInvocationId, NumSubgroups (declared when asked for).
    sg: Option<[Word; 3]>,
}

impl Sb {
    /// Starts `main` with `buffers` f32 storage buffers, `push_words` push-constant words, the
    /// workgroup size `local` and `shared_floats` floats of workgroup memory (0: none).
    pub fn new(buffers: usize, push_words: u32, local: [u32; 3], shared_floats: u32) -> Sb {
        Sb::typed(&vec![false; buffers], push_words, local, shared_floats)
    }

    /// As [`Sb::new`], with buffer `i` an array of u32 words where `words[i]` (packed
    /// integers, indices), else of f32.
    pub fn typed(words: &[bool], push_words: u32, local: [u32; 3], shared_floats: u32) -> Sb {
        Sb::build(words, push_words, local, shared_floats, false)
    }

    /// As [`Sb::typed`], with subgroup arithmetic (`GroupNonUniformArithmetic`) and the
    /// subgroup builtins declared when `subgroups`.
    pub fn build(words: &[bool], push_words: u32, local: [u32; 3], shared_floats: u32, subgroups: bool) -> Sb {
        let mut b = Builder::new();
        b.set_version(1, 3);
        b.capability(Capability::Shader);
        b.memory_model(AddressingModel::Logical, MemoryModel::GLSL450);
        let glsl = b.ext_inst_import("GLSL.std.450");
        let void = b.type_void();
        let f32 = b.type_float(32, None);
        let u32 = b.type_int(32, 0);
        let bool = b.type_bool();
        let uvec3 = b.type_vector(u32, 3);
        // Storage buffers: struct { float data[]; } (or uint), one variable per binding.
        let block = |b: &mut Builder, elem: Word| {
            let rta = b.type_runtime_array(elem);
            b.decorate(rta, Decoration::ArrayStride, [Operand::LiteralBit32(4)]);
            let st = b.type_struct([rta]);
            b.decorate(st, Decoration::Block, []);
            b.member_decorate(st, 0, Decoration::Offset, [Operand::LiteralBit32(0)]);
            b.type_pointer(None, StorageClass::StorageBuffer, st)
        };
        let ptr_st_f = block(&mut b, f32);
        let ptr_st_u = words.iter().any(|&w| w).then(|| block(&mut b, u32));
        let ptr_f32 = b.type_pointer(None, StorageClass::StorageBuffer, f32);
        let ptr_u32_sb = b.type_pointer(None, StorageClass::StorageBuffer, u32);
        let bufs: Vec<Word> = words
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let ty = if w { ptr_st_u.expect("made when any buffer holds words") } else { ptr_st_f };
                let v = b.variable(ty, None, StorageClass::StorageBuffer, None);
                b.decorate(v, Decoration::DescriptorSet, [Operand::LiteralBit32(0)]);
                b.decorate(v, Decoration::Binding, [Operand::LiteralBit32(i as u32)]);
                v
            })
            .collect();
        // Push constants: struct { uint p[push_words]; }.
        let n = b.constant_bit32(u32, push_words.max(1));
        let arr = b.type_array(u32, n);
        b.decorate(arr, Decoration::ArrayStride, [Operand::LiteralBit32(4)]);
        let pst = b.type_struct([arr]);
        b.decorate(pst, Decoration::Block, []);
        b.member_decorate(pst, 0, Decoration::Offset, [Operand::LiteralBit32(0)]);
        let ptr_pst = b.type_pointer(None, StorageClass::PushConstant, pst);
        let push = b.variable(ptr_pst, None, StorageClass::PushConstant, None);
        let ptr_u32_pc = b.type_pointer(None, StorageClass::PushConstant, u32);
        let ptr_u32_fn = b.type_pointer(None, StorageClass::Function, u32);
        let ptr_f32_fn = b.type_pointer(None, StorageClass::Function, f32);
        let ptr_f32_shared = b.type_pointer(None, StorageClass::Workgroup, f32);
        let shared = (shared_floats > 0).then(|| {
            let n = b.constant_bit32(u32, shared_floats);
            let arr = b.type_array(f32, n);
            let p = b.type_pointer(None, StorageClass::Workgroup, arr);
            b.variable(p, None, StorageClass::Workgroup, None)
        });
        let ptr_in = b.type_pointer(None, StorageClass::Input, uvec3);
        let builtin = |b: &mut Builder, which: BuiltIn| {
            let v = b.variable(ptr_in, None, StorageClass::Input, None);
            b.decorate(v, Decoration::BuiltIn, [Operand::BuiltIn(which)]);
            v
        };
        let gid = builtin(&mut b, BuiltIn::GlobalInvocationId);
        let lid = builtin(&mut b, BuiltIn::LocalInvocationId);
        let wid = builtin(&mut b, BuiltIn::WorkgroupId);
        let sg = subgroups.then(|| {
            b.capability(Capability::GroupNonUniform);
            b.capability(Capability::GroupNonUniformArithmetic);
            let p = b.type_pointer(None, StorageClass::Input, u32);
            [BuiltIn::SubgroupId, BuiltIn::SubgroupLocalInvocationId, BuiltIn::NumSubgroups].map(|which| {
                let v = b.variable(p, None, StorageClass::Input, None);
                b.decorate(v, Decoration::BuiltIn, [Operand::BuiltIn(which)]);
                v
            })
        });
        let fty = b.type_function(void, []);
        let func = b.begin_function(void, None, FunctionControl::NONE, fty).expect("function");
        let mut interface = vec![gid, lid, wid];
        interface.extend(sg.iter().flatten());
        b.entry_point(ExecutionModel::GLCompute, func, "main", interface);
        b.execution_mode(func, ExecutionMode::LocalSize, local);
        b.begin_block(None).expect("entry block");
        Sb {
            b,
            glsl,
            f32,
            u32,
            bool,
            ptr_f32,
            ptr_u32_sb,
            ptr_u32_pc,
            ptr_u32_fn,
            ptr_f32_fn,
            ptr_f32_shared,
            bufs,
            push,
            shared,
            gid,
            lid,
            wid,
            uvec3,
            sg,
        }
    }

    /// (SubgroupId, SubgroupLocalInvocationId, NumSubgroups); the shader must have been built
    /// with subgroups.
    pub fn subgroup_ids(&mut self) -> [Word; 3] {
        let vars = self.sg.expect("built with subgroups");
        vars.map(|v| self.b.load(self.u32, None, v, None, []).expect("load"))
    }

    /// The subgroup-wide sum (or max) of `v`, every invocation getting it.
    pub fn subgroup_reduce(&mut self, v: Word, max: bool) -> Word {
        let scope = self.cu(spirv::Scope::Subgroup as u32);
        let op = spirv::GroupOperation::Reduce;
        if max {
            self.b.group_non_uniform_f_max(self.f32, None, scope, op, v, None).expect("subgroup max")
        } else {
            self.b.group_non_uniform_f_add(self.f32, None, scope, op, v, None).expect("subgroup add")
        }
    }

    /// Ends `main` and returns the module's words.
    pub fn finish(mut self) -> rspirv::dr::Module {
        self.b.ret().expect("ret");
        self.b.end_function().expect("end");
        self.b.module()
    }

    pub fn cu(&mut self, v: u32) -> Word {
        self.b.constant_bit32(self.u32, v)
    }

    pub fn cf(&mut self, v: f32) -> Word {
        self.b.constant_bit32(self.f32, v.to_bits())
    }

    /// Push-constant word `i`.
    pub fn push(&mut self, i: u32) -> Word {
        let zero = self.cu(0);
        let idx = self.cu(i);
        let p = self.b.access_chain(self.ptr_u32_pc, None, self.push, [zero, idx]).expect("chain");
        self.b.load(self.u32, None, p, None, []).expect("load")
    }

    fn builtin(&mut self, var: Word, c: u32) -> Word {
        let v = self.b.load(self.uvec3, None, var, None, []).expect("load");
        self.b.composite_extract(self.u32, None, v, [c]).expect("extract")
    }

    pub fn global_id(&mut self, c: u32) -> Word {
        self.builtin(self.gid, c)
    }

    pub fn local_id(&mut self, c: u32) -> Word {
        self.builtin(self.lid, c)
    }

    pub fn group_id(&mut self, c: u32) -> Word {
        self.builtin(self.wid, c)
    }

    fn elem_ptr(&mut self, buf: usize, idx: Word) -> Word {
        let zero = self.cu(0);
        self.b.access_chain(self.ptr_f32, None, self.bufs[buf], [zero, idx]).expect("chain")
    }

    pub fn load(&mut self, buf: usize, idx: Word) -> Word {
        let p = self.elem_ptr(buf, idx);
        self.b.load(self.f32, None, p, None, []).expect("load")
    }

    /// Word `idx` of a u32 buffer.
    pub fn load_u(&mut self, buf: usize, idx: Word) -> Word {
        let zero = self.cu(0);
        let p = self.b.access_chain(self.ptr_u32_sb, None, self.bufs[buf], [zero, idx]).expect("chain");
        self.b.load(self.u32, None, p, None, []).expect("load")
    }

    /// Stores word `v` at `idx` of a u32 buffer.
    pub fn store_u(&mut self, buf: usize, idx: Word, v: Word) {
        let zero = self.cu(0);
        let p = self.b.access_chain(self.ptr_u32_sb, None, self.bufs[buf], [zero, idx]).expect("chain");
        self.b.store(p, v, None, []).expect("store")
    }

    pub fn store(&mut self, buf: usize, idx: Word, v: Word) {
        let p = self.elem_ptr(buf, idx);
        self.b.store(p, v, None, []).expect("store")
    }

    fn shared_ptr(&mut self, idx: Word) -> Word {
        let arr = self.shared.expect("the kernel declared shared memory");
        self.b.access_chain(self.ptr_f32_shared, None, arr, [idx]).expect("chain")
    }

    pub fn load_shared(&mut self, idx: Word) -> Word {
        let p = self.shared_ptr(idx);
        self.b.load(self.f32, None, p, None, []).expect("load")
    }

    pub fn store_shared(&mut self, idx: Word, v: Word) {
        let p = self.shared_ptr(idx);
        self.b.store(p, v, None, []).expect("store")
    }

    /// `barrier()`: workgroup execution and workgroup-memory barrier.
    pub fn barrier(&mut self) {
        let wg = self.cu(spirv::Scope::Workgroup as u32);
        let sem = self.cu((spirv::MemorySemantics::ACQUIRE_RELEASE | spirv::MemorySemantics::WORKGROUP_MEMORY).bits());
        self.b.control_barrier(wg, wg, sem).expect("barrier")
    }

    /// A Function-storage variable (declared at the top of `main`, as SPIR-V requires),
    /// holding `init`.
    pub fn var(&mut self, float: bool, init: Word) -> Word {
        let id = self.b.id();
        let ty = if float { self.ptr_f32_fn } else { self.ptr_u32_fn };
        let inst = Instruction::new(
            spirv::Op::Variable,
            Some(ty),
            Some(id),
            vec![Operand::StorageClass(StorageClass::Function)],
        );
        self.b.module_mut().functions[0].blocks[0].instructions.insert(0, inst);
        self.b.store(id, init, None, []).expect("store");
        id
    }

    pub fn get(&mut self, var: Word, float: bool) -> Word {
        let ty = if float { self.f32 } else { self.u32 };
        self.b.load(ty, None, var, None, []).expect("load")
    }

    pub fn set(&mut self, var: Word, v: Word) {
        self.b.store(var, v, None, []).expect("store")
    }

    binary_ops! {
        iadd = i_add -> u32,
        imul = i_mul -> u32,
        udiv = u_div -> u32,
        isub = i_sub -> u32,
        shr = shift_right_logical -> u32,
        shl = shift_left_logical -> u32,
        band = bitwise_and -> u32,
        bor = bitwise_or -> u32,
        umod = u_mod -> u32,
        ult = u_less_than -> bool,
        fadd = f_add -> f32,
        fsub = f_sub -> f32,
        fmul = f_mul -> f32,
        fdiv = f_div -> f32,
        flt = f_ord_less_than -> bool,
        fgt = f_ord_greater_than -> bool,
    }

    pub fn fneg(&mut self, a: Word) -> Word {
        self.b.f_negate(self.f32, None, a).expect("fneg")
    }

    pub fn select(&mut self, c: Word, a: Word, b: Word, float: bool) -> Word {
        let ty = if float { self.f32 } else { self.u32 };
        self.b.select(ty, None, c, a, b).expect("select")
    }

    pub fn is_nan(&mut self, a: Word) -> Word {
        self.b.is_nan(self.bool, None, a).expect("isnan")
    }

    pub fn glsl(&mut self, f: Glsl, args: &[Word]) -> Word {
        let ops = args.iter().map(|&a| Operand::IdRef(a));
        self.b.ext_inst(self.f32, None, self.glsl, f as u32, ops).expect("ext inst")
    }

    pub fn u2f(&mut self, a: Word) -> Word {
        self.b.convert_u_to_f(self.f32, None, a).expect("u2f")
    }

    /// The u32 word `a` read as a signed integer, converted to f32.
    pub fn s2f(&mut self, a: Word) -> Word {
        self.b.convert_s_to_f(self.f32, None, a).expect("s2f")
    }

    /// Bits of an f32 push constant or word.
    pub fn bits_to_f32(&mut self, a: Word) -> Word {
        self.b.bitcast(self.f32, None, a).expect("bitcast")
    }

    /// `if cond { then }`.
    pub fn if_then(&mut self, cond: Word, then: impl FnOnce(&mut Sb)) {
        let t = self.b.id();
        let merge = self.b.id();
        self.b.selection_merge(merge, SelectionControl::NONE).expect("merge");
        self.b.branch_conditional(cond, t, merge, []).expect("branch");
        self.b.begin_block(Some(t)).expect("block");
        then(self);
        self.b.branch(merge).expect("branch");
        self.b.begin_block(Some(merge)).expect("block");
    }

    /// `for (i = start; i < end; i += step) body(i)`.
    pub fn for_range(&mut self, start: Word, end: Word, step: Word, body: impl FnOnce(&mut Sb, Word)) {
        let i = self.var(false, start);
        let header = self.b.id();
        let cond_b = self.b.id();
        let body_b = self.b.id();
        let cont = self.b.id();
        let merge = self.b.id();
        self.b.branch(header).expect("branch");
        self.b.begin_block(Some(header)).expect("block");
        self.b.loop_merge(merge, cont, LoopControl::NONE, []).expect("loop merge");
        self.b.branch(cond_b).expect("branch");
        self.b.begin_block(Some(cond_b)).expect("block");
        let iv = self.get(i, false);
        let c = self.ult(iv, end);
        self.b.branch_conditional(c, body_b, merge, []).expect("branch");
        self.b.begin_block(Some(body_b)).expect("block");
        let iv = self.get(i, false);
        body(self, iv);
        self.b.branch(cont).expect("branch");
        self.b.begin_block(Some(cont)).expect("block");
        let iv = self.get(i, false);
        let next = self.iadd(iv, step);
        self.set(i, next);
        self.b.branch(header).expect("branch");
        self.b.begin_block(Some(merge)).expect("block");
    }
}
