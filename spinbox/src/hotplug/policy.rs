//! The hotplug controller's policy (SPEC §12): when to add or remove vCPUs or memory.
//!
//! - [`Policy`]: the numbers (interval, thresholds, stability counts, cooldowns, step,
//!   scale-down on/off), with the upstream defaults in [`Policy::cpu`] and [`Policy::memory`].
//! - [`Decider`]: the pure decision, fed one [`Sample`] at a time with an explicit
//!   [`Instant`]; it has no clock of its own.
//!
//! # How a reading is judged
//!
//! A reading is *high* when its utilisation is strictly above
//! [`Policy::scale_up_threshold`], *low* when strictly below
//! [`Policy::scale_down_threshold`], and *middle* otherwise (a reading exactly at a
//! threshold, or `NaN`, is middle). A middle reading, a skipped round and a change clear both
//! streaks; a high reading clears the low streak and a low one the high streak. A reading
//! taken during the cooldown of its direction is not counted (upstream does the same, so
//! the resource just changed has time to show its effect), and a high reading at the maximum
//! (or a low one at the minimum, or any low one with scale-down off) counts as middle.
//!
//! ```
//! use std::time::Duration;
//! use spinbox::hotplug::policy::{Bounds, Decider, Policy, Sample};
//! use tokio::time::Instant;
//!
//! // CPU defaults: two consecutive readings above 80 % add one vCPU.
//! let mut decider = Decider::new(Policy::cpu(), Bounds { min: 1, max: 4 });
//! let t0 = Instant::now();
//! let busy = Sample { current: 1, utilisation: 95.0 };
//! assert_eq!(decider.observe(t0, busy), None);
//! assert_eq!(decider.observe(t0 + Duration::from_secs(5), busy), Some(2));
//! decider.changed(t0 + Duration::from_secs(5));
//!
//! // The 10 s scale-up cooldown: readings before it has passed are not counted.
//! let busy = Sample { current: 2, utilisation: 95.0 };
//! assert_eq!(decider.observe(t0 + Duration::from_secs(10), busy), None);
//! assert_eq!(decider.observe(t0 + Duration::from_secs(15), busy), None);
//! assert_eq!(decider.observe(t0 + Duration::from_secs(20), busy), Some(3));
//! ```
//!
//! # Differences from upstream
//!
//! Upstream (`spin-stack/spinbox`, Go) folds some resource-specific checks into its
//! controllers that this generic policy leaves to whoever takes the readings:
//!
//! - the CPU controller does not scale while more than 5 % of CPU time is throttled (a round
//!   without a reading, [`Decider::skip`], resets the streaks as upstream does);
//! - the CPU controller judges "low" on the utilisation projected onto one vCPU fewer
//!   (`usage * n / (n - 1) <= 50`), here it is the reading itself (`< 50`);
//! - the memory controller also needs less than 128 MiB free before scaling up;
//! - upstream's thresholds count a reading *at* the scale-up threshold as high; here it is
//!   middle (strictly above / strictly below);
//! - upstream's scale-up cooldown runs from the last scale-up and the scale-down cooldown from
//!   the last scale-down; here both run from the last change of either kind
//!   ([`Decider::changed`]), which is never shorter.

use std::time::Duration;

use tokio::time::Instant;

/// Boxed error used by samplers and actuators.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Memory sizes and steps are multiples of this many MiB: virtio-mem's block alignment
/// (upstream `internal/shim/resources/config.go`, `virtioMemAlignment = 128 * 1024 * 1024`),
/// also the DIMM size of upstream's memory controller.
pub const MEMORY_ALIGNMENT_MIB: u32 = 128;

/// One resource's policy (units: vCPUs for the CPU controller, MiB for memory).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Sampling interval.
    pub interval: Duration,
    /// Utilisation percent (0..=100) strictly above which a reading counts "high".
    pub scale_up_threshold: f64,
    /// Utilisation percent strictly below which a reading counts "low".
    pub scale_down_threshold: f64,
    /// Consecutive high readings needed before scaling up (>= 1).
    pub scale_up_stability: u32,
    /// Consecutive low readings needed before scaling down (>= 1).
    pub scale_down_stability: u32,
    /// Minimum time since the last change before scaling up (readings before it are not
    /// counted).
    pub scale_up_cooldown: Duration,
    /// Minimum time since the last change before scaling down (readings before it are not
    /// counted).
    pub scale_down_cooldown: Duration,
    /// `false`: never shrink because of low utilisation.
    pub scale_down: bool,
    /// Units added or removed per change (>= 1), clipped at the bounds.
    pub step: u32,
}

