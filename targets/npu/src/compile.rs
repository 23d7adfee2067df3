//! The kernel compiler: an integer matrix product (with its zero points and, optionally, the
//! output stage that requantizes or dequantizes it) tiled to fit SRAM and emitted as a
//! double-buffered command stream.
//!
//! Tiles are `tm x tn` outputs (multiples of the MAC array) over `tk` of the reduction (all of
//! it when it fits); the loop order (rows or columns outer, the reduction innermost) and the tile
//! shape are chosen by running each candidate through the simulator's timing model. While a tile
//! computes, the next tile's operands load on channel 0 and the previous tile's results store on
//! channel 1. Constant weights are repacked at compile time into the order they stream, one
//! contiguous block per tile (4-bit weights stay 4-bit), so each weight load is one burst run.

use crate::device::Device;
use crate::sim::{self, Stats};
use crate::stream::{BufferDecl, BufferRole, Command, DramBox, ElemType, Operand, Param, Stream};
use crate::validate::{validate, Validated};

/// A parameter's source.
#[derive(Clone, Debug, PartialEq)]
pub enum Src {
    None,
    Int(i32),
    Float(f32),
    /// Known at compile time: its bytes as the NPU reads them (`ty` i32, f32 or fixed).
    Const {
        ty: ElemType,
        bytes: Vec<u8>,
        vector: bool,
    },
    /// Given at run time in type `ty` (u8, i8, i32 or f32): one value, or one per row or column.
    Input {
        ty: ElemType,
        vector: bool,
    },
}

/// The output stage: `y = f32(acc) * scale + offset`, stored as `out` (f32, or u8/i8 rounded
/// half to even and saturated).
#[derive(Clone, Debug, PartialEq)]
pub struct Epilogue {
    pub scale: Src,
    pub offset: Src,
    pub out: ElemType,
}

/// `batch` products `(a - a_zero)[m x k] @ (b - b_zero)[k x n]`.
#[derive(Clone, Debug, PartialEq)]
pub struct MatMulKernel {
    pub batch: u32,
    pub m: u32,
    pub k: u32,
    pub n: u32,
    pub a_ty: ElemType,
    pub b_ty: ElemType,
    /// `b`'s packed bytes (`[b batches][k][n]`, the IR's layout) when it is a constant.
    pub b_const: Option<Vec<u8>>,
    /// Whether `b` has one matrix per batch (else one shared by all).
    pub b_batched: bool,
    /// One value, or one per row of `a`.
    pub a_zero: Src,
    /// One value, or one per column of `b`.
    pub b_zero: Src,
    pub epilogue: Option<Epilogue>,
}

/// What feeds an input buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    A,
    B,
    AZero,
    BZero,
    Scale,
    Offset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Row tiles outer: each row tile of `a` loads once.
    RowsOuter,
    /// Column tiles outer: each weight tile loads once per batch.
    ColumnsOuter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    pub tm: u32,
    pub tn: u32,
    pub tk: u32,
    pub order: Order,
}

/// A compiled kernel: its stream (validated), the constant buffers' bytes, and what feeds
/// each input buffer (`inputs[i]` feeds `BufferRole::Input(i)`).
#[derive(Clone, Debug)]
pub struct Compiled {
    pub stream: Stream,
    pub checked: Validated,
    pub constants: Vec<(usize, Vec<u8>)>,
    pub inputs: Vec<Role>,
    pub output_buffer: usize,
    pub tiling: Tiling,
    /// The simulator's timing of the chosen tiling.
    pub estimate: Stats,
}

/// Why the NPU does not take a kernel; the partitioner places it elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Decline(pub String);

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

struct Param_ {
    role: Role,
    src: Src,
    len: u32,
}

struct Layout {
    params: Vec<(Role, u32)>,
    a: [u32; 2],
    b: [u32; 2],
    acc: [u32; 2],
    out: [u32; 2],
}

impl MatMulKernel {
    fn out_ty(&self) -> ElemType {
        self.epilogue.as_ref().map_or(ElemType::I32, |e| e.out)
    }

