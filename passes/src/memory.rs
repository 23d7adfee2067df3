//! Shared memory accounting for `schedule`, `plan-memory` and `stats`: byte sizes of values under
//! bindings for symbolic dims, liveness of activations for a node order, the peak of live bytes
//! for an order (the lower bound any plan for that order must reach), in-place reuse, and offset
//! planners (TFLite's greedy-by-size as the baseline, and a few other orders to pick from).
//!
//! Conventions:
//! - Only node results live in the activation arena; graph inputs and constants do not.
//! - Steps: the node at position `i` of the order runs at step `i`; step `order.len()` is the
//!   return of the graph. A value is live from the step of its node to the step of its last
//!   user, both inclusive (a node needs its operands and its results at once); a graph output
//!   stays live to the return step; a result nobody reads is live at its own step only.
//! - Offsets are multiples of [`ALIGN`] bytes; the lower bound counts exact bytes.
//! - In-place: a single-result elementwise op (unary, binary, `where`, same-width `cast`) or a
//!   pure reinterpretation (`reshape`, `squeeze`, `unsqueeze`, `identity`) may write its result
//!   into the slot of an operand that is a node result, has the result's byte size and element
//!   width, and dies at that node (its last user, not a graph output). Such a pair shares one
//!   buffer, and only such pairs may overlap in a valid plan.

use tessera_ir::{Bindings, Dim, Graph, MemSlot, Node, Op, TensorType, Value, ValueDef};

/// Offsets in a plan are multiples of this many bytes.
pub const ALIGN: u64 = 64;

/// Rounds up to a multiple of [`ALIGN`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// Sizes used to turn symbolic dims into bytes, shared by `schedule`, `plan-memory` and `stats`.
///
/// Symbols bound in `bindings` take that size. Every other symbol takes a default: a symbol
/// whose name starts with `batch` (`batch`, `batch_size`) is 1, any other (`seq`,
/// `sequence_length`, `past_len`) is 128 ([`DEFAULT_SEQ`]). A plan (the `mem(..)` slots) is
/// valid for these sizes and for smaller ones only where no in-place reuse depended on them;
/// re-plan for other sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    pub bindings: Bindings,
}

/// The size of an unbound symbol whose name starts with `batch`.
pub const DEFAULT_BATCH: usize = 1;
/// The size of any other unbound symbol.
pub const DEFAULT_SEQ: usize = 128;

impl PlanOptions {
    /// Options binding `name` to `size` on top of these.
    pub fn with(mut self, name: &str, size: usize) -> PlanOptions {
        self.bindings.set(name, size);
        self
    }

    /// The default size of an unbound symbol.
    pub fn default_size(name: &str) -> usize {
        if name.starts_with("batch") {
            DEFAULT_BATCH
        } else {
            DEFAULT_SEQ
        }
    }

    /// Bindings for every symbol of `g` (values and kernel bodies are not looked into): the
    /// explicit ones, and the defaults for the rest.
    pub fn bindings_for(&self, g: &Graph) -> Bindings {
        let mut b = self.bindings.clone();
        for (_, vd) in g.values() {
            for d in vd.ty.shape.dims() {
                if let Dim::Sym(s) = d {
                    if b.get(s).is_none() {
                        b.set(s, PlanOptions::default_size(s));
                    }
                }
            }
        }
        b
    }
}

/// Why a size could not be computed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("{value} has type {ty} with an unknown dim (`?`): its size is known only at run time")]
    Unknown { value: Value, ty: String },
    #[error("{value} has type {ty} whose symbol `{symbol}` is not bound")]
    Unbound { value: Value, ty: String, symbol: String },
    #[error("{value} has type {ty} whose size overflows")]
    Overflow { value: Value, ty: String },
}

/// The bytes of a tensor of type `ty` (packed, as `DType::storage_bytes`), with symbols bound by
/// `b`. `value` only names the value in errors.
pub fn type_bytes(value: Value, ty: &TensorType, b: &Bindings) -> Result<u64, SizeError> {
    let mut n: u64 = 1;
    for d in ty.shape.dims() {
        let size = match d {
            Dim::Static(s) => *s,
            Dim::Sym(s) => {
                b.get(s).ok_or_else(|| SizeError::Unbound { value, ty: ty.to_string(), symbol: s.to_string() })? as u64
            }
            Dim::Unknown => return Err(SizeError::Unknown { value, ty: ty.to_string() }),
        };
        n = n.checked_mul(size).ok_or_else(|| SizeError::Overflow { value, ty: ty.to_string() })?;
    }
    let bits =
        n.checked_mul(ty.dtype.bits() as u64).ok_or_else(|| SizeError::Overflow { value, ty: ty.to_string() })?;
    Ok(bits.div_ceil(8))
}

