//! The NPU's command stream: its types, binary encoding (versioned, little-endian), decoder and
//! text disassembly (`tessera ir MODEL --target npu --emit npu-asm`).
//!
//! A stream declares the DRAM buffers it reads and writes (inputs, outputs, constants such as
//! repacked weights) and lists commands the NPU's front end issues in order:
//! - `dma.load` / `dma.store` move a strided box (planes x rows x row bytes) between a DRAM
//!   buffer and a dense SRAM range on one DMA channel; they run asynchronously, each channel
//!   in order, all channels sharing DRAM bandwidth;
//! - `wait chN >= c` stalls the front end until channel N has completed c transfers: the
//!   semaphore that orders DMA and compute (double buffering);
//! - `matmul`, `requant` and `lut` run on the compute units and finish before the next
//!   command issues.
//!
//! Decoding checks only the encoding; [`crate::validate`] checks what the stream does.

use std::fmt::{self, Write as _};

pub const MAGIC: [u8; 4] = *b"TNPU";
pub const VERSION: u16 = 1;

/// What a DRAM buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferRole {
    /// The kernel's operand `n`, written by the host before the stream runs.
    Input(u16),
    /// The kernel's result `n`, read by the host after the stream stops.
    Output(u16),
    /// Data the compiler made (repacked weights, parameter vectors), shipped with the stream.
    Constant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferDecl {
    pub role: BufferRole,
    pub bytes: u64,
}

/// Element types in SRAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    U8,
    I8,
    U4,
    I4,
    I32,
    F32,
    /// A fixed-point scale: i32 multiplier then i32 shift, meaning `multiplier * 2^-shift`.
    Fixed,
}

impl ElemType {
    /// Bits per element.
    pub fn bits(self) -> u32 {
        match self {
            ElemType::U4 | ElemType::I4 => 4,
            ElemType::U8 | ElemType::I8 => 8,
            ElemType::I32 | ElemType::F32 => 32,
            ElemType::Fixed => 64,
        }
    }

    /// Bytes `n` consecutive elements occupy (4-bit types two per byte).
    pub fn bytes(self, n: u64) -> u64 {
        (n * self.bits() as u64).div_ceil(8)
    }

    pub fn is_int8_or_4(self) -> bool {
        matches!(self, ElemType::U8 | ElemType::I8 | ElemType::U4 | ElemType::I4)
    }

    fn code(self) -> u8 {
        match self {
            ElemType::U8 => 0,
            ElemType::I8 => 1,
            ElemType::U4 => 2,
            ElemType::I4 => 3,
            ElemType::I32 => 4,
            ElemType::F32 => 5,
            ElemType::Fixed => 6,
        }
    }

    fn from_code(c: u8) -> Option<ElemType> {
        Some(match c {
            0 => ElemType::U8,
            1 => ElemType::I8,
            2 => ElemType::U4,
            3 => ElemType::I4,
            4 => ElemType::I32,
            5 => ElemType::F32,
            6 => ElemType::Fixed,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ElemType::U8 => "u8",
            ElemType::I8 => "i8",
            ElemType::U4 => "u4",
            ElemType::I4 => "i4",
            ElemType::I32 => "i32",
            ElemType::F32 => "f32",
            ElemType::Fixed => "fixed",
        }
    }
}

/// A 2-D matrix in SRAM: element `(r, c)` is at `addr + r * stride` and element `c` of that
/// row (4-bit types: byte `c / 2`, low nibble for even `c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    pub addr: u32,
    /// Bytes from one row to the next.
    pub stride: u32,
    pub ty: ElemType,
}

/// A per-kernel parameter (zero point, scale, offset): absent, an immediate, or in SRAM, one
/// value for all (`vector: false`) or one per row or column of the tile (`vector: true`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Param {
    None,
    Int(i32),
    Float(f32),
    /// `multiplier * 2^-shift`.
    Fixed {
        multiplier: i32,
        shift: i8,
    },
    Sram {
        addr: u32,
        ty: ElemType,
        vector: bool,
    },
}

/// A strided box in a DRAM buffer: `planes` of `rows` of `row_bytes` contiguous bytes. The SRAM
/// side of a transfer is dense (`planes * rows * row_bytes` bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DramBox {
    pub buffer: u16,
    pub offset: u64,
    pub row_bytes: u32,
    pub rows: u32,
    pub row_stride: u64,
    pub planes: u32,
    pub plane_stride: u64,
}

