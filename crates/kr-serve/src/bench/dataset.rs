//! Seeded benchmark workloads: random prompts, a questions file (one prompt a line) and
//! ShareGPT-format JSON conversations.
//!
//! Invariants: the same arguments and seed give the same samples, in the same order, on
//! any machine; a loader that finds no usable prompt is an error naming the file, never an
//! empty workload. Lengths of text we cannot tokenise (the server's model is unknown here)
//! are estimated: a random prompt of N words is about N tokens (common English words are
//! one token each in BPE vocabularies), a ShareGPT reply of C characters about C/4 tokens.

use crate::error::{CliError, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// One request of a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub prompt: String,
    /// Tokens to generate (sent as `max_tokens`).
    pub max_tokens: u32,
}

/// Words random prompts are made of: common, each a single token in the usual vocabularies.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "it", "by",
    "at", "from", "his", "her", "an", "were", "are", "which", "this", "be", "or", "has", "had",
    "one", "first", "new", "after", "who", "two", "they", "she", "he", "all", "when", "time",
    "year", "city", "school", "world", "house", "water", "day", "life", "work", "river", "music",
    "game", "book", "light", "story", "small", "great", "old", "long", "people", "place", "name",
    "part", "home", "king",
];

/// A seeded generator for everything random in a benchmark.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A length drawn uniformly from `len·(1−ratio) ..= len·(1+ratio)`, at least 1.
fn draw_len(rng: &mut ChaCha8Rng, len: usize, ratio: f64) -> usize {
    let lo = ((len as f64) * (1.0 - ratio)).round().max(1.0) as usize;
    let hi = ((len as f64) * (1.0 + ratio)).round().max(lo as f64) as usize;
    rng.random_range(lo..=hi)
}

/// `n` random prompts of about `input_len` words asking for about `output_len` tokens.
pub fn random(n: usize, input_len: usize, output_len: usize, ratio: f64, seed: u64) -> Vec<Sample> {
    let mut rng = rng(seed);
    (0..n)
        .map(|_| {
            let words = draw_len(&mut rng, input_len, ratio);
            let prompt = (0..words)
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect::<Vec<_>>()
                .join(" ");
            let max_tokens = draw_len(&mut rng, output_len, ratio) as u32;
            Sample { prompt, max_tokens }
        })
        .collect()
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read dataset {}: {e}", path.display())))
}

/// The non-empty lines of a questions file, in order, repeated to make `n` samples
/// (`n = 0`: each line once).
pub fn questions(path: &Path, n: usize, max_tokens: u32) -> Result<Vec<Sample>> {
    let text = read(path)?;
    parse_questions(&text, n, max_tokens).ok_or_else(|| {
        CliError::Usage(format!(
            "dataset {} has no questions (expected one per line)",
            path.display()
        ))
    })
}

/// [`questions`] on text; `None` when it has no non-empty line.
pub fn parse_questions(text: &str, n: usize, max_tokens: u32) -> Option<Vec<Sample>> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return None;
    }
    let n = if n == 0 { lines.len() } else { n };
    Some(
        lines
            .iter()
            .cycle()
            .take(n)
            .map(|q| Sample {
                prompt: q.to_string(),
                max_tokens,
            })
            .collect(),
    )
}

/// Samples from a ShareGPT-format file: a JSON array of `{"conversations": [{"from":
/// "human", "value": …}, {"from": "gpt", "value": …}, …]}`. The first human turn is the
/// prompt; the reply after it sets `max_tokens` (about chars/4) unless `fixed_max_tokens`
/// is given. Conversations without such a pair are skipped; the rest are shuffled with
/// `seed` and the first `n` taken (`n = 0`: all).
pub fn sharegpt(
    path: &Path,
    n: usize,
    fixed_max_tokens: Option<u32>,
    seed: u64,
) -> Result<Vec<Sample>> {
    let text = read(path)?;
    parse_sharegpt(&text, n, fixed_max_tokens, seed)
        .map_err(|why| CliError::Usage(format!("dataset {}: {why}", path.display())))
}

/// [`sharegpt`] on text; `Err` says what is wrong with it.
pub fn parse_sharegpt(
    text: &str,
    n: usize,
    fixed_max_tokens: Option<u32>,
    seed: u64,
) -> std::result::Result<Vec<Sample>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let items = value
        .as_array()
        .ok_or("expected a JSON array of conversations")?;
    let mut samples: Vec<Sample> = items
        .iter()
        .filter_map(|item| {
            let turns = item.get("conversations")?.as_array()?;
            let (prompt, reply) = first_exchange(turns)?;
            let estimated = (reply.chars().count() as f64 / 4.0).ceil().max(1.0) as u32;
            Some(Sample {
                prompt: prompt.to_string(),
                max_tokens: fixed_max_tokens.unwrap_or(estimated),
            })
        })
        .collect();
    if samples.is_empty() {
        return Err("no conversation with a human turn followed by a reply".into());
    }
    samples.shuffle(&mut rng(seed));
    if n > 0 {
        samples.truncate(n);
    }
    Ok(samples)
}

