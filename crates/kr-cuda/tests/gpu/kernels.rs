//! Each backend operation alone on random inputs, GPU vs CPU: the elementwise and norm kernels,
//! the projections (CUDA-core and tensor-core GEMVs, cuBLASLt) and the residual adds.

use super::*;
use kr_cuda::backend::{CudaBackend, CudaTensor};

/// The tiny qwen2 model (q/k/v biases) in f32, its weights and its GPU copy.
fn tiny_f32_model() -> (ModelWeights, CudaModel) {
    let w = tiny_weights("qwen2", RopeStyle::HalfSplit, GgmlType::F32);
    let model = CudaModel::load(&w, options(DType::F32, 8, false)).expect("load");
    (w, model)
}

/// `n` values in [-0.5, 0.5) from `seed`.
fn random(n: usize, seed: u64) -> Vec<f32> {
    xorshift(n, seed).map(|u| u - 0.5).collect()
}

/// The same random `rows × cols` matrix on the GPU and on the CPU.
fn random_pair(g: &CudaBackend, rows: usize, cols: usize, seed: u64) -> (CudaTensor, kr_cpu::Mat) {
    let data = random(rows * cols, seed);
    (
        g.upload_tensor(rows, cols, &data),
        kr_cpu::Mat::new(rows, cols, data),
    )
}

/// Each operation alone on random inputs, GPU (f32) vs CPU.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn each_kernel_matches_cpu_on_random_inputs() {
    require_gpu();
    let (w, gpu_model) = tiny_f32_model();
    let g = gpu_model.backend();
    let c = CpuBackend;
    let up = |rows, cols, seed| random_pair(g, rows, cols, seed);
    let check = |name: &str, gt: &CudaTensor, ct: &kr_cpu::Mat| {
        let e = max_diff(&g.to_host(gt), &ct.data);
        println!("{name}: max error {e:.2e}");
        assert!(e <= 1e-4, "{name}: {e}");
    };
    let norm: Vec<f32> = random(256, 3).iter().map(|v| 1.0 + v).collect();
    let (gn, cn) = (g.load_vector(&norm), c.load_vector(&norm));
    for rows in [1, 5, 37] {
        let (gx, cx) = up(rows, 256, 1);
        check(
            "rms_norm",
            &g.rms_norm(&gx, &gn, 1e-5),
            &c.rms_norm(&cx, &cn, 1e-5),
        );
        let (gx2, cx2) = up(rows, 256, 2);
        check("silu_mul", &g.silu_mul(&gx, &gx2), &c.silu_mul(&cx, &cx2));
        let l = &w.layers[0];
        let (gw, cw) = (g.load_weight(&l.wq), c.load_weight(&l.wq));
        let bias = l.q_bias.as_ref().expect("qwen2 bias");
        let (gb, cb) = (g.load_vector(bias), c.load_vector(bias));
        // rows <= 8 take the GEMV kernel, more take cuBLASLt.
        check(
            "linear+bias",
            &g.linear(&gx, &gw, Some(&gb)),
            &c.linear(&cx, &cw, Some(&cb)),
        );
        let wts = |i: usize| {
            let t = [&l.wq, &l.wk, &l.wv, &l.w_gate, &l.w_up][i];
            (g.load_weight(t), c.load_weight(t))
        };
        // Loaded back to back into a fresh arena: more than 8 rows take the packed GEMMs.
        g.reserve_weights(8 << 20).expect("weight arena");
        let ws: Vec<_> = (0..5).map(wts).collect();
        let biases: Vec<_> = [&l.q_bias, &l.k_bias, &l.v_bias]
            .iter()
            .map(|b| b.as_ref().map(|b| (g.load_vector(b), c.load_vector(b))))
            .collect();
        let gb3 = [0, 1, 2].map(|i| biases[i].as_ref().map(|b| &b.0));
        let cb3 = [0, 1, 2].map(|i| biases[i].as_ref().map(|b| &b.1));
        let gqkv = g.linear_qkv(&gx, [&ws[0].0, &ws[1].0, &ws[2].0], gb3);
        let cqkv = c.linear_qkv(&cx, [&ws[0].1, &ws[1].1, &ws[2].1], cb3);
        for (i, name) in ["linear_qkv (q)", "linear_qkv (k)", "linear_qkv (v)"]
            .iter()
            .enumerate()
        {
            check(name, &gqkv[i], &cqkv[i]);
        }
        check(
            "linear_gate_up",
            &g.linear_gate_up(&gx, &ws[3].0, &ws[4].0),
            &c.linear_gate_up(&cx, &ws[3].1, &ws[4].1),
        );
        let (mut gq, mut cq) = (g.linear(&gx, &gw, None), c.linear(&cx, &cw, None));
        let qn: Vec<f32> = random(32, 9).iter().map(|v| 1.0 + v).collect();
        g.head_rms_norm(&mut gq, &g.load_vector(&qn), 32, 1e-6);
        c.head_rms_norm(&mut cq, &c.load_vector(&qn), 32, 1e-6);
        check("head_rms_norm", &gq, &cq);
        let pick: Vec<usize> = (0..rows).rev().step_by(2).collect();
        check(
            "gather_rows",
            &g.gather_rows(&gx, &pick),
            &c.gather_rows(&cx, &pick),
        );
    }
    assert!(g.take_error().is_none());
}

