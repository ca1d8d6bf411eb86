//! Mixture-of-Experts layers of GGUF files as llama.cpp writes and reads them: Mixtral (arch
//! `llama` with `llama.expert_count`) and Qwen3-MoE (arch `qwen3moe`).
//!
//! - `<arch>.expert_count` experts (absent or 0: a dense model), `<arch>.expert_used_count`
//!   of them a token (one number, or one a layer, as llama.cpp reads it);
//! - a layer with a router, `blk.N.ffn_gate_inp.weight` (GGUF dims `[hidden, experts]`), is
//!   sparse; its experts are stacked into `blk.N.ffn_gate_exps.weight` /
//!   `ffn_up_exps.weight` (dims `[hidden, expert_ff, experts]`) and `ffn_down_exps.weight`
//!   (`[expert_ff, hidden, experts]`), or gate and up fused into `ffn_gate_up_exps.weight`
//!   (`[hidden, 2 expert_ff, experts]`, each expert's gate rows then its up rows: the
//!   converter's `--fuse-gate-up-exps`). One expert's rows are contiguous, so each expert is
//!   a row range of an `[experts × rows, cols]` view of the same bytes;
//! - rows of an expert: `qwen3moe.expert_feed_forward_length` (absent: llama.cpp's
//!   `feed_forward_length / expert_used_count`); for `llama`, `feed_forward_length` (the
//!   only key llama.cpp reads there);
//! - the chosen experts' probabilities are renormalised to sum to 1: llama.cpp does so for
//!   both architectures whatever the file says (transformers' Qwen3-MoE only with
//!   `norm_topk_prob`, which the converter does not write). `<arch>.expert_weights_norm`,
//!   which llama.cpp reads for other MoE architectures only, is honoured when present
//!   (false: the softmax over all experts, as Qwen3-MoE with `norm_topk_prob` false);
//! - refused, naming the key: a gating function other than softmax (`expert_gating_func`),
//!   a weight scale other than 1 (`expert_weights_scale`), expert groups
//!   (`expert_group_count`), shared experts (`expert_shared_count`,
//!   `expert_shared_feed_forward_length`).
//!
//! A layer without a router is dense. llama.cpp wants one on every layer of these
//! architectures once `expert_count` is set, and its converter cannot write Qwen3-MoE's
//! dense layers (`mlp_only_layers`) at all; kr-serve reads either layout.

use crate::error::Result;
use crate::gguf::{GgufFile, Value};
use crate::gguf_model::{check_shape, meta_err, opt_f64, opt_usize};
use crate::weights::{ExpertWeights, MoeWeights, RawTensor, TensorBytes};

/// The experts a file declares.
#[derive(Debug, Clone)]
pub struct MoeSpec {
    pub experts: usize,
    /// Experts a token runs, by layer.
    pub top_k: Vec<usize>,
    /// Rows of each expert's gate and up projections, by layer.
    pub expert_ff: Vec<usize>,
    pub norm_topk_prob: bool,
}

/// A number for every layer, or one a layer (llama.cpp's `get_key_or_arr`).
fn per_layer(f: &GgufFile, key: &str, layers: usize) -> Result<Option<Vec<usize>>> {
    let expected = "an integer, or one a layer";
    match f.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => {
            let v: Option<Vec<usize>> = a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect();
            match v {
                Some(v) if v.len() == layers => Ok(Some(v)),
                _ => Err(meta_err(f, key, expected)),
            }
        }
        Some(v) => v
            .as_u64()
            .map(|x| Some(vec![x as usize; layers]))
            .ok_or_else(|| meta_err(f, key, expected)),
    }
}