/// The byte size of every value of `g`, indexed by value index.
pub fn sizes(g: &Graph, b: &Bindings) -> Result<Vec<u64>, SizeError> {
    g.values().map(|(v, vd)| type_bytes(v, &vd.ty, b)).collect()
}

/// `sizes` with the bindings of `opts` (defaults filled in for the graph's symbols).
pub fn sizes_with(g: &Graph, opts: &PlanOptions) -> Result<Vec<u64>, SizeError> {
    sizes(g, &opts.bindings_for(g))
}

/// The nodes in the graph's current order.
pub fn current_order(g: &Graph) -> Vec<Node> {
    g.nodes().map(|(n, _)| n).collect()
}

/// The lifetime of an activation (a node result) for one order, steps inclusive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    pub value: Value,
    pub start: usize,
    pub end: usize,
    pub bytes: u64,
}

impl Interval {
    /// Whether the two are live at a common step.
    pub fn overlaps(&self, o: &Interval) -> bool {
        self.start <= o.end && o.start <= self.end
    }
}

/// Position of every node in `order`.
fn positions(g: &Graph, order: &[Node]) -> Vec<usize> {
    let mut pos = vec![usize::MAX; g.n_nodes()];
    for (i, n) in order.iter().enumerate() {
        pos[n.index()] = i;
    }
    pos
}

/// Liveness intervals of every node result for `order` (a permutation of the graph's nodes),
/// in order of definition.
pub fn intervals(g: &Graph, order: &[Node], sizes: &[u64]) -> Vec<Interval> {
    let pos = positions(g, order);
    let mut end: Vec<usize> = vec![0; g.n_values()];
    let mut out = Vec::new();
    for (i, &n) in order.iter().enumerate() {
        for &r in &g.node(n).outputs {
            end[r.index()] = i;
        }
    }
    for (i, &n) in order.iter().enumerate() {
        for &v in &g.node(n).inputs {
            end[v.index()] = end[v.index()].max(i);
        }
    }
    for (_, v) in g.outputs() {
        end[v.index()] = order.len();
    }
    for (i, &n) in order.iter().enumerate() {
        for &r in &g.node(n).outputs {
            debug_assert_eq!(pos[n.index()], i);
            out.push(Interval { value: r, start: i, end: end[r.index()], bytes: sizes[r.index()] });
        }
    }
    out
}

/// The maximum over steps of the bytes live at that step: the lower bound of any plan for the
/// order (without in-place reuse).
pub fn peak(intervals: &[Interval], steps: usize) -> u64 {
    let (p, _) = peak_and_area(intervals.iter().map(|i| (i.start, i.end, i.bytes)), steps);
    p
}

/// The peak and the sum over steps of live bytes, for `(start, end, bytes)` triples.
pub fn peak_and_area(items: impl Iterator<Item = (usize, usize, u64)>, steps: usize) -> (u64, u128) {
    let mut delta = vec![0i128; steps + 2];
    for (s, e, b) in items {
        delta[s] += b as i128;
        delta[e + 1] -= b as i128;
    }
    let (mut live, mut peak, mut area) = (0i128, 0u64, 0u128);
    for d in delta.iter().take(steps + 1) {
        live += d;
        peak = peak.max(live as u64);
        area += live as u128;
    }
    (peak, area)
}

/// Whether the op may write its (single) result over an operand of the same size that dies at it.
pub fn inplace_op(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Cast { .. }
            | Op::Reshape { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Identity
    )
}