/// The residual adds of the o/down projections (in the GEMV epilogue up to 8 rows, cuBLASLt with
/// beta = 1 beyond), both norm kernels, and GEMVs over rows long enough for the preloaded
/// weight head, GPU (f32) vs CPU. Tolerance: 1e-5 of the largest reference value (these sums
/// reach ~40, where f32 summation order alone moves the last digits).
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn residual_adds_norms_and_long_rows_match_cpu() {
    require_gpu();
    let (w, gpu_model) = tiny_f32_model();
    let g = gpu_model.backend();
    let c = CpuBackend;
    let up = |rows, cols, seed| random_pair(g, rows, cols, seed);
    let check = |name: &str, gt: &CudaTensor, ct: &kr_cpu::Mat| {
        let e = max_diff(&g.to_host(gt), &ct.data);
        let scale = ct.data.iter().fold(1f32, |m, v| m.max(v.abs()));
        println!("{name}: max error {e:.2e} (largest value {scale:.1})");
        assert!(e <= 1e-5 * scale, "{name}: {e}");
    };
    let wts = |t: &kr_model::RawTensor| (g.load_weight(t), c.load_weight(t));
    let o = wts(&w.layers[0].wo);
    // 2048 columns: rows long enough for the GEMV's preloaded head and its main loop.
    let wide = wts(&kr_model::RawTensor::from_f32(
        "wide",
        48,
        2048,
        &random(48 * 2048, 8),
    ));
    for rows in [1, 5, 8, 37] {
        // 256 columns take the 16-byte-vector norm kernel; 250 (not a multiple of 4 floats)
        // and 5000 (more than 4 vectors per thread) the scalar one.
        for cols in [256, 250, 5000] {
            let v: Vec<f32> = random(cols, 4).iter().map(|v| 1.0 + v).collect();
            let (gw, cw) = (g.load_vector(&v), c.load_vector(&v));
            let (gx, cx) = up(rows, cols, 2);
            let name = format!("rms_norm {rows}x{cols}");
            check(
                &name,
                &g.rms_norm(&gx, &gw, 1e-5),
                &c.rms_norm(&cx, &cw, 1e-5),
            );
        }
        for (name, (gw, cw)) in [("o", &o), ("wide", &wide)] {
            let (ga, ca) = up(rows, cw.raw.cols, 6);
            let (mut gr, mut cr) = up(rows, cw.raw.rows, 7);
            g.linear_add(&mut gr, &ga, gw);
            c.linear_add(&mut cr, &ca, cw);
            check(&format!("linear_add {name} {rows}"), &gr, &cr);
            let (gy, cy) = (g.linear(&ga, gw, None), c.linear(&ca, cw, None));
            check(&format!("linear {name} {rows}"), &gy, &cy);
        }
    }
    assert!(g.take_error().is_none());
}

