//! Device profiles: what a phone SoC's units can do, as data (`profiles/*.toml` at the
//! repository root, every figure cited there), for the cost model and the targets' estimates.
//!
//! The profiles in `profiles/` are built in ([`DeviceProfile::builtin`]); any other file loads
//! with [`DeviceProfile::from_file`]. A profile with a missing or mistyped field is an error
//! naming the file and the field, never a silent default.

use serde::Deserialize;
use std::path::Path;

/// A cited source of a profile's figures.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub url: String,
    /// The figures taken from it.
    pub what: String,
}

/// The SoC's DRAM, shared by its units.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dram {
    pub bandwidth_gbps: f64,
}

/// One cluster of identical CPU cores.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuCluster {
    pub core: String,
    pub count: u32,
    pub ghz: f64,
}

/// The CPU: its clusters (as cited) and the peaks of the cores a session's kernels use.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuProfile {
    pub name: String,
    pub clusters: Vec<CpuCluster>,
    /// SIMD register width in bits (NEON: 128).
    pub simd_bits: u32,
    /// The cores a session's kernels use (the fastest ones).
    pub threads: u32,
    /// Peak f32 GFLOP/s of those cores together (a multiply-add counts 2).
    pub fp32_gflops: f64,
    /// Peak 8-bit integer GOP/s of those cores together (dot-product instructions).
    pub int8_gops: f64,
    /// Fraction of the peaks a JIT kernel reaches (an assumption, or measured on the host).
    pub compute_efficiency: f64,
    /// Fraction of DRAM bandwidth a kernel reaches.
    pub bandwidth_efficiency: f64,
    /// Fixed cost of one kernel (splitting it across threads and joining), in microseconds.
    pub kernel_us: f64,
    /// Per kernel class (its principal op: `matmul_integer`, `attention`, `transpose`, ...),
    /// how much faster (above 1) or slower than the roofline the JIT kernels run: measured by
    /// `tessera calibrate` on the host; phone profiles leave it empty (1 for every class).
    #[serde(default)]
    pub class_efficiency: std::collections::BTreeMap<String, f64>,
}

/// What handing a buffer from one unit to another costs. The units share DRAM, so nothing is
/// copied: the producer's caches are cleaned and the consumer's invalidated over the buffer,
/// and the consumer waits on the producer's signal.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncProfile {
    /// One cross-unit signal and wake-up (fence or semaphore), in microseconds.
    pub handoff_us: f64,
    /// Rate of cache maintenance over a handed-over buffer, GB/s.
    pub cache_gbps: f64,
}

/// The GPU's peaks, the assumed efficiencies, and its Vulkan limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuProfile {
    pub name: String,
    pub fp32_gflops: f64,
    pub fp16_gflops: f64,
    /// Fraction of peak arithmetic a kernel reaches (an assumption, labelled so in the file).
    pub compute_efficiency: f64,
    /// Fraction of DRAM bandwidth a kernel reaches (an assumption).
    pub bandwidth_efficiency: f64,
    /// Fixed cost of one dispatch, in microseconds.
    pub dispatch_us: f64,
    pub max_workgroup_invocations: u32,
    pub shared_memory_bytes: u32,
    pub subgroup_size: u32,
}

/// The NPU the NPU target compiles for and its simulator models. Public figures for phone NPUs
/// are aggregate TOPS; the array shape, SRAM and DMA parameters that give them are assumptions,
/// labelled so in each profile.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NpuProfile {
    pub name: String,
    pub clock_mhz: f64,
    /// The MAC array: `mac_rows x mac_cols` int8 multiply-accumulates per cycle.
    pub mac_rows: u32,
    pub mac_cols: u32,
    /// Whether the MAC array reads 4-bit weights (unpacked in the array, at the int8 rate).
    pub int4_weights: bool,
    /// Elements per cycle of the vector unit (requantization, lookup tables).
    pub vector_lanes: u32,
    pub sram_kib: u32,
    pub sram_banks: u32,
    pub dma_channels: u32,
    /// Cycles from a DMA command's start to its first byte.
    pub dma_setup_cycles: u32,
    /// DRAM moves whole bursts: a row of a box costs its bytes rounded up to this.
    pub dma_burst_bytes: u32,
    /// The fraction of the SoC's DRAM bandwidth the NPU's DMA reaches.
    pub dram_efficiency: f64,
    /// Cycles to fill and drain the MAC array once per matmul command.
    pub matmul_fill_cycles: u32,
    /// Fixed cost of starting one command stream (driver submit, NPU wake), microseconds.
    pub launch_us: f64,
}

