//! Portable decoders of the 32-element block types. Each block starts with an f16 scale `d`;
//! a 4-bit element `i` of the 16 packed bytes is the low nibble of byte `i` for `i < 16` and
//! the high nibble of byte `i - 16` otherwise; Q5 types keep each element's fifth bit in a
//! little-endian u32 (bit `i` for element `i`).

use super::{f16_at, IQ4_VALUES};

/// Element `i` of 16 packed nibble bytes.
#[inline(always)]
fn nibble(qs: &[u8], i: usize) -> u8 {
    (qs[i % 16] >> (4 * (i / 16))) & 0x0f
}

/// The 5-bit value of element `i`: its nibble and bit `i` of `qh`.
#[inline(always)]
fn five_bits(qh: u32, qs: &[u8], i: usize) -> u8 {
    nibble(qs, i) | ((((qh >> i) & 1) as u8) << 4)
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// `d`, 16 nibble bytes: `(q - 8) · d`.
pub(super) fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (i, v) in y.iter_mut().enumerate() {
        *v = (nibble(&b[2..18], i) as i32 - 8) as f32 * d;
    }
}

/// `d`, `m`, 16 nibble bytes: `q · d + m`.
pub(super) fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (i, v) in y.iter_mut().enumerate() {
        *v = nibble(&b[4..20], i) as f32 * d + m;
    }
}

/// `d`, fifth bits, 16 nibble bytes: `(q - 16) · d`.
pub(super) fn q5_0(b: &[u8], y: &mut [f32]) {
    let (d, qh) = (f16_at(b, 0), u32_at(b, 2));
    for (i, v) in y.iter_mut().enumerate() {
        *v = (five_bits(qh, &b[6..22], i) as i32 - 16) as f32 * d;
    }
}

/// `d`, `m`, fifth bits, 16 nibble bytes: `q · d + m`.
pub(super) fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m, qh) = (f16_at(b, 0), f16_at(b, 2), u32_at(b, 4));
    for (i, v) in y.iter_mut().enumerate() {
        *v = five_bits(qh, &b[8..24], i) as f32 * d + m;
    }
}

/// `d`, 32 signed bytes: `q · d`.
pub(super) fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (v, &q) in y.iter_mut().zip(&b[2..34]) {
        *v = q as i8 as f32 * d;
    }
}

/// `d`, 16 nibble bytes indexing the non-linear code book: `book[q] · d`.
pub(super) fn iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (i, v) in y.iter_mut().enumerate() {
        *v = IQ4_VALUES[nibble(&b[2..18], i) as usize] as f32 * d;
    }
}
