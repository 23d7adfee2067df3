//! The Cranelift module a program's kernels are compiled into: a JIT module with the host's
//! ISA flags (run now), or an object module for a target triple (an ahead-of-time artifact).

use cranelift_codegen::ir::{types, AbiParam, Signature, UserExternalName, UserFuncName};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, ModuleReloc};

use crate::fx::Fx;
use crate::CpuError;

pub use crate::program::KernelFn;

/// A kernel compiled off the module: its id, code alignment, code bytes and relocations.
type CompiledKernel = (FuncId, u64, Vec<u8>, Vec<ModuleReloc>);

pub(crate) struct Jit<M: Module = JITModule> {
    pub module: M,
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
    /// Kernels get exported symbols (an object file a loader or a linker reads), else local.
    pub export: bool,
    /// Kernels built but not yet compiled (without listings): compiled together, in parallel,
    /// by [`Jit::compile_pending`].
    pending: Vec<(FuncId, String, cranelift_codegen::ir::Function)>,
    /// Pending kernels by the hash of their body (`FunctionStencil`, the part of a function
    /// Cranelift's own compile cache keys on): identical kernels (the same op at the same
    /// shapes in every layer of a model), confirmed equal by `==`, share one compiled function.
    seen: std::collections::HashMap<u64, Vec<usize>>,
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
    for (k, v) in base_flags() {
        set(&mut flags, k, v)?;
    }
    let mut isa_builder = cranelift_native::builder().map_err(|e| CpuError::Isa(e.to_string()))?;
    for (k, v) in extra {
        isa_builder.set(k, v).map_err(|e| CpuError::Isa(format!("ISA flag {k}={v}: {e}")))?;
    }
    isa_builder.finish(settings::Flags::new(flags)).map_err(|e| CpuError::Isa(e.to_string()))
}

/// The ISA for a target triple (`aarch64-linux-android`, `x86_64-linux`), at the features
/// every CPU of that triple has: x86-64-v2 (SSE4.2, POPCNT: Android's x86-64 ABI) on x86-64,
/// the base architecture (NEON) on AArch64.
pub(crate) fn triple_isa(triple: &str) -> Result<OwnedTargetIsa, CpuError> {
    let full = match triple {
        "x86_64-linux" => "x86_64-unknown-linux-gnu",
        "aarch64-linux" => "aarch64-unknown-linux-gnu",
        other => other,
    };
    let mut builder = cranelift_codegen::isa::lookup_by_name(full).map_err(|e| {
        CpuError::Isa(format!("target triple {triple:?}: {e} (try aarch64-linux-android or x86_64-linux)"))
    })?;
    if full.starts_with("x86_64") {
        for f in ["has_sse3", "has_ssse3", "has_sse41", "has_sse42", "has_popcnt"] {
            builder.enable(f).map_err(|e| CpuError::Isa(format!("{f}: {e}")))?;
        }
    }
    let mut flags = settings::builder();
    for (k, v) in base_flags() {
        flags.set(k, v).map_err(|e| CpuError::Isa(format!("setting {k}={v}: {e}")))?;
    }
    builder.finish(settings::Flags::new(flags)).map_err(|e| CpuError::Isa(e.to_string()))
}

/// The ISA feature flags an ISA has on (`has_avx2`, ...): what a CPU must have to run its code.
pub(crate) fn enabled_features(isa: &dyn cranelift_codegen::isa::TargetIsa) -> Vec<String> {
    isa.isa_flags()
        .iter()
        .filter(|v| v.name.starts_with("has_") && v.as_bool() == Some(true))
        .map(|v| v.name.to_string())
        .collect()
}

/// The functions a function calls, in the order its call references number them.
fn imports(f: &cranelift_codegen::ir::Function) -> Vec<UserExternalName> {
    f.params.user_named_funcs().values().cloned().collect()
}

fn base_flags() -> [(&'static str, &'static str); 4] {
    [
        ("opt_level", "speed"),
        ("use_colocated_libcalls", "false"),
        ("is_pic", "false"),
        // Cranelift's IR verifier is a large part of compile time; debug builds (and so the
        // tests) keep it, release builds skip it.
        ("enable_verifier", if cfg!(debug_assertions) { "true" } else { "false" }),
    ]
}

impl Jit {
    pub fn new(listing: Listing) -> Result<Jit, CpuError> {
        Jit::with_isa(host_isa()?, listing)
    }

    pub fn with_isa(isa: OwnedTargetIsa, listing: Listing) -> Result<Jit, CpuError> {
        let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        // Host functions by name (crate::host); nothing else is looked up in the process.
        builder.symbol_lookup_fn(Box::new(|name| crate::host::resolve(name).map(|a| a as *const u8)));
        Ok(Jit::with_module(JITModule::new(builder), listing))
    }

