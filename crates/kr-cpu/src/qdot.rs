//! Linear layers over GGUF 32-element block types (Q4_0, Q4_1, Q8_0) straight from the
//! encoded bytes, the hot path of CPU decoding.
//!
//! A weight `w = q·d + m` (per block: integer `q`, scale `d`, offset `m`; `m = -8d` for
//! Q4_0 and 0 for Q8_0), so `x·w = Σ_b d_b (x_b·q_b) + Σ_b m_b Σx_b`. The canonical
//! computation of one output, shared by every batch size (batch invariance):
//! - per block `b`: `t = x[0..8]·q[0..8]`, then three fused multiply-adds for the next
//!   8-lane groups, in order; `acc[b % 2] = fma(t, d_b, acc[b % 2])`;
//! - `bias[b % 2] = fma(m_b, Σx_b, bias[b % 2])` in block order, `Σx_b` summed left to right;
//! - result `= hsum(acc[0] + acc[1]) + (bias[0] + bias[1])`.
//!
//! Up to four input rows share one decode of each weight block; each row's arithmetic is
//! the same whether it is processed alone or in a group.

use crate::Mat;
use kr_model::quant::GgmlType;

/// Whether `ty` has a kernel here on this build.
pub fn supports(ty: GgmlType) -> bool {
    cfg!(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )) && matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
}

/// Sums of each 32-element block of each row of `x` (row-major, `k / 32` per row).
pub fn block_sums(x: &Mat) -> Vec<f32> {
    x.data
        .chunks_exact(32)
        .map(|b| b.iter().fold(0.0, |s, v| s + v))
        .collect()
}

/// `out[r * m + i] = x_i · w_r` for the `out.len() / m` encoded rows in `rows`.
pub fn matmul_rows(ty: GgmlType, rows: &[u8], x: &Mat, sums: &[f32], out: &mut [f32]) {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    avx2::matmul_rows(ty, rows, x, sums, out);
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    unreachable!(
        "qdot::supports is false without AVX2: {ty:?} {} {} {} {}",
        rows.len(),
        x.rows,
        sums.len(),
        out.len()
    );
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2 {
    use super::{GgmlType, Mat};
    use crate::kernels::hsum;
    use kr_model::quant::f16_at;
    use std::arch::x86_64::*;

    /// The block's integers as four 8-lane float vectors, its scale and its offset.
    #[inline(always)]
    unsafe fn decode(ty: GgmlType, b: &[u8]) -> ([__m256; 4], f32, f32) {
        let d = f16_at(b, 0);
        if ty == GgmlType::Q8_0 {
            let q = |k: usize| {
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                    b.as_ptr().add(2 + 8 * k) as *const __m128i,
                )))
            };
            return ([q(0), q(1), q(2), q(3)], d, 0.0);
        }
        let (m, qs) = if ty == GgmlType::Q4_1 {
            (f16_at(b, 2), 4)
        } else {
            (-8.0 * d, 2)
        };
        let bytes = _mm_loadu_si128(b.as_ptr().add(qs) as *const __m128i);
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(bytes, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
        let f = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
        (
            [
                f(lo),
                f(_mm_srli_si128(lo, 8)),
                f(hi),
                f(_mm_srli_si128(hi, 8)),
            ],
            d,
            m,
        )
    }

    /// One block against `R` rows: `acc = fma(x·q, d, acc)`, `bias = fma(m, Σx, bias)`.
    #[inline(always)]
    unsafe fn block_step<const R: usize>(
        ty: GgmlType,
        blk: &[u8],
        b: usize,
        xs: &[&[f32]; R],
        sums: &[&[f32]; R],
        acc: &mut [__m256; R],
        bias: &mut [f32; R],
    ) {
        let (q, d, m) = decode(ty, blk);
        let dv = _mm256_set1_ps(d);
        for r in 0..R {
            let xb = xs[r].as_ptr().add(32 * b);
            let mut t = _mm256_mul_ps(_mm256_loadu_ps(xb), q[0]);
            t = _mm256_fmadd_ps(_mm256_loadu_ps(xb.add(8)), q[1], t);
            t = _mm256_fmadd_ps(_mm256_loadu_ps(xb.add(16)), q[2], t);
            t = _mm256_fmadd_ps(_mm256_loadu_ps(xb.add(24)), q[3], t);
            acc[r] = _mm256_fmadd_ps(t, dv, acc[r]);
            bias[r] = m.mul_add(*sums[r].get_unchecked(b), bias[r]);
        }
    }

    /// `R` input rows against one encoded weight row (the canonical computation). Even
    /// and odd blocks use separate accumulators so the two dependency chains overlap.
    #[inline(always)]
    unsafe fn rows_dot<const R: usize>(
        ty: GgmlType,
        w: &[u8],
        xs: [&[f32]; R],
        sums: [&[f32]; R],
    ) -> [f32; R] {
        let bb = ty.block_bytes();
        let nb = w.len() / bb;
        let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
        let (mut bias0, mut bias1) = ([0f32; R], [0f32; R]);
        let mut b = 0;
        while b + 1 < nb {
            block_step(
                ty,
                &w[b * bb..(b + 1) * bb],
                b,
                &xs,
                &sums,
                &mut acc0,
                &mut bias0,
            );
            block_step(
                ty,
                &w[(b + 1) * bb..(b + 2) * bb],
                b + 1,
                &xs,
                &sums,
                &mut acc1,
                &mut bias1,
            );
            b += 2;
        }
        if b < nb {
            block_step(
                ty,
                &w[b * bb..(b + 1) * bb],
                b,
                &xs,
                &sums,
                &mut acc0,
                &mut bias0,
            );
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum(acc0[r], acc1[r]) + (bias0[r] + bias1[r]);
        }
        out
    }

    pub fn matmul_rows(ty: GgmlType, rows: &[u8], x: &Mat, sums: &[f32], out: &mut [f32]) {
        let (m, k) = (x.rows, x.cols);
        let (nb, rb) = (k / 32, ty.bytes_for(k));
        assert!(
            k % 32 == 0 && rows.len() == out.len() / m * rb && sums.len() == m * nb,
            "qdot: shapes disagree"
        );
        let xr = |i: usize| &x.data[i * k..(i + 1) * k];
        let sr = |i: usize| &sums[i * nb..(i + 1) * nb];
        let mut i = 0;
        // SAFETY: AVX2/FMA are enabled at compile time; every x row holds `32 * nb` floats
        // and every weight row `nb` whole blocks (asserted above).
        while i < m {
            let group = (m - i).min(4);
            for (r, w) in rows.chunks_exact(rb).enumerate() {
                if group == 4 {
                    let v = unsafe {
                        rows_dot::<4>(
                            ty,
                            w,
                            [xr(i), xr(i + 1), xr(i + 2), xr(i + 3)],
                            [sr(i), sr(i + 1), sr(i + 2), sr(i + 3)],
                        )
                    };
                    out[r * m + i..r * m + i + 4].copy_from_slice(&v);
                } else {
                    for g in i..i + group {
                        out[r * m + g] = unsafe { rows_dot::<1>(ty, w, [xr(g)], [sr(g)]) }[0];
                    }
                }
            }
            i += group;
        }
    }
}
