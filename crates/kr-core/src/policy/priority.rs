//! Request priorities and aging.
//!
//! A request has a base [`Priority`]; while it waits, aging raises its effective rank by one
//! level per `aging_step` of waiting, without a cap. So a waiting request eventually outranks
//! any newer arrival, urgent ones included: nothing starves. Pure: the time is an argument.

use std::time::Duration;

/// How urgent a request is. Ordered: `Low < Normal < High < Urgent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    /// Skips any admission window and is admitted first.
    Urgent,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Urgent,
    ];

    /// The lowercase name used on the wire and in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }

    /// The base rank: 0 (low) to 3 (urgent).
    pub fn rank(self) -> u64 {
        self as u64
    }

    /// The rank after waiting since `arrival` until `now`: one level more per full
    /// `aging_step` (no aging when `aging_step` is `None` or zero).
    pub fn effective_rank(
        self,
        arrival: Duration,
        now: Duration,
        aging_step: Option<Duration>,
    ) -> u64 {
        let aged = match aging_step {
            Some(step) if !step.is_zero() => {
                let waited = now.saturating_sub(arrival);
                (waited.as_nanos() / step.as_nanos()).min(u64::MAX as u128) as u64
            }
            _ => 0,
        };
        self.rank().saturating_add(aged)
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    /// Accepts the names (any case) and the ranks `0`..=`3`.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        Priority::ALL
            .into_iter()
            .find(|p| p.name() == t || p.rank().to_string() == t)
            .ok_or_else(|| {
                format!("invalid priority `{s}`; allowed: low, normal, high, urgent (or 0..=3)")
            })
    }
}