/// The experts of an `arch` file of `layers` layers whose dense feed-forward width is `ff`
/// (`None`: no experts).
pub fn moe_spec(f: &GgufFile, arch: &str, layers: usize, ff: usize) -> Result<Option<MoeSpec>> {
    let key = |k: &str| format!("{arch}.{k}");
    let experts = match opt_usize(f, &key("expert_count"))? {
        None | Some(0) => return Ok(None),
        Some(e) => e,
    };
    let used = key("expert_used_count");
    let top_k = per_layer(f, &used, layers)?
        .filter(|v| v.iter().all(|k| (1..=experts).contains(k)))
        .ok_or_else(|| meta_err(f, &used, "1..=expert_count, or one such a layer"))?;
    let expert_ff = match arch {
        "qwen3moe" => per_layer(f, &key("expert_feed_forward_length"), layers)?
            .unwrap_or_else(|| top_k.iter().map(|k| ff / k).collect()),
        _ => vec![ff; layers],
    };
    if opt_usize(f, &key("expert_gating_func"))?.is_some_and(|g| g != 1) {
        return Err(meta_err(
            f,
            &key("expert_gating_func"),
            "1 (softmax) or absent (other gating functions are not supported)",
        ));
    }
    if opt_f64(f, &key("expert_weights_scale"))?.is_some_and(|s| s != 0.0 && s != 1.0) {
        return Err(meta_err(
            f,
            &key("expert_weights_scale"),
            "1 or absent (scaled expert weights are not supported)",
        ));
    }
    for k in [
        "expert_group_count",
        "expert_shared_count",
        "expert_shared_feed_forward_length",
    ] {
        let limit = if k == "expert_group_count" { 1 } else { 0 };
        if opt_usize(f, &key(k))?.is_some_and(|n| n > limit) {
            return Err(meta_err(
                f,
                &key(k),
                "absent (expert groups and shared experts are not supported)",
            ));
        }
    }
    let norm_key = key("expert_weights_norm");
    let norm_topk_prob = match f.get(&norm_key) {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(meta_err(f, &norm_key, "bool")),
    };
    Ok(Some(MoeSpec {
        experts,
        top_k,
        expert_ff,
        norm_topk_prob,
    }))
}

/// A stacked expert tensor (GGUF dims `[cols, rows, experts]`) as one `[experts × rows,
/// cols]` matrix over the file's bytes.
fn stacked(
    f: &GgufFile,
    name: &str,
    experts: usize,
    rows: usize,
    cols: usize,
) -> Result<RawTensor> {
    let info = f.tensor(name)?;
    check_shape(f, info, &[cols, rows, experts])?;
    Ok(RawTensor {
        name: name.to_string(),
        ty: info.ty,
        rows: experts * rows,
        cols,
        bytes: TensorBytes::Mapped {
            map: f.map(),
            offset: info.offset,
            len: info.size,
        },
    })
}

/// Layer `i`'s router and experts (hidden size `d`), if it has a router.
pub fn moe_layer(
    f: &GgufFile,
    spec: Option<&MoeSpec>,
    arch: &str,
    i: usize,
    d: usize,
) -> Result<Option<MoeWeights>> {
    let n = |s: &str| format!("blk.{i}.{s}");
    let router = n("ffn_gate_inp.weight");
    if !f.tensors.contains_key(&router) {
        return Ok(None);
    }
    let spec = spec.ok_or_else(|| {
        meta_err(
            f,
            &format!("{arch}.expert_count"),
            "a positive integer (the file has expert routers)",
        )
    })?;
    let (e, ff) = (spec.experts, spec.expert_ff[i]);
    let router = crate::gguf_model::matrix(f, &router, e, d)?;
    let down = stacked(f, &n("ffn_down_exps.weight"), e, d, ff)?;
    let down = |x: usize| down.row_range(&format!("{}[{x}]", down.name), d * x, d);
    let fused = n("ffn_gate_up_exps.weight");
    let experts = match f.tensors.contains_key(&fused)
        && !f.tensors.contains_key(&n("ffn_gate_exps.weight"))
    {
        true => {
            let gate_up = stacked(f, &fused, e, 2 * ff, d)?;
            let part = |x: usize, which: &str, start: usize| {
                gate_up.row_range(&format!("{fused}[{x} {which}]"), start, ff)
            };
            (0..e)
                .map(|x| ExpertWeights {
                    gate: part(x, "gate", 2 * ff * x),
                    up: part(x, "up", 2 * ff * x + ff),
                    down: down(x),
                })
                .collect()
        }
        false => {
            let gate = stacked(f, &n("ffn_gate_exps.weight"), e, ff, d)?;
            let up = stacked(f, &n("ffn_up_exps.weight"), e, ff, d)?;
            let part =
                |t: &RawTensor, x: usize| t.row_range(&format!("{}[{x}]", t.name), ff * x, ff);
            (0..e)
                .map(|x| ExpertWeights {
                    gate: part(&gate, x),
                    up: part(&up, x),
                    down: down(x),
                })
                .collect()
        }
    };
    Ok(Some(MoeWeights {
        router,
        experts,
        top_k: spec.top_k[i],
        norm_topk_prob: spec.norm_topk_prob,
    }))
}

