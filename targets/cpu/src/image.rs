//! A compiled program as data, and its loader: what an ahead-of-time artifact holds of the CPU
//! target (the kernels as a relocatable ELF object, the steps, the packed weights, the graph),
//! and [`load`], which checks all of it, maps the code, applies its relocations and makes it
//! executable (never writable and executable at once).
//!
//! This module does not depend on Cranelift: an app that loads artifacts carries no compiler.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tessera_ir::{Blob, Graph, Node, Value};

use crate::program::{symbols, BufRef, Code, DimSpec, KernelFn, ParamSpec, Parts, Program, ProgramStats, Step};

/// What the loader needs besides the object file, the packed weights and the graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// The target triple the code is for (`x86_64-unknown-linux-gnu`, `aarch64-unknown-linux-android`).
    pub triple: String,
    /// Cranelift ISA flags the code was compiled with (`has_avx2`, ...): the CPU must have them.
    pub features: Vec<String>,
    pub steps: Vec<StepImage>,
    /// The graph's symbols, in the order kernels receive their sizes.
    pub syms: Vec<String>,
    pub min_split_bytes: u64,
    /// Distinct kernels in the object (identical kernels share one).
    pub kernels: usize,
    pub code_bytes: usize,
    pub compile_ms: f64,
}

/// One kernel call of the program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepImage {
    /// The graph node (index).
    pub node: u32,
    /// The kernel's symbol in the object.
    pub kernel: String,
    pub bufs: Vec<BufImage>,
    pub par: Option<(Vec<DimSpec>, u64)>,
    pub params: Option<ParamSpec>,
    pub scratch: Option<ParamSpec>,
    pub serial: bool,
    pub name: String,
}

/// A kernel buffer: a graph value (index) or a packed weight (index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BufImage {
    V(u32),
    W(u32),
}

impl StepImage {
    #[cfg(feature = "jit")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        node: Node,
        kernel: String,
        bufs: &[BufRef],
        par: &Option<(Vec<tessera_ir::Dim>, u64)>,
        params: Option<ParamSpec>,
        scratch: Option<ParamSpec>,
        serial: bool,
        name: String,
    ) -> StepImage {
        StepImage {
            node: node.0,
            kernel,
            bufs: bufs
                .iter()
                .map(|b| match b {
                    BufRef::Value(v) => BufImage::V(v.0),
                    BufRef::Owned(i) => BufImage::W(*i as u32),
                })
                .collect(),
            par: par.as_ref().map(|(d, div)| (d.iter().map(DimSpec::of).collect(), *div)),
            params,
            scratch,
            serial,
            name,
        }
    }
}

/// A program compiled into an object file, not loaded.
pub struct ProgramImage {
    pub meta: ImageMeta,
    /// The kernels: a relocatable ELF object (Cranelift's object backend).
    pub object: Vec<u8>,
    /// Packed weights, in the order steps name them.
    pub owned: Vec<Vec<u8>>,
    /// The graph the steps index (as the CPU target prepared it), with the bytes of the
    /// constants kernels read directly (the others, packed into `owned`, keep their summary).
    pub graph: Graph,
}

/// Why an image could not be loaded. Every check runs before any of its code is callable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    #[error("the CPU code is not a valid object file: {0}")]
    Object(String),
    #[error("the CPU code is for {found}, this machine is {host}: compile the model for this machine (tessera compile --triple {host_triple})")]
    Architecture { found: String, host: String, host_triple: String },
    #[error("the CPU code needs CPU features this CPU lacks: {missing} (compile the artifact on or for this CPU: tessera compile --triple x86_64-linux gives a baseline build)")]
    Features { missing: String },
    #[error("the CPU code calls `{name}`, which this runtime does not provide{hint}")]
    MissingHostFunction { name: String, hint: String },
    #[error("the CPU code's relocation at {section}+{offset:#x} ({kind}): {message}")]
    Relocation { section: String, offset: u64, kind: String, message: String },
    #[error("the CPU code does not define kernel `{0}`")]
    MissingKernel(String),
    #[error("step {step} ({kernel}): {message}")]
    Step { step: usize, kernel: String, message: String },
    #[error("the program's graph: {0}")]
    Graph(String),
    #[error("the program's symbols are {found:?}, its graph binds {expected:?}")]
    Symbols { found: Vec<String>, expected: Vec<String> },
    #[error("mapping the CPU code: {0}")]
    Memory(String),
    #[error("this runtime cannot run loaded code on this host: {0}")]
    UnsupportedHost(String),
}

