//! Shared by the IR text targets: a cheap look at the text before parsing it.

use tessera_ir::DType;

/// Whether the text writes a type `dtype[d0, d1, ..]` whose static dims multiply past `limit`.
///
/// The parser expands `const splat(..)` to every element of its type (up to 2^28 of them, by
/// design), so a few bytes of text can take gigabytes: the targets skip such inputs before
/// parsing rather than let libFuzzer's RSS limit stop the run. Conservative: every non-zero
/// integer up to the `]` counts (comments included), and a dtype name in a string or a
/// comment counts too, which only skips more.
pub fn declares_huge_type(text: &str, limit: u128) -> bool {
    let b = text.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'.';
    let mut i = 0;
    while i < b.len() {
        if !(b[i].is_ascii_alphabetic() || b[i] == b'_') || (i > 0 && is_ident(b[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        if DType::from_name(&text[start..i]).is_none() {
            continue;
        }
        // Whitespace and `;` comments may stand between the dtype and its `[`.
        let mut j = i;
        loop {
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if j < b.len() && b[j] == b';' {
                while j < b.len() && b[j] != b'\n' {
                    j += 1;
                }
                continue;
            }
            break;
        }
        if j >= b.len() || b[j] != b'[' {
            continue;
        }
        let mut product: u128 = 1;
        j += 1;
        while j < b.len() && b[j] != b']' {
            if !b[j].is_ascii_digit() {
                j += 1;
                continue;
            }
            let (radix, from) = if b[j] == b'0' && b.get(j + 1) == Some(&b'x') { (16, j + 2) } else { (10, j) };
            let mut k = from;
            while k < b.len() && (if radix == 16 { b[k].is_ascii_hexdigit() } else { b[k].is_ascii_digit() }) {
                k += 1;
            }
            let n = u128::from_str_radix(&text[from..k], radix).unwrap_or(if k > from { u128::MAX } else { 0 });
            if n != 0 {
                product = product.saturating_mul(n);
            }
            j = k.max(j + 1);
        }
        if product > limit {
            return true;
        }
    }
    false
}
