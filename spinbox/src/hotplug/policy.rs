//! The hotplug controller's policy (SPEC §12): when to add or remove vCPUs or memory.
//!
//! Three layers:
//!
//! - [`Policy`]: the numbers (interval, thresholds, stability counts, cooldowns, step,
//!   scale-down on/off), with the upstream defaults in [`Policy::cpu`] and [`Policy::memory`].
//! - [`Decider`]: the pure decision, fed one [`Sample`] at a time with an explicit
//!   [`Instant`]; it has no clock of its own.
//! - [`run_controller`]: the loop that samples every interval through a [`Sampler`], asks the
//!   [`Decider`] and resizes through an [`Actuator`], until told to stop.
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
//! controllers that this generic policy leaves to the [`Sampler`]:
//!
//! - the CPU controller does not scale while 5 % or more of CPU time is throttled (the
//!   sampler can return `Ok(None)` then, which resets the streaks as upstream does);
//! - the CPU controller judges "low" on the utilisation projected onto one vCPU fewer
//!   (`usage * n / (n - 1) <= 50`), here it is the reading itself (`< 50`);
//! - the memory controller also needs less than 128 MiB free before scaling up;
//! - upstream's thresholds count a reading *at* the scale-up threshold as high; here it is
//!   middle (strictly above / strictly below);
//! - upstream's scale-up cooldown runs from the last scale-up and the scale-down cooldown from
//!   the last scale-down; here both run from the last change of either kind
//!   ([`Decider::changed`]), which is never shorter.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

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

/// Reads the resource's size and utilisation.
#[async_trait::async_trait]
pub trait Sampler: Send + Sync {
    /// One reading. `Ok(None)`: skip this round (e.g. the resource is pinned by an explicit
    /// resize, or there is no baseline yet).
    async fn sample(&self) -> Result<Option<Sample>, BoxError>;
}

/// Changes the resource's size.
#[async_trait::async_trait]
pub trait Actuator: Send + Sync {
    /// Resize to `target`; returns the size reached (may differ if the guest refused part).
    async fn resize(&self, target: u32) -> Result<u32, BoxError>;
}

/// What a controller did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerReport {
    /// Readings received (`Ok(Some(_))`).
    pub samples: u64,
    /// Rounds skipped by the sampler (`Ok(None)`).
    pub skipped: u64,
    /// Rounds whose sampling failed.
    pub sample_errors: u64,
    /// `(from, to)` of each resize that changed the size (`to` is the size reached).
    pub changes: Vec<(u32, u32)>,
    /// Resizes that failed.
    pub resize_errors: u64,
}