impl DramBox {
    /// A contiguous range.
    pub fn linear(buffer: u16, offset: u64, bytes: u32) -> DramBox {
        DramBox { buffer, offset, row_bytes: bytes, rows: 1, row_stride: bytes as u64, planes: 1, plane_stride: 0 }
    }

    /// `rows` rows of `row_bytes`, `row_stride` apart.
    pub fn rows(buffer: u16, offset: u64, rows: u32, row_bytes: u32, row_stride: u64) -> DramBox {
        DramBox { buffer, offset, row_bytes, rows, row_stride, planes: 1, plane_stride: 0 }
    }

    /// Bytes moved (saturating: a box that large fails validation anyway).
    pub fn bytes(&self) -> u64 {
        (self.planes as u64).saturating_mul(self.rows as u64).saturating_mul(self.row_bytes as u64)
    }

    /// One past the last DRAM byte touched (None on overflow).
    pub fn end(&self) -> Option<u64> {
        if self.bytes() == 0 {
            return Some(self.offset);
        }
        let last_plane = (self.planes as u64 - 1).checked_mul(self.plane_stride)?;
        let last_row = (self.rows as u64 - 1).checked_mul(self.row_stride)?;
        self.offset.checked_add(last_plane)?.checked_add(last_row)?.checked_add(self.row_bytes as u64)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    DmaLoad {
        ch: u8,
        src: DramBox,
        sram: u32,
    },
    DmaStore {
        ch: u8,
        sram: u32,
        dst: DramBox,
    },
    /// Stall until channel `ch` has completed `count` transfers since the stream started.
    Wait {
        ch: u8,
        count: u32,
    },
    /// `acc[m x n] (+)= (a - a_zero)[m x k] @ (b - b_zero)[k x n]` in i32 (wrapping); `acc` is
    /// dense i32 rows `acc_stride` bytes apart. `a_zero` is one value or one per row, `b_zero`
    /// one value or one per column.
    MatMul {
        a: Operand,
        b: Operand,
        acc: u32,
        acc_stride: u32,
        m: u32,
        n: u32,
        k: u32,
        a_zero: Param,
        b_zero: Param,
        accumulate: bool,
    },
    /// The output stage: `y = f32(acc) * scale + offset` in f32 (each step rounded as IEEE
    /// f32; `scale` and `offset` one value or one per column; `Param::None` skips the step);
    /// `dst` of type f32 stores `y`, of u8 or i8 `saturate(round_half_even(y))` (NaN gives 0).
    Requant {
        acc: u32,
        acc_stride: u32,
        dst: Operand,
        m: u32,
        n: u32,
        scale: Param,
        offset: Param,
    },
    /// `dst[i] = table[src[i] as u8]`: a 256-entry table of the destination's type (8-bit).
    Lut {
        src: Operand,
        dst: Operand,
        table: u32,
        m: u32,
        n: u32,
    },
    Stop,
}

/// A command stream.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Stream {
    pub buffers: Vec<BufferDecl>,
    pub commands: Vec<Command>,
}

/// Why bytes are not a command stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not an NPU command stream (no TNPU magic)")]
    Magic,
    #[error("command stream version {0}, this simulator reads version {VERSION}")]
    Version(u16),
    #[error("command stream truncated at byte {offset}: {what} needs {need} more bytes")]
    Truncated { offset: usize, what: &'static str, need: usize },
    #[error("byte {offset}: {what}")]
    Invalid { offset: usize, what: String },
    #[error("{0} bytes after the last command")]
    Trailing(usize),
}

// ---- encoding ----

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v)
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes())
    }
    fn operand(&mut self, o: &Operand) {
        self.u32(o.addr);
        self.u32(o.stride);
        self.u8(o.ty.code());
    }
    fn param(&mut self, p: &Param) {
        match *p {
            Param::None => self.u8(0),
            Param::Int(v) => {
                self.u8(1);
                self.u32(v as u32)
            }
            Param::Float(v) => {
                self.u8(2);
                self.u32(v.to_bits())
            }
            Param::Fixed { multiplier, shift } => {
                self.u8(3);
                self.u32(multiplier as u32);
                self.u8(shift as u8)
            }
            Param::Sram { addr, ty, vector } => {
                self.u8(4);
                self.u32(addr);
                self.u8(ty.code());
                self.u8(vector as u8)
            }
        }
    }
    fn dram(&mut self, b: &DramBox) {
        self.u16(b.buffer);
        self.u64(b.offset);
        self.u32(b.row_bytes);
        self.u32(b.rows);
        self.u64(b.row_stride);
        self.u32(b.planes);
        self.u64(b.plane_stride);
    }
}

