//! A streaming OpenAI-compatible client that times one request as the user sees it.
//!
//! It posts to `/v1/chat/completions` or `/v1/completions` with `stream: true` and reads
//! the SSE body as it arrives: TTFT is the time to the first chunk carrying text, each
//! later text chunk is one inter-token gap (servers that stream a token per chunk, as
//! kr-serve, vLLM and llama-server do by default), and the token count comes from the
//! final `usage` chunk when the server sends one (`stream_options.include_usage`), else
//! from the number of text chunks. A request fails on a non-200 status, an `error` in the
//! stream, or a body that ends without `[DONE]`; failures are counted, never timed.

use super::dataset::Sample;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Which OpenAI route to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `/v1/chat/completions`: the prompt goes as one user message (the server applies its
    /// chat template).
    Chat,
    /// `/v1/completions`: the prompt goes as raw text.
    Completions,
}

/// Where and how to send requests.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL, e.g. `http://127.0.0.1:8080` (a trailing `/v1` is accepted).
    pub base: String,
    pub endpoint: Endpoint,
    pub model: String,
    pub api_key: Option<String>,
    pub ignore_eos: bool,
    pub temperature: f32,
}

impl Target {
    pub fn url(&self) -> String {
        let base = self.base.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        match self.endpoint {
            Endpoint::Chat => format!("{base}/v1/chat/completions"),
            Endpoint::Completions => format!("{base}/v1/completions"),
        }
    }

    /// The JSON body for `sample` with `seed`.
    pub fn body(&self, sample: &Sample, seed: u64) -> Value {
        let mut body = json!({
            "model": self.model,
            "max_tokens": sample.max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": self.temperature,
            "seed": seed,
        });
        match self.endpoint {
            Endpoint::Chat => {
                body["messages"] = json!([{"role": "user", "content": sample.prompt}])
            }
            Endpoint::Completions => body["prompt"] = json!(sample.prompt),
        }
        if self.ignore_eos {
            // vLLM's and llama-server's extension (kr-serve accepts it too).
            body["ignore_eos"] = json!(true);
        }
        body
    }
}

/// What one request measured (seconds).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub error: Option<String>,
    pub ttft: f64,
    pub e2e: f64,
    /// Gaps between successive text chunks after the first.
    pub itl: Vec<f64>,
    pub output_tokens: usize,
    pub prompt_tokens: Option<usize>,
    /// Offset of the request's start from the benchmark's start.
    pub start_offset: f64,
    /// The generated text (to check that two paths generated the same thing).
    pub text: String,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
    /// Time per output token after the first; `None` for single-token answers.
    pub fn tpot(&self) -> Option<f64> {
        (self.output_tokens > 1).then(|| (self.e2e - self.ttft) / (self.output_tokens - 1) as f64)
    }
}

/// Parser state of one SSE stream.
#[derive(Default)]
struct SseState {
    buf: Vec<u8>,
    first: Option<Instant>,
    last: Option<Instant>,
    itl: Vec<f64>,
    chunks: usize,
    usage_completion: Option<usize>,
    usage_prompt: Option<usize>,
    text: String,
    done: bool,
    error: Option<String>,
}

impl SseState {
    /// Takes the complete events out of the buffer (events end with a blank line).
    fn feed(&mut self, bytes: &[u8], now: Instant) {
        self.buf.extend_from_slice(bytes);
        while let Some((end, skip)) = find_event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..end + skip).take(end).collect();
            for line in String::from_utf8_lossy(&event).lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    self.data(data.trim(), now);
                }
            }
        }
    }

    fn data(&mut self, data: &str, now: Instant) {
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            self.error
                .get_or_insert_with(|| format!("bad SSE data: {data:.200}"));
            return;
        };
        if let Some(e) = v.get("error") {
            self.error.get_or_insert_with(|| e.to_string());
            return;
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage_completion = u["completion_tokens"].as_u64().map(|x| x as usize);
            self.usage_prompt = u["prompt_tokens"].as_u64().map(|x| x as usize);
        }
        let choice = &v["choices"][0];
        let text = choice["delta"]["content"]
            .as_str()
            .or(choice["text"].as_str());
        if let Some(t) = text.filter(|t| !t.is_empty()) {
            self.text.push_str(t);
            if let Some(last) = self.last {
                self.itl.push((now - last).as_secs_f64());
            }
            self.first.get_or_insert(now);
            self.last = Some(now);
            self.chunks += 1;
        }
    }
}

