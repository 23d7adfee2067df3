//! The simulator: runs a validated stream bit-exactly and counts its cycles.
//!
//! Timing model (every parameter from the [`Device`]):
//! - The front end issues one command per cycle. `matmul`, `requant` and `lut` occupy the
//!   compute units and finish before the next command issues; DMA commands queue on their
//!   channel and run asynchronously; `wait` stalls the front end until its channel has
//!   completed enough transfers.
//! - A transfer spends `dma_setup_cycles` before its first byte, then moves its bytes, each
//!   DRAM row rounded up to whole `dma_burst_bytes`. Channels transfer concurrently and share
//!   the NPU's DRAM bandwidth equally (an event-driven fluid model), each channel in order.
//! - `matmul` takes `ceil(m / rows) * ceil(n / cols) * k + matmul_fill_cycles` cycles (4-bit
//!   weights at the 8-bit rate); `requant` and `lut` take `ceil(m * n / vector_lanes) + 8`.
//! - SRAM banks are contiguous ranges of `sram_bytes / sram_banks`; each bank has one port of
//!   `dma_burst_bytes` per cycle. A compute command that uses a bank an in-flight transfer
//!   also uses stalls one cycle per port access the transfer makes to that bank meanwhile.
//!
//! Data effects follow issue order: the validator guarantees no command touches memory a
//! transfer in flight is using, so applying a transfer when it issues gives the same bytes.

use crate::device::Device;
use crate::stream::{Command, DramBox, ElemType, Operand, Param, Stream};
use crate::validate::Validated;
use std::collections::VecDeque;
use tessera_passes::ir::DType;

/// Counters of one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub cycles: u64,
    /// Cycles the compute units were busy (bank-conflict stalls included).
    pub compute_cycles: u64,
    pub macs: u64,
    pub dram_read: u64,
    pub dram_written: u64,
    pub sram_peak: u32,
    /// Cycles at least one transfer was in flight, and of those, cycles compute was busy too.
    pub dma_cycles: u64,
    pub dma_hidden_cycles: u64,
    /// The same for transfers from constant buffers (weights).
    pub weight_dma_cycles: u64,
    pub weight_dma_hidden_cycles: u64,
    pub bank_conflict_cycles: u64,
    /// MAC capacity of the device, per cycle.
    pub macs_per_cycle: u64,
}

impl Stats {
    /// MACs done over MACs the array could have done in the run's cycles.
    pub fn mac_utilization(&self) -> f64 {
        if self.cycles == 0 {
            return 0.0;
        }
        self.macs as f64 / (self.cycles as f64 * self.macs_per_cycle as f64)
    }

    /// Share of DMA time during which compute was busy too (1 when there was no DMA).
    pub fn dma_hidden(&self) -> f64 {
        if self.dma_cycles == 0 {
            1.0
        } else {
            self.dma_hidden_cycles as f64 / self.dma_cycles as f64
        }
    }

    pub fn weight_dma_hidden(&self) -> f64 {
        if self.weight_dma_cycles == 0 {
            1.0
        } else {
            self.weight_dma_hidden_cycles as f64 / self.weight_dma_cycles as f64
        }
    }

    /// Adds another run's counters (kernels run one after another).
    pub fn add(&mut self, o: &Stats) {
        self.cycles += o.cycles;
        self.compute_cycles += o.compute_cycles;
        self.macs += o.macs;
        self.dram_read += o.dram_read;
        self.dram_written += o.dram_written;
        self.sram_peak = self.sram_peak.max(o.sram_peak);
        self.dma_cycles += o.dma_cycles;
        self.dma_hidden_cycles += o.dma_hidden_cycles;
        self.weight_dma_cycles += o.weight_dma_cycles;
        self.weight_dma_hidden_cycles += o.weight_dma_hidden_cycles;
        self.bank_conflict_cycles += o.bank_conflict_cycles;
        self.macs_per_cycle = o.macs_per_cycle;
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("buffer b{index} is given {given} bytes, the stream declares {declared}")]
    BufferSize { index: usize, given: usize, declared: u64 },
    #[error("the stream declares {declared} buffers, {given} were given")]
    BufferCount { declared: usize, given: usize },
}

