//! `kr-serve models inspect PATH`: what a model is and what it needs, without loading it
//! into an engine (kr_engine::inspect_model).

use crate::cli::InspectArgs;
use crate::error::Result;
use kr_engine::ModelSummary;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn params(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} M", n as f64 / 1e6),
        n => format!("{:.1} K", n as f64 / 1e3),
    }
}

/// The human-readable table.
fn table(s: &ModelSummary) -> Vec<(&'static str, String)> {
    let c = &s.config;
    let types: Vec<String> = s
        .tensor_types
        .iter()
        .map(|(t, n)| format!("{t} ×{n}"))
        .collect();
    let tokenizer = s.tokenizer.as_ref().map_or("unavailable".into(), |t| {
        format!(
            "{}, {} tokens, BOS {}, EOS {:?}, add BOS {}",
            t.kind,
            t.vocab_size,
            t.bos_id.map_or("none".into(), |b| b.to_string()),
            t.eos_ids,
            t.add_bos
        )
    });
    vec![
        ("path", s.path.clone()),
        ("format", s.format.to_string()),
        (
            "architecture",
            format!(
                "{} (RoPE {:?}, theta {}{})",
                c.architecture,
                c.rope_style,
                c.rope_theta,
                rope_scaling_words(c)
            ),
        ),
        ("parameters", params(s.parameters)),
        (
            "shape",
            format!(
                "{} layers, d_model {}, {} heads / {} KV heads × {}, ffn {}, vocab {}{}",
                c.num_layers,
                c.hidden_size,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim,
                c.intermediate_size,
                c.vocab_size,
                if c.tie_embeddings {
                    ", tied embeddings"
                } else {
                    ""
                }
            ),
        ),
        ("context", format!("{} tokens", c.max_context)),
        ("attention", attention_words(c)),
        ("experts", expert_words(s)),
        ("tensor types", types.join(", ")),
        (
            "weights",
            format!(
                "{} as stored (CPU), {} on a GPU (float matrices as bf16)",
                mib(s.weight_bytes),
                mib(s.gpu_weight_bytes)
            ),
        ),
        (
            "KV cache",
            format!(
                "{:.1} KiB/token (f32)",
                s.kv_bytes_per_token as f64 / 1024.0
            ),
        ),
        (
            "memory needed",
            format!(
                "{} with one full-context sequence",
                mib(s.memory_full_context_bytes)
            ),
        ),
        ("tokenizer", tokenizer),
        (
            "chat template",
            if s.chat_template {
                "yes"
            } else {
                "no (use raw prompts)"
            }
            .into(),
        ),
    ]
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let s = kr_engine::inspect_model(&args.path)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s).expect("a summary serialises")
        );
    } else {
        for (k, v) in table(&s) {
            println!("{k:<14} {v}");
        }
        for p in &s.problems {
            println!("{:<14} {p}", "problem");
        }
    }
    if !s.problems.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// The RoPE scaling in words: `, llama3 scaling`, `, YaRN ×4 from 32768`, … or nothing.
fn rope_scaling_words(c: &kr_engine::ModelConfig) -> String {
    use kr_engine::RopeExtension;
    let mut out = String::new();
    if c.rope_scaling.is_some() {
        out.push_str(", llama3 scaling");
    }
    match &c.attention.rope {
        RopeExtension::None => {}
        RopeExtension::Yarn {
            factor,
            original_max_position_embeddings: o,
            ..
        } => out.push_str(&format!(", YaRN ×{factor} from {o}")),
        RopeExtension::Linear(f) => out.push_str(&format!(", linear ×{f}")),
        RopeExtension::FreqFactors(_) => out.push_str(", frequency factors (rope_freqs)"),
        RopeExtension::LongRope {
            original_max_position_embeddings: o,
            ..
        } => out.push_str(&format!(", LongRoPE from {o}")),
    }
    out
}

/// Full causal attention, or the sliding window and which layers use it.
fn attention_words(c: &kr_engine::ModelConfig) -> String {
    let Some(w) = c.attention.sliding_window else {
        return "full causal on every layer".into();
    };
    let sliding = (0..c.num_layers)
        .filter(|&l| c.window_of_layer(l).is_some())
        .count();
    format!(
        "sliding window of {w} tokens on {sliding} of {} layers, full on the rest",
        c.num_layers
    )
}

/// `8 experts, 2 a token, in 1 of 2 layers; 0.1 M of 0.2 M parameters active`, or `none`.
fn expert_words(s: &kr_engine::ModelSummary) -> String {
    match &s.experts {
        None => "none (dense)".into(),
        Some(x) => format!(
            "{} experts, {} a token, in {} of {} layers; {} of {} parameters active",
            x.experts,
            x.top_k,
            x.layers,
            s.config.num_layers,
            params(x.active_parameters),
            params(s.parameters)
        ),
    }
}