/// One SoC.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    pub name: String,
    pub soc: String,
    pub sources: Vec<Source>,
    pub dram: Dram,
    pub cpu: CpuProfile,
    pub sync: SyncProfile,
    pub gpu: Option<GpuProfile>,
    pub npu: Option<NpuProfile>,
}

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("cannot read {file}: {message}")]
    Read { file: String, message: String },
    #[error("no built-in profile {name:?} (built in: {known}); or give a profile file's path")]
    Unknown { name: String, known: String },
}

/// The profiles in the repository's `profiles/` folder, built in.
const BUILTIN: &[(&str, &str)] = &[
    ("snapdragon-8-gen-2", include_str!("../../profiles/snapdragon-8-gen-2.toml")),
    ("snapdragon-8-gen-3", include_str!("../../profiles/snapdragon-8-gen-3.toml")),
    ("dimensity-9300", include_str!("../../profiles/dimensity-9300.toml")),
];

/// Where `tessera calibrate` writes this machine's profile, which `host` names:
/// `$TESSERA_HOST_PROFILE`, or else `$XDG_CACHE_HOME/tessera/host.toml` (`~/.cache/...`).
pub fn host_profile_path() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("TESSERA_HOST_PROFILE") {
        return Some(p.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("tessera").join("host.toml"))
}

/// The names of the built-in profiles.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}

impl DeviceProfile {
    /// Parses a profile's TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<DeviceProfile, ProfileError> {
        let p: DeviceProfile =
            toml::from_str(text).map_err(|e| ProfileError::Parse { file: file.into(), message: e.to_string() })?;
        let bad = |message: String| ProfileError::Parse { file: file.into(), message };
        if p.sources.is_empty() {
            return Err(bad("a profile cites at least one source ([[sources]])".into()));
        }
        let positive = |what: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(bad(format!("{what} must be a positive number, not {v}")))
            }
        };
        positive("dram.bandwidth_gbps", p.dram.bandwidth_gbps)?;
        let fraction = |what: &str, v: f64| {
            if v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(bad(format!("{what} must be in (0, 1], not {v}")))
            }
        };
        let c = &p.cpu;
        positive("cpu.fp32_gflops", c.fp32_gflops)?;
        positive("cpu.int8_gops", c.int8_gops)?;
        fraction("cpu.compute_efficiency", c.compute_efficiency)?;
        fraction("cpu.bandwidth_efficiency", c.bandwidth_efficiency)?;
        if !(c.kernel_us.is_finite() && c.kernel_us >= 0.0) {
            return Err(bad(format!("cpu.kernel_us must be zero or more, not {}", c.kernel_us)));
        }
        if c.threads == 0 || c.simd_bits == 0 {
            return Err(bad("cpu.threads and cpu.simd_bits must be at least 1".into()));
        }
        if c.clusters.is_empty() {
            return Err(bad("cpu.clusters lists at least one cluster".into()));
        }
        for (i, k) in c.clusters.iter().enumerate() {
            positive(&format!("cpu.clusters[{i}].ghz"), k.ghz)?;
            if k.count == 0 {
                return Err(bad(format!("cpu.clusters[{i}].count must be at least 1")));
            }
        }
        for (class, v) in &c.class_efficiency {
            positive(&format!("cpu.class_efficiency.{class}"), *v)?;
        }
        let cores: u32 = c.clusters.iter().map(|k| k.count).sum();
        if c.threads > cores {
            return Err(bad(format!("cpu.threads = {} is more than the {cores} cores of cpu.clusters", c.threads)));
        }
        positive("sync.cache_gbps", p.sync.cache_gbps)?;
        if !(p.sync.handoff_us.is_finite() && p.sync.handoff_us >= 0.0) {
            return Err(bad(format!("sync.handoff_us must be zero or more, not {}", p.sync.handoff_us)));
        }
        if let Some(g) = &p.gpu {
            positive("gpu.fp32_gflops", g.fp32_gflops)?;
            positive("gpu.fp16_gflops", g.fp16_gflops)?;
            positive("gpu.dispatch_us", g.dispatch_us)?;
            fraction("gpu.compute_efficiency", g.compute_efficiency)?;
            fraction("gpu.bandwidth_efficiency", g.bandwidth_efficiency)?;
        }
        if let Some(n) = &p.npu {
            positive("npu.clock_mhz", n.clock_mhz)?;
            for (what, v) in [
                ("npu.mac_rows", n.mac_rows),
                ("npu.mac_cols", n.mac_cols),
                ("npu.vector_lanes", n.vector_lanes),
                ("npu.sram_kib", n.sram_kib),
                ("npu.sram_banks", n.sram_banks),
                ("npu.dma_channels", n.dma_channels),
                ("npu.dma_burst_bytes", n.dma_burst_bytes),
            ] {
                if v == 0 {
                    return Err(bad(format!("{what} must be at least 1")));
                }
            }
            if n.sram_kib > 1 << 20 {
                return Err(bad(format!("npu.sram_kib = {} is beyond the 4 GiB an NPU address reaches", n.sram_kib)));
            }
            if n.sram_kib * 1024 % n.sram_banks != 0 {
                return Err(bad(format!("npu.sram_banks = {} does not divide the SRAM evenly", n.sram_banks)));
            }
            fraction("npu.dram_efficiency", n.dram_efficiency)?;
            if !(n.launch_us.is_finite() && n.launch_us >= 0.0) {
                return Err(bad(format!("npu.launch_us must be zero or more, not {}", n.launch_us)));
            }
        }
        Ok(p)
    }

    pub fn from_file(path: &Path) -> Result<DeviceProfile, ProfileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ProfileError::Read { file: file.clone(), message: e.to_string() })?;
        DeviceProfile::parse(&text, &file)
    }

    /// A built-in profile by name.
    pub fn builtin(name: &str) -> Result<DeviceProfile, ProfileError> {
        let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name) else {
            let known = BUILTIN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
            return Err(ProfileError::Unknown { name: name.into(), known });
        };
        DeviceProfile::parse(text, &format!("profiles/{name}.toml"))
    }

    /// A built-in profile's name, `host` (this machine's, measured by `tessera calibrate`), or
    /// else a file's path.
    pub fn load(name_or_path: &str) -> Result<DeviceProfile, ProfileError> {
        if name_or_path == "host" {
            let Some(path) = host_profile_path().filter(|p| p.exists()) else {
                return Err(ProfileError::Read {
                    file: host_profile_path().map_or("host.toml".into(), |p| p.display().to_string()),
                    message: "no host profile yet: run `tessera calibrate` to measure this machine".into(),
                });
            };
            return DeviceProfile::from_file(&path);
        }
        let path = Path::new(name_or_path);
        if path.extension().is_some_and(|e| e == "toml") || path.exists() {
            DeviceProfile::from_file(path)
        } else {
            DeviceProfile::builtin(name_or_path)
        }
    }
}

