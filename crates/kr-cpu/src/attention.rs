//! Causal attention of one query row over the paged f32 KV cache, the CPU's decode and prefill
//! attention.
//!
//! The query heads that share a KV head (grouped-query attention) are scored against each block
//! of keys while it is in L1. With AVX2 + FMA and a head size that is a multiple of 8, eight
//! keys are scored at once (eight accumulators reduced together) and the weighted value sum
//! keeps up to 64 output floats in registers; otherwise each key is scored with [`dot`].
//!
//! Invariant (batch invariance): a row's result depends only on its query, its context length
//! and the cache, never on which other rows are in the step.

use crate::kernels::dot;
use kr_model::KvLayout;

/// Where one query row reads the cache.
pub struct RowCtx<'a> {
    /// Cached tokens up to the row's own (its position + 1).
    pub ctx: usize,
    /// The first of them attended (past a sliding window, the ones before it are not).
    pub first: usize,
    pub table: &'a [u32],
    pub kc: &'a [f32],
    pub vc: &'a [f32],
    pub layout: &'a KvLayout,
    pub num_heads: usize,
}

/// Buffers reused from row to row by one worker.
#[derive(Default)]
pub struct Scratch {
    /// Scores of the heads of one KV group, `group × ctx`.
    scores: Vec<f32>,
    /// Offset of each position's K/V row (KV head 0).
    offsets: Vec<usize>,
}

/// Attention of the query row `q` (all heads) into `out`.
pub fn attend_row(q: &[f32], out: &mut [f32], s: &mut Scratch, c: &RowCtx) {
    let l = c.layout;
    let (hd, kvh) = (l.head_dim, l.num_kv_heads);
    let group = c.num_heads / kvh;
    let scale = l.attn_scale;
    let n = c.ctx - c.first;
    s.offsets.clear();
    s.offsets.extend((c.first..c.ctx).map(|p| {
        (c.table[p / l.block_size] as usize * l.block_size + p % l.block_size) * kvh * hd
    }));
    let width = kvh * hd;
    assert!(
        s.offsets
            .iter()
            .all(|&o| o + width <= c.kc.len() && o + width <= c.vc.len()),
        "attention: a block table entry points outside the KV cache"
    );
    s.scores.resize(group * n, 0.0);
    for kv in 0..kvh {
        let heads = kv * group..(kv + 1) * group;
        let qs = &q[heads.start * hd..heads.end * hd];
        score_group(qs, hd, &s.offsets, kv * hd, c.kc, &mut s.scores);
        for (g, h) in heads.enumerate() {
            let sc = &mut s.scores[g * n..(g + 1) * n];
            let mut max = f32::NEG_INFINITY;
            let cap = l.softcap;
            for v in sc.iter_mut() {
                *v *= scale;
                if cap > 0.0 {
                    *v = cap * (*v / cap).tanh();
                }
                max = max.max(*v);
            }
            let mut sum = 0.0;
            for v in sc.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            let oh = &mut out[h * hd..(h + 1) * hd];
            weighted_values(sc, &s.offsets, kv * hd, c.vc, oh);
            let inv = 1.0 / sum;
            oh.iter_mut().for_each(|o| *o *= inv);
        }
    }
}

/// `scores[g · ctx + p] = q_g · k_p` for the `qs.len() / hd` heads of one KV group.
fn score_group(qs: &[f32], hd: usize, offs: &[usize], kv_off: usize, kc: &[f32], out: &mut [f32]) {
    let ctx = offs.len();
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    if hd % 8 == 0 {
        let mut p = 0;
        while p < ctx {
            let n = (ctx - p).min(8);
            let rows: [&[f32]; 8] = std::array::from_fn(|i| {
                let o = offs[p + i.min(n - 1)] + kv_off;
                &kc[o..o + hd]
            });
            for (g, qh) in qs.chunks_exact(hd).enumerate() {
                // SAFETY: AVX2/FMA are enabled at compile time; every row and `qh` hold `hd`
                // floats, `hd` a multiple of 8.
                let s8 = unsafe { avx2::dot8(qh, &rows) };
                out[g * ctx + p..g * ctx + p + n].copy_from_slice(&s8[..n]);
            }
            p += n;
        }
        return;
    }
    for (p, &o) in offs.iter().enumerate() {
        let k = &kc[o + kv_off..o + kv_off + hd];
        for (g, qh) in qs.chunks_exact(hd).enumerate() {
            out[g * ctx + p] = dot(qh, k);
        }
    }
}

