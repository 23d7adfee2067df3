//! The NPU target against the reference interpreter (bit for bit), the validator against bad
//! streams, the simulator's efficiency on MiniLM-sized products, and the command stream's text.

use tessera_passes::ir::{self, BinaryOp, ConstData, DType, Graph, Op, Shape, Tensor, TensorType, Value};
use tessera_target_npu::compile::{compile, compile_with, Epilogue, MatMulKernel, Order, Src, Tiling};
use tessera_target_npu::stream::{BufferDecl, BufferRole, Command, DramBox, ElemType, Operand, Param, Stream};
use tessera_target_npu::validate::validate;
use tessera_target_npu::{Device, NpuModel};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

fn random_ints(r: &mut Rng, dtype: DType, shape: &[usize]) -> Tensor {
    let (lo, hi) = match dtype {
        DType::U8 => (0, 255),
        DType::I8 => (-128, 127),
        DType::U4 => (0, 15),
        DType::I4 => (-8, 7),
        _ => unreachable!(),
    };
    let n: usize = shape.iter().product();
    let v = (0..n).map(|_| lo + r.below((hi - lo + 1) as u64) as i64).collect();
    Tensor::from_i64(dtype, shape, v).unwrap()
}

fn constant(g: &mut Graph, t: &Tensor) -> Value {
    g.add_const(TensorType::new(t.dtype(), Shape::from_static(t.shape())), ConstData::from_vec(t.to_bytes()))
}

/// One random product with a random output stage, its inputs, and whether the NPU must take it.
fn random_case(r: &mut Rng) -> (Graph, Vec<Tensor>) {
    let mut g = Graph::new("case");
    let mut inputs = Vec::new();
    let mut input = |g: &mut Graph, t: Tensor| {
        let v = g.add_input(&format!("x{}", inputs.len()), TensorType::new(t.dtype(), Shape::from_static(t.shape())));
        inputs.push(t);
        v
    };
    let (m, k, n) = (r.range(1, 70), r.range(1, 100), r.range(1, 70));
    let a_ty = r.pick(&[DType::U8, DType::I8]);
    let b_ty = r.pick(&[DType::U8, DType::I8, DType::U4, DType::I4]);
    let b_const = b_ty.bits() == 4 || r.below(3) > 0;
    let batch = r.pick(&[0usize, 0, 2, 3]);
    let b_batched = batch > 0 && r.below(2) == 0;
    let a_shape = if batch > 0 { vec![batch, m, k] } else { vec![m, k] };
    let b_shape = if b_batched { vec![batch, k, n] } else { vec![k, n] };
    let a_t = random_ints(r, a_ty, &a_shape);
    let a = input(&mut g, a_t);
    let b_t = random_ints(r, b_ty, &b_shape);
    let b = if b_const { constant(&mut g, &b_t) } else { input(&mut g, b_t) };
    // Zero points: none, one constant, one given, or per row / per column.
    let mut zero = |g: &mut Graph, ty: DType, len: usize, vector_ok: bool, r: &mut Rng| -> Option<Value> {
        match r.below(5) {
            0 => None,
            1 => Some(constant(g, &random_ints(r, ty, &[]))),
            2 if ty.bits() == 8 => Some(input(g, random_ints(r, ty, &[]))),
            3 | 4 if vector_ok => {
                let t = random_ints(r, ty, &[len]);
                Some(if r.below(2) == 0 || ty.bits() == 4 { constant(g, &t) } else { input(g, t) })
            }
            _ => Some(constant(g, &random_ints(r, ty, &[]))),
        }
    };
    let za = zero(&mut g, a_ty, m, batch == 0, r);
    let zb = zero(&mut g, b_ty, n, true, r);
    let mut args = vec![a, b];
    match (za, zb) {
        (None, None) => {}
        (za, zb) => {
            let za = za.unwrap_or_else(|| constant(&mut g, &Tensor::from_i64(a_ty, &[], vec![0]).unwrap()));
            args.push(za);
            if let Some(zb) = zb {
                args.push(zb);
            }
        }
    }
    let mut y = g.add_op(Op::MatMulInteger { pair_saturate: false }, args).unwrap()[0];
    let stage = r.below(6);
    if stage > 0 {
        y = g.add_op(Op::Cast { to: DType::F32 }, vec![y]).unwrap()[0];
    }
    if stage > 1 {
        let scale_vals = |r: &mut Rng, len: usize| -> Vec<f32> {
            (0..len).map(|_| (r.below(2000) as f32 + 1.0) * 1e-4 * if r.below(5) == 0 { -1.0 } else { 1.0 }).collect()
        };
        let s = match r.below(3) {
            0 => constant(&mut g, &Tensor::from_f32(DType::F32, &[], scale_vals(r, 1)).unwrap()),
            1 => constant(&mut g, &Tensor::from_f32(DType::F32, &[n], scale_vals(r, n)).unwrap()),
            _ => input(&mut g, Tensor::from_f32(DType::F32, &[], scale_vals(r, 1)).unwrap()),
        };
        y = g.add_op(Op::Binary(BinaryOp::Mul), if r.below(2) == 0 { vec![y, s] } else { vec![s, y] }).unwrap()[0];
        if stage > 2 {
            let offs: Vec<f32> = (0..n).map(|_| r.below(512) as f32 - 255.5).collect();
            let o = match r.below(3) {
                0 => constant(&mut g, &Tensor::from_f32(DType::F32, &[], offs[..1].to_vec()).unwrap()),
                1 => constant(&mut g, &Tensor::from_f32(DType::F32, &[1, n], offs).unwrap()),
                _ => input(&mut g, Tensor::from_f32(DType::F32, &[n], offs).unwrap()),
            };
            y = g.add_op(Op::Binary(BinaryOp::Add), vec![y, o]).unwrap()[0];
        }
        if stage > 3 {
            let one = constant(&mut g, &Tensor::from_f32(DType::F32, &[], vec![1.0]).unwrap());
            let to = r.pick(&[DType::U8, DType::I8]);
            y = g.add_op(Op::Quantize { axis: 0, block: 0, to }, vec![y, one]).unwrap()[0];
        }
    }
    g.add_output("y", y);
    ir::verify(&g).unwrap_or_else(|e| panic!("{e}\n{}", ir::print(&g)));
    (g, inputs)
}

