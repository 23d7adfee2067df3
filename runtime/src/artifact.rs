//! Ahead-of-time artifacts (`.tsa`): one file holding a compiled model, loaded without the
//! compiler.
//!
//! Layout: an 8-byte magic (`TESSERA\x1a`), the format version (u32 LE), the header's length
//! (u32 LE), the header's xxh3-64 (u64 LE), the header (JSON: Tessera version, target triple,
//! required CPU features, the source model's hash, and a table of sections with offset, length
//! and xxh3-64 each), then the sections, each 64-byte aligned:
//!
//! - `cpu.meta`: the CPU program's steps and parameters (JSON, [`tessera_target_cpu::image::ImageMeta`]);
//! - `cpu.code`: the kernels, a relocatable ELF object from Cranelift's object backend;
//! - `cpu.packed`: the weights the kernels read packed, each 64-byte aligned (mapped, not copied);
//! - `ir`: the graph the program runs, as Tessera IR text (for inspection, and the loader's
//!   signature, shapes and buffer plan);
//! - `ir.weights`: the graph's constants the kernels read directly, as the IR's sidecar;
//! - `placement` (optional): the phone profile's placement of the model, for inspection.
//! - `llm.config` and `llm.gguf` (decoder models from GGUF files): the model's configuration
//!   (JSON) and the GGUF file's metadata without its tensors (the tokenizer), for
//!   `Llm::from_artifact`.
//!
//! [`Artifact::open`] maps the file and checks everything (magic, versions, section bounds and
//! overlaps, every checksum) before [`Artifact::cpu_program`] maps any code; the CPU loader then
//! checks the object's relocations and symbols ([`tessera_target_cpu::image`]). A truncated or
//! corrupted file, one from another Tessera version or for another CPU is a typed
//! [`ArtifactError`]; no code from an unchecked artifact runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_ir::{Blob, Graph};
use tessera_target_cpu::image::{self, ImageMeta, LoadError, LoadOptions, ProgramImage};

pub const MAGIC: &[u8; 8] = b"TESSERA\x1a";
/// The artifact layout version this runtime reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// The Tessera version artifacts are stamped with; a runtime loads only its own version's
/// artifacts (the kernels call the runtime's host functions by name, and their meaning is the
/// version's).
pub const TESSERA_VERSION: &str = env!("CARGO_PKG_VERSION");
const PREFIX: usize = 24;
const ALIGN: usize = 64;

/// What the header says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub tessera_version: String,
    pub triple: String,
    /// Cranelift ISA flags the CPU code needs (`has_avx2`, ...).
    pub features: Vec<String>,
    pub model: ModelInfo,
    /// The device profile the model was placed on (`tessera compile --profile`), if any.
    pub profile: Option<String>,
    pub sections: Vec<Section>,
    /// Offsets and lengths of the packed weights inside `cpu.packed`, in the order steps name them.
    pub packed: Vec<(u64, u64)>,
}

/// The model an artifact was compiled from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The file name it was compiled from.
    pub source: String,
    /// xxh3-128 of the source file's bytes, hex.
    pub hash: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub name: String,
    pub offset: u64,
    pub bytes: u64,
    /// xxh3-64 of the section's bytes, hex.
    pub xxh3: String,
}

/// Why an artifact could not be written, opened or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("not a Tessera artifact (the file does not start with the artifact magic): compile one with `tessera compile MODEL -o FILE.tsa`")]
    NotAnArtifact,
    #[error("truncated artifact: {what} needs bytes up to {needed}, the file has {len}")]
    Truncated { what: String, needed: u64, len: u64 },
    #[error("artifact format {found}, this runtime reads format {supported}: recompile the model with this Tessera")]
    FormatVersion { found: u32, supported: u32 },
    #[error(
        "artifact built by Tessera {found}, this runtime is Tessera {runtime}: recompile the model with this Tessera"
    )]
    TesseraVersion { found: String, runtime: String },
    #[error("artifact header is damaged ({0})")]
    Header(String),
    #[error("artifact section `{name}`: {message}")]
    Section { name: String, message: String },
    #[error("artifact section `{section}` fails its checksum (xxh3 {actual}, the header says {expected}): the file is corrupted")]
    Checksum { section: String, expected: String, actual: String },
    #[error("artifact IR: {0}")]
    Ir(String),
    #[error(transparent)]
    Load(#[from] LoadError),
}

fn hex64(v: u64) -> String {
    format!("{v:016x}")
}

