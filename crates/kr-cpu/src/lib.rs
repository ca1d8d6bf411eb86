//! kr-cpu: the CPU backend. Weights stay in their file encoding (GGUF quantised blocks are
//! decoded a few rows at a time into a cache-sized scratch, never for the whole model);
//! activations and the KV cache are f32; work is spread over cores with rayon.
//!
//! Invariant (batch invariance): every output element is computed by the same sequence of
//! floating-point operations whatever the batch size or composition, so a request's output
//! is bit-identical alone and batched. `linear` therefore never switches algorithm by `m`.

mod attention;
mod kernels;
pub mod packed;
pub mod q8dot;
mod qdot;
pub mod vnni;

use kernels::{dot, dot4};
use kr_model::{AttnMeta, Backend, KvLayout, RawTensor, Rope, RopeStyle};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

/// A row-major 2-D f32 matrix of activations.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl Mat {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(rows * cols, data.len());
        Self { data, rows, cols }
    }
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self::new(rows, cols, vec![0.0; rows * cols])
    }
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// Keys and values of every layer, f32, laid out `[block][slot][kv_head][head_dim]`.
pub struct CpuKvCache {
    pub layout: KvLayout,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl CpuKvCache {
    fn slot_width(&self) -> usize {
        self.layout.num_kv_heads * self.layout.head_dim
    }

    /// Applies `f` to the key row and the value row of every kv head at each of `slots` in
    /// `layer` (a reference for caches that store rows rounded, e.g. the GPU's fp8 cache).
    pub fn map_rows(&mut self, layer: usize, slots: &[u32], mut f: impl FnMut(&mut [f32])) {
        let (width, hd) = (self.slot_width(), self.layout.head_dim);
        for &slot in slots.iter().filter(|&&s| s != u32::MAX) {
            let at = slot as usize * width;
            for rows in [&mut self.k[layer], &mut self.v[layer]] {
                rows[at..at + width].chunks_exact_mut(hd).for_each(&mut f);
            }
        }
    }
}

/// Runs `f` (a whole forward step) on a worker of rayon's pool, so the step's many parallel
/// loops split work among workers directly instead of each waking the pool from outside.
pub fn run_in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// A weight on the CPU: the file's tensor (embedding rows, the exact path, the AVX2 path) and,
/// made on first use where this CPU has AVX-512 VNNI and the type has one, its
/// [`packed::Packed`] copy for the [`vnni`] kernels (lazily, so an embedding table that is
/// never multiplied is never copied). `KR_CPU_REPACK=0` turns the packed copy off.
#[derive(Clone)]
pub struct CpuWeight {
    pub raw: RawTensor,
    packed: Arc<OnceLock<Option<packed::Packed>>>,
}

impl CpuWeight {
    pub fn new(raw: RawTensor) -> Self {
        Self {
            raw,
            packed: Arc::new(OnceLock::new()),
        }
    }

    /// The packed copy, made now if this is its first use; `None` where there is none.
    fn packed(&self) -> Option<&packed::Packed> {
        self.packed
            .get_or_init(|| {
                let off = std::env::var("KR_CPU_REPACK").is_ok_and(|v| v.trim() == "0");
                (!off && vnni::available() && q8dot::applies(self.raw.ty))
                    .then(|| packed::pack(&self.raw))
                    .flatten()
            })
            .as_ref()
    }
}

/// The CPU backend. Stateless: threads come from rayon's global pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

/// Weight rows decoded together: 16 rows of the widest SmolLM/Llama-8B layer stay in L2.
const ROWS_PER_TASK: usize = 16;

impl CpuBackend {
    /// `y = x · wᵀ (+ bias)` on the exact f32 path (`exact`) or, where the weight type has
    /// one, the 8-bit activation path ([`q8dot`]); [`Backend::linear`] picks by
    /// [`q8dot::exact`].
    pub fn linear_path(x: &Mat, w: &RawTensor, bias: Option<&Vec<f32>>, exact: bool) -> Mat {
        add_bias(Self::matmul_t(x, w, exact), bias)
    }

    /// `y = x · wᵀ (+ bias)` on the packed 8-bit path ([`vnni`]).
    pub fn linear_packed(x: &Mat, w: &packed::Packed, bias: Option<&Vec<f32>>) -> Mat {
        assert_eq!(
            x.cols, w.cols,
            "linear: input has {} features, weight expects {}",
            x.cols, w.cols
        );
        let y = vnni::matmul(w, &q8dot::quantize(x));
        add_bias(Mat::new(x.rows, w.rows, y), bias)
    }

