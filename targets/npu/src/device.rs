//! The simulated NPU as data: what the compiler tiles for and the simulator counts cycles with.
//! Built from a device profile's `[npu]` section (`profiles/*.toml`), never from constants here.

use tessera_passes::profile::DeviceProfile;

/// One NPU: a MAC array fed from an on-chip SRAM, a vector unit, and DMA channels to DRAM.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    pub name: String,
    pub clock_mhz: f64,
    pub mac_rows: u32,
    pub mac_cols: u32,
    pub int4_weights: bool,
    pub vector_lanes: u32,
    pub sram_bytes: u32,
    pub sram_banks: u32,
    pub dma_channels: u32,
    pub dma_setup_cycles: u32,
    pub dma_burst_bytes: u32,
    /// The NPU's share of DRAM bandwidth, in bytes per NPU cycle (all channels together).
    pub dram_bytes_per_cycle: f64,
    pub matmul_fill_cycles: u32,
}

impl Device {
    /// The NPU of a profile; `None` when the profile has none.
    pub fn from_profile(p: &DeviceProfile) -> Option<Device> {
        let n = p.npu.as_ref()?;
        // GB/s over MHz: bytes per second / cycles per second.
        let bytes_per_cycle = p.dram.bandwidth_gbps * 1e9 * n.dram_efficiency / (n.clock_mhz * 1e6);
        Some(Device {
            name: format!("{} ({})", n.name, p.name),
            clock_mhz: n.clock_mhz,
            mac_rows: n.mac_rows,
            mac_cols: n.mac_cols,
            int4_weights: n.int4_weights,
            vector_lanes: n.vector_lanes,
            sram_bytes: n.sram_kib * 1024,
            sram_banks: n.sram_banks,
            dma_channels: n.dma_channels,
            dma_setup_cycles: n.dma_setup_cycles,
            dma_burst_bytes: n.dma_burst_bytes,
            dram_bytes_per_cycle: bytes_per_cycle,
            matmul_fill_cycles: n.matmul_fill_cycles,
        })
    }

    /// The default device: the NPU of the built-in `snapdragon-8-gen-2` profile.
    pub fn default_profile() -> Device {
        let p = DeviceProfile::builtin("snapdragon-8-gen-2").expect("the built-in profile parses (tested)");
        Device::from_profile(&p).expect("the built-in profile has an NPU (tested)")
    }

    /// Bytes of one SRAM bank (banks are contiguous ranges of the address space).
    pub fn bank_bytes(&self) -> u32 {
        self.sram_bytes / self.sram_banks
    }

    /// MACs per cycle at full utilization.
    pub fn macs_per_cycle(&self) -> u64 {
        self.mac_rows as u64 * self.mac_cols as u64
    }

    /// Microseconds of `cycles` at the device's clock.
    pub fn micros(&self, cycles: u64) -> f64 {
        cycles as f64 / self.clock_mhz
    }
}
