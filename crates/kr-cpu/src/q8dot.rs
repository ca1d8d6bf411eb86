//! Linear layers over quantised weights with 8-bit activations and integer dot products, the
//! CPU's default for every GGUF block type (MLX groups take the exact path).
//!
//! Each row of the input is quantised per 32 values: `x ≈ dx · qx` with `dx = max|x| / 127` and
//! `qx` in -127..=127 (round to nearest). Every weight type is read in units of 32 values of the
//! form `d · q + m` with integer `q` (Q4_K: `d` = super-scale × 6-bit scale, `m` = −dmin × min;
//! IQ4: `q` looked up in the int8 code book with a byte shuffle;
//! Q2_K, Q3_K, Q6_K: two 16-value halves with their own integer scales, applied in the integer
//! domain, and offsets or mins per half), so one
//! unit against one input block is `d·dx·Σ q·qx + m·dx·Σ qx`, with `Σ q·qx` from
//! `vpmaddubsw` / `vpmaddwd` (AVX2) in i32, exactly.
//!
//! Canonical computation of one output (batch invariance): per unit `b` in order,
//! `acc[b % 2] = fma(f32(Σ q·qx as i32x8), d·dx, acc[b % 2])` and
//! `bias[b % 2] += m·dx·Σqx`; result `hsum(acc[0] + acc[1]) + (bias[0] + bias[1])`. Up to four
//! input rows share one decode of each weight unit; a row's arithmetic is the same alone or
//! grouped.
//!
//! Error: the activation rounding is at most `dx / 2` per value (0.4% of the block's largest
//! value), as in llama.cpp's CPU kernels; `KR_CPU_EXACT_MATMUL=1` (or [`set_exact`]) selects
//! the f32 path of [`crate::qdot`] and the dequantising path instead.

use crate::Mat;
use kr_model::quant::GgmlType;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

/// The input rows quantised per 32 values.
pub struct Q8Acts {
    /// Values per row.
    pub k: usize,
    /// `qx`, row-major (`rows × k`).
    pub q: Vec<i8>,
    /// `dx` per block of 32.
    pub d: Vec<f32>,
    /// `dx · Σ qx` per block of 32.
    pub sum: Vec<f32>,
    /// `Σ qx` per half-block of 16 (Q6_K's sub-blocks).
    pub half: Vec<i32>,
}

/// Quantises every row of `x` (`x.cols` a multiple of 32), rows in parallel.
pub fn quantize(x: &Mat) -> Q8Acts {
    let (k, blocks) = (x.cols, x.data.len() / 32);
    let nb = k / 32;
    let mut a = Q8Acts {
        k,
        q: vec![0; x.data.len()],
        d: vec![0.0; blocks],
        sum: vec![0.0; blocks],
        half: vec![0; 2 * blocks],
    };
    let rows =
        a.q.par_chunks_mut(k.max(1))
            .zip(a.d.par_chunks_mut(nb.max(1)));
    let sums = a
        .sum
        .par_chunks_mut(nb.max(1))
        .zip(a.half.par_chunks_mut(2 * nb.max(1)));
    rows.zip(sums)
        .zip(x.data.par_chunks(k.max(1)))
        .for_each(|(((q, d), (sum, half)), xr)| {
            for (b, (xb, qb)) in xr.chunks_exact(32).zip(q.chunks_exact_mut(32)).enumerate() {
                let (db, h0, h1) = quantize_block(xb, qb);
                d[b] = db;
                sum[b] = db * (h0 + h1) as f32;
                half[2 * b..2 * b + 2].copy_from_slice(&[h0, h1]);
            }
        });
    a
}

