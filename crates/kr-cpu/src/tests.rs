//! CPU backend tests against naive reference loops.

use super::*;
use kr_model::SeqAttn;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

#[test]
fn linear_matches_naive_and_is_batch_invariant() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (m, k, n) = (7, 70, 37);
    let x = Mat::new(m, k, random(&mut rng, m * k));
    let wdata = random(&mut rng, n * k);
    let w = CpuBackend.load_weight(&RawTensor::from_f32("w", n, k, &wdata));
    let y = CpuBackend.linear(&x, &w, None);
    for i in 0..m {
        for j in 0..n {
            let naive: f32 = (0..k).map(|c| x.data[i * k + c] * wdata[j * k + c]).sum();
            assert!((y.data[i * n + j] - naive).abs() < 1e-4);
        }
        // The same row alone gives bit-identical results.
        let alone = CpuBackend.linear(&Mat::new(1, k, x.row(i).to_vec()), &w, None);
        assert_eq!(alone.data, y.row(i));
    }
}

/// Dense causal attention over explicit K/V rows, the reference for paged attention.
fn naive_attention(
    q: &[f32],
    ks: &[Vec<f32>],
    vs: &[Vec<f32>],
    heads: usize,
    kvh: usize,
    hd: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; heads * hd];
    for h in 0..heads {
        let g = h / (heads / kvh);
        let s: Vec<f32> = ks
            .iter()
            .map(|k| {
                (0..hd).map(|d| q[h * hd + d] * k[g * hd + d]).sum::<f32>() / (hd as f32).sqrt()
            })
            .collect();
        let max = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = s.iter().map(|v| (v - max).exp()).collect();
        let z: f32 = e.iter().sum();
        for (p, v) in vs.iter().enumerate() {
            for d in 0..hd {
                out[h * hd + d] += e[p] / z * v[g * hd + d];
            }
        }
    }
    out
}

/// Head sizes for the vector path (8, 64 + 8, 2 × 64 + 8: whole and partial register chunks)
/// and the per-key fallback (12); 9 and 20 keys (whole and partial blocks of 8).
#[test]
fn paged_attention_matches_dense_with_ragged_batch_and_scattered_blocks() {
    for (hd, cached) in [(8, 6), (8, 17), (12, 17), (72, 17), (136, 6)] {
        check_paged_attention(hd, cached);
    }
}

fn check_paged_attention(hd: usize, cached_a: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (heads, kvh, bs) = (4, 2, 4);
    let layout = KvLayout::plain(1, 16, bs, kvh, hd);
    let mut cache = CpuBackend.new_kv_cache(layout);
    // Sequence A: `cached_a` cached + 3 new tokens in blocks [9, 2, 14, 7, 11]; sequence B: 1 decode token
    // at position 4 in blocks [5, 0] (block ids with holes and out of order).
    let seqs = [
        (vec![9u32, 2, 14, 7, 11], cached_a, 3usize),
        (vec![5, 0], 4, 1),
    ];
    let width = kvh * hd;
    let mut all_k: Vec<Vec<Vec<f32>>> = Vec::new();
    let mut all_v: Vec<Vec<Vec<f32>>> = Vec::new();
    let mut meta = AttnMeta::default();
    let mut q_rows = Vec::new();
    for (table, cached, new) in &seqs {
        let (mut ks, mut vs) = (Vec::new(), Vec::new());
        for p in 0..cached + new {
            let (k, v) = (random(&mut rng, width), random(&mut rng, width));
            let slot = (table[p / bs] as usize * bs + p % bs) * width;
            if p < *cached {
                cache.k[0][slot..slot + width].copy_from_slice(&k);
                cache.v[0][slot..slot + width].copy_from_slice(&v);
            }
            ks.push(k);
            vs.push(v);
        }
        meta.seqs.push(SeqAttn {
            q_start: q_rows.len(),
            q_len: *new,
            ctx_len: cached + new,
            block_table: table.clone(),
        });
        for p in *cached..cached + new {
            meta.positions.push(p as u32);
            meta.slot_mapping
                .push(table[p / bs] * bs as u32 + (p % bs) as u32);
            q_rows.push(p);
        }
        all_k.push(ks);
        all_v.push(vs);
    }
    let t = q_rows.len();
    let mut q = Mat::new(t, heads * hd, random(&mut rng, t * heads * hd));
    let mut kmat = Mat::zeros(t, width);
    let mut vmat = Mat::zeros(t, width);
    let mut row = 0;
    for (s, (_, cached, new)) in seqs.iter().enumerate() {
        for p in *cached..cached + new {
            kmat.data[row * width..(row + 1) * width].copy_from_slice(&all_k[s][p]);
            vmat.data[row * width..(row + 1) * width].copy_from_slice(&all_v[s][p]);
            row += 1;
        }
    }
    // Identity rotation so the dense reference needs no RoPE.
    let rope = Rope {
        inv_freq: vec![0.0; hd / 2],
        style: RopeStyle::HalfSplit,
        scale: 1.0,
    };
    CpuBackend.rope_and_write_kv(&mut q, &mut kmat, &vmat, &rope, &meta, 0, &mut cache);
    let out = CpuBackend.paged_attention(&q, &meta, 0, &cache, heads);
    let mut row = 0;
    for (s, (_, cached, new)) in seqs.iter().enumerate() {
        for p in *cached..cached + new {
            let want =
                naive_attention(q.row(row), &all_k[s][..=p], &all_v[s][..=p], heads, kvh, hd);
            for (a, b) in out.row(row).iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "hd {hd} seq {s} pos {p}: {a} vs {b}");
            }
            row += 1;
        }
    }
}