    /// Finalizes the code and returns one function pointer per defined kernel.
    pub fn finish(mut self) -> Result<(JITModule, Vec<KernelFn>), CpuError> {
        self.compile_pending()?;
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

impl<M: Module> Jit<M> {
    pub fn with_module(module: M, listing: Listing) -> Jit<M> {
        let isa = module.isa();
        let isa_name = format!("{} ({})", isa.triple(), isa.name());
        Jit {
            ctx: module.make_context(),
            module,
            fctx: FunctionBuilderContext::new(),
            isa_name,
            funcs: Vec::new(),
            listing,
            clif: Vec::new(),
            asm: Vec::new(),
            code_bytes: 0,
            export: false,
            pending: Vec::new(),
            seen: std::collections::HashMap::new(),
        }
    }

    fn linkage(&self) -> Linkage {
        if self.export {
            Linkage::Export
        } else {
            Linkage::Local
        }
    }

    /// Declares the host functions the function being built calls (placeholder names from
    /// [`Fx::call_host`]) as imports of the module, and renames the calls to them.
    fn import_host_calls(&mut self) -> Result<(), CpuError> {
        let func = &mut self.ctx.func;
        let wanted: Vec<_> = func
            .params
            .user_named_funcs()
            .iter()
            .filter(|(_, n)| n.namespace == crate::fx::HOST_NAMESPACE)
            .map(|(r, n)| (r, n.index as usize))
            .collect();
        for (r, index) in wanted {
            let host = &crate::host::symbols()[index];
            let sig = func
                .dfg
                .ext_funcs
                .values()
                .find(|e| e.name == cranelift_codegen::ir::ExternalName::User(r))
                .map(|e| func.dfg.signatures[e.signature].clone())
                .ok_or_else(|| CpuError::Codegen(format!("host call {} has no signature", host.name)))?;
            let id = self
                .module
                .declare_function(&host.name, Linkage::Import, &sig)
                .map_err(|e| CpuError::Codegen(format!("declaring host function {}: {e}", host.name)))?;
            func.params.reset_user_func_name(r, UserExternalName::new(0, id.as_u32()));
        }
        Ok(())
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
        let cc = self.module.isa().default_call_conv();
        self.ctx.func.signature = sig.clone();
        self.ctx.func.name = UserFuncName::user(0, 0);
        {
            let b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            let mut fx = Fx::new(b, syms, cc);
            if let Err(e) = body(&mut fx) {
                self.module.clear_context(&mut self.ctx);
                return Err(e);
            }
            fx.finish(self.module.isa().frontend_config());
        }
        if let Err(e) = self.import_host_calls() {
            self.module.clear_context(&mut self.ctx);
            return Err(e);
        }
        if !self.listing.clif && !self.listing.asm {
            // Deferred: deduplicated now, compiled with the others in `compile_pending`.
            let key = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                self.ctx.func.stencil.hash(&mut h);
                // The stencil names called functions by reference only: the host functions
                // themselves are in the parameters, and two kernels calling different ones
                // (log and sin, a tile that sets and one that adds) must stay apart.
                imports(&self.ctx.func).hash(&mut h);
                h.finish()
            };
            let same = self.seen.get(&key).and_then(|ids| {
                ids.iter()
                    .map(|&i| &self.pending[i])
                    .find(|p| p.2.stencil == self.ctx.func.stencil && imports(&p.2) == imports(&self.ctx.func))
                    .map(|p| p.0)
            });
            if let Some(id) = same {
                self.module.clear_context(&mut self.ctx);
                self.funcs.push((id, symbol));
                return Ok(index);
            }
            let id = self
                .module
                .declare_function(&symbol, self.linkage(), &sig)
                .map_err(|e| CpuError::Codegen(format!("declaring {symbol}: {e}")))?;
            self.seen.entry(key).or_default().push(self.pending.len());
            let mut func = std::mem::replace(&mut self.ctx.func, cranelift_codegen::ir::Function::new());
            func.name = UserFuncName::user(0, index as u32);
            self.module.clear_context(&mut self.ctx);
            self.pending.push((id, symbol.clone(), func));
            self.funcs.push((id, symbol));
            return Ok(index);
        }
        self.ctx.func.name = UserFuncName::user(0, index as u32);
        let id = self
            .module
            .declare_function(&symbol, self.linkage(), &sig)
            .map_err(|e| CpuError::Codegen(format!("declaring {symbol}: {e}")))?;
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

    /// Compiles the deferred kernels, in parallel (each on its own `Context`), and defines
    /// their machine code in the module.
    pub fn compile_pending(&mut self) -> Result<(), CpuError> {
        use rayon::prelude::*;
        let pending = std::mem::take(&mut self.pending);
        self.seen.clear();
        let isa = self.module.isa();
        let compiled: Vec<Result<CompiledKernel, CpuError>> = pending
            .into_par_iter()
            .map(|(id, symbol, func)| {
                let mut ctx = Context::for_function(func);
                if let Err(e) = ctx.compile(isa, &mut Default::default()) {
                    let mut msg = format!("{symbol}: {:?}", e.inner);
                    msg.truncate(400);
                    return Err(CpuError::Codegen(msg));
                }
                let code = ctx.compiled_code().ok_or_else(|| CpuError::Codegen(format!("{symbol}: no code")))?;
                let relocs =
                    code.buffer.relocs().iter().map(|r| ModuleReloc::from_mach_reloc(r, &ctx.func, id)).collect();
                let align = code.buffer.alignment as u64;
                let bytes = code.code_buffer().to_vec();
                Ok((id, align, bytes, relocs))
            })
            .collect();
        for c in compiled {
            let (id, align, bytes, relocs) = c?;
            self.code_bytes += bytes.len();
            self.module
                .define_function_bytes(id, align, &bytes, &relocs)
                .map_err(|e| CpuError::Codegen(format!("defining compiled code: {e}")))?;
        }
        Ok(())
    }
}