/// The end of the first complete SSE event in `buf` and the separator's length.
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Sends `sample` and times it; `t0` is the benchmark's start (for `start_offset`).
pub async fn send(
    client: &reqwest::Client,
    target: &Target,
    sample: &Sample,
    seed: u64,
    t0: Instant,
    timeout: Duration,
) -> Outcome {
    let start = Instant::now();
    let mut out = Outcome {
        start_offset: (start - t0).as_secs_f64(),
        ..Outcome::default()
    };
    let mut st = SseState::default();
    let result =
        tokio::time::timeout(timeout, stream_into(client, target, sample, seed, &mut st)).await;
    let end = Instant::now();
    out.error = match result {
        Err(_) => Some(format!("timed out after {:.0} s", timeout.as_secs_f64())),
        Ok(Err(e)) => Some(e),
        Ok(Ok(())) if st.error.is_some() => st.error.take(),
        Ok(Ok(())) if !st.done => Some("the stream ended without [DONE]".into()),
        Ok(Ok(())) if st.first.is_none() => Some("the answer had no text".into()),
        Ok(Ok(())) => None,
    };
    out.e2e = (end - start).as_secs_f64();
    out.ttft = st.first.map_or(out.e2e, |f| (f - start).as_secs_f64());
    out.itl = st.itl;
    out.output_tokens = st.usage_completion.unwrap_or(st.chunks);
    out.prompt_tokens = st.usage_prompt;
    out.text = st.text;
    out
}

async fn stream_into(
    client: &reqwest::Client,
    target: &Target,
    sample: &Sample,
    seed: u64,
    st: &mut SseState,
) -> Result<(), String> {
    use futures_util::StreamExt;
    let mut req = client.post(target.url()).json(&target.body(sample, seed));
    if let Some(key) = &target.api_key {
        req = req.bearer_auth(key);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("HTTP {status}: {body:.300}"));
    }
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("reading the stream: {e}"))?;
        st.feed(&chunk, Instant::now());
        if st.done || st.error.is_some() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_times_text_chunks_and_reads_usage() {
        let t = Instant::now();
        let mut st = SseState::default();
        let role = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n";
        st.feed(role.as_bytes(), t);
        assert!(st.first.is_none());
        let a = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choi";
        st.feed(a.as_bytes(), t + Duration::from_millis(10));
        assert_eq!(st.chunks, 1);
        let b = "ces\":[{\"text\":\" there\"}]}\r\n\r\n: keep-alive\n\n";
        st.feed(b.as_bytes(), t + Duration::from_millis(30));
        assert_eq!(st.chunks, 2);
        assert!((st.itl[0] - 0.02).abs() < 1e-9);
        let u = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\ndata: [DONE]\n\n";
        st.feed(u.as_bytes(), t + Duration::from_millis(40));
        assert!(st.done);
        assert_eq!((st.usage_prompt, st.usage_completion), (Some(5), Some(7)));
        assert!(st.error.is_none());
    }

    #[test]
    fn sse_error_event_fails_the_request() {
        let mut st = SseState::default();
        st.feed(
            b"data: {\"error\":{\"message\":\"boom\"}}\n\n",
            Instant::now(),
        );
        assert!(st.error.as_deref().unwrap().contains("boom"));
    }

    #[test]
    fn body_carries_ignore_eos_and_the_prompt() {
        let t = Target {
            base: "http://x:1/v1/".into(),
            endpoint: Endpoint::Completions,
            model: "m".into(),
            api_key: None,
            ignore_eos: true,
            temperature: 0.0,
        };
        assert_eq!(t.url(), "http://x:1/v1/completions");
        let s = Sample {
            prompt: "p".into(),
            max_tokens: 3,
        };
        let b = t.body(&s, 9);
        assert_eq!(
            (b["prompt"].as_str(), b["max_tokens"].as_u64()),
            (Some("p"), Some(3))
        );
        assert_eq!(
            (b["ignore_eos"].as_bool(), b["seed"].as_u64()),
            (Some(true), Some(9))
        );
        assert!(b.get("messages").is_none());
    }
}
