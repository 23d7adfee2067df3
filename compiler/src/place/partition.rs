//! The partitioner: kernels to units by the makespan of a list schedule.
//!
//! The schedule is the runtime's: one in-order queue per unit, kernels issued in graph order,
//! each starting when its unit is free and its operands are available on it. An operand made
//! on another unit is available after a hand-over (the profile's signal cost plus cache
//! maintenance over its bytes), paid once per producer and consuming unit. The graph's inputs
//! arrive in CPU memory and its outputs are read on the CPU, so kernels on other units reading
//! inputs or making outputs pay a hand-over too.
//!
//! [`partition`] starts from every single unit that can run the whole graph and from an
//! earliest-finish greedy pass, then improves the best by moving single kernels and whole runs
//! of consecutive kernels between units while the makespan falls; the result is never worse
//! than the best single unit. [`exact`] is a branch and bound over every assignment, for
//! checking it on graphs small enough.

use super::{unit_index, Problem, UNITS};
use tessera_ir::Device as Unit;

/// A hand-over of a kernel's results (or of the graph's inputs, `from: None`) to another unit.
#[derive(Clone, Debug, PartialEq)]
pub struct Handoff {
    pub from: Option<usize>,
    pub from_unit: Unit,
    pub to_unit: Unit,
    pub bytes: u64,
    pub start_us: f64,
    pub us: f64,
}

/// Where every kernel runs and when (microseconds from the start).
#[derive(Clone, Debug)]
pub struct Schedule {
    pub assign: Vec<Unit>,
    pub start: Vec<f64>,
    pub finish: Vec<f64>,
    pub handoffs: Vec<Handoff>,
    pub makespan: f64,
}

impl Schedule {
    /// Runs of consecutive kernels on one unit (a measure of fragmentation).
    pub fn segments(&self) -> usize {
        self.assign.windows(2).filter(|w| w[0] != w[1]).count() + usize::from(!self.assign.is_empty())
    }

    /// Busy microseconds per unit ([`UNITS`] order).
    pub fn busy(&self) -> [f64; 3] {
        let mut b = [0.0; 3];
        for (k, u) in self.assign.iter().enumerate() {
            b[unit_index(*u)] += self.finish[k] - self.start[k];
        }
        b
    }
}

/// The partitioner's answer, with the single-unit schedules it is measured against.
#[derive(Clone, Debug)]
pub struct Placement {
    pub schedule: Schedule,
    /// Each unit alone: its schedule, or the first kernel it cannot run and why.
    pub singles: Vec<(Unit, Result<Schedule, String>)>,
}

