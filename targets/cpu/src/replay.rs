//! One run of a compiled image, written out as data for a driver outside Rust: every kernel call
//! in order, with its buffers (arena offsets, input and weight blobs, scratch), its run-time
//! arguments and its parallel range, computed exactly as [`crate::Program`] computes them.
//!
//! This is how the arm64 kernels are checked on an x86-64 machine: `compile_image` for
//! `aarch64-linux-android`, [`plan`] for some inputs, then a small C driver linked with the
//! object by a cross compiler replays the calls under qemu-user (`tests/arm64.rs`). The replay
//! is serial (one call per kernel over its whole range), which every kernel supports.
//!
//! Encoding (little-endian, 8-byte words): `"TSREPLAY"`, arena bytes, scratch bytes, blob count,
//! each blob (length, bytes padded to 8), step count, each step (name length, name padded to 8,
//! buffer count, each buffer (kind, value), argument count, arguments, units), output count,
//! each output (kind, value, bytes). A buffer's kind is 0 (arena; value = offset), 1 (scratch)
//! or 2 (blob; value = index).

use tessera_ir::{DType, Graph, Tensor};

use crate::image::{BufImage, ImageMeta};
use crate::program::{bind, layout, Layout};
use crate::CpuError;

/// Where a kernel buffer lives in the replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    Arena(u64),
    Scratch,
    Blob(u32),
}

impl Loc {
    fn words(self) -> [u64; 2] {
        match self {
            Loc::Arena(off) => [0, off],
            Loc::Scratch => [1, 0],
            Loc::Blob(i) => [2, i as u64],
        }
    }
}

/// One kernel call: `kernel(bufs, args, 0, units)`.
#[derive(Clone, Debug)]
pub struct ReplayStep {
    pub kernel: String,
    pub bufs: Vec<Loc>,
    pub args: Vec<i64>,
    pub units: i64,
}

/// One graph output: where it is after the last call, its dtype, shape and byte length.
#[derive(Clone, Debug)]
pub struct ReplayOutput {
    pub loc: Loc,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: u64,
}

/// A whole run.
#[derive(Clone, Debug)]
pub struct Replay {
    pub arena_bytes: u64,
    /// The largest scratch any call needs.
    pub scratch_bytes: u64,
    /// Inputs, the constants kernels read, and the packed weights.
    pub blobs: Vec<Vec<u8>>,
    pub steps: Vec<ReplayStep>,
    pub outputs: Vec<ReplayOutput>,
}