#[test]
fn rope_styles_rotate_the_right_pairs() {
    let rope_i = Rope {
        inv_freq: vec![1.0, 0.0],
        style: RopeStyle::Interleaved,
        scale: 1.0,
    };
    let rope_h = Rope {
        inv_freq: vec![1.0, 0.0],
        style: RopeStyle::HalfSplit,
        scale: 1.0,
    };
    let pos = 1; // position 1 with frequency 1 rotates by 1 radian
    let mut a = vec![1.0, 0.0, 5.0, 6.0];
    rope_row(&mut a, 4, pos, &rope_i);
    assert!((a[0] - 1f32.cos()).abs() < 1e-6 && (a[1] - 1f32.sin()).abs() < 1e-6);
    assert_eq!(&a[2..], &[5.0, 6.0]);
    let mut b = vec![1.0, 5.0, 0.0, 6.0];
    rope_row(&mut b, 4, pos, &rope_h);
    assert!((b[0] - 1f32.cos()).abs() < 1e-6 && (b[2] - 1f32.sin()).abs() < 1e-6);
    assert_eq!((b[1], b[3]), (5.0, 6.0));
}

/// Random blocks of a 32-element type: f16 scale (and offset), then packed integers.
fn random_blocks(
    rng: &mut ChaCha8Rng,
    ty: kr_model::quant::GgmlType,
    rows: usize,
    cols: usize,
) -> RawTensor {
    use kr_model::quant::GgmlType;
    use kr_model::weights::TensorBytes;
    let mut bytes = Vec::new();
    for _ in 0..rows * cols / 32 {
        bytes.extend(half::f16::from_f32(rng.random_range(0.001..0.05)).to_le_bytes());
        if ty == GgmlType::Q4_1 {
            bytes.extend(half::f16::from_f32(rng.random_range(-0.2..0.2)).to_le_bytes());
        }
        let payload = if ty == GgmlType::Q8_0 { 32 } else { 16 };
        bytes.extend((0..payload).map(|_| rng.random::<u8>()));
    }
    RawTensor {
        name: "q".into(),
        ty,
        rows,
        cols,
        bytes: TensorBytes::Owned(std::sync::Arc::new(bytes)),
    }
}

#[test]
fn quantised_linear_matches_decoded_weights_and_is_batch_invariant() {
    use kr_model::quant::GgmlType;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (m, k, n) = (7, 96, 21);
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
        let w = random_blocks(&mut rng, ty, n, k);
        let wf = w.to_f32();
        let x = Mat::new(m, k, random(&mut rng, m * k));
        let y = CpuBackend::linear_path(&x, &w, None, true);
        for i in 0..m {
            for j in 0..n {
                let naive: f32 = (0..k).map(|c| x.data[i * k + c] * wf[j * k + c]).sum();
                assert!(
                    (y.data[i * n + j] - naive).abs() < 1e-4 * (1.0 + naive.abs()),
                    "{ty:?} ({i},{j}): {} vs {naive}",
                    y.data[i * n + j]
                );
            }
            let alone = CpuBackend::linear_path(&Mat::new(1, k, x.row(i).to_vec()), &w, None, true);
            assert_eq!(alone.data, y.row(i), "{ty:?} row {i} alone vs batched");
        }
    }
}

/// The 8-bit activation path against the exact one on every type it takes. Its only error is
/// rounding each input to `dx · qx` (at most `dx / 2`, `dx` = its block's max / 127), so
/// `|y8 - y| <= Σ_j |w_j| · dx_j / 2` (plus f32 rounding); checked output by output, with
/// batch invariance.
#[test]
fn int8_activation_path_is_within_the_rounding_bound_of_the_exact_path() {
    use kr_model::quant::GgmlType;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (m, k, n) = (6, 512, 19);
    for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
        assert!(q8dot::applies(ty), "{ty:?}");
        let w = kr_model::random::encoded_noise("w", ty, n, k, rng.random());
        let wf = w.to_f32();
        let x = Mat::new(m, k, random(&mut rng, m * k));
        let exact = CpuBackend::linear_path(&x, &w, None, true);
        let int8 = CpuBackend::linear_path(&x, &w, None, false);
        let mut worst = 0f32;
        for i in 0..m {
            let xr = x.row(i);
            let dx: Vec<f32> = xr
                .chunks_exact(32)
                .map(|b| b.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0)
                .collect();
            for j in 0..n {
                let bound: f32 = (0..k).map(|c| wf[j * k + c].abs() * dx[c / 32] / 2.0).sum();
                let (a, b) = (int8.data[i * n + j], exact.data[i * n + j]);
                assert!(
                    (a - b).abs() <= bound + 1e-5 * (1.0 + b.abs()),
                    "{ty:?} ({i},{j}): int8 {a} exact {b} bound {bound}"
                );
                worst = worst.max((a - b).abs() / bound.max(1e-12));
            }
            let alone = CpuBackend::linear_path(&Mat::new(1, k, xr.to_vec()), &w, None, false);
            assert_eq!(alone.data, int8.row(i), "{ty:?} row {i} alone vs batched");
        }
        println!("{ty:?}: worst error {:.0}% of the bound", 100.0 * worst);
    }
}