/// xxh3-128 of a file's bytes, hex (the model hash artifacts and the JIT cache key on).
pub fn hash_bytes(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

/// Serializes a compiled CPU program and its graph into an artifact's bytes. The graph is
/// stored as IR text, which numbers values and nodes in print order: the steps are renumbered
/// to match, and the text is read back and compared value by value before anything is written.
pub fn write(
    image: &ProgramImage,
    model: ModelInfo,
    profile: Option<String>,
    placement: Option<String>,
    extra: &[(&str, &[u8])],
) -> Result<Vec<u8>, ArtifactError> {
    let mut opts = tessera_ir::PrintOptions { weights: tessera_ir::WeightMode::Sidecar, ..Default::default() };
    opts.sidecar_name = "ir.weights".into();
    let graph = &image.graph;
    let (ir_text, ir_weights) = tessera_ir::print_with(graph, &opts);
    let values = tessera_ir::write::numbering(graph);
    let nodes: std::collections::HashMap<u32, u32> =
        graph.nodes().enumerate().map(|(i, (n, _))| (n.0, i as u32)).collect();
    let mut meta = image.meta.clone();
    for s in &mut meta.steps {
        let bad = |what: String| ArtifactError::Ir(format!("step {}: {what} is not in the printed graph", s.name));
        s.node = *nodes.get(&s.node).ok_or_else(|| bad(format!("node n{}", s.node)))?;
        for b in &mut s.bufs {
            if let image::BufImage::V(v) = b {
                *v = *values.get(&tessera_ir::Value(*v)).ok_or_else(|| bad(format!("value v{v}")))? as u32;
            }
        }
    }
    // The text read back must give every value the same dtype and shape.
    let back = tessera_ir::parse_with(
        &ir_text,
        &tessera_ir::ParseOptions {
            base_dir: None,
            sidecar: Some(Blob::from_vec(ir_weights.clone())),
            trust_blob_hashes: false,
        },
    )
    .map_err(|e| ArtifactError::Ir(format!("the graph does not read back: {e}")))?;
    for (v, &i) in &values {
        let (a, b) = (graph.ty(*v), back.ty(tessera_ir::Value(i as u32)));
        if a.dtype != b.dtype || a.shape != b.shape {
            return Err(ArtifactError::Ir(format!("value {v} reads back as v{i}: {b}, was {a}")));
        }
    }
    let mut packed = Vec::new();
    let mut index = Vec::new();
    for o in &image.owned {
        let at = packed.len().next_multiple_of(ALIGN);
        packed.resize(at, 0);
        packed.extend_from_slice(o);
        index.push((at as u64, o.len() as u64));
    }
    let meta = serde_json::to_vec(&meta).expect("image metadata serializes");
    let mut parts: Vec<(&str, &[u8])> = vec![
        ("cpu.meta", &meta),
        ("cpu.code", &image.object),
        ("cpu.packed", &packed),
        ("ir", ir_text.as_bytes()),
        ("ir.weights", &ir_weights),
    ];
    if let Some(p) = &placement {
        parts.push(("placement", p.as_bytes()));
    }
    parts.extend(extra.iter().copied());
    // The header's length depends on the offsets it holds: lay out after a header of the
    // final size (offsets printed at fixed width are not needed: iterate until it is stable).
    let mut header = Header {
        tessera_version: TESSERA_VERSION.into(),
        triple: image.meta.triple.clone(),
        features: image.meta.features.clone(),
        model,
        profile,
        sections: parts
            .iter()
            .map(|(name, b)| Section {
                name: name.to_string(),
                offset: 0,
                bytes: b.len() as u64,
                xxh3: hex64(xxhash_rust::xxh3::xxh3_64(b)),
            })
            .collect(),
        packed: index,
    };
    let mut json = serde_json::to_vec(&header).expect("header serializes");
    loop {
        let mut at = (PREFIX + json.len()).next_multiple_of(ALIGN);
        for s in &mut header.sections {
            s.offset = at as u64;
            at = (at + s.bytes as usize).next_multiple_of(ALIGN);
        }
        let next = serde_json::to_vec(&header).expect("header serializes");
        if next.len() == json.len() {
            json = next;
            break;
        }
        json = next;
    }
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&json).to_le_bytes());
    out.extend_from_slice(&json);
    for (s, (_, b)) in header.sections.iter().zip(&parts) {
        out.resize(s.offset as usize, 0);
        out.extend_from_slice(b);
    }
    Ok(out)
}

/// An opened, checked artifact.
pub struct Artifact {
    data: Blob,
    pub header: Header,
}

impl Artifact {
    /// Maps and checks an artifact file.
    pub fn open(path: impl AsRef<Path>) -> Result<Artifact, ArtifactError> {
        let path = path.as_ref();
        let data =
            Blob::map_file_populated(path).map_err(|source| ArtifactError::Io { path: path.to_path_buf(), source })?;
        Artifact::from_blob(data)
    }