/// The operands of `n` its result may share a slot with, when they die at `n` (order-independent
/// part of the rule: op kind, arena operand, same bytes and element width; data operand only
/// for reshapes).
pub fn inplace_candidates(g: &Graph, n: Node, sizes: &[u64]) -> Vec<Value> {
    let nd = g.node(n);
    if !inplace_op(&nd.op) || nd.outputs.len() != 1 || nd.body.is_some() {
        return Vec::new();
    }
    let r = nd.outputs[0];
    let data_only = matches!(nd.op, Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. });
    let operands = if data_only { &nd.inputs[..1] } else { &nd.inputs[..] };
    let mut out: Vec<Value> = Vec::new();
    for &v in operands {
        let arena = matches!(g.value(v).def, ValueDef::Result(..));
        if arena
            && sizes[v.index()] == sizes[r.index()]
            && sizes[r.index()] > 0
            && g.ty(v).dtype.bits() == g.ty(r).dtype.bits()
            && !out.contains(&v)
        {
            out.push(v);
        }
    }
    out
}

/// A buffer: values that share one slot (an in-place chain), with the union of their lifetimes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub values: Vec<Value>,
    pub start: usize,
    pub end: usize,
    pub bytes: u64,
}

impl Buffer {
    pub fn overlaps(&self, o: &Buffer) -> bool {
        self.start <= o.end && o.start <= self.end
    }
}

/// Groups the activations of `order` into buffers. With `inplace`, a result shares the buffer
/// of the first candidate operand (see [`inplace_candidates`]) whose last use is that node.
pub fn buffers(g: &Graph, order: &[Node], sizes: &[u64], inplace: bool) -> Vec<Buffer> {
    let ivs = intervals(g, order, sizes);
    let mut by_value: Vec<Option<usize>> = vec![None; g.n_values()];
    let mut end_of: Vec<usize> = vec![0; g.n_values()];
    for iv in &ivs {
        end_of[iv.value.index()] = iv.end;
    }
    let mut bufs: Vec<Buffer> = Vec::new();
    let mut k = 0;
    for (step, &n) in order.iter().enumerate() {
        let outs = &g.node(n).outputs;
        let mut shared = None;
        if inplace {
            shared = inplace_candidates(g, n, sizes)
                .into_iter()
                .find(|v| end_of[v.index()] == step && by_value[v.index()].is_some());
        }
        for &r in outs {
            let iv = &ivs[k];
            k += 1;
            debug_assert_eq!(iv.value, r);
            match shared.and_then(|v| by_value[v.index()]) {
                Some(b) => {
                    let buf = &mut bufs[b];
                    buf.values.push(r);
                    buf.end = buf.end.max(iv.end);
                    by_value[r.index()] = Some(b);
                }
                None => {
                    by_value[r.index()] = Some(bufs.len());
                    bufs.push(Buffer { values: vec![r], start: iv.start, end: iv.end, bytes: iv.bytes });
                }
            }
        }
    }
    bufs
}

/// The lower bound of the order: the peak of live bytes, with or without in-place sharing.
pub fn lower_bound(g: &Graph, order: &[Node], sizes: &[u64], inplace: bool) -> u64 {
    let bufs = buffers(g, order, sizes, inplace);
    peak_and_area(bufs.iter().map(|b| (b.start, b.end, b.bytes)), order.len()).0
}

/// An assignment of offsets in one arena.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `(value, offset)` for every activation.
    pub offsets: Vec<(Value, u64)>,
    /// Bytes the arena needs: the largest `offset + size`.
    pub arena_bytes: u64,
    /// Which heuristic produced it.
    pub strategy: String,
    /// Bytes of results written over an operand's buffer (copies an in-place reshape saves).
    pub inplace_bytes: u64,
}

impl Plan {
    /// Writes the plan into the graph's `mem` slots (arena 0).
    pub fn apply(&self, g: &mut Graph) {
        for &(v, offset) in &self.offsets {
            g.value_mut(v).mem = Some(MemSlot { arena: 0, offset });
        }
    }
}

/// How a placement heuristic chooses among the gaps that fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// The lowest offset that fits (TFLite's arena planner).
    First,
    /// The smallest gap that fits; the end of the arena when none does.
    Best,
}