fn small_device() -> Device {
    Device {
        name: "tiny".into(),
        mac_rows: 8,
        mac_cols: 8,
        sram_bytes: 16 * 1024,
        sram_banks: 4,
        dma_channels: 1,
        ..Device::default_profile()
    }
}

#[test]
fn products_match_the_interpreter_bit_for_bit() {
    let mut r = Rng(7);
    for dev in [Device::default_profile(), small_device()] {
        for case in 0..120 {
            let (g, inputs) = random_case(&mut r);
            let want = ir::run(&g, inputs.clone()).unwrap();
            let model = NpuModel::new(g.clone(), dev.clone());
            let (got, report) = model.run(&inputs).unwrap();
            assert_eq!(
                report.kernels.len(),
                1,
                "case {case} on {}: declined: {:?}\n{}",
                dev.name,
                report.host,
                ir::print(&g)
            );
            assert_eq!(got[0].dtype(), want[0].dtype(), "case {case}");
            assert_eq!(got[0].shape(), want[0].shape(), "case {case}");
            assert_eq!(got[0].to_bytes(), want[0].to_bytes(), "case {case} on {}\n{}", dev.name, ir::print(&g));
            // Everything the report counts is consistent.
            let s = &report.kernels[0].stats;
            assert!(s.cycles > 0 && s.macs > 0 && s.compute_cycles <= s.cycles, "{s:?}");
            assert!(s.sram_peak <= dev.sram_bytes);
        }
    }
}

#[test]
fn the_small_device_tiles_the_reduction_and_accumulates() {
    let dev = small_device();
    let kernel = MatMulKernel {
        batch: 1,
        m: 40,
        k: 700,
        n: 24,
        a_ty: ElemType::U8,
        b_ty: ElemType::I8,
        b_const: Some(vec![3; 700 * 24]),
        b_batched: false,
        a_zero: Src::Int(2),
        b_zero: Src::None,
        epilogue: None,
    };
    let c = compile(&kernel, &dev).unwrap();
    assert!(c.tiling.tk < 700, "{:?}", c.tiling);
    assert!(c.stream.commands.iter().any(|c| matches!(c, Command::MatMul { accumulate: true, .. })));
    let a: Vec<u8> = (0..40 * 700).map(|i| (i % 251) as u8).collect();
    let (out, _) = c.run(&dev, std::slice::from_ref(&a)).unwrap();
    for (row, chunk) in out.chunks(24 * 4).enumerate() {
        let want: i32 = a[row * 700..(row + 1) * 700].iter().map(|&x| (x as i32 - 2) * 3).sum();
        for w in chunk.chunks(4) {
            assert_eq!(i32::from_le_bytes([w[0], w[1], w[2], w[3]]), want);
        }
    }
}

