//! The stream validator, run before any stream executes: an NPU has no MMU, so a stream that
//! could touch memory outside its buffers or SRAM, wait for a transfer never issued, or read
//! SRAM no command has written (or that a transfer still in flight is writing) is rejected.
//!
//! It walks the stream as the front end issues it, tracking the transfers in flight per channel
//! (a `wait chN >= c` completes the first `c` of channel N), and SRAM bytes written by a
//! completed load or a compute command.

use crate::device::Device;
use crate::stream::{BufferRole, Command, DramBox, ElemType, Operand, Param, Stream};

/// Why a stream was rejected: the command index and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("command {index} ({op}): {message}")]
pub struct ValidationError {
    pub index: usize,
    pub op: &'static str,
    pub message: String,
}

/// What validation learned: the highest SRAM byte used plus one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Validated {
    pub sram_peak: u32,
}

#[derive(Clone, Copy)]
struct Range {
    start: u64,
    end: u64,
}

impl Range {
    fn overlaps(&self, o: &Range) -> bool {
        self.start < o.end && o.start < self.end
    }
}

struct Pending {
    ch: u8,
    seq: u32,
    index: usize,
    load: bool,
    sram: Range,
    dram: DramBox,
}

fn op_name(c: &Command) -> &'static str {
    match c {
        Command::DmaLoad { .. } => "dma.load",
        Command::DmaStore { .. } => "dma.store",
        Command::Wait { .. } => "wait",
        Command::MatMul { .. } => "matmul",
        Command::Requant { .. } => "requant",
        Command::Lut { .. } => "lut",
        Command::Stop => "stop",
    }
}

struct V<'a> {
    dev: &'a Device,
    stream: &'a Stream,
    written: Vec<bool>,
    pending: Vec<Pending>,
    issued: Vec<u32>,
    completed: Vec<u32>,
    peak: u64,
}

type Check<T> = Result<T, String>;

