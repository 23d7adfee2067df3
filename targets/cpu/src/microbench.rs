//! Micro-benchmarks of the CPU target's inner kernels against this core's measured peak
//! (`tessera bench-kernels`): the clock (a chain of dependent integer adds, one per cycle), the
//! FMA throughput of 128-bit and 256-bit vectors (independent FMA chains), the f32 GEMM inner
//! tile on L1-resident data (Cranelift's 6x8 f32x4 tile and the optional AVX2 6x16 tile), and
//! whole packed GEMMs at MiniLM's shapes through [`crate::compile`].
//!
//! Figures are medians of several timed repetitions; the host is shared, so they vary run to run.

use std::time::Instant;

use tessera_ir::{ConstData, DType, Graph, Op, Shape, Tensor, TensorType};

use cranelift_codegen::ir::{InstBuilder, Value};

use crate::fx::{mem, mem_pure};
use crate::gemm::{accumulate, TileEmitter, CL_MR, TILE_MR};
use crate::jit::{Jit, KernelFn, Listing};
use crate::{CpuError, CpuOptions, Ukernels};

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Figure {
    pub name: String,
    /// The median over the repetitions.
    pub value: f64,
    /// The best repetition (the least disturbed by other work on a shared host).
    pub best: Option<f64>,
    pub unit: &'static str,
    /// The median as a percentage of a peak (and which), when the figure has one.
    pub of_peak: Option<(f64, String)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds per call of `f`: (median, best) of `reps` timings after one warm-up call.
fn time2(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    let best = v.iter().copied().fold(f64::INFINITY, f64::min);
    (median(v), best)
}

fn time(reps: usize, f: impl FnMut()) -> f64 {
    time2(reps, f).0
}

/// The core clock in Hz, from a chain of dependent adds (one cycle each).
pub fn clock_hz() -> Option<f64> {
    imp::dependent_adds(1000).map(|_| {
        let n = 2_000_000u64;
        let t = time(7, || {
            imp::dependent_adds(n);
        });
        (n * imp::ADDS_PER_ITER) as f64 / t
    })
}

/// FMA instructions per cycle for `bits`-wide vectors (128 or 256), with `hz` the clock.
pub fn fma_per_cycle(bits: u32, hz: f64) -> Option<f64> {
    imp::fma_chains(bits, 10)?;
    let n = 1_000_000u64;
    let t = time(7, || {
        imp::fma_chains(bits, n);
    });
    Some((n * imp::FMAS_PER_ITER) as f64 / (t * hz))
}

/// GFLOP/s of the f32 GEMM inner tile on L1-resident operands: `k` steps of a 6-row tile over
/// `np` panels, `reps` times per call.
fn tile_gflops(mode: Ukernels, np: usize, k: usize) -> Result<(f64, f64), CpuError> {
    let mut jit = Jit::new(Listing::default())?;
    let kk = k as i64;
    let rows = if mode == Ukernels::Off { CL_MR } else { TILE_MR };
    let idx = jit.define(
        "tile_bench",
        &[],
        Box::new(move |fx| {
            let a = fx.buf(0);
            let b = fx.buf(1);
            let tiles = TileEmitter::new(fx, mode);
            let kv = fx.iconst(kk);
            let (lo, hi) = (fx.lo, fx.hi);
            let sink = fx.stack_buf(256, 4);
            fx.for_range(lo, hi, 1, false, |fx, _| {
                if mode == Ukernels::Off {
                    // Exactly the packed GEMM's Cranelift tile (rows at constant offsets).
                    let rows: Vec<(Value, i32)> = (0..rows).map(|r| (a, (r * 4 * kk as usize) as i32)).collect();
                    let accs = accumulate(fx, &rows, b, kv, mem_pure())?;
                    for (i, v) in accs.into_iter().enumerate() {
                        fx.b.ins().store(mem(), v, sink, (i * 16) as i32);
                    }
                    Ok(())
                } else {
                    tiles.emit(fx, rows, np, kv, a, kv, b, mem_pure(), tiles.stack(), false)
                }
            })?;
            Ok(())
        }),
    )?;
    let (_module, fns) = jit.finish()?;
    let f: KernelFn = fns[idx];
    let a: Vec<f32> = (0..rows * k).map(|i| (i % 7) as f32 * 0.25).collect();
    let b: Vec<f32> = (0..np * 8 * k).map(|i| (i % 5) as f32 * 0.5).collect();
    let bufs = [a.as_ptr() as *mut u8, b.as_ptr() as *mut u8];
    let reps = 2000i64;
    // SAFETY: the kernel reads `rows` rows of k floats from a and np panels of 8k floats from b.
    let (t, best) = time2(15, || unsafe {
        f(bufs.as_ptr(), std::ptr::null(), 0, reps);
    });
    let flops = reps as f64 * rows as f64 * 8.0 * np as f64 * k as f64 * 2.0;
    Ok((flops / t / 1e9, flops / best / 1e9))
}

/// GFLOP/s of a whole packed product `[m, k] x [k, n]` (constant weights) on one thread.
fn gemm_gflops(mode: Ukernels, m: usize, k: usize, n: usize) -> Result<(f64, f64), CpuError> {
    let mut g = Graph::new("gemm");
    let a = g.add_input("a", TensorType::new(DType::F32, Shape::from_static(&[m, k])));
    let w: Vec<u8> = (0..k * n).flat_map(|i| (((i % 13) as f32 - 6.0) * 0.01).to_le_bytes()).collect();
    let b = g.add_const(TensorType::new(DType::F32, Shape::from_static(&[k, n])), ConstData::from_vec(w));
    let node = g.add_node(Op::MatMul, vec![a, b], vec![TensorType::new(DType::F32, Shape::from_static(&[m, n]))]);
    let out = g.node(node).outputs[0];
    g.add_output("y", out);
    let x = Tensor::from_f32(DType::F32, &[m, k], (0..m * k).map(|i| (i % 11) as f32 * 0.1).collect())
        .map_err(|e| CpuError::Codegen(e.to_string()))?;
    time_gemm(&g, mode, x, 2.0 * (m * k * n) as f64)
}

/// Compiles a one-product graph for one thread and returns `ops` per second, in billions, for
/// the median and the best of 21 runs on `x`.
fn time_gemm(g: &Graph, mode: Ukernels, x: Tensor, ops: f64) -> Result<(f64, f64), CpuError> {
    let p = crate::compile(g, &CpuOptions { threads: 1, ukernels: mode, ..Default::default() })?;
    let mut err = None;
    let (t, best) = time2(21, || {
        if let Err(e) = p.run(std::slice::from_ref(&x)) {
            err = Some(e);
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok((ops / t / 1e9, ops / best / 1e9)),
    }
}

/// The integer tiles [`int_tile_gops`] times.
#[derive(Clone, Copy, PartialEq)]
enum IntTile {
    /// Exact, on i16-widened activations.
    I16,
    /// onnxruntime's saturating pairs.
    Sat,
    /// Exact, AVX512-VNNI on the raw bytes.
    Vnni,
}

/// GFLOP/s of an f32 `std::arch` tile (`avx512`: the 512-bit one) called directly on
/// L1-resident operands, 6 rows x 16 columns x `k`.
fn f32_tile_gflops(avx512: bool, k: usize) -> Option<(f64, f64)> {
    let f = crate::ukernel::f32_tile_of(avx512, TILE_MR, 2, false)?;
    let reps = 2000;
    let a: Vec<f32> = (0..TILE_MR * k).map(|i| (i % 7) as f32 * 0.25).collect();
    let b: Vec<f32> = (0..2 * 8 * k).map(|i| (i % 5) as f32 * 0.5).collect();
    let mut tile = vec![0f32; TILE_MR * crate::ukernel::F32_TILE_COLS];
    let (out, ap, bp) = (tile.as_mut_ptr(), a.as_ptr(), b.as_ptr());
    let (t, best) = time2(15, || {
        for _ in 0..reps {
            // SAFETY: 6 rows of k floats, 2 panels of 8k floats, a 6x16 tile.
            unsafe { f(k as i64, ap, k as i64, bp, out) };
        }
    });
    std::hint::black_box(&tile);
    let flops = reps as f64 * (TILE_MR * 16 * k) as f64 * 2.0;
    Some((flops / t / 1e9, flops / best / 1e9))
}

/// GOP/s (2 per multiply-add) of an integer inner tile called directly on L1-resident
/// operands, 6 rows x 16 columns x `k`.
fn int_tile_gops(which: IntTile, k: usize) -> Option<(f64, f64)> {
    let reps = 2000;
    let a: Vec<u8> = (0..TILE_MR * k).map(|i| (i % 251) as u8).collect();
    let a16: Vec<i16> = a.iter().map(|&x| x as i16).collect();
    let b: Vec<i8> = (0..2 * 8 * k).map(|i| (i % 17) as i8 - 8).collect();
    let mut tile = vec![0i32; TILE_MR * crate::ukernel::F32_TILE_COLS];
    let (out, ap, a16p, bp) = (tile.as_mut_ptr(), a.as_ptr(), a16.as_ptr(), b.as_ptr());
    // One call of the tile; the SAFETY contract of each: 6 rows of k bytes (or k i16), 2 panels
    // of 8k bytes, a 6x16 tile.
    let call: Box<dyn Fn()> = if which != IntTile::I16 {
        let f = match which {
            IntTile::Sat => crate::ukernel::sat_tile(Ukernels::Auto, TILE_MR, 2)?,
            _ => crate::ukernel::vnni_tile(Ukernels::Auto, TILE_MR, 2)?,
        };
        // SAFETY: see above.
        Box::new(move || unsafe { f((k / 4) as i64, ap, k as i64, bp, out) })
    } else {
        let f = crate::ukernel::i16_tile(Ukernels::Auto, TILE_MR, 2)?;
        // SAFETY: see above.
        Box::new(move || unsafe { f((k / 2) as i64, a16p, k as i64, bp, out) })
    };
    let (t, best) = time2(15, || {
        for _ in 0..reps {
            call();
        }
    });
    std::hint::black_box(&tile);
    let ops = reps as f64 * (TILE_MR * 16 * k) as f64 * 2.0;
    Some((ops / t / 1e9, ops / best / 1e9))
}

/// GOP/s of a whole `matmul_integer` `[m, k] x [k, n]` (u8 x constant i8, scalar zero points)
/// on one thread.
fn int_gemm_gops(mode: Ukernels, sat: bool, m: usize, k: usize, n: usize) -> Result<(f64, f64), CpuError> {
    let mut g = Graph::new("qgemm");
    let a = g.add_input("a", TensorType::new(DType::U8, Shape::from_static(&[m, k])));
    let w: Vec<u8> = (0..k * n).map(|i| ((i % 17) as i8 - 8) as u8).collect();
    let b = g.add_const(TensorType::new(DType::I8, Shape::from_static(&[k, n])), ConstData::from_vec(w));
    let za = g.add_const(TensorType::new(DType::U8, Shape::from_static(&[])), ConstData::from_vec(vec![128]));
    let zb = g.add_const(TensorType::new(DType::I8, Shape::from_static(&[])), ConstData::from_vec(vec![0]));
    let node = g.add_node(
        Op::MatMulInteger { pair_saturate: sat },
        vec![a, b, za, zb],
        vec![TensorType::new(DType::I32, Shape::from_static(&[m, n]))],
    );
    let out = g.node(node).outputs[0];
    g.add_output("y", out);
    let x = Tensor::from_i64(DType::U8, &[m, k], (0..m * k).map(|i| (i % 251) as i64).collect())
        .map_err(|e| CpuError::Codegen(e.to_string()))?;
    time_gemm(&g, mode, x, 2.0 * (m * k * n) as f64)
}

/// Every figure, in report order.
pub fn run() -> Result<Vec<Figure>, CpuError> {
    let mut out = Vec::new();
    let fig = |name: &str, value: f64, unit: &'static str, of_peak: Option<(f64, String)>| Figure {
        name: name.to_string(),
        value,
        best: None,
        unit,
        of_peak,
    };
    let pair = |name: String, (v, best): (f64, f64), peak: f64, of: &str| Figure {
        name,
        value: v,
        best: Some(best),
        unit: "GFLOP/s",
        of_peak: Some((100.0 * v / peak, of.to_string())),
    };
    let Some(hz) = clock_hz() else {
        return Err(CpuError::Unsupported("the clock and FMA probes exist for x86-64 only".into()));
    };
    out.push(fig("clock (dependent adds)", hz / 1e9, "GHz", None));
    let f128 = fma_per_cycle(128, hz).unwrap_or(f64::NAN);
    let peak128 = f128.round().max(1.0) * 8.0 * hz / 1e9;
    out.push(fig("128-bit FMAs per cycle", f128, "/cycle", None));
    out.push(fig("128-bit FMA peak of one core", peak128, "GFLOP/s", None));
    let f256 = fma_per_cycle(256, hz);
    let peak256 = f256.map(|f| f.round().max(1.0) * 16.0 * hz / 1e9);
    if let (Some(f), Some(p)) = (f256, peak256) {
        out.push(fig("256-bit FMAs per cycle", f, "/cycle", None));
        out.push(fig("256-bit FMA peak of one core", p, "GFLOP/s", None));
    }
    let f512 = fma_per_cycle(512, hz);
    let peak512 = f512.map(|f| f.round().max(1.0) * 32.0 * hz / 1e9);
    if let (Some(f), Some(p)) = (f512, peak512) {
        out.push(fig("512-bit FMAs per cycle", f, "/cycle", None));
        out.push(fig("512-bit FMA peak of one core", p, "GFLOP/s", None));
    }
    for k in [256, 384] {
        let v = tile_gflops(Ukernels::Off, 1, k)?;
        out.push(pair(format!("cranelift {CL_MR}x8 f32x4 tile, k={k}, L1"), v, peak128, "128-bit peak"));
    }
    for (avx512, what, peak, of) in
        [(false, "avx2", peak256, "256-bit peak"), (true, "avx512", peak512, "512-bit peak")]
    {
        if let (Some(p), Some(v)) = (peak, f32_tile_gflops(avx512, 256)) {
            out.push(pair(format!("{what} {TILE_MR}x16 tile (ukernel), k=256, L1"), v, p, of));
        }
    }
    // Whole products take the widest tile the host has.
    let (wide_peak, wide_of) = match (peak512, crate::ukernel::f32_tile_of(true, TILE_MR, 2, false)) {
        (Some(p), Some(_)) => (Some(p), "512-bit peak"),
        _ => (peak256, "256-bit peak"),
    };
    let avx2 = crate::ukernel::f32_tile(Ukernels::Auto, TILE_MR, 2, false).is_some();
    for (m, k, n) in [(128, 384, 384), (128, 384, 1536), (128, 1536, 384)] {
        let v = gemm_gflops(Ukernels::Off, m, k, n)?;
        out.push(pair(format!("gemm {m}x{k}x{n} cranelift, 1 thread"), v, peak128, "128-bit peak"));
        if let (Some(p), true) = (wide_peak, avx2) {
            let v = gemm_gflops(Ukernels::Auto, m, k, n)?;
            out.push(pair(format!("gemm {m}x{k}x{n} ukernel, 1 thread"), v, p, wide_of));
        }
    }
    // Integer products: GOP/s next to the f32 256-bit FMA peak in FLOP/s (the same count of
    // multiply-adds per second), since no integer peak is probed.
    let ipair = |name: String, (v, best): (f64, f64)| Figure {
        name,
        value: v,
        best: Some(best),
        unit: "GOP/s",
        of_peak: peak256.map(|p| (100.0 * v / p, "f32 256-bit FMA peak".to_string())),
    };
    for (tile, what) in [
        (IntTile::I16, "exact i16 (vpmaddwd)"),
        (IntTile::Sat, "saturating pairs (vpmaddubsw)"),
        (IntTile::Vnni, "exact avx512-vnni (vpdpbusd)"),
    ] {
        for k in [384, 1536] {
            if let Some(v) = int_tile_gops(tile, k) {
                let at = if k <= 384 { "L1" } else { "L2" };
                out.push(ipair(format!("int8 {what} 6x16 tile, k={k}, {at}"), v));
            }
        }
    }
    for (m, k, n) in [(128, 384, 1536), (128, 1536, 384)] {
        for (mode, sat, what) in [
            (Ukernels::Off, false, "exact cranelift"),
            (Ukernels::Auto, false, "exact ukernel"),
            (Ukernels::Auto, true, "saturating ukernel"),
        ] {
            let v = int_gemm_gops(mode, sat, m, k, n)?;
            out.push(ipair(format!("int8 gemm {m}x{k}x{n} {what}"), v));
        }
    }
    Ok(out)
}

/// `n` iterations of 10 independent FMA chains on the `$r` registers (`"xmm"`, `"ymm"` or
/// `"zmm"`): accumulators 0-9, multiplicands 10 and 11. The upper halves are cleared after:
/// Cranelift's legacy-SSE moves after dirty ones cost a merge each on Intel cores (the 128-bit
/// tile ran at 1% of its speed after an unclean 256-bit probe).
#[cfg(target_arch = "x86_64")]
macro_rules! fma_chain_asm {
    ($r:literal, $n:expr) => {
        std::arch::asm!(
            concat!("vxorps ", $r, "0, ", $r, "0, ", $r, "0"),
            concat!("vxorps ", $r, "1, ", $r, "1, ", $r, "1"),
            concat!("vxorps ", $r, "2, ", $r, "2, ", $r, "2"),
            concat!("vxorps ", $r, "3, ", $r, "3, ", $r, "3"),
            concat!("vxorps ", $r, "4, ", $r, "4, ", $r, "4"),
            concat!("vxorps ", $r, "5, ", $r, "5, ", $r, "5"),
            concat!("vxorps ", $r, "6, ", $r, "6, ", $r, "6"),
            concat!("vxorps ", $r, "7, ", $r, "7, ", $r, "7"),
            concat!("vxorps ", $r, "8, ", $r, "8, ", $r, "8"),
            concat!("vxorps ", $r, "9, ", $r, "9, ", $r, "9"),
            concat!("vxorps ", $r, "10, ", $r, "10, ", $r, "10"),
            concat!("vxorps ", $r, "11, ", $r, "11, ", $r, "11"),
            "2:",
            concat!("vfmadd231ps ", $r, "0, ", $r, "10, ", $r, "11"),
            concat!("vfmadd231ps ", $r, "1, ", $r, "10, ", $r, "11"),
            concat!("vfmadd231ps ", $r, "2, ", $r, "10, ", $r, "11"),
            concat!("vfmadd231ps ", $r, "3, ", $r, "10, ", $r, "11"),
            concat!("vfmadd231ps ", $r, "4, ", $r, "10, ", $r, "11"),
            concat!("vfmadd231ps ", $r, "5, ", $r, "10, ", $r, "11"),
            concat!("vfmadd231ps ", $r, "6, ", $r, "10, ", $r, "11"),
            concat!("vfmadd231ps ", $r, "7, ", $r, "10, ", $r, "11"),
            concat!("vfmadd231ps ", $r, "8, ", $r, "10, ", $r, "11"),
            concat!("vfmadd231ps ", $r, "9, ", $r, "10, ", $r, "11"),
            "dec rcx",
            "jnz 2b",
            "vzeroupper",
            inout("rcx") $n.max(1) => _,
            clobber_abi("C"),
            options(nomem, nostack),
        )
    };
}
#[cfg(target_arch = "x86_64")]
mod imp {
    use super::imp512::fma_chains_512;
    use std::arch::asm;

    pub const ADDS_PER_ITER: u64 = 16;
    pub const FMAS_PER_ITER: u64 = 10;

    /// `n` iterations of 16 dependent adds; returns the result so the work is kept. The addend
    /// is a register: newer cores fold chains of immediate adds at rename (Golden Cove counts
    /// several per cycle), which would overstate the clock.
    pub fn dependent_adds(n: u64) -> Option<u64> {
        let mut x: u64 = 1;
        // SAFETY: register-only arithmetic on x; the loop counter is an input copy.
        unsafe {
            asm!(
                "2:",
                "add {x}, {one}", "add {x}, {one}", "add {x}, {one}", "add {x}, {one}",
                "add {x}, {one}", "add {x}, {one}", "add {x}, {one}", "add {x}, {one}",
                "add {x}, {one}", "add {x}, {one}", "add {x}, {one}", "add {x}, {one}",
                "add {x}, {one}", "add {x}, {one}", "add {x}, {one}", "add {x}, {one}",
                "dec {n}",
                "jnz 2b",
                x = inout(reg) x,
                one = in(reg) 1u64,
                n = inout(reg) n.max(1) => _,
                options(nomem, nostack),
            );
        }
        Some(x)
    }

    /// `n` iterations of 10 independent FMA chains of `bits`-wide vectors.
    pub fn fma_chains(bits: u32, n: u64) -> Option<()> {
        if !is_x86_feature_detected!("fma") || (bits == 256 && !is_x86_feature_detected!("avx")) {
            return None;
        }
        if bits == 512 {
            if !is_x86_feature_detected!("avx512f") {
                return None;
            }
            // SAFETY: the CPU has AVX512F (checked above).
            unsafe { fma_chains_512(n) };
            return Some(());
        }
        // SAFETY: the CPU has FMA and, for 256 bits, AVX (checked above); only vector registers
        // are touched.
        unsafe {
            if bits == 128 {
                fma_chain_asm!("xmm", n);
            } else {
                fma_chain_asm!("ymm", n);
            }
        }
        Some(())
    }
}

#[cfg(target_arch = "x86_64")]
mod imp512 {
    /// `n` iterations of 10 independent 512-bit FMA chains.
    ///
    /// # Safety
    /// The CPU has AVX512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_chains_512(n: u64) {
        // SAFETY: only vector registers are touched; the caller checked AVX512F.
        unsafe { fma_chain_asm!("zmm", n) };
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    pub const ADDS_PER_ITER: u64 = 16;
    pub const FMAS_PER_ITER: u64 = 10;
    pub fn dependent_adds(_n: u64) -> Option<u64> {
        None
    }
    pub fn fma_chains(_bits: u32, _n: u64) -> Option<()> {
        None
    }
}
