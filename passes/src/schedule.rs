//! `schedule`: a memory-aware topological order. Reorders the nodes to lower the peak of live
//! activation bytes (see `memory.rs`), measured as `plan-memory` places them (with in-place
//! sharing), under the sizes of [`PlanOptions`] (unbound `batch*` symbols 1, others 128).
//!
//! Candidates: the current order; a greedy list schedule (among ready nodes, the one that frees
//! the most bytes net of what it allocates, ties to the earlier node); depth-first orders from
//! the outputs visiting operands by their Sethi-Ullman memory need, largest first. The best is
//! then improved by local moves (a node to its earliest or latest valid place, a chain of
//! single-use nodes down to just before its user), each kept only when it lowers
//! `(peak with in-place, peak without, live bytes summed over steps)` without raising either
//! peak. The order is replaced only when strictly better, so the pass never raises the peak and
//! is deterministic. Data dependencies are the only constraints (ops have no side effects).
//!
//! Clears every `mem` slot when the order changes: a plan is only valid for its order.
//! Leaves the graph alone (with a note) when some size is unknown (`?` dims).

use crate::manager::{Pass, PassError, PassReport};
use crate::memory::{current_order, inplace_candidates, sizes_with, PlanOptions};
use tessera_ir::{Graph, Node, ValueDef};

/// Work allowed to one local search, in units of one node or operand visited while evaluating
/// an order (about half a second of a debug build; MiniLM-L3 needs a tenth of it).
pub const WORK_BUDGET: u64 = 5_000_000;

#[derive(Default)]
pub struct Schedule {
    pub opts: PlanOptions,
}

/// Cost of an order: peak with in-place sharing, peak without, and the sum over steps of live
/// bytes with sharing. Lower is better, compared lexicographically.
pub type Cost = (u64, u64, u128);

/// Evaluates orders of one graph quickly (everything that does not depend on the order is
/// precomputed).
pub struct Evaluator<'g> {
    g: &'g Graph,
    sizes: Vec<u64>,
    /// In-place candidates of each node.
    cands: Vec<Vec<tessera_ir::Value>>,
    /// Producer node of each value, for node results.
    producer: Vec<Option<Node>>,
    /// Distinct user nodes of each value.
    users: Vec<Vec<Node>>,
    is_output: Vec<bool>,
}

