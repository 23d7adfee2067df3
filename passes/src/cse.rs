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
        // Constants: same type and same bytes. Only constants that share their type with another
        // are hashed, so a model's big unique weights (an embedding table) are never read.
        let mut by_type: HashMap<String, Vec<Value>> = HashMap::new();
        for c in g.constants().iter().filter(|c| c.data.bytes().is_some()) {
            by_type.entry(format!("{:?}", g.ty(c.value))).or_default().push(c.value);
        }
        let mut groups: Vec<Vec<Value>> = by_type.into_values().filter(|vs| vs.len() > 1).collect();
        groups.sort();
        for group in groups {
            let mut seen: HashMap<u64, Vec<Value>> = HashMap::new();
            for v in group {
                let hash = g.const_data(v).and_then(|d| d.bytes()).map(sample_hash).unwrap_or_default();
                let same =
                    seen.get(&hash).and_then(|vs| vs.iter().copied().find(|&o| g.const_data(o) == g.const_data(v)));
                match same {
                    Some(first) => {
                        g.replace_uses(v, first);
                        merged += 1;
                    }
                    None => seen.entry(hash).or_default().push(v),
                }
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

/// A cheap bucket key for constant bytes: the length and the first and last 256 bytes. Equal
/// constants always share it; the byte comparison that follows decides.
fn sample_hash(bytes: &[u8]) -> u64 {
    let head = &bytes[..bytes.len().min(256)];
    let tail = &bytes[bytes.len().saturating_sub(256)..];
    tessera_ir::constant::fnv1a64(head) ^ tessera_ir::constant::fnv1a64(tail).rotate_left(17) ^ bytes.len() as u64
}
