//! Prompt logprobs of /v1/completions (`echo` + `logprobs`), OpenAI's legacy semantics:
//! the prompt's tokens lead the logprobs object (the first with `null`), each scored given
//! the tokens before it. Checked against the engine's own generation logprobs (teacher
//! forcing), across prefix-cache hits and chunked prefill, and against transformers'
//! reference logits of SmolLM2.

mod common;
use common::*;
use kr_http::ServerConfig;
use serde_json::{json, Value};

/// Logprobs of the same rows computed in different batches agree to this (the CPU kernels
/// are batch-invariant, so they are usually bit-identical).
const SAME_ROW: f64 = 1e-4;
/// Against transformers: differences of two logits (measured logit error 7e-5 each).
const REFERENCE: f64 = 2e-3;

const PROMPT: &str = "The history of the city begins in the third century, when a small \
                      fishing village grew on the banks of the river and traders";

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

async fn completion(base: &str, body: Value) -> Value {
    let mut b = json!({"model": MODEL, "temperature": 0});
    for (k, v) in body.as_object().expect("object") {
        b[k] = v.clone();
    }
    let (status, out) = post(base, "/v1/completions", &b).await;
    assert_eq!(status, 200, "{out}");
    out
}

async fn token_ids(base: &str, text: &str) -> Vec<u64> {
    let (_, t) = post(base, "/tokenize", &json!({"prompt": text})).await;
    t["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(f)
        .map(|x| x as u64)
        .collect()
}

/// Every logprob is <= 0 and equals its own entry among the alternatives when present.
fn assert_consistent(lp: &Value) {
    let toks = lp["tokens"].as_array().unwrap();
    for (i, t) in toks.iter().enumerate() {
        let (l, top) = (&lp["token_logprobs"][i], &lp["top_logprobs"][i]);
        if l.is_null() {
            assert_eq!(i, 0, "only the first prompt token has no logprob");
            assert!(top.is_null());
            continue;
        }
        assert!(f(l) <= 0.0, "token {i}: logprob {l} > 0");
        if let Some(v) = top.get(t.as_str().unwrap()) {
            assert!((f(v) - f(l)).abs() < 1e-6, "token {i}: {l} vs top {v}");
        }
        let best = top
            .as_object()
            .unwrap()
            .values()
            .map(f)
            .fold(f64::MIN, f64::max);
        assert!(f(l) <= best + 1e-6, "token {i}: above the best alternative");
    }
    let offsets: Vec<f64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(f)
        .collect();
    assert_eq!(offsets.len(), toks.len());
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
}

fn assert_rows_equal(a: &Value, ai: usize, b: &Value, bi: usize) {
    let (x, y) = (f(&a["token_logprobs"][ai]), f(&b["token_logprobs"][bi]));
    assert!((x - y).abs() < SAME_ROW, "logprob {x} vs {y}");
    let (ta, tb) = (
        a["top_logprobs"][ai].as_object().unwrap(),
        b["top_logprobs"][bi].as_object().unwrap(),
    );
    assert_eq!(ta.len(), tb.len());
    for (k, v) in ta {
        let w = tb
            .get(k)
            .unwrap_or_else(|| panic!("{k:?} missing from {tb:?}"));
        assert!((f(v) - f(w)).abs() < SAME_ROW, "{k:?}: {v} vs {w}");
    }
}

/// Greedy generation, then the prompt plus what it generated sent back with `echo`: the
/// prompt rows of the generated tokens must equal their generation logprobs.
async fn teacher_forcing(base: &str) -> Value {
    let prompt = token_ids(base, PROMPT).await;
    let gen = completion(
        base,
        json!({"prompt": prompt, "max_tokens": 8, "logprobs": 5, "ignore_eos": true}),
    )
    .await;
    let glp = &gen["choices"][0]["logprobs"];
    let gen_ids = token_ids(base, gen["choices"][0]["text"].as_str().unwrap()).await;
    let mut full = prompt.clone();
    full.extend(&gen_ids);
    let echo = completion(
        base,
        json!({"prompt": full, "echo": true, "logprobs": 5, "max_tokens": 1}),
    )
    .await;
    let c = &echo["choices"][0];
    let lp = &c["logprobs"];
    assert_consistent(lp);
    let n = full.len();
    assert_eq!(
        lp["tokens"].as_array().unwrap().len(),
        n + 1,
        "prompt tokens then 1 generated"
    );
    assert!(c["text"].as_str().unwrap().starts_with(PROMPT));
    if gen_ids.len() == 8 {
        // The generated text re-tokenised to the same 8 ids: compare every row.
        for k in 0..8 {
            assert_rows_equal(lp, prompt.len() + k, glp, k);
        }
    } else {
        assert_rows_equal(lp, prompt.len(), glp, 0);
    }
    // Greedy: the token generated after the prompt is its row's most likely one.
    let (l, top) = (
        f(&lp["token_logprobs"][n]),
        lp["top_logprobs"][n].as_object().unwrap(),
    );
    assert!(top.values().map(f).all(|v| v <= l + 1e-6));
    echo
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn echoed_prompt_logprobs_match_generation_logprobs_with_and_without_prefix_cache() {
    let Some(_) = smollm2() else { return };
    let base = shared();
    let (_, m0) = get(base, "/metrics").await;
    let echo = teacher_forcing(base).await;
    let (_, m1) = get(base, "/metrics").await;
    let hits = |m: &str| metric(m, "kr_prefix_cache_hits_total").unwrap();
    assert!(
        hits(&m1) > hits(&m0),
        "the echo request should reuse the cached prompt"
    );
    // The same with prefix caching off and 7-token prefill chunks: the same numbers.
    let server = spawn(
        engine(|c| {
            c.enable_prefix_caching = false;
            c.max_num_batched_tokens = 7;
        }),
        ServerConfig::default(),
    );
    let chunked = teacher_forcing(&server.base).await;
    let (a, b) = (
        &echo["choices"][0]["logprobs"],
        &chunked["choices"][0]["logprobs"],
    );
    assert_eq!(a["tokens"], b["tokens"]);
    for i in 1..a["tokens"].as_array().unwrap().len() {
        assert_rows_equal(a, i, b, i);
    }
    server.join().expect("clean shutdown");
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn echo_with_max_tokens_zero_answers_the_scored_prompt_alone() {
    let Some(_) = smollm2() else { return };
    let base = shared();
    let prompt = token_ids(base, PROMPT).await;
    let full = completion(
        base,
        json!({"prompt": PROMPT, "echo": true, "logprobs": 3, "max_tokens": 4}),
    )
    .await;
    let only = completion(
        base,
        json!({"prompt": PROMPT, "echo": true, "logprobs": 3, "max_tokens": 0}),
    )
    .await;
    let c = &only["choices"][0];
    assert_eq!(c["text"], json!(PROMPT));
    assert_eq!(c["finish_reason"], json!("length"));
    assert_eq!(only["usage"]["completion_tokens"], json!(0));
    assert_eq!(only["usage"]["prompt_tokens"], json!(prompt.len()));
    let lp = &c["logprobs"];
    assert_consistent(lp);
    assert_eq!(lp["tokens"].as_array().unwrap().len(), prompt.len());
    let joined: String = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(joined, PROMPT);
    let flp = &full["choices"][0]["logprobs"];
    for i in 1..prompt.len() {
        assert_rows_equal(lp, i, flp, i);
    }
    // Without echo, max_tokens 0 stays an error naming the field.
    let (status, err) = post(
        base,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Hi", "max_tokens": 0}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], json!("max_tokens"));
    // Without logprobs, echo + max_tokens 0 is the prompt and nothing else.
    let plain = completion(
        base,
        json!({"prompt": PROMPT, "echo": true, "max_tokens": 0}),
    )
    .await;
    assert_eq!(plain["choices"][0]["text"], json!(PROMPT));
    assert!(plain["choices"][0]["logprobs"].is_null());
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn streamed_echo_carries_the_prompt_logprobs_in_its_first_chunk() {
    let Some(_) = smollm2() else { return };
    let base = shared();
    let body = |stream: bool, max: u32| {
        json!({"model": MODEL, "prompt": PROMPT, "echo": true,
        "logprobs": 2, "max_tokens": max, "temperature": 0, "stream": stream})
    };
    let (_, whole) = post(base, "/v1/completions", &body(false, 3)).await;
    let events = post_sse(base, "/v1/completions", &body(true, 3)).await;
    let first = &events[0]["choices"][0];
    assert_eq!(first["text"], json!(PROMPT));
    let n = token_ids(base, PROMPT).await.len();
    let wlp = &whole["choices"][0]["logprobs"];
    assert_eq!(
        first["logprobs"]["tokens"],
        json!(wlp["tokens"].as_array().unwrap()[..n])
    );
    for i in 1..n {
        assert_rows_equal(&first["logprobs"], i, wlp, i);
    }
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"].get(0)?["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    // Offsets continue after the echo: the first generated token starts at the prompt's end.
    assert_eq!(
        events[1]["choices"][0]["logprobs"]["text_offset"][0],
        json!(PROMPT.chars().count())
    );
    // max_tokens 0: the echo chunk, then the finish, nothing generated.
    let only = post_sse(base, "/v1/completions", &body(true, 0)).await;
    let texts: Vec<&str> = only
        .iter()
        .filter_map(|e| e["choices"].get(0)?["text"].as_str())
        .collect();
    assert_eq!(texts, vec![PROMPT, ""]);
    assert_eq!(only[1]["choices"][0]["finish_reason"], json!("length"));
}

/// transformers' logits at the last position of each reference prompt (top 20) against
/// the prompt row of that position when the reference's greedy token is appended: the
/// logprob differences equal the logit differences. (The reference's other rows hold only
/// every 64th id, and a log-softmax needs the whole row, so they are not comparable.)
#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn prompt_rows_agree_with_transformers_reference_logits() {
    let Some(_) = smollm2() else { return };
    let base = shared();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/reference/smollm2_hf_reference.json"
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("reference")).unwrap();
    let mut worst = 0f64;
    for p in r["prompts"].as_array().unwrap() {
        let mut ids: Vec<u64> = p["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(f)
            .map(|x| x as u64)
            .collect();
        let last = ids.len() - 1;
        let top20 = p["logits"]["last_top20"].as_array().unwrap();
        let best = top20[0]["id"].as_u64().unwrap();
        assert_eq!(best, p["logits"]["last_argmax"].as_u64().unwrap());
        ids.push(best);
        let out = completion(
            base,
            json!({"prompt": ids, "echo": true, "logprobs": 20, "max_tokens": 0}),
        )
        .await;
        let lp = &out["choices"][0]["logprobs"];
        assert_consistent(lp);
        let row = lp["top_logprobs"][last + 1].as_object().unwrap();
        let chosen = f(&lp["token_logprobs"][last + 1]);
        // Sorted values: robust to near-ties swapping places.
        let mut ours: Vec<f64> = row.values().map(f).collect();
        ours.sort_by(|a, b| b.total_cmp(a));
        assert!(
            (ours[0] - chosen).abs() < 1e-6,
            "the reference argmax is our most likely token"
        );
        for (k, t) in top20.iter().enumerate().take(ours.len()) {
            let want = f(&t["logit"]) - f(&top20[0]["logit"]);
            let got = ours[k] - ours[0];
            worst = worst.max((want - got).abs());
            assert!(
                (want - got).abs() < REFERENCE,
                "{}: rank {k}: {got} vs {want}",
                p["kind"]
            );
        }
        // By identity: each reference token's logprob gap to the argmax.
        for t in top20.iter().take(10) {
            let (_, d) = post(base, "/detokenize", &json!({"tokens": [t["id"]]})).await;
            let Some(v) = row.get(d["prompt"].as_str().unwrap()) else {
                continue;
            };
            let want = f(&t["logit"]) - f(&top20[0]["logit"]);
            assert!(
                (f(v) - chosen - want).abs() < REFERENCE,
                "id {}: {} vs {want}",
                t["id"],
                f(v) - chosen
            );
        }
    }
    println!("largest |logprob gap - reference logit gap| over the top-20 rows: {worst:.2e}");
}