/// The features named in `features` (Cranelift ISA flags) this CPU lacks.
pub fn missing_features(features: &[String]) -> Vec<String> {
    features.iter().filter(|f| !has_feature(f)).cloned().collect()
}

#[cfg(target_arch = "x86_64")]
fn has_feature(flag: &str) -> bool {
    use std::arch::is_x86_feature_detected as has;
    match flag {
        "has_sse3" => has!("sse3"),
        "has_ssse3" => has!("ssse3"),
        "has_cmpxchg16b" => has!("cmpxchg16b"),
        "has_sse41" => has!("sse4.1"),
        "has_sse42" => has!("sse4.2"),
        "has_avx" => has!("avx"),
        "has_avx2" => has!("avx2"),
        "has_fma" => has!("fma"),
        "has_avx_vnni" => has!("avxvnni"),
        "has_avx512bitalg" => has!("avx512bitalg"),
        "has_avx512dq" => has!("avx512dq"),
        "has_avx512vl" => has!("avx512vl"),
        "has_avx512vbmi" => has!("avx512vbmi"),
        "has_avx512f" => has!("avx512f"),
        "has_avx512vnni" => has!("avx512vnni"),
        "has_popcnt" => has!("popcnt"),
        "has_bmi1" => has!("bmi1"),
        "has_bmi2" => has!("bmi2"),
        "has_lzcnt" => has!("lzcnt"),
        // A flag this runtime does not know: assume the CPU lacks it.
        _ => false,
    }
}

