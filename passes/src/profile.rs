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
}

/// One SoC.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    pub name: String,
    pub soc: String,
    pub sources: Vec<Source>,
    pub dram: Dram,
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
const BUILTIN: &[(&str, &str)] = &[("snapdragon-8-gen-2", include_str!("../../profiles/snapdragon-8-gen-2.toml"))];

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
        if let Some(g) = &p.gpu {
            positive("gpu.fp32_gflops", g.fp32_gflops)?;
            positive("gpu.fp16_gflops", g.fp16_gflops)?;
            positive("gpu.dispatch_us", g.dispatch_us)?;
            for (what, v) in
                [("gpu.compute_efficiency", g.compute_efficiency), ("gpu.bandwidth_efficiency", g.bandwidth_efficiency)]
            {
                if !(v > 0.0 && v <= 1.0) {
                    return Err(bad(format!("{what} must be in (0, 1], not {v}")));
                }
            }
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
            if !(n.dram_efficiency > 0.0 && n.dram_efficiency <= 1.0) {
                return Err(bad(format!("npu.dram_efficiency must be in (0, 1], not {}", n.dram_efficiency)));
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

    /// A built-in profile's name, or else a file's path.
    pub fn load(name_or_path: &str) -> Result<DeviceProfile, ProfileError> {
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