/// The first human (or user) turn with text and the assistant turn right after it.
fn first_exchange(turns: &[serde_json::Value]) -> Option<(&str, &str)> {
    let field = |t: &serde_json::Value, a: &str, b: &str| -> Option<String> {
        t.get(a).or_else(|| t.get(b))?.as_str().map(str::to_string)
    };
    let i = turns.iter().position(|t| {
        matches!(field(t, "from", "role").as_deref(), Some("human" | "user"))
            && t.get("value")
                .or_else(|| t.get("content"))
                .and_then(|v| v.as_str())
                .is_some_and(|s| !s.trim().is_empty())
    })?;
    let prompt = turns[i]
        .get("value")
        .or_else(|| turns[i].get("content"))?
        .as_str()?;
    let next = turns.get(i + 1)?;
    if !matches!(
        field(next, "from", "role").as_deref(),
        Some("gpt" | "assistant" | "chatgpt" | "bard")
    ) {
        return None;
    }
    let reply = next
        .get("value")
        .or_else(|| next.get("content"))?
        .as_str()?;
    Some((prompt, reply))
}

/// Arrival offsets (seconds from the start) of `n` requests at `rate` per second: a
/// seeded Poisson process (exponential gaps). An infinite rate sends everything at once.
pub fn poisson_arrivals(n: usize, rate: f64, seed: u64) -> Vec<f64> {
    if !rate.is_finite() {
        return vec![0.0; n];
    }
    let mut rng = rng(seed ^ 0x5eed_a771);
    let mut t = 0.0;
    (0..n)
        .map(|_| {
            let u: f64 = rng.random();
            t += -(1.0 - u).ln() / rate;
            t
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_is_seeded_and_within_range() {
        let a = random(20, 100, 50, 0.5, 7);
        assert_eq!(a, random(20, 100, 50, 0.5, 7));
        assert_ne!(a, random(20, 100, 50, 0.5, 8));
        for s in &a {
            let words = s.prompt.split(' ').count();
            assert!((50..=150).contains(&words), "{words} words");
            assert!((25..=75).contains(&s.max_tokens));
        }
        let fixed = random(3, 10, 5, 0.0, 1);
        assert!(fixed
            .iter()
            .all(|s| s.prompt.split(' ').count() == 10 && s.max_tokens == 5));
    }

    #[test]
    fn questions_skip_blank_lines_and_cycle() {
        let s = parse_questions("a?\n\n  b? \n", 5, 9).unwrap();
        let p: Vec<_> = s.iter().map(|s| s.prompt.as_str()).collect();
        assert_eq!(p, ["a?", "b?", "a?", "b?", "a?"]);
        assert!(s.iter().all(|s| s.max_tokens == 9));
        assert_eq!(parse_questions("x\ny\n", 0, 1).unwrap().len(), 2);
        assert_eq!(parse_questions(" \n\n", 3, 1), None);
    }

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sharegpt_sample.json"
    );

    #[test]
    fn sharegpt_fixture_keeps_complete_exchanges() {
        let all = sharegpt(Path::new(FIXTURE), 0, None, 1).unwrap();
        let mut got: Vec<(String, u32)> = all
            .iter()
            .map(|s| (s.prompt.clone(), s.max_tokens))
            .collect();
        got.sort();
        // Skipped: no reply (c3), no question (d4), blank question (e5), not a list (g7).
        // max_tokens = ceil(reply chars / 4) of the first reply.
        let want = [
            ("Once upon a time there was a little dog", 10),
            ("Tell me about a cat", 3),
            ("The sun was warm", 11),
        ];
        assert_eq!(got, want.map(|(p, n)| (p.to_string(), n)).to_vec());
        // Seeded shuffle: same seed, same order; n truncates; a fixed max_tokens wins.
        assert_eq!(all, sharegpt(Path::new(FIXTURE), 0, None, 1).unwrap());
        let two = sharegpt(Path::new(FIXTURE), 2, Some(5), 1).unwrap();
        assert_eq!(two.len(), 2);
        assert!(two.iter().all(|s| s.max_tokens == 5));
    }

    #[test]
    fn sharegpt_errors_name_the_problem() {
        assert!(parse_sharegpt("{", 0, None, 0)
            .unwrap_err()
            .contains("not JSON"));
        assert!(parse_sharegpt("{}", 0, None, 0)
            .unwrap_err()
            .contains("array"));
        assert!(parse_sharegpt("[{}]", 0, None, 0)
            .unwrap_err()
            .contains("no conversation"));
        let e = sharegpt(Path::new("/nonexistent.json"), 0, None, 0).unwrap_err();
        assert!(e.to_string().contains("/nonexistent.json"));
    }

    #[test]
    fn poisson_arrivals_are_increasing_with_the_right_mean() {
        let a = poisson_arrivals(4000, 10.0, 3);
        assert!(a.windows(2).all(|w| w[1] >= w[0]));
        // 4000 gaps of mean 0.1 s: the total is 400 s within a few percent.
        let total = a[a.len() - 1];
        assert!((360.0..440.0).contains(&total), "{total}");
        assert_eq!(a, poisson_arrivals(4000, 10.0, 3));
        assert_eq!(poisson_arrivals(3, f64::INFINITY, 1), vec![0.0; 3]);
    }
}