#[cfg(target_arch = "aarch64")]
fn has_feature(flag: &str) -> bool {
    use std::arch::is_aarch64_feature_detected as has;
    match flag {
        "has_lse" => has!("lse"),
        "has_pauth" => has!("paca"),
        "has_fp16" => has!("fp16"),
        "has_dotprod" => has!("dotprod"),
        "has_i8mm" => has!("i8mm"),
        _ => false,
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn has_feature(_flag: &str) -> bool {
    false
}

/// The architecture name `object` gives this host's code.
fn host_architecture() -> object::Architecture {
    if cfg!(target_arch = "x86_64") {
        object::Architecture::X86_64
    } else if cfg!(target_arch = "aarch64") {
        object::Architecture::Aarch64
    } else {
        object::Architecture::Unknown
    }
}

/// Kernels mapped executable, by symbol.
pub struct LoadedCode {
    map: memmap2::Mmap,
    kernels: HashMap<String, usize>,
    /// Bytes of code and read-only data mapped.
    pub bytes: usize,
    /// Relocations applied.
    pub relocations: usize,
}

impl LoadedCode {
    fn kernel(&self, name: &str) -> Option<KernelFn> {
        self.kernels.get(name).map(|&off| {
            // SAFETY: `off` is a defined function symbol's offset inside the executable mapping,
            // checked against its section when the code was loaded; every kernel symbol was
            // declared with KernelFn's signature when compiled.
            unsafe { std::mem::transmute::<*const u8, KernelFn>(self.map.as_ptr().add(off)) }
        })
    }
}

/// Parses a relocatable ELF object of kernels, lays its allocated sections out in one mapping,
/// resolves its undefined symbols to [`crate::host`] functions, applies its relocations (each
/// checked to lie inside its section and to fit its field), and makes the mapping read + execute.
pub fn load_code(bytes: &[u8]) -> Result<LoadedCode, LoadError> {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionKind};
    let file = object::File::parse(bytes).map_err(|e| LoadError::Object(e.to_string()))?;
    if file.format() != object::BinaryFormat::Elf || !file.is_64() || !file.is_little_endian() {
        return Err(LoadError::Object("not a 64-bit little-endian ELF object".into()));
    }
    let host_arch = host_architecture();
    if file.architecture() != host_arch {
        let host_triple = if cfg!(target_arch = "aarch64") { "aarch64-linux" } else { "x86_64-linux" };
        return Err(LoadError::Architecture {
            found: format!("{:?}", file.architecture()),
            host: format!("{host_arch:?}"),
            host_triple: host_triple.into(),
        });
    }
    if !cfg!(target_arch = "x86_64") {
        // AArch64 needs the instruction cache made coherent with the written code, which this
        // loader does not do yet.
        return Err(LoadError::UnsupportedHost(
            "loading code needs instruction-cache maintenance on this architecture, which is not written yet".into(),
        ));
    }
    // Lay out the allocated sections.
    let mut layout: HashMap<object::SectionIndex, (usize, usize)> = HashMap::new();
    let mut total = 0usize;
    for s in file.sections() {
        match s.kind() {
            SectionKind::Text
            | SectionKind::ReadOnlyData
            | SectionKind::ReadOnlyString
            | SectionKind::ReadOnlyDataWithRel => {}
            SectionKind::Data | SectionKind::UninitializedData | SectionKind::Tls | SectionKind::UninitializedTls => {
                return Err(LoadError::Object(format!(
                    "writable section {} (kernels have no mutable data)",
                    s.name().unwrap_or("?")
                )));
            }
            _ => continue,
        }
        let align = usize::try_from(s.align()).unwrap_or(usize::MAX);
        if !align.is_power_of_two() || align > 4096 {
            return Err(LoadError::Object(format!("section {} has alignment {}", s.name().unwrap_or("?"), s.align())));
        }
        let size = usize::try_from(s.size()).map_err(|_| LoadError::Object("section size".into()))?;
        let at = total.next_multiple_of(align);
        total = at
            .checked_add(size)
            .filter(|&t| t < 1 << 30)
            .ok_or_else(|| LoadError::Object("code larger than 1 GiB".into()))?;
        layout.insert(s.index(), (at, size));
    }
    if total == 0 {
        return Err(LoadError::Object("no code".into()));
    }
    let mut map = memmap2::MmapMut::map_anon(total).map_err(|e| LoadError::Memory(e.to_string()))?;
    for s in file.sections() {
        if let Some(&(at, size)) = layout.get(&s.index()) {
            let data = s.data().map_err(|e| LoadError::Object(e.to_string()))?;
            if data.len() != size {
                return Err(LoadError::Object(format!(
                    "section {} holds {} of its {size} bytes",
                    s.name().unwrap_or("?"),
                    data.len()
                )));
            }
            map[at..at + size].copy_from_slice(data);
        }
    }
    let base = map.as_ptr() as usize;
    // Symbols: defined ones at their section's place, undefined ones resolved to host functions.
    let mut kernels = HashMap::new();
    let symbol_addr = |sym: &object::Symbol<'_, '_>| -> Result<usize, LoadError> {
        let name = sym.name().unwrap_or("");
        if sym.is_undefined() {
            return crate::host::resolve(name).ok_or_else(|| LoadError::MissingHostFunction {
                name: name.to_string(),
                hint: crate::host::needs_of(name)
                    .map(|f| format!(" (it needs {f}, which this CPU lacks)"))
                    .unwrap_or_default(),
            });
        }
        let idx = sym.section_index().ok_or_else(|| LoadError::Object(format!("symbol `{name}` has no section")))?;
        let &(at, size) = layout
            .get(&idx)
            .ok_or_else(|| LoadError::Object(format!("symbol `{name}` is in a section that is not loaded")))?;
        let value = usize::try_from(sym.address()).unwrap_or(usize::MAX);
        let end = value.checked_add(usize::try_from(sym.size()).unwrap_or(usize::MAX));
        if value > size || end.is_none_or(|e| e > size) {
            return Err(LoadError::Object(format!("symbol `{name}` lies outside its section")));
        }
        Ok(base + at + value)
    };
    for sym in file.symbols() {
        if sym.kind() == object::SymbolKind::Text && sym.is_definition() {
            let addr = symbol_addr(&sym)?;
            kernels.insert(sym.name().unwrap_or("").to_string(), addr - base);
        }
    }
    let mut relocations = 0;
    for s in file.sections() {
        let Some(&(at, size)) = layout.get(&s.index()) else { continue };
        let sname = s.name().unwrap_or("?").to_string();
        for (offset, r) in s.relocations() {
            let err = |kind: &str, message: String| LoadError::Relocation {
                section: sname.clone(),
                offset,
                kind: kind.into(),
                message,
            };
            let r_type = match r.flags() {
                RelocationFlags::Elf { r_type } => r_type,
                other => return Err(err("?", format!("not an ELF relocation: {other:?}"))),
            };
            let target = match r.target() {
                RelocationTarget::Symbol(i) => {
                    let sym = file.symbol_by_index(i).map_err(|e| err("?", e.to_string()))?;
                    if sym.kind() == object::SymbolKind::Section {
                        let idx =
                            sym.section_index().ok_or_else(|| err("?", "section symbol without a section".into()))?;
                        base + layout.get(&idx).ok_or_else(|| err("?", "to a section that is not loaded".into()))?.0
                    } else {
                        symbol_addr(&sym)?
                    }
                }
                RelocationTarget::Section(idx) => {
                    base + layout.get(&idx).ok_or_else(|| err("?", "to a section that is not loaded".into()))?.0
                }
                other => return Err(err("?", format!("target {other:?}"))),
            };
            let value = (target as i64).wrapping_add(r.addend());
            let off = usize::try_from(offset).unwrap_or(usize::MAX);
            if off >= size {
                return Err(err(&format!("type {r_type}"), format!("points outside the {size}-byte section")));
            }
            let place = base + at + off;
            let (kind, width, bytes): (&str, usize, Vec<u8>) = match (file.architecture(), r_type) {
                (object::Architecture::X86_64, object::elf::R_X86_64_64) => {
                    ("R_X86_64_64", 8, value.to_le_bytes().to_vec())
                }
                (object::Architecture::X86_64, object::elf::R_X86_64_PC32 | object::elf::R_X86_64_PLT32) => {
                    let rel = value.wrapping_sub(place as i64);
                    let v = i32::try_from(rel).map_err(|_| {
                        err("R_X86_64_PC32", format!("target {rel:#x} bytes away does not fit 32 bits"))
                    })?;
                    ("R_X86_64_PC32", 4, v.to_le_bytes().to_vec())
                }
                (object::Architecture::Aarch64, object::elf::R_AARCH64_ABS64) => {
                    ("R_AARCH64_ABS64", 8, value.to_le_bytes().to_vec())
                }
                (_, t) => return Err(err(&format!("type {t}"), "a relocation type this loader does not apply".into())),
            };
            if off.checked_add(width).is_none_or(|e| e > size) {
                return Err(err(kind, format!("points outside the {size}-byte section")));
            }
            map[at + off..at + off + width].copy_from_slice(&bytes);
            relocations += 1;
        }
    }
    let map = map.make_exec().map_err(|e| LoadError::Memory(e.to_string()))?;
    Ok(LoadedCode { map, kernels, bytes: total, relocations })
}

/// Options for [`load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub threads: usize,
}

