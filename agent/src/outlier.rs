//! Envoy outlier detection, per host, as pure arithmetic over a monotonic clock (`Duration`
//! since an arbitrary origin; the agent uses CLOCK_MONOTONIC, the kernel's clock).
//!
//! Pinned behaviour (envoyproxy/envoy `source/common/upstream/outlier_detection_impl.cc`):
//! - consecutive 5xx / gateway errors eject at once (the kernel does it; the agent records it);
//! - an ejection lasts `base_ejection_time × n`, n = the host's ejection backoff, which grows by
//!   one per ejection and shrinks by one per `interval` spent un-ejected; capped at
//!   `max_ejection_time`, which Istio leaves unset so Envoy's default applies: max(300 s, base);
//! - the `interval` sweep un-ejects hosts whose time is up and decays the backoff of the others;
//! - `maxEjectionPercent` is strict: an ejection happens only if (ejected + 1) / total ≤ max%
//!   (Envoy ≥ 1.31). Istio does not set `always_eject_one_host`, so it is not applied.
//! - Ejections by active health checking do not count towards `maxEjectionPercent`.

use std::time::Duration;

/// Envoy's default `max_ejection_time` floor.
const MAX_EJECTION_TIME_FLOOR: Duration = Duration::from_secs(300);

/// One service's outlier settings (Istio `outlierDetection`, defaults applied by the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

/// One host's passive-health state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// Some(until) while ejected.
    pub ejected_until: Option<Duration>,
    /// Ejection time multiplier: +1 per ejection, −1 per interval while not ejected.
    pub backoff: u32,
    /// Total ejections (metrics, diagnostics).
    pub ejections_total: u64,
}

/// What an interval sweep did to a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepResult {
    Unchanged,
    Unejected,
}

impl Host {
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.is_some()
    }

    /// Records an ejection at `now`; returns how long it lasts. The multiplier grows only while
    /// base × n < max + base (Envoy `ejectHost`), so a host that keeps failing is not held
    /// for ever longer after it recovers: the decay needs at most a few intervals.
    pub fn eject(&mut self, now: Duration, settings: &Settings) -> Duration {
        let cap = max_ejection_time(settings.base_ejection_time);
        if settings.base_ejection_time.saturating_mul(self.backoff)
            < cap + settings.base_ejection_time
        {
            self.backoff += 1;
        }
        self.ejections_total += 1;
        let length = ejection_time(settings.base_ejection_time, self.backoff);
        self.ejected_until = Some(now + length);
        length
    }

    /// The `interval` timer: un-eject if the time is up, otherwise decay the backoff of a host
    /// that stayed in.
    pub fn sweep(&mut self, now: Duration) -> SweepResult {
        match self.ejected_until {
            Some(until) if now >= until => {
                self.ejected_until = None;
                SweepResult::Unejected
            }
            Some(_) => SweepResult::Unchanged,
            None => {
                self.backoff = self.backoff.saturating_sub(1);
                SweepResult::Unchanged
            }
        }
    }
}

/// Envoy's `max_ejection_time` where Istio leaves it unset: max(300 s, base).
fn max_ejection_time(base: Duration) -> Duration {
    base.max(MAX_EJECTION_TIME_FLOOR)
}

/// base × n, capped at max(300 s, base).
pub fn ejection_time(base: Duration, backoff: u32) -> Duration {
    base.saturating_mul(backoff.max(1))
        .min(max_ejection_time(base))
}

/// How many more hosts may be ejected now: the largest k with (ejected + k) / total ≤ max%.
pub fn ejection_budget(total: usize, ejected: usize, max_ejection_percent: u32) -> usize {
    let allowed = total * max_ejection_percent.min(100) as usize / 100;
    allowed.saturating_sub(ejected)
}