/// Places buffers in the given sequence (indices into `bufs`), each at an offset that does not
/// overlap an already placed buffer live at a common step. Returns offsets by buffer index.
pub fn place(bufs: &[Buffer], sequence: &[usize], fit: Fit) -> (Vec<u64>, u64) {
    let mut offset = vec![0u64; bufs.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut arena = 0u64;
    for &i in sequence {
        let size = align_up(bufs[i].bytes);
        if size == 0 {
            continue;
        }
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|&&j| bufs[j].overlaps(&bufs[i]))
            .map(|&j| (offset[j], offset[j] + align_up(bufs[j].bytes)))
            .collect();
        busy.sort_unstable();
        let mut best: Option<(u64, u64)> = None; // (gap, offset)
        let mut cursor = 0u64;
        for &(lo, hi) in &busy {
            if lo >= cursor + size {
                let gap = lo - cursor;
                match fit {
                    Fit::First => {
                        best = Some((gap, cursor));
                        break;
                    }
                    Fit::Best => {
                        if best.is_none_or(|(g, _)| gap < g) {
                            best = Some((gap, cursor));
                        }
                    }
                }
            }
            cursor = cursor.max(hi);
        }
        let at = best.map(|(_, o)| o).unwrap_or(cursor);
        offset[i] = at;
        arena = arena.max(at + size);
        placed.push(i);
    }
    (offset, arena)
}

fn plan_from(bufs: &[Buffer], offsets: &[u64], strategy: &str) -> Plan {
    let mut out = Vec::new();
    let mut arena = 0;
    let inplace_bytes = bufs.iter().map(|b| b.bytes * (b.values.len().max(1) - 1) as u64).sum();
    for (b, &o) in bufs.iter().zip(offsets) {
        for &v in &b.values {
            out.push((v, o));
        }
        if b.bytes > 0 {
            arena = arena.max(o + b.bytes);
        }
    }
    out.sort_unstable();
    Plan { offsets: out, arena_bytes: arena, strategy: strategy.to_string(), inplace_bytes }
}

/// Buffers by size, largest first; ties by longer lifetime, then earlier start.
fn by_size(bufs: &[Buffer]) -> Vec<usize> {
    let mut seq: Vec<usize> = (0..bufs.len()).collect();
    seq.sort_by_key(|&i| {
        let b = &bufs[i];
        (std::cmp::Reverse(b.bytes), std::cmp::Reverse(b.end - b.start), b.start, i)
    });
    seq
}

/// TFLite's greedy-by-size arena planner, without in-place sharing: the baseline.
pub fn greedy_by_size(g: &Graph, order: &[Node], sizes: &[u64]) -> Plan {
    let bufs = buffers(g, order, sizes, false);
    let (offsets, _) = place(&bufs, &by_size(&bufs), Fit::First);
    plan_from(&bufs, &offsets, "greedy-by-size")
}

/// Greedy-by-breadth (Pisarchyk and Lee, 2020): steps by their live bytes, largest first; the
/// buffers live at each step by size, largest first.
fn by_breadth(bufs: &[Buffer], steps: usize) -> Vec<usize> {
    let mut breadth = vec![0u64; steps + 1];
    let mut live: Vec<Vec<usize>> = vec![Vec::new(); steps + 1];
    for (i, b) in bufs.iter().enumerate() {
        for s in b.start..=b.end.min(steps) {
            breadth[s] += b.bytes;
            live[s].push(i);
        }
    }
    let mut step_order: Vec<usize> = (0..=steps).collect();
    step_order.sort_by_key(|&s| (std::cmp::Reverse(breadth[s]), s));
    let size_rank = by_size(bufs);
    let mut rank = vec![0; bufs.len()];
    for (r, &i) in size_rank.iter().enumerate() {
        rank[i] = r;
    }
    let mut seen = vec![false; bufs.len()];
    let mut seq = Vec::with_capacity(bufs.len());
    for s in step_order {
        let mut at = live[s].clone();
        at.sort_by_key(|&i| rank[i]);
        for i in at {
            if !std::mem::replace(&mut seen[i], true) {
                seq.push(i);
            }
        }
    }
    seq
}

