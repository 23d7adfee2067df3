//! Compiling a graph: lowering every node to a kernel, then JIT-compiling them for this CPU
//! ([`compile`]) or compiling them into a relocatable object for a target triple
//! ([`compile_image`], an ahead-of-time artifact's CPU code).

use std::sync::Arc;
use std::time::Instant;

use cranelift_module::Module;
use tessera_ir::{Blob, Dim, Graph, Node};

use crate::image::{ImageMeta, ProgramImage, StepImage};
use crate::jit::Jit;
use crate::lower::{self, BufRef, Build, Lowered};
use crate::program::{list, symbols, Code, ParamSpec, Parts, Program, ProgramStats, Step};
use crate::{CpuError, CpuOptions};

/// The graph as the CPU target lowers it (see `legalize.rs`), or None when it is unchanged.
pub(crate) fn prepare(g: &Graph) -> Option<Graph> {
    let legal = crate::legalize::legalize(g);
    let g1 = legal.as_ref().unwrap_or(g);
    crate::legalize::fuse_qmatmul_chains(g1).or(legal)
}

pub(crate) fn compile(g: &Graph, opts: &CpuOptions) -> Result<Program, CpuError> {
    let t0 = Instant::now();
    // Half-precision ops as f32 kernels between casts, regions put back or formed (legalize.rs).
    let prepared = prepare(g);
    let g = prepared.as_ref().unwrap_or(g);
    let syms = symbols(g)?;
    let mut jit = Jit::new(opts.listing)?;
    let mut build = Build { ukernels: opts.ukernels, ..Default::default() };
    let pending = define_all(g, &syms, &mut jit, &mut build)?;
    let owned = build.owned;
    jit.compile_pending()?;
    let code_bytes = jit.code_bytes;
    let isa = jit.isa_name.clone();
    let clif = std::mem::take(&mut jit.clif);
    let asm = std::mem::take(&mut jit.asm);
    let (module, fns) = jit.finish()?;
    let steps: Vec<Step> = pending
        .into_iter()
        .map(|(node, op, k, lw)| Step {
            node,
            op,
            kernel: fns[k],
            bufs: lw.bufs,
            par: lw.par,
            params: lw.params,
            scratch: lw.scratch,
            serial: lw.serial,
            name: lw.name,
        })
        .collect();
    // The weights now live packed in `owned`; the model file's pages that were read to pack
    // them leave the resident set (constants the kernels read directly fault back in on use),
    // and the program's copy of the graph keeps only the constants a kernel reads.
    for c in g.constants() {
        c.data.release_resident_pages();
    }
    let stats = ProgramStats {
        kernels: steps.len(),
        code_bytes,
        packed_weight_bytes: owned.iter().map(|o| o.len()).sum(),
        compile_ms: t0.elapsed().as_secs_f64() * 1e3,
        isa,
    };
    let parts = Parts {
        graph: g.clone(),
        owned: owned.into_iter().map(Blob::from_vec).collect(),
        syms,
        threads: opts.threads,
        min_split_bytes: opts.min_split_bytes,
        stats,
    };
    let mut p = Program::assemble(Code(Box::new(module)), steps, parts)?;
    p.clif = clif;
    p.asm = asm;
    Ok(p)
}

/// Where [`compile_image`] compiles for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectTarget {
    /// This machine, with every ISA feature it has (as the JIT).
    Host,
    /// A target triple (`aarch64-linux-android`, `x86_64-unknown-linux-gnu`) at its baseline
    /// features; the `std::arch` tiles are left out.
    Triple(String),
}