const OP_LOAD: u8 = 1;
const OP_STORE: u8 = 2;
const OP_WAIT: u8 = 3;
const OP_MATMUL: u8 = 4;
const OP_REQUANT: u8 = 5;
const OP_LUT: u8 = 6;
const OP_STOP: u8 = 0xff;

impl Stream {
    /// The binary encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W(Vec::new());
        w.0.extend_from_slice(&MAGIC);
        w.u16(VERSION);
        w.u16(0);
        w.u32(self.buffers.len() as u32);
        w.u32(self.commands.len() as u32);
        for b in &self.buffers {
            let (role, index) = match b.role {
                BufferRole::Input(i) => (0, i),
                BufferRole::Output(i) => (1, i),
                BufferRole::Constant => (2, 0),
            };
            w.u8(role);
            w.u16(index);
            w.u64(b.bytes);
        }
        for c in &self.commands {
            match c {
                Command::DmaLoad { ch, src, sram } => {
                    w.u8(OP_LOAD);
                    w.u8(*ch);
                    w.dram(src);
                    w.u32(*sram);
                }
                Command::DmaStore { ch, sram, dst } => {
                    w.u8(OP_STORE);
                    w.u8(*ch);
                    w.u32(*sram);
                    w.dram(dst);
                }
                Command::Wait { ch, count } => {
                    w.u8(OP_WAIT);
                    w.u8(*ch);
                    w.u32(*count);
                }
                Command::MatMul { a, b, acc, acc_stride, m, n, k, a_zero, b_zero, accumulate } => {
                    w.u8(OP_MATMUL);
                    w.operand(a);
                    w.operand(b);
                    w.u32(*acc);
                    w.u32(*acc_stride);
                    w.u32(*m);
                    w.u32(*n);
                    w.u32(*k);
                    w.param(a_zero);
                    w.param(b_zero);
                    w.u8(*accumulate as u8);
                }
                Command::Requant { acc, acc_stride, dst, m, n, scale, offset } => {
                    w.u8(OP_REQUANT);
                    w.u32(*acc);
                    w.u32(*acc_stride);
                    w.operand(dst);
                    w.u32(*m);
                    w.u32(*n);
                    w.param(scale);
                    w.param(offset);
                }
                Command::Lut { src, dst, table, m, n } => {
                    w.u8(OP_LUT);
                    w.operand(src);
                    w.operand(dst);
                    w.u32(*table);
                    w.u32(*m);
                    w.u32(*n);
                }
                Command::Stop => w.u8(OP_STOP),
            }
        }
        w.0
    }

    /// Decodes a stream; every malformed or truncated input is a [`DecodeError`].
    pub fn decode(bytes: &[u8]) -> Result<Stream, DecodeError> {
        let mut r = R { b: bytes, at: 0 };
        if r.take(4, "the magic").map_err(|_| DecodeError::Magic)? != MAGIC {
            return Err(DecodeError::Magic);
        }
        let version = r.u16("the version")?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        r.u16("the header")?;
        let n_buffers = r.u32("the buffer count")? as usize;
        let n_commands = r.u32("the command count")? as usize;
        // Counts are checked against what is left before anything is allocated for them.
        if n_buffers > r.left() / 11 {
            return Err(DecodeError::Truncated { offset: r.at, what: "the buffer table", need: n_buffers * 11 });
        }
        if n_commands > r.left() {
            return Err(DecodeError::Truncated { offset: r.at, what: "the commands", need: n_commands });
        }
        let mut s = Stream { buffers: Vec::with_capacity(n_buffers), commands: Vec::with_capacity(n_commands) };
        for _ in 0..n_buffers {
            let at = r.at;
            let role = r.u8("a buffer's role")?;
            let index = r.u16("a buffer's index")?;
            let bytes = r.u64("a buffer's size")?;
            let role = match role {
                0 => BufferRole::Input(index),
                1 => BufferRole::Output(index),
                2 => BufferRole::Constant,
                x => return Err(DecodeError::Invalid { offset: at, what: format!("unknown buffer role {x}") }),
            };
            s.buffers.push(BufferDecl { role, bytes });
        }
        for _ in 0..n_commands {
            let at = r.at;
            let c = match r.u8("an opcode")? {
                OP_LOAD => Command::DmaLoad { ch: r.u8("dma.load")?, src: r.dram()?, sram: r.u32("dma.load")? },
                OP_STORE => Command::DmaStore { ch: r.u8("dma.store")?, sram: r.u32("dma.store")?, dst: r.dram()? },
                OP_WAIT => Command::Wait { ch: r.u8("wait")?, count: r.u32("wait")? },
                OP_MATMUL => Command::MatMul {
                    a: r.operand()?,
                    b: r.operand()?,
                    acc: r.u32("matmul")?,
                    acc_stride: r.u32("matmul")?,
                    m: r.u32("matmul")?,
                    n: r.u32("matmul")?,
                    k: r.u32("matmul")?,
                    a_zero: r.param()?,
                    b_zero: r.param()?,
                    accumulate: r.flag("matmul's accumulate flag")?,
                },
                OP_REQUANT => Command::Requant {
                    acc: r.u32("requant")?,
                    acc_stride: r.u32("requant")?,
                    dst: r.operand()?,
                    m: r.u32("requant")?,
                    n: r.u32("requant")?,
                    scale: r.param()?,
                    offset: r.param()?,
                },
                OP_LUT => Command::Lut {
                    src: r.operand()?,
                    dst: r.operand()?,
                    table: r.u32("lut")?,
                    m: r.u32("lut")?,
                    n: r.u32("lut")?,
                },
                OP_STOP => Command::Stop,
                x => return Err(DecodeError::Invalid { offset: at, what: format!("unknown opcode {x:#04x}") }),
            };
            s.commands.push(c);
        }
        if r.left() > 0 {
            return Err(DecodeError::Trailing(r.left()));
        }
        Ok(s)
    }
}