/// The packed AVX-512 VNNI path ([`vnni`]) against the AVX2 8-bit path: both multiply the same
/// 8-bit activations by the same integers, so they differ only in f32 rounding order (per unit
/// one product `d · dx` and one fused add): within `1e-5 · Σ|w·x|`. Rows not a multiple of 16
/// (padding), four-token tiles and single tokens, batch invariance.
#[test]
fn packed_vnni_path_matches_the_avx2_int8_path() {
    use kr_model::quant::GgmlType;
    if !vnni::available() {
        eprintln!("SKIPPED packed_vnni_path_matches_the_avx2_int8_path: no AVX-512 VNNI here");
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (m, k, n) = (7, 512, 37);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ] {
        let w = kr_model::random::encoded_noise("w", ty, n, k, rng.random());
        let p = packed::pack(&w).expect("packs");
        let wf = w.to_f32();
        let x = Mat::new(m, k, random(&mut rng, m * k));
        let avx2 = CpuBackend::linear_path(&x, &w, None, false);
        let vn = CpuBackend::linear_packed(&x, &p, None);
        for i in 0..m {
            for j in 0..n {
                let mag: f32 = (0..k)
                    .map(|c| (wf[j * k + c] * x.data[i * k + c]).abs())
                    .sum();
                let (a, b) = (vn.data[i * n + j], avx2.data[i * n + j]);
                assert!(
                    (a - b).abs() <= 1e-5 * mag,
                    "{ty:?} ({i},{j}): vnni {a} avx2 {b}"
                );
            }
            let alone = CpuBackend::linear_packed(&Mat::new(1, k, x.row(i).to_vec()), &p, None);
            assert_eq!(alone.data, vn.row(i), "{ty:?} row {i} alone vs batched");
        }
    }
}

/// Timing of one product on each path (not a check: `cargo test --release -p kr-cpu -- --ignored
/// --nocapture linear_speed`).
#[test]
#[ignore = "timing only"]
fn linear_speed() {
    use kr_model::quant::GgmlType;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (k, n) = (
        2048,
        std::env::var("KR_SPEED_ROWS").map_or(8192, |v| v.parse().unwrap_or(8192)),
    );
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K] {
        let w = kr_model::random::encoded_noise("w", ty, n, k, 1);
        for m in [1, 4, 64] {
            let x = Mat::new(m, k, random(&mut rng, m * k));
            let packed = packed::pack(&w).filter(|_| vnni::available());
            for path in ["exact", "avx2", "vnni"] {
                let run = || match path {
                    "vnni" => packed
                        .as_ref()
                        .map(|p| CpuBackend::linear_packed(&x, p, None)),
                    _ => Some(CpuBackend::linear_path(&x, &w, None, path == "exact")),
                };
                let t0 = std::time::Instant::now();
                let reps = 20;
                for _ in 0..reps {
                    std::hint::black_box(run());
                }
                let s = t0.elapsed().as_secs_f64() / reps as f64;
                let gbs = w.bytes.as_slice().len() as f64 / s / 1e9;
                println!(
                    "{ty:?} m={m} {path}: {:.2} ms, {gbs:.1} GB/s of weights",
                    s * 1e3
                );
            }
        }
    }
}

/// Activation quantisation: every value `round_ties_even(x / dx)` in place (the vector path
/// keeps element order), exact halves rounded to even, and the half-block sums.
#[test]
fn activation_quantisation_rounds_to_nearest_even_in_order() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut data = random(&mut rng, 3 * 64);
    // Block 0: max 127 so dx = 1 and these are exact ties.
    data[..6].copy_from_slice(&[127.0, 2.5, -3.5, 0.5, -0.5, 1.5]);
    let x = Mat::new(3, 64, data);
    let a = q8dot::quantize(&x);
    for (b, xb) in x.data.chunks_exact(32).enumerate() {
        let d = xb.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        let want: Vec<i8> = xb
            .iter()
            .map(|v| (v * (1.0 / d)).round_ties_even() as i8)
            .collect();
        assert_eq!(&a.q[32 * b..32 * b + 32], &want[..], "block {b}");
        assert_eq!(a.d[b], d);
        let h0: i32 = want[..16].iter().map(|&q| q as i32).sum();
        assert_eq!(a.half[2 * b], h0);
    }
    assert_eq!(&a.q[..6], &[127, 2, -4, 0, 0, 2]);
}
