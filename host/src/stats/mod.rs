//! Paired statistics for evaluation: McNemar's test, Wilson score intervals, Cohen's h and
//! Benjamini-Hochberg adjusted p-values, on [`statrs`].
//!
//! Every figure is defined for every valid input, degenerate ones included (no discordant
//! pairs, an arm that passes or fails everything, a single group): nothing here returns NaN.
//! Invalid input (an empty group, mismatched lengths, an outcome other than 0 or 1, ...) is a
//! [`StatsError`] whose message names the group and the offending value.
//!
//! [`paired()`] is the entry point for paired binary outcomes grouped by instruction type;
//! [`PairedInput`] is the JSON form that `kiln stats paired` reads. The figures agree with
//! statsmodels to 1e-9 on the fixed cases in `tests/fixtures/stats/`.

mod bh;
mod effect;
mod error;
mod input;
mod level;
mod mcnemar;
mod paired;
mod proportion;
mod wilson;

pub use bh::benjamini_hochberg;
pub use effect::{cohens_h, cohens_h_from};
pub use error::StatsError;
pub use input::{GroupInput, PairedInput};
pub use level::ConfidenceLevel;
pub use mcnemar::McNemar;
pub use paired::{paired, PairedCounts, PairedGroup, PairedReport, PairedStats, OVERALL};
pub use proportion::Proportion;
pub use wilson::{wilson, Interval};
