//! Quantised weights kept encoded on the GPU (`backend::quant`), against the CPU backend decoding
//! the same blocks (whose decoders match gguf-py's reference; kr-model's quant tests).
//!
//! Tolerances, relative to the largest output: f32 1e-4 (the same decoded values, another
//! summation order); bf16 1e-2 (outputs rounded to bf16, 4e-3 relative; for more than 8
//! tokens the decoded weights too before cuBLASLt; for Q4_K and Q6_K at one token the
//! activations are quantised to int8 per 32, about 4e-3 of the output's spread).

use super::*;
use kr_model::random::{encoded_noise, random_weights_stored, Storage};

/// Token counts: the GEMV (1..=8, odd and full) and the dequantise + GEMM path.
const TOKENS: [usize; 4] = [1, 5, 8, 40];

/// Every quantised type, every path: `linear` with a bias and `linear_add`, on a matrix of
/// more rows than one dequantisation chunk holds (17,000 × 512 takes three 16 MiB chunks in
/// f32 and two in bf16, so the GEMM path writes strided slices of the output).
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn quantised_projections_match_cpu_for_every_type() {
    require_gpu();
    let (rows, cols) = (17_000, 512);
    for dtype in [DType::F32, DType::Bf16] {
        let w = tiny_weights("qwen2", RopeStyle::HalfSplit, GgmlType::F32);
        let model = CudaModel::load(&w, options(dtype, 8, false)).expect("load");
        let (g, c) = (model.backend(), CpuBackend);
        let tol = if dtype == DType::F32 { 1e-4 } else { 1e-2 };
        for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
            let t = encoded_noise("w", ty, rows, cols, ty.id() as u64);
            let (gw, cw) = (g.load_weight(&t), c.load_weight(&t));
            let bias: Vec<f32> = (0..rows).map(|r| (r % 7) as f32 * 0.01).collect();
            let (gb, cb) = (g.load_vector(&bias), c.load_vector(&bias));
            for n in TOKENS {
                let x = bf16_values(n * cols, 7 + n as u64);
                let gx = g.upload_tensor(n, cols, &x);
                let cx = kr_cpu::Mat::new(n, cols, x);
                let want = c.linear(&cx, &cw, Some(&cb));
                let got = g.to_host(&g.linear(&gx, &gw, Some(&gb)));
                let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
                let e = max_diff(&got, &want.data) / scale;
                println!("{} {dtype:?} {n} tokens: linear error {e:.2e}", ty.name());
                assert!(e <= tol, "{} {dtype:?} {n} tokens: linear {e}", ty.name());

                let residual = bf16_values(n * rows, 90 + n as u64);
                let mut gr = g.upload_tensor(n, rows, &residual);
                let mut cr = kr_cpu::Mat::new(n, rows, residual);
                g.linear_add(&mut gr, &gx, &gw);
                c.linear_add(&mut cr, &cx, &cw);
                let e = max_diff(&g.to_host(&gr), &cr.data) / scale;
                assert!(
                    e <= tol,
                    "{} {dtype:?} {n} tokens: linear_add {e}",
                    ty.name()
                );
            }
            assert!(g.take_error().is_none(), "{}", ty.name());
        }
    }
}

/// Whole models stored as llama.cpp's Q4_K_M mix and as Q8_0 (embedding, layers and head all
/// encoded): the script's ragged prefill, decode and graph steps give the CPU's logits, and
/// the GPU holds the encoded bytes, not a dequantised copy.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn quantised_models_match_cpu_backend() {
    require_gpu();
    for storage in ["q4_k_m", "q8_0"] {
        let storage = Storage::parse(storage).expect("storage");
        let w = random_weights_stored(&tiny_config("llama", RopeStyle::HalfSplit), storage, 5);
        for (dtype, graphs, tol) in [(DType::F32, false, 1e-4), (DType::Bf16, true, 5e-2)] {
            let cpu = Decoder::new(CpuBackend, &w);
            let mut cpu_cache = cpu.new_kv_cache(40, 16);
            let mut gpu = CudaModel::load(&w, options(dtype, 40, graphs)).expect("load");
            let (on_gpu, stored) = (gpu.backend().weight_arena_bytes(), w.weight_bytes());
            println!("{storage:?}: {on_gpu} bytes of weights on the GPU, {stored} in the file");
            assert!(
                on_gpu < stored + 256 * 24,
                "{storage:?}: {on_gpu} on the GPU, {stored} stored"
            );
            let mut worst = 0f32;
            for (ids, meta) in Script::steps(w.config.vocab_size) {
                let want = cpu.forward(&ids, &meta, &mut cpu_cache);
                let got = gpu.forward(&ids, &meta).expect("GPU step");
                assert!(got.iter().all(|v| v.is_finite()), "{storage:?}: non-finite");
                worst = worst.max(max_diff(&got, &want));
            }
            println!("{storage:?} {dtype:?} graphs={graphs}: max |GPU - CPU| = {worst:.2e}");
            assert!(worst <= tol, "{storage:?} {dtype:?}: {worst}");
            assert_eq!(gpu.allocations_since_load(), 0, "a step allocated memory");
        }
    }
}

/// MLX-quantised checkpoints (tests/reference/mlx-tiny) against MLX's logits: in f32 the GPU
/// decodes and sums as MLX in f32 does (1e-4, as on the CPU); in bf16 0.25, as for hf-tiny.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn mlx_checkpoints_match_mlx() {
    require_gpu();
    for name in ["llama-q4-g32", "llama-q8-g64", "qwen2-q4-g64"] {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/reference/mlx-tiny")
            .join(name);
        let m = kr_model::hf::load_hf_dir(&dir).expect("mlx-tiny model");
        let (ids, want) = reference_logits(&dir);
        for (dtype, tol) in [(DType::F32, 1e-4f32), (DType::Bf16, 0.25)] {
            let mut gpu = CudaModel::load(&m.weights, options(dtype, 64, false)).expect("load");
            // One 16-token prefill: the dequantise + GEMM path (the GEMV is checked above).
            let e = max_diff(&all_logits(&mut gpu, &ids), &want);
            println!("mlx-tiny {name} computed in {dtype:?}: max |logit error| = {e:.2e}");
            assert!(e <= tol, "{name} {dtype:?}: {e}");
        }
    }
}