/// The calls one run of the image makes on `inputs` (checked against the graph's signature).
pub fn plan(meta: &ImageMeta, graph: &Graph, owned: &[&[u8]], inputs: &[Tensor]) -> Result<Replay, CpuError> {
    let b = bind(graph, inputs)?;
    let Layout { shapes, sizes, offsets, arena_bytes } = layout(graph, &b)?;
    let bad = |m: String| CpuError::Memory(format!("replay: {m}"));
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut locs: Vec<Option<Loc>> = offsets.iter().map(|o| o.map(Loc::Arena)).collect();
    for ((_, v), t) in graph.inputs().iter().zip(inputs) {
        locs[v.index()] = Some(Loc::Blob(blobs.len() as u32));
        blobs.push(t.to_bytes());
    }
    let mut constant_blobs = vec![None; graph.n_values()];
    for c in graph.constants() {
        constant_blobs[c.value.index()] = Some(c);
    }
    let weights_at = blobs.len();
    blobs.extend(owned.iter().map(|o| o.to_vec()));
    let mut loc_of = |v: usize, blobs: &mut Vec<Vec<u8>>| -> Result<Loc, CpuError> {
        if let Some(l) = locs[v] {
            return Ok(l);
        }
        let l = match constant_blobs[v] {
            Some(c) => {
                let bytes = c.data.bytes().ok_or_else(|| bad(format!("constant {} holds only a summary", c.value)))?;
                blobs.push(bytes.to_vec());
                Loc::Blob(blobs.len() as u32 - 1)
            }
            // A value with no bytes (an empty tensor).
            None if sizes[v] == 0 => Loc::Arena(0),
            None => return Err(bad(format!("value v{v} has no place"))),
        };
        locs[v] = Some(l);
        Ok(l)
    };
    let syms: Vec<i64> = meta.syms.iter().map(|s| b.get(s).unwrap_or(0) as i64).collect();
    let mut steps = Vec::with_capacity(meta.steps.len());
    let mut scratch_bytes = 0u64;
    for (i, s) in meta.steps.iter().enumerate() {
        let mut bufs = Vec::with_capacity(s.bufs.len() + 1);
        for buf in &s.bufs {
            bufs.push(match *buf {
                BufImage::V(v) if (v as usize) < graph.n_values() => loc_of(v as usize, &mut blobs)?,
                BufImage::W(w) if (w as usize) < owned.len() => Loc::Blob((weights_at + w as usize) as u32),
                other => return Err(bad(format!("step {i} ({}) names {other:?}, which is not there", s.kernel))),
            });
        }
        let mut args = syms.clone();
        if let Some(p) = &s.params {
            args.extend(p.eval(&b));
        }
        let units = match &s.par {
            Some((dims, div)) => {
                let n: u64 = dims.iter().map(|d| b.resolve(&d.dim()).unwrap_or(0) as u64).product();
                n.div_ceil((*div).max(1)) as i64
            }
            None => 1,
        };
        let scratch = s.scratch.as_ref().map_or(0, |f| f.eval(&b)[0].max(0) as u64);
        if scratch > 0 {
            scratch_bytes = scratch_bytes.max(scratch);
            bufs.push(Loc::Scratch);
        }
        steps.push(ReplayStep { kernel: s.kernel.clone(), bufs, args, units });
    }
    let mut outputs = Vec::new();
    for (_, v) in graph.outputs() {
        let ty = graph.ty(*v);
        let shape = shapes[v.index()].clone();
        let bytes = ty.dtype.storage_bytes(shape.iter().product()) as u64;
        outputs.push(ReplayOutput { loc: loc_of(v.index(), &mut blobs)?, dtype: ty.dtype, shape, bytes });
    }
    Ok(Replay { arena_bytes, scratch_bytes, blobs, steps, outputs })
}

impl Replay {
    /// The encoding the C driver reads (see the module's documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = b"TSREPLAY".to_vec();
        let word = |out: &mut Vec<u8>, w: u64| out.extend_from_slice(&w.to_le_bytes());
        let padded = |out: &mut Vec<u8>, bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
            out.resize(out.len().next_multiple_of(8), 0);
        };
        word(&mut out, self.arena_bytes);
        word(&mut out, self.scratch_bytes);
        word(&mut out, self.blobs.len() as u64);
        for b in &self.blobs {
            padded(&mut out, b);
        }
        word(&mut out, self.steps.len() as u64);
        for s in &self.steps {
            padded(&mut out, s.kernel.as_bytes());
            word(&mut out, s.bufs.len() as u64);
            for l in &s.bufs {
                for w in l.words() {
                    word(&mut out, w);
                }
            }
            word(&mut out, s.args.len() as u64);
            for &a in &s.args {
                word(&mut out, a as u64);
            }
            word(&mut out, s.units as u64);
        }
        word(&mut out, self.outputs.len() as u64);
        for o in &self.outputs {
            for w in o.loc.words() {
                word(&mut out, w);
            }
            word(&mut out, o.bytes);
        }
        out
    }

    /// The outputs from the driver's result: every output's bytes, one after another.
    pub fn outputs_from(&self, bytes: &[u8]) -> Result<Vec<Tensor>, CpuError> {
        let mut at = 0usize;
        let mut out = Vec::new();
        for (i, o) in self.outputs.iter().enumerate() {
            let end = at + o.bytes as usize;
            let chunk = bytes
                .get(at..end)
                .ok_or_else(|| CpuError::Memory(format!("replay result: output {i} is cut short")))?;
            out.push(
                Tensor::from_bytes(o.dtype, &o.shape, chunk)
                    .map_err(|e| CpuError::Memory(format!("replay result: output {i}: {e}")))?,
            );
            at = end;
        }
        if at != bytes.len() {
            return Err(CpuError::Memory(format!("replay result: {} bytes left over", bytes.len() - at)));
        }
        Ok(out)
    }
}
