//! The host functions compiled kernels call, by name: the rare float functions (libm, as the
//! interpreter), half-precision conversions, a few per-block helpers, the `std::arch` inner
//! tiles of [`crate::ukernel`], and the libcalls Cranelift may emit. Kernels call them through
//! named imports (`tessera_host_log`, ...), never through addresses baked into the code, so the
//! same machine code runs JIT-compiled (the JIT module resolves the names here) and from an
//! ahead-of-time artifact (the artifact loader resolves its relocations here).
//!
//! This module does not depend on Cranelift: the artifact loader is built without it.

use std::collections::HashMap;
use std::sync::OnceLock;

use tessera_ir::{DType, FakeQuantFormat};

use crate::ukernel::{self, Ukernels};

/// One function kernels may call.
#[derive(Clone, Debug)]
pub struct HostFn {
    /// The symbol kernels import (`tessera_host_log`, `tessera_f32_tile_6x2_set`, `fmaf`).
    pub name: String,
    pub addr: usize,
}

/// Every host function of this build on this CPU (the `std::arch` tiles only when the CPU has
/// their features).
pub fn symbols() -> &'static [HostFn] {
    static TABLE: OnceLock<Vec<HostFn>> = OnceLock::new();
    TABLE.get_or_init(build)
}

/// Positions in [`symbols`] by name.
fn by_name() -> &'static HashMap<&'static str, usize> {
    static INDEX: OnceLock<HashMap<&'static str, usize>> = OnceLock::new();
    INDEX.get_or_init(|| symbols().iter().enumerate().map(|(i, f)| (f.name.as_str(), i)).collect())
}

/// The position in [`symbols`] of the host function named `name`, if this CPU has it.
fn find(name: &str) -> Option<usize> {
    by_name().get(name).copied()
}

/// The address of the host function named `name` on this CPU, if there is one.
pub fn resolve(name: &str) -> Option<usize> {
    find(name).map(|i| symbols()[i].addr)
}

/// The id (position in [`symbols`]) of the host function named `name`, which lowering hands to
/// [`crate::fx::Fx::call_host`]; a name missing from the table is a bug in the CPU target.
/// Lowering names host functions, never takes a Rust function's address: Rust may give one
/// function several addresses (a small function is copied into every codegen unit that uses it).
pub fn id(name: &str) -> usize {
    find(name).unwrap_or_else(|| panic!("no host function {name} in host::symbols()"))
}

/// The id of the f32 tile ([`ukernel::F32Tile`]) for `mr` rows and `np` panels, if this CPU has
/// it and `mode` allows it.
pub fn f32_tile(mode: Ukernels, mr: usize, np: usize, acc: bool) -> Option<usize> {
    let tag = if acc { "acc" } else { "set" };
    find(&format!("tessera_f32_tile_{mr}x{np}_{tag}{}", family(mode)?))
}

/// The name suffix of a mode's routines (`_avx2` for [`Ukernels::Avx2`]), None for
/// [`Ukernels::Off`].
fn family(mode: Ukernels) -> Option<&'static str> {
    match mode {
        Ukernels::Auto => Some(""),
        Ukernels::Avx2 => Some("_avx2"),
        Ukernels::Off => None,
    }
}

/// The id of the integer tile ([`ukernel::I16Tile`]), as [`f32_tile`].
pub fn i16_tile(mode: Ukernels, mr: usize, np: usize) -> Option<usize> {
    (mode != Ukernels::Off).then(|| find(&format!("tessera_i16_tile_{mr}x{np}"))).flatten()
}

/// The id of a routine only the widest family has (AVX-512): with [`Ukernels::Auto`] alone.
fn widest(mode: Ukernels, name: &str) -> Option<usize> {
    (mode == Ukernels::Auto).then(|| find(name)).flatten()
}

/// The id of the exact AVX512-VNNI tile ([`ukernel::VnniTile`]), as [`f32_tile`].
pub fn vnni_tile(mode: Ukernels, mr: usize, np: usize) -> Option<usize> {
    widest(mode, &format!("tessera_vnni_tile_{mr}x{np}"))
}

/// The id of the pair-saturating tile ([`ukernel::SatTile`]), as [`f32_tile`].
pub fn sat_tile(mode: Ukernels, mr: usize, np: usize) -> Option<usize> {
    (mode != Ukernels::Off).then(|| find(&format!("tessera_sat_tile_{mr}x{np}"))).flatten()
}

/// The id of the weight-unpacking routine ([`ukernel::QUnpack`]), if this CPU has it and `mode`
/// allows it.
pub fn q_unpack(mode: Ukernels) -> Option<usize> {
    (mode != Ukernels::Off).then(|| find("tessera_q_unpack")).flatten()
}

/// The id of the one-row routine ([`ukernel::QGemv`]), if this CPU has it and `mode` allows it.
pub fn q_gemv(mode: Ukernels) -> Option<usize> {
    find(&format!("tessera_q_gemv{}", family(mode)?))
}

