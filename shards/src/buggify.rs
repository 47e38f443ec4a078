//! Fault injection points inside production code, compiled only for
//! simulation (FoundationDB's BUGGIFY).
//!
//! `buggify!(percent)` marks a spot where production code may take a rare
//! but legal path — a group sealed early, a message split in single legs, a
//! batch sent down the slow path — so the simulator reaches it far more
//! often than a real run would. A point must never break a documented
//! guarantee: it only picks one of the behaviours the code must already
//! handle.
//!
//! Without the `sim` feature (and outside this crate's own tests) the macro
//! is the constant `false`: release builds carry no cost, not even a branch.
//! With it, every point is off until a simulation run calls [`enable`] on
//! its thread; then each point is switched on or off once per run (on with
//! probability 1/4, by the run's seed) and, when on, fires with its
//! `percent` chance each time it is reached. Everything follows from the
//! seed, so a run still replays exactly.

#[cfg(any(test, feature = "sim"))]
mod active {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use crate::sim::Prng;

    struct State {
        prng: Prng,
        /// Per point (file:line): switched on for this run?
        points: BTreeMap<&'static str, bool>,
        fired: u64,
    }

    thread_local! {
        static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
    }

    /// Turns the points on for this thread's run, drawn from `seed`.
    pub fn enable(seed: u64) {
        STATE.with(|s| {
            *s.borrow_mut() = Some(State { prng: Prng(seed ^ 0xb0661f7), points: BTreeMap::new(), fired: 0 })
        });
    }

    /// Turns them off again; returns how many times they fired.
    pub fn disable() -> u64 {
        STATE.with(|s| s.borrow_mut().take().map_or(0, |state| state.fired))
    }

    /// True when point `point` fires now.
    pub fn fire(point: &'static str, percent: u64) -> bool {
        STATE.with(|s| {
            let mut state = s.borrow_mut();
            let Some(state) = state.as_mut() else { return false };
            let State { prng, points, fired } = state;
            let on = *points.entry(point).or_insert_with(|| prng.chance(25));
            let fires = on && prng.chance(percent);
            *fired += u64::from(fires);
            fires
        })
    }
}

#[cfg(any(test, feature = "sim"))]
pub use active::{disable, enable, fire};

/// True when this build has the fault points (the `sim` feature, or this crate's tests).
pub const COMPILED: bool = cfg!(any(test, feature = "sim"));

/// Without the fault points there is nothing to turn on.
#[cfg(not(any(test, feature = "sim")))]
pub fn enable(_seed: u64) {}

/// Without the fault points none ever fired.
#[cfg(not(any(test, feature = "sim")))]
pub fn disable() -> u64 {
    0
}

/// True, rarely, at a fault point inside a simulation run: see the module.
#[cfg(any(test, feature = "sim"))]
macro_rules! buggify {
    ($percent:expr) => {
        $crate::buggify::fire(concat!(file!(), ":", line!()), $percent)
    };
}

/// Always false: this build has no fault points (see the module).
#[cfg(not(any(test, feature = "sim")))]
macro_rules! buggify {
    ($percent:expr) => {
        false
    };
}

pub(crate) use buggify;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_fire_only_inside_a_run_and_replay_by_seed() {
        let draws = || (0..200).map(|_| buggify!(50)).collect::<Vec<bool>>();
        assert!(!draws().contains(&true), "off outside a run");
        let run = |seed| {
            enable(seed);
            let fired = draws();
            (fired, disable())
        };
        let runs: Vec<(Vec<bool>, u64)> = (0..64).map(run).collect();
        for (seed, r) in runs.iter().enumerate() {
            assert_eq!(&run(seed as u64), r, "a run replays by its seed");
            assert_eq!(r.1, r.0.iter().filter(|&&f| f).count() as u64);
        }
        // A point is switched on in about 1 run in 4; on, it fires about half the time.
        let on: Vec<u64> = runs.iter().map(|r| r.1).filter(|&fired| fired > 0).collect();
        assert!((4..40).contains(&on.len()), "on in {} of 64 runs", on.len());
        assert!(on.iter().all(|fired| (50..150).contains(fired)), "{on:?}");
        assert!(!draws().contains(&true), "off again after the run");
    }
}
