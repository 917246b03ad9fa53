//! Paired binary outcomes of two arms, base and tuned, per group (instruction type), and all
//! their statistics: counts, McNemar p-values, Wilson intervals, Cohen's h and
//! Benjamini-Hochberg adjusted p-values across the groups.

use std::collections::HashMap;

use serde::Serialize;

use super::{benjamini_hochberg, cohens_h, wilson, ConfidenceLevel, Interval, McNemar, Proportion, StatsError};

/// The name given to the pooled figures of all groups.
pub const OVERALL: &str = "overall";

/// One group's paired outcomes: `base[i]` and `tuned[i]` are the same item judged in each arm
/// (`true` = pass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairedGroup {
    /// The group's name (e.g. the instruction type).
    pub name: String,
    /// Outcomes in the base arm.
    pub base: Vec<bool>,
    /// Outcomes in the tuned arm, item by item as in `base`.
    pub tuned: Vec<bool>,
}

impl PairedGroup {
    /// A group from its outcomes.
    pub fn new(name: impl Into<String>, base: Vec<bool>, tuned: Vec<bool>) -> Self {
        PairedGroup { name: name.into(), base, tuned }
    }

    /// The group's counts; mismatched lengths or no items are an error naming the group.
    pub fn counts(&self) -> Result<PairedCounts, StatsError> {
        PairedCounts::from_outcomes(&self.name, &self.base, &self.tuned)
    }
}

/// The counts of a paired 2x2 table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PairedCounts {
    /// Number of items.
    pub n: u64,
    /// Items that pass in the base arm.
    pub base_pass: u64,
    /// Items that pass in the tuned arm.
    pub tuned_pass: u64,
    /// Items that pass in the base arm and fail in the tuned arm.
    pub b: u64,
    /// Items that fail in the base arm and pass in the tuned arm.
    pub c: u64,
}

impl PairedCounts {
    /// Counts `group`'s paired outcomes; the arms must have the same, non-zero, length.
    pub fn from_outcomes(group: &str, base: &[bool], tuned: &[bool]) -> Result<Self, StatsError> {
        if base.len() != tuned.len() {
            return Err(StatsError::LengthMismatch { group: group.to_string(), base: base.len(), tuned: tuned.len() });
        }
        if base.is_empty() {
            return Err(StatsError::EmptyGroup { group: group.to_string() });
        }
        let mut counts = PairedCounts { n: base.len() as u64, ..Default::default() };
        for (&x, &y) in base.iter().zip(tuned) {
            counts.base_pass += x as u64;
            counts.tuned_pass += y as u64;
            counts.b += (x && !y) as u64;
            counts.c += (!x && y) as u64;
        }
        Ok(counts)
    }

    /// The statistics of these counts as group `name`, with `p_bh` set to the group's own
    /// exact McNemar p-value (what Benjamini-Hochberg gives for a single test); [`paired`]
    /// replaces it with the adjustment across groups. An empty table, or pass counts above `n`,
    /// is an error naming the group.
    pub fn stats(self, name: &str, level: ConfidenceLevel) -> Result<PairedStats, StatsError> {
        let base = Proportion::new(name, self.base_pass, self.n)?;
        let tuned = Proportion::new(name, self.tuned_pass, self.n)?;
        let test = McNemar::new(self.b, self.c);
        let mcnemar_p = test.exact_p();
        Ok(PairedStats {
            name: name.to_string(),
            n: self.n,
            base_pass: self.base_pass,
            tuned_pass: self.tuned_pass,
            b: self.b,
            c: self.c,
            mcnemar_p,
            mcnemar_chi2_p: test.chi2_p(),
            wilson_base: wilson(base, level),
            wilson_tuned: wilson(tuned, level),
            cohens_h: cohens_h(base, tuned),
            p_bh: mcnemar_p,
        })
    }
}

impl std::ops::Add for PairedCounts {
    type Output = PairedCounts;

    fn add(self, o: PairedCounts) -> PairedCounts {
        PairedCounts {
            n: self.n + o.n,
            base_pass: self.base_pass + o.base_pass,
            tuned_pass: self.tuned_pass + o.tuned_pass,
            b: self.b + o.b,
            c: self.c + o.c,
        }
    }
}

/// Every figure for one group (or for all groups pooled).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedStats {
    /// The group's name ([`OVERALL`] for the pooled figures).
    pub name: String,
    /// Number of items.
    pub n: u64,
    /// Items that pass in the base arm.
    pub base_pass: u64,
    /// Items that pass in the tuned arm.
    pub tuned_pass: u64,
    /// Base pass, tuned fail.
    pub b: u64,
    /// Base fail, tuned pass.
    pub c: u64,
    /// Exact (binomial) two-sided McNemar p-value; 1 without discordant pairs.
    pub mcnemar_p: f64,
    /// Continuity-corrected chi-square McNemar p-value; 1 without discordant pairs.
    pub mcnemar_chi2_p: f64,
    /// Wilson interval of the base arm's pass rate.
    pub wilson_base: Interval,
    /// Wilson interval of the tuned arm's pass rate.
    pub wilson_tuned: Interval,
    /// Cohen's h from the base to the tuned pass rate (positive: tuned passes more often).
    pub cohens_h: f64,
    /// `mcnemar_p` adjusted by Benjamini-Hochberg across the groups of one analysis; for the
    /// pooled figures, `mcnemar_p` itself.
    pub p_bh: f64,
}