    fn params(&self) -> Vec<Param_> {
        let mut v = vec![
            Param_ { role: Role::AZero, src: self.a_zero.clone(), len: self.m },
            Param_ { role: Role::BZero, src: self.b_zero.clone(), len: self.n },
        ];
        if let Some(e) = &self.epilogue {
            v.push(Param_ { role: Role::Scale, src: e.scale.clone(), len: self.n });
            v.push(Param_ { role: Role::Offset, src: e.offset.clone(), len: self.n });
        }
        v
    }

    fn check(&self, dev: &Device) -> Result<(), Decline> {
        if self.m == 0 || self.n == 0 || self.k == 0 || self.batch == 0 {
            return Err(Decline(format!("an empty product ({}x{}x{})", self.m, self.k, self.n)));
        }
        if !matches!(self.a_ty, ElemType::U8 | ElemType::I8) {
            return Err(Decline(format!("{} activations: the MAC array reads 8-bit activations", self.a_ty.name())));
        }
        match self.b_ty {
            ElemType::U8 | ElemType::I8 => {}
            ElemType::U4 | ElemType::I4 if !dev.int4_weights => {
                return Err(Decline(format!(
                    "{} weights: this device's profile has no 4-bit weights",
                    self.b_ty.name()
                )))
            }
            ElemType::U4 | ElemType::I4 if self.b_const.is_none() => {
                return Err(Decline(
                    "4-bit weights computed at run time: only constant 4-bit weights stream packed".into(),
                ))
            }
            ElemType::U4 | ElemType::I4 => {}
            t => return Err(Decline(format!("{} weights: the MAC array reads 8- and 4-bit weights", t.name()))),
        }
        if let Some(b) = &self.b_const {
            let want =
                self.b_ty.bytes((if self.b_batched { self.batch } else { 1 }) as u64 * self.k as u64 * self.n as u64);
            if b.len() as u64 != want {
                return Err(Decline(format!("the constant weight has {} bytes, its shape needs {want}", b.len())));
            }
        }
        for p in self.params() {
            let (int, what) = match p.role {
                Role::AZero | Role::BZero => (true, "a zero point"),
                _ => (false, "a scale or offset"),
            };
            match &p.src {
                Src::Input { ty, vector } => {
                    let ok = if int {
                        matches!(ty, ElemType::U8 | ElemType::I8 | ElemType::I32)
                    } else {
                        *ty == ElemType::F32
                    };
                    if !ok {
                        return Err(Decline(format!("{what} of type {} given at run time", ty.name())));
                    }
                    if *vector && p.role == Role::AZero && self.batch > 1 {
                        return Err(Decline("per-row zero points of a batched product".into()));
                    }
                }
                Src::Const { vector: true, .. } if p.role == Role::AZero && self.batch > 1 => {
                    return Err(Decline("per-row zero points of a batched product".into()))
                }
                _ => {}
            }
        }
        if let Some(e) = &self.epilogue {
            if !matches!(e.out, ElemType::U8 | ElemType::I8 | ElemType::F32) {
                return Err(Decline(format!("the output stage writes u8, i8 or f32, not {}", e.out.name())));
            }
        }
        let fits_u32 = |x: u64| x < u32::MAX as u64;
        if !fits_u32(self.m as u64 * self.k as u64 * self.batch as u64)
            || !fits_u32(self.batch as u64 * self.m as u64 * self.n as u64 * 4)
        {
            return Err(Decline("a product beyond the NPU's 4 GiB address space".into()));
        }
        Ok(())
    }