impl DeviceProfile {
    /// A roofline estimate of one fp32 GPU kernel, in microseconds: the dispatch cost plus
    /// the longer of its arithmetic and its DRAM traffic, each at the assumed efficiency.
    /// `None` when the profile has no GPU.
    pub fn gpu_estimate_us(&self, flops: u64, bytes: u64) -> Option<f64> {
        let g = self.gpu.as_ref()?;
        // GFLOP/s = 1e3 flops per microsecond; GB/s = 1e3 bytes per microsecond.
        let compute = flops as f64 / (g.fp32_gflops * 1e3 * g.compute_efficiency);
        let memory = bytes as f64 / (self.dram.bandwidth_gbps * 1e3 * g.bandwidth_efficiency);
        Some(g.dispatch_us + compute.max(memory))
    }

    /// A roofline estimate of one CPU kernel, in microseconds: the kernel's fixed cost plus the
    /// longer of its arithmetic (`flops` in f32, `int_ops` in 8-bit integers) and its DRAM
    /// traffic, at the profile's efficiencies.
    pub fn cpu_estimate_us(&self, flops: u64, int_ops: u64, bytes: u64) -> f64 {
        self.cpu_kernel_us("", flops, int_ops, bytes)
    }

    /// [`cpu_estimate_us`](Self::cpu_estimate_us) for a kernel of `class`, corrected by the
    /// class's measured efficiency where the profile has one.
    pub fn cpu_kernel_us(&self, class: &str, flops: u64, int_ops: u64, bytes: u64) -> f64 {
        let c = &self.cpu;
        let compute = flops as f64 / (c.fp32_gflops * 1e3 * c.compute_efficiency)
            + int_ops as f64 / (c.int8_gops * 1e3 * c.compute_efficiency);
        let memory = bytes as f64 / (self.dram.bandwidth_gbps * 1e3 * c.bandwidth_efficiency);
        let e = c.class_efficiency.get(class).copied().unwrap_or(1.0);
        c.kernel_us + compute.max(memory) / e
    }

    /// The NPU's time for a stream the simulator counted `cycles` for, with its launch cost.
    pub fn npu_us(&self, cycles: u64) -> Option<f64> {
        let n = self.npu.as_ref()?;
        Some(n.launch_us + cycles as f64 / n.clock_mhz)
    }