/// Projections of 1..=9 tokens in bf16 (2..=8 take the tensor-core GEMV, 1 the CUDA-core one,
/// 9 cuBLASLt) vs the CPU in f32 on the same bf16 weights and bf16-rounded inputs, including
/// the residual add of `linear_add`. Tolerance: 1e-2 of the largest output (the GPU rounds
/// its output to bf16, 4e-3 relative).
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn bf16_projections_match_cpu_for_every_token_count() {
    require_gpu();
    let w = tiny_weights("qwen2", RopeStyle::HalfSplit, GgmlType::BF16);
    let model = CudaModel::load(&w, options(DType::Bf16, 8, false)).expect("load");
    let (g, c) = (model.backend(), CpuBackend);
    let l = &w.layers[0];
    let [q, k, v, gate, up, o] = [&l.wq, &l.wk, &l.wv, &l.w_gate, &l.w_up, &l.wo]
        .map(|t| (g.load_weight(t), c.load_weight(t)));
    let [bq, bk, bv] = [&l.q_bias, &l.k_bias, &l.v_bias]
        .map(|b| b.as_ref().expect("qwen2 has q/k/v biases"))
        .map(|b| (g.load_vector(b), c.load_vector(b)));
    let cols = l.wq.cols;
    let check = |name: &str, t: usize, got: &CudaTensor, want: &kr_cpu::Mat| {
        let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e = max_diff(&g.to_host(got), &want.data) / scale;
        println!("{name} with {t} tokens: max error {e:.2e} of the largest output");
        assert!(e <= 1e-2, "{name}, {t} tokens: {e}");
    };
    for t in 1..=9 {
        let data = bf16_values(t * cols, 40 + t as u64);
        let (gx, cx) = (
            g.upload_tensor(t, cols, &data),
            kr_cpu::Mat::new(t, cols, data),
        );
        let (gl, cl) = (
            g.linear(&gx, &q.0, Some(&bq.0)),
            c.linear(&cx, &q.1, Some(&bq.1)),
        );
        check("linear+bias", t, &gl, &cl);
        let gb = [Some(&bq.0), Some(&bk.0), Some(&bv.0)];
        let cb = [Some(&bq.1), Some(&bk.1), Some(&bv.1)];
        let gqkv = g.linear_qkv(&gx, [&q.0, &k.0, &v.0], gb);
        let cqkv = c.linear_qkv(&cx, [&q.1, &k.1, &v.1], cb);
        for (i, name) in ["q", "k", "v"].iter().enumerate() {
            check(&format!("linear_qkv ({name})"), t, &gqkv[i], &cqkv[i]);
        }
        let ggu = g.linear_gate_up(&gx, &gate.0, &up.0);
        check(
            "linear_gate_up",
            t,
            &ggu,
            &c.linear_gate_up(&cx, &gate.1, &up.1),
        );
        let residual = bf16_values(t * o.1.raw.rows, 60 + t as u64);
        let mut gr = g.upload_tensor(t, o.1.raw.rows, &residual);
        let mut cr = kr_cpu::Mat::new(t, o.1.raw.rows, residual);
        let a = bf16_values(t * o.1.raw.cols, 80 + t as u64);
        let (ga, ca) = (
            g.upload_tensor(t, o.1.raw.cols, &a),
            kr_cpu::Mat::new(t, o.1.raw.cols, a),
        );
        g.linear_add(&mut gr, &ga, &o.0);
        c.linear_add(&mut cr, &ca, &o.1);
        check("linear_add", t, &gr, &cr);
    }
    assert!(g.take_error().is_none());
}

/// Greedy choice on the GPU (the argmax kernel and the sampler's greedy rows) against the
/// CPU: the lowest index among the largest values, on a Llama-3-sized vocabulary (vector
/// path), on a width that leaves rows unaligned (scalar path), with ties and maxima at
/// either end.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn greedy_picks_the_lowest_index_of_the_largest_logit() {
    require_gpu();
    for dtype in [DType::F32, DType::Bf16] {
        let w = tiny_weights("llama", RopeStyle::HalfSplit, GgmlType::F32);
        let model = CudaModel::load(&w, options(dtype, 8, false)).expect("load");
        let g = model.backend();
        for cols in [128_256, 1_001, 8] {
            let mut data = bf16_values(4 * cols, cols as u64);
            let peaks: [&[usize]; 4] = [&[cols - 1], &[cols / 3, cols / 2], &[0], &[cols / 2, 1]];
            for (r, at) in peaks.iter().enumerate() {
                for &c in *at {
                    data[r * cols + c] = 4.0; // above every bf16_values entry, exact in bf16
                }
            }
            let want: Vec<u32> = peaks
                .iter()
                .map(|at| *at.iter().min().expect("a peak") as u32)
                .collect();
            let logits = g.upload_tensor(4, cols, &data);
            assert_eq!(g.argmax(&logits), want, "{dtype:?} argmax, {cols} columns");
            let greedy = g.sample(&logits, &vec![RowSampling::greedy(); 4]);
            assert_eq!(greedy, want, "{dtype:?} greedy sampling, {cols} columns");
            assert!(g.take_error().is_none());
        }
    }
    println!(
        "greedy: lowest index of the largest logit on 128256 / 1001 / 8 columns, f32 and bf16"
    );
}