    /// `y[m, n] = x[m, k] · w[n, k]ᵀ`, computed as `yᵀ` in tasks of `ROWS_PER_TASK` weight rows.
    fn matmul_t(x: &Mat, w: &RawTensor, exact: bool) -> Mat {
        let (m, k, n) = (x.rows, x.cols, w.rows);
        assert_eq!(
            k, w.cols,
            "linear {}: input has {k} features, weight expects {}",
            w.name, w.cols
        );
        let mut yt = vec![0f32; n * m];
        if !exact && q8dot::applies(w.ty) {
            let acts = q8dot::quantize(x);
            Self::each_row_task(w, m, &mut yt, |rows, out| {
                q8dot::matmul_rows(w.ty, rows, &acts, out)
            });
            return Self::transpose_back(m, n, yt);
        }
        if qdot::supports(w.ty) {
            let sums = qdot::block_sums(x);
            Self::each_row_task(w, m, &mut yt, |rows, out| {
                qdot::matmul_rows(w.ty, rows, x, &sums, out)
            });
            return Self::transpose_back(m, n, yt);
        }
        yt.par_chunks_mut(ROWS_PER_TASK * m)
            .enumerate()
            .for_each_init(Vec::new, |scratch, (task, out)| {
                let j0 = task * ROWS_PER_TASK;
                let nr = out.len() / m;
                scratch.resize(ROWS_PER_TASK * k, 0.0);
                for r in 0..nr {
                    w.dequantize_row(j0 + r, &mut scratch[r * k..(r + 1) * k]);
                }
                mul_rows(x, &scratch[..nr * k], k, out);
            });
        Self::transpose_back(m, n, yt)
    }

    /// Runs `f(encoded rows, their outputs)` over `w`'s rows in tasks of `ROWS_PER_TASK` on
    /// all cores; `yt` holds `m` outputs per weight row.
    fn each_row_task(
        w: &RawTensor,
        m: usize,
        yt: &mut [f32],
        f: impl Fn(&[u8], &mut [f32]) + Sync,
    ) {
        let (rb, bytes) = (w.row_bytes(), w.bytes.as_slice());
        yt.par_chunks_mut(ROWS_PER_TASK * m)
            .enumerate()
            .for_each(|(task, out)| {
                let j0 = task * ROWS_PER_TASK;
                f(&bytes[j0 * rb..(j0 + out.len() / m) * rb], out);
            });
    }

    /// `yᵀ [n, m]` back to `y [m, n]`.
    fn transpose_back(m: usize, n: usize, yt: Vec<f32>) -> Mat {
        if m == 1 {
            return Mat::new(1, n, yt);
        }
        let mut y = vec![0f32; m * n];
        for j in 0..n {
            for i in 0..m {
                y[i * n + j] = yt[j * m + i];
            }
        }
        Mat::new(m, n, y)
    }
}

fn add_bias(mut y: Mat, bias: Option<&Vec<f32>>) -> Mat {
    if let Some(b) = bias {
        for row in y.data.chunks_exact_mut(y.cols) {
            row.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
        }
    }
    y
}

/// `out[r * m + i] = dot(x_i, w_r)` for the decoded weight rows `w` (each `k` long).
fn mul_rows(x: &Mat, w: &[f32], k: usize, out: &mut [f32]) {
    let m = x.rows;
    let nr = w.len() / k;
    let mut r = 0;
    while r + 4 <= nr {
        let ws = [
            &w[r * k..(r + 1) * k],
            &w[(r + 1) * k..(r + 2) * k],
            &w[(r + 2) * k..(r + 3) * k],
            &w[(r + 3) * k..(r + 4) * k],
        ];
        for i in 0..m {
            let d = dot4(x.row(i), ws);
            for (q, v) in d.into_iter().enumerate() {
                out[(r + q) * m + i] = v;
            }
        }
        r += 4;
    }
    for r in r..nr {
        for i in 0..m {
            out[r * m + i] = dot(x.row(i), &w[r * k..(r + 1) * k]);
        }
    }
}

fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ss + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

/// Rotates every head of one token row in place: the first `2 · inv_freq.len()` dimensions of
/// each head (all of them unless the model rotates only part of each head).
fn rope_row(row: &mut [f32], head_dim: usize, pos: u32, rope: &Rope) {
    let half = rope.inv_freq.len();
    for head in row.chunks_exact_mut(head_dim) {
        for (i, &f) in rope.inv_freq.iter().enumerate() {
            let (sin, cos) = (pos as f32 * f).sin_cos();
            let (sin, cos) = (sin * rope.scale, cos * rope.scale);
            let (a, b) = match rope.style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::HalfSplit => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x1 * cos + x0 * sin;
        }
    }
}

impl Backend for CpuBackend {
    type Experts = ();
    type Tensor = Mat;
    type Weight = CpuWeight;
    type Vector = Vec<f32>;
    type KvCache = CpuKvCache;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn load_weight(&self, t: &RawTensor) -> CpuWeight {
        CpuWeight::new(t.clone())
    }

    fn load_vector(&self, v: &[f32]) -> Vec<f32> {
        v.to_vec()
    }

    fn new_kv_cache(&self, layout: KvLayout) -> CpuKvCache {
        let len = layout.num_blocks * layout.block_size * layout.num_kv_heads * layout.head_dim;
        CpuKvCache {
            layout,
            k: (0..layout.num_layers).map(|_| vec![0.0; len]).collect(),
            v: (0..layout.num_layers).map(|_| vec![0.0; len]).collect(),
        }
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32]) -> Mat {
        let table = &table.raw;
        let d = table.cols;
        let mut out = Mat::zeros(ids.len(), d);
        for (row, &id) in out.data.chunks_exact_mut(d).zip(ids) {
            table.dequantize_row(id as usize, row);
        }
        out
    }