/// The best of several heuristics (greedy-by-size and greedy-by-breadth orders, by lifetime and
/// by start, with first and best fit; with and without in-place sharing), never above
/// [`greedy_by_size`]. Among plans of the same arena size the one with the most in-place bytes
/// wins (each shared byte is a copy not made); remaining ties go to the earlier heuristic.
pub fn best_plan(g: &Graph, order: &[Node], sizes: &[u64]) -> Plan {
    let mut best = greedy_by_size(g, order, sizes);
    for inplace in [true, false] {
        let bufs = buffers(g, order, sizes, inplace);
        let mut by_area: Vec<usize> = (0..bufs.len()).collect();
        by_area.sort_by_key(|&i| {
            (std::cmp::Reverse(bufs[i].bytes as u128 * (bufs[i].end - bufs[i].start + 1) as u128), i)
        });
        let mut by_start: Vec<usize> = (0..bufs.len()).collect();
        by_start.sort_by_key(|&i| (bufs[i].start, std::cmp::Reverse(bufs[i].bytes), i));
        let seqs: [(&str, Vec<usize>); 4] = [
            ("size", by_size(&bufs)),
            ("breadth", by_breadth(&bufs, order.len())),
            ("area", by_area),
            ("start-time", by_start),
        ];
        for (name, seq) in &seqs {
            for fit in [Fit::First, Fit::Best] {
                let (offsets, _) = place(&bufs, seq, fit);
                let strategy = format!(
                    "{}greedy-by-{name}{}",
                    if inplace { "in-place + " } else { "" },
                    if fit == Fit::Best { " (best fit)" } else { "" }
                );
                let p = plan_from(&bufs, &offsets, &strategy);
                // The smallest arena; among equal ones, the one sharing most (fewer copies).
                if (p.arena_bytes, std::cmp::Reverse(p.inplace_bytes))
                    < (best.arena_bytes, std::cmp::Reverse(best.inplace_bytes))
                {
                    best = p;
                }
            }
        }
    }
    best
}

/// Whether `r` (the result of `n`) may share `v`'s slot in `order`: `v` is an in-place candidate
/// of `n` whose last use is `n`.
fn may_share(g: &Graph, ivs_end: &[usize], pos: &[usize], n: Node, v: Value, sizes: &[u64]) -> bool {
    ivs_end[v.index()] == pos[n.index()] && inplace_candidates(g, n, sizes).contains(&v)
}

/// Checks the graph's `mem` slots for its current order: every node result has one, offsets are
/// aligned, and two values live at a common step use disjoint `[offset, offset + size)` ranges
/// in the same arena, unless one is an in-place result over the other (same offset, the operand
/// dies at that node). Returns the first violation.
pub fn check_plan(g: &Graph, sizes: &[u64]) -> Result<(), String> {
    let order = current_order(g);
    let ivs = intervals(g, &order, sizes);
    let pos = positions(g, &order);
    let mut end = vec![0usize; g.n_values()];
    for iv in &ivs {
        end[iv.value.index()] = iv.end;
    }
    let mut slots = Vec::with_capacity(ivs.len());
    for iv in &ivs {
        let slot = g.value(iv.value).mem.ok_or_else(|| format!("{} has no mem slot", iv.value))?;
        if slot.offset % ALIGN != 0 {
            return Err(format!("{} is at offset {}, not a multiple of {ALIGN}", iv.value, slot.offset));
        }
        slots.push(slot);
    }
    for i in 0..ivs.len() {
        for j in i + 1..ivs.len() {
            let (a, b) = (&ivs[i], &ivs[j]);
            if !a.overlaps(b) || slots[i].arena != slots[j].arena || a.bytes == 0 || b.bytes == 0 {
                continue;
            }
            let (a0, a1) = (slots[i].offset, slots[i].offset + a.bytes);
            let (b0, b1) = (slots[j].offset, slots[j].offset + b.bytes);
            if a1 <= b0 || b1 <= a0 {
                continue;
            }
            // An in-place pair: one is the result of the node at which the other dies.
            let shares = |x: &Interval, y: &Interval| match g.value(y.value).def {
                ValueDef::Result(n, _) => may_share(g, &end, &pos, n, x.value, sizes),
                _ => false,
            };
            if a0 == b0 && (shares(a, b) || shares(b, a)) {
                continue;
            }
            return Err(format!(
                "{} [{a0}, {a1}) live at steps {}..={} overlaps {} [{b0}, {b1}) live at steps {}..={}",
                a.value, a.start, a.end, b.value, b.start, b.end
            ));
        }
    }
    Ok(())
}