impl Policy {
    /// Upstream's CPU defaults, from `internal/shim/cpuhotplug/controller.go`
    /// (`defaultMonitorInterval` .. `defaultScaleDownStability` and `DefaultConfig`):
    /// sample every 5 s; more than 80 % is high, below 50 % is low; 2 high readings
    /// (10 s) to add, 6 low readings (30 s) to remove; cooldowns 10 s up and 30 s down;
    /// scale-down on; one vCPU per change (upstream's `currentCPUs ± 1`).
    pub fn cpu() -> Self {
        Self {
            interval: Duration::from_secs(5),
            scale_up_threshold: 80.0,
            scale_down_threshold: 50.0,
            scale_up_stability: 2,
            scale_down_stability: 6,
            scale_up_cooldown: Duration::from_secs(10),
            scale_down_cooldown: Duration::from_secs(30),
            scale_down: true,
            step: 1,
        }
    }

    /// Upstream's memory defaults, from `internal/shim/memhotplug/controller.go`
    /// (`DefaultConfig`): sample every 10 s; more than 85 % is high, below 60 % is low;
    /// 3 high readings (30 s) to add, 6 low readings (60 s) to remove; cooldowns 30 s up and
    /// 60 s down; scale-down off (memory unplug is risky); 128 MiB per change
    /// (`IncrementSize`, one DIMM, a multiple of [`MEMORY_ALIGNMENT_MIB`]).
    pub fn memory() -> Self {
        Self {
            interval: Duration::from_secs(10),
            scale_up_threshold: 85.0,
            scale_down_threshold: 60.0,
            scale_up_stability: 3,
            scale_down_stability: 6,
            scale_up_cooldown: Duration::from_secs(30),
            scale_down_cooldown: Duration::from_mins(1),
            scale_down: false,
            step: MEMORY_ALIGNMENT_MIB,
        }
    }

    /// Checks the policy: both thresholds finite and within 0..=100, the scale-down
    /// threshold below the scale-up one, both stabilities and the step at least 1, and a
    /// non-zero interval. The first problem found is returned.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (which, value) in [
            ("scale_up_threshold", self.scale_up_threshold),
            ("scale_down_threshold", self.scale_down_threshold),
        ] {
            if !(0.0..=100.0).contains(&value) {
                return Err(PolicyError::ThresholdOutOfRange { which, value });
            }
        }
        if self.scale_down_threshold >= self.scale_up_threshold {
            return Err(PolicyError::ThresholdsNotOrdered {
                down: self.scale_down_threshold,
                up: self.scale_up_threshold,
            });
        }
        if self.scale_up_stability == 0 {
            return Err(PolicyError::ZeroStability {
                which: "scale_up_stability",
            });
        }
        if self.scale_down_stability == 0 {
            return Err(PolicyError::ZeroStability {
                which: "scale_down_stability",
            });
        }
        if self.step == 0 {
            return Err(PolicyError::ZeroStep);
        }
        if self.interval.is_zero() {
            return Err(PolicyError::ZeroInterval);
        }
        Ok(())
    }
}

/// Why a [`Policy`] (or [`Bounds`]) is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// A threshold is not a percentage (outside 0..=100, or `NaN`).
    #[error("{which} must be a percentage within 0..=100, got {value}")]
    ThresholdOutOfRange {
        /// The field's name.
        which: &'static str,
        /// Its value.
        value: f64,
    },
    /// The scale-down threshold is not below the scale-up threshold.
    #[error("scale_down_threshold ({down}) must be below scale_up_threshold ({up})")]
    ThresholdsNotOrdered {
        /// `scale_down_threshold`.
        down: f64,
        /// `scale_up_threshold`.
        up: f64,
    },
    /// A stability count is zero.
    #[error("{which} must be at least 1 reading")]
    ZeroStability {
        /// The field's name.
        which: &'static str,
    },
    /// The step is zero.
    #[error("step must be at least 1")]
    ZeroStep,
    /// The sampling interval is zero.
    #[error("interval must be greater than zero")]
    ZeroInterval,
    /// The bounds' minimum is above their maximum.
    #[error("bounds are inverted: min {min} is above max {max}")]
    InvertedBounds {
        /// [`Bounds::min`].
        min: u32,
        /// [`Bounds::max`].
        max: u32,
    },
}

