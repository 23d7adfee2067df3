//! Tessera's shared test machinery: the `.tir` filetest runner (see `filetest`) and helpers
//! for integration tests.

pub mod filetest;
