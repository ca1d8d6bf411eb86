//! Quantised weights repacked at load time for the AVX-512 VNNI kernels ([`crate::vnni`]): the
//! CPU's fastest path for Q4_0, Q4_1, Q8_0, Q4_K and Q6_K, the types of llama.cpp's `Q4_0`,
//! `Q8_0` and `Q*_K_M` files.
//!
//! Rows are taken 16 at a time (a *group*; the last group is padded with zero rows). Within a
//! group, every unit of 32 values along `k` is stored so that one 64-byte load holds, for each
//! of the 16 rows, four consecutive weights as unsigned bytes: lane `r` of a `vpdpbusd` is row
//! `r`, and one broadcast four-byte quad of activations multiplies all 16 rows. A unit's eight
//! quads (`4q .. 4q + 4`, `q` in 0..8) are stored as:
//! - 4-bit types: four 64-byte planes, plane `p` holding quad `p` in the low nibbles and quad
//!   `p + 4` in the high ones;
//! - Q8_0: eight 64-byte planes (the signed weight plus 128);
//! - Q6_K: the low four bits as the 4-bit planes, then two planes of the high two bits (plane
//!   `q / 4`, bits `2 (q % 4)`).
//!
//! Each unit (or 256-value super-block) carries its scales for the 16 rows as in the file —
//! f16 block scales, 6-bit K-quant scales and mins, int8 Q6_K scales — so a weight is
//! `d · q + m` exactly as the file defines it, and the packed copy is the file's size.
//!
//! Invariant: [`pack`] only returns a layout for a tensor whose every row is whole blocks, and
//! the kernels read exactly [`Packed::group_bytes`] per group.

use kr_model::quant::{scale_min_k4, GgmlType};
use kr_model::RawTensor;
use rayon::prelude::*;

/// Rows per group (the lanes of one 512-bit register of i32).
pub const ROWS: usize = 16;

/// A weight matrix in the grouped layout above.
pub struct Packed {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub group_bytes: usize,
    pub data: Vec<u8>,
}

impl Packed {
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(ROWS)
    }

    pub fn group(&self, g: usize) -> &[u8] {
        &self.data[g * self.group_bytes..(g + 1) * self.group_bytes]
    }
}

/// Bytes of one 32-value unit for the 16 rows of a group: header, then the weight planes.
pub const fn unit_bytes(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4_0 => 32 + 256,
        GgmlType::Q4_1 => 64 + 256,
        GgmlType::Q8_0 => 32 + 512,
        GgmlType::Q4K => 32 + 256,
        _ => 32 + 256 + 128,
    }
}

/// Bytes of the per-super-block header (K-quants) for 16 rows: the f16 super-scales.
pub const fn super_header_bytes(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4K => 64,
        GgmlType::Q6K => 32,
        _ => 0,
    }
}

/// Whether [`pack`] handles `ty`.
pub fn packs(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q6K
    )
}

/// The 32 integer weights of one unit and what multiplies them, as the file defines them.
struct UnitInts {
    q: [u8; 32],
    /// f16 bits: Q4_0/Q4_1/Q8_0 `d`; Q4_1 also `m` in `extra`.
    d: u16,
    extra: u16,
    /// K-quant sub-scales: Q4_K (scale, min); Q6_K (scale of the first 16, of the second 16).
    sc: (u8, u8),
}

fn f16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

/// Unit `u` (of its block) of the block `b` of type `ty`.
fn unit_ints(ty: GgmlType, b: &[u8], u: usize) -> UnitInts {
    let mut q = [0u8; 32];
    let (mut d, mut extra, mut sc) = (0, 0, (0, 0));
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let off = if ty == GgmlType::Q4_0 { 2 } else { 4 };
            for j in 0..16 {
                q[j] = b[off + j] & 15;
                q[j + 16] = b[off + j] >> 4;
            }
            d = f16_at(b, 0);
            extra = if ty == GgmlType::Q4_1 {
                f16_at(b, 2)
            } else {
                0
            };
        }
        GgmlType::Q8_0 => {
            for j in 0..32 {
                q[j] = (b[2 + j] as i8 as i16 + 128) as u8;
            }
            d = f16_at(b, 0);
        }
        GgmlType::Q4K => {
            let qs = &b[16 + 32 * (u / 2)..16 + 32 * (u / 2) + 32];
            for j in 0..32 {
                q[j] = if u % 2 == 0 { qs[j] & 15 } else { qs[j] >> 4 };
            }
            sc = scale_min_k4(u, &b[4..16]);
        }
        _ => {
            // Q6_K: value e = 128h + 32t + l is ql[64h + 32(t%2) + l] nibble t/2 and qh[32h + l]
            // bits 2t; scale index e / 16.
            let (h, t) = (u / 4, u % 4);
            for l in 0..32 {
                let lo = (b[64 * h + 32 * (t % 2) + l] >> (4 * (t / 2))) & 15;
                let hi = (b[128 + 32 * h + l] >> (2 * t)) & 3;
                q[l] = lo | (hi << 4);
            }
            sc = (b[192 + 2 * u], b[192 + 2 * u + 1]);
        }
    }
    UnitInts { q, d, extra, sc }
}

