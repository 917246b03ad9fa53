//! The confidence level of an interval.

use statrs::distribution::{ContinuousCDF, Normal};

use super::StatsError;

/// A confidence level strictly between 0 and 1; 0.95 by default.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct ConfidenceLevel(f64);

impl ConfidenceLevel {
    /// The level, checked to be strictly between 0 and 1.
    pub fn new(level: f64) -> Result<Self, StatsError> {
        if level > 0.0 && level < 1.0 {
            Ok(ConfidenceLevel(level))
        } else {
            Err(StatsError::InvalidLevel { level })
        }
    }

    /// The level, e.g. 0.95.
    pub fn value(self) -> f64 {
        self.0
    }

    /// The two-sided critical value: the standard normal quantile `z` with `P(|Z| > z) = 1 - level`
    /// (1.959963984540054 at 0.95). Taken from the lower tail, `-Φ⁻¹(α/2)`, which keeps its
    /// precision for levels close to 1.
    pub fn z(self) -> f64 {
        let alpha = 1.0 - self.0;
        -Normal::standard().inverse_cdf(alpha / 2.0)
    }
}

impl Default for ConfidenceLevel {
    fn default() -> Self {
        ConfidenceLevel(0.95)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_at_common_levels() {
        // scipy.stats.norm.isf([0.025, 0.005, 0.05]) = 1.959963984540054, 2.5758293035489004, 1.6448536269514729
        assert!((ConfidenceLevel::default().z() - 1.959963984540054).abs() < 1e-14);
        assert!((ConfidenceLevel::new(0.99).unwrap().z() - 2.5758293035489004).abs() < 1e-14);
        assert!((ConfidenceLevel::new(0.90).unwrap().z() - 1.6448536269514729).abs() < 1e-14);
    }

    #[test]
    fn rejects_levels_outside_the_open_unit_interval() {
        for bad in [0.0, 1.0, -0.5, 95.0, f64::NAN, f64::INFINITY] {
            let e = ConfidenceLevel::new(bad).unwrap_err();
            assert!(e.to_string().contains(&bad.to_string()), "{e}");
        }
    }
}