/// The id of the AVX-512 softmax row ([`crate::rows::SoftmaxRow`]), if this CPU has it and
/// `mode` allows it.
pub fn softmax_row(mode: Ukernels) -> Option<usize> {
    widest(mode, "tessera_softmax_row")
}

/// The id of the AVX-512 dynamic quantization ([`crate::rows::DynamicQuantize`]), as
/// [`softmax_row`].
pub fn dynamic_quantize(mode: Ukernels) -> Option<usize> {
    widest(mode, "tessera_dynamic_quantize")
}

/// The id of the AVX-512 GELU over a stored tile ([`crate::rows::GeluTile`]), as
/// [`softmax_row`].
pub fn gelu_tile(mode: Ukernels) -> Option<usize> {
    widest(mode, "tessera_gelu_tile")
}

/// What a missing host function needs, for errors: the features of the `std::arch` family it
/// belongs to, when the name is one of them.
pub fn needs_of(name: &str) -> Option<&'static str> {
    if name.starts_with("tessera_q_gemv") {
        Some("avx2+fma+f16c")
    } else if name == "tessera_q_unpack" {
        Some("avx2+f16c")
    } else if name.starts_with("tessera_f32_tile") {
        Some("avx2+fma")
    } else if name.starts_with("tessera_i16_tile") || name.starts_with("tessera_sat_tile") {
        Some("avx2")
    } else if name.starts_with("tessera_vnni_tile") {
        Some("avx512f+avx512vnni+avx512vl")
    } else if ["tessera_softmax_row", "tessera_dynamic_quantize", "tessera_gelu_tile"].contains(&name) {
        Some("avx512f")
    } else {
        None
    }
}

fn build() -> Vec<HostFn> {
    let mut t = Vec::new();
    let mut add = |name: String, addr: usize| t.push(HostFn { name, addr });
    macro_rules! plain {
        ($($f:ident),* $(,)?) => {
            $(add(concat!("tessera_", stringify!($f)).to_string(), $f as *const () as usize);)*
        };
    }
    plain!(
        host_log,
        host_sin,
        host_cos,
        host_pow,
        host_fmod,
        host_mod,
        host_round_f16,
        host_round_bf16,
        host_f16_to_f32,
        host_f32_to_f16,
        host_f32_to_bf16,
        host_ipow,
        host_imod,
        host_irem,
        host_dq_scale,
        host_dq_zero,
    );
    add("tessera_host_fake_quant_q8_0".into(), host_fake_quant_params::<false> as *const () as usize);
    add("tessera_host_fake_quant_q8_k".into(), host_fake_quant_params::<true> as *const () as usize);
    // Cranelift's libcalls (`default_libcall_names`), for ISAs without the instruction.
    let libcalls: [(&str, usize); 10] = [
        ("ceilf", libcall_ceilf as *const () as usize),
        ("floorf", libcall_floorf as *const () as usize),
        ("truncf", libcall_truncf as *const () as usize),
        ("nearbyintf", libcall_nearbyintf as *const () as usize),
        ("fmaf", libcall_fmaf as *const () as usize),
        ("ceil", libcall_ceil as *const () as usize),
        ("floor", libcall_floor as *const () as usize),
        ("trunc", libcall_trunc as *const () as usize),
        ("nearbyint", libcall_nearbyint as *const () as usize),
        ("fma", libcall_fma as *const () as usize),
    ];
    for (name, addr) in libcalls {
        add(name.into(), addr);
    }
    let mode = Ukernels::Auto;
    for mr in 1..=ukernel::F32_MR {
        for np in 1..=2 {
            for (acc, tag) in [(false, "set"), (true, "acc")] {
                if let Some(f) = ukernel::f32_tile(mode, mr, np, acc) {
                    add(format!("tessera_f32_tile_{mr}x{np}_{tag}"), f as usize);
                }
                if let Some(f) = ukernel::f32_tile(Ukernels::Avx2, mr, np, acc) {
                    add(format!("tessera_f32_tile_{mr}x{np}_{tag}_avx2"), f as usize);
                }
            }
            if let Some(f) = ukernel::i16_tile(mode, mr, np) {
                add(format!("tessera_i16_tile_{mr}x{np}"), f as usize);
            }
            if let Some(f) = ukernel::sat_tile(mode, mr, np) {
                add(format!("tessera_sat_tile_{mr}x{np}"), f as usize);
            }
            if let Some(f) = ukernel::vnni_tile(mode, mr, np) {
                add(format!("tessera_vnni_tile_{mr}x{np}"), f as usize);
            }
        }
    }
    if let Some(f) = ukernel::q_unpack(mode) {
        add("tessera_q_unpack".into(), f as usize);
    }
    if let Some(f) = ukernel::q_gemv(mode) {
        add("tessera_q_gemv".into(), f as usize);
    }
    if let Some(f) = ukernel::q_gemv(Ukernels::Avx2) {
        add("tessera_q_gemv_avx2".into(), f as usize);
    }
    if let Some(f) = crate::rows::softmax_row(mode) {
        add("tessera_softmax_row".into(), f as usize);
    }
    if let Some(f) = crate::rows::dynamic_quantize(mode) {
        add("tessera_dynamic_quantize".into(), f as usize);
    }
    if let Some(f) = crate::rows::gelu_tile(mode) {
        add("tessera_gelu_tile".into(), f as usize);
    }
    t
}

