//! Per-session limits on what a client sends: message sizes and rates.
//!
//! - A text frame over `limits.max_text_bytes` or an audio frame over
//!   `limits.max_audio_frame_bytes` closes the session with 1009 ("message too big").
//! - Audio faster than `limits.max_audio_rate` × real time (beyond a burst of `audio_burst_ms`) and
//!   control messages faster than `max_control_per_s` (beyond `control_burst`) are rate-limited
//!   with GCRA token buckets (the `governor` crate). A limited message is dropped and adds a
//!   strike; an admitted one takes a strike away. The first strike gets a non-fatal `error`
//!   (`rate_limited`); `rate_limit_strikes` strikes close the session with 1008 ("policy
//!   violation"). Because an admitted message only takes one strike away, a flood that the bucket
//!   lets through now and then still adds up.
//!
//! The limiters belong to the session; no state is shared between sessions, and checking a frame
//! takes no lock.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use voxd_core::SampleRate;

use crate::config::LimitsSection;

/// What to do with a client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Admit {
    /// Process it.
    Yes,
    /// Drop it and send this non-fatal error (the first of a run of limited messages).
    Warn(&'static str, String),
    /// Drop it silently (a run of limited messages is going on).
    Drop,
    /// Close the session with this code and reason.
    Close(u16, &'static str),
}

/// One session's limits.
pub(super) struct ClientLimits {
    max_text: usize,
    max_audio: usize,
    audio: DefaultDirectRateLimiter,
    control: DefaultDirectRateLimiter,
    strikes: u32,
    max_strikes: u32,
    audio_rate: f64,
    control_rate: u32,
}

impl std::fmt::Debug for ClientLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimits")
            .field("strikes", &self.strikes)
            .finish_non_exhaustive()
    }
}

fn nz(n: u64) -> NonZeroU32 {
    NonZeroU32::new(n.clamp(1, u64::from(u32::MAX)) as u32).expect("clamped to at least 1")
}

impl ClientLimits {
    /// The limits of a session whose audio arrives at `input_rate`. The audio bucket counts bytes
    /// (2 per sample).
    pub(super) fn new(cfg: &LimitsSection, input_rate: SampleRate) -> Self {
        let bytes_per_s = f64::from(input_rate.hz()) * 2.0;
        let audio = Quota::per_second(nz((bytes_per_s * cfg.max_audio_rate) as u64))
            .allow_burst(nz((bytes_per_s * cfg.audio_burst_ms as f64 / 1000.0) as u64));
        let control = Quota::per_second(nz(u64::from(cfg.max_control_per_s)))
            .allow_burst(nz(u64::from(cfg.control_burst)));
        ClientLimits {
            max_text: cfg.max_text_bytes,
            max_audio: cfg.max_audio_frame_bytes,
            audio: RateLimiter::direct(audio),
            control: RateLimiter::direct(control),
            strikes: 0,
            max_strikes: cfg.rate_limit_strikes,
            audio_rate: cfg.max_audio_rate,
            control_rate: cfg.max_control_per_s,
        }
    }

    /// Checks a text frame of `len` bytes.
    pub(super) fn text(&mut self, len: usize) -> Admit {
        if len > self.max_text {
            return Admit::Close(1009, "text message too big");
        }
        self.recording()
    }

    /// Checks a control message that carries a whole recording: its size is bounded by the
    /// WebSocket layer (`server.max_message_bytes`) alone, and it counts as one control message.
    pub(super) fn recording(&mut self) -> Admit {
        let ok = self.control.check().is_ok();
        let rate = self.control_rate;
        let message = move || {
            format!("too many control messages: more than {rate} a second; this one was dropped")
        };
        self.verdict(ok, message, "too many control messages")
    }

    /// Checks a text frame of `len` bytes that carries `audio` bytes of audio.
    pub(super) fn audio_text(&mut self, len: usize, audio: usize) -> Admit {
        if len > self.max_text {
            return Admit::Close(1009, "text message too big");
        }
        self.audio(audio)
    }