/// The statistics of a set of groups: each group's, in input order, and the pooled ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedReport {
    /// The confidence level of the Wilson intervals.
    pub level: ConfidenceLevel,
    /// One entry per group, in input order.
    pub groups: Vec<PairedStats>,
    /// All items of all groups pooled, named [`OVERALL`].
    pub overall: PairedStats,
}

/// The statistics of `groups` (at least one; names unique; each non-empty with arms of equal
/// length), with Wilson intervals at `level` and Benjamini-Hochberg across the groups' exact
/// McNemar p-values.
pub fn paired(groups: &[PairedGroup], level: ConfidenceLevel) -> Result<PairedReport, StatsError> {
    if groups.is_empty() {
        return Err(StatsError::NoGroups);
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut total = PairedCounts::default();
    let mut stats = Vec::with_capacity(groups.len());
    for (i, g) in groups.iter().enumerate() {
        if let Some(&first) = seen.get(g.name.as_str()) {
            return Err(StatsError::DuplicateGroup { group: g.name.clone(), first, second: i });
        }
        seen.insert(&g.name, i);
        let counts = g.counts()?;
        total = total + counts;
        stats.push(counts.stats(&g.name, level)?);
    }
    let p: Vec<f64> = stats.iter().map(|s| s.mcnemar_p).collect();
    for (s, adjusted) in stats.iter_mut().zip(benjamini_hochberg(&p)?) {
        s.p_bh = adjusted;
    }
    let overall = total.stats(OVERALL, level)?;
    Ok(PairedReport { level, groups: stats, overall })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(s: &str) -> Vec<bool> {
        s.bytes().map(|b| b == b'1').collect()
    }

    #[test]
    fn counts_by_hand() {
        let c = PairedCounts::from_outcomes("g", &bits("110010"), &bits("011011")).unwrap();
        assert_eq!(c, PairedCounts { n: 6, base_pass: 3, tuned_pass: 4, b: 1, c: 2 });
    }

    #[test]
    fn one_group_and_overall_agree() {
        let r = paired(&[PairedGroup::new("g", bits("0000011111"), bits("1111111111"))], Default::default()).unwrap();
        let g = &r.groups[0];
        assert_eq!((g.n, g.base_pass, g.tuned_pass, g.b, g.c), (10, 5, 10, 0, 5));
        assert!((g.mcnemar_p - 0.0625).abs() < 1e-15);
        assert_eq!(g.p_bh, g.mcnemar_p);
        assert_eq!(g.wilson_tuned.hi, 1.0);
        assert_eq!(r.overall, PairedStats { name: OVERALL.into(), ..g.clone() });
    }

    #[test]
    fn bh_across_groups_and_pooling() {
        let r = paired(
            &[
                PairedGroup::new("a", bits("00000"), bits("11111")),
                PairedGroup::new("b", bits("1"), bits("1")),
                PairedGroup::new("c", bits("00000"), bits("11111")),
            ],
            Default::default(),
        )
        .unwrap();
        // p = 1/16, 1, 1/16 (tied): adjusted 1/16·3/2 twice, and 1.
        let want = [0.09375, 1.0, 0.09375];
        for (s, w) in r.groups.iter().zip(want) {
            assert!((s.p_bh - w).abs() < 1e-15, "{s:?}");
        }
        assert_eq!((r.overall.n, r.overall.b, r.overall.c), (11, 0, 10));
        assert!((r.overall.mcnemar_p - 2.0 / 1024.0).abs() < 1e-15);
        assert_eq!(r.overall.p_bh, r.overall.mcnemar_p);
    }

    #[test]
    fn degenerate_groups_are_defined() {
        for (base, tuned) in [("1111", "1111"), ("0000", "0000"), ("1", "0"), ("0", "0")] {
            let r = paired(&[PairedGroup::new("g", bits(base), bits(tuned))], Default::default()).unwrap();
            let s = &r.groups[0];
            for v in [s.mcnemar_p, s.mcnemar_chi2_p, s.cohens_h, s.p_bh, s.wilson_base.lo, s.wilson_tuned.hi] {
                assert!(v.is_finite(), "{base}/{tuned}: {s:?}");
            }
        }
    }

    #[test]
    fn errors_name_the_group() {
        let e = paired(&[], Default::default()).unwrap_err();
        assert_eq!(e, StatsError::NoGroups);
        let e = paired(&[PairedGroup::new("poems", bits("01"), bits("0"))], Default::default()).unwrap_err();
        assert!(
            e.to_string().contains("\"poems\"") && e.to_string().contains("base has 2 items but tuned has 1"),
            "{e}"
        );
        let e = paired(&[PairedGroup::new("poems", vec![], vec![])], Default::default()).unwrap_err();
        assert_eq!(e.to_string(), "group \"poems\" is empty (n = 0)");
        let g = PairedGroup::new("x", bits("1"), bits("1"));
        let e = paired(&[g.clone(), PairedGroup::new("y", bits("1"), bits("1")), g], Default::default()).unwrap_err();
        assert_eq!(e.to_string(), "group \"x\" appears twice (groups[0] and groups[2])");
    }
}
