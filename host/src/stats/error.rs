//! What can be wrong with the input of the statistics: every message names the group (or the
//! position) and the offending value.

/// Invalid input to the statistics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// There are no groups at all.
    #[error("no groups: the input needs at least one group")]
    NoGroups,
    /// A group has no items, so it has no pass rate.
    #[error("group \"{group}\" is empty (n = 0)")]
    EmptyGroup {
        /// The group's name.
        group: String,
    },
    /// The two arms of a group have different numbers of items.
    #[error("group \"{group}\": base has {base} items but tuned has {tuned}; paired outcomes need the same number")]
    LengthMismatch {
        /// The group's name.
        group: String,
        /// Number of base outcomes.
        base: usize,
        /// Number of tuned outcomes.
        tuned: usize,
    },
    /// An outcome is not 0 or 1.
    #[error("group \"{group}\": {arm}[{index}] is {value}, expected 0 or 1")]
    NotBinary {
        /// The group's name.
        group: String,
        /// `"base"` or `"tuned"`.
        arm: &'static str,
        /// Position of the outcome in its arm (from 0).
        index: usize,
        /// The value found, as it was written.
        value: String,
    },
    /// Two groups have the same name.
    #[error("group \"{group}\" appears twice (groups[{first}] and groups[{second}])")]
    DuplicateGroup {
        /// The repeated name.
        group: String,
        /// Position of its first appearance (from 0).
        first: usize,
        /// Position of its second appearance (from 0).
        second: usize,
    },
    /// More successes than trials.
    #[error("group \"{group}\": {successes} successes out of n = {n}")]
    SuccessesExceedTrials {
        /// The group's name.
        group: String,
        /// Number of successes.
        successes: u64,
        /// Number of trials.
        n: u64,
    },
    /// A confidence level outside (0, 1).
    #[error("confidence level {level} is not strictly between 0 and 1")]
    InvalidLevel {
        /// The level given.
        level: f64,
    },
    /// A p-value outside [0, 1] (or NaN).
    #[error("p-value [{index}] is {value}, not in [0, 1]")]
    InvalidPValue {
        /// Position of the p-value (from 0).
        index: usize,
        /// The value given.
        value: f64,
    },
}
