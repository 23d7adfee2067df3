//! The Cranelift JIT module: one per compiled program, with the host's ISA flags.

use cranelift_codegen::ir::{types, AbiParam, Signature, UserFuncName};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module};

use crate::fx::Fx;
use crate::CpuError;

/// The signature of every kernel: `fn(bufs: *const *mut u8, syms: *const i64, lo: i64, hi: i64) -> i32`.
/// `bufs` holds one pointer per operand and result, `syms` the run-time sizes of the graph's
/// symbolic dims, `[lo, hi)` the part of the kernel's parallel range this call does. The return
/// value is 0, or an error code (see [`crate::KernelFault`]).
pub type KernelFn = unsafe extern "C" fn(*const *mut u8, *const i64, i64, i64) -> i32;

pub(crate) struct Jit {
    pub module: JITModule,
    ctx: Context,
    fctx: FunctionBuilderContext,
    pub isa_name: String,
    pub funcs: Vec<(FuncId, String)>,
    /// What text to keep of each kernel (`--emit clif|asm`).
    pub listing: Listing,
    /// (kernel symbol, Cranelift IR text) when `listing.clif`.
    pub clif: Vec<(String, String)>,
    /// (kernel symbol, machine code listing) when `listing.asm`.
    pub asm: Vec<(String, String)>,
    /// Machine code bytes per kernel.
    pub code_bytes: usize,
}

/// Which listings [`Jit::define`] keeps.
#[derive(Clone, Copy, Debug, Default)]
pub struct Listing {
    pub clif: bool,
    pub asm: bool,
}

pub(crate) fn host_isa() -> Result<OwnedTargetIsa, CpuError> {
    isa_with(&[])
}

/// The host's ISA with extra ISA flags set (`has_avx_vnni=true`, ...). Code built with flags the
/// host lacks is for reading only: [`crate::listing`] never hands it out to run.
pub(crate) fn isa_with(extra: &[(String, String)]) -> Result<OwnedTargetIsa, CpuError> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| {
        f.set(k, v).map_err(|e| CpuError::Isa(format!("setting {k}={v}: {e}")))
    };
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    // Cranelift's IR verifier is a large part of compile time; debug builds (and so the tests)
    // keep it, release builds skip it.
    set(&mut flags, "enable_verifier", if cfg!(debug_assertions) { "true" } else { "false" })?;
    let mut isa_builder = cranelift_native::builder().map_err(|e| CpuError::Isa(e.to_string()))?;
    for (k, v) in extra {
        isa_builder.set(k, v).map_err(|e| CpuError::Isa(format!("ISA flag {k}={v}: {e}")))?;
    }
    isa_builder.finish(settings::Flags::new(flags)).map_err(|e| CpuError::Isa(e.to_string()))
}

impl Jit {
    pub fn new(listing: Listing) -> Result<Jit, CpuError> {
        Jit::with_isa(host_isa()?, listing)
    }

    pub fn with_isa(isa: OwnedTargetIsa, listing: Listing) -> Result<Jit, CpuError> {
        let isa_name = format!("{} ({})", isa.triple(), isa.name());
        let builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        let module = JITModule::new(builder);
        Ok(Jit {
            ctx: module.make_context(),
            module,
            fctx: FunctionBuilderContext::new(),
            isa_name,
            funcs: Vec::new(),
            listing,
            clif: Vec::new(),
            asm: Vec::new(),
            code_bytes: 0,
        })
    }

    pub fn signature(&self) -> Signature {
        let mut sig = Signature::new(self.module.isa().default_call_conv());
        let ptr = types::I64;
        sig.params.extend([
            AbiParam::new(ptr),
            AbiParam::new(ptr),
            AbiParam::new(types::I64),
            AbiParam::new(types::I64),
        ]);
        sig.returns.push(AbiParam::new(types::I32));
        sig
    }

    /// Builds one kernel; `body` emits its code and must end every path with a return.
    pub fn define(
        &mut self,
        name: &str,
        syms: &[std::sync::Arc<str>],
        body: crate::lower::Emit<'_>,
    ) -> Result<usize, CpuError> {
        let sig = self.signature();
        let index = self.funcs.len();
        let symbol = format!("k{index}_{name}");
        let id = self
            .module
            .declare_function(&symbol, Linkage::Local, &sig)
            .map_err(|e| CpuError::Codegen(format!("declaring {symbol}: {e}")))?;
        let cc = self.module.isa().default_call_conv();
        self.ctx.func.signature = sig;
        self.ctx.func.name = UserFuncName::user(0, index as u32);
        {
            let b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            let mut fx = Fx::new(b, syms, cc);
            body(&mut fx)?;
            fx.finish(self.module.isa().frontend_config());
        }
        if self.listing.clif {
            self.clif.push((symbol.clone(), self.ctx.func.display().to_string()));
        }
        self.ctx.set_disasm(self.listing.asm);
        if let Err(e) = self.module.define_function(id, &mut self.ctx) {
            let mut msg = format!("{symbol}: {e:?}");
            msg.truncate(400);
            self.module.clear_context(&mut self.ctx);
            return Err(CpuError::Codegen(msg));
        }
        if let Some(code) = self.ctx.compiled_code() {
            self.code_bytes += code.code_buffer().len();
            if let Some(text) = code.vcode.as_ref().filter(|_| self.listing.asm) {
                self.asm.push((symbol.clone(), text.clone()));
            }
        }
        self.module.clear_context(&mut self.ctx);
        self.funcs.push((id, symbol));
        Ok(index)
    }

    /// Finalizes the code and returns one function pointer per defined kernel.
    pub fn finish(mut self) -> Result<(JITModule, Vec<KernelFn>), CpuError> {
        self.module.finalize_definitions().map_err(|e| CpuError::Codegen(format!("finalizing: {e}")))?;
        let ptrs = self
            .funcs
            .iter()
            .map(|(id, _)| {
                let p = self.module.get_finalized_function(*id);
                // SAFETY: every function was declared with `signature()`, which is KernelFn's ABI.
                unsafe { std::mem::transmute::<*const u8, KernelFn>(p) }
            })
            .collect();
        Ok((self.module, ptrs))
    }
}