/// Compiles a graph's kernels into a relocatable object (ELF) for `target`, with what a loader
/// needs to run them: the steps, the packed weights and the graph. Nothing is made executable.
pub fn compile_image(g: &Graph, opts: &CpuOptions, target: &ObjectTarget) -> Result<ProgramImage, CpuError> {
    let t0 = Instant::now();
    let prepared = prepare(g);
    let g = prepared.as_ref().unwrap_or(g);
    let syms = symbols(g)?;
    let (isa, ukernels) = match target {
        ObjectTarget::Host => (crate::jit::host_isa()?, opts.ukernels),
        ObjectTarget::Triple(t) => (crate::jit::triple_isa(t)?, crate::Ukernels::Off),
    };
    let triple = isa.triple().to_string();
    let features = crate::jit::enabled_features(&*isa);
    let builder =
        cranelift_object::ObjectBuilder::new(isa, "tessera_kernels", cranelift_module::default_libcall_names())
            .map_err(|e| CpuError::Codegen(format!("object module: {e}")))?;
    let mut jit = Jit::with_module(cranelift_object::ObjectModule::new(builder), crate::Listing::default());
    jit.export = true;
    let mut build = Build { ukernels, ..Default::default() };
    let pending = define_all(g, &syms, &mut jit, &mut build)?;
    jit.compile_pending()?;
    let code_bytes = jit.code_bytes;
    let symbols_of: Vec<String> = jit
        .funcs
        .iter()
        .map(|(id, _)| jit.module.declarations().get_function_decl(*id).linkage_name(*id).into_owned())
        .collect();
    let object = jit.module.finish().emit().map_err(|e| CpuError::Codegen(format!("writing the object file: {e}")))?;
    // The graph keeps only the constants a kernel reads directly: the rest are packed.
    let mut graph = g.clone();
    crate::program::release_unread(&mut graph, pending.iter().flat_map(|p| &p.3.bufs));
    let steps = pending
        .into_iter()
        .map(|(node, _, k, lw)| {
            StepImage::new(node, symbols_of[k].clone(), &lw.bufs, &lw.par, lw.params, lw.scratch, lw.serial, lw.name)
        })
        .collect();
    let mut distinct = symbols_of.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let meta = ImageMeta {
        triple,
        features,
        steps,
        syms: syms.iter().map(|s| s.to_string()).collect(),
        min_split_bytes: opts.min_split_bytes,
        kernels: distinct.len(),
        code_bytes,
        compile_ms: t0.elapsed().as_secs_f64() * 1e3,
    };
    Ok(ProgramImage { meta, object, owned: build.owned, graph })
}

/// Lowers and defines every node's kernel; all unsupported nodes are reported together.
fn define_all<M: Module>(
    g: &Graph,
    syms: &[Arc<str>],
    jit: &mut Jit<M>,
    owned: &mut Build,
) -> Result<Vec<(Node, &'static str, usize, Meta)>, CpuError> {
    let mut pending: Vec<(Node, &'static str, usize, Meta)> = Vec::new();
    let mut unsupported: Vec<String> = Vec::new();
    for (n, nd) in g.nodes() {
        match lower::lower(g, n, owned) {
            Ok(lw) => {
                let Lowered { name, bufs, par, params, scratch, serial, emit } = lw;
                match jit.define(&name, syms, emit) {
                    Ok(k) => pending.push((n, nd.op.name(), k, Meta { name, bufs, par, params, scratch, serial })),
                    Err(e) if e.is_unsupported() => unsupported.push(format!("{n} ({}): {}", nd.op.name(), inner(e))),
                    Err(e) => return Err(CpuError::Codegen(format!("{n} ({}): {e}", nd.op.name()))),
                }
            }
            Err(e) if e.is_unsupported() => unsupported.push(format!("{n} ({}): {}", nd.op.name(), inner(e))),
            Err(e) => return Err(e),
        }
    }
    if !unsupported.is_empty() {
        return Err(CpuError::UnsupportedNodes { count: unsupported.len(), list: list(&unsupported) });
    }
    Ok(pending)
}

pub(crate) fn listing(
    g: &Graph,
    isa_flags: &[(String, String)],
    ukernels: crate::Ukernels,
) -> Result<Vec<(String, String, String)>, CpuError> {
    let prepared = prepare(g);
    let g = prepared.as_ref().unwrap_or(g);
    let syms = symbols(g)?;
    let mut jit = Jit::with_isa(crate::jit::isa_with(isa_flags)?, crate::Listing { clif: true, asm: true })?;
    let mut build = Build { ukernels, ..Default::default() };
    define_all(g, &syms, &mut jit, &mut build)?;
    // Not finalized: code built for flags the host may lack is never made callable.
    Ok(jit.clif.iter().zip(&jit.asm).map(|((k, c), (_, a))| (k.clone(), c.clone(), a.clone())).collect())
}

struct Meta {
    name: String,
    bufs: Vec<BufRef>,
    par: Option<(Vec<Dim>, u64)>,
    params: Option<ParamSpec>,
    scratch: Option<ParamSpec>,
    serial: bool,
}

fn inner(e: CpuError) -> String {
    match e {
        CpuError::Unsupported(m) => m,
        other => other.to_string(),
    }
}