struct Xfer {
    issue: f64,
    setup_left: f64,
    bytes_left: f64,
    weight: bool,
    banks: (u32, u32),
}

/// Sorted, merged busy intervals.
#[derive(Default)]
struct Busy(Vec<(f64, f64)>);

impl Busy {
    fn push(&mut self, s: f64, e: f64) {
        if e <= s {
            return;
        }
        if let Some(last) = self.0.last_mut() {
            if s <= last.1 {
                last.1 = last.1.max(e);
                return;
            }
        }
        self.0.push((s, e));
    }
    fn total(&self) -> f64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }
    fn overlap(&self, o: &Busy) -> f64 {
        let (mut i, mut j, mut t) = (0, 0, 0.0);
        while i < self.0.len() && j < o.0.len() {
            let (a, b) = (self.0[i], o.0[j]);
            t += (a.1.min(b.1) - a.0.max(b.0)).max(0.0);
            if a.1 < b.1 {
                i += 1
            } else {
                j += 1
            }
        }
        t
    }
}

struct Dma<'d> {
    dev: &'d Device,
    queues: Vec<VecDeque<Xfer>>,
    completed: Vec<u32>,
    now: f64,
    busy: Busy,
    weight_busy: Busy,
}

impl Dma<'_> {
    /// Runs the transfers up to time `to`, or (with `to = None`) to the next completion.
    fn advance(&mut self, to: Option<f64>) {
        loop {
            if to.is_some_and(|t| self.now >= t) {
                return;
            }
            let heads: Vec<usize> = (0..self.queues.len())
                .filter(|&c| self.queues[c].front().is_some_and(|x| x.issue <= self.now))
                .collect();
            let next_issue = self
                .queues
                .iter()
                .filter_map(|q| q.front().map(|x| x.issue))
                .filter(|&t| t > self.now)
                .fold(f64::INFINITY, f64::min);
            if heads.is_empty() {
                let t = to.unwrap_or(f64::INFINITY).min(next_issue);
                if !t.is_finite() {
                    return;
                }
                self.now = t;
                continue;
            }
            let moving = heads.iter().filter(|&&c| self.queues[c].front().is_some_and(|x| x.setup_left <= 0.0)).count();
            let rate = if moving > 0 { self.dev.dram_bytes_per_cycle / moving as f64 } else { 0.0 };
            let mut dt = to.map_or(f64::INFINITY, |t| t - self.now).min(next_issue - self.now);
            for &c in &heads {
                let x = &self.queues[c][0];
                dt = dt.min(if x.setup_left > 0.0 { x.setup_left } else { x.bytes_left / rate });
            }
            let dt = dt.max(0.0);
            let weight = heads.iter().any(|&c| self.queues[c][0].weight);
            self.busy.push(self.now, self.now + dt);
            if weight {
                self.weight_busy.push(self.now, self.now + dt);
            }
            self.now += dt;
            let mut done_one = false;
            for &c in &heads {
                let x = &mut self.queues[c][0];
                if x.setup_left > 0.0 {
                    x.setup_left -= dt;
                } else {
                    x.bytes_left -= dt * rate;
                }
                if x.setup_left <= 1e-9 && x.bytes_left <= 1e-6 {
                    self.queues[c].pop_front();
                    self.completed[c] += 1;
                    done_one = true;
                } else if x.setup_left <= 1e-9 {
                    x.setup_left = 0.0;
                }
            }
            if done_one && to.is_none() {
                return;
            }
        }
    }
}

fn box_rows(b: &DramBox) -> impl Iterator<Item = usize> + '_ {
    (0..b.planes as u64)
        .flat_map(move |p| (0..b.rows as u64).map(move |r| (b.offset + p * b.plane_stride + r * b.row_stride) as usize))
}

/// Reads element `c` of row `r` of an 8- or 4-bit operand.
fn int_elem(sram: &[u8], o: &Operand, r: u32, c: u32) -> i32 {
    let row = o.addr as usize + r as usize * o.stride as usize;
    match o.ty {
        ElemType::U8 => sram[row + c as usize] as i32,
        ElemType::I8 => sram[row + c as usize] as i8 as i32,
        ElemType::U4 | ElemType::I4 => {
            let byte = sram[row + c as usize / 2];
            let nib = if c.is_multiple_of(2) { byte & 0xf } else { byte >> 4 };
            if o.ty == ElemType::I4 {
                ((nib << 4) as i8 >> 4) as i32
            } else {
                nib as i32
            }
        }
        _ => 0,
    }
}