    /// SRAM placement of a tiling, or None when it does not fit.
    fn layout(&self, dev: &Device, t: Tiling) -> Option<Layout> {
        let sizes_params: Vec<(Role, u64)> = self
            .params()
            .iter()
            .filter_map(|p| {
                let bytes = match &p.src {
                    Src::Const { ty, vector, .. } | Src::Input { ty, vector } => {
                        ty.bytes(if *vector { p.len as u64 } else { 1 })
                    }
                    _ => return None,
                };
                Some((p.role, bytes))
            })
            .collect();
        let a = t.tm as u64 * t.tk as u64;
        let b = t.tk as u64 * self.b_ty.bytes(t.tn as u64);
        let acc = t.tm as u64 * t.tn as u64 * 4;
        let out = if self.epilogue.is_some() { t.tm as u64 * self.out_ty().bytes(t.tn as u64) } else { 0 };
        let regions = [a, a, b, b, acc, acc, out, out];
        for al in [dev.bank_bytes() as u64, 64] {
            let mut at = 0u64;
            let mut params = Vec::new();
            for (role, bytes) in &sizes_params {
                params.push((*role, at as u32));
                at = align(at + bytes, 64);
            }
            let mut addr = [0u32; 8];
            for (i, r) in regions.iter().enumerate() {
                at = align(at, al);
                addr[i] = at as u32;
                at += r;
            }
            if at <= dev.sram_bytes as u64 {
                return Some(Layout {
                    params,
                    a: [addr[0], addr[1]],
                    b: [addr[2], addr[3]],
                    acc: [addr[4], addr[5]],
                    out: [addr[6], addr[7]],
                });
            }
        }
        None
    }

    /// Candidate tilings: tiles of 1, 2, 4 or 8 MAC arrays a side, the whole reduction or
    /// halves of it down to 64.
    fn candidates(&self, dev: &Device) -> Vec<Tiling> {
        let side = |total: u32, unit: u32| -> Vec<u32> {
            let mut v: Vec<u32> = [1, 2, 4, 8].iter().map(|f| (unit * f).min(total)).collect();
            v.dedup();
            v
        };
        // The whole reduction, then halves (rounded up to 64) down to 64.
        let mut ks = vec![self.k];
        while let Some(&tk) = ks.last().filter(|&&tk| tk > 64) {
            ks.push(align((tk / 2) as u64, 64) as u32);
        }
        let mut out = Vec::new();
        for &tm in &side(self.m, dev.mac_rows) {
            for &tn in &side(self.n, dev.mac_cols) {
                for order in [Order::RowsOuter, Order::ColumnsOuter] {
                    // The largest reduction that fits.
                    if let Some(&tk) = ks.iter().find(|&&tk| self.layout(dev, Tiling { tm, tn, tk, order }).is_some()) {
                        out.push(Tiling { tm, tn, tk, order });
                    }
                }
            }
        }
        out
    }
}

/// Two SRAM slots of an operand: the tile each holds (batch, row or column tile, reduction
/// tile) and the number of the load that filled it.
type Slots = [Option<((u32, u32, u32), u32)>; 2];

struct Emit<'a> {
    dev: &'a Device,
    l: Layout,
    cmds: Vec<Command>,
    issued: [u32; 2],
    /// Transfers the front end knows complete, per channel.
    waited: [u32; 2],
}

impl Emit<'_> {
    fn store_ch(&self) -> u8 {
        if self.dev.dma_channels > 1 {
            1
        } else {
            0
        }
    }
    fn dma(&mut self, c: Command) -> u32 {
        let ch = match &c {
            Command::DmaLoad { ch, .. } | Command::DmaStore { ch, .. } => *ch as usize,
            _ => 0,
        };
        self.cmds.push(c);
        self.issued[ch] += 1;
        self.issued[ch]
    }
    /// Waits until the transfer numbered `count` (1-based) on `ch` completed.
    fn wait(&mut self, ch: u8, count: u32) {
        if count > self.waited[ch as usize] {
            self.cmds.push(Command::Wait { ch, count });
            self.waited[ch as usize] = count;
        }
    }
}

/// The DRAM buffers of a kernel: (declarations, roles of inputs, the B buffer, param buffers).
struct Buffers {
    decls: Vec<BufferDecl>,
    inputs: Vec<Role>,
    a: u16,
    b: u16,
    params: Vec<(Role, u16)>,
    out: u16,
    /// Byte offset of each weight block `(batch, ni, ki)` in a repacked constant `b`.
    b_blocks: Vec<u64>,
}