/// `out = Σ_p w[p] · v_p` (not normalised).
fn weighted_values(w: &[f32], offs: &[usize], kv_off: usize, vc: &[f32], out: &mut [f32]) {
    let hd = out.len();
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    if hd % 8 == 0 {
        let mut c = 0;
        while c < hd {
            let width = (hd - c).min(64);
            // SAFETY: AVX2/FMA at compile time; each V row holds `hd` floats from its offset.
            unsafe { avx2::axpy_chunk(w, offs, kv_off + c, vc, &mut out[c..c + width]) };
            c += width;
        }
        return;
    }
    out.fill(0.0);
    for (&wp, &o) in w.iter().zip(offs) {
        let v = &vc[o + kv_off..o + kv_off + hd];
        for (acc, &x) in out.iter_mut().zip(v) {
            *acc = wp.mul_add(x, *acc);
        }
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2 {
    use std::arch::x86_64::*;

    /// Dot products of `q` with eight rows, each `q.len()` (a multiple of 8) long.
    #[inline]
    pub unsafe fn dot8(q: &[f32], rows: &[&[f32]; 8]) -> [f32; 8] {
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut j = 0;
        while j < q.len() {
            let qv = _mm256_loadu_ps(q.as_ptr().add(j));
            for i in 0..8 {
                acc[i] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rows[i].as_ptr().add(j)), acc[i]);
            }
            j += 8;
        }
        let t0 = _mm256_hadd_ps(acc[0], acc[1]);
        let t1 = _mm256_hadd_ps(acc[2], acc[3]);
        let t2 = _mm256_hadd_ps(acc[4], acc[5]);
        let t3 = _mm256_hadd_ps(acc[6], acc[7]);
        let (u0, u1) = (_mm256_hadd_ps(t0, t1), _mm256_hadd_ps(t2, t3));
        let lo = _mm256_permute2f128_ps::<0x20>(u0, u1);
        let hi = _mm256_permute2f128_ps::<0x31>(u0, u1);
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(lo, hi));
        out
    }

    /// `out = Σ_p w[p] · v_p[off ..]` for `out.len()` (8..=64, a multiple of 8) floats, the
    /// sums kept in registers.
    #[inline]
    pub unsafe fn axpy_chunk(w: &[f32], offs: &[usize], off: usize, vc: &[f32], out: &mut [f32]) {
        match out.len() / 8 {
            8 => axpy::<8>(w, offs, off, vc, out),
            4 => axpy::<4>(w, offs, off, vc, out),
            n => {
                // 1..=7 vectors: as many 4/2/1-vector passes as make up `n`.
                let mut c = 0;
                for v in [4, 2, 1] {
                    if n - c / 8 >= v {
                        match v {
                            4 => axpy::<4>(w, offs, off + c, vc, &mut out[c..c + 32]),
                            2 => axpy::<2>(w, offs, off + c, vc, &mut out[c..c + 16]),
                            _ => axpy::<1>(w, offs, off + c, vc, &mut out[c..c + 8]),
                        }
                        c += 8 * v;
                    }
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn axpy<const V: usize>(
        w: &[f32],
        offs: &[usize],
        off: usize,
        vc: &[f32],
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); V];
        for (&wp, &o) in w.iter().zip(offs) {
            let (b, row) = (_mm256_set1_ps(wp), vc.as_ptr().add(o + off));
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(b, _mm256_loadu_ps(row.add(8 * i)), *a);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), *a);
        }
    }
}