#[test]
fn a_kernel_that_cannot_fit_sram_is_declined_with_the_reason() {
    let dev = Device { sram_bytes: 2048, sram_banks: 1, ..small_device() };
    let kernel = MatMulKernel {
        batch: 1,
        m: 64,
        k: 64,
        n: 64,
        a_ty: ElemType::I8,
        b_ty: ElemType::I8,
        b_const: None,
        b_batched: false,
        a_zero: Src::None,
        b_zero: Src::None,
        epilogue: None,
    };
    let err = compile(&kernel, &dev).unwrap_err().to_string();
    assert!(err.contains("does not fit SRAM even at the smallest tile"), "{err}");
    let float = MatMulKernel { a_ty: ElemType::F32, ..kernel };
    let err = compile(&float, &Device::default_profile()).unwrap_err().to_string();
    assert!(err.contains("f32 activations"), "{err}");
}

/// MiniLM-L3's products at sequence length 128 (hidden 384, FFN 1536) as the int8 model has
/// them: u8 activations, i8 constant weights, f32 output stage.
fn minilm_product(k: u32, n: u32) -> MatMulKernel {
    MatMulKernel {
        batch: 1,
        m: 128,
        k,
        n,
        a_ty: ElemType::U8,
        b_ty: ElemType::I8,
        b_const: Some(vec![1; (k * n) as usize]),
        b_batched: false,
        a_zero: Src::Input { ty: ElemType::U8, vector: false },
        b_zero: Src::None,
        epilogue: Some(Epilogue {
            scale: Src::Input { ty: ElemType::F32, vector: false },
            offset: Src::Const { ty: ElemType::F32, bytes: vec![0; 4 * n as usize], vector: true },
            out: ElemType::F32,
        }),
    }
}

#[test]
fn minilm_sized_products_keep_the_mac_array_busy_and_hide_weight_dma() {
    let dev = Device::default_profile();
    for (k, n) in [(384, 384), (384, 1536), (1536, 384)] {
        let c = compile(&minilm_product(k, n), &dev).unwrap();
        let s = &c.estimate;
        assert!(
            s.mac_utilization() >= 0.8,
            "{k}x{n}: MAC utilization {:.3} ({:?}, {s:?})",
            s.mac_utilization(),
            c.tiling
        );
        assert!(s.weight_dma_hidden() >= 0.9, "{k}x{n}: weight DMA hidden {:.3} ({s:?})", s.weight_dma_hidden());
        assert!(s.sram_peak <= dev.sram_bytes);
    }
}

#[test]
fn the_tiling_search_beats_a_naive_tiling() {
    let dev = Device::default_profile();
    let kernel = minilm_product(384, 1536);
    let best = compile(&kernel, &dev).unwrap();
    let naive = compile_with(&kernel, &dev, Some(Tiling { tm: 32, tn: 32, tk: 384, order: Order::RowsOuter })).unwrap();
    assert!(best.estimate.cycles < naive.estimate.cycles, "{:?} vs {:?}", best.estimate, naive.estimate);
}

fn stream_of(commands: Vec<Command>) -> Stream {
    Stream {
        buffers: vec![
            BufferDecl { role: BufferRole::Input(0), bytes: 64 },
            BufferDecl { role: BufferRole::Output(0), bytes: 64 },
        ],
        commands,
    }
}