/// The smallest maxEjectionPercent that lets one of `total` hosts be ejected.
pub fn percent_needed_for_one(total: usize) -> u32 {
    if total == 0 {
        return 100;
    }
    (100usize.div_ceil(total)).min(100) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(base_secs: u64) -> Settings {
        Settings {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(base_secs),
            max_ejection_percent: 10,
        }
    }

    /// Envoy grows the multiplier only while base × n < max + base: with base 30 s and max
    /// 300 s it stops at 11, so a recovered host needs at most 11 intervals of decay, not one
    /// per ejection it ever had.
    #[test]
    fn multiplier_stops_growing_at_the_cap() {
        let settings = s(30);
        let mut host = Host::default();
        for i in 0..50 {
            host.eject(Duration::from_secs(i * 1000), &settings);
        }
        assert_eq!(host.backoff, 11);
        assert_eq!(host.ejections_total, 50);
        assert_eq!(
            host.eject(Duration::from_secs(60_000), &settings),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn ejection_time_grows_with_backoff_and_is_capped() {
        // (base, backoff) → time. Cap = max(300 s, base).
        let cases = [
            (30, 1, 30),
            (30, 2, 60),
            (30, 9, 270),
            (30, 10, 300),
            (30, 50, 300),
            (60, 1, 60),
            (600, 3, 600), // base above 300 s: the cap is base itself
            (1, 0, 1),
        ];
        for (base, n, want) in cases {
            assert_eq!(
                ejection_time(Duration::from_secs(base), n),
                Duration::from_secs(want),
                "base {base} s × {n}"
            );
        }
    }

    #[test]
    fn eject_sweep_uneject_and_decay() {
        let settings = s(30);
        let mut h = Host::default();
        let t0 = Duration::from_secs(100);
        assert_eq!(h.eject(t0, &settings), Duration::from_secs(30));
        assert!(h.is_ejected());
        assert_eq!(
            h.sweep(t0 + Duration::from_secs(29)),
            SweepResult::Unchanged
        );
        assert_eq!(
            h.sweep(t0 + Duration::from_secs(30)),
            SweepResult::Unejected
        );
        assert!(!h.is_ejected());
        // Ejected again soon: twice as long.
        let t1 = t0 + Duration::from_secs(40);
        assert_eq!(h.eject(t1, &settings), Duration::from_secs(60));
        assert_eq!(
            h.sweep(t1 + Duration::from_secs(60)),
            SweepResult::Unejected
        );
        // Two healthy intervals decay the backoff back to zero.
        h.sweep(t1 + Duration::from_secs(70));
        h.sweep(t1 + Duration::from_secs(80));
        assert_eq!(h.backoff, 0);
        assert_eq!(
            h.eject(t1 + Duration::from_secs(90), &settings),
            Duration::from_secs(30)
        );
        assert_eq!(h.ejections_total, 3);
    }

    #[test]
    fn seed_settings_one_minute_base() {
        // ASM tutorial: consecutive5xxErrors 1, interval 1s, baseEjectionTime 1m.
        let settings = Settings {
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(60),
            max_ejection_percent: 100,
        };
        let mut h = Host::default();
        h.eject(Duration::ZERO, &settings);
        assert_eq!(h.sweep(Duration::from_secs(59)), SweepResult::Unchanged);
        assert_eq!(h.sweep(Duration::from_secs(60)), SweepResult::Unejected);
    }

    #[test]
    fn strict_max_ejection_percent() {
        // (total, ejected, max%) → budget
        let cases = [
            (4, 0, 10, 0), // the Istio trap: 10% of 4 hosts ejects nothing
            (10, 0, 10, 1),
            (10, 1, 10, 0),
            (4, 0, 25, 1),
            (4, 0, 50, 2),
            (4, 1, 50, 1),
            (4, 3, 100, 1),
            (4, 4, 100, 0),
            (3, 0, 100, 3),
            (0, 0, 100, 0),
            (19, 0, 10, 1),
            (20, 0, 10, 2),
        ];
        for (total, ejected, pct, want) in cases {
            assert_eq!(
                ejection_budget(total, ejected, pct),
                want,
                "{total} hosts, {ejected} ejected, {pct}%"
            );
        }
    }

    #[test]
    fn percentage_needed_for_one_ejection() {
        assert_eq!(percent_needed_for_one(4), 25);
        assert_eq!(percent_needed_for_one(3), 34);
        assert_eq!(percent_needed_for_one(10), 10);
        assert_eq!(percent_needed_for_one(1), 100);
        assert_eq!(percent_needed_for_one(200), 1);
    }
}