/// One block of 32: `qx = round_ties_even(x / dx)` with `dx = max|x| / 127`; returns `dx` and
/// `Σqx` of each half.
fn quantize_block(xb: &[f32], qb: &mut [i8]) -> (f32, i32, i32) {
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    // SAFETY: AVX2 is enabled at compile time; both blocks hold 32 values.
    unsafe {
        round_block_avx2(xb, id, qb);
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    for (q, &v) in qb.iter_mut().zip(xb) {
        *q = (v * id).round_ties_even() as i8;
    }
    let h0: i32 = qb[..16].iter().map(|&q| q as i32).sum();
    let h1: i32 = qb[16..].iter().map(|&q| q as i32).sum();
    (d, h0, h1)
}

/// `qb[i] = round_ties_even(xb[i] · id)` for 32 values (the same products and rounding as the
/// scalar loop: `vroundps` to nearest even, then exact narrowing of values in -127..=127).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
unsafe fn round_block_avx2(xb: &[f32], id: f32, qb: &mut [i8]) {
    use std::arch::x86_64::*;
    let s = _mm256_set1_ps(id);
    let r = |i: usize| {
        let v = _mm256_mul_ps(_mm256_loadu_ps(xb.as_ptr().add(8 * i)), s);
        _mm256_cvtps_epi32(_mm256_round_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(v))
    };
    let ab = _mm256_packs_epi32(r(0), r(1));
    let cd = _mm256_packs_epi32(r(2), r(3));
    let bytes = _mm256_packs_epi16(ab, cd);
    let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(qb.as_mut_ptr() as *mut __m256i, ordered);
}

const UNSET: u8 = 0;
const INT8: u8 = 1;
const EXACT: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(UNSET);

/// Chooses the exact f32 path (`true`) or the 8-bit activation path (`false`) for every later
/// product in this process (tests compare both).
pub fn set_exact(exact: bool) {
    MODE.store(if exact { EXACT } else { INT8 }, Relaxed);
}

/// Whether products use the exact f32 path: [`set_exact`], else `KR_CPU_EXACT_MATMUL=1`.
pub fn exact() -> bool {
    match MODE.load(Relaxed) {
        UNSET => {
            let on = std::env::var("KR_CPU_EXACT_MATMUL").is_ok_and(|v| v.trim() == "1");
            MODE.store(if on { EXACT } else { INT8 }, Relaxed);
            on
        }
        m => m == EXACT,
    }
}

/// Whether products with weights of `ty` can take this path on this build.
pub fn applies(ty: GgmlType) -> bool {
    cfg!(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )) && ty.is_quantized()
        && !matches!(ty, GgmlType::Mlx(_))
}