fn blocks(kernel: &MatMulKernel, t: Tiling) -> (usize, usize, usize) {
    let bb = if kernel.b_batched { kernel.batch as usize } else { 1 };
    (bb, kernel.n.div_ceil(t.tn) as usize, kernel.k.div_ceil(t.tk) as usize)
}

fn buffers(kernel: &MatMulKernel, t: Tiling) -> Buffers {
    let mut decls = Vec::new();
    let mut inputs = Vec::new();
    let mut input = |decls: &mut Vec<BufferDecl>, role: Role, bytes: u64| {
        decls.push(BufferDecl { role: BufferRole::Input(inputs.len() as u16), bytes });
        inputs.push(role);
        (decls.len() - 1) as u16
    };
    let (batch, m, k, n) = (kernel.batch as u64, kernel.m as u64, kernel.k as u64, kernel.n as u64);
    let a = input(&mut decls, Role::A, kernel.a_ty.bytes(batch * m * k));
    let mut b_blocks = Vec::new();
    let b = if kernel.b_const.is_some() {
        let (bb, nn, nk) = blocks(kernel, t);
        let mut at = 0u64;
        for _ in 0..bb {
            for ni in 0..nn {
                let tn = (n - ni as u64 * t.tn as u64).min(t.tn as u64);
                for ki in 0..nk {
                    let tk = (k - ki as u64 * t.tk as u64).min(t.tk as u64);
                    b_blocks.push(at);
                    at += tk * kernel.b_ty.bytes(tn);
                }
            }
        }
        decls.push(BufferDecl { role: BufferRole::Constant, bytes: at });
        (decls.len() - 1) as u16
    } else {
        let bb = if kernel.b_batched { batch } else { 1 };
        input(&mut decls, Role::B, kernel.b_ty.bytes(bb * k * n))
    };
    let mut params = Vec::new();
    for p in kernel.params() {
        match &p.src {
            Src::Const { bytes, .. } => {
                decls.push(BufferDecl { role: BufferRole::Constant, bytes: bytes.len() as u64 });
                params.push((p.role, (decls.len() - 1) as u16));
            }
            Src::Input { ty, vector } => {
                let len = if *vector { p.len as u64 } else { 1 };
                params.push((p.role, input(&mut decls, p.role, ty.bytes(len))));
            }
            _ => {}
        }
    }
    let out_bytes = kernel.out_ty().bytes(batch * m * n);
    decls.push(BufferDecl { role: BufferRole::Output(0), bytes: out_bytes });
    let out = (decls.len() - 1) as u16;
    Buffers { decls, inputs, a, b, params, out, b_blocks }
}

