//! The Wilson score interval for a pass rate.

use serde::ser::SerializeTuple;

use super::{ConfidenceLevel, Proportion};

/// A closed interval `[lo, hi]` within [0, 1]; serialized as the pair `[lo, hi]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Lower bound.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
}

impl serde::Serialize for Interval {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&self.lo)?;
        t.serialize_element(&self.hi)?;
        t.end()
    }
}

/// The Wilson score interval for `p` at `level`: with `q = successes / n` and `z` the two-sided
/// critical value,
///
/// ```text
/// centre = (q + z²/(2n)) / (1 + z²/n)
/// half   = z · √(q(1 - q)/n + z²/(4n²)) / (1 + z²/n)
/// ```
///
/// clipped to [0, 1], computed in the same order as statsmodels'
/// `proportion_confint(count, nobs, alpha, method="wilson")`. All-fail and all-pass arms are
/// well defined (`[0, hi]` and `[lo, 1]`).
pub fn wilson(p: Proportion, level: ConfidenceLevel) -> Interval {
    let n = p.n() as f64;
    let q = p.value();
    let z = level.z();
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (q + z2 / (2.0 * n)) / denom;
    let half = z * (q * (1.0 - q) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    Interval { lo: (centre - half).clamp(0.0, 1.0), hi: (centre + half).clamp(0.0, 1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(successes: u64, n: u64, level: f64, lo: f64, hi: f64) {
        let i = wilson(Proportion::new("g", successes, n).unwrap(), ConfidenceLevel::new(level).unwrap());
        assert!((i.lo - lo).abs() < 1e-12 && (i.hi - hi).abs() < 1e-12, "{successes}/{n} at {level}: {i:?}");
    }

    #[test]
    fn by_statsmodels() {
        // proportion_confint(5, 10, method="wilson"): symmetric about 1/2.
        check(5, 10, 0.95, 0.23659309051256394, 0.7634069094874361);
        // All fail, all pass, a single item.
        check(0, 10, 0.95, 0.0, 0.27753279986288926);
        check(10, 10, 0.95, 0.7224672001371106, 1.0);
        check(0, 1, 0.95, 0.0, 0.7934506856227627);
        check(1, 1, 0.95, 0.2065493143772374, 1.0);
        // proportion_confint(7, 20, alpha=0.01, method="wilson").
        check(7, 20, 0.99, 0.14639344137693883, 0.6283381789526872);
    }

    #[test]
    fn serializes_as_a_pair() {
        assert_eq!(serde_json::to_string(&Interval { lo: 0.25, hi: 1.0 }).unwrap(), "[0.25,1.0]");
    }
}