/// Inclusive bounds `[min, max]` for the resource (boot value .. maximum). `min <= max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The smallest size (the boot value): never scaled below.
    pub min: u32,
    /// The largest size (the configured maximum): never scaled above.
    pub max: u32,
}

impl Bounds {
    /// Checks `min <= max`.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.min > self.max {
            return Err(PolicyError::InvertedBounds {
                min: self.min,
                max: self.max,
            });
        }
        Ok(())
    }
}

/// One reading: the resource's current size and its utilisation in percent of that size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The size now (vCPUs, or MiB).
    pub current: u32,
    /// Utilisation in percent of `current`.
    pub utilisation: f64,
}

/// Pure decision logic, no clock of its own (tests drive it with explicit [`Instant`]s).
///
/// See the [module documentation](self) for how readings are judged.
#[derive(Debug, Clone)]
pub struct Decider {
    policy: Policy,
    bounds: Bounds,
    /// Consecutive counted high readings.
    high: u32,
    /// Consecutive counted low readings.
    low: u32,
    /// When the last change was applied (or attempted).
    last_change: Option<Instant>,
}

impl Decider {
    /// A decider with no streaks and no change yet (so no cooldown is running).
    ///
    /// It never panics on an invalid policy or bounds (check them with [`Policy::validate`]
    /// and [`Bounds::validate`]): a zero step or stability acts as 1, and inverted bounds as
    /// `[min, min]`.
    pub fn new(policy: Policy, bounds: Bounds) -> Self {
        let bounds = Bounds {
            min: bounds.min,
            max: bounds.max.max(bounds.min),
        };
        Self {
            policy,
            bounds,
            high: 0,
            low: 0,
            last_change: None,
        }
    }

    /// The policy this decider applies.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The bounds this decider keeps to.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Feed one reading taken at `now`; returns `Some(target)` when a change is due.
    ///
    /// The target differs from `sample.current`, is always within the bounds, and moves by
    /// [`Policy::step`] but never past a bound. A current value outside the bounds is pulled
    /// back inside (to the nearest bound) whatever the utilisation and whether or not
    /// scale-down is on, once the cooldown of that direction has passed. Returning a target
    /// resets the streak that was used.
    pub fn observe(&mut self, now: Instant, sample: Sample) -> Option<u32> {
        let Bounds { min, max } = self.bounds;
        let current = sample.current;
        let step = self.policy.step.max(1);

        // Out of range: the reading says nothing about load at a size we would keep.
        if current > max || current < min {
            self.high = 0;
            self.low = 0;
            let (target, cooldown) = if current > max {
                (max, self.policy.scale_down_cooldown)
            } else {
                (min, self.policy.scale_up_cooldown)
            };
            return self.cooled(now, cooldown).then_some(target);
        }

        if sample.utilisation > self.policy.scale_up_threshold && current < max {
            self.low = 0;
            if !self.cooled(now, self.policy.scale_up_cooldown) {
                return None;
            }
            self.high += 1;
            if self.high < self.policy.scale_up_stability {
                return None;
            }
            self.high = 0;
            Some(current.saturating_add(step).min(max))
        } else if sample.utilisation < self.policy.scale_down_threshold
            && self.policy.scale_down
            && current > min
        {
            self.high = 0;
            if !self.cooled(now, self.policy.scale_down_cooldown) {
                return None;
            }
            self.low += 1;
            if self.low < self.policy.scale_down_stability {
                return None;
            }
            self.low = 0;
            Some(current.saturating_sub(step).max(min))
        } else {
            self.skip();
            None
        }
    }

    /// Record that a change was applied (or attempted) at `now`: starts the cooldowns and
    /// clears the streaks.
    pub fn changed(&mut self, now: Instant) {
        self.last_change = Some(now);
        self.skip();
    }

    /// A skipped round (no reading): clears both streaks.
    pub fn skip(&mut self) {
        self.high = 0;
        self.low = 0;
    }

