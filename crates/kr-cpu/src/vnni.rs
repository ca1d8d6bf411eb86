//! Products of 8-bit activations ([`Q8Acts`]) with [`Packed`] weights on AVX-512 VNNI: 16 weight
//! rows per `vpdpbusd` (unsigned weight bytes times signed activation bytes, summed in i32),
//! up to four tokens per decoded weight unit, chosen at run time ([`available`]).
//!
//! Canonical computation of one output (batch invariance): per 32-value unit in order, the
//! integer sum of its first 16 products plus that of its last 16, offset in i32 as the type
//! defines (Q4_0: `− 8 Σqx`, Q8_0: `− 128 Σqx`), converted to f32 and added with one fused
//! multiply-add by `d · dx` (Q4_K: `d` = super-scale × sub-scale); Q4_1 adds its min times
//! `dx Σqx` with a second one, Q4_K subtracts `dmin · min · dx Σqx`; Q6_K adds each half
//! `(Σ − 32 Σqx)` times `d · scale · dx`. A token's
//! sequence is the same alone and in any tile, so outputs are bit-identical across batch sizes.
//! It differs from [`crate::q8dot`]'s AVX2 order only in rounding.

use crate::packed::{super_header_bytes, ty_header, unit_bytes, Packed, ROWS};
use crate::q8dot::Q8Acts;
use kr_model::quant::GgmlType;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Whether this CPU has AVX-512 F/BW and VNNI (checked once).
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Tokens multiplied per decoded weight unit.
const TILE: usize = 4;

/// Activation bytes kept in L2 while every weight group streams past them.
const TOKEN_BLOCK_BYTES: usize = 256 * 1024;

/// `y [m, n] = x [m, k] · wᵀ` for packed `w`; requires [`available`].
pub fn matmul(w: &Packed, x: &Q8Acts) -> Vec<f32> {
    assert!(available(), "vnni::matmul without AVX-512 VNNI");
    let (k, n) = (w.cols, w.rows);
    assert_eq!(x.k, k, "vnni: {} input features for {k}", x.k);
    let m = x.q.len() / k;
    if m == 1 {
        // One token: the group outputs are the row outputs, padded to whole groups.
        let mut y = vec![0f32; w.groups() * ROWS];
        y.par_chunks_mut(ROWS)
            .enumerate()
            .for_each(|(g, out)| group_tokens(w, g, x, 0, out));
        y.truncate(n);
        return y;
    }
    let block = (TOKEN_BLOCK_BYTES / k).max(TILE) / TILE * TILE;
    let mut y = vec![0f32; m * n];
    let mut gy = Vec::new();
    let mut t0 = 0;
    while t0 < m {
        let tb = block.min(m - t0);
        gy.resize(w.groups() * tb * ROWS, 0f32);
        gy.par_chunks_mut(tb * ROWS)
            .enumerate()
            .for_each(|(g, out)| group_tokens(w, g, x, t0, out));
        for (g, out) in gy.chunks_exact(tb * ROWS).enumerate() {
            let live = ROWS.min(n - g * ROWS);
            for (t, o) in out.chunks_exact(ROWS).enumerate() {
                let at = (t0 + t) * n + g * ROWS;
                y[at..at + live].copy_from_slice(&o[..live]);
            }
        }
        t0 += tb;
    }
    y
}

/// Group `g` against tokens `t0 ..` (`out.len() / 16` of them), four at a time.
fn group_tokens(w: &Packed, g: usize, x: &Q8Acts, t0: usize, out: &mut [f32]) {
    let grp = w.group(g);
    let mut tiles = out.chunks_exact_mut(TILE * ROWS);
    let mut t = t0;
    for tile in &mut tiles {
        let toks: [Tok; TILE] = std::array::from_fn(|i| Tok::of(x, t + i));
        // SAFETY: `available()` was asserted; `grp` is one whole group of `w.ty` for `x.k`.
        unsafe { dispatch::<TILE>(w.ty, grp, x.k, &toks, tile) };
        t += TILE;
    }
    for one in tiles.into_remainder().chunks_exact_mut(ROWS) {
        let toks = [Tok::of(x, t)];
        // SAFETY: as above.
        unsafe { dispatch::<1>(w.ty, grp, x.k, &toks, one) };
        t += 1;
    }
}

/// One token's quantised values, block scales `dx`, `dx Σqx`, and `Σqx` per half block.
#[derive(Clone, Copy)]
struct Tok<'a> {
    q: &'a [i8],
    d: &'a [f32],
    sum: &'a [f32],
    half: &'a [i32],
}

