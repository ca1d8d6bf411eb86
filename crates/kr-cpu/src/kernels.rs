//! Inner loops of the CPU backend, written so LLVM vectorises them (x86-64-v3: AVX2 + FMA).
//!
//! Invariant: `dot` and each lane of `dot4` perform the same operations in the same order,
//! so a value does not depend on which of the two computed it (batch invariance).

const LANES: usize = 16;

#[allow(dead_code)]
#[inline(always)]
fn reduce(acc: [f32; LANES]) -> f32 {
    let mut v = acc;
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            v[i] += v[i + w];
        }
        w /= 2;
    }
    v[0]
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
pub(crate) use avx2::hsum;
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
pub use avx2::{dot, dot4};
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
pub use portable::{dot, dot4};

/// Explicit AVX2 + FMA versions (LLVM does not vectorise the portable `dot4`'s 2-D
/// accumulators). Two 8-lane accumulators per row, reduced the same way in both functions.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline(always)]
    pub(crate) unsafe fn hsum(a: __m256, b: __m256) -> f32 {
        let v = _mm256_add_ps(a, b);
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    #[inline(always)]
    fn tail(a: &[f32], b: &[f32], mut s: f32) -> f32 {
        for (x, y) in a.iter().zip(b) {
            s = x.mul_add(*y, s);
        }
        s
    }

    /// Dot product of two equal-length slices.
    #[inline]
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len()) / 16 * 16;
        // SAFETY: AVX2 and FMA are enabled at compile time (cfg above); every load reads
        // 8 floats at `c` or `c + 8` with `c + 16 <= n <= len`.
        unsafe {
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let (pa, pb) = (a.as_ptr(), b.as_ptr());
            let mut c = 0;
            while c < n {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(c)), _mm256_loadu_ps(pb.add(c)), a0);
                a1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(c + 8)),
                    _mm256_loadu_ps(pb.add(c + 8)),
                    a1,
                );
                c += 16;
            }
            tail(&a[n..], &b[n..], hsum(a0, a1))
        }
    }

    /// Four dot products of `a` with four rows, sharing the loads of `a`.
    #[inline]
    pub fn dot4(a: &[f32], w: [&[f32]; 4]) -> [f32; 4] {
        let len = w.iter().map(|r| r.len()).fold(a.len(), usize::min);
        let n = len / 16 * 16;
        // SAFETY: as in `dot`, with every row at least `len` long.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 8];
            let pa = a.as_ptr();
            let pw = [w[0].as_ptr(), w[1].as_ptr(), w[2].as_ptr(), w[3].as_ptr()];
            let mut c = 0;
            while c < n {
                let x0 = _mm256_loadu_ps(pa.add(c));
                let x1 = _mm256_loadu_ps(pa.add(c + 8));
                for r in 0..4 {
                    acc[2 * r] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(pw[r].add(c)), acc[2 * r]);
                    acc[2 * r + 1] =
                        _mm256_fmadd_ps(x1, _mm256_loadu_ps(pw[r].add(c + 8)), acc[2 * r + 1]);
                }
                c += 16;
            }
            let mut out = [0f32; 4];
            for r in 0..4 {
                out[r] = tail(&a[n..len], &w[r][n..len], hsum(acc[2 * r], acc[2 * r + 1]));
            }
            out
        }
    }
}

/// Portable fallbacks with the same reduction order in `dot` and `dot4`.
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
mod portable {
    use super::{reduce, LANES};

    /// Dot product of two equal-length slices.
    #[inline]
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (ta, tb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for i in 0..LANES {
                acc[i] = x[i].mul_add(y[i], acc[i]);
            }
        }
        let mut s = reduce(acc);
        for (x, y) in ta.iter().zip(tb) {
            s = x.mul_add(*y, s);
        }
        s
    }

    /// Four dot products of `a` with four rows, sharing the loads of `a`.
    #[inline]
    pub fn dot4(a: &[f32], w: [&[f32]; 4]) -> [f32; 4] {
        let n = a.len() / LANES * LANES;
        let mut acc = [[0f32; LANES]; 4];
        let mut c = 0;
        while c < n {
            let x = &a[c..c + LANES];
            for r in 0..4 {
                let y = &w[r][c..c + LANES];
                for i in 0..LANES {
                    acc[r][i] = x[i].mul_add(y[i], acc[r][i]);
                }
            }
            c += LANES;
        }
        let mut out = [0f32; 4];
        for r in 0..4 {
            let mut s = reduce(acc[r]);
            for (x, y) in a[n..].iter().zip(&w[r][n..]) {
                s = x.mul_add(*y, s);
            }
            out[r] = s;
        }
        out
    }
}
