//! `cse`: common-subexpression elimination. Two nodes with the same op, attributes and operands
//! compute the same values, so later uses of the second read the first; two constants with the
//! same type and bytes are merged. Kernel nodes (regions) are left alone. Run `dce` after it to
//! drop the duplicates.

use crate::manager::{Pass, PassError, PassReport};
use std::collections::HashMap;
use tessera_ir::{Graph, Value};

pub struct Cse;

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }

    fn description(&self) -> &'static str {
        "merge nodes with equal ops and operands, and equal constants"
    }

    fn run(&self, g: &mut Graph) -> Result<PassReport, PassError> {
        let mut merged = 0;
        // Constants: same type and same bytes.
        let mut seen_consts: HashMap<(String, u64), Vec<Value>> = HashMap::new();
        let consts: Vec<(Value, u64)> =
            g.constants().iter().filter(|c| c.data.bytes().is_some()).map(|c| (c.value, c.data.hash())).collect();
        for (v, hash) in consts {
            let key = (format!("{:?}", g.ty(v)), hash);
            let same =
                seen_consts.get(&key).and_then(|vs| vs.iter().copied().find(|&o| g.const_data(o) == g.const_data(v)));
            match same {
                Some(first) => {
                    g.replace_uses(v, first);
                    merged += 1;
                }
                None => seen_consts.entry(key).or_default().push(v),
            }
        }
        // Nodes, in order, so an earlier equal node is always defined before the later one.
        let mut seen: HashMap<(String, Vec<Value>), Vec<Value>> = HashMap::new();
        let nodes: Vec<_> = g.nodes().map(|(n, _)| n).collect();
        for n in nodes {
            let nd = g.node(n);
            if nd.body.is_some() {
                continue;
            }
            let key = (format!("{:?}|{:?}", nd.op, nd.placement), nd.inputs.clone());
            let outs = nd.outputs.clone();
            match seen.get(&key) {
                Some(first) if first.iter().zip(&outs).all(|(a, b)| g.ty(*a) == g.ty(*b)) => {
                    let first = first.clone();
                    for (o, f) in outs.iter().zip(first) {
                        g.replace_uses(*o, f);
                    }
                    merged += 1;
                }
                _ => {
                    seen.insert(key, outs);
                }
            }
        }
        Ok(PassReport::changed(merged > 0).note(format!("merged {merged} duplicates")))
    }
}
