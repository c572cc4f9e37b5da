//! punchdrop patch: is a loss congestion, or noise on the path?
//!
//! RFC 9260's sender halves its window at every loss, as TCP Reno does, so a path that loses
//! packets without being congested (Wi-Fi, a long lossy link) holds it to about
//! 1.2 / sqrt(loss) packets per round trip: 0.8 MB/s at 100 ms and 0.1 % loss where the
//! kernel's TCP (BBR) moved 15 MB/s. This sender keeps its window through a loss when
//! nothing says the path is congested: the round trip has not grown over its minimum (no
//! queue is building at a bottleneck) and losses stay rare. A growing round trip or more
//! than [`MAX_NOISE`] of chunks lost is congestion, and the window is halved as the RFC
//! says. T3-rtx keeps the RFC's response (one packet, ssthresh halved) whatever this says.
//!
//! Invariants: the minimum round trip is forgotten after [`MIN_RTT_FOR`] without a sample as
//! low (a new path has another one), and the first loss after it had to be raised is taken
//! for congestion (the higher minimum may be a queue standing since; halving drains it and
//! shows the real one); the loss rate covers the last few thousand chunks sent.
//!
//! Known limits: a drop-tail queue shorter than an eighth of the round trip (5 ms at
//! least) shows no growth, so there only the loss rate tells, and this sender takes more of
//! such a link from a competing TCP flow than Reno would, up to about 2 % loss.

use std::time::{Duration, Instant};

/// Chunks lost over chunks sent above which losses are congestion whatever the round trip.
const MAX_NOISE: f64 = 0.02;
/// How long the minimum round trip stands without being seen again.
const MIN_RTT_FOR: Duration = Duration::from_secs(10);
/// Chunks the loss rate is measured over (halved when reached: a sliding average).
const WINDOW: u32 = 4096;
/// Round-trip samples a queue must show in all of.
const RECENT: usize = 3;

/// Round-trip and loss history for telling congestion from noise.
#[derive(Debug, Default, Clone)]
pub(crate) struct LossTolerance {
    min_rtt_ms: u64,
    min_rtt_at: Option<Instant>,
    /// The last few samples (one per round trip): a queue stays, a scheduling hiccup on
    /// either host does not, so growth is judged on the lowest of them.
    recent_rtt_ms: [u64; RECENT],
    samples: usize,
    sent: u32,
    lost: u32,
    /// The minimum round trip went stale and was raised since the last halving.
    raised: bool,
}

impl LossTolerance {
    /// A round-trip sample (RFC 9260 6.3.1's, one per round trip).
    pub(crate) fn on_rtt(&mut self, rtt_ms: u64, now: Instant) {
        self.recent_rtt_ms[self.samples % RECENT] = rtt_ms;
        self.samples += 1;
        let stale = self
            .min_rtt_at
            .is_none_or(|at| now.duration_since(at) > MIN_RTT_FOR);
        if stale || rtt_ms <= self.min_rtt_ms {
            self.raised |= self.min_rtt_at.is_some() && rtt_ms > self.min_rtt_ms;
            self.min_rtt_ms = rtt_ms;
            self.min_rtt_at = Some(now);
        }
    }

    /// A chunk sent for the first time.
    pub(crate) fn on_sent(&mut self) {
        self.sent += 1;
        if self.sent >= WINDOW {
            self.sent /= 2;
            self.lost /= 2;
        }
    }

    /// A chunk found lost (its third miss indication).
    pub(crate) fn on_lost(&mut self) {
        self.lost += 1;
    }

    /// The window was halved: a raised minimum has had its response.
    pub(crate) fn responded(&mut self) {
        self.raised = false;
    }

    /// Whether a loss now is to be taken as congestion.
    pub(crate) fn congested(&self) -> bool {
        if self.min_rtt_at.is_none() || self.sent < 100 || self.raised {
            return true;
        }
        // A queue: the round trip grew by an eighth (5 ms at least: timers and SACK
        // bundling move samples by a few ms on any path).
        let queue = (self.min_rtt_ms / 8).max(5);
        let recent = self.recent_rtt_ms[..self.samples.min(RECENT)]
            .iter()
            .copied()
            .min()
            .unwrap_or(0);
        let grown = recent > self.min_rtt_ms + queue;
        grown || f64::from(self.lost) > MAX_NOISE * f64::from(self.sent)
    }
}