impl<'g> Evaluator<'g> {
    pub fn new(g: &'g Graph, sizes: Vec<u64>) -> Evaluator<'g> {
        let cands = g.nodes().map(|(n, _)| inplace_candidates(g, n, &sizes)).collect();
        let producer = g
            .values()
            .map(|(_, vd)| match vd.def {
                ValueDef::Result(n, _) => Some(n),
                _ => None,
            })
            .collect();
        let mut is_output = vec![false; g.n_values()];
        for (_, v) in g.outputs() {
            is_output[v.index()] = true;
        }
        Evaluator { g, sizes, cands, producer, users: g.users(), is_output }
    }

    /// The cost of `order`.
    pub fn cost(&self, order: &[Node]) -> Cost {
        let g = self.g;
        let steps = order.len();
        let mut pos = vec![0usize; g.n_nodes()];
        for (i, n) in order.iter().enumerate() {
            pos[n.index()] = i;
        }
        let end = |v: tessera_ir::Value, start: usize| -> usize {
            if self.is_output[v.index()] {
                steps
            } else {
                self.users[v.index()].iter().map(|u| pos[u.index()]).max().unwrap_or(start).max(start)
            }
        };
        let mut plain = vec![0i128; steps + 2];
        let mut shared = vec![0i128; steps + 2];
        for (i, &n) in order.iter().enumerate() {
            for &r in &g.node(n).outputs {
                let b = self.sizes[r.index()] as i128;
                let e = end(r, i);
                plain[i] += b;
                plain[e + 1] -= b;
            }
            // An in-place result shares the buffer of an operand dying here: one fewer copy at i.
            if let Some(&v) = self.cands[n.index()].iter().find(|v| {
                let p = self.producer[v.index()].expect("candidates are node results");
                end(**v, pos[p.index()]) == i
            }) {
                let b = self.sizes[v.index()] as i128;
                shared[i] -= b;
                shared[i + 1] += b;
            }
        }
        let (mut live_p, mut live_s, mut peak_p, mut peak_s, mut area) = (0i128, 0i128, 0u64, 0u64, 0u128);
        for i in 0..=steps {
            live_p += plain[i];
            live_s += plain[i] + shared[i];
            peak_p = peak_p.max(live_p as u64);
            peak_s = peak_s.max(live_s as u64);
            area += live_s as u128;
        }
        (peak_s, peak_p, area)
    }

    fn result_bytes(&self, n: Node) -> u64 {
        self.g.node(n).outputs.iter().map(|r| self.sizes[r.index()]).sum()
    }

    /// Producer nodes of `n`'s operands, distinct, in operand order.
    fn preds(&self, n: Node) -> Vec<Node> {
        let mut out = Vec::new();
        for &v in &self.g.node(n).inputs {
            if let Some(p) = self.producer[v.index()] {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Greedy list scheduling: among ready nodes, the one with the largest bytes freed minus
    /// bytes allocated; ties to the earlier node of the current order.
    pub fn greedy(&self) -> Vec<Node> {
        let g = self.g;
        let mut missing: Vec<usize> = g.nodes().map(|(n, _)| self.preds(n).len()).collect();
        let mut remaining_users: Vec<usize> = self.users.iter().map(|u| u.len()).collect();
        let mut succs: Vec<Vec<Node>> = vec![Vec::new(); g.n_nodes()];
        for (n, _) in g.nodes() {
            for p in self.preds(n) {
                succs[p.index()].push(n);
            }
        }
        let mut ready: Vec<Node> = g.nodes().map(|(n, _)| n).filter(|n| missing[n.index()] == 0).collect();
        let mut order = Vec::with_capacity(g.n_nodes());
        while !ready.is_empty() {
            let score = |n: Node| -> i128 {
                let nd = g.node(n);
                let mut freed = 0i128;
                let mut seen = Vec::new();
                for &v in &nd.inputs {
                    if self.producer[v.index()].is_some()
                        && !self.is_output[v.index()]
                        && remaining_users[v.index()] == 1
                        && !seen.contains(&v)
                    {
                        freed += self.sizes[v.index()] as i128;
                        seen.push(v);
                    }
                }
                freed - self.result_bytes(n) as i128
            };
            let (k, _) = ready
                .iter()
                .enumerate()
                .max_by_key(|(_, &n)| (score(n), std::cmp::Reverse(n.index())))
                .expect("ready is not empty");
            let n = ready.swap_remove(k);
            order.push(n);
            let mut seen = Vec::new();
            for &v in &g.node(n).inputs {
                if !seen.contains(&v) {
                    seen.push(v);
                    remaining_users[v.index()] = remaining_users[v.index()].saturating_sub(1);
                }
            }
            for &s in &succs[n.index()] {
                missing[s.index()] -= 1;
                if missing[s.index()] == 0 {
                    ready.push(s);
                }
            }
        }
        order
    }

    /// Depth-first from the outputs (then from nodes reaching no output, in order), visiting
    /// operand producers by Sethi-Ullman need minus result bytes, largest first.
    pub fn depth_first(&self, su: bool) -> Vec<Node> {
        let g = self.g;
        let mut need = vec![0u64; g.n_nodes()];
        for (n, _) in g.nodes() {
            let mut kids = self.preds(n);
            kids.sort_by_key(|c| std::cmp::Reverse(need[c.index()] as i128 - self.result_bytes(*c) as i128));
            let (mut held, mut m) = (0u64, 0u64);
            for c in &kids {
                m = m.max(held + need[c.index()]);
                held += self.result_bytes(*c);
            }
            need[n.index()] = m.max(held + self.result_bytes(n));
        }
        let mut done = vec![false; g.n_nodes()];
        let mut order = Vec::with_capacity(g.n_nodes());
        let roots: Vec<Node> =
            g.outputs().iter().filter_map(|(_, v)| self.producer[v.index()]).chain(g.nodes().map(|(n, _)| n)).collect();
        for root in roots {
            if done[root.index()] {
                continue;
            }
            // (node, children still to visit)
            let mut stack: Vec<(Node, Vec<Node>)> = Vec::new();
            let kids = |n: Node| {
                let mut k = self.preds(n);
                if su {
                    k.sort_by_key(|c| std::cmp::Reverse(need[c.index()] as i128 - self.result_bytes(*c) as i128));
                }
                k.reverse(); // popped from the back
                k
            };
            done[root.index()] = true;
            stack.push((root, kids(root)));
            while let Some((n, pending)) = stack.last_mut() {
                let n = *n;
                match pending.pop() {
                    Some(c) if !done[c.index()] => {
                        done[c.index()] = true;
                        let k = kids(c);
                        stack.push((c, k));
                    }
                    Some(_) => {}
                    None => {
                        order.push(n);
                        stack.pop();
                    }
                }
            }
        }
        order
    }

    /// Local improvement of `order` (see the module header): at most `rounds` sweeps, and at
    /// most [`WORK_BUDGET`] units of work (an evaluation costs about nodes + operands), so the
    /// result stays deterministic and the time bounded on large graphs.
    pub fn improve(&self, mut order: Vec<Node>, rounds: usize) -> Vec<Node> {
        let g = self.g;
        let mut cost = self.cost(&order);
        let accept = |old: Cost, new: Cost| new < old && new.0 <= old.0 && new.1 <= old.1;
        let per_eval = (g.n_nodes() + g.nodes().map(|(_, nd)| nd.inputs.len()).sum::<usize>()).max(1) as u64;
        let mut budget = WORK_BUDGET / per_eval;
        for _ in 0..rounds {
            let mut improved = false;
            let mut i = 0;
            let mut pos = vec![0usize; g.n_nodes()];
            let mut stale = true;
            while i < order.len() {
                if stale {
                    for (k, n) in order.iter().enumerate() {
                        pos[n.index()] = k;
                    }
                    stale = false;
                }
                let n = order[i];
                let earliest = self.preds(n).iter().map(|p| pos[p.index()] + 1).max().unwrap_or(0);
                let first_user = g
                    .node(n)
                    .outputs
                    .iter()
                    .flat_map(|r| self.users[r.index()].iter())
                    .map(|u| pos[u.index()])
                    .min()
                    .unwrap_or(order.len());
                let mut tries: Vec<Vec<Node>> = Vec::new();
                for target in [earliest, first_user.saturating_sub(1)] {
                    if target != i && target < order.len() {
                        let mut o = order.clone();
                        let x = o.remove(i);
                        o.insert(target, x);
                        tries.push(o);
                    }
                }
                // A chain of single-use nodes ending at n, moved down to just before n's user.
                if first_user < order.len() && first_user > i + 1 {
                    let mut chain = vec![n];
                    let mut cur = n;
                    loop {
                        let ps = self.preds(cur);
                        let single = |p: &Node| {
                            g.node(*p)
                                .outputs
                                .iter()
                                .all(|r| !self.is_output[r.index()] && self.users[r.index()].iter().all(|u| *u == cur))
                        };
                        match ps.iter().find(|p| single(p)) {
                            Some(&p) if pos[p.index()] < pos[cur.index()] => {
                                chain.push(p);
                                cur = p;
                            }
                            _ => break,
                        }
                    }
                    if chain.len() > 1 {
                        let members: std::collections::HashSet<Node> = chain.iter().copied().collect();
                        let mut moved: Vec<Node> = order.iter().copied().filter(|m| members.contains(m)).collect();
                        let mut o: Vec<Node> = Vec::with_capacity(order.len());
                        for (k, &m) in order.iter().enumerate() {
                            if k == first_user {
                                o.append(&mut moved);
                            }
                            if !members.contains(&m) {
                                o.push(m);
                            }
                        }
                        tries.push(o);
                    }
                }
                let mut took = false;
                for o in tries {
                    if budget == 0 {
                        return order;
                    }
                    budget -= 1;
                    let c = self.cost(&o);
                    if accept(cost, c) && is_topological(g, &o) {
                        order = o;
                        cost = c;
                        improved = true;
                        took = true;
                        stale = true;
                        break;
                    }
                }
                if !took {
                    i += 1;
                }
            }
            if !improved {
                break;
            }
        }
        order
    }

    /// The best order found, and its cost; the current order when nothing beats it.
    pub fn best_order(&self) -> (Vec<Node>, Cost) {
        let current = current_order(self.g);
        let mut best = (current.clone(), self.cost(&current));
        let candidates = [current, self.greedy(), self.depth_first(true), self.depth_first(false)];
        let rounds = 4;
        for o in candidates {
            if !is_topological(self.g, &o) {
                continue;
            }
            let o = self.improve(o, rounds);
            let c = self.cost(&o);
            if c < best.1 && c.0 <= best.1 .0 && c.1 <= best.1 .1 {
                best = (o, c);
            }
        }
        best
    }
}

/// Whether `order` lists every node once, each after the producers of its operands.
pub fn is_topological(g: &Graph, order: &[Node]) -> bool {
    if order.len() != g.n_nodes() {
        return false;
    }
    let mut pos = vec![usize::MAX; g.n_nodes()];
    for (i, n) in order.iter().enumerate() {
        if pos[n.index()] != usize::MAX {
            return false;
        }
        pos[n.index()] = i;
    }
    order.iter().enumerate().all(|(i, &n)| {
        g.node(n).inputs.iter().all(|v| match g.value(*v).def {
            ValueDef::Result(p, _) => pos[p.index()] < i,
            _ => true,
        })
    })
}

impl Pass for Schedule {
    fn name(&self) -> &'static str {
        "schedule"
    }

    fn description(&self) -> &'static str {
        "reorder nodes to lower the peak of live activation bytes (never raises it)"
    }

    fn run(&self, g: &mut Graph) -> Result<PassReport, PassError> {
        let sizes = match sizes_with(g, &self.opts) {
            Ok(s) => s,
            Err(e) => return Ok(PassReport::changed(false).note(format!("left alone: {e}"))),
        };
        let ev = Evaluator::new(g, sizes);
        let current = current_order(g);
        let before = ev.cost(&current);
        let (order, after) = ev.best_order();
        let changed = order != current;
        drop(ev);
        if changed {
            g.set_order(&order);
            let results: Vec<_> = g.nodes().flat_map(|(_, nd)| nd.outputs.clone()).collect();
            for r in results {
                g.value_mut(r).mem = None;
            }
        }
        Ok(PassReport::changed(changed)
            .note(format!("peak {} -> {} bytes with in-place sharing", before.0, after.0))
            .note(format!("peak {} -> {} bytes without", before.1, after.1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::testutil::{random_dag, random_inputs};
    use crate::memory::{check_plan, lower_bound, sizes_with};
    use crate::plan_memory::PlanMemory;

    fn peaks(g: &Graph) -> (u64, u64) {
        let s = sizes_with(g, &PlanOptions::default()).unwrap();
        let o = current_order(g);
        (lower_bound(g, &o, &s, true), lower_bound(g, &o, &s, false))
    }

    fn bits(ts: &[tessera_ir::Tensor]) -> Vec<Vec<u8>> {
        ts.iter().map(|t| t.to_bytes()).collect()
    }

    /// Attention-like: V is computed before the scores in the given order, so it is live
    /// through the large scores; computing it after the softmax lowers the peak.
    const LATE_V: &str = r#"
graph @attn {
  v0: f32[seq, 16] = input "x"
  v1: f32[16, 16] = const splat(0.25)
  v2: f32[seq, 16] = matmul v0, v1
  v3: f32[seq, 16] = relu v2
  v4: f32[16, seq] = transpose v0 {perm = [1, 0]}
  v5: f32[seq, seq] = matmul v0, v4
  v6: f32[seq, seq] = mul v5, v5
  v7: f32[seq, seq] = softmax v6 {axis = -1}
  v8: f32[seq, 16] = matmul v7, v3
  output "y" = v8
}
"#;

    #[test]
    fn schedule_moves_work_past_a_large_temporary() {
        let mut g = tessera_ir::parse(LATE_V).unwrap();
        let before = peaks(&g);
        let x = random_inputs(&tessera_ir::parse(&LATE_V.replace("seq", "8")).unwrap(), 7);
        let g8 = tessera_ir::parse(&LATE_V.replace("seq", "8")).unwrap();
        let want = tessera_ir::run(&g8, x.clone()).unwrap();
        let report = Schedule::default().run(&mut g).unwrap();
        assert!(report.changed, "{report:?}");
        tessera_ir::verify(&g).unwrap();
        let after = peaks(&g);
        assert!(after.0 < before.0, "{before:?} -> {after:?}");
        assert!(after.1 <= before.1);
        let got = tessera_ir::run(&g, x).unwrap();
        assert_eq!(bits(&want), bits(&got));
        // Running it again finds nothing better.
        assert!(!Schedule::default().run(&mut g).unwrap().changed);
    }

    #[test]
    fn schedule_of_random_dags_is_valid_never_worse_and_computes_the_same() {
        let mut lowered = 0;
        for seed in 0..120u64 {
            let mut g = random_dag(seed, 6 + (seed as usize % 50));
            let inputs = random_inputs(&g, seed);
            let want = tessera_ir::run(&g, inputs.clone()).unwrap();
            let before = peaks(&g);
            Schedule::default().run(&mut g).unwrap();
            tessera_ir::verify(&g).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert!(is_topological(&g, &current_order(&g)));
            let after = peaks(&g);
            assert!(after.0 <= before.0 && after.1 <= before.1, "seed {seed}: {before:?} -> {after:?}");
            lowered += (after.0 < before.0) as usize;
            let got = tessera_ir::run(&g, inputs).unwrap();
            assert_eq!(bits(&want), bits(&got), "seed {seed}");
            // The planner still gives a valid plan for the new order.
            PlanMemory::default().run(&mut g).unwrap();
            check_plan(&g, &sizes_with(&g, &PlanOptions::default()).unwrap()).unwrap();
        }
        assert!(lowered > 0, "schedule never lowered a peak");
    }

    #[test]
    fn candidate_orders_are_topological() {
        for seed in 200..260u64 {
            let g = random_dag(seed, 30);
            let ev = Evaluator::new(&g, sizes_with(&g, &PlanOptions::default()).unwrap());
            assert!(is_topological(&g, &ev.greedy()), "greedy, seed {seed}");
            assert!(is_topological(&g, &ev.depth_first(true)), "dfs, seed {seed}");
            assert!(is_topological(&g, &ev.depth_first(false)), "dfs, seed {seed}");
            let cur = current_order(&g);
            let better = ev.improve(cur.clone(), 4);
            assert!(is_topological(&g, &better));
            assert!(ev.cost(&better) <= ev.cost(&cur));
        }
    }

    #[test]
    fn cost_matches_the_buffer_model() {
        for seed in 300..340u64 {
            let g = random_dag(seed, 25);
            let s = sizes_with(&g, &PlanOptions::default()).unwrap();
            let ev = Evaluator::new(&g, s.clone());
            for o in [current_order(&g), ev.greedy(), ev.depth_first(true)] {
                let c = ev.cost(&o);
                assert_eq!((c.0, c.1), (lower_bound(&g, &o, &s, true), lower_bound(&g, &o, &s, false)), "seed {seed}");
            }
        }
    }

    #[test]
    fn schedule_clears_a_stale_plan_and_skips_unknown_sizes() {
        let mut g = tessera_ir::parse(LATE_V).unwrap();
        PlanMemory::default().run(&mut g).unwrap();
        Schedule::default().run(&mut g).unwrap();
        assert!(g.values().all(|(_, d)| d.mem.is_none()));
        let text = "graph @u {\n  v0: f32[?] = input \"x\"\n  v1: f32[?] = relu v0\n  output \"y\" = v1\n}\n";
        let mut u = tessera_ir::parse(text).unwrap();
        let r = Schedule::default().run(&mut u).unwrap();
        assert!(!r.changed && r.notes[0].contains("left alone"), "{r:?}");
    }

    #[test]
    fn large_random_dags_are_scheduled_in_bounded_time() {
        let mut g = random_dag(7, 2000);
        let before = peaks(&g);
        let t = std::time::Instant::now();
        Schedule::default().run(&mut g).unwrap();
        let after = peaks(&g);
        tessera_ir::verify(&g).unwrap();
        assert!(after.0 <= before.0 && after.1 <= before.1);
        assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());
    }

    /// The interpreter on a real graph before and after `schedule` (see `stats.rs`'s
    /// `measure_graph` for how to dump one): `TESSERA_STATS_GRAPH=/tmp/minilm.tir cargo test -p
    /// tessera-passes real_graph -- --ignored`.
    #[test]
    #[ignore]
    fn real_graph_computes_the_same_after_schedule() {
        let path = std::env::var("TESSERA_STATS_GRAPH").unwrap_or_else(|_| "/tmp/minilm.tir".to_string());
        let mut g = tessera_ir::parse_file(std::path::Path::new(&path)).unwrap();
        let seq = 16;
        let inputs: Vec<tessera_ir::Tensor> = g
            .inputs()
            .iter()
            .map(|(name, v)| {
                let dtype = g.ty(*v).dtype;
                let vals: Vec<i64> = (0..seq)
                    .map(|i| if name.contains("mask") { (i < 13) as i64 } else { 1000 + 37 * i as i64 })
                    .collect();
                tessera_ir::Tensor::from_i64(dtype, &[1, seq], vals).unwrap()
            })
            .collect();
        let want = tessera_ir::run(&g, inputs.clone()).unwrap();
        let r = Schedule::default().run(&mut g).unwrap();
        assert!(r.changed, "{r:?}");
        tessera_ir::verify(&g).unwrap();
        let got = tessera_ir::run(&g, inputs).unwrap();
        assert_eq!(bits(&want), bits(&got));
    }
}