    /// Whether `cooldown` has passed since the last change (exactly at its end counts).
    fn cooled(&self, now: Instant, cooldown: Duration) -> bool {
        self.last_change
            .is_none_or(|at| now.saturating_duration_since(at) >= cooldown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn at(current: u32, utilisation: f64) -> Sample {
        Sample {
            current,
            utilisation,
        }
    }

    /// Thresholds 80/50, stability 1, no cooldowns, step 1, scale-down on.
    fn eager() -> Policy {
        Policy {
            interval: S,
            scale_up_threshold: 80.0,
            scale_down_threshold: 50.0,
            scale_up_stability: 1,
            scale_down_stability: 1,
            scale_up_cooldown: Duration::ZERO,
            scale_down_cooldown: Duration::ZERO,
            scale_down: true,
            step: 1,
        }
    }

    const WIDE: Bounds = Bounds { min: 1, max: 8 };

    // ---- Policy ----

    #[test]
    fn defaults_are_upstreams() {
        assert_eq!(
            Policy::cpu(),
            Policy {
                interval: secs(5),
                scale_up_threshold: 80.0,
                scale_down_threshold: 50.0,
                scale_up_stability: 2,
                scale_down_stability: 6,
                scale_up_cooldown: secs(10),
                scale_down_cooldown: secs(30),
                scale_down: true,
                step: 1,
            }
        );
        assert_eq!(
            Policy::memory(),
            Policy {
                interval: secs(10),
                scale_up_threshold: 85.0,
                scale_down_threshold: 60.0,
                scale_up_stability: 3,
                scale_down_stability: 6,
                scale_up_cooldown: secs(30),
                scale_down_cooldown: secs(60),
                scale_down: false,
                step: 128,
            }
        );
        assert_eq!(Policy::memory().step % MEMORY_ALIGNMENT_MIB, 0);
        assert_eq!(Policy::cpu().validate(), Ok(()));
        assert_eq!(Policy::memory().validate(), Ok(()));
    }

    #[test]
    fn validate_reports_each_problem() {
        let check = |edit: fn(&mut Policy)| {
            let mut policy = eager();
            edit(&mut policy);
            policy.validate().unwrap_err()
        };
        assert_eq!(
            check(|p| p.scale_up_threshold = 100.5),
            PolicyError::ThresholdOutOfRange {
                which: "scale_up_threshold",
                value: 100.5
            }
        );
        assert_eq!(
            check(|p| p.scale_down_threshold = -1.0).to_string(),
            "scale_down_threshold must be a percentage within 0..=100, got -1"
        );
        assert!(matches!(
            check(|p| p.scale_up_threshold = f64::NAN),
            PolicyError::ThresholdOutOfRange {
                which: "scale_up_threshold",
                ..
            }
        ));
        assert_eq!(
            check(|p| p.scale_down_threshold = 80.0),
            PolicyError::ThresholdsNotOrdered {
                down: 80.0,
                up: 80.0
            }
        );
        assert_eq!(
            check(|p| p.scale_down_threshold = 90.0).to_string(),
            "scale_down_threshold (90) must be below scale_up_threshold (80)"
        );
        assert_eq!(
            check(|p| p.scale_up_stability = 0),
            PolicyError::ZeroStability {
                which: "scale_up_stability"
            }
        );
        assert_eq!(
            check(|p| p.scale_down_stability = 0).to_string(),
            "scale_down_stability must be at least 1 reading"
        );
        assert_eq!(check(|p| p.step = 0), PolicyError::ZeroStep);
        assert_eq!(
            check(|p| p.interval = Duration::ZERO).to_string(),
            "interval must be greater than zero"
        );
        // Edges that are fine.
        let mut policy = eager();
        policy.scale_down_threshold = 0.0;
        policy.scale_up_threshold = 100.0;
        assert_eq!(policy.validate(), Ok(()));

        assert_eq!(Bounds { min: 2, max: 2 }.validate(), Ok(()));
        assert_eq!(
            Bounds { min: 3, max: 2 }
                .validate()
                .unwrap_err()
                .to_string(),
            "bounds are inverted: min 3 is above max 2"
        );
    }

    // ---- Decider ----

    #[test]
    fn exactly_at_a_threshold_is_a_middle_reading() {
        let t = Instant::now();
        let mut d = Decider::new(eager(), WIDE);
        assert_eq!(d.observe(t, at(4, 80.0)), None);
        assert_eq!(d.observe(t, at(4, 80.001)), Some(5));
        assert_eq!(d.observe(t, at(4, 50.0)), None);
        assert_eq!(d.observe(t, at(4, 49.999)), Some(3));
        assert_eq!(d.observe(t, at(4, f64::NAN)), None);
    }

    #[test]
    fn stability_needs_consecutive_readings() {
        let t = Instant::now();
        let mut policy = eager();
        policy.scale_up_stability = 3;
        policy.scale_down_stability = 2;
        let mut d = Decider::new(policy, WIDE);

        assert_eq!(d.observe(t, at(4, 90.0)), None);
        assert_eq!(d.observe(t, at(4, 90.0)), None);
        assert_eq!(d.observe(t, at(4, 90.0)), Some(5));
        // The streak used was reset: three more are needed.
        assert_eq!(d.observe(t, at(4, 90.0)), None);
        assert_eq!(d.observe(t, at(4, 90.0)), None);
        // A middle reading breaks the streak: it starts over.
        assert_eq!(d.observe(t, at(4, 65.0)), None);
        assert_eq!(d.observe(t, at(4, 90.0)), None);
        assert_eq!(d.observe(t, at(4, 90.0)), None);
        assert_eq!(d.observe(t, at(4, 90.0)), Some(5));

        // A high reading breaks a low streak, and a low one a high streak.
        assert_eq!(d.observe(t, at(4, 10.0)), None);
        assert_eq!(d.observe(t, at(4, 90.0)), None);
        assert_eq!(d.observe(t, at(4, 10.0)), None);
        assert_eq!(d.observe(t, at(4, 90.0)), None);
        assert_eq!(d.observe(t, at(4, 90.0)), None);
        assert_eq!(d.observe(t, at(4, 10.0)), None);
        assert_eq!(d.observe(t, at(4, 10.0)), Some(3));
    }

    #[test]
    fn skip_and_changed_clear_the_streaks() {
        let t = Instant::now();
        let mut policy = eager();
        policy.scale_up_stability = 2;
        let mut d = Decider::new(policy, WIDE);
        assert_eq!(d.observe(t, at(2, 90.0)), None);
        d.skip();
        assert_eq!(d.observe(t, at(2, 90.0)), None);
        d.changed(t);
        assert_eq!(d.observe(t, at(2, 90.0)), None);
        assert_eq!(d.observe(t, at(2, 90.0)), Some(3));
    }

    #[test]
    fn scale_up_cooldown_runs_from_the_last_change() {
        let t0 = Instant::now();
        let mut policy = eager();
        policy.scale_up_cooldown = secs(10);
        policy.scale_down_cooldown = secs(30);
        let mut d = Decider::new(policy, WIDE);
        // No change yet: no cooldown.
        assert_eq!(d.observe(t0, at(2, 90.0)), Some(3));
        d.changed(t0);
        assert_eq!(
            d.observe(t0 + secs(10) - Duration::from_millis(1), at(3, 90.0)),
            None
        );
        assert_eq!(d.observe(t0 + secs(10), at(3, 90.0)), Some(4));
    }

    #[test]
    fn scale_down_cooldown_is_separate() {
        let t0 = Instant::now();
        let mut policy = eager();
        policy.scale_up_cooldown = secs(10);
        policy.scale_down_cooldown = secs(30);
        let mut d = Decider::new(policy, WIDE);
        d.changed(t0);
        // 10 s: up is allowed again, down is not.
        assert_eq!(d.observe(t0 + secs(10), at(3, 10.0)), None);
        assert_eq!(d.observe(t0 + secs(29), at(3, 10.0)), None);
        assert_eq!(d.observe(t0 + secs(30), at(3, 10.0)), Some(2));
        d.changed(t0 + secs(30));
        assert_eq!(d.observe(t0 + secs(39), at(2, 90.0)), None);
        assert_eq!(d.observe(t0 + secs(40), at(2, 90.0)), Some(3));
    }

    #[test]
    fn readings_during_a_cooldown_are_not_counted() {
        let t0 = Instant::now();
        let mut policy = eager();
        policy.scale_up_stability = 2;
        policy.scale_up_cooldown = secs(10);
        let mut d = Decider::new(policy, WIDE);
        d.changed(t0);
        assert_eq!(d.observe(t0 + secs(5), at(2, 90.0)), None); // in cooldown
        assert_eq!(d.observe(t0 + secs(10), at(2, 90.0)), None); // first counted
        assert_eq!(d.observe(t0 + secs(15), at(2, 90.0)), Some(3));
    }

    #[test]
    fn bounds_are_never_crossed_and_the_step_is_clipped() {
        let t = Instant::now();
        let mut policy = eager();
        policy.step = 3;
        let mut d = Decider::new(policy, Bounds { min: 1, max: 4 });
        assert_eq!(d.observe(t, at(1, 90.0)), Some(4));
        assert_eq!(d.observe(t, at(2, 90.0)), Some(4)); // 5 clipped to 4
        assert_eq!(d.observe(t, at(4, 90.0)), None); // at max
        assert_eq!(d.observe(t, at(4, 10.0)), Some(1));
        assert_eq!(d.observe(t, at(3, 10.0)), Some(1)); // 0 clipped to 1
        assert_eq!(d.observe(t, at(1, 10.0)), None); // at min
    }

    #[test]
    fn a_high_reading_at_the_maximum_breaks_the_streak() {
        let t = Instant::now();
        let mut policy = eager();
        policy.scale_up_stability = 2;
        let mut d = Decider::new(policy, Bounds { min: 1, max: 4 });
        assert_eq!(d.observe(t, at(3, 90.0)), None);
        assert_eq!(d.observe(t, at(4, 90.0)), None); // at max: middle
        assert_eq!(d.observe(t, at(3, 90.0)), None);
        assert_eq!(d.observe(t, at(3, 90.0)), Some(4));
    }

    #[test]
    fn an_out_of_range_current_is_pulled_back_inside() {
        let t0 = Instant::now();
        let mut policy = eager();
        policy.scale_up_stability = 5;
        policy.scale_down_stability = 5;
        policy.scale_down = false;
        policy.step = 2;
        let mut d = Decider::new(policy.clone(), Bounds { min: 2, max: 6 });
        // Whatever the utilisation or stability, and even with scale-down off.
        assert_eq!(d.observe(t0, at(9, 99.0)), Some(6));
        assert_eq!(d.observe(t0, at(7, 50.0)), Some(6));
        assert_eq!(d.observe(t0, at(1, 1.0)), Some(2));
        assert_eq!(d.observe(t0, at(0, 99.0)), Some(2));

        // The cooldown of that direction still applies.
        policy.scale_up_cooldown = secs(10);
        policy.scale_down_cooldown = secs(30);
        let mut d = Decider::new(policy, Bounds { min: 2, max: 6 });
        d.changed(t0);
        assert_eq!(d.observe(t0 + secs(10), at(1, 70.0)), Some(2));
        assert_eq!(d.observe(t0 + secs(10), at(7, 70.0)), None);
        assert_eq!(d.observe(t0 + secs(30), at(7, 70.0)), Some(6));
    }

    #[test]
    fn scale_down_off_never_shrinks() {
        let t0 = Instant::now();
        let mut policy = eager();
        policy.scale_down = false;
        policy.scale_up_stability = 2;
        let mut d = Decider::new(policy, WIDE);
        for i in 0..100 {
            assert_eq!(d.observe(t0 + secs(i), at(5, 0.0)), None);
        }
        // A low reading still breaks a high streak.
        assert_eq!(d.observe(t0, at(5, 90.0)), None);
        assert_eq!(d.observe(t0, at(5, 10.0)), None);
        assert_eq!(d.observe(t0, at(5, 90.0)), None);
        assert_eq!(d.observe(t0, at(5, 90.0)), Some(6));
    }

    #[test]
    fn memory_steps_by_128_mib_up_to_the_maximum() {
        let t0 = Instant::now();
        let mut d = Decider::new(
            Policy::memory(),
            Bounds {
                min: 512,
                max: 1000,
            },
        );
        let mut target = None;
        for i in 0..3 {
            target = d.observe(t0 + secs(10 * i), at(512, 90.0));
        }
        assert_eq!(target, Some(640));
        d.changed(t0 + secs(20));
        // 30 s cooldown, then three readings again; 896 + 128 is clipped at 1000.
        let mut targets = Vec::new();
        for i in 3..9 {
            targets.push(d.observe(t0 + secs(10 * i), at(896, 90.0)));
        }
        assert_eq!(targets, [None, None, None, None, Some(1000), None]);
        // Memory scale-down is off by default.
        for i in 0..20 {
            assert_eq!(d.observe(t0 + secs(1000 + 10 * i), at(896, 1.0)), None);
        }
    }

    #[test]
    fn an_invalid_policy_does_not_panic_the_decider() {
        let t = Instant::now();
        let mut policy = eager();
        policy.step = 0;
        policy.scale_up_stability = 0;
        let mut d = Decider::new(policy, Bounds { min: 4, max: 2 });
        assert_eq!(d.bounds(), Bounds { min: 4, max: 4 });
        assert_eq!(d.observe(t, at(4, 99.0)), None);
        let mut d = Decider::new(Policy { step: 0, ..eager() }, WIDE);
        assert_eq!(d.observe(t, at(4, 99.0)), Some(5));
    }
}