    fn rms_norm(&self, x: &Mat, w: &Vec<f32>, eps: f32) -> Mat {
        let mut out = Mat::zeros(x.rows, x.cols);
        for (o, r) in out
            .data
            .chunks_exact_mut(x.cols)
            .zip(x.data.chunks_exact(x.cols))
        {
            rms_norm_row(r, w, eps, o);
        }
        out
    }

    fn add_inplace(&self, x: &mut Mat, delta: &Mat) {
        for (a, b) in x.data.iter_mut().zip(&delta.data) {
            *a += b;
        }
    }

    fn linear(&self, x: &Mat, w: &CpuWeight, bias: Option<&Vec<f32>>) -> Mat {
        let exact = q8dot::exact();
        match w.packed().filter(|_| !exact) {
            Some(p) => Self::linear_packed(x, p, bias),
            None => Self::linear_path(x, &w.raw, bias, exact),
        }
    }

    fn head_rms_norm(&self, x: &mut Mat, w: &Vec<f32>, head_dim: usize, eps: f32) {
        let mut tmp = vec![0f32; head_dim];
        for head in x.data.chunks_exact_mut(head_dim) {
            rms_norm_row(head, w, eps, &mut tmp);
            head.copy_from_slice(&tmp);
        }
    }

    fn rope_and_write_kv(
        &self,
        q: &mut Mat,
        k: &mut Mat,
        v: &Mat,
        rope: &Rope,
        meta: &AttnMeta,
        layer: usize,
        cache: &mut CpuKvCache,
    ) {
        let hd = cache.layout.head_dim;
        let width = cache.slot_width();
        for (t, &pos) in meta.positions.iter().enumerate() {
            rope_row(&mut q.data[t * q.cols..(t + 1) * q.cols], hd, pos, rope);
            rope_row(&mut k.data[t * k.cols..(t + 1) * k.cols], hd, pos, rope);
            let slot = meta.slot_mapping[t] as usize * width;
            cache.k[layer][slot..slot + width].copy_from_slice(k.row(t));
            cache.v[layer][slot..slot + width].copy_from_slice(v.row(t));
        }
    }

    fn paged_attention(
        &self,
        q: &Mat,
        meta: &AttnMeta,
        layer: usize,
        cache: &CpuKvCache,
        num_heads: usize,
    ) -> Mat {
        let mut out = Mat::zeros(q.rows, q.cols);
        let row_seq: Vec<usize> = meta
            .seqs
            .iter()
            .enumerate()
            .flat_map(|(i, s)| std::iter::repeat_n(i, s.q_len))
            .collect();
        let (kc, vc) = (&cache.k[layer], &cache.v[layer]);
        out.data.par_chunks_mut(q.cols).enumerate().for_each_init(
            attention::Scratch::default,
            |scratch, (row, o)| {
                let s = &meta.seqs[row_seq[row]];
                let pos = s.ctx_len - s.q_len + (row - s.q_start);
                let ctx = attention::RowCtx {
                    ctx: pos + 1,
                    first: cache.layout.first_key(layer, pos),
                    table: &s.block_table,
                    kc,
                    vc,
                    layout: &cache.layout,
                    num_heads,
                };
                attention::attend_row(q.row(row), o, scratch, &ctx);
            },
        );
        out
    }

    fn silu_mul(&self, gate: &Mat, up: &Mat) -> Mat {
        let data = gate
            .data
            .iter()
            .zip(&up.data)
            .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        Mat::new(gate.rows, gate.cols, data)
    }

    fn gather_rows(&self, x: &Mat, rows: &[usize]) -> Mat {
        let data = rows
            .iter()
            .flat_map(|&r| x.row(r).iter().copied())
            .collect();
        Mat::new(rows.len(), x.cols, data)
    }

    fn gelu_mul(&self, gate: &Mat, up: &Mat) -> Mat {
        let gelu = |x: f32| {
            let inner = (2.0 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            0.5 * x * (1.0 + inner.tanh())
        };
        let data = gate
            .data
            .iter()
            .zip(&up.data)
            .map(|(&g, &u)| gelu(g) * u)
            .collect();
        Mat::new(gate.rows, gate.cols, data)
    }

    fn scale_inplace(&self, x: &mut Mat, s: f32) {
        x.data.iter_mut().for_each(|v| *v *= s);
    }

    fn softcap_inplace(&self, x: &mut Mat, cap: f32) {
        x.data.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
    }

    fn scatter_add_scaled(&self, x: &mut Mat, rows: &[usize], src: &Mat, scales: &[f32]) {
        for (i, (&r, &s)) in rows.iter().zip(scales).enumerate() {
            let cols = x.cols;
            let dst = &mut x.data[r * cols..(r + 1) * cols];
            dst.iter_mut()
                .zip(src.row(i))
                .for_each(|(d, &v)| *d += s * v);
        }
    }

    fn to_host(&self, x: &Mat) -> Vec<f32> {
        x.data.clone()
    }
}

#[cfg(test)]
mod tests;
