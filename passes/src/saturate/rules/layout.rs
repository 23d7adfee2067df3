//! Layout: `transpose` with the identity perm is its operand; `transpose(transpose(x))` is one
//! transpose with the composed perm (or `x` when they cancel); `(a @ b)^T = b^T @ a^T` over the
//! last two dims (exact: the same products summed in the same order).

use super::{add_attr, attr, same_type_as, ty, var, Build, Rule};
use crate::saturate::lang::{Attr, TensorEGraph, TensorLang};
use egg::{rewrite, Id, Subst};

pub fn rules() -> Vec<Rule> {
    vec![
        rewrite!("transpose-identity"; "(transpose ?p ?x)" => "?x" if identity_perm("?p") if same_type_as("?x")),
        rewrite!("transpose-transpose"; "(transpose ?p (transpose ?q ?x))" => { compose() }),
        rewrite!("transpose-matmul"; "(transpose ?p (matmul ?a ?b))" => { transpose_matmul() }),
    ]
}

fn is_identity(p: &[usize]) -> bool {
    p.iter().enumerate().all(|(i, &x)| i == x)
}

/// The perm of rank `r` that swaps the last two dims.
pub fn swap_last2(r: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..r).collect();
    if r >= 2 {
        p.swap(r - 1, r - 2);
    }
    p
}

fn perm(eg: &TensorEGraph, id: Id) -> Option<Vec<usize>> {
    match attr(eg, id)? {
        Attr::Perm(p) => Some(p),
        _ => None,
    }
}

fn identity_perm(p: &str) -> impl Fn(&mut TensorEGraph, Id, &Subst) -> bool {
    let p = var(p);
    move |eg, _, s| perm(eg, s[p]).is_some_and(|p| is_identity(&p))
}

/// `transpose {p} (transpose {q} x)`: result dim `i` is `x` dim `q[p[i]]`.
fn compose() -> Build {
    let (p, q, x) = (var("?p"), var("?q"), var("?x"));
    Build::op(move |eg, _, s| {
        let (outer, inner) = (perm(eg, s[p])?, perm(eg, s[q])?);
        if outer.len() != inner.len() {
            return None;
        }
        let composed: Vec<usize> = outer.iter().map(|&i| inner.get(i).copied()).collect::<Option<_>>()?;
        if is_identity(&composed) {
            return Some(s[x]);
        }
        let a = add_attr(eg, Attr::Perm(composed));
        Some(eg.add(TensorLang::Transpose([a, s[x]])))
    })
}

/// `transpose {swap last two} (a @ b) -> (b^T) @ (a^T)`, for operands of rank >= 2.
fn transpose_matmul() -> Build {
    let (p, a, b) = (var("?p"), var("?a"), var("?b"));
    Build::op(move |eg, _, s| {
        let (ra, rb) = (ty(eg, s[a])?.rank(), ty(eg, s[b])?.rank());
        let outer = perm(eg, s[p])?;
        if ra < 2 || rb < 2 || outer != swap_last2(outer.len()) {
            return None;
        }
        let (pa, pb) = (add_attr(eg, Attr::Perm(swap_last2(ra))), add_attr(eg, Attr::Perm(swap_last2(rb))));
        let at = eg.add(TensorLang::Transpose([pa, s[a]]));
        let bt = eg.add(TensorLang::Transpose([pb, s[b]]));
        Some(eg.add(TensorLang::MatMul([bt, at])))
    })
}
