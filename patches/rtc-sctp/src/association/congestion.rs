//! punchdrop patch: is a loss congestion, or noise on the path?
//!
//! RFC 9260's sender halves its window at every loss, as TCP Reno does, so a path that loses
//! packets without being congested (Wi-Fi, a long lossy link) holds it to about
//! 1.2 / sqrt(loss) packets per round trip: 0.8 MB/s at 100 ms and 0.1 % loss where the
//! kernel's TCP (BBR) moved 15 MB/s. This sender keeps its window through a loss when
//! nothing says the path is congested: the round trip has not grown over its minimum (no
//! queue is building at a bottleneck) and losses stay rare. A growing round trip or more
//! than [`MAX_NOISE`] of chunks lost is congestion, and the window is cut. T3-rtx keeps the
//! RFC's response (one packet, then slow start) whatever this says.
//!
//! Three more parts, for random loss on a path that also has a bottleneck (the usual case:
//! Wi-Fi behind a home uplink), where every loss used to look like congestion and halve the
//! window again and again:
//! - the cut goes no lower than the measured bandwidth-delay product (TCP Westwood+): the
//!   highest delivery rate of the last [`RATES`] intervals times the minimum round trip;
//! - near the window at which the path was last congested the window grows by a packet per
//!   round trip, not an eighth (CUBIC's plateau, simplified), so it does not overflow the
//!   same queue every few round trips;
//! - new DATA is paced ([`Pacer`]) at the window that can be in flight per smoothed round
//!   trip (×2 in slow start, ×1.25 after), so a window that opens at once does not leave as
//!   one burst.
//!
//! Invariants: the minimum round trip is forgotten after [`MIN_RTT_FOR`] without a sample as
//! low (a new path has another one), and the first loss after it had to be raised is taken
//! for congestion (the higher minimum may be a queue standing since; halving drains it and
//! shows the real one); the loss rate covers the last few thousand chunks sent.
//!
//! Known limits: a drop-tail queue shorter than an eighth of the round trip (5 ms at
//! least) shows no growth, so there only the loss rate tells, and this sender takes more of
//! such a link from a competing TCP flow than Reno would, up to about 2 % loss.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Chunks lost over chunks sent above which losses are congestion whatever the round trip.
const MAX_NOISE: f64 = 0.02;
/// How long the minimum round trip stands without being seen again.
const MIN_RTT_FOR: Duration = Duration::from_secs(10);
/// Chunks the loss rate is measured over (halved when reached: a sliding average).
const WINDOW: u32 = 4096;
/// Round-trip samples a queue must show in all of.
const RECENT: usize = 3;
/// Delivery-rate intervals (each at least a minimum round trip) the bandwidth estimate spans.
const RATES: usize = 10;
/// The longest burst the pacer lets out at once, in time at the pacing rate.
const PACING_BURST: Duration = Duration::from_millis(2);
/// The shortest wait the pacer asks for: what timers in a runtime resolve anyway.
const PACING_TICK: Duration = Duration::from_millis(1);

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
    /// The window when the path was last found congested.
    congested_at: Option<u32>,
    /// Bytes acknowledged (cumulatively or by gap blocks) since the current interval began.
    delivered: u64,
    interval_from: Option<Instant>,
    /// Delivery rates of the last intervals (bytes per second), newest last.
    rates: VecDeque<f64>,
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

    /// Bytes newly acknowledged by a SACK: the delivery rate, measured over intervals of at
    /// least one minimum round trip (shorter ones see a SACK that closes a hole as a burst).
    pub(crate) fn on_delivered(&mut self, bytes: u64, now: Instant) {
        let Some(from) = self.interval_from else {
            self.interval_from = Some(now);
            self.delivered = 0;
            return;
        };
        self.delivered += bytes;
        let span = now.duration_since(from);
        if self.min_rtt_at.is_none() || span < Duration::from_millis(self.min_rtt_ms.max(1)) {
            return;
        }
        self.rates.push_back(self.delivered as f64 / span.as_secs_f64());
        if self.rates.len() > RATES {
            self.rates.pop_front();
        }
        self.delivered = 0;
        self.interval_from = Some(now);
    }

    /// The path's bandwidth-delay product as measured: the highest recent delivery rate
    /// times the minimum round trip (bytes; 0 before any measurement).
    pub(crate) fn bdp(&self) -> u32 {
        let rate = self.rates.iter().copied().fold(0.0, f64::max);
        (rate * self.min_rtt_ms as f64 / 1000.0) as u32
    }

    /// The path may have changed (T3-rtx): measure its bandwidth anew.
    pub(crate) fn forget_rates(&mut self) {
        self.rates.clear();
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

    /// The window was cut from `cwnd`: a raised minimum has had its response, and a window
    /// near `cwnd` is where the path was congested last.
    pub(crate) fn responded(&mut self, cwnd: u32) {
        self.raised = false;
        self.congested_at = Some(cwnd);
    }

    /// Whether `cwnd` is within an eighth of the window at which the path was last
    /// congested: growth there is careful (a packet per round trip), fast elsewhere. Past it
    /// by more than an eighth the path has changed, and the mark is forgotten.
    pub(crate) fn near_last_congestion(&mut self, cwnd: u32) -> bool {
        let Some(w) = self.congested_at else {
            return false;
        };
        if cwnd > w.saturating_add(w / 8) {
            self.congested_at = None;
            return false;
        }
        cwnd >= w - w / 8
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

/// How fast to send new DATA: `window` spread over the smoothed round trip, with headroom
/// to grow (twice in slow start, a quarter more after: Linux TCP's pacing ratios). `None`
/// under a millisecond of round trip (a LAN, loopback): there pacing would only cost wakeups.
pub(crate) fn pacing_rate(window: u32, slow_start: bool, srtt_ms: u64) -> Option<f64> {
    if srtt_ms == 0 {
        return None;
    }
    let gain = if slow_start { 2.0 } else { 1.25 };
    Some(f64::from(window) * gain * 1000.0 / srtt_ms as f64)
}

/// A token bucket for new DATA, refilled at the pacing rate, holding at most
/// [`PACING_BURST`] worth (ten packets at least). Without it a window that opens at once (a
/// SACK that fills a hole frees the receiver's whole window) leaves as one burst, which a
/// router's queue drops the tail of.
#[derive(Debug, Default, Clone)]
pub(crate) struct Pacer {
    tokens: f64,
    at: Option<Instant>,
    wake: Option<Instant>,
}

impl Pacer {
    /// Take `bytes` for sending now at `rate` (`None`: unpaced); `false`, with a wake-up
    /// set, if they must wait.
    pub(crate) fn take(&mut self, bytes: usize, rate: Option<f64>, mtu: u32, now: Instant) -> bool {
        let Some(rate) = rate else {
            self.at = None;
            return true;
        };
        let burst = (rate * PACING_BURST.as_secs_f64()).max(f64::from(mtu) * 10.0);
        let since = self
            .at
            .map_or(Duration::from_secs(1), |at| now.saturating_duration_since(at));
        self.tokens = (self.tokens + rate * since.as_secs_f64()).min(burst);
        self.at = Some(now);
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            return true;
        }
        let wait = Duration::from_secs_f64((bytes as f64 - self.tokens) / rate);
        self.wake = Some(now + wait.max(PACING_TICK));
        false
    }

    /// When paced DATA may go.
    pub(crate) fn wake(&self) -> Option<Instant> {
        self.wake
    }

    /// The association's timers ran at `now`.
    pub(crate) fn woken(&mut self, now: Instant) {
        if self.wake.is_some_and(|w| w <= now) {
            self.wake = None;
        }
    }
}