struct R<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> R<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.at
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.left() < n {
            return Err(DecodeError::Truncated { offset: self.at, what, need: n - self.left() });
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let s = self.take(8, what)?;
        let mut a = [0; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn flag(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        let at = self.at;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            x => Err(DecodeError::Invalid { offset: at, what: format!("{what} is {x}, not 0 or 1") }),
        }
    }
    fn ty(&mut self) -> Result<ElemType, DecodeError> {
        let at = self.at;
        let c = self.u8("an element type")?;
        ElemType::from_code(c)
            .ok_or_else(|| DecodeError::Invalid { offset: at, what: format!("unknown element type {c}") })
    }
    fn operand(&mut self) -> Result<Operand, DecodeError> {
        Ok(Operand { addr: self.u32("an operand")?, stride: self.u32("an operand")?, ty: self.ty()? })
    }
    fn param(&mut self) -> Result<Param, DecodeError> {
        let at = self.at;
        Ok(match self.u8("a parameter")? {
            0 => Param::None,
            1 => Param::Int(self.u32("a parameter")? as i32),
            2 => Param::Float(f32::from_bits(self.u32("a parameter")?)),
            3 => Param::Fixed { multiplier: self.u32("a parameter")? as i32, shift: self.u8("a parameter")? as i8 },
            4 => Param::Sram { addr: self.u32("a parameter")?, ty: self.ty()?, vector: self.flag("a parameter")? },
            x => return Err(DecodeError::Invalid { offset: at, what: format!("unknown parameter kind {x}") }),
        })
    }
    fn dram(&mut self) -> Result<DramBox, DecodeError> {
        Ok(DramBox {
            buffer: self.u16("a DRAM box")?,
            offset: self.u64("a DRAM box")?,
            row_bytes: self.u32("a DRAM box")?,
            rows: self.u32("a DRAM box")?,
            row_stride: self.u64("a DRAM box")?,
            planes: self.u32("a DRAM box")?,
            plane_stride: self.u64("a DRAM box")?,
        })
    }
}

// ---- disassembly ----

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Param::None => write!(f, "none"),
            Param::Int(v) => write!(f, "{v}"),
            Param::Float(v) => write!(f, "{v:?}"),
            Param::Fixed { multiplier, shift } => write!(f, "{multiplier}>>{shift}"),
            Param::Sram { addr, ty, vector } => {
                write!(f, "{}[{addr:#07x}]{}", ty.name(), if *vector { "[..]" } else { "" })
            }
        }
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{:#07x}, stride {}]", self.ty.name(), self.addr, self.stride)
    }
}