/// The arena bytes of the graph's current `mem` slots (the sum over arenas of the largest
/// `offset + size`), or None when some node result has no slot.
pub fn planned_bytes(g: &Graph, sizes: &[u64]) -> Option<u64> {
    let mut per_arena: Vec<(u32, u64)> = Vec::new();
    for (_, nd) in g.nodes() {
        for &r in &nd.outputs {
            let slot = g.value(r).mem?;
            let top = slot.offset + sizes[r.index()];
            match per_arena.iter_mut().find(|(a, _)| *a == slot.arena) {
                Some(e) => e.1 = e.1.max(top),
                None => per_arena.push((slot.arena, top)),
            }
        }
    }
    Some(per_arena.iter().map(|(_, b)| b).sum())
}

/// Helpers shared by the tests of the memory passes: random DAGs and a tiny deterministic RNG.
#[cfg(test)]
pub(crate) mod testutil {
    use tessera_ir::{BinaryOp, DType, Graph, Op, TargetDim, Tensor, TensorType, UnaryOp, Value};

    /// xorshift64*: deterministic, no dependency.
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn len(g: &Graph, v: Value) -> usize {
        g.ty(v).shape.as_static().expect("static")[0]
    }

    /// A random DAG of f32 vectors: unary and binary elementwise ops, softmax, concat, slice,
    /// split, reshape round trips; a few outputs, possibly dead nodes.
    pub fn random_dag(seed: u64, n_nodes: usize) -> Graph {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut g = Graph::new("random");
        let mut pool: Vec<Value> = Vec::new();
        for i in 0..1 + r.below(3) {
            let n = [4, 8, 16, 32, 64][r.below(5)];
            pool.push(g.add_input(&format!("x{i}"), TensorType::with_static(DType::F32, &[n])));
        }
        let unary = [UnaryOp::Neg, UnaryOp::Relu, UnaryOp::Abs, UnaryOp::Tanh, UnaryOp::Sigmoid];
        let binary = [BinaryOp::Add, BinaryOp::Mul, BinaryOp::Sub, BinaryOp::Max];
        while g.n_nodes() < n_nodes {
            // Prefer recent values so chains form, sometimes reach far back.
            let pick = |r: &mut Rng, pool: &[Value]| {
                if r.below(3) == 0 {
                    pool[r.below(pool.len())]
                } else {
                    pool[pool.len() - 1 - r.below(pool.len().min(4))]
                }
            };
            let a = pick(&mut r, &pool);
            let la = len(&g, a);
            let res = match r.below(8) {
                0 | 1 => g.add_op(Op::Unary(unary[r.below(unary.len())]), vec![a]),
                2 | 3 => {
                    let same: Vec<Value> = pool.iter().copied().filter(|&v| len(&g, v) == la).collect();
                    let b = same[r.below(same.len())];
                    g.add_op(Op::Binary(binary[r.below(binary.len())]), vec![a, b])
                }
                4 => g.add_op(Op::Softmax { axis: 0 }, vec![a]),
                5 if la < 128 => {
                    let b = pick(&mut r, &pool);
                    if la + len(&g, b) <= 128 {
                        g.add_op(Op::Concat { axis: 0 }, vec![a, b])
                    } else {
                        g.add_op(Op::Unary(UnaryOp::Neg), vec![a])
                    }
                }
                6 if la >= 8 => {
                    let h = (la / 2) as u64;
                    if r.below(2) == 0 {
                        g.add_op(Op::Split { axis: 0, sizes: vec![h, la as u64 - h] }, vec![a])
                    } else {
                        g.add_op(
                            Op::Slice {
                                starts: vec![TargetDim::Int(0)],
                                ends: vec![TargetDim::Int(h as i64)],
                                axes: vec![0],
                                steps: vec![1],
                            },
                            vec![a],
                        )
                    }
                }
                7 if la.is_multiple_of(2) => {
                    let m = g
                        .add_op(
                            Op::Reshape { shape: Some(vec![TargetDim::Int(2), TargetDim::Int(la as i64 / 2)]) },
                            vec![a],
                        )
                        .expect("reshape");
                    let m = g.add_op(Op::Unary(UnaryOp::Relu), m).expect("relu");
                    g.add_op(Op::Reshape { shape: Some(vec![TargetDim::Int(la as i64)]) }, m)
                }
                _ => g.add_op(Op::Unary(UnaryOp::Abs), vec![a]),
            };
            pool.extend(res.expect("random ops are well typed"));
        }
        let n_out = 1 + r.below(3);
        for i in 0..n_out {
            let v = if i == 0 { *pool.last().expect("nodes") } else { pool[r.below(pool.len())] };
            g.add_output(&format!("y{i}"), v);
        }
        g
    }