/// The controller loop: every `policy.interval` (a [`tokio::time::interval`] with
/// [`MissedTickBehavior::Delay`], first tick one interval after the start), sample → decide →
/// resize.
///
/// When `stop` becomes `true` (or its sender is dropped) the loop returns, but it is only
/// ever interrupted while *waiting* (for the tick or for a sample): a resize in flight always
/// runs to completion first, so whoever stops the controller can wait for an in-flight
/// hotplug by awaiting this future. A `stop` that is already `true` returns before the first
/// tick.
///
/// A failed sample resets the streaks like a skipped round. After every resize, failed or
/// not, the cooldowns start (no hammering QEMU). Errors are counted in the report and logged
/// with `tracing` under `name`; nothing panics. An invalid policy or bounds is logged and
/// returns an empty report at once, without sampling.
pub async fn run_controller(
    name: &'static str,
    policy: Policy,
    bounds: Bounds,
    sampler: &dyn Sampler,
    actuator: &dyn Actuator,
    mut stop: watch::Receiver<bool>,
) -> ControllerReport {
    let mut report = ControllerReport::default();
    if let Err(error) = policy.validate().and_then(|()| bounds.validate()) {
        tracing::error!(controller = name, %error, "hotplug: invalid policy, controller not started");
        return report;
    }
    let Some(first) = Instant::now().checked_add(policy.interval) else {
        tracing::error!(controller = name, interval = ?policy.interval, "hotplug: interval too large, controller not started");
        return report;
    };
    let mut ticker = tokio::time::interval_at(first, policy.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut decider = Decider::new(policy, bounds);
    tracing::info!(
        controller = name,
        min = bounds.min,
        max = bounds.max,
        interval = ?decider.policy().interval,
        "hotplug: controller started"
    );

    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            _ = ticker.tick() => {}
        }
        let reading = tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            reading = sampler.sample() => reading,
        };
        let sample = match reading {
            Ok(Some(sample)) => {
                report.samples += 1;
                sample
            }
            Ok(None) => {
                report.skipped += 1;
                decider.skip();
                continue;
            }
            Err(error) => {
                report.sample_errors += 1;
                decider.skip();
                let error = crate::check::error_chain(&*error);
                tracing::warn!(controller = name, %error, "hotplug: sampling failed");
                continue;
            }
        };
        tracing::debug!(
            controller = name,
            current = sample.current,
            utilisation = sample.utilisation,
            "hotplug: sample"
        );
        let Some(target) = decider.observe(Instant::now(), sample) else {
            continue;
        };

        tracing::info!(
            controller = name,
            from = sample.current,
            to = target,
            "hotplug: resizing"
        );
        // Not raced against `stop`: a resize in flight runs to completion.
        match actuator.resize(target).await {
            Ok(reached) => {
                if reached != target {
                    tracing::warn!(
                        controller = name,
                        target,
                        reached,
                        "hotplug: resize reached a different size"
                    );
                }
                if reached != sample.current {
                    report.changes.push((sample.current, reached));
                }
            }
            Err(error) => {
                report.resize_errors += 1;
                let error = crate::check::error_chain(&*error);
                tracing::warn!(controller = name, target, %error, "hotplug: resize failed");
            }
        }
        decider.changed(Instant::now());
    }

    tracing::info!(controller = name, ?report, "hotplug: controller stopped");
    report
}