extern "C" fn libcall_ceilf(x: f32) -> f32 {
    x.ceil()
}
extern "C" fn libcall_floorf(x: f32) -> f32 {
    x.floor()
}
extern "C" fn libcall_truncf(x: f32) -> f32 {
    x.trunc()
}
extern "C" fn libcall_nearbyintf(x: f32) -> f32 {
    x.round_ties_even()
}
extern "C" fn libcall_fmaf(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}
extern "C" fn libcall_ceil(x: f64) -> f64 {
    x.ceil()
}
extern "C" fn libcall_floor(x: f64) -> f64 {
    x.floor()
}
extern "C" fn libcall_trunc(x: f64) -> f64 {
    x.trunc()
}
extern "C" fn libcall_nearbyint(x: f64) -> f64 {
    x.round_ties_even()
}
extern "C" fn libcall_fma(a: f64, b: f64, c: f64) -> f64 {
    a.mul_add(b, c)
}

// Host functions for the rare float functions, called lane by lane (libm, as the interpreter).
pub extern "C" fn host_log(x: f32) -> f32 {
    libm::logf(x)
}
pub extern "C" fn host_sin(x: f32) -> f32 {
    libm::sinf(x)
}
pub extern "C" fn host_cos(x: f32) -> f32 {
    libm::cosf(x)
}
pub extern "C" fn host_pow(x: f32, y: f32) -> f32 {
    libm::powf(x, y)
}
pub extern "C" fn host_fmod(x: f32, y: f32) -> f32 {
    libm::fmodf(x, y)
}
pub extern "C" fn host_mod(x: f32, y: f32) -> f32 {
    let r = libm::fmodf(x, y);
    if r != 0.0 && (r < 0.0) != (y < 0.0) {
        r + y
    } else {
        r
    }
}
pub extern "C" fn host_round_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}
pub extern "C" fn host_round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}
pub extern "C" fn host_f16_to_f32(bits: i32) -> f32 {
    half::f16::from_bits(bits as u16).to_f32()
}
pub extern "C" fn host_f32_to_f16(x: f32) -> i32 {
    half::f16::from_f32(x).to_bits() as i32
}
pub extern "C" fn host_f32_to_bf16(x: f32) -> i32 {
    half::bf16::from_f32(x).to_bits() as i32
}
/// Integer power as the interpreter: wrapping, exponent capped at u32::MAX; negative exponents
/// are refused by the caller.
pub extern "C" fn host_ipow(x: i64, y: i64) -> i64 {
    x.wrapping_pow(y.min(u32::MAX as i64) as u32)
}
/// ONNX Mod with fmod = 0 (sign of the divisor); y != 0 is checked by the caller.
pub extern "C" fn host_imod(x: i64, y: i64) -> i64 {
    x.wrapping_rem_euclid(y) + if y < 0 && x.wrapping_rem_euclid(y) != 0 { y } else { 0 }
}
/// Truncated remainder; y != 0 is checked by the caller.
pub extern "C" fn host_irem(x: i64, y: i64) -> i64 {
    x.wrapping_rem(y)
}

/// `(multiplier, d)` of a block for `fake_quant` ([`FakeQuantFormat::block_params`]) written to
/// the kernel's 8-byte stack slot; `Q8K` picks the format (`q8_k`, else `q8_0`).
pub(crate) extern "C" fn host_fake_quant_params<const Q8K: bool>(amax: f32, out: *mut f32) {
    let format = if Q8K { FakeQuantFormat::Q8K } else { FakeQuantFormat::Q8_0 };
    let (m, d) = format.block_params(amax);
    // SAFETY: `out` is the kernel's 8-byte stack slot.
    unsafe {
        *out = m;
        *out.add(1) = d;
    }
}

pub(crate) extern "C" fn host_dq_scale(lo: f32, hi: f32) -> f32 {
    let scale = (hi - lo) / 255.0;
    if scale == 0.0 || !scale.is_finite() {
        1.0
    } else {
        scale
    }
}

pub(crate) extern "C" fn host_dq_zero(lo: f32, scale: f32) -> i32 {
    DType::U8.saturate_int((-lo / scale).round_ties_even() as i64) as i32
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_and_addresses_are_unique_and_resolve() {
        let t = super::symbols();
        assert!(t.len() >= 28, "{} host functions", t.len());
        let mut names: Vec<&str> = t.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), t.len(), "duplicate host function names");
        for f in t {
            assert_eq!(super::resolve(&f.name), Some(f.addr), "{}", f.name);
            assert_eq!(super::symbols()[super::id(&f.name)].addr, f.addr, "{}", f.name);
        }
        assert_eq!(super::resolve("tessera_no_such_function"), None);
    }
}
