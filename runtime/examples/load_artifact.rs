//! What an app ships: open an ahead-of-time artifact and run it, with no compiler in the binary.
//!
//! ```text
//! cargo build --release -p tessera-runtime --no-default-features --example load_artifact
//! target/release/examples/load_artifact model.tsa [--dim NAME=SIZE]... [--out DIR]
//! ```
//!
//! Every input gets ones (integers) or 0.5 (floats), its symbolic dims the sizes given with
//! `--dim` (default 8). Prints the time from opening the file to the end of the first run, and
//! each output's shape and a checksum; `--out DIR` writes each output's bytes to
//! `DIR/output_J.bin`.

use std::time::Instant;

use tessera_runtime::{DType, Session, SessionOptions, Tensor};

fn main() {
    if let Err(e) = run() {
        eprintln!("load_artifact: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let mut dims: Vec<(String, usize)> = Vec::new();
    let mut out = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dim" => {
                let d = args.next().ok_or("--dim needs NAME=SIZE")?;
                let (n, v) = d.split_once('=').ok_or("--dim needs NAME=SIZE")?;
                dims.push((n.to_string(), v.parse()?));
            }
            "--out" => out = Some(std::path::PathBuf::from(args.next().ok_or("--out needs a folder")?)),
            _ if path.is_none() => path = Some(a),
            _ => return Err(format!("unexpected argument {a}").into()),
        }
    }
    let path = path.ok_or("usage: load_artifact MODEL.tsa [--dim NAME=SIZE]... [--out DIR]")?;
    let t0 = Instant::now();
    let session = Session::from_file(&path, &SessionOptions { threads: 1, ..Default::default() })?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut inputs = Vec::new();
    for (name, ty) in session.inputs() {
        let shape: Vec<usize> = ty
            .shape
            .dims()
            .iter()
            .map(|d| {
                d.as_static().map(|n| n as usize).unwrap_or_else(|| {
                    let s = d.to_string();
                    dims.iter().find(|(n, _)| *n == s).map_or(8, |(_, v)| *v)
                })
            })
            .collect();
        let n: usize = shape.iter().product();
        let t = match ty.dtype {
            DType::F32 | DType::F16 | DType::BF16 => Tensor::from_f32(ty.dtype, &shape, vec![0.5; n])?,
            DType::Bool => Tensor::from_bool(&shape, vec![true; n])?,
            d => Tensor::from_i64(d, &shape, vec![1; n])?,
        };
        println!("input {name}: {} {shape:?}", ty.dtype);
        inputs.push(t);
    }
    let outputs = session.run(&inputs)?;
    let first_ms = t0.elapsed().as_secs_f64() * 1e3;
    for (j, t) in outputs.iter().enumerate() {
        let bytes = t.to_bytes();
        let sum = bytes.iter().fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(b as u64));
        println!("output {j}: {} {:?} checksum {sum:016x}", t.dtype(), t.shape());
        if let Some(dir) = &out {
            std::fs::write(dir.join(format!("output_{j}.bin")), &bytes)?;
        }
    }
    println!("load {load_ms:.2} ms, load + first run {first_ms:.2} ms");
    Ok(())
}