impl<'a> Tok<'a> {
    fn of(x: &'a Q8Acts, t: usize) -> Self {
        let (k, nb) = (x.k, x.k / 32);
        Self {
            q: &x.q[t * k..(t + 1) * k],
            d: &x.d[t * nb..(t + 1) * nb],
            sum: &x.sum[t * nb..(t + 1) * nb],
            half: &x.half[t * 2 * nb..(t + 1) * 2 * nb],
        }
    }
}

unsafe fn dispatch<const T: usize>(
    ty: GgmlType,
    grp: &[u8],
    k: usize,
    toks: &[Tok; T],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    match ty {
        GgmlType::Q4_0 => avx512::blocks32::<0, T>(grp, k, toks, out),
        GgmlType::Q4_1 => avx512::blocks32::<1, T>(grp, k, toks, out),
        GgmlType::Q8_0 => avx512::blocks32::<2, T>(grp, k, toks, out),
        GgmlType::Q4K => avx512::q4_k::<T>(grp, k, toks, out),
        GgmlType::Q6K => avx512::q6_k::<T>(grp, k, toks, out),
        _ => unreachable!("packed::packs is false for {}", ty.name()),
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "vnni on {} {} {} {}",
        ty.name(),
        grp.len(),
        k,
        toks.len() + out.len()
    );
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    const Q4_0: u8 = 0;
    const Q4_1: u8 = 1;

    /// The eight quads of one unit from 4-bit planes at `p` (low nibbles quads 0..4).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn nibble_quads(p: *const u8) -> [__m512i; 8] {
        let m4 = _mm512_set1_epi8(0x0f);
        let mut w = [_mm512_setzero_si512(); 8];
        for i in 0..4 {
            let v = _mm512_loadu_si512(p.add(64 * i) as *const _);
            w[i] = _mm512_and_si512(v, m4);
            w[i + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
        }
        w
    }

    /// Q6_K's quads: the 4-bit planes at `p`, the two high bits from the planes at `p + 256`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn q6_quads(p: *const u8) -> [__m512i; 8] {
        let mut w = nibble_quads(p);
        let m = _mm512_set1_epi8(0x30);
        for h in 0..2 {
            let c = _mm512_loadu_si512(p.add(256 + 64 * h) as *const _);
            let hi = [
                _mm512_slli_epi16::<4>(c),
                _mm512_slli_epi16::<2>(c),
                c,
                _mm512_srli_epi16::<2>(c),
            ];
            for j in 0..4 {
                w[4 * h + j] = _mm512_or_si512(w[4 * h + j], _mm512_and_si512(hi[j], m));
            }
        }
        w
    }

    /// The two half sums (quads 0..4, 4..8) of one unit against the token's values at `xq`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn halves(w: &[__m512i; 8], xq: *const i8) -> (__m512i, __m512i) {
        let quad = |i: usize| _mm512_set1_epi32((xq.add(4 * i) as *const i32).read_unaligned());
        let (mut a, mut b) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for i in 0..4 {
            a = _mm512_dpbusd_epi32(a, w[i], quad(i));
            b = _mm512_dpbusd_epi32(b, w[i + 4], quad(i + 4));
        }
        (a, b)
    }

    #[inline]
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn halfs_at(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }

    fn store<const T: usize>(acc: &[__m512; T], out: &mut [f32]) {
        for (t, a) in acc.iter().enumerate() {
            // SAFETY: `out` holds T rows of 16 floats.
            unsafe { _mm512_storeu_ps(out[t * ROWS..].as_mut_ptr(), *a) };
        }
    }

    /// Q4_0 (`V` 0), Q4_1 (1) and Q8_0 (2): one f16 scale per unit (and Q4_1's f16 min).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
    pub unsafe fn blocks32<const V: u8, const T: usize>(
        grp: &[u8],
        k: usize,
        toks: &[Tok; T],
        out: &mut [f32],
    ) {
        let ty = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0][V as usize];
        let (ub, hdr) = (unit_bytes(ty), ty_header(ty));
        let offset = if V == Q4_0 { 8 } else { 128 };
        let mut acc = [_mm512_setzero_ps(); T];
        for u in 0..k / 32 {
            let p = grp.as_ptr().add(u * ub);
            let w = if V == 2 {
                [0, 1, 2, 3, 4, 5, 6, 7]
                    .map(|i| _mm512_loadu_si512(p.add(hdr + 64 * i) as *const _))
            } else {
                nibble_quads(p.add(hdr))
            };
            let d = halfs_at(p);
            for t in 0..T {
                let tok = &toks[t];
                let (a, b) = halves(&w, tok.q.as_ptr().add(32 * u));
                let mut s = _mm512_add_epi32(a, b);
                if V != Q4_1 {
                    let sq = tok.half.get_unchecked(2 * u) + tok.half.get_unchecked(2 * u + 1);
                    s = _mm512_sub_epi32(s, _mm512_set1_epi32(offset * sq));
                }
                let dx = _mm512_set1_ps(*tok.d.get_unchecked(u));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, dx), acc[t]);
                if V == Q4_1 {
                    let m = halfs_at(p.add(32));
                    acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(*tok.sum.get_unchecked(u)), acc[t]);
                }
            }
        }
        store(&acc, out);
    }

    /// Q4_K: super-block f16 `d`, `dmin`; per unit 6-bit scale and min, turned into the unit's
    /// f32 `d · scale` and `dmin · min` once for all tokens (exact: 11 × 6 bits).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
    pub unsafe fn q4_k<const T: usize>(grp: &[u8], k: usize, toks: &[Tok; T], out: &mut [f32]) {
        let (ub, sh) = (unit_bytes(GgmlType::Q4K), super_header_bytes(GgmlType::Q4K));
        let mut acc = [_mm512_setzero_ps(); T];
        for s in 0..k / 256 {
            let sp = grp.as_ptr().add(s * (8 * ub + sh));
            let (dd, dmin) = (halfs_at(sp), halfs_at(sp.add(32)));
            for j in 0..8 {
                let p = sp.add(sh + j * ub);
                let d = _mm512_mul_ps(dd, bytes_as_f32(p));
                let m = _mm512_mul_ps(dmin, bytes_as_f32(p.add(16)));
                let w = nibble_quads(p.add(32));
                let u = 8 * s + j;
                for t in 0..T {
                    let tok = &toks[t];
                    let (a, b) = halves(&w, tok.q.as_ptr().add(32 * u));
                    let dx = _mm512_set1_ps(*tok.d.get_unchecked(u));
                    let i = _mm512_cvtepi32_ps(_mm512_add_epi32(a, b));
                    acc[t] = _mm512_fmadd_ps(i, _mm512_mul_ps(d, dx), acc[t]);
                    let ms = _mm512_mul_ps(m, _mm512_set1_ps(*tok.sum.get_unchecked(u)));
                    acc[t] = _mm512_sub_ps(acc[t], ms);
                }
            }
        }
        store(&acc, out);
    }

    /// 16 unsigned bytes at `p` as f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn bytes_as_f32(p: *const u8) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i)))
    }

    /// 16 signed bytes at `p` as f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn signed_bytes_as_f32(p: *const u8) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
    }

    /// Q6_K: super-block f16 `d`; per 16 values an int8 scale (`d · scale` exact in f32);
    /// weights stored plus 32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
    pub unsafe fn q6_k<const T: usize>(grp: &[u8], k: usize, toks: &[Tok; T], out: &mut [f32]) {
        let (ub, sh) = (unit_bytes(GgmlType::Q6K), super_header_bytes(GgmlType::Q6K));
        let mut acc = [_mm512_setzero_ps(); T];
        for s in 0..k / 256 {
            let sp = grp.as_ptr().add(s * (8 * ub + sh));
            let dd = halfs_at(sp);
            for j in 0..8 {
                let p = sp.add(sh + j * ub);
                let d0 = _mm512_mul_ps(dd, signed_bytes_as_f32(p));
                let d1 = _mm512_mul_ps(dd, signed_bytes_as_f32(p.add(16)));
                let w = q6_quads(p.add(32));
                let u = 8 * s + j;
                for t in 0..T {
                    let tok = &toks[t];
                    let (a, b) = halves(&w, tok.q.as_ptr().add(32 * u));
                    let (h0, h1) = (
                        *tok.half.get_unchecked(2 * u),
                        *tok.half.get_unchecked(2 * u + 1),
                    );
                    let a = _mm512_cvtepi32_ps(_mm512_sub_epi32(a, _mm512_set1_epi32(32 * h0)));
                    let b = _mm512_cvtepi32_ps(_mm512_sub_epi32(b, _mm512_set1_epi32(32 * h1)));
                    let dx = _mm512_set1_ps(*tok.d.get_unchecked(u));
                    acc[t] = _mm512_fmadd_ps(a, _mm512_mul_ps(d0, dx), acc[t]);
                    acc[t] = _mm512_fmadd_ps(b, _mm512_mul_ps(d1, dx), acc[t]);
                }
            }
        }
        store(&acc, out);
    }
}