/// Repacks `t` for the VNNI kernels, or `None` when its type has no packed form.
pub fn pack(t: &RawTensor) -> Option<Packed> {
    if !packs(t.ty) || t.cols % t.ty.block_elems() != 0 {
        return None;
    }
    let units = t.cols / 32;
    let supers = if super_header_bytes(t.ty) > 0 {
        t.cols / 256
    } else {
        0
    };
    let group_bytes = units * unit_bytes(t.ty) + supers * super_header_bytes(t.ty);
    let groups = t.rows.div_ceil(ROWS);
    let mut data = vec![0u8; groups * group_bytes];
    let (src, rb) = (t.bytes.as_slice(), t.row_bytes());
    data.par_chunks_mut(group_bytes)
        .enumerate()
        .for_each(|(g, out)| {
            for r in 0..ROWS.min(t.rows - g * ROWS) {
                let row = &src[(g * ROWS + r) * rb..(g * ROWS + r + 1) * rb];
                pack_row(t.ty, row, r, out);
            }
        });
    Some(Packed {
        ty: t.ty,
        rows: t.rows,
        cols: t.cols,
        group_bytes,
        data,
    })
}

/// Writes row `r` (of its group) into the group's bytes `out`.
fn pack_row(ty: GgmlType, row: &[u8], r: usize, out: &mut [u8]) {
    let (bb, per) = (ty.block_bytes(), ty.block_elems() / 32);
    let (ub, sh) = (unit_bytes(ty), super_header_bytes(ty));
    for (bi, block) in row.chunks_exact(bb).enumerate() {
        let base = bi * (per * ub + sh);
        match ty {
            GgmlType::Q4K => {
                out[base + 2 * r..base + 2 * r + 2].copy_from_slice(&block[0..2]);
                out[base + 32 + 2 * r..base + 34 + 2 * r].copy_from_slice(&block[2..4]);
            }
            GgmlType::Q6K => out[base + 2 * r..base + 2 * r + 2].copy_from_slice(&block[208..210]),
            _ => {}
        }
        for u in 0..per {
            let ints = unit_ints(ty, block, u);
            write_unit(
                ty,
                &ints,
                r,
                &mut out[base + sh + u * ub..base + sh + (u + 1) * ub],
            );
        }
    }
}

/// One unit of row `r`: its header entries, then its weights in the plane layout.
fn write_unit(ty: GgmlType, u: &UnitInts, r: usize, out: &mut [u8]) {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q8_0 => {
            out[2 * r..2 * r + 2].copy_from_slice(&u.d.to_le_bytes())
        }
        GgmlType::Q4_1 => {
            out[2 * r..2 * r + 2].copy_from_slice(&u.d.to_le_bytes());
            out[32 + 2 * r..34 + 2 * r].copy_from_slice(&u.extra.to_le_bytes());
        }
        _ => (out[r], out[16 + r]) = u.sc,
    }
    let planes = &mut out[ty_header(ty)..];
    match ty {
        GgmlType::Q8_0 => {
            for (j, &v) in u.q.iter().enumerate() {
                planes[(j / 4) * 64 + 4 * r + j % 4] = v;
            }
        }
        _ => {
            for j in 0..16 {
                let (lo, hi) = (u.q[j] & 15, u.q[j + 16] & 15);
                planes[(j / 4) * 64 + 4 * r + j % 4] = lo | (hi << 4);
            }
            if ty == GgmlType::Q6K {
                for (j, &v) in u.q.iter().enumerate() {
                    let (qd, b) = (j / 4, j % 4);
                    planes[256 + (qd / 4) * 64 + 4 * r + b] |= (v >> 4) << (2 * (qd % 4));
                }
            }
        }
    }
}

/// Bytes of a unit's own header (before its planes).
pub const fn ty_header(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4_1 => 64,
        _ => 32,
    }
}