fn word(sram: &[u8], at: usize) -> [u8; 4] {
    [sram[at], sram[at + 1], sram[at + 2], sram[at + 3]]
}

fn int_param(sram: &[u8], p: &Param, i: u32) -> i32 {
    match *p {
        Param::Int(v) => v,
        Param::Sram { addr, ty, vector } => {
            let i = if vector { i } else { 0 };
            match ty {
                ElemType::I32 => i32::from_le_bytes(word(sram, addr as usize + 4 * i as usize)),
                _ => int_elem(sram, &Operand { addr, stride: 0, ty }, 0, i),
            }
        }
        _ => 0,
    }
}

/// `multiplier * 2^-shift`, rounded to f32.
fn fixed(multiplier: i32, shift: i8) -> f32 {
    (multiplier as f64 * (-(shift as f64)).exp2()) as f32
}

fn float_param(sram: &[u8], p: &Param, i: u32) -> Option<f32> {
    match *p {
        // The validator admits no integer scale or offset.
        Param::None | Param::Int(_) => None,
        Param::Float(v) => Some(v),
        Param::Fixed { multiplier, shift } => Some(fixed(multiplier, shift)),
        Param::Sram { addr, ty, vector } => {
            let i = if vector { i as usize } else { 0 };
            Some(match ty {
                ElemType::Fixed => {
                    let at = addr as usize + 8 * i;
                    fixed(i32::from_le_bytes(word(sram, at)), i32::from_le_bytes(word(sram, at + 4)) as i8)
                }
                _ => f32::from_le_bytes(word(sram, addr as usize + 4 * i)),
            })
        }
    }
}

/// Which SRAM banks a range touches (first, last).
fn banks(dev: &Device, start: u32, bytes: u64) -> (u32, u32) {
    let b = dev.bank_bytes() as u64;
    let end = (start as u64 + bytes.max(1) - 1) / b;
    (start / b as u32, end as u32)
}

