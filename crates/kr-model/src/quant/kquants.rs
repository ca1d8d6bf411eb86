//! Portable decoders of the 256-element super-block types (Q2_K … Q6_K and IQ4_XS). Within a
//! super-block, elements are grouped into sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or 32 (Q4_K,
//! Q5_K, IQ4_XS) that share a scale (and, for Q2_K/Q4_K/Q5_K, a min); the packed integers
//! interleave sub-blocks the way ggml lays them out, spelled out per type below.

use super::{f16_at, IQ4_VALUES};

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K or Q5_K block's 12 scale bytes.
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q2_K: scales[16] (low nibble scale, high nibble min), qs[64], d, dmin. Element
/// `e = 128h + 32s + l` is bits `2s..2s+2` of `qs[32h + l]`; its sub-block is `e / 16`.
pub(super) fn q2_k(b: &[u8], y: &mut [f32]) {
    let (sc, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (e, v) in y.iter_mut().enumerate() {
        let (h, s, l) = (e / 128, (e / 32) % 4, e % 32);
        let q = (qs[32 * h + l] >> (2 * s)) & 3;
        let k = sc[e / 16];
        *v = d * (k & 0x0f) as f32 * q as f32 - dmin * (k >> 4) as f32;
    }
}

/// The signed 6-bit scale of sub-block `i` (0..16) of a Q3_K block's 12 scale bytes: low four
/// bits from byte `i % 8` (nibble `i / 8`), high two from byte `8 + i % 4` (pair `i / 4`).
fn q3_k_scale(sc: &[u8], i: usize) -> i32 {
    let lo = (sc[i % 8] >> (4 * (i / 8))) & 0x0f;
    let hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
    (lo | (hi << 4)) as i32 - 32
}

/// Q3_K: hmask[32], qs[64], scales[12], d. Element `e = 32j + l` (j 0..8) takes bits
/// `2(j%4)..` of `qs[32(j/4) + l]` and, as its high bit, bit `j` of `hmask[l]`; a clear high
/// bit subtracts 4. Its sub-block is `e / 16`.
pub(super) fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, sc) = (&b[..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    for (e, v) in y.iter_mut().enumerate() {
        let (j, l) = (e / 32, e % 32);
        let low = ((qs[32 * (j / 4) + l] >> (2 * (j % 4))) & 3) as i32;
        let high = (hmask[l] >> j) & 1;
        let q = low - if high == 0 { 4 } else { 0 };
        *v = d * q3_k_scale(sc, e / 16) as f32 * q as f32;
    }
}

/// Q4_K: d, dmin, scales[12], qs[128]. Element `e = 64c + 32n + l` is nibble `n` of
/// `qs[32c + l]`; its sub-block is `e / 32`.
pub(super) fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin, scales, qs) = (f16_at(b, 0), f16_at(b, 2), &b[4..16], &b[16..144]);
    for (e, v) in y.iter_mut().enumerate() {
        let (c, n, l) = (e / 64, (e / 32) % 2, e % 32);
        let q = (qs[32 * c + l] >> (4 * n)) & 0x0f;
        let (sc, m) = scale_min_k4(e / 32, scales);
        *v = d * sc as f32 * q as f32 - dmin * m as f32;
    }
}

/// Q5_K: d, dmin, scales[12], qh[32], qs[128]. As Q4_K, plus bit `e / 32` of `qh[l]` as the
/// fifth bit.
pub(super) fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin, scales) = (f16_at(b, 0), f16_at(b, 2), &b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (e, v) in y.iter_mut().enumerate() {
        let (c, n, l) = (e / 64, (e / 32) % 2, e % 32);
        let low = (qs[32 * c + l] >> (4 * n)) & 0x0f;
        let q = low | (((qh[l] >> (e / 32)) & 1) << 4);
        let (sc, m) = scale_min_k4(e / 32, scales);
        *v = d * sc as f32 * q as f32 - dmin * m as f32;
    }
}

/// Q6_K: ql[128], qh[64], scales[16] (signed), d. Element `e = 128h + 32s + l` takes nibble
/// `s / 2` of `ql[64h + 32(s % 2) + l]` and bits `2s..2s+2` of `qh[32h + l]` as bits 4..6,
/// minus 32; its sub-block is `e / 16`.
pub(super) fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (e, v) in y.iter_mut().enumerate() {
        let (h, s, l) = (e / 128, (e / 32) % 4, e % 32);
        let low = (ql[64 * h + 32 * (s % 2) + l] >> (4 * (s / 2))) & 0x0f;
        let high = (qh[32 * h + l] >> (2 * s)) & 3;
        let q = (low | (high << 4)) as i32 - 32;
        *v = d * (sc[e / 16] as i8) as f32 * q as f32;
    }
}

/// IQ4_XS: d, scales_h (u16), scales_l[4], qs[128]. Sub-block `i` (32 elements) has the signed
/// 6-bit scale `(nibble i%2 of scales_l[i/2]) | (bits 2i.. of scales_h) << 4` minus 32; its
/// element `16n + j` is nibble `n` of `qs[16i + j]`, an index into the IQ4 code book.
pub(super) fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for (i, sub) in y.chunks_exact_mut(32).enumerate() {
        let lo = (scales_l[i / 2] >> (4 * (i % 2))) & 0x0f;
        let hi = ((scales_h >> (2 * i)) & 3) as u8;
        let dl = d * ((lo | (hi << 4)) as i32 - 32) as f32;
        for (k, v) in sub.iter_mut().enumerate() {
            let q = (qs[16 * i + k % 16] >> (4 * (k / 16))) & 0x0f;
            *v = dl * IQ4_VALUES[q as usize] as f32;
        }
    }
}