fn emit(kernel: &MatMulKernel, dev: &Device, t: Tiling, l: Layout, bufs: &Buffers) -> Stream {
    let mut e = Emit { dev, l, cmds: Vec::new(), issued: [0; 2], waited: [0; 2] };
    let (m, k, n) = (kernel.m, kernel.k, kernel.n);
    let srcs = kernel.params();
    // Parameters in SRAM: loaded once, first. A constant scale is a fixed-point immediate.
    let mut param_seq = 0;
    let mut params = [Param::None; 4];
    for (i, role) in [Role::AZero, Role::BZero, Role::Scale, Role::Offset].into_iter().enumerate() {
        let Some(p) = srcs.iter().find(|p| p.role == role) else { continue };
        params[i] = match &p.src {
            Src::None => Param::None,
            Src::Int(v) => Param::Int(*v),
            Src::Float(v) => match to_fixed(*v) {
                Some((multiplier, shift)) if role == Role::Scale => Param::Fixed { multiplier, shift },
                _ => Param::Float(*v),
            },
            Src::Const { ty, vector, .. } | Src::Input { ty, vector } => {
                let addr = e.l.params.iter().find(|(r, _)| *r == role).map_or(0, |(_, a)| *a);
                let buf = bufs.params.iter().find(|(r, _)| *r == role).map_or(0, |(_, b)| *b);
                let len = if *vector { p.len } else { 1 };
                let src = DramBox::linear(buf, 0, ty.bytes(len as u64) as u32);
                param_seq = e.dma(Command::DmaLoad { ch: 0, src, sram: addr });
                Param::Sram { addr, ty: *ty, vector: *vector }
            }
        };
    }
    // A vector parameter for the tile starting at row or column `at`.
    let shifted = |p: Param, at: u32| match p {
        Param::Sram { addr, ty, vector: true } => {
            Param::Sram { addr: addr + ty.bytes(at as u64) as u32, ty, vector: true }
        }
        p => p,
    };

    // The steps: (batch, mi, ni, ki), the reduction innermost.
    let (mt, nt, kt) = (m.div_ceil(t.tm), n.div_ceil(t.tn), k.div_ceil(t.tk));
    let mut steps = Vec::new();
    for bi in 0..kernel.batch {
        match t.order {
            Order::RowsOuter => {
                (0..mt).for_each(|mi| (0..nt).for_each(|ni| (0..kt).for_each(|ki| steps.push((bi, mi, ni, ki)))))
            }
            Order::ColumnsOuter => {
                (0..nt).for_each(|ni| (0..mt).for_each(|mi| (0..kt).for_each(|ki| steps.push((bi, mi, ni, ki)))))
            }
        }
    }
    let dims =
        |mi: u32, ni: u32, ki: u32| ((m - mi * t.tm).min(t.tm), (n - ni * t.tn).min(t.tn), (k - ki * t.tk).min(t.tk));
    let bb = |bi: u32| if kernel.b_batched { bi } else { 0 };
    let a_key = |s: &(u32, u32, u32, u32)| (s.0, s.1, s.3);
    let b_key = |s: &(u32, u32, u32, u32)| (bb(s.0), s.2, s.3);
    // The DRAM box of `kc` reduction elements from `k0` within step `s`'s tile of `a` or `b`.
    let a_box = |s: &(u32, u32, u32, u32), k0: u32, kc: u32| {
        let (tm, _, _) = dims(s.1, s.2, s.3);
        let off = (s.0 as u64 * m as u64 + (s.1 * t.tm) as u64) * k as u64 + (s.3 * t.tk + k0) as u64;
        DramBox::rows(bufs.a, off, tm, kc, k as u64)
    };
    let b_box = |s: &(u32, u32, u32, u32), k0: u32, kc: u32| {
        let (_, tn, _) = dims(s.1, s.2, s.3);
        let row = kernel.b_ty.bytes(tn as u64) as u32;
        if kernel.b_const.is_some() {
            let (_, nn, nk) = blocks(kernel, t);
            let index = (bb(s.0) as usize * nn + s.2 as usize) * nk + s.3 as usize;
            DramBox::linear(bufs.b, bufs.b_blocks[index] + (k0 * row) as u64, kc * row)
        } else {
            let off = (bb(s.0) as u64 * k as u64 + (s.3 * t.tk + k0) as u64) * n as u64 + (s.2 * t.tn) as u64;
            DramBox::rows(bufs.b, off, kc, row, n as u64)
        }
    };
    let load_a = |e: &mut Emit, s: &(u32, u32, u32, u32), slot: usize| {
        let src = a_box(s, 0, dims(s.1, s.2, s.3).2);
        let sram = e.l.a[slot];
        e.dma(Command::DmaLoad { ch: 0, src, sram })
    };
    let load_b = |e: &mut Emit, s: &(u32, u32, u32, u32), slot: usize| {
        let src = b_box(s, 0, dims(s.1, s.2, s.3).2);
        let sram = e.l.b[slot];
        e.dma(Command::DmaLoad { ch: 0, src, sram })
    };
    // Slot contents: (key, load number).
    let mut a_slots: Slots = [None, None];
    let mut b_slots: Slots = [None, None];
    // Places step `s`'s operands, avoiding the slots `busy` (the current step's); returns the
    // slots and load numbers.
    let place = |e: &mut Emit,
                 s: &(u32, u32, u32, u32),
                 busy: Option<(usize, usize)>,
                 a_slots: &mut Slots,
                 b_slots: &mut Slots| {
        let ak = a_key(s);
        let a = match a_slots.iter().position(|x| x.is_some_and(|(key, _)| key == ak)) {
            Some(i) => (i, a_slots[i].map_or(0, |x| x.1)),
            None => {
                let i = busy.map_or(0, |b| 1 - b.0);
                let seq = load_a(e, s, i);
                a_slots[i] = Some((ak, seq));
                (i, seq)
            }
        };
        let bk = b_key(s);
        let b = match b_slots.iter().position(|x| x.is_some_and(|(key, _)| key == bk)) {
            Some(i) => (i, b_slots[i].map_or(0, |x| x.1)),
            None => {
                let i = busy.map_or(0, |b| 1 - b.1);
                let seq = load_b(e, s, i);
                b_slots[i] = Some((bk, seq));
                (i, seq)
            }
        };
        (a, b)
    };
    let sc = e.store_ch();
    let mut stores_from: [u32; 2] = [0, 0];
    let mut tile = 0usize;
    // The first tile streams in chunks of the reduction, so the array starts after the first
    // chunk arrives instead of the whole tile: the prologue is the one load nothing hides.
    let s0 = steps[0];
    let (tm0, tn0, tk0) = dims(s0.1, s0.2, s0.3);
    let row0 = kernel.b_ty.bytes(tn0 as u64) as u32;
    let n_chunks = if kt == 1 && tk0 >= 256 {
        4
    } else if kt == 1 && tk0 >= 128 {
        2
    } else {
        1
    };
    let mut prologue: Vec<(u32, u32, u32)> = Vec::new();
    let mut cur = if n_chunks > 1 {
        let ck = align((tk0 / n_chunks) as u64, 32) as u32;
        let mut k0 = 0;
        while k0 < tk0 {
            let c = ck.min(tk0 - k0);
            e.dma(Command::DmaLoad { ch: 0, src: a_box(&s0, k0, c), sram: e.l.a[0] + tm0 * k0 });
            let src = b_box(&s0, k0, c);
            let sram = e.l.b[0] + k0 * row0;
            let seq = e.dma(Command::DmaLoad { ch: 0, src, sram });
            prologue.push((k0, c, seq));
            k0 += c;
        }
        let last = prologue.last().map_or(0, |p| p.2);
        // The chunked `a` is laid out chunk by chunk: no later step reuses it.
        b_slots[0] = Some((b_key(&s0), last));
        ((0, last), (0, last))
    } else {
        place(&mut e, &s0, None, &mut a_slots, &mut b_slots)
    };
    for (si, s) in steps.iter().enumerate() {
        let (bi, mi, ni, ki) = *s;
        let (tm, tn, tk) = dims(mi, ni, ki);
        let next = steps.get(si + 1).map(|n| place(&mut e, n, Some((cur.0 .0, cur.1 .0)), &mut a_slots, &mut b_slots));
        let j = tile % 2;
        if ki == 0 && kernel.epilogue.is_none() {
            // The accumulator is stored directly: its previous store must have finished.
            e.wait(sc, stores_from[j]);
        }
        let row = kernel.b_ty.bytes(tn as u64) as u32;
        // (a address, a stride, b address, k, load to wait for) of each product.
        let parts: Vec<(u32, u32, u32, u32, u32)> = if si == 0 && !prologue.is_empty() {
            prologue.iter().map(|&(k0, c, seq)| (e.l.a[0] + tm * k0, c, e.l.b[0] + k0 * row, c, seq)).collect()
        } else {
            vec![(e.l.a[cur.0 .0], tk, e.l.b[cur.1 .0], tk, cur.0 .1.max(cur.1 .1))]
        };
        let acc = e.l.acc[j];
        for (pi, &(a_addr, a_stride, b_addr, pk, seq)) in parts.iter().enumerate() {
            e.wait(0, seq.max(param_seq));
            e.cmds.push(Command::MatMul {
                a: Operand { addr: a_addr, stride: a_stride, ty: kernel.a_ty },
                b: Operand { addr: b_addr, stride: row, ty: kernel.b_ty },
                acc,
                acc_stride: tn * 4,
                m: tm,
                n: tn,
                k: pk,
                a_zero: shifted(params[0], mi * t.tm),
                b_zero: shifted(params[1], ni * t.tn),
                accumulate: ki > 0 || pi > 0,
            });
        }
        if ki + 1 == kt {
            let ot = kernel.out_ty();
            let ob = ot.bytes(1) as u32;
            let src = if let Some(ep) = &kernel.epilogue {
                e.wait(sc, stores_from[j]);
                let dst = Operand { addr: e.l.out[j], stride: tn * ob, ty: ep.out };
                e.cmds.push(Command::Requant {
                    acc,
                    acc_stride: tn * 4,
                    dst,
                    m: tm,
                    n: tn,
                    scale: shifted(params[2], ni * t.tn),
                    offset: shifted(params[3], ni * t.tn),
                });
                e.l.out[j]
            } else {
                acc
            };
            let off = ((bi as u64 * m as u64 + (mi * t.tm) as u64) * n as u64 + (ni * t.tn) as u64) * ob as u64;
            let dst = DramBox::rows(bufs.out, off, tm, tn * ob, n as u64 * ob as u64);
            stores_from[j] = e.dma(Command::DmaStore { ch: sc, sram: src, dst });
            tile += 1;
        }
        if let Some(nx) = next {
            cur = nx;
        }
    }
    let total = e.issued[sc as usize];
    e.wait(sc, total);
    e.cmds.push(Command::Stop);
    Stream { buffers: bufs.decls.clone(), commands: e.cmds }
}