/// Runs a validated stream. `buffers` holds one byte vector per declared buffer (outputs are
/// overwritten); with `data == false` only the timing is computed and no bytes move.
pub fn run(
    stream: &Stream,
    checked: &Validated,
    dev: &Device,
    buffers: &mut [Vec<u8>],
    data: bool,
) -> Result<Stats, SimError> {
    if data {
        if buffers.len() != stream.buffers.len() {
            return Err(SimError::BufferCount { declared: stream.buffers.len(), given: buffers.len() });
        }
        for (index, (b, d)) in buffers.iter().zip(&stream.buffers).enumerate() {
            if b.len() as u64 != d.bytes {
                return Err(SimError::BufferSize { index, given: b.len(), declared: d.bytes });
            }
        }
    }
    let mut sram = vec![0u8; if data { checked.sram_peak as usize } else { 0 }];
    let weight_buffer =
        |b: u16| matches!(stream.buffers.get(b as usize).map(|d| d.role), Some(crate::stream::BufferRole::Constant));
    let mut dma = Dma {
        dev,
        queues: (0..dev.dma_channels).map(|_| VecDeque::new()).collect(),
        completed: vec![0; dev.dma_channels as usize],
        now: 0.0,
        busy: Busy::default(),
        weight_busy: Busy::default(),
    };
    let mut compute = Busy::default();
    let mut st = Stats { macs_per_cycle: dev.macs_per_cycle(), sram_peak: checked.sram_peak, ..Default::default() };
    let mut t = 0.0f64;
    let burst = dev.dma_burst_bytes as u64;
    let xfer_bytes =
        |b: &DramBox| (b.planes as u64 * b.rows as u64 * (b.row_bytes as u64).div_ceil(burst) * burst) as f64;
    for c in &stream.commands {
        t += 1.0;
        match c {
            Command::DmaLoad { ch, src, sram: at } => {
                dma.advance(Some(t));
                st.dram_read += src.bytes();
                dma.queues[*ch as usize].push_back(Xfer {
                    issue: t,
                    setup_left: dev.dma_setup_cycles as f64,
                    bytes_left: xfer_bytes(src),
                    weight: weight_buffer(src.buffer),
                    banks: banks(dev, *at, src.bytes()),
                });
                if data {
                    let buf = &buffers[src.buffer as usize];
                    let mut o = *at as usize;
                    let w = src.row_bytes as usize;
                    for row in box_rows(src) {
                        sram[o..o + w].copy_from_slice(&buf[row..row + w]);
                        o += w;
                    }
                }
            }
            Command::DmaStore { ch, sram: at, dst } => {
                dma.advance(Some(t));
                st.dram_written += dst.bytes();
                dma.queues[*ch as usize].push_back(Xfer {
                    issue: t,
                    setup_left: dev.dma_setup_cycles as f64,
                    bytes_left: xfer_bytes(dst),
                    weight: false,
                    banks: banks(dev, *at, dst.bytes()),
                });
                if data {
                    let w = dst.row_bytes as usize;
                    let mut o = *at as usize;
                    let rows: Vec<usize> = box_rows(dst).collect();
                    let buf = &mut buffers[dst.buffer as usize];
                    for row in rows {
                        buf[row..row + w].copy_from_slice(&sram[o..o + w]);
                        o += w;
                    }
                }
            }
            Command::Wait { ch, count } => {
                dma.advance(Some(t));
                while dma.completed[*ch as usize] < *count && !dma.queues[*ch as usize].is_empty() {
                    dma.advance(None);
                }
                t = t.max(dma.now);
            }
            Command::MatMul { a, b, acc, acc_stride, m, n, k, a_zero, b_zero, accumulate } => {
                let (m, n, k) = (*m, *n, *k);
                let cycles = (m.div_ceil(dev.mac_rows) as u64 * n.div_ceil(dev.mac_cols) as u64 * k as u64
                    + dev.matmul_fill_cycles as u64) as f64;
                st.macs += m as u64 * n as u64 * k as u64;
                let used = [
                    banks(dev, a.addr, a.stride as u64 * m as u64),
                    banks(dev, b.addr, b.stride as u64 * k as u64),
                    banks(dev, *acc, *acc_stride as u64 * m as u64),
                ];
                t = occupy(&mut dma, dev, &mut st, &mut compute, t, cycles, &used);
                if data {
                    // Zero-corrected operands, b transposed so each dot product reads rows.
                    let av: Vec<i32> = (0..m)
                        .flat_map(|r| {
                            let z = int_param(&sram, a_zero, r);
                            let s = &sram;
                            (0..k).map(move |c| int_elem(s, a, r, c) - z)
                        })
                        .collect();
                    let bt: Vec<i32> = (0..n)
                        .flat_map(|c| {
                            let z = int_param(&sram, b_zero, c);
                            let s = &sram;
                            (0..k).map(move |r| int_elem(s, b, r, c) - z)
                        })
                        .collect();
                    for r in 0..m as usize {
                        let arow = &av[r * k as usize..(r + 1) * k as usize];
                        for c in 0..n as usize {
                            let brow = &bt[c * k as usize..(c + 1) * k as usize];
                            let dot = arow.iter().zip(brow).fold(0i32, |s, (x, y)| s.wrapping_add(x.wrapping_mul(*y)));
                            let at = *acc as usize + r * *acc_stride as usize + 4 * c;
                            let v =
                                if *accumulate { i32::from_le_bytes(word(&sram, at)).wrapping_add(dot) } else { dot };
                            sram[at..at + 4].copy_from_slice(&v.to_le_bytes());
                        }
                    }
                }
            }
            Command::Requant { acc, acc_stride, dst, m, n, scale, offset } => {
                let cycles = vector_cycles(dev, *m, *n);
                let used = [
                    banks(dev, *acc, *acc_stride as u64 * *m as u64),
                    banks(dev, dst.addr, dst.stride as u64 * *m as u64),
                ];
                t = occupy(&mut dma, dev, &mut st, &mut compute, t, cycles, &used);
                if data {
                    for r in 0..*m as usize {
                        for c in 0..*n {
                            let at = *acc as usize + r * *acc_stride as usize + 4 * c as usize;
                            let mut y = i32::from_le_bytes(word(&sram, at)) as f32;
                            if let Some(s) = float_param(&sram, scale, c) {
                                y *= s;
                            }
                            if let Some(o) = float_param(&sram, offset, c) {
                                y += o;
                            }
                            let row = dst.addr as usize + r * dst.stride as usize;
                            match dst.ty {
                                ElemType::F32 => {
                                    let o = row + 4 * c as usize;
                                    sram[o..o + 4].copy_from_slice(&y.to_le_bytes());
                                }
                                ElemType::U8 | ElemType::I8 => {
                                    // The IR's `quantize` by 1: its rounding and saturation.
                                    let q = y.round_ties_even();
                                    let q = if q.is_nan() { 0.0 } else { q.clamp(-1e15, 1e15) };
                                    let to = if dst.ty == ElemType::U8 { DType::U8 } else { DType::I8 };
                                    sram[row + c as usize] = to.saturate_int(q as i64) as u8;
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            Command::Lut { src, dst, table, m, n } => {
                let cycles = vector_cycles(dev, *m, *n);
                let used = [
                    banks(dev, src.addr, src.stride as u64 * *m as u64),
                    banks(dev, dst.addr, dst.stride as u64 * *m as u64),
                ];
                t = occupy(&mut dma, dev, &mut st, &mut compute, t, cycles, &used);
                if data {
                    for r in 0..*m as usize {
                        for c in 0..*n as usize {
                            let i = sram[src.addr as usize + r * src.stride as usize + c];
                            sram[dst.addr as usize + r * dst.stride as usize + c] = sram[*table as usize + i as usize];
                        }
                    }
                }
            }
            Command::Stop => {
                dma.advance(Some(t));
                while dma.queues.iter().any(|q| !q.is_empty()) {
                    dma.advance(None);
                }
                t = t.max(dma.now);
            }
        }
    }
    st.cycles = t.ceil() as u64;
    st.compute_cycles = compute.total().round() as u64;
    st.dma_cycles = dma.busy.total().round() as u64;
    st.dma_hidden_cycles = dma.busy.overlap(&compute).round() as u64;
    st.weight_dma_cycles = dma.weight_busy.total().round() as u64;
    st.weight_dma_hidden_cycles = dma.weight_busy.overlap(&compute).round() as u64;
    Ok(st)
}

/// Cycles of a vector-unit command over `m x n` elements.
fn vector_cycles(dev: &Device, m: u32, n: u32) -> f64 {
    ((m as u64 * n as u64).div_ceil(dev.vector_lanes as u64) + 8) as f64
}

/// A compute command of `cycles` issued at `t` using SRAM banks `used`: adds its bank-conflict
/// stalls, records it busy, and returns the time it finishes.
fn occupy(
    dma: &mut Dma,
    dev: &Device,
    st: &mut Stats,
    compute: &mut Busy,
    t: f64,
    cycles: f64,
    used: &[(u32, u32)],
) -> f64 {
    let stall = conflicts(dma, dev, t, cycles, used);
    st.bank_conflict_cycles += stall as u64;
    compute.push(t, t + cycles + stall);
    t + cycles + stall
}

/// Stall cycles of a compute command over `[t, t + cycles)` using banks `used`: one per port
/// access in-flight transfers sharing a bank make meanwhile (estimated at the DMA's rate).
fn conflicts(dma: &mut Dma, dev: &Device, t: f64, cycles: f64, used: &[(u32, u32)]) -> f64 {
    dma.advance(Some(t));
    let port = dev.dma_burst_bytes as f64;
    let share = |x: &Xfer| used.iter().any(|&(a, b)| x.banks.0 <= b && a <= x.banks.1);
    let in_flight: Vec<&Xfer> = dma.queues.iter().flat_map(|q| q.iter()).filter(|x| share(x)).collect();
    let moving = dma.queues.iter().filter(|q| !q.is_empty()).count().max(1) as f64;
    let rate = dev.dram_bytes_per_cycle / moving;
    in_flight.iter().map(|x| (x.bytes_left.min(rate * cycles) / port).ceil()).sum()
}