/// `out[r * m + i] = x_i · w_r` for the `out.len() / m` encoded rows in `rows`.
pub fn matmul_rows(ty: GgmlType, rows: &[u8], x: &Q8Acts, out: &mut [f32]) {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    avx2::matmul_rows(ty, rows, x, out);
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    unreachable!(
        "q8dot::applies is false without AVX2: {ty:?} {} {} {}",
        rows.len(),
        x.k,
        out.len()
    );
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2 {
    use super::{GgmlType, Q8Acts};
    use crate::kernels::hsum;
    use kr_model::quant::scale_min_k4;
    use std::arch::x86_64::*;

    /// One unit of 32 weights: integers (unsigned, or signed for Q8_0 and IQ4), `d`, `m`, and for
    /// the 16-value sub-block types (Q2_K, Q3_K, Q6_K) each half's integer scale and the
    /// multiple of `dx · Σqx` of that half added to the result (their offsets and mins).
    struct Unit {
        w: __m256i,
        d: f32,
        m: f32,
        halves: Option<Halves>,
    }

    struct Halves {
        scale: (i16, i16),
        bias: (f32, f32),
    }

    /// Bytes where bit `i` of `bits` is set become 0x10, the others 0 (the fifth bit of the Q5
    /// types, lane `i` for element `i`).
    #[inline(always)]
    unsafe fn fifth_bits(bits: u32) -> __m256i {
        let v = _mm256_set1_epi32(bits as i32);
        let spread = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, spread), mask), mask);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }

    /// Bytes of `v` whose bit `bit` is set become `to`, the others 0.
    #[inline(always)]
    unsafe fn bit_to(v: __m256i, bit: usize, to: i8) -> __m256i {
        let m = _mm256_set1_epi8((1u8 << bit) as i8);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(v, m), m);
        _mm256_and_si256(set, _mm256_set1_epi8(to))
    }

    /// Two-bit fields `2 · shift ..` of 32 bytes at `p`.
    #[inline(always)]
    unsafe fn crumbs(p: *const u8, shift: usize) -> __m256i {
        let v = _mm256_loadu_si256(p as *const __m256i);
        let v = _mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * shift as i32));
        _mm256_and_si256(v, _mm256_set1_epi8(3))
    }

    /// The little-endian f16 at byte `off` of `p`, as f32 (F16C).
    #[inline(always)]
    unsafe fn half_at(p: *const u8, off: usize) -> f32 {
        let h = (p.add(off) as *const u16).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    }

    /// 16 bytes of nibbles at `p`: lanes 0..16 the low nibbles, 16..32 the high ones.
    #[inline(always)]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        let b = _mm_loadu_si128(p as *const __m128i);
        let m4 = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(b, m4);
        let hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
        _mm256_set_m128i(hi, lo)
    }

    const Q4_0: u32 = 2;
    const Q4_1: u32 = 3;
    const Q8_0: u32 = 8;
    const Q4_K: u32 = 12;
    const Q6_K: u32 = 14;
    const IQ4_NL: u32 = 20;
    const IQ4_XS: u32 = 23;
    const Q5_0: u32 = 6;
    const Q5_1: u32 = 7;
    const Q2_K: u32 = 10;
    const Q3_K: u32 = 11;
    const Q5_K: u32 = 13;

    /// Whether type `T`'s integers are signed (multiplied with the sign trick).
    const fn signed(t: u32) -> bool {
        matches!(t, Q8_0 | IQ4_NL | IQ4_XS)
    }

    /// 16 nibbles at `p` as indices into the IQ4 code book, the values as signed bytes.
    #[inline(always)]
    unsafe fn iq4(p: *const u8) -> __m256i {
        let book = _mm_loadu_si128(kr_model::quant::IQ4_VALUES.as_ptr() as *const __m128i);
        _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(book), nibbles(p))
    }

    /// Bytes per block and 32-value units per block of type `T`, known at compile time.
    const fn layout(t: u32) -> (usize, usize) {
        match t {
            Q4_0 => (18, 1),
            Q4_1 => (20, 1),
            Q8_0 => (34, 1),
            Q4_K => (144, 8),
            IQ4_NL => (18, 1),
            IQ4_XS => (136, 8),
            Q5_0 => (22, 1),
            Q5_1 => (24, 1),
            Q2_K => (84, 8),
            Q3_K => (110, 8),
            Q5_K => (176, 8),
            _ => (210, 8),
        }
    }

    /// Unit `s` (32 values) of the block at `p` of type `T` (a GGML id).
    ///
    /// # Safety
    /// `p` must point at a whole block of type `T`.
    #[inline(always)]
    unsafe fn unit<const T: u32>(p: *const u8, s: usize) -> Unit {
        match T {
            Q4_K | Q5_K => unit_k4::<T>(p, s),
            Q2_K | Q3_K => unit_halves::<T>(p, s),
            Q6_K => unit_q6_k(p, s),
            IQ4_XS => unit_iq4_xs(p, s),
            _ => unit_32::<T>(p),
        }
    }

    /// The 32-value block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL.
    #[inline(always)]
    unsafe fn unit_32<const T: u32>(p: *const u8) -> Unit {
        match T {
            Q4_0 => {
                let d = half_at(p, 0);
                Unit {
                    w: nibbles(p.add(2)),
                    d,
                    m: -8.0 * d,
                    halves: None,
                }
            }
            Q4_1 => Unit {
                w: nibbles(p.add(4)),
                d: half_at(p, 0),
                m: half_at(p, 2),
                halves: None,
            },
            Q5_0 => {
                let d = half_at(p, 0);
                let qh = (p.add(2) as *const u32).read_unaligned();
                let w = _mm256_or_si256(nibbles(p.add(6)), fifth_bits(qh));
                Unit {
                    w,
                    d,
                    m: -16.0 * d,
                    halves: None,
                }
            }
            Q5_1 => {
                let qh = (p.add(4) as *const u32).read_unaligned();
                Unit {
                    w: _mm256_or_si256(nibbles(p.add(8)), fifth_bits(qh)),
                    d: half_at(p, 0),
                    m: half_at(p, 2),
                    halves: None,
                }
            }
            Q8_0 => Unit {
                w: _mm256_loadu_si256(p.add(2) as *const __m256i),
                d: half_at(p, 0),
                m: 0.0,
                halves: None,
            },
            _ => Unit {
                w: iq4(p.add(2)),
                d: half_at(p, 0),
                m: 0.0,
                halves: None,
            },
        }
    }

    /// Q4_K and Q5_K: sub-block `s` of 32 with a 6-bit scale and min.
    #[inline(always)]
    unsafe fn unit_k4<const T: u32>(p: *const u8, s: usize) -> Unit {
        let m4 = _mm256_set1_epi8(0x0f);
        match T {
            Q4_K => {
                let v = _mm256_loadu_si256(p.add(16 + 32 * (s / 2)) as *const __m256i);
                let w = if s % 2 == 0 {
                    v
                } else {
                    _mm256_srli_epi16(v, 4)
                };
                let (sc, mn) = scale_min_k4(s, std::slice::from_raw_parts(p.add(4), 12));
                Unit {
                    w: _mm256_and_si256(w, m4),
                    d: half_at(p, 0) * sc as f32,
                    m: -half_at(p, 2) * mn as f32,
                    halves: None,
                }
            }
            _ => {
                let v = _mm256_loadu_si256(p.add(48 + 32 * (s / 2)) as *const __m256i);
                let lo = if s % 2 == 0 {
                    v
                } else {
                    _mm256_srli_epi16(v, 4)
                };
                let qh = _mm256_loadu_si256(p.add(16) as *const __m256i);
                let (sc, mn) = scale_min_k4(s, std::slice::from_raw_parts(p.add(4), 12));
                Unit {
                    w: _mm256_or_si256(_mm256_and_si256(lo, m4), bit_to(qh, s, 0x10)),
                    d: half_at(p, 0) * sc as f32,
                    m: -half_at(p, 2) * mn as f32,
                    halves: None,
                }
            }
        }
    }

    /// IQ4_XS: sub-block `s` with its signed 6-bit scale.
    #[inline(always)]
    unsafe fn unit_iq4_xs(p: *const u8, s: usize) -> Unit {
        let lo = (*p.add(4 + s / 2) >> (4 * (s % 2))) & 0x0f;
        let hi = (((p.add(2) as *const u16).read_unaligned() >> (2 * s)) & 3) as u8;
        Unit {
            w: iq4(p.add(8 + 16 * s)),
            d: half_at(p, 0) * ((lo | (hi << 4)) as i32 - 32) as f32,
            m: 0.0,
            halves: None,
        }
    }

    /// Q6_K: ql nibbles and two qh bits, minus 32; two sub-blocks of 16 with int8 scales.
    #[inline(always)]
    unsafe fn unit_q6_k(p: *const u8, s: usize) -> Unit {
        let m4 = _mm256_set1_epi8(0x0f);
        let (h, t) = (s / 4, s % 4);
        let ql = _mm256_loadu_si256(p.add(64 * h + 32 * (t % 2)) as *const __m256i);
        let qh = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
        let lo = _mm256_and_si256(
            _mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (t / 2) as i32)),
            m4,
        );
        let hi = _mm256_and_si256(
            _mm256_sll_epi16(
                _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * t as i32)),
                _mm_cvtsi32_si128(4),
            ),
            _mm256_set1_epi8(0x30),
        );
        let sc = |i: usize| *p.add(192 + 2 * s + i) as i8 as i16;
        let d = half_at(p, 208);
        Unit {
            w: _mm256_or_si256(lo, hi),
            d,
            m: 0.0,
            // Stored plus 32: subtract 32 · d · scale per half.
            halves: Some(Halves {
                scale: (sc(0), sc(1)),
                bias: (-32.0 * d * sc(0) as f32, -32.0 * d * sc(1) as f32),
            }),
        }
    }

    /// Q2_K and Q3_K: two sub-blocks of 16 with their own integer scales.
    #[inline(always)]
    unsafe fn unit_halves<const T: u32>(p: *const u8, s: usize) -> Unit {
        match T {
            Q2_K => {
                // 16-value sub-blocks 2s, 2s + 1: scale in the low nibble, min in the high one.
                let (d, dmin) = (half_at(p, 80), half_at(p, 82));
                let (k0, k1) = (*p.add(2 * s), *p.add(2 * s + 1));
                Unit {
                    w: crumbs(p.add(16 + 32 * (s / 4)), s % 4),
                    d,
                    m: 0.0,
                    halves: Some(Halves {
                        scale: ((k0 & 15) as i16, (k1 & 15) as i16),
                        bias: (-dmin * (k0 >> 4) as f32, -dmin * (k1 >> 4) as f32),
                    }),
                }
            }
            Q3_K => {
                // Stored as low two bits + 4 · high bit, value minus 4; signed 6-bit scales.
                let d = half_at(p, 108);
                let hm = _mm256_loadu_si256(p as *const __m256i);
                let w = _mm256_or_si256(crumbs(p.add(32 + 32 * (s / 4)), s % 4), bit_to(hm, s, 4));
                let sc = |i: usize| {
                    let lo = (*p.add(96 + i % 8) >> (4 * (i / 8))) & 15;
                    let hi = (*p.add(104 + i % 4) >> (2 * (i / 4))) & 3;
                    (lo | (hi << 4)) as i16 - 32
                };
                let (s0, s1) = (sc(2 * s), sc(2 * s + 1));
                Unit {
                    w,
                    d,
                    m: 0.0,
                    halves: Some(Halves {
                        scale: (s0, s1),
                        bias: (-4.0 * d * s0 as f32, -4.0 * d * s1 as f32),
                    }),
                }
            }
            _ => unreachable!("unit_halves takes Q2_K and Q3_K"),
        }
    }

    /// `Σ w·qx` of one unit against one input block, as eight i32 partial sums (Q6_K: each
    /// half already times its scale).
    #[inline(always)]
    unsafe fn dot<const T: u32>(u: &Unit, x: __m256i) -> __m256i {
        let p16 = if const { signed(T) } {
            _mm256_maddubs_epi16(_mm256_sign_epi8(u.w, u.w), _mm256_sign_epi8(x, u.w))
        } else {
            _mm256_maddubs_epi16(u.w, x)
        };
        let scales = match &u.halves {
            Some(h) => _mm256_set_m128i(_mm_set1_epi16(h.scale.1), _mm_set1_epi16(h.scale.0)),
            None => _mm256_set1_epi16(1),
        };
        _mm256_madd_epi16(p16, scales)
    }

    /// Rows of one group: their quantised values, block scales and sums.
    struct Rows<'a, const R: usize> {
        q: [&'a [i8]; R],
        d: [&'a [f32]; R],
        sum: [&'a [f32]; R],
        half: [&'a [i32]; R],
    }

    /// Unit `b` (of the whole row) against `R` input rows.
    #[inline(always)]
    unsafe fn unit_step<const R: usize, const T: u32>(
        u: &Unit,
        b: usize,
        xs: &Rows<R>,
        acc: &mut [__m256; R],
        bias: &mut [f32; R],
    ) {
        for r in 0..R {
            let x = _mm256_loadu_si256(xs.q[r].as_ptr().add(32 * b) as *const __m256i);
            let p = _mm256_cvtepi32_ps(dot::<T>(u, x));
            let dx = *xs.d[r].get_unchecked(b);
            acc[r] = _mm256_fmadd_ps(p, _mm256_set1_ps(u.d * dx), acc[r]);
            bias[r] += match &u.halves {
                Some(hv) => {
                    let h = xs.half[r].get_unchecked(2 * b..2 * b + 2);
                    dx * (hv.bias.0 * h[0] as f32 + hv.bias.1 * h[1] as f32)
                }
                None => u.m * *xs.sum[r].get_unchecked(b),
            };
        }
    }

    /// `R` input rows against one encoded weight row (the canonical computation). Even and odd
    /// units use separate accumulators (two dependency chains), kept in registers.
    #[inline(always)]
    unsafe fn rows_dot<const R: usize, const T: u32>(w: &[u8], xs: &Rows<R>) -> [f32; R] {
        let (bb, per) = const { layout(T) };
        let units = w.len() / bb * per;
        let unit_at = |b: usize| unit::<T>(w.as_ptr().add(b / per * bb), b % per);
        let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
        let (mut bias0, mut bias1) = ([0f32; R], [0f32; R]);
        let mut b = 0;
        while b + 1 < units {
            unit_step::<R, T>(&unit_at(b), b, xs, &mut acc0, &mut bias0);
            unit_step::<R, T>(&unit_at(b + 1), b + 1, xs, &mut acc1, &mut bias1);
            b += 2;
        }
        if b < units {
            unit_step::<R, T>(&unit_at(b), b, xs, &mut acc0, &mut bias0);
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum(acc0[r], acc1[r]) + (bias0[r] + bias1[r]);
        }
        out
    }

    pub fn matmul_rows(ty: GgmlType, rows: &[u8], x: &Q8Acts, out: &mut [f32]) {
        match ty {
            GgmlType::Q4_0 => matmul_rows_of::<Q4_0>(rows, x, out),
            GgmlType::Q4_1 => matmul_rows_of::<Q4_1>(rows, x, out),
            GgmlType::Q8_0 => matmul_rows_of::<Q8_0>(rows, x, out),
            GgmlType::Q4K => matmul_rows_of::<Q4_K>(rows, x, out),
            GgmlType::Q6K => matmul_rows_of::<Q6_K>(rows, x, out),
            GgmlType::IQ4NL => matmul_rows_of::<IQ4_NL>(rows, x, out),
            GgmlType::Q5_0 => matmul_rows_of::<Q5_0>(rows, x, out),
            GgmlType::Q5_1 => matmul_rows_of::<Q5_1>(rows, x, out),
            GgmlType::Q2K => matmul_rows_of::<Q2_K>(rows, x, out),
            GgmlType::Q3K => matmul_rows_of::<Q3_K>(rows, x, out),
            GgmlType::Q5K => matmul_rows_of::<Q5_K>(rows, x, out),
            GgmlType::IQ4XS => matmul_rows_of::<IQ4_XS>(rows, x, out),
            _ => unreachable!("q8dot::applies is false for {}", ty.name()),
        }
    }

    fn matmul_rows_of<const T: u32>(rows: &[u8], x: &Q8Acts, out: &mut [f32]) {
        let ty = GgmlType::from_id(T).unwrap_or(GgmlType::Q8_0);
        let k = x.k;
        let m = x.q.len() / k;
        let (nb, rb) = (k / 32, ty.bytes_for(k));
        assert!(
            k % ty.block_elems() == 0 && rows.len() == out.len() / m * rb,
            "q8dot: shapes disagree"
        );
        let group = |i: usize, n: usize| -> Vec<usize> { (i..i + n).collect() };
        let mut i = 0;
        while i < m {
            let n = (m - i).min(4);
            let idx = group(i, n);
            // SAFETY: AVX2/FMA are enabled at compile time; every input row holds `k` values
            // and `nb` blocks of scales, every weight row `rb` bytes of whole blocks (asserted).
            if n == 4 {
                let xs = Rows::<4> {
                    q: [0, 1, 2, 3].map(|j| &x.q[idx[j] * k..(idx[j] + 1) * k]),
                    d: [0, 1, 2, 3].map(|j| &x.d[idx[j] * nb..(idx[j] + 1) * nb]),
                    sum: [0, 1, 2, 3].map(|j| &x.sum[idx[j] * nb..(idx[j] + 1) * nb]),
                    half: [0, 1, 2, 3].map(|j| &x.half[idx[j] * 2 * nb..(idx[j] + 1) * 2 * nb]),
                };
                for (r, w) in rows.chunks_exact(rb).enumerate() {
                    let v = unsafe { rows_dot::<4, T>(w, &xs) };
                    out[r * m + i..r * m + i + 4].copy_from_slice(&v);
                }
            } else {
                for &g in &idx {
                    let xs = Rows::<1> {
                        q: [&x.q[g * k..(g + 1) * k]],
                        d: [&x.d[g * nb..(g + 1) * nb]],
                        sum: [&x.sum[g * nb..(g + 1) * nb]],
                        half: [&x.half[g * 2 * nb..(g + 1) * 2 * nb]],
                    };
                    for (r, w) in rows.chunks_exact(rb).enumerate() {
                        out[r * m + g] = unsafe { rows_dot::<1, T>(w, &xs) }[0];
                    }
                }
            }
            i += n;
        }
    }
}