/// The weight repacked into per-tile blocks, in the order `buffers` laid them out.
fn repack(kernel: &MatMulKernel, t: Tiling, b: &[u8], total: u64) -> Vec<u8> {
    let (bbn, nn, nk) = blocks(kernel, t);
    let (k, n) = (kernel.k as usize, kernel.n as usize);
    let four = kernel.b_ty.bits() == 4;
    let get = |i: usize| if four { (b[i / 2] >> (4 * (i % 2))) & 0xf } else { b[i] };
    let mut out = vec![0u8; total as usize];
    let mut at = 0usize;
    for bb in 0..bbn {
        for ni in 0..nn {
            let n0 = ni * t.tn as usize;
            let tn = (n - n0).min(t.tn as usize);
            let row = kernel.b_ty.bytes(tn as u64) as usize;
            for ki in 0..nk {
                let k0 = ki * t.tk as usize;
                let tk = (k - k0).min(t.tk as usize);
                for r in 0..tk {
                    for c in 0..tn {
                        let v = get((bb * k + k0 + r) * n + n0 + c);
                        if four {
                            out[at + r * row + c / 2] |= v << (4 * (c % 2));
                        } else {
                            out[at + r * row + c] = v;
                        }
                    }
                }
                at += tk * row;
            }
        }
    }
    out
}