#[test]
fn the_validator_rejects_unsafe_streams_naming_the_command() {
    let dev = Device::default_profile();
    let load = Command::DmaLoad { ch: 0, src: DramBox::linear(0, 0, 64), sram: 0 };
    let store = Command::DmaStore { ch: 1, sram: 0, dst: DramBox::linear(1, 0, 64) };
    let a = Operand { addr: 0, stride: 8, ty: ElemType::I8 };
    let matmul = |a: Operand, accumulate: bool| Command::MatMul {
        a,
        b: a,
        acc: 1024,
        acc_stride: 32,
        m: 8,
        n: 8,
        k: 8,
        a_zero: Param::None,
        b_zero: Param::None,
        accumulate,
    };
    let mm = matmul(a, false);
    let wait = Command::Wait { ch: 0, count: 1 };
    // A good stream passes.
    let good = stream_of(vec![
        load.clone(),
        wait.clone(),
        mm.clone(),
        store.clone(),
        Command::Wait { ch: 1, count: 1 },
        Command::Stop,
    ]);
    validate(&good, &dev).unwrap();
    let cases: Vec<(Vec<Command>, &str)> = vec![
        (vec![load.clone(), mm.clone(), Command::Stop], "still writing it: wait for it first"),
        (vec![mm.clone(), Command::Stop], "which nothing has written"),
        (vec![load.clone(), Command::Wait { ch: 0, count: 2 }, Command::Stop], "it would never finish"),
        (
            vec![Command::DmaLoad { ch: 0, src: DramBox::linear(0, 0, 64), sram: dev.sram_bytes - 32 }, Command::Stop],
            "outside the SRAM",
        ),
        (
            vec![Command::DmaLoad { ch: 0, src: DramBox::linear(0, 32, 64), sram: 0 }, Command::Stop],
            "past b0's 64 bytes",
        ),
        (vec![Command::DmaLoad { ch: 0, src: DramBox::linear(7, 0, 64), sram: 0 }, Command::Stop], "no buffer b7"),
        (
            vec![
                load.clone(),
                wait.clone(),
                Command::DmaStore { ch: 0, sram: 0, dst: DramBox::linear(0, 0, 64) },
                Command::Stop,
            ],
            "not an output buffer",
        ),
        (vec![load.clone(), wait.clone(), store.clone(), Command::Stop], "unfinished"),
        (vec![load.clone(), wait.clone()], "does not end with stop"),
        (vec![Command::Wait { ch: 5, count: 0 }, Command::Stop], "channel 5 does not exist"),
        (vec![Command::Stop, Command::Stop], "commands after stop"),
        (vec![load.clone(), load.clone(), Command::Stop], "still using it"),
        (vec![load.clone(), wait.clone(), matmul(a, true), Command::Stop], "which nothing has written"),
        (
            vec![load.clone(), wait.clone(), matmul(Operand { ty: ElemType::F32, ..a }, false), Command::Stop],
            "8- and 4-bit integers",
        ),
    ];
    for (i, (commands, want)) in cases.into_iter().enumerate() {
        let err = validate(&stream_of(commands), &dev).unwrap_err().to_string();
        assert!(err.contains(want), "case {i}: {err}");
        assert!(err.starts_with("command "), "case {i}: {err}");
    }
}

#[test]
fn every_compiled_stream_decodes_validates_and_disassembles() {
    let dev = Device::default_profile();
    let kernel = MatMulKernel {
        batch: 1,
        m: 48,
        k: 40,
        n: 40,
        a_ty: ElemType::U8,
        b_ty: ElemType::I4,
        b_const: Some(vec![0x21; 40 * 40 / 2]),
        b_batched: false,
        a_zero: Src::Int(128),
        b_zero: Src::Const { ty: ElemType::I32, bytes: vec![0; 4 * 40], vector: true },
        epilogue: Some(Epilogue { scale: Src::Float(0.0125), offset: Src::Float(3.0), out: ElemType::I8 }),
    };
    let c = compile_with(&kernel, &dev, Some(Tiling { tm: 32, tn: 32, tk: 40, order: Order::ColumnsOuter })).unwrap();
    let bytes = c.stream.encode();
    let back = Stream::decode(&bytes).unwrap();
    assert_eq!(back, c.stream);
    validate(&back, &dev).unwrap();
    insta::assert_snapshot!("matmul_u8_x_i4_requant_i8", c.stream.disassemble());
}

/// The NPU's answer for float kernels: declined, with the reason in the report.
#[test]
fn float_attention_and_layernorm_are_declined_with_reasons() {
    let mut g = Graph::new("float");
    let ty = TensorType::new(DType::F32, Shape::from_static(&[1, 2, 4, 8]));
    let q = g.add_input("q", ty.clone());
    let att = g.add_op(Op::Attention { scale: 0.35, causal: true }, vec![q, q, q]).unwrap()[0];
    let gamma = constant(&mut g, &Tensor::from_f32(DType::F32, &[8], vec![1.5; 8]).unwrap());
    let ln = g.add_op(Op::LayerNorm { axis: -1, epsilon: 1e-5 }, vec![att, gamma]).unwrap()[0];
    g.add_output("y", ln);
    let x = Tensor::from_f32(DType::F32, &[1, 2, 4, 8], (0..64).map(|i| i as f32 * 0.1).collect()).unwrap();
    let want = ir::run(&g, vec![x.clone()]).unwrap();
    let (got, report) = NpuModel::new(g, Device::default_profile()).run(&[x]).unwrap();
    assert_eq!(got[0].to_bytes(), want[0].to_bytes());
    assert!(report.kernels.is_empty());
    let text = report.host.iter().map(|(op, why)| format!("{op}: {why}")).collect::<Vec<_>>().join("\n");
    insta::assert_snapshot!("declined_attention_and_layernorm", text);
}