    /// Checks an artifact's bytes: magic, versions, header checksum, section bounds, every
    /// section's checksum.
    pub fn from_blob(data: Blob) -> Result<Artifact, ArtifactError> {
        let len = data.len() as u64;
        if data.len() < 8 || &data[..8] != MAGIC {
            return Err(ArtifactError::NotAnArtifact);
        }
        if data.len() < PREFIX {
            return Err(ArtifactError::Truncated { what: "the header".into(), needed: PREFIX as u64, len });
        }
        let format = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
        if format != FORMAT_VERSION {
            return Err(ArtifactError::FormatVersion { found: format, supported: FORMAT_VERSION });
        }
        let hlen = u32::from_le_bytes(data[12..16].try_into().expect("4 bytes")) as usize;
        let hsum = u64::from_le_bytes(data[16..24].try_into().expect("8 bytes"));
        let hend = PREFIX + hlen;
        if data.len() < hend {
            return Err(ArtifactError::Truncated { what: "the header".into(), needed: hend as u64, len });
        }
        let json = &data[PREFIX..hend];
        if xxhash_rust::xxh3::xxh3_64(json) != hsum {
            return Err(ArtifactError::Header("its checksum does not match: the file is corrupted".into()));
        }
        let header: Header = serde_json::from_slice(json).map_err(|e| ArtifactError::Header(e.to_string()))?;
        if header.tessera_version != TESSERA_VERSION {
            return Err(ArtifactError::TesseraVersion {
                found: header.tessera_version,
                runtime: TESSERA_VERSION.into(),
            });
        }
        // Sections: inside the file, after the header, in order, not overlapping.
        let mut end = hend as u64;
        for s in &header.sections {
            let bad = |message: String| ArtifactError::Section { name: s.name.clone(), message };
            let stop = s.offset.checked_add(s.bytes).ok_or_else(|| bad("its length overflows".into()))?;
            if s.offset < end {
                return Err(bad(format!(
                    "starts at {} inside the header or the section before it (ends at {end})",
                    s.offset
                )));
            }
            if s.offset % ALIGN as u64 != 0 {
                return Err(bad(format!("offset {} is not {ALIGN}-byte aligned", s.offset)));
            }
            if stop > len {
                return Err(ArtifactError::Truncated { what: format!("section `{}`", s.name), needed: stop, len });
            }
            end = stop;
        }
        let a = Artifact { data, header };
        // Every section's checksum, the large ones (weights) on their own threads: a 70 MB
        // fp32 model is hashed in about half the time on two cores.
        let hashes = a.section_hashes();
        for (s, actual) in a.header.sections.iter().zip(hashes) {
            if actual != s.xxh3 {
                return Err(ArtifactError::Checksum { section: s.name.clone(), expected: s.xxh3.clone(), actual });
            }
        }
        Ok(a)
    }

    fn bytes(&self, s: &Section) -> &[u8] {
        &self.data[s.offset as usize..(s.offset + s.bytes) as usize]
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.header.sections.iter().find(|s| s.name == name)
    }

    fn need(&self, name: &str) -> Result<&Section, ArtifactError> {
        self.section(name).ok_or_else(|| ArtifactError::Section { name: name.into(), message: "missing".into() })
    }

    /// A section's bytes, if the artifact has it.
    pub fn section_bytes(&self, name: &str) -> Option<&[u8]> {
        self.section(name).map(|s| self.bytes(s))
    }

    /// The graph the artifact's program runs, with the constants its kernels read (mapped).
    pub fn graph(&self) -> Result<Graph, ArtifactError> {
        let text = std::str::from_utf8(self.bytes(self.need("ir")?))
            .map_err(|e| ArtifactError::Ir(format!("not UTF-8: {e}")))?;
        let w = self.need("ir.weights")?;
        let sidecar = self.data.slice(w.offset as usize, w.bytes as usize).expect("checked bounds");
        let opts = tessera_ir::ParseOptions { base_dir: None, sidecar: Some(sidecar), trust_blob_hashes: true };
        // Not verified: the graph is the CPU target's lowered form (region parameters carry
        // no quantization), which the verifier does not accept; the loader needs its values'
        // types, which the compiler checked read back exactly, and the checksum vouches for.
        tessera_ir::parse_with(text, &opts).map_err(|e| ArtifactError::Ir(e.to_string()))
    }

