//! A pass rate: successes out of a non-zero number of trials, checked once so that the figures
//! built on it are always defined.

use super::StatsError;

/// `successes` out of `n` trials, with `0 < n` and `successes ≤ n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proportion {
    successes: u64,
    n: u64,
}

impl Proportion {
    /// The pass rate of `group`; an empty group or more successes than trials is an error
    /// naming the group.
    pub fn new(group: &str, successes: u64, n: u64) -> Result<Self, StatsError> {
        if n == 0 {
            return Err(StatsError::EmptyGroup { group: group.to_string() });
        }
        if successes > n {
            return Err(StatsError::SuccessesExceedTrials { group: group.to_string(), successes, n });
        }
        Ok(Proportion { successes, n })
    }

    /// Number of successes.
    pub fn successes(self) -> u64 {
        self.successes
    }

    /// Number of trials (never 0).
    pub fn n(self) -> u64 {
        self.n
    }

    /// `successes / n`, in [0, 1].
    pub fn value(self) -> f64 {
        self.successes as f64 / self.n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_group() {
        let e = Proportion::new("open-qa", 0, 0).unwrap_err();
        assert_eq!(e.to_string(), "group \"open-qa\" is empty (n = 0)");
        let e = Proportion::new("brainstorm", 4, 3).unwrap_err();
        assert_eq!(e.to_string(), "group \"brainstorm\": 4 successes out of n = 3");
    }

    #[test]
    fn value() {
        assert_eq!(Proportion::new("g", 3, 4).unwrap().value(), 0.75);
        assert_eq!(Proportion::new("g", 0, 1).unwrap().value(), 0.0);
        assert_eq!(Proportion::new("g", 1, 1).unwrap().value(), 1.0);
    }
}