/// Checks an image's steps against its graph and code, loads the code and returns the program.
/// `owned` are the packed weights (mapped from the artifact), `graph` the graph the steps index.
pub fn load(
    meta: &ImageMeta,
    object: &[u8],
    owned: Vec<Blob>,
    graph: Graph,
    opts: &LoadOptions,
) -> Result<Program, LoadError> {
    let missing = missing_features(&meta.features);
    if !missing.is_empty() {
        return Err(LoadError::Features { missing: missing.join(", ") });
    }
    let syms = symbols(&graph).map_err(|e| LoadError::Graph(e.to_string()))?;
    let names: Vec<String> = syms.iter().map(|s| s.to_string()).collect();
    if names != meta.syms {
        return Err(LoadError::Symbols { found: meta.syms.clone(), expected: names });
    }
    // Steps: every node, value and weight they name exists; checked before the code is mapped.
    let n_values = graph.n_values();
    let mut steps = Vec::with_capacity(meta.steps.len());
    for (i, s) in meta.steps.iter().enumerate() {
        let bad = |message: String| LoadError::Step { step: i, kernel: s.kernel.clone(), message };
        if s.node as usize >= graph.n_nodes() {
            return Err(bad(format!("node n{} is not in the graph ({} nodes)", s.node, graph.n_nodes())));
        }
        let node = Node(s.node);
        let bufs = s
            .bufs
            .iter()
            .map(|b| match *b {
                BufImage::V(v) if (v as usize) < n_values => Ok(BufRef::Value(Value(v))),
                BufImage::W(w) if (w as usize) < owned.len() => Ok(BufRef::Owned(w as usize)),
                b => Err(bad(format!("buffer {b:?} is not in the graph or the weights"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        steps.push((node, bufs));
    }
    let code = load_code(object)?;
    let mut out = Vec::with_capacity(steps.len());
    for (s, (node, bufs)) in meta.steps.iter().zip(steps) {
        let kernel = code.kernel(&s.kernel).ok_or_else(|| LoadError::MissingKernel(s.kernel.clone()))?;
        out.push(Step {
            node,
            op: graph.node(node).op.name(),
            kernel,
            bufs,
            par: s.par.as_ref().map(|(d, div)| (d.iter().map(DimSpec::dim).collect(), *div)),
            params: s.params.clone(),
            scratch: s.scratch.clone(),
            serial: s.serial,
            name: s.name.clone(),
        });
    }
    let stats = ProgramStats {
        kernels: out.len(),
        code_bytes: meta.code_bytes,
        packed_weight_bytes: owned.iter().map(|o| o.len()).sum(),
        compile_ms: 0.0,
        isa: format!("{} (loaded: {} bytes, {} relocations)", meta.triple, code.bytes, code.relocations),
    };
    let parts = Parts { graph, owned, syms, threads: opts.threads, min_split_bytes: meta.min_split_bytes, stats };
    Program::assemble(Code(Box::new(code)), out, parts).map_err(|e| LoadError::Memory(e.to_string()))
}

/// What an object file of kernels holds (for `tessera inspect`).
#[derive(Clone, Debug)]
pub struct ObjectSummary {
    pub architecture: String,
    /// (name, bytes) of each section with contents.
    pub sections: Vec<(String, u64)>,
    /// Kernels defined.
    pub kernels: usize,
    /// Host functions the kernels import.
    pub imports: Vec<String>,
    pub relocations: usize,
}

/// Reads an object file's sections, symbols and relocations without loading it.
pub fn describe_object(bytes: &[u8]) -> Result<ObjectSummary, LoadError> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let file = object::File::parse(bytes).map_err(|e| LoadError::Object(e.to_string()))?;
    let mut imports: Vec<String> = file
        .symbols()
        .filter(|s| s.is_undefined() && !s.name().unwrap_or("").is_empty())
        .map(|s| s.name().unwrap_or("").to_string())
        .collect();
    imports.sort();
    Ok(ObjectSummary {
        architecture: format!("{:?}", file.architecture()),
        sections: file
            .sections()
            .filter(|s| s.size() > 0)
            .map(|s| (s.name().unwrap_or("?").to_string(), s.size()))
            .collect(),
        kernels: file.symbols().filter(|s| s.kind() == object::SymbolKind::Text && s.is_definition()).count(),
        imports,
        relocations: file.sections().map(|s| s.relocations().count()).sum(),
    })
}