    /// Handing `bytes` from one unit to another: the signal plus cache maintenance over the
    /// buffer (shared DRAM: no copy).
    pub fn handoff_us(&self, bytes: u64) -> f64 {
        self.sync.handoff_us + bytes as f64 / (self.sync.cache_gbps * 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse_and_cite_sources() {
        let p = DeviceProfile::builtin("snapdragon-8-gen-2").unwrap();
        assert!(p.sources.iter().all(|s| s.url.starts_with("https://")));
        assert_eq!(p.gpu.as_ref().unwrap().name, "Adreno 740");
        assert_eq!(p.npu.as_ref().unwrap().mac_rows, 32);
        // 1 GFLOP of matmul is compute-bound: 8 us + 1e9 / (3700e3 * 0.35) us.
        let t = p.gpu_estimate_us(1_000_000_000, 1_000_000).unwrap();
        assert!((t - (8.0 + 1e9 / (3700e3 * 0.35))).abs() < 1e-6, "{t}");
        // 64 MB of traffic is bandwidth-bound: 8 us + 64e6 / (64e3 * 0.6) us.
        let t = p.gpu_estimate_us(1000, 64_000_000).unwrap();
        assert!((t - (8.0 + 64e6 / (64e3 * 0.6))).abs() < 1e-6, "{t}");
    }

    #[test]
    fn every_builtin_profile_parses_with_a_cpu_and_sources() {
        for name in builtin_names() {
            let p = DeviceProfile::builtin(name).unwrap();
            assert_eq!(p.name, name);
            assert!(p.cpu.threads >= 1 && p.cpu.fp32_gflops > 0.0, "{name}");
            assert!(p.sources.len() >= 2, "{name}: cite more than one source");
            // The CPU's fixed cost shows in a tiny kernel; a hand-over costs its signal at least.
            assert!(p.cpu_estimate_us(1, 0, 4) >= p.cpu.kernel_us);
            assert!(p.handoff_us(0) == p.sync.handoff_us);
        }
        let p = DeviceProfile::builtin("snapdragon-8-gen-3").unwrap();
        assert_eq!(p.dram.bandwidth_gbps, 76.8, "LPDDR5X-9600");
        let d = DeviceProfile::builtin("dimensity-9300").unwrap();
        assert_eq!(d.cpu.clusters.iter().map(|c| c.count).sum::<u32>(), 8);
    }

    #[test]
    fn bad_cpu_and_sync_fields_are_named() {
        let text = include_str!("../../profiles/dimensity-9300.toml");
        let err = DeviceProfile::parse(&text.replace("threads = 4", "threads = 9"), "d.toml").unwrap_err().to_string();
        assert!(err.contains("cpu.threads = 9 is more than the 8 cores"), "{err}");
        let err = DeviceProfile::parse(&text.replace("handoff_us = 30.0", "handoff_us = -1.0"), "d.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sync.handoff_us"), "{err}");
        let err = DeviceProfile::parse(&text.replace("ghz = 3.25", "ghz = 0.0"), "d.toml").unwrap_err().to_string();
        assert!(err.contains("cpu.clusters[0].ghz"), "{err}");
        let err = DeviceProfile::parse(&text.replace("[sync]", "[synk]"), "d.toml").unwrap_err().to_string();
        assert!(err.contains("d.toml"), "{err}");
        let err = DeviceProfile::parse(&format!("{text}\n[cpu.class_efficiency]\nattention = 0.0\n"), "d.toml");
        // A table after [npu] re-opens [cpu]: TOML allows it; the value is checked.
        let err = err.unwrap_err().to_string();
        assert!(err.contains("cpu.class_efficiency.attention"), "{err}");
    }

    #[test]
    fn bad_profiles_name_the_file_and_the_field() {
        let err = DeviceProfile::builtin("pixel-99").unwrap_err().to_string();
        assert!(err.contains("snapdragon-8-gen-2"), "{err}");
        let text = include_str!("../../profiles/snapdragon-8-gen-2.toml");
        let err = DeviceProfile::parse(&text.replace("fp32_gflops = 3700.0", "fp32_gflops = -1.0"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml") && err.contains("gpu.fp32_gflops"), "{err}");
        let err =
            DeviceProfile::parse(&text.replace("bandwidth_gbps", "bandwith_gbps"), "y.toml").unwrap_err().to_string();
        assert!(err.contains("y.toml") && err.contains("bandwith_gbps"), "{err}");
        let err =
            DeviceProfile::parse(&text.replace("compute_efficiency = 0.35", "compute_efficiency = 3.5"), "z.toml")
                .unwrap_err()
                .to_string();
        assert!(err.contains("compute_efficiency"), "{err}");
        let err =
            DeviceProfile::parse(&text.replace("mac_rows = 32", "mac_rows = 0"), "n.toml").unwrap_err().to_string();
        assert!(err.contains("n.toml") && err.contains("npu.mac_rows must be at least 1"), "{err}");
        let err = DeviceProfile::parse(&text.replace("dram_efficiency = 0.8", "dram_efficiency = 1.8"), "n.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("npu.dram_efficiency"), "{err}");
        let err = DeviceProfile::parse(&text.replace("clock_mhz = 1000.0", "clock_mhz = 0.0"), "n.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("npu.clock_mhz must be a positive number"), "{err}");
    }
}