#[cfg(test)]
mod tests {
    use crate::gguf::GgufFile;
    use crate::gguf_model::tests::{file, M};
    use crate::gguf_model::weights_from_gguf;
    use crate::weights::RawTensor;

    /// Layer tensors of the base file (hidden 8, 2 heads of 4, 1 KV head) but the
    /// feed-forward ones, plus `ffn` of layer `i`, and the output norm.
    fn tensors(ffn: [Vec<(&str, Vec<usize>)>; 2]) -> Vec<(String, Vec<usize>)> {
        let mut t: Vec<(String, Vec<usize>)> = vec![("output_norm.weight".into(), vec![8])];
        for (i, ffn) in ffn.into_iter().enumerate() {
            let attention = [
                ("attn_norm.weight", vec![8]),
                ("attn_q.weight", vec![8, 8]),
                ("attn_k.weight", vec![8, 4]),
                ("attn_v.weight", vec![8, 4]),
                ("attn_output.weight", vec![8, 8]),
                ("ffn_norm.weight", vec![8]),
            ];
            for (name, dims) in attention.into_iter().chain(ffn) {
                t.push((format!("blk.{i}.{name}"), dims));
            }
        }
        t
    }

    fn open(arch: &'static str, meta: Vec<(&str, M)>, t: &[(String, Vec<usize>)]) -> GgufFile {
        let t: Vec<(&str, &[usize])> = t.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
        file(arch, meta, &t)
    }

    /// Three experts of 4 rows (8 columns) on layer 0.
    fn experts() -> Vec<(&'static str, Vec<usize>)> {
        vec![
            ("ffn_gate_inp.weight", vec![8, 3]),
            ("ffn_gate_exps.weight", vec![8, 4, 3]),
            ("ffn_up_exps.weight", vec![8, 4, 3]),
            ("ffn_down_exps.weight", vec![4, 8, 3]),
        ]
    }

    fn dense() -> Vec<(&'static str, Vec<usize>)> {
        vec![
            ("ffn_gate.weight", vec![8, 16]),
            ("ffn_up.weight", vec![8, 16]),
            ("ffn_down.weight", vec![16, 8]),
        ]
    }

    fn first(t: &RawTensor) -> (usize, usize, f32) {
        (t.rows, t.cols, t.to_f32()[0])
    }

