//! McNemar's test on the discordant pairs of paired binary outcomes.

use statrs::distribution::{Binomial, ChiSquared, ContinuousCDF, DiscreteCDF};

/// McNemar's test from the two discordant counts of a paired 2x2 table.
///
/// `b` counts the items that pass in the base arm and fail in the tuned arm, `c` those that fail
/// in the base arm and pass in the tuned arm; under the null hypothesis (no difference between
/// the arms) each discordant item is equally likely to be either kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McNemar {
    /// Base pass, tuned fail.
    pub b: u64,
    /// Base fail, tuned pass.
    pub c: u64,
}

impl McNemar {
    /// The test on `b` and `c`.
    pub fn new(b: u64, c: u64) -> Self {
        McNemar { b, c }
    }

    /// The exact two-sided p-value: `min(1, 2·P(X ≤ min(b, c)))` with `X ~ Binomial(b + c, 1/2)`,
    /// as statsmodels' `mcnemar(table, exact=True)`. Exactly 1 when there are no discordant pairs,
    /// and whenever `|b - c| ≤ 1`.
    pub fn exact_p(self) -> f64 {
        let n = self.b + self.c;
        if self.b.abs_diff(self.c) <= 1 {
            // P(X ≤ min(b, c)) ≥ 1/2 by symmetry, so p = 1 exactly (the incomplete beta function
            // behind the binomial CDF is a few ulps short of 1/2 there). Covers b = c = 0.
            return 1.0;
        }
        let binomial = Binomial::new(0.5, n).expect("p = 0.5 and n > 0 are valid binomial parameters");
        (2.0 * binomial.cdf(self.b.min(self.c))).min(1.0)
    }

    /// The continuity-corrected chi-square statistic `(|b - c| - 1)² / (b + c)`, or `None` when
    /// there are no discordant pairs (`b + c = 0`).
    ///
    /// As in statsmodels' `mcnemar(table, exact=False, correction=True)`, the correction is not
    /// clipped at zero: with `b = c > 0` the statistic is `1 / (b + c)`, not 0 (R's
    /// `mcnemar.test` drops the correction there instead and reports p = 1).
    pub fn chi2_statistic(self) -> Option<f64> {
        let n = self.b + self.c;
        if n == 0 {
            return None;
        }
        let d = self.b.abs_diff(self.c) as f64 - 1.0;
        Some(d * d / n as f64)
    }

    /// The p-value of [`McNemar::chi2_statistic`] under the chi-square distribution with one degree
    /// of freedom. Defined as 1 when there are no discordant pairs: there is no evidence of a
    /// difference (statsmodels divides by zero there and reports an infinite statistic, p = 0).
    pub fn chi2_p(self) -> f64 {
        match self.chi2_statistic() {
            None => 1.0,
            Some(statistic) => {
                let chi2 = ChiSquared::new(1.0).expect("one degree of freedom is valid");
                chi2.sf(statistic).clamp(0.0, 1.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12
    }

    #[test]
    fn exact_by_hand() {
        // b = 0, c = 5: 2 · (1/2)^5 = 1/16.
        assert!(close(McNemar::new(0, 5).exact_p(), 0.0625));
        assert!(close(McNemar::new(5, 0).exact_p(), 0.0625));
        // b = 1, c = 9: 2 · (1 + 10) / 2^10 = 22/1024.
        assert!(close(McNemar::new(1, 9).exact_p(), 22.0 / 1024.0));
        // b = 2, c = 8: 2 · (1 + 10 + 45) / 1024 = 112/1024.
        assert!(close(McNemar::new(2, 8).exact_p(), 112.0 / 1024.0));
        // Balanced or nearly so: capped at 1.
        assert_eq!(McNemar::new(3, 3).exact_p(), 1.0);
        assert_eq!(McNemar::new(3, 4).exact_p(), 1.0);
        assert_eq!(McNemar::new(0, 1).exact_p(), 1.0);
    }

    #[test]
    fn no_discordant_pairs_give_p_one() {
        assert_eq!(McNemar::new(0, 0).exact_p(), 1.0);
        assert_eq!(McNemar::new(0, 0).chi2_statistic(), None);
        assert_eq!(McNemar::new(0, 0).chi2_p(), 1.0);
    }

    #[test]
    fn chi2_by_hand() {
        // b = 0, c = 5: (5 - 1)^2 / 5 = 3.2; P(χ²₁ > 3.2) = erfc(√1.6) = 0.07363827012030258 (scipy).
        assert!(close(McNemar::new(0, 5).chi2_statistic().unwrap(), 3.2));
        assert!(close(McNemar::new(0, 5).chi2_p(), 0.07363827012030258));
        // |b - c| = 1: statistic 0, p = 1.
        assert_eq!(McNemar::new(3, 4).chi2_statistic(), Some(0.0));
        assert!(close(McNemar::new(3, 4).chi2_p(), 1.0));
        // b = c = 1: statsmodels' unclipped correction gives 1/2, p = 0.47950012218695337.
        assert!(close(McNemar::new(1, 1).chi2_statistic().unwrap(), 0.5));
        assert!(close(McNemar::new(1, 1).chi2_p(), 0.47950012218695337));
    }
}
