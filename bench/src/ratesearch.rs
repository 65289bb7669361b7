//! The RFC 2544-style search for the highest offered rate whose loss stays under a threshold.
//!
//! One trial offers a fixed rate (the generator paced) or everything the generator can send
//! (flat out) for a fixed time and counts what the sink received. The search:
//! 1. runs flat out; if even that passes, the forwarder kept up with the generator: the result
//!    is the generator's rate, flagged generator-bound;
//! 2. otherwise bisects between 0 (assumed to pass) and the flat-out rate (failed), starting at
//!    what flat out delivered (usually close to the answer), until the bracket is narrower than
//!    `resolution` of its top or `max_steps` trials have run.
//!
//! The result is the best passing trial's *achieved* offered rate (sent / seconds), not the
//! rate asked for, so a generator that fell short never inflates it. Pure: the trial is a
//! closure, so the arithmetic is tested without a network.

use serde::Serialize;

/// How the search decides and when it stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SearchConfig {
    /// Highest loss that passes, as a fraction (0.001 = 0.1%).
    pub loss_threshold: f64,
    /// Stop when hi - lo <= resolution * hi.
    pub resolution: f64,
    /// At most this many paced trials after the flat-out one.
    pub max_steps: u32,
}

/// What one trial measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Trial {
    /// The rate asked of the generator; `None`: flat out.
    pub asked_pps: Option<f64>,
    pub sent: u64,
    pub received: u64,
    pub seconds: f64,
}

impl Trial {
    /// Sent per second (what was offered).
    pub fn offered_pps(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9)
    }

    /// Received per second over the generator's time.
    pub fn delivered_pps(&self) -> f64 {
        self.received.min(self.sent) as f64 / self.seconds.max(1e-9)
    }

    /// Lost fraction; 1 when nothing was sent. A sink counting a few stray frames (neighbour
    /// discovery) can see more than was sent: that is no loss.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        1.0 - self.received.min(self.sent) as f64 / self.sent as f64
    }

    fn passes(&self, cfg: &SearchConfig) -> bool {
        self.sent > 0 && self.loss() <= cfg.loss_threshold
    }
}

/// The search's outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SearchResult {
    /// The highest offered rate that passed (0 when none did).
    pub rate_pps: f64,
    /// The flat-out trial (its delivered rate is the flat-out throughput).
    pub flat_out: Trial,
    /// Every paced trial, in order.
    pub steps: Vec<Trial>,
    /// Flat out passed: the forwarder was never the limit.
    pub flat_out_passed: bool,
}

/// Runs the search; `trial(None)` runs flat out, `trial(Some(pps))` paced.
pub fn search<E>(
    cfg: &SearchConfig,
    mut trial: impl FnMut(Option<f64>) -> Result<Trial, E>,
) -> Result<SearchResult, E> {
    let flat_out = trial(None)?;
    let mut result = SearchResult {
        flat_out,
        ..SearchResult::default()
    };
    if flat_out.passes(cfg) {
        result.rate_pps = flat_out.offered_pps();
        result.flat_out_passed = true;
        return Ok(result);
    }
    let (mut lo, mut hi) = (0.0f64, flat_out.offered_pps());
    let mut rate = flat_out.delivered_pps().clamp(hi * 0.01, hi);
    for _ in 0..cfg.max_steps {
        if hi - lo <= cfg.resolution * hi || rate <= 0.0 {
            break;
        }
        let t = trial(Some(rate))?;
        result.steps.push(t);
        if t.passes(cfg) {
            lo = rate;
            result.rate_pps = result.rate_pps.max(t.offered_pps());
        } else {
            hi = rate;
        }
        rate = (lo + hi) / 2.0;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: SearchConfig = SearchConfig {
        loss_threshold: 0.001,
        resolution: 0.02,
        max_steps: 20,
    };

    /// A forwarder that delivers up to `capacity` pps behind a generator of `max_gen` pps,
    /// over one-second trials.
    fn bottleneck(capacity: f64, max_gen: f64) -> impl FnMut(Option<f64>) -> Result<Trial, ()> {
        move |asked| {
            let offered = asked.unwrap_or(max_gen).min(max_gen);
            Ok(Trial {
                asked_pps: asked,
                sent: offered as u64,
                received: offered.min(capacity) as u64,
                seconds: 1.0,
            })
        }
    }

    #[test]
    fn finds_the_capacity_within_the_resolution() {
        let r = search(&CFG, bottleneck(400_000.0, 1_000_000.0)).unwrap();
        assert!(!r.flat_out_passed);
        assert!(r.rate_pps <= 400_000.0, "{}", r.rate_pps);
        assert!(
            r.rate_pps >= 400_000.0 * (1.0 - CFG.resolution),
            "{}",
            r.rate_pps
        );
        assert_eq!(r.flat_out.delivered_pps(), 400_000.0);
        assert!(r.steps.len() <= CFG.max_steps as usize);
    }

    #[test]
    fn a_forwarder_faster_than_the_generator_is_generator_bound() {
        let r = search(&CFG, bottleneck(2_000_000.0, 1_000_000.0)).unwrap();
        assert!(r.flat_out_passed);
        assert_eq!(r.rate_pps, 1_000_000.0);
        assert!(r.steps.is_empty());
    }

    #[test]
    fn loss_under_the_threshold_passes() {
        // 0.05% loss at every rate: under the 0.1% threshold, so flat out passes.
        let r = search(&CFG, |asked: Option<f64>| {
            let sent = asked.unwrap_or(100_000.0) as u64;
            Ok::<_, ()>(Trial {
                asked_pps: asked,
                sent,
                received: sent - sent / 2000,
                seconds: 1.0,
            })
        })
        .unwrap();
        assert!(r.flat_out_passed);
    }

    #[test]
    fn nothing_delivered_finds_zero() {
        let r = search(&CFG, bottleneck(0.0, 1_000_000.0)).unwrap();
        assert_eq!(r.rate_pps, 0.0);
        assert!(!r.steps.is_empty());
    }

    #[test]
    fn the_step_limit_bounds_the_trials() {
        let cfg = SearchConfig {
            max_steps: 3,
            ..CFG
        };
        let r = search(&cfg, bottleneck(123_456.0, 1_000_000.0)).unwrap();
        assert_eq!(r.steps.len(), 3);
    }

    #[test]
    fn a_failing_trial_stops_the_search() {
        let mut n = 0;
        let r = search(&CFG, |_| {
            n += 1;
            if n == 2 {
                Err("sink died")
            } else {
                Ok(Trial {
                    asked_pps: None,
                    sent: 100,
                    received: 10,
                    seconds: 1.0,
                })
            }
        });
        assert_eq!(r, Err("sink died"));
    }

    #[test]
    fn loss_counts_strays_as_no_loss_and_silence_as_total() {
        let t = Trial {
            asked_pps: None,
            sent: 100,
            received: 103,
            seconds: 1.0,
        };
        assert_eq!(t.loss(), 0.0);
        assert_eq!(t.delivered_pps(), 100.0);
        assert_eq!(Trial::default().loss(), 1.0);
    }
}