impl fmt::Display for DramBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}+{}", self.buffer, self.offset)?;
        if self.planes == 1 && self.rows == 1 {
            write!(f, " ({} B)", self.row_bytes)
        } else if self.planes == 1 {
            write!(f, " ({} x {} B, stride {})", self.rows, self.row_bytes, self.row_stride)
        } else {
            write!(
                f,
                " ({} x {} x {} B, strides {}, {})",
                self.planes, self.rows, self.row_bytes, self.plane_stride, self.row_stride
            )
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::DmaLoad { ch, src, sram } => write!(f, "dma.load  ch{ch} {src} -> sram[{sram:#07x}]"),
            Command::DmaStore { ch, sram, dst } => write!(f, "dma.store ch{ch} sram[{sram:#07x}] -> {dst}"),
            Command::Wait { ch, count } => write!(f, "wait      ch{ch} >= {count}"),
            Command::MatMul { a, b, acc, acc_stride, m, n, k, a_zero, b_zero, accumulate } => write!(
                f,
                "matmul    {m}x{n}x{k} acc[{acc:#07x}, stride {acc_stride}] {} a {a} - {a_zero}, b {b} - {b_zero}",
                if *accumulate { "+=" } else { "=" }
            ),
            Command::Requant { acc, acc_stride, dst, m, n, scale, offset } => {
                write!(f, "requant   {m}x{n} acc[{acc:#07x}, stride {acc_stride}] * {scale} + {offset} -> {dst}")
            }
            Command::Lut { src, dst, table, m, n } => write!(f, "lut       {m}x{n} {src} -> {dst} table[{table:#07x}]"),
            Command::Stop => write!(f, "stop"),
        }
    }
}

impl Stream {
    /// The text disassembly: a header line, one line per buffer, one numbered line per command.
    pub fn disassemble(&self) -> String {
        let mut out = String::new();
        let _ =
            writeln!(out, "; npu stream v{VERSION}: {} buffers, {} commands", self.buffers.len(), self.commands.len());
        for (i, b) in self.buffers.iter().enumerate() {
            let role = match b.role {
                BufferRole::Input(n) => format!("input {n}"),
                BufferRole::Output(n) => format!("output {n}"),
                BufferRole::Constant => "constant".into(),
            };
            let _ = writeln!(out, "buffer b{i}: {role}, {} bytes", b.bytes);
        }
        let width = self.commands.len().max(1).to_string().len();
        for (i, c) in self.commands.iter().enumerate() {
            let _ = writeln!(out, "{i:>width$}  {c}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stream {
        let b = DramBox { buffer: 0, offset: 8, row_bytes: 16, rows: 4, row_stride: 32, planes: 2, plane_stride: 256 };
        Stream {
            buffers: vec![
                BufferDecl { role: BufferRole::Input(0), bytes: 1024 },
                BufferDecl { role: BufferRole::Output(0), bytes: 512 },
                BufferDecl { role: BufferRole::Constant, bytes: 64 },
            ],
            commands: vec![
                Command::DmaLoad { ch: 0, src: b, sram: 0 },
                Command::Wait { ch: 0, count: 1 },
                Command::MatMul {
                    a: Operand { addr: 0, stride: 16, ty: ElemType::U8 },
                    b: Operand { addr: 128, stride: 2, ty: ElemType::I4 },
                    acc: 256,
                    acc_stride: 16,
                    m: 4,
                    n: 4,
                    k: 16,
                    a_zero: Param::Sram { addr: 4096, ty: ElemType::U8, vector: false },
                    b_zero: Param::Int(-3),
                    accumulate: true,
                },
                Command::Requant {
                    acc: 256,
                    acc_stride: 16,
                    dst: Operand { addr: 512, stride: 4, ty: ElemType::I8 },
                    m: 4,
                    n: 4,
                    scale: Param::Fixed { multiplier: 12345, shift: 20 },
                    offset: Param::Float(-0.5),
                },
                Command::Lut {
                    src: Operand { addr: 512, stride: 4, ty: ElemType::I8 },
                    dst: Operand { addr: 600, stride: 4, ty: ElemType::I8 },
                    table: 700,
                    m: 4,
                    n: 4,
                },
                Command::DmaStore { ch: 1, sram: 600, dst: DramBox::linear(1, 0, 16) },
                Command::Wait { ch: 1, count: 1 },
                Command::Stop,
            ],
        }
    }

    #[test]
    fn streams_round_trip_through_bytes() {
        let s = sample();
        assert_eq!(Stream::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn every_truncation_and_every_byte_flip_is_an_error_or_a_stream() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(Stream::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            for x in [0u8, 1, 7, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= x;
                let _ = Stream::decode(&b);
            }
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Stream::decode(&long), Err(DecodeError::Trailing(1)));
        let mut v2 = bytes;
        v2[4] = 2;
        assert_eq!(Stream::decode(&v2), Err(DecodeError::Version(2)));
        // A count far beyond the bytes is refused before anything is allocated for it.
        let mut huge = sample().encode();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Stream::decode(&huge), Err(DecodeError::Truncated { .. })));
    }
}
