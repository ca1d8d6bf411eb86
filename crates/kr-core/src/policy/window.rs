//! The adaptive admission window, after mlx-serving's AdaptiveWindowController.
//!
//! Each engine turn samples the queue depth into an exponential moving average; the EMA
//! picks a target level (depth <= `low_depth` → low window, <= `medium_depth` → medium, else
//! high). The window moves to a new level only after `hysteresis` consecutive samples agree
//! on that same target, so alternating load cannot make it oscillate; every move is counted.
//!
//! Invariants: the current window is always one of the three configured windows; the
//! transition counters only grow; the controller starts at the medium level, as the
//! original did.

use std::time::Duration;

/// The three load levels of the adaptive window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowLevel {
    Low,
    Medium,
    High,
}

impl WindowLevel {
    pub const ALL: [WindowLevel; 3] = [WindowLevel::Low, WindowLevel::Medium, WindowLevel::High];

    /// The label used in metrics (`kr_scheduler_window_transitions_total{window}`).
    pub fn name(self) -> &'static str {
        match self {
            WindowLevel::Low => "low",
            WindowLevel::Medium => "medium",
            WindowLevel::High => "high",
        }
    }
}

/// Settings of the adaptive window; the defaults are mlx-serving's.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConfig {
    /// EMA depth at or below which the low window is used.
    pub low_depth: f64,
    /// EMA depth at or below which the medium window is used (above: high).
    pub medium_depth: f64,
    pub low: Duration,
    pub medium: Duration,
    pub high: Duration,
    /// Weight of the newest sample in the EMA, in (0, 1].
    pub alpha: f64,
    /// Consecutive samples with the same new target needed before the window moves.
    pub hysteresis: u32,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            low_depth: 1.0,
            medium_depth: 5.0,
            low: Duration::from_micros(750),
            medium: Duration::from_millis(1),
            high: Duration::from_millis(2),
            alpha: 0.5,
            hysteresis: 3,
        }
    }
}

impl AdaptiveConfig {
    pub fn window(&self, level: WindowLevel) -> Duration {
        match level {
            WindowLevel::Low => self.low,
            WindowLevel::Medium => self.medium,
            WindowLevel::High => self.high,
        }
    }

    /// The level an EMA queue depth asks for.
    pub fn target(&self, ema: f64) -> WindowLevel {
        if ema <= self.low_depth {
            WindowLevel::Low
        } else if ema <= self.medium_depth {
            WindowLevel::Medium
        } else {
            WindowLevel::High
        }
    }
}

/// A move of the window from one level to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: WindowLevel,
    pub to: WindowLevel,
}

/// The adaptive window's state: EMA, current level, pending target and counters.
#[derive(Debug, Clone)]
pub struct AdaptiveWindow {
    cfg: AdaptiveConfig,
    ema: Option<f64>,
    current: WindowLevel,
    pending: WindowLevel,
    streak: u32,
    transitions: [u64; 3],
}

impl AdaptiveWindow {
    pub fn new(cfg: AdaptiveConfig) -> Self {
        Self {
            cfg,
            ema: None,
            current: WindowLevel::Medium,
            pending: WindowLevel::Medium,
            streak: 0,
            transitions: [0; 3],
        }
    }

    pub fn config(&self) -> &AdaptiveConfig {
        &self.cfg
    }
    pub fn level(&self) -> WindowLevel {
        self.current
    }
    pub fn window(&self) -> Duration {
        self.cfg.window(self.current)
    }
    /// The EMA of the queue depth (0 before the first sample).
    pub fn ema(&self) -> f64 {
        self.ema.unwrap_or(0.0)
    }
    /// Transitions into `level` so far.
    pub fn transitions_to(&self, level: WindowLevel) -> u64 {
        self.transitions[level as usize]
    }

    /// Takes one queue-depth sample; returns the transition it caused, if any.
    pub fn observe(&mut self, depth: usize) -> Option<Transition> {
        let d = depth as f64;
        let alpha = self.cfg.alpha.clamp(f64::MIN_POSITIVE, 1.0);
        let ema = match self.ema {
            None => d,
            Some(e) => alpha * d + (1.0 - alpha) * e,
        };
        self.ema = Some(ema);
        let target = self.cfg.target(ema);
        if target == self.current {
            // Back at the current level: any pending move is forgotten.
            self.streak = 0;
            self.pending = target;
            return None;
        }
        if target == self.pending {
            self.streak += 1;
        } else {
            self.pending = target;
            self.streak = 1;
        }
        if self.streak < self.cfg.hysteresis.max(1) {
            return None;
        }
        let t = Transition {
            from: self.current,
            to: target,
        };
        self.current = target;
        self.streak = 0;
        self.transitions[target as usize] += 1;
        Some(t)
    }
}