    /// Random inputs for a graph of static f32 inputs.
    pub fn random_inputs(g: &Graph, seed: u64) -> Vec<Tensor> {
        let mut r = Rng(seed | 1);
        g.inputs()
            .iter()
            .map(|(_, v)| {
                let shape = g.ty(*v).shape.as_static().expect("static");
                let n: usize = shape.iter().product();
                let vals = (0..n).map(|_| (r.below(2001) as f32 - 1000.0) / 250.0).collect();
                Tensor::from_f32(DType::F32, &shape, vals).expect("tensor")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::random_dag;
    use super::*;

    const CHAIN: &str = r#"
graph @chain {
  v0: f32[batch, seq, 8] = input "x"
  v1: f32[8] = const [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
  v2: f32[batch, seq, 8] = relu v0
  v3: f32[batch, seq, 8] = exp v2
  v4: f32[batch, seq, 8] = add v2, v3
  v5: f32[batch, seq, 8] = mul v4, v1
  v6: f32[batch, seq, 16] = concat v5, v4 {axis = 2}
  output "y" = v6
}
"#;

    fn plan_and_check(g: &mut Graph, sizes: &[u64]) -> (Plan, Plan) {
        let order = current_order(g);
        let base = greedy_by_size(g, &order, sizes);
        let best = best_plan(g, &order, sizes);
        base.apply(g);
        check_plan(g, sizes).unwrap_or_else(|e| panic!("greedy-by-size is invalid: {e}"));
        best.apply(g);
        check_plan(g, sizes).unwrap_or_else(|e| panic!("{} is invalid: {e}", best.strategy));
        assert!(best.arena_bytes <= base.arena_bytes);
        assert!(best.arena_bytes >= lower_bound(g, &order, sizes, true));
        assert!(base.arena_bytes >= lower_bound(g, &order, sizes, false));
        (base, best)
    }

    #[test]
    fn sizes_bind_symbols_and_reject_unknown_dims() {
        let g = tessera_ir::parse(CHAIN).unwrap();
        let b = PlanOptions::default().bindings_for(&g);
        assert_eq!(b.get("batch"), Some(1));
        assert_eq!(b.get("seq"), Some(128));
        let s = sizes(&g, &b).unwrap();
        assert_eq!(s[2], 128 * 8 * 4);
        assert_eq!(s[6], 128 * 16 * 4);
        let b2 = PlanOptions::default().with("seq", 3).with("batch", 2).bindings_for(&g);
        assert_eq!(sizes(&g, &b2).unwrap()[2], 2 * 3 * 8 * 4);
        assert!(matches!(sizes(&g, &Bindings::default()), Err(SizeError::Unbound { .. })));
        let t = TensorType::with_static(tessera_ir::DType::I4, &[5]);
        assert_eq!(type_bytes(Value(0), &t, &Bindings::default()).unwrap(), 3);
        let t = TensorType::new(tessera_ir::DType::F32, tessera_ir::Shape(vec![Dim::Unknown]));
        assert!(matches!(type_bytes(Value(0), &t, &Bindings::default()), Err(SizeError::Unknown { .. })));
    }

    #[test]
    fn liveness_and_lower_bound_of_a_chain() {
        let g = tessera_ir::parse(CHAIN).unwrap();
        let s = sizes_with(&g, &PlanOptions::default()).unwrap();
        let order = current_order(&g);
        let ivs = intervals(&g, &order, &s);
        let spans: Vec<(usize, usize)> = ivs.iter().map(|i| (i.start, i.end)).collect();
        // v2 read by v3 and v4; v4 read by v5 and v6; v6 is the output.
        assert_eq!(spans, vec![(0, 2), (1, 2), (2, 4), (3, 4), (4, 5)]);
        let a = 4096; // 128 x 8 x f32
        assert_eq!(peak(&ivs, order.len()), 4 * a); // step 4: v4, v5, v6 (2a)
        assert_eq!(lower_bound(&g, &order, &s, false), 4 * a);
        // In place: v3 (exp) cannot take v2 (still read by v4); v4 (add) takes v3; v5 cannot
        // take v4 (read by v6). The peak stays at step 4.
        let bufs = buffers(&g, &order, &s, true);
        assert_eq!(bufs.len(), 4);
        assert_eq!(lower_bound(&g, &order, &s, true), 4 * a);
    }

    #[test]
    fn plans_of_hand_written_graphs_are_valid() {
        let texts = [
            CHAIN,
            r#"
graph @inplace {
  v0: f32[64] = input "x"
  v1: f32[64] = neg v0
  v2: f32[64] = relu v1
  v3: f32[64] = tanh v2
  v4: f32[8, 8] = reshape v3 {shape = [8, 8]}
  v5: f32[64] = reshape v4 {shape = [64]}
  output "y" = v5
}
"#,
            r#"
graph @diamond {
  v0: f32[1, 16] = input "x"
  v1: f32[16, 32] = const splat(0.5)
  v2: f32[1, 32] = matmul v0, v1
  v3: f32[1, 16], v4: f32[1, 16] = split v2 {axis = 1, sizes = [16, 16]}
  v5: f32[1, 16] = sigmoid v3
  v6: f32[1, 16] = mul v4, v5
  v7: f32[1, 16] = softmax v6 {axis = -1}
  v8: f32[1, 16] = add v7, v0
  v9: f32[1, 16] = relu v6
  output "y" = v8
}
"#,
        ];
        for text in texts {
            let mut g = tessera_ir::parse(text).unwrap_or_else(|e| panic!("{e}"));
            let s = sizes_with(&g, &PlanOptions::default()).unwrap();
            plan_and_check(&mut g, &s);
        }
        // A pure in-place chain needs a single buffer.
        let mut g = tessera_ir::parse(texts[1]).unwrap();
        let s = sizes_with(&g, &PlanOptions::default()).unwrap();
        let (base, best) = plan_and_check(&mut g, &s);
        assert_eq!(best.arena_bytes, 256);
        assert_eq!(base.arena_bytes, 512);
    }

    #[test]
    fn the_checker_rejects_overlaps_and_missing_slots() {
        let mut g = tessera_ir::parse(CHAIN).unwrap();
        let s = sizes_with(&g, &PlanOptions::default()).unwrap();
        assert!(check_plan(&g, &s).unwrap_err().contains("no mem slot"));
        // Everything at offset 0: v2 and v3 are live together and v3 (exp) is not in place
        // over v2 (v2 is read again by v4).
        let results: Vec<Value> = g.nodes().flat_map(|(_, nd)| nd.outputs.clone()).collect();
        for &r in &results {
            g.value_mut(r).mem = Some(MemSlot { arena: 0, offset: 0 });
        }
        assert!(check_plan(&g, &s).unwrap_err().contains("overlaps"));
        // Misaligned.
        let best = best_plan(&g, &current_order(&g), &s);
        best.apply(&mut g);
        check_plan(&g, &s).unwrap();
        g.value_mut(results[0]).mem = Some(MemSlot { arena: 0, offset: 8 });
        assert!(check_plan(&g, &s).is_err());
    }

    #[test]
    fn random_dags_get_valid_plans_no_larger_than_greedy_by_size() {
        let mut wins = 0;
        for seed in 0..150u64 {
            let mut g = random_dag(seed, 5 + (seed as usize % 40));
            tessera_ir::verify(&g).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let s = sizes_with(&g, &PlanOptions::default()).unwrap();
            let (base, best) = plan_and_check(&mut g, &s);
            wins += (best.arena_bytes < base.arena_bytes) as usize;
        }
        assert!(wins > 0, "the better heuristics never beat greedy-by-size");
    }

    #[test]
    fn placement_first_fit_and_best_fit() {
        let bufs = vec![
            Buffer { values: vec![Value(0)], start: 0, end: 0, bytes: 64 },
            Buffer { values: vec![Value(1)], start: 0, end: 2, bytes: 128 },
            Buffer { values: vec![Value(2)], start: 1, end: 2, bytes: 64 },
        ];
        let (off, arena) = place(&bufs, &[0, 1, 2], Fit::First);
        assert_eq!(off, vec![0, 64, 0]);
        assert_eq!(arena, 192);
        let (_, arena) = place(&bufs, &[1, 0, 2], Fit::Best);
        assert_eq!(arena, 192);
    }
}