    #[test]
    fn stacked_experts_split_into_their_rows_beside_a_dense_layer() {
        let meta = vec![
            ("expert_count", M::U32(3)),
            ("expert_used_count", M::U32(2)),
            ("expert_feed_forward_length", M::U32(4)),
        ];
        let w = weights_from_gguf(&open("qwen3moe", meta, &tensors([experts(), dense()]))).unwrap();
        let (l0, l1) = (&w.layers[0], &w.layers[1]);
        let m = l0.moe.as_ref().expect("layer 0 has experts");
        assert_eq!(
            (m.experts.len(), m.top_k, m.norm_topk_prob),
            (3, 2, true),
            "llama.cpp renormalises qwen3moe's chosen experts"
        );
        assert_eq!(first(&m.router), (3, 8, 1.0));
        // Values count from 1 in each tensor: expert x starts at x * rows * cols + 1.
        assert_eq!(first(&m.experts[2].gate), (4, 8, 65.0));
        assert_eq!(first(&m.experts[1].up), (4, 8, 33.0));
        assert_eq!(first(&m.experts[1].down), (8, 4, 33.0));
        assert_eq!(m.experts[2].gate.name, "blk.0.ffn_gate_exps.weight[2]");
        assert_eq!(m.experts[2].down.to_f32().last(), Some(&96.0));
        assert_eq!((l0.w_gate.rows, l0.w_down.rows), (0, 0));
        assert!(l1.moe.is_none());
        assert_eq!(first(&l1.w_gate), (16, 8, 1.0));
    }

    #[test]
    fn fused_gate_up_experts_per_layer_top_k_and_the_norm_key() {
        // llama: experts as wide as feed_forward_length (16); each expert's gate rows, then
        // its up rows.
        let moe = || {
            vec![
                ("ffn_gate_inp.weight", vec![8, 3]),
                ("ffn_gate_up_exps.weight", vec![8, 32, 3]),
                ("ffn_down_exps.weight", vec![16, 8, 3]),
            ]
        };
        let meta = vec![
            ("expert_count", M::U32(3)),
            ("expert_used_count", M::U32s(vec![1, 2])),
            ("expert_weights_norm", M::Bool(false)),
        ];
        let w = weights_from_gguf(&open("llama", meta, &tensors([moe(), moe()]))).unwrap();
        let m = |i: usize| w.layers[i].moe.as_ref().unwrap();
        assert_eq!((m(0).top_k, m(1).top_k, m(1).norm_topk_prob), (1, 2, false));
        let x = &m(1).experts[1];
        assert_eq!(first(&x.gate), (16, 8, 257.0));
        assert_eq!(first(&x.up), (16, 8, 385.0));
        assert_eq!(x.up.name, "blk.1.ffn_gate_up_exps.weight[1 up]");
    }

    #[test]
    fn unsupported_routing_and_bad_expert_files_name_the_key_or_tensor() {
        let err = |extra: Vec<(&str, M)>, t: Vec<(&'static str, Vec<usize>)>| {
            let mut meta = vec![
                ("expert_count", M::U32(3)),
                ("expert_used_count", M::U32(2)),
            ];
            meta.extend(extra);
            let f = open("llama", meta, &tensors([t, dense()]));
            weights_from_gguf(&f).unwrap_err().to_string()
        };
        let moe16 = || {
            let mut t = experts();
            t[1].1 = vec![8, 16, 3];
            t[2].1 = vec![8, 16, 3];
            t[3].1 = vec![16, 8, 3];
            t
        };
        let e = err(vec![("expert_gating_func", M::U32(2))], moe16());
        assert!(e.contains("llama.expert_gating_func"), "{e}");
        let e = err(vec![("expert_weights_scale", M::F32(2.5))], moe16());
        assert!(e.contains("llama.expert_weights_scale"), "{e}");
        let e = err(vec![("expert_shared_count", M::U32(1))], moe16());
        assert!(e.contains("llama.expert_shared_count"), "{e}");
        // Experts 4 rows wide where llama wants feed_forward_length (16).
        let e = err(vec![], experts());
        assert!(e.contains("blk.0.ffn_down_exps.weight"), "{e}");
        let e = err(vec![("expert_used_count", M::U32(4))], moe16());
        assert!(e.contains("llama.expert_used_count"), "{e}");
        // Routers without expert_count.
        let f = open("llama", vec![], &tensors([moe16(), dense()]));
        let e = weights_from_gguf(&f).unwrap_err().to_string();
        assert!(e.contains("llama.expert_count"), "{e}");
    }
}
