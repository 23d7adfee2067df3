//! Reads arbitrary bytes as an ahead-of-time artifact (`.tsa`): opening gives a checked
//! artifact or a typed `ArtifactError`, and a checked artifact's CPU program loads (its object
//! parsed, relocated and mapped, never run) or is a typed error. Each input is tried twice: as
//! it is (the checksums stop nearly every mutation), and resealed with its checksums
//! recomputed, so mutations inside sections reach the metadata, IR and object loaders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_ir::Blob;
use tessera_runtime::artifact::{reseal, Artifact};

fn try_load(bytes: Vec<u8>) {
    let Ok(a) = Artifact::from_blob(Blob::from_vec(bytes)) else { return };
    let _ = a.cpu_meta();
    // Loading maps and relocates the kernels but runs none of them.
    let _ = a.cpu_program(1);
}

fuzz_target!(|data: &[u8]| {
    try_load(data.to_vec());
    if let Some(sealed) = reseal(data) {
        try_load(sealed);
    }
});