impl V<'_> {
    fn sram(&mut self, start: u64, bytes: u64, what: &str) -> Check<Range> {
        let end = start.checked_add(bytes).ok_or_else(|| format!("{what} overflows the address space"))?;
        if end > self.dev.sram_bytes as u64 {
            return Err(format!("{what} [{start:#x}, {end:#x}) is outside the SRAM ({} bytes)", self.dev.sram_bytes));
        }
        self.peak = self.peak.max(end);
        Ok(Range { start, end })
    }

    /// The SRAM rows of a matrix operand: `rows` rows of `row_bytes`, `stride` apart.
    fn matrix(&mut self, addr: u32, stride: u32, rows: u32, row_bytes: u64, what: &str) -> Check<Vec<Range>> {
        if rows > 1 && (stride as u64) < row_bytes {
            return Err(format!("{what}'s stride {stride} is shorter than its rows ({row_bytes} bytes)"));
        }
        let span = (rows as u64 - 1) * stride as u64 + row_bytes;
        self.sram(addr as u64, span, what)?;
        Ok((0..rows as u64)
            .map(|r| Range { start: addr as u64 + r * stride as u64, end: addr as u64 + r * stride as u64 + row_bytes })
            .collect())
    }

    fn operand(&mut self, o: &Operand, rows: u32, cols: u32, what: &str) -> Check<Vec<Range>> {
        self.matrix(o.addr, o.stride, rows, o.ty.bytes(cols as u64), what)
    }

    fn param(&mut self, p: &Param, len: u32, int: bool, what: &str) -> Check<Vec<Range>> {
        match *p {
            Param::None => Ok(vec![]),
            Param::Int(_) if int => Ok(vec![]),
            Param::Float(_) | Param::Fixed { .. } if !int => Ok(vec![]),
            Param::Sram { addr, ty, vector } => {
                let ok = if int {
                    matches!(ty, ElemType::U8 | ElemType::I8 | ElemType::U4 | ElemType::I4 | ElemType::I32)
                } else {
                    matches!(ty, ElemType::F32 | ElemType::Fixed)
                };
                if !ok {
                    return Err(format!("{what} cannot be {}", ty.name()));
                }
                let n = if vector { len } else { 1 };
                Ok(vec![self.sram(addr as u64, ty.bytes(n as u64), what)?])
            }
            _ => Err(format!("{what} cannot be {p}")),
        }
    }

    fn reads(&self, ranges: &[Range], what: &str) -> Check<()> {
        for r in ranges {
            if let Some(p) = self.pending.iter().find(|p| p.load && p.sram.overlaps(r)) {
                return Err(format!(
                    "{what} reads SRAM [{:#x}, {:#x}) while dma.load {} (ch{} #{}) is still writing it: wait for it first",
                    r.start, r.end, p.index, p.ch, p.seq
                ));
            }
            if let Some(i) = (r.start..r.end).find(|&i| !self.written[i as usize]) {
                return Err(format!("{what} reads SRAM byte {i:#x}, which nothing has written"));
            }
        }
        Ok(())
    }

    /// Checks that nothing in flight uses `ranges`, then marks them written (`done`) or, for a
    /// load, not readable until a wait completes it.
    fn writes(&mut self, ranges: &[Range], what: &str, done: bool) -> Check<()> {
        for r in ranges {
            if let Some(p) = self.pending.iter().find(|p| p.sram.overlaps(r)) {
                return Err(format!(
                    "{what} writes SRAM [{:#x}, {:#x}) while dma.{} {} (ch{} #{}) is still using it: wait for it first",
                    r.start,
                    r.end,
                    if p.load { "load" } else { "store" },
                    p.index,
                    p.ch,
                    p.seq
                ));
            }
        }
        for r in ranges {
            self.written[r.start as usize..r.end as usize].fill(done);
        }
        Ok(())
    }

    fn dram(&self, b: &DramBox, store: bool) -> Check<()> {
        let decl = self.stream.buffers.get(b.buffer as usize).ok_or_else(|| format!("no buffer b{}", b.buffer))?;
        if b.bytes() == 0 {
            return Err("an empty transfer".into());
        }
        if store && !matches!(decl.role, BufferRole::Output(_)) {
            return Err(format!("b{} is not an output buffer: only outputs are written", b.buffer));
        }
        if (b.rows > 1 && b.row_stride < b.row_bytes as u64)
            || (b.planes > 1 && b.plane_stride < (b.rows as u64).saturating_mul(b.row_stride.max(b.row_bytes as u64)))
        {
            return Err(format!("the box's rows or planes overlap ({b})"));
        }
        let end = b.end().ok_or("the box overflows")?;
        if end > decl.bytes {
            return Err(format!("the box {b} ends at byte {end}, past b{}'s {} bytes", b.buffer, decl.bytes));
        }
        Ok(())
    }

    fn channel(&self, ch: u8) -> Check<usize> {
        if (ch as u32) < self.dev.dma_channels {
            Ok(ch as usize)
        } else {
            Err(format!("channel {ch} does not exist (the device has {})", self.dev.dma_channels))
        }
    }

    fn command(&mut self, index: usize, c: &Command) -> Check<bool> {
        match c {
            Command::DmaLoad { ch, src, sram } => {
                let chi = self.channel(*ch)?;
                self.dram(src, false)?;
                let r = self.sram(*sram as u64, src.bytes(), "the destination")?;
                if let Some(p) = self.pending.iter().find(|p| !p.load && boxes_overlap(&p.dram, src)) {
                    return Err(format!("reads DRAM b{} that dma.store {} is still writing", src.buffer, p.index));
                }
                self.writes(&[r], "the load", false)?;
                self.pending.push(Pending { ch: *ch, seq: self.issued[chi], index, load: true, sram: r, dram: *src });
                self.issued[chi] += 1;
            }
            Command::DmaStore { ch, sram, dst } => {
                let chi = self.channel(*ch)?;
                self.dram(dst, true)?;
                let r = self.sram(*sram as u64, dst.bytes(), "the source")?;
                self.reads(&[r], "the store")?;
                if let Some(p) = self.pending.iter().find(|p| boxes_overlap(&p.dram, dst)) {
                    return Err(format!("writes DRAM b{} that dma {} is still using", dst.buffer, p.index));
                }
                self.pending.push(Pending { ch: *ch, seq: self.issued[chi], index, load: false, sram: r, dram: *dst });
                self.issued[chi] += 1;
            }
            Command::Wait { ch, count } => {
                let chi = self.channel(*ch)?;
                if *count > self.issued[chi] {
                    return Err(format!(
                        "waits for {count} transfers on ch{ch}, only {} were issued: it would never finish",
                        self.issued[chi]
                    ));
                }
                self.completed[chi] = self.completed[chi].max(*count);
                let done = self.completed[chi];
                let mut still = Vec::new();
                for p in std::mem::take(&mut self.pending) {
                    if p.ch == *ch && p.seq < done {
                        if p.load {
                            self.written[p.sram.start as usize..p.sram.end as usize].fill(true);
                        }
                    } else {
                        still.push(p);
                    }
                }
                self.pending = still;
            }
            Command::MatMul { a, b, acc, acc_stride, m, n, k, a_zero, b_zero, accumulate } => {
                if *m == 0 || *n == 0 || *k == 0 {
                    return Err(format!("an empty product {m}x{n}x{k}"));
                }
                if !a.ty.is_int8_or_4() || !b.ty.is_int8_or_4() {
                    return Err(format!(
                        "operands are {} and {}: the MAC array multiplies 8- and 4-bit integers",
                        a.ty.name(),
                        b.ty.name()
                    ));
                }
                let four = |t: ElemType| matches!(t, ElemType::U4 | ElemType::I4);
                if four(a.ty) || (four(b.ty) && !self.dev.int4_weights) {
                    return Err("4-bit operands: the device reads 4-bit weights only where its profile says so, and never 4-bit activations".into());
                }
                let mut reads = self.operand(a, *m, *k, "a")?;
                reads.extend(self.operand(b, *k, *n, "b")?);
                reads.extend(self.param(a_zero, *m, true, "a's zero point")?);
                reads.extend(self.param(b_zero, *n, true, "b's zero point")?);
                let accr = self.matrix(*acc, *acc_stride, *m, *n as u64 * 4, "the accumulator")?;
                if *accumulate {
                    reads.extend(accr.iter().copied());
                }
                self.reads(&reads, "the matmul")?;
                self.writes(&accr, "the matmul", true)?;
            }
            Command::Requant { acc, acc_stride, dst, m, n, scale, offset } => {
                if *m == 0 || *n == 0 {
                    return Err("an empty requantization".into());
                }
                if !matches!(dst.ty, ElemType::U8 | ElemType::I8 | ElemType::F32) {
                    return Err(format!("the output stage writes u8, i8 or f32, not {}", dst.ty.name()));
                }
                if matches!(offset, Param::Fixed { .. } | Param::Sram { ty: ElemType::Fixed, .. }) {
                    return Err("the offset is f32, not fixed-point".into());
                }
                let mut reads = self.matrix(*acc, *acc_stride, *m, *n as u64 * 4, "the accumulator")?;
                reads.extend(self.param(scale, *n, false, "the scale")?);
                reads.extend(self.param(offset, *n, false, "the offset")?);
                self.reads(&reads, "the requant")?;
                let w = self.operand(dst, *m, *n, "the destination")?;
                self.writes(&w, "the requant", true)?;
            }
            Command::Lut { src, dst, table, m, n } => {
                if *m == 0 || *n == 0 {
                    return Err("an empty lookup".into());
                }
                if !matches!(src.ty, ElemType::U8 | ElemType::I8) || !matches!(dst.ty, ElemType::U8 | ElemType::I8) {
                    return Err("lookups map 8-bit elements to 8-bit elements".into());
                }
                let mut reads = self.operand(src, *m, *n, "the source")?;
                reads.push(self.sram(*table as u64, 256, "the table")?);
                self.reads(&reads, "the lut")?;
                let w = self.operand(dst, *m, *n, "the destination")?;
                self.writes(&w, "the lut", true)?;
            }
            Command::Stop => {
                if let Some(p) = self.pending.iter().find(|p| !p.load) {
                    return Err(format!("the stream stops with dma.store {} unfinished: wait for it", p.index));
                }
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Whether two (checked) boxes share a byte: each row of the smaller against the other's rows.
fn boxes_overlap(x: &DramBox, y: &DramBox) -> bool {
    if x.buffer != y.buffer {
        return false;
    }
    let (Some(xe), Some(ye)) = (x.end(), y.end()) else { return true };
    if xe <= y.offset || ye <= x.offset {
        return false;
    }
    let (small, big) = if x.planes as u64 * x.rows as u64 <= y.planes as u64 * y.rows as u64 { (x, y) } else { (y, x) };
    let row_hits = |s: u64, e: u64| {
        (0..big.planes as u64).any(|p| {
            let base = big.offset + p * big.plane_stride;
            let rb = big.row_bytes as u64;
            if e <= base {
                return false;
            }
            // The first row that ends after `s`.
            let r = if s + 1 > base + rb { (s + 1 - base - rb).div_ceil(big.row_stride.max(1)) } else { 0 };
            r < big.rows as u64 && base + r * big.row_stride < e
        })
    };
    (0..small.planes as u64).any(|p| {
        (0..small.rows as u64).any(|r| {
            let s = small.offset + p * small.plane_stride + r * small.row_stride;
            row_hits(s, s + small.row_bytes as u64)
        })
    })
}

/// Checks a stream against a device before it runs.
pub fn validate(stream: &Stream, dev: &Device) -> Result<Validated, ValidationError> {
    let ch = dev.dma_channels as usize;
    let mut v = V {
        dev,
        stream,
        written: vec![false; dev.sram_bytes as usize],
        pending: Vec::new(),
        issued: vec![0; ch],
        completed: vec![0; ch],
        peak: 0,
    };
    for (index, c) in stream.commands.iter().enumerate() {
        let err = |message: String| ValidationError { index, op: op_name(c), message };
        if v.command(index, c).map_err(err)? {
            if index + 1 != stream.commands.len() {
                return Err(err(format!("{} commands after stop", stream.commands.len() - index - 1)));
            }
            return Ok(Validated { sram_peak: v.peak as u32 });
        }
    }
    Err(ValidationError {
        index: stream.commands.len(),
        op: "end",
        message: "the stream does not end with stop".into(),
    })
}