/// Compiles a kernel: the tiling the simulator finds fastest among the candidates that fit.
pub fn compile(kernel: &MatMulKernel, dev: &Device) -> Result<Compiled, Decline> {
    compile_with(kernel, dev, None)
}

/// Compiles with a given tiling (`None`: search).
pub fn compile_with(kernel: &MatMulKernel, dev: &Device, tiling: Option<Tiling>) -> Result<Compiled, Decline> {
    kernel.check(dev)?;
    let candidates = match tiling {
        Some(t) => vec![t],
        None => kernel.candidates(dev),
    };
    let mut best: Option<(Stats, Tiling, Stream, Validated)> = None;
    for t in candidates {
        let Some(l) = kernel.layout(dev, t) else { continue };
        let bufs = buffers(kernel, t);
        let stream = emit(kernel, dev, t, l, &bufs);
        let checked = validate(&stream, dev)
            .map_err(|e| Decline(format!("internal error: the compiler emitted an invalid stream: {e}")))?;
        let stats = sim::run(&stream, &checked, dev, &mut [], false).map_err(|e| Decline(e.to_string()))?;
        // The fastest; within 0.5% of it, the one moving the fewest DRAM bytes.
        let better = |b: &Stats| {
            let close =
                (stats.cycles as f64) < b.cycles as f64 * 1.005 && (b.cycles as f64) < stats.cycles as f64 * 1.005;
            if close {
                stats.dram_read + stats.dram_written < b.dram_read + b.dram_written
            } else {
                stats.cycles < b.cycles
            }
        };
        if best.as_ref().is_none_or(|b| better(&b.0)) {
            best = Some((stats, t, stream, checked));
        }
    }
    let Some((estimate, tiling, stream, checked)) = best else {
        let need = kernel.a_ty.bytes(dev.mac_rows as u64 * 64) * 2
            + kernel.b_ty.bytes(dev.mac_cols as u64) * 64 * 2
            + dev.macs_per_cycle() * 4 * 2;
        return Err(Decline(format!(
            "does not fit SRAM even at the smallest tile ({}x{}x64 double-buffered needs about {need} bytes and its parameters, the device has {})",
            dev.mac_rows, dev.mac_cols, dev.sram_bytes
        )));
    };
    let bufs = buffers(kernel, tiling);
    let mut constants = Vec::new();
    if let Some(b) = &kernel.b_const {
        constants.push((bufs.b as usize, repack(kernel, tiling, b, stream.buffers[bufs.b as usize].bytes)));
    }
    for p in kernel.params() {
        if let Src::Const { bytes, .. } = &p.src {
            if let Some((_, buf)) = bufs.params.iter().find(|(r, _)| *r == p.role) {
                constants.push((*buf as usize, bytes.clone()));
            }
        }
    }
    Ok(Compiled { stream, checked, constants, inputs: bufs.inputs, output_buffer: bufs.out as usize, tiling, estimate })
}

