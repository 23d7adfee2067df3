//! Rule groups (`algebra`, `layout`, `fusion`, `norms`, `quant`) and the helpers their conditions and appliers use.
//!
//! Rules that only union a pattern with one of its own variables are plain `rewrite!` rules with
//! conditions. Rules that build new nodes (a computed attribute or constant, a fused op) use
//! `Build`: a function makes the new e-node and, for real ops, `Build` unions it with the matched
//! class only when the two types agree (same dtype and rank, each dim equal or `?` on one side),
//! so a broadcast that changed a shape can never be rewritten away. Marker rules (`Build::marker`) skip the type check: markers have no type.

pub mod algebra;
pub mod fusion;
pub mod layout;
pub mod norms;
pub mod quant;

use super::lang::{compatible, Attr, TensorEGraph, TensorLang, TypeAnalysis};
use egg::{Applier, Id, PatternAst, Rewrite, Subst, Symbol, Var};
use tessera_ir::{DType, TensorType};

pub type Rule = Rewrite<TensorLang, TypeAnalysis>;

/// Every rule of every group.
pub fn all() -> Vec<Rule> {
    let mut rules = algebra::rules();
    rules.extend(layout::rules());
    rules.extend(fusion::rules());
    rules.extend(norms::rules());
    rules.extend(quant::rules());
    rules
}

pub fn var(name: &str) -> Var {
    name.parse().expect("a pattern variable")
}

/// The type of an e-class.
pub fn ty(eg: &TensorEGraph, id: Id) -> Option<&TensorType> {
    eg[id].data.ty.as_ref()
}

/// The splat value of a constant e-class.
pub fn splat(eg: &TensorEGraph, id: Id) -> Option<f32> {
    eg[id].data.splat
}

/// Whether a constant e-class is a splat within relative tolerance 1e-4 of `target` (exported
/// constants are written to fewer digits: 1.4142135 for sqrt(2), 0.7978846 for sqrt(2/pi)).
pub fn splat_near(eg: &TensorEGraph, id: Id, target: f64) -> bool {
    splat(eg, id).is_some_and(|v| ((v as f64) - target).abs() <= 1e-4 * target.abs().max(1e-6))
}

/// Whether a class holds a constant of one element (any rank).
pub fn is_scalar_const(eg: &TensorEGraph, id: Id) -> bool {
    splat(eg, id).is_some() && ty(eg, id).is_some_and(|t| t.shape.static_numel() == Some(1))
}

pub fn is_f32(eg: &TensorEGraph, id: Id) -> bool {
    ty(eg, id).is_some_and(|t| t.dtype == DType::F32)
}

pub fn attr(eg: &TensorEGraph, id: Id) -> Option<Attr> {
    eg[id].data.attr.clone()
}

/// Condition: the matched class has the same (known) type as `?x`.
pub fn same_type_as(x: &str) -> impl Fn(&mut TensorEGraph, Id, &Subst) -> bool {
    let x = var(x);
    move |eg, root, s| ty(eg, root).is_some() && ty(eg, root) == ty(eg, s[x])
}

/// Condition: `?c` is a constant whose elements all equal `value` exactly.
pub fn is_splat(c: &str, value: f32) -> impl Fn(&mut TensorEGraph, Id, &Subst) -> bool {
    let c = var(c);
    move |eg, _, s| splat(eg, s[c]) == Some(value)
}

type BuildFn = dyn Fn(&mut TensorEGraph, Id, &Subst) -> Option<Id> + Send + Sync;

/// An applier that builds the replacement with a function (None: the match does not apply).
pub struct Build {
    f: Box<BuildFn>,
    check_types: bool,
}

impl Build {
    /// A replacement that is a real op: unioned only when its type equals the matched class's.
    pub fn op(f: impl Fn(&mut TensorEGraph, Id, &Subst) -> Option<Id> + Send + Sync + 'static) -> Build {
        Build { f: Box::new(f), check_types: true }
    }

    /// A marker: unioned without a type check.
    pub fn marker(f: impl Fn(&mut TensorEGraph, Id, &Subst) -> Option<Id> + Send + Sync + 'static) -> Build {
        Build { f: Box::new(f), check_types: false }
    }
}

impl Applier<TensorLang, TypeAnalysis> for Build {
    fn apply_one(
        &self,
        eg: &mut TensorEGraph,
        eclass: Id,
        subst: &Subst,
        _searcher_ast: Option<&PatternAst<TensorLang>>,
        _rule_name: Symbol,
    ) -> Vec<Id> {
        let Some(new) = (self.f)(eg, eclass, subst) else { return vec![] };
        if self.check_types {
            match (ty(eg, eclass), ty(eg, new)) {
                (Some(a), Some(b)) if compatible(a, b) => {}
                _ => return vec![],
            }
        }
        if eg.union(eclass, new) {
            vec![eclass]
        } else {
            vec![]
        }
    }
}

/// Adds an attribute leaf.
pub fn add_attr(eg: &mut TensorEGraph, a: Attr) -> Id {
    eg.add(TensorLang::Attr(a))
}

/// Parses a pattern built at run time (the generated variants of a fusion pattern).
pub fn pattern(text: &str) -> egg::Pattern<TensorLang> {
    text.parse().unwrap_or_else(|e| panic!("bad pattern {text}: {e}"))
}