    /// The CPU program's metadata.
    pub fn cpu_meta(&self) -> Result<ImageMeta, ArtifactError> {
        serde_json::from_slice(self.bytes(self.need("cpu.meta")?))
            .map_err(|e| ArtifactError::Section { name: "cpu.meta".into(), message: e.to_string() })
    }

    /// Loads the CPU program: the graph, the packed weights (mapped from the file), the code.
    pub fn cpu_program(&self, threads: usize) -> Result<tessera_target_cpu::Program, ArtifactError> {
        let meta = self.cpu_meta()?;
        let graph = self.graph()?;
        let owned = self.cpu_packed()?;
        let code = self.bytes(self.need("cpu.code")?);
        Ok(image::load(&meta, code, owned, graph, &LoadOptions { threads })?)
    }

    /// The CPU code: a relocatable ELF object for the artifact's triple.
    pub fn cpu_code(&self) -> Result<&[u8], ArtifactError> {
        Ok(self.bytes(self.need("cpu.code")?))
    }

    /// The packed weights, in the order the CPU steps name them.
    pub fn cpu_packed(&self) -> Result<Vec<Blob>, ArtifactError> {
        let p = self.need("cpu.packed")?;
        self.header
            .packed
            .iter()
            .enumerate()
            .map(|(i, &(off, n))| {
                off.checked_add(n)
                    .filter(|&e| e <= p.bytes)
                    .and_then(|_| self.data.slice((p.offset + off) as usize, n as usize))
                    .ok_or_else(|| ArtifactError::Section {
                        name: "cpu.packed".into(),
                        message: format!("packed weight {i} ({off}+{n}) lies outside the section ({} bytes)", p.bytes),
                    })
            })
            .collect::<Result<Vec<_>, _>>()
    }

    /// Each section's xxh3-64 (hex), in the header's order. Sections of 1 MiB or more are
    /// hashed on scoped threads (as many as the machine has cores), the rest on this one.
    fn section_hashes(&self) -> Vec<String> {
        const BIG: usize = 1 << 20;
        let hash = |s: &Section| hex64(xxhash_rust::xxh3::xxh3_64(self.bytes(s)));
        let sections = &self.header.sections;
        let big: Vec<usize> = (0..sections.len()).filter(|&i| self.bytes(&sections[i]).len() >= BIG).collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if big.len() < 2 || cores < 2 {
            return sections.iter().map(hash).collect();
        }
        let mut out: Vec<Option<String>> = vec![None; sections.len()];
        std::thread::scope(|scope| {
            // All but one big section on helper threads (up to the core count); the calling
            // thread takes the last one and the small ones.
            let spawned: Vec<(usize, std::thread::ScopedJoinHandle<String>)> = big
                .iter()
                .take(big.len() - 1)
                .take(cores - 1)
                .map(|&i| (i, scope.spawn(move || hash(&sections[i]))))
                .collect();
            for (i, s) in sections.iter().enumerate() {
                if !spawned.iter().any(|(j, _)| *j == i) {
                    out[i] = Some(hash(s));
                }
            }
            for (i, h) in spawned {
                out[i] = Some(h.join().unwrap_or_else(|_| hash(&sections[i])));
            }
        });
        out.into_iter().map(|h| h.expect("every section hashed")).collect()
    }

    /// The file's size in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// For fuzzing and tests: an artifact's bytes with the header's and every section's checksum
/// recomputed, so that changes made inside sections reach the loaders behind the checksums.
/// None when the bytes have no readable header.
pub fn reseal(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < PREFIX || &bytes[..8] != MAGIC {
        return None;
    }
    let hlen = u32::from_le_bytes(bytes[12..16].try_into().ok()?) as usize;
    let json = bytes.get(PREFIX..PREFIX.checked_add(hlen)?)?;
    let mut header: Header = serde_json::from_slice(json).ok()?;
    for s in &mut header.sections {
        let start = usize::try_from(s.offset).ok()?;
        let data = bytes.get(start..start.checked_add(usize::try_from(s.bytes).ok()?)?)?;
        s.xxh3 = hex64(xxhash_rust::xxh3::xxh3_64(data));
    }
    let new = serde_json::to_vec(&header).ok()?;
    // The sections stay where they are: the new header must fit the old one's room.
    let first = header.sections.iter().map(|s| s.offset as usize).min().unwrap_or(bytes.len());
    if PREFIX + new.len() > first {
        return None;
    }
    let mut out = bytes.to_vec();
    out[12..16].copy_from_slice(&(new.len() as u32).to_le_bytes());
    out[16..24].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(&new).to_le_bytes());
    out[PREFIX..PREFIX + new.len()].copy_from_slice(&new);
    Some(out)
}