impl Compiled {
    /// Runs the kernel on the simulator: `inputs[i]` holds the bytes for `self.inputs[i]`.
    /// Returns the output buffer's bytes and the run's counters.
    pub fn run(&self, dev: &Device, inputs: &[Vec<u8>]) -> Result<(Vec<u8>, Stats), sim::SimError> {
        let mut bufs: Vec<Vec<u8>> = self.stream.buffers.iter().map(|d| vec![0u8; d.bytes as usize]).collect();
        for (i, d) in self.stream.buffers.iter().enumerate() {
            if let BufferRole::Input(j) = d.role {
                if let Some(bytes) = inputs.get(j as usize) {
                    bufs[i] = bytes.clone();
                }
            }
        }
        for (i, bytes) in &self.constants {
            bufs[*i] = bytes.clone();
        }
        let stats = sim::run(&self.stream, &self.checked, dev, &mut bufs, true)?;
        Ok((std::mem::take(&mut bufs[self.output_buffer]), stats))
    }
}

/// A finite f32 as an exact fixed-point `(multiplier, shift)` with `|multiplier| < 2^24`, when
/// the shift fits in an i8.
pub fn to_fixed(v: f32) -> Option<(i32, i8)> {
    if !v.is_finite() {
        return None;
    }
    if v == 0.0 {
        return Some((0, 0));
    }
    let bits = v.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32;
    let frac = (bits & 0x7f_ffff) as i32;
    let (mant, e) = if exp == 0 { (frac, -149) } else { (frac | 0x80_0000, exp - 150) };
    // Strip trailing zeros so the shift is as small as it can be.
    let tz = mant.trailing_zeros() as i32;
    let (mant, e) = (mant >> tz, e + tz);
    let shift = -e;
    let shift = i8::try_from(shift).ok()?;
    let m = if v < 0.0 { -mant } else { mant };
    Some((m, shift))
}