impl Placement {
    /// The fastest single unit and its makespan.
    pub fn best_single(&self) -> Option<(Unit, f64)> {
        self.singles
            .iter()
            .filter_map(|(u, s)| s.as_ref().ok().map(|s| (*u, s.makespan)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// The list schedule, built one kernel at a time (kernels in graph order).
#[derive(Clone)]
struct Sim<'p> {
    p: &'p Problem,
    free: [f64; 3],
    /// When kernel k's results are available on each unit (NaN: not handed over yet).
    avail: Vec<[f64; 3]>,
    inputs_on: [f64; 3],
    assign: Vec<Unit>,
    start: Vec<f64>,
    finish: Vec<f64>,
    handoffs: Vec<Handoff>,
    end: f64,
    record: bool,
}

impl<'p> Sim<'p> {
    fn new(p: &'p Problem, record: bool) -> Sim<'p> {
        let n = p.kernels.len();
        Sim {
            p,
            free: [0.0; 3],
            avail: Vec::with_capacity(n),
            inputs_on: [0.0, f64::NAN, f64::NAN],
            assign: Vec::with_capacity(n),
            start: Vec::with_capacity(n),
            finish: Vec::with_capacity(n),
            handoffs: Vec::new(),
            end: 0.0,
            record,
        }
    }

    fn handoff(&mut self, from: Option<usize>, from_unit: Unit, to: Unit, bytes: u64, at: f64) -> f64 {
        let us = self.p.profile.handoff_us(bytes);
        if self.record {
            self.handoffs.push(Handoff { from, from_unit, to_unit: to, bytes, start_us: at, us });
        }
        at + us
    }

    /// Places the next kernel on `u`; false when `u` cannot run it.
    fn push(&mut self, u: Unit) -> bool {
        let k = self.assign.len();
        let kern = &self.p.kernels[k];
        let Some(cost) = kern.us(u) else { return false };
        let ui = unit_index(u);
        let mut ready: f64 = 0.0;
        if kern.input_bytes > 0 {
            if self.inputs_on[ui].is_nan() {
                self.inputs_on[ui] = self.handoff(None, Unit::Cpu, u, kern.input_bytes, 0.0);
            }
            ready = ready.max(self.inputs_on[ui]);
        }
        for &(p, bytes) in &kern.preds {
            if self.avail[p][ui].is_nan() {
                let pu = self.assign[p];
                self.avail[p][ui] = self.handoff(Some(p), pu, u, bytes, self.finish[p]);
            }
            ready = ready.max(self.avail[p][ui]);
        }
        let start = ready.max(self.free[ui]);
        let finish = start + cost;
        self.free[ui] = finish;
        let mut avail = [f64::NAN; 3];
        avail[ui] = finish;
        self.avail.push(avail);
        self.assign.push(u);
        self.start.push(start);
        self.finish.push(finish);
        let mut end = finish;
        if kern.output_bytes > 0 && u != Unit::Cpu {
            end = self.handoff(Some(k), u, Unit::Cpu, kern.output_bytes, finish);
        }
        self.end = self.end.max(end);
        true
    }

    fn schedule(self) -> Schedule {
        Schedule {
            assign: self.assign,
            start: self.start,
            finish: self.finish,
            handoffs: self.handoffs,
            makespan: self.end,
        }
    }
}

/// The schedule of an assignment; `Err` names the first kernel its unit cannot run.
pub fn evaluate(p: &Problem, assign: &[Unit]) -> Result<Schedule, String> {
    let mut s = Sim::new(p, true);
    for (k, &u) in assign.iter().enumerate() {
        if !s.push(u) {
            let why = match &p.kernels[k].cost[unit_index(u)] {
                super::UnitCost::Declined(w) => w.clone(),
                _ => String::new(),
            };
            return Err(format!("{} on the {u}: {why}", p.kernels[k].name));
        }
    }
    Ok(s.schedule())
}

fn makespan(p: &Problem, assign: &[Unit]) -> f64 {
    let mut s = Sim::new(p, false);
    for &u in assign {
        if !s.push(u) {
            return f64::INFINITY;
        }
    }
    s.end
}

/// Places every kernel (see the module's doc). Errors when some kernel no unit runs.
pub fn partition(p: &Problem) -> Result<Placement, super::PlaceError> {
    for k in &p.kernels {
        if k.cost.iter().all(|c| c.us().is_none()) {
            let why = k
                .cost
                .iter()
                .zip(UNITS)
                .map(|(c, u)| match c {
                    super::UnitCost::Declined(w) => format!("{u}: {w}"),
                    _ => String::new(),
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(super::PlaceError::NoUnit { kernel: k.name.clone(), why });
        }
    }
    let n = p.kernels.len();
    let singles: Vec<(Unit, Result<Schedule, String>)> = UNITS.iter().map(|&u| (u, evaluate(p, &vec![u; n]))).collect();
    // Greedy: each kernel where it finishes first.
    let mut s = Sim::new(p, false);
    for _ in 0..n {
        let mut best: Option<(f64, Sim)> = None;
        for u in UNITS {
            let mut t = s.clone();
            if t.push(u) {
                let f = *t.finish.last().unwrap_or(&0.0);
                if best.as_ref().is_none_or(|(bf, _)| f < *bf - 1e-9) {
                    best = Some((f, t));
                }
            }
        }
        s = best.expect("every kernel runs on some unit").1;
    }
    // Each kernel on its fastest unit, ignoring hand-overs.
    let fastest: Vec<Unit> = p
        .kernels
        .iter()
        .map(|k| {
            UNITS
                .into_iter()
                .filter_map(|u| k.us(u).map(|c| (u, c)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(Unit::Cpu, |(u, _)| u)
        })
        .collect();
    let mut starts: Vec<Vec<Unit>> = vec![s.assign, fastest];
    starts.extend(singles.iter().filter(|(_, s)| s.is_ok()).map(|(u, _)| vec![*u; n]));
    let mut best: Option<(f64, Vec<Unit>)> = None;
    for a in starts {
        let (m, a) = improve(p, a);
        if best.as_ref().is_none_or(|(bm, _)| m < *bm) {
            best = Some((m, a));
        }
    }
    let (mut best_m, mut assign) = best.expect("a start");
    // Iterated local search: perturb the best (a few kernels, or a short run, to another unit
    // that runs them), improve, keep what is better. Seeded, so placement is deterministic.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut rand = move |m: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m.max(1) as u64) as usize
    };
    for _ in 0..PERTURBATIONS {
        if n == 0 {
            break;
        }
        let mut a = assign.clone();
        let moves = 1 + rand(3);
        for _ in 0..moves {
            let k = rand(n);
            let len = 1 + rand(4);
            let u = UNITS[rand(3)];
            let end = (k + len).min(n);
            for (x, kern) in a[k..end].iter_mut().zip(&p.kernels[k..end]) {
                if kern.us(u).is_some() {
                    *x = u;
                }
            }
        }
        let (m, a) = improve(p, a);
        if m < best_m - 1e-9 {
            best_m = m;
            assign = a;
        }
    }
    // Large neighbourhoods: every assignment of each window of consecutive kernels, the rest
    // fixed, until none improves.
    loop {
        let (m, a) = improve(p, exhaust_windows(p, assign.clone(), best_m).1);
        if m < best_m - 1e-9 {
            best_m = m;
            assign = a;
        } else {
            break;
        }
    }
    let schedule = evaluate(p, &assign).map_err(super::PlaceError::Other)?;
    Ok(Placement { schedule, singles })
}

/// Kernels per window in [`exhaust_windows`] (3^6 = 729 assignments each).
const WINDOW: usize = 6;

/// Tries every assignment of each window of [`WINDOW`] consecutive kernels, and of each
/// kernel with its producers and consumers (up to [`WINDOW`] + 1 of them), units that cannot run
/// a kernel skipped and the others fixed; keeps each improvement.
fn exhaust_windows(p: &Problem, mut a: Vec<Unit>, mut best: f64) -> (f64, Vec<Unit>) {
    let n = a.len();
    let w = WINDOW.min(n);
    let mut sets: Vec<Vec<usize>> = (0..=n.saturating_sub(w)).map(|s| (s..s + w).collect()).collect();
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (k, kern) in p.kernels.iter().enumerate() {
        for &(q, _) in &kern.preds {
            succs[q].push(k);
        }
    }
    for (k, (kern, after)) in p.kernels.iter().zip(&succs).enumerate() {
        let mut set: Vec<usize> = vec![k];
        for q in kern.preds.iter().map(|(q, _)| *q).chain(after.iter().copied()) {
            if !set.contains(&q) && set.len() <= WINDOW {
                set.push(q);
            }
        }
        if set.len() > 1 {
            sets.push(set);
        }
    }
    for set in sets {
        let options: Vec<Vec<Unit>> =
            set.iter().map(|&k| UNITS.into_iter().filter(|&u| p.kernels[k].us(u).is_some()).collect()).collect();
        let total: usize = options.iter().map(Vec::len).product();
        let mut b = a.clone();
        for mut code in 0..total {
            for (&k, opts) in set.iter().zip(&options) {
                b[k] = opts[code % opts.len()];
                code /= opts.len();
            }
            let m = makespan(p, &b);
            if m < best - 1e-9 {
                best = m;
                a.copy_from_slice(&b);
            }
        }
    }
    (best, a)
}

/// Perturbations of the iterated local search.
const PERTURBATIONS: usize = 60;

/// Local search: single-kernel moves and moves of runs of consecutive same-unit kernels,
/// first improvement, until none improves.
fn improve(p: &Problem, mut a: Vec<Unit>) -> (f64, Vec<Unit>) {
    let mut best = makespan(p, &a);
    for _ in 0..100 {
        let mut improved = false;
        // Runs of consecutive kernels on one unit.
        let mut i = 0;
        while i < a.len() {
            let mut j = i + 1;
            while j < a.len() && a[j] == a[i] {
                j += 1;
            }
            for u in UNITS {
                if u == a[i] {
                    continue;
                }
                let mut b = a.clone();
                b[i..j].iter_mut().for_each(|x| *x = u);
                let m = makespan(p, &b);
                if m < best - 1e-9 {
                    best = m;
                    a = b;
                    improved = true;
                    break;
                }
            }
            i = j;
        }
        for k in 0..a.len() {
            for u in UNITS {
                if u == a[k] {
                    continue;
                }
                let old = a[k];
                a[k] = u;
                let m = makespan(p, &a);
                if m < best - 1e-9 {
                    best = m;
                    improved = true;
                } else {
                    a[k] = old;
                }
            }
        }
        if !improved {
            break;
        }
    }
    (best, a)
}

/// The optimal assignment by branch and bound, or `None` when it needs more than `budget`
/// expanded states. Returns the schedule and the states expanded.
pub fn exact(p: &Problem, budget: u64) -> Option<(Schedule, u64)> {
    let n = p.kernels.len();
    let min_cost: Vec<f64> =
        p.kernels.iter().map(|k| k.cost.iter().filter_map(|c| c.us()).fold(f64::INFINITY, f64::min)).collect();
    // Start from the heuristic's answer as the bound to beat.
    let mut best = partition(p).ok().map(|pl| (pl.schedule.makespan, pl.schedule.assign))?;
    best.0 += 1e-9;
    let mut expanded = 0u64;
    let mut stack: Vec<Sim> = vec![Sim::new(p, false)];
    let mut est = vec![0.0f64; n];
    while let Some(s) = stack.pop() {
        expanded += 1;
        if expanded > budget {
            return None;
        }
        let k = s.assign.len();
        if k == n {
            if s.end < best.0 {
                best = (s.end, s.assign.clone());
            }
            continue;
        }
        // Lower bound: the critical path of the rest at each kernel's cheapest cost, operands
        // made so far available at their producer's finish (no hand-over counted).
        let mut lb = s.end;
        for j in k..n {
            let mut e: f64 = 0.0;
            for &(q, _) in &p.kernels[j].preds {
                e = e.max(if q < k { s.finish[q] } else { est[q] + min_cost[q] });
            }
            est[j] = e;
            lb = lb.max(e + min_cost[j]);
        }
        let mut units_free_min = f64::INFINITY;
        for (ui, f) in s.free.iter().enumerate() {
            if p.kernels[k..].iter().any(|kk| kk.cost[ui].us().is_some()) {
                units_free_min = units_free_min.min(*f);
            }
        }
        let rest: f64 = min_cost[k..].iter().sum();
        let supported = UNITS.iter().filter(|&&u| p.kernels[k..].iter().any(|kk| kk.us(u).is_some())).count().max(1);
        lb = lb.max(units_free_min + rest / supported as f64);
        if lb >= best.0 {
            continue;
        }
        let mut children: Vec<Sim> = Vec::new();
        for u in UNITS {
            let mut t = s.clone();
            if t.push(u) && t.end < best.0 {
                children.push(t);
            }
        }
        // Most promising last, so it is explored first.
        children.sort_by(|a, b| b.end.total_cmp(&a.end));
        stack.extend(children);
    }
    evaluate(p, &best.1).ok().map(|s| (s, expanded))
}

/// Kernels `start..start + len` of `p` as a problem of their own: operands from kernels before
/// the window arrive like graph inputs (in CPU memory), results read after it leave like graph
/// outputs. For checking the partitioner against [`exact`] on real graphs too big to solve whole.
pub fn window(p: &Problem, start: usize, len: usize) -> Problem {
    let end = (start + len).min(p.kernels.len());
    let mut read_after = vec![0u64; p.kernels.len()];
    for k in &p.kernels[end..] {
        for &(q, bytes) in &k.preds {
            read_after[q] += bytes;
        }
    }
    let kernels = (start..end)
        .map(|i| {
            let mut k = p.kernels[i].clone();
            let (inside, outside): (Vec<_>, Vec<_>) = k.preds.iter().partition(|(q, _)| *q >= start);
            k.input_bytes += outside.iter().map(|(_, b)| b).sum::<u64>();
            k.preds = inside.into_iter().map(|(q, b)| (q - start, b)).collect();
            k.output_bytes += read_after[i];
            k
        })
        .collect();
    Problem { kernels, profile: p.profile.clone(), bindings: p.bindings.clone() }
}

/// The partitioner against the exact optimum on every window of `len` consecutive kernels
/// (stride `len / 2`): (windows solved, windows tried, the worst gap as a fraction).
pub fn check_windows(p: &Problem, len: usize, budget: u64) -> (usize, usize, f64) {
    let (mut solved, mut tried, mut worst) = (0, 0, 0.0f64);
    let stride = (len / 2).max(1);
    let mut start = 0;
    while start < p.kernels.len() {
        let w = window(p, start, len);
        tried += 1;
        if let (Ok(pl), Some((opt, _))) = (partition(&w), exact(&w, budget)) {
            solved += 1;
            let gap = pl.schedule.makespan / opt.makespan.max(1e-12) - 1.0;
            worst = worst.max(gap);
        }
        if start + len >= p.kernels.len() {
            break;
        }
        start += stride;
    }
    (solved, tried, worst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::place::{Kernel, UnitCost};
    use tessera_passes::profile::DeviceProfile;

    /// A random DAG of `n` kernels: each reads one to three earlier ones; some units decline.
    fn random_problem(seed: u64, n: usize) -> Problem {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut next = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let profile = DeviceProfile::builtin("snapdragon-8-gen-3").unwrap();
        let mut kernels = Vec::new();
        for k in 0..n {
            let mut preds: Vec<(usize, u64)> = Vec::new();
            if k > 0 {
                for _ in 0..1 + next(3) {
                    let p = k - 1 - next(k.min(4) as u64) as usize;
                    if !preds.iter().any(|(q, _)| *q == p) {
                        preds.push((p, 1024 * (1 + next(512))));
                    }
                }
            }
            let cost = |declined: bool, us: f64| {
                if declined {
                    UnitCost::Declined("test".into())
                } else {
                    UnitCost::Runs { us, how: String::new() }
                }
            };
            let base = 5.0 + next(200) as f64;
            kernels.push(Kernel {
                node: tessera_ir::Node::from_index(k),
                name: format!("k{k}"),
                preds,
                input_bytes: if k == 0 { 4096 } else { 0 },
                output_bytes: if k == n - 1 { 4096 } else { 0 },
                flops: 0,
                int_ops: 0,
                bytes: 0,
                class: String::new(),
                cost: [
                    cost(false, base),
                    cost(next(4) == 0, base * (0.2 + next(100) as f64 / 60.0)),
                    cost(next(2) == 0, base * (0.1 + next(100) as f64 / 80.0)),
                ],
            });
        }
        Problem { kernels, profile, bindings: Default::default() }
    }

    #[test]
    fn the_partitioner_is_within_three_percent_of_the_optimum_on_small_graphs() {
        let mut worst: f64 = 0.0;
        let mut solved = 0;
        for seed in 0..120 {
            let n = 6 + (seed as usize % 9);
            let p = random_problem(seed, n);
            let pl = partition(&p).unwrap();
            let (best_u, best_single) = pl.best_single().unwrap();
            assert!(
                pl.schedule.makespan <= best_single + 1e-6,
                "seed {seed}: {} worse than {best_u} alone {best_single}",
                pl.schedule.makespan
            );
            let Some((opt, _)) = exact(&p, 20_000_000) else { continue };
            solved += 1;
            assert!(opt.makespan <= pl.schedule.makespan + 1e-6, "seed {seed}: the exact search lost");
            let gap = pl.schedule.makespan / opt.makespan - 1.0;
            worst = worst.max(gap);
            assert!(gap <= 0.03, "seed {seed} ({n} kernels): {:.2}% above the optimum", 100.0 * gap);
        }
        assert!(solved >= 100, "the exact search solved only {solved} of 120");
        eprintln!("solved {solved}/120, worst gap {:.2}%", 100.0 * worst);
    }

    #[test]
    fn evaluate_charges_hand_overs_once_per_producer_and_unit() {
        let mut p = random_problem(7, 3);
        for k in &mut p.kernels {
            k.cost = [
                UnitCost::Runs { us: 10.0, how: String::new() },
                UnitCost::Runs { us: 10.0, how: String::new() },
                UnitCost::Declined("no".into()),
            ];
        }
        p.kernels[1].preds = vec![(0, 1000)];
        p.kernels[2].preds = vec![(0, 1000), (1, 1000)];
        let s = evaluate(&p, &[Unit::Cpu, Unit::Gpu, Unit::Gpu]).unwrap();
        // Kernel 0's results go to the GPU once (kernels 1 and 2 share it), kernel 2's back.
        let h = p.profile.handoff_us(1000);
        assert_eq!(s.handoffs.iter().filter(|h| h.from == Some(0)).count(), 1);
        assert!((s.start[1] - (10.0 + h)).abs() < 1e-9);
        assert!((s.start[2] - (20.0 + h)).abs() < 1e-9);
        assert!((s.makespan - (30.0 + h + p.profile.handoff_us(4096))).abs() < 1e-9, "{}", s.makespan);
        let err = evaluate(&p, &[Unit::Npu, Unit::Gpu, Unit::Gpu]).unwrap_err();
        assert!(err.contains("k0 on the npu"), "{err}");
    }
}
