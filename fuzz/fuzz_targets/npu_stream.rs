//! Reads arbitrary bytes as an NPU command stream: decoding gives a stream or a typed
//! `DecodeError`; a decoded stream is validated against the default device (a typed
//! `ValidationError` or a checked stream), and a checked stream runs on the simulator with
//! zero-filled buffers. None of it may panic: an NPU has no MMU, so whatever passes the
//! validator must be safe to execute.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_target_npu::stream::{Command, Stream};
use tessera_target_npu::{sim, validate, Device};

fuzz_target!(|data: &[u8]| {
    let Ok(stream) = Stream::decode(data) else { return };
    let encoded = stream.encode();
    assert_eq!(Stream::decode(&encoded).expect("an encoded stream decodes").encode(), encoded);
    let _ = stream.disassemble();
    let dev = Device::default_profile();
    let Ok(checked) = validate::validate(&stream, &dev) else { return };
    // Skip streams whose buffers or products would only make the run slow.
    let bytes = stream.buffers.iter().fold(0u64, |s, b| s.saturating_add(b.bytes));
    let macs: u64 = stream
        .commands
        .iter()
        .map(|c| match c {
            Command::MatMul { m, n, k, .. } => (*m as u64).saturating_mul(*n as u64).saturating_mul(*k as u64),
            _ => 0,
        })
        .fold(0u64, u64::saturating_add);
    if bytes > 1 << 22 || macs > 1 << 24 {
        return;
    }
    let mut bufs: Vec<Vec<u8>> = stream.buffers.iter().map(|b| vec![0; b.bytes as usize]).collect();
    sim::run(&stream, &checked, &dev, &mut bufs, true).expect("a checked stream runs");
});