/// Resolves once `stop` holds `true` or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped, which stops the controller as well.
    let _ = stop.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

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

    // ---- the loop, on tokio's paused clock ----

    #[derive(Debug, Clone, Copy)]
    enum Reading {
        /// A reading at this utilisation, of the size the actuator last reached.
        Load(f64),
        Skip,
        Fail,
        /// Never answers.
        Hang,
    }

    /// Scripted readings; once the script runs out, a middle reading (60 %).
    struct FakeSampler {
        script: Mutex<VecDeque<Reading>>,
        size: Arc<AtomicU32>,
        start: Instant,
        taken: Mutex<Vec<Duration>>,
    }

    impl FakeSampler {
        fn new(start: Instant, size: &Arc<AtomicU32>, script: &[Reading]) -> Self {
            Self {
                script: Mutex::new(script.iter().copied().collect()),
                size: Arc::clone(size),
                start,
                taken: Mutex::new(Vec::new()),
            }
        }
        fn repeat(start: Instant, size: &Arc<AtomicU32>, reading: Reading, n: usize) -> Self {
            Self::new(start, size, &vec![reading; n])
        }
        fn taken(&self) -> Vec<Duration> {
            self.taken.lock().unwrap().clone()
        }
    }

    #[async_trait::async_trait]
    impl Sampler for FakeSampler {
        async fn sample(&self) -> Result<Option<Sample>, BoxError> {
            self.taken.lock().unwrap().push(self.start.elapsed());
            let next = self.script.lock().unwrap().pop_front();
            match next.unwrap_or(Reading::Load(60.0)) {
                Reading::Load(utilisation) => Ok(Some(Sample {
                    current: self.size.load(Ordering::SeqCst),
                    utilisation,
                })),
                Reading::Skip => Ok(None),
                Reading::Fail => Err("stats unavailable".into()),
                Reading::Hang => std::future::pending().await,
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Call {
        target: u32,
        started: Duration,
        finished: Option<Duration>,
    }

    /// Records calls; takes `delay` of (paused) time; fails the first `failures` calls;
    /// never goes above `cap`.
    struct FakeActuator {
        size: Arc<AtomicU32>,
        start: Instant,
        delay: Duration,
        failures: AtomicU32,
        cap: u32,
        calls: Mutex<Vec<Call>>,
    }

    impl FakeActuator {
        fn new(start: Instant, size: &Arc<AtomicU32>) -> Self {
            Self {
                size: Arc::clone(size),
                start,
                delay: Duration::ZERO,
                failures: AtomicU32::new(0),
                cap: u32::MAX,
                calls: Mutex::new(Vec::new()),
            }
        }
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
        fn call_times(&self) -> Vec<Duration> {
            self.calls().iter().map(|c| c.started).collect()
        }
    }

    #[async_trait::async_trait]
    impl Actuator for FakeActuator {
        async fn resize(&self, target: u32) -> Result<u32, BoxError> {
            let index = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(Call {
                    target,
                    started: self.start.elapsed(),
                    finished: None,
                });
                calls.len() - 1
            };
            tokio::time::sleep(self.delay).await;
            self.calls.lock().unwrap()[index].finished = Some(self.start.elapsed());
            let fail = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail {
                return Err("device_add failed".into());
            }
            let reached = target.min(self.cap);
            self.size.store(reached, Ordering::SeqCst);
            Ok(reached)
        }
    }

    /// Runs the controller, sends stop `after` the start, returns the report and when the
    /// controller returned.
    async fn run_for(
        after: Duration,
        policy: Policy,
        bounds: Bounds,
        sampler: &FakeSampler,
        actuator: &FakeActuator,
    ) -> (ControllerReport, Duration) {
        let start = sampler.start;
        let (tx, rx) = watch::channel(false);
        let controller = async {
            let report = run_controller("test", policy, bounds, sampler, actuator, rx).await;
            (report, start.elapsed())
        };
        let stopper = async {
            tokio::time::sleep(after).await;
            tx.send(true).unwrap();
        };
        let (result, ()) = tokio::join!(controller, stopper);
        result
    }

    fn size(n: u32) -> Arc<AtomicU32> {
        Arc::new(AtomicU32::new(n))
    }

    #[tokio::test(start_paused = true)]
    async fn scales_up_after_the_stability_count_then_keeps_the_cooldown() {
        let start = Instant::now();
        let size = size(1);
        let sampler = FakeSampler::repeat(start, &size, Reading::Load(95.0), 100);
        let actuator = FakeActuator::new(start, &size);
        let (report, stopped) = run_for(
            secs(32),
            Policy::cpu(),
            Bounds { min: 1, max: 3 },
            &sampler,
            &actuator,
        )
        .await;
        // Every 5 s, the first after 5 s.
        assert_eq!(
            sampler.taken(),
            [secs(5), secs(10), secs(15), secs(20), secs(25), secs(30)]
        );
        // Two high readings (5 s, 10 s) → 2 vCPUs at 10 s; 15 s is within the 10 s cooldown,
        // 20 s and 25 s count → 3 vCPUs at 25 s; then at the maximum.
        assert_eq!(actuator.call_times(), [secs(10), secs(25)]);
        assert_eq!(
            report,
            ControllerReport {
                samples: 6,
                changes: vec![(1, 2), (2, 3)],
                ..ControllerReport::default()
            }
        );
        assert_eq!(stopped, secs(32));
    }

    #[tokio::test(start_paused = true)]
    async fn scales_down_after_six_low_readings() {
        let start = Instant::now();
        let size = size(3);
        let sampler = FakeSampler::repeat(start, &size, Reading::Load(10.0), 100);
        let actuator = FakeActuator::new(start, &size);
        let (report, _) = run_for(
            secs(100),
            Policy::cpu(),
            Bounds { min: 1, max: 4 },
            &sampler,
            &actuator,
        )
        .await;
        // 6 readings (5..30 s) → 2 at 30 s; 30 s cooldown: 35..55 s not counted, 60..85 s
        // counted → 1 at 85 s; then at the minimum.
        assert_eq!(actuator.call_times(), [secs(30), secs(85)]);
        assert_eq!(report.changes, [(3, 2), (2, 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_while_waiting_for_the_tick_returns_promptly() {
        let start = Instant::now();
        let size = size(1);
        let sampler = FakeSampler::repeat(start, &size, Reading::Load(95.0), 100);
        let actuator = FakeActuator::new(start, &size);
        let (report, stopped) = run_for(
            secs(7),
            Policy::cpu(),
            Bounds { min: 1, max: 3 },
            &sampler,
            &actuator,
        )
        .await;
        assert_eq!(stopped, secs(7));
        assert_eq!(sampler.taken(), [secs(5)]);
        assert_eq!(report.samples, 1);
        assert!(actuator.calls().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn stop_while_waiting_for_a_sample_returns_promptly() {
        let start = Instant::now();
        let size = size(1);
        let sampler = FakeSampler::new(start, &size, &[Reading::Load(95.0), Reading::Hang]);
        let actuator = FakeActuator::new(start, &size);
        let (report, stopped) = run_for(
            secs(12),
            Policy::cpu(),
            Bounds { min: 1, max: 3 },
            &sampler,
            &actuator,
        )
        .await;
        assert_eq!(stopped, secs(12));
        assert_eq!(sampler.taken(), [secs(5), secs(10)]);
        assert_eq!(report.samples, 1);
        assert!(actuator.calls().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn stop_during_a_slow_resize_waits_for_it_to_finish() {
        let start = Instant::now();
        let size = size(1);
        let sampler = FakeSampler::repeat(start, &size, Reading::Load(95.0), 100);
        let mut actuator = FakeActuator::new(start, &size);
        actuator.delay = secs(20);
        // The resize starts at 10 s and takes 20 s; stop comes at 11 s.
        let (report, stopped) = run_for(
            secs(11),
            Policy::cpu(),
            Bounds { min: 1, max: 3 },
            &sampler,
            &actuator,
        )
        .await;
        assert_eq!(
            actuator.calls(),
            [Call {
                target: 2,
                started: secs(10),
                finished: Some(secs(30)),
            }]
        );
        assert_eq!(stopped, secs(30));
        assert_eq!(size.load(Ordering::SeqCst), 2);
        assert_eq!(
            report,
            ControllerReport {
                samples: 2,
                changes: vec![(1, 2)],
                ..ControllerReport::default()
            }
        );
        // No reading after the resize: the stop was seen first.
        assert_eq!(sampler.taken(), [secs(5), secs(10)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_resize_delays_the_next_tick() {
        let start = Instant::now();
        let size = size(1);
        let sampler = FakeSampler::repeat(start, &size, Reading::Load(95.0), 2);
        let mut actuator = FakeActuator::new(start, &size);
        actuator.delay = secs(12);
        let (report, _) = run_for(
            secs(40),
            Policy::cpu(),
            Bounds { min: 1, max: 3 },
            &sampler,
            &actuator,
        )
        .await;
        // Resize 10..22 s; the missed ticks collapse into one at 22 s, then every 5 s from it.
        assert_eq!(
            sampler.taken(),
            [secs(5), secs(10), secs(22), secs(27), secs(32), secs(37)]
        );
        assert_eq!(report.changes, [(1, 2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_sender_stops_the_loop() {
        let start = Instant::now();
        let size = size(1);
        let sampler = FakeSampler::repeat(start, &size, Reading::Load(60.0), 0);
        let actuator = FakeActuator::new(start, &size);
        let (tx, rx) = watch::channel(false);
        let controller = run_controller("test", Policy::cpu(), WIDE, &sampler, &actuator, rx);
        let dropper = async {
            tokio::time::sleep(secs(8)).await;
            drop(tx);
        };
        let (report, ()) = tokio::join!(controller, dropper);
        assert_eq!(start.elapsed(), secs(8));
        assert_eq!(report.samples, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_already_stopped_controller_returns_before_the_first_tick() {
        let start = Instant::now();
        let size = size(1);
        let sampler = FakeSampler::repeat(start, &size, Reading::Load(95.0), 10);
        let actuator = FakeActuator::new(start, &size);
        let (_tx, rx) = watch::channel(true);
        let report = run_controller("test", Policy::cpu(), WIDE, &sampler, &actuator, rx).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(report, ControllerReport::default());
        assert!(sampler.taken().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn sample_errors_are_counted_reset_the_streak_and_the_loop_goes_on() {
        let start = Instant::now();
        let size = size(1);
        let high = Reading::Load(95.0);
        let sampler = FakeSampler::new(
            start,
            &size,
            &[Reading::Fail, high, Reading::Fail, high, high],
        );
        let actuator = FakeActuator::new(start, &size);
        let (report, _) = run_for(
            secs(27),
            Policy::cpu(),
            Bounds { min: 1, max: 3 },
            &sampler,
            &actuator,
        )
        .await;
        // The failure at 15 s broke the streak begun at 10 s: 20 s and 25 s make the pair.
        assert_eq!(actuator.call_times(), [secs(25)]);
        assert_eq!(
            report,
            ControllerReport {
                samples: 3,
                sample_errors: 2,
                changes: vec![(1, 2)],
                ..ControllerReport::default()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn skipped_rounds_are_counted_and_reset_the_streak() {
        let start = Instant::now();
        let size = size(1);
        let high = Reading::Load(95.0);
        let sampler = FakeSampler::new(start, &size, &[high, Reading::Skip, high, high]);
        let actuator = FakeActuator::new(start, &size);
        let (report, _) = run_for(
            secs(22),
            Policy::cpu(),
            Bounds { min: 1, max: 3 },
            &sampler,
            &actuator,
        )
        .await;
        assert_eq!(actuator.call_times(), [secs(20)]);
        assert_eq!(
            report,
            ControllerReport {
                samples: 3,
                skipped: 1,
                changes: vec![(1, 2)],
                ..ControllerReport::default()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_resize_is_counted_and_still_starts_the_cooldown() {
        let start = Instant::now();
        let size = size(1);
        let sampler = FakeSampler::repeat(start, &size, Reading::Load(95.0), 100);
        let actuator = FakeActuator::new(start, &size);
        actuator.failures.store(2, Ordering::SeqCst);
        let (report, _) = run_for(
            secs(57),
            Policy::cpu(),
            Bounds { min: 1, max: 3 },
            &sampler,
            &actuator,
        )
        .await;
        // Fails at 10 s and 25 s (each followed by the 10 s cooldown and two counted
        // readings), succeeds at 40 s, then 2 → 3 at 55 s.
        assert_eq!(
            actuator.call_times(),
            [secs(10), secs(25), secs(40), secs(55)]
        );
        assert_eq!(
            report,
            ControllerReport {
                samples: 11,
                resize_errors: 2,
                changes: vec![(1, 2), (2, 3)],
                ..ControllerReport::default()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_resize_reports_the_size_reached() {
        let start = Instant::now();
        let size = size(1);
        let sampler = FakeSampler::repeat(start, &size, Reading::Load(95.0), 100);
        let mut actuator = FakeActuator::new(start, &size);
        actuator.cap = 2;
        let policy = Policy {
            step: 3,
            ..Policy::cpu()
        };
        let (report, _) = run_for(secs(27), policy, WIDE, &sampler, &actuator).await;
        // Asked for 4, reached 2; asked again (2 + 3 = 5) after the cooldown, nothing gained.
        let targets: Vec<u32> = actuator.calls().iter().map(|c| c.target).collect();
        assert_eq!(targets, [4, 5]);
        assert_eq!(actuator.call_times(), [secs(10), secs(25)]);
        assert_eq!(report.changes, [(1, 2)]);
        assert_eq!(report.resize_errors, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalid_policy_returns_at_once() {
        let start = Instant::now();
        let size = size(1);
        let sampler = FakeSampler::repeat(start, &size, Reading::Load(95.0), 10);
        let actuator = FakeActuator::new(start, &size);
        let (_tx, rx) = watch::channel(false);
        let policy = Policy {
            interval: Duration::ZERO,
            ..Policy::cpu()
        };
        let report = run_controller("test", policy, WIDE, &sampler, &actuator, rx.clone()).await;
        assert_eq!(report, ControllerReport::default());
        let inverted = Bounds { min: 3, max: 1 };
        let report = run_controller("test", Policy::cpu(), inverted, &sampler, &actuator, rx).await;
        assert_eq!(report, ControllerReport::default());
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(sampler.taken().is_empty());
    }

    #[test]
    fn the_controller_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let start = Instant::now();
        let size = size(1);
        let sampler = FakeSampler::repeat(start, &size, Reading::Load(95.0), 0);
        let actuator = FakeActuator::new(start, &size);
        let (_tx, rx) = watch::channel(false);
        let future = run_controller("test", Policy::cpu(), WIDE, &sampler, &actuator, rx);
        assert_send(&future);
    }
}
