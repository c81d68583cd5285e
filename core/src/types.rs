//! Small newtypes that keep times, turn ids and sample rates from being mixed up.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// An instant on a session's monotonic clock: the time elapsed since the session started.
///
/// The core never reads a clock; the IO driver measures `Time` and passes it in with every input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(Duration);

impl Time {
    /// The session's start.
    pub const ZERO: Time = Time(Duration::ZERO);

    /// A time `d` after the session started.
    pub const fn from_duration(d: Duration) -> Self {
        Time(d)
    }

    /// A time `ms` milliseconds after the session started.
    pub const fn from_millis(ms: u64) -> Self {
        Time(Duration::from_millis(ms))
    }

    /// The time since the session started.
    pub const fn since_start(self) -> Duration {
        self.0
    }

    /// Milliseconds since the session started, as sent to clients in `at_ms` and `timings`.
    pub fn as_millis_f64(self) -> f64 {
        self.0.as_secs_f64() * 1000.0
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    /// Saturates: a time too far away to represent is "never".
    fn add(self, rhs: Duration) -> Time {
        Time(self.0.saturating_add(rhs))
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, rhs: Time) -> Duration {
        self.saturating_since(rhs)
    }
}

/// Identifies one user turn and the response to it. Allocated by the session in increasing order.
///
/// Every provider call is tagged with the turn it serves; an event for a turn that is no longer
/// current is dropped by comparing ids, so a cancelled turn can never leak output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TurnId(pub u64);

impl fmt::Display for TurnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A sample rate in Hz. All PCM in voxd is mono, signed 16-bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SampleRate(pub u32);

impl SampleRate {
    /// The rate the core works at internally (VAD, utterances for ASR).
    pub const INTERNAL: SampleRate = SampleRate(16_000);

    /// The rate in Hz.
    pub const fn hz(self) -> u32 {
        self.0
    }

    /// Number of samples in `d` at this rate (rounded down).
    pub fn samples_in(self, d: Duration) -> u64 {
        (d.as_nanos() * u128::from(self.0) / 1_000_000_000) as u64
    }

    /// Number of samples in `ms` milliseconds at this rate.
    pub const fn samples_in_ms(self, ms: u64) -> u64 {
        ms * self.0 as u64 / 1000
    }

    /// The duration of `samples` samples at this rate.
    pub fn duration_of(self, samples: u64) -> Duration {
        Duration::from_nanos((u128::from(samples) * 1_000_000_000 / u128::from(self.0)) as u64)
    }

    /// The duration of `samples` samples in milliseconds (fractional).
    pub fn ms_of(self, samples: u64) -> f64 {
        samples as f64 * 1000.0 / f64::from(self.0)
    }
}

impl fmt::Display for SampleRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} Hz", self.0)
    }
}