    /// Checks a text frame of `len` bytes that echoes the server's own message: its size only.
    pub(super) fn echo_text(&self, len: usize) -> Admit {
        if len > self.max_text {
            return Admit::Close(1009, "text message too big");
        }
        Admit::Yes
    }

    /// Checks a binary (audio) frame of `len` bytes.
    pub(super) fn audio(&mut self, len: usize) -> Admit {
        if len > self.max_audio {
            return Admit::Close(1009, "audio frame too big");
        }
        let Some(n) = NonZeroU32::new(len as u32) else {
            return Admit::Yes;
        };
        // A frame larger than the whole burst can never pass: it is a violation too.
        let ok = matches!(self.audio.check_n(n), Ok(Ok(())));
        let rate = self.audio_rate;
        let message =
            move || format!("audio arrives faster than {rate} x real time; this frame was dropped");
        self.verdict(ok, message, "audio faster than real time")
    }

    fn verdict(
        &mut self,
        ok: bool,
        message: impl FnOnce() -> String,
        close_reason: &'static str,
    ) -> Admit {
        if ok {
            self.strikes = self.strikes.saturating_sub(1);
            return Admit::Yes;
        }
        self.strikes += 1;
        if self.strikes >= self.max_strikes {
            Admit::Close(1008, close_reason)
        } else if self.strikes == 1 {
            // Limiting starts (or starts again after the strikes had worn off).
            Admit::Warn("rate_limited", message())
        } else {
            Admit::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(strikes: u32) -> ClientLimits {
        ClientLimits::new(
            &LimitsSection {
                rate_limit_strikes: strikes,
                ..LimitsSection::default()
            },
            SampleRate(16_000),
        )
    }

    #[test]
    fn oversized_frames_close_with_1009() {
        let mut l = limits(50);
        assert_eq!(
            l.text(16 * 1024 + 1),
            Admit::Close(1009, "text message too big")
        );
        assert_eq!(
            l.audio(64 * 1024 + 1),
            Admit::Close(1009, "audio frame too big")
        );
        assert_eq!(l.text(100), Admit::Yes);
        assert_eq!(l.audio(640), Admit::Yes);
    }

    #[test]
    fn an_audio_flood_is_warned_then_closed() {
        let mut l = limits(10);
        // The burst (5 s of audio) passes at once...
        for _ in 0..250 {
            assert_eq!(l.audio(640), Admit::Yes);
        }
        // ...then the first limited frame warns, the next ones are dropped, and the tenth closes.
        assert!(matches!(l.audio(640), Admit::Warn("rate_limited", _)));
        for _ in 0..8 {
            assert_eq!(l.audio(640), Admit::Drop);
        }
        assert_eq!(
            l.audio(640),
            Admit::Close(1008, "audio faster than real time")
        );
    }

    #[test]
    fn strikes_add_up_even_when_some_messages_pass() {
        let mut l = limits(10);
        for _ in 0..250 {
            l.audio(640);
        }
        // Two dropped, one admitted, repeatedly: the count still grows to the limit.
        let mut closed = false;
        for _ in 0..20 {
            let a = l.audio(640);
            let b = l.audio(640);
            closed |= matches!(a, Admit::Close(..)) || matches!(b, Admit::Close(..));
            l.strikes = l.strikes.saturating_sub(1); // what an admitted frame does
        }
        assert!(closed);
    }

    #[test]
    fn a_control_flood_is_warned_then_closed() {
        let mut l = limits(5);
        for _ in 0..100 {
            assert_eq!(l.text(20), Admit::Yes);
        }
        assert!(matches!(l.text(20), Admit::Warn("rate_limited", m) if m.contains("50 a second")));
        for _ in 0..3 {
            assert_eq!(l.text(20), Admit::Drop);
        }
        assert_eq!(l.text(20), Admit::Close(1008, "too many control messages"));
    }
}
