//! The JSON input of `kiln stats paired`: `{"groups": [{"name", "base", "tuned"}, ...], "level"?}`,
//! parsed strictly, then checked into [`PairedGroup`]s with errors that name the group, the arm,
//! the index and the value.

use serde::Deserialize;

use super::{paired, ConfidenceLevel, PairedGroup, PairedReport, StatsError};

/// Paired outcomes as JSON, before they are checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairedInput {
    /// The groups, in the order the output keeps.
    pub groups: Vec<GroupInput>,
    /// Confidence level of the Wilson intervals, strictly between 0 and 1 (default 0.95).
    #[serde(default)]
    pub level: Option<f64>,
}

/// One group as JSON: outcomes are any JSON values until checked, so that a wrong one can be
/// reported with its group and position.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupInput {
    /// The group's name.
    pub name: String,
    /// Base outcomes, each 0 (fail) or 1 (pass).
    pub base: Vec<serde_json::Value>,
    /// Tuned outcomes, item by item as in `base`.
    pub tuned: Vec<serde_json::Value>,
}

impl GroupInput {
    /// The checked group: every outcome must be the integer 0 or 1.
    pub fn check(&self) -> Result<PairedGroup, StatsError> {
        let arm = |arm: &'static str, values: &[serde_json::Value]| {
            values
                .iter()
                .enumerate()
                .map(|(index, v)| match v.as_u64() {
                    Some(0) => Ok(false),
                    Some(1) => Ok(true),
                    _ => Err(StatsError::NotBinary { group: self.name.clone(), arm, index, value: v.to_string() }),
                })
                .collect::<Result<Vec<bool>, StatsError>>()
        };
        Ok(PairedGroup::new(self.name.clone(), arm("base", &self.base)?, arm("tuned", &self.tuned)?))
    }
}

impl PairedInput {
    /// The confidence level (0.95 when not given).
    pub fn level(&self) -> Result<ConfidenceLevel, StatsError> {
        self.level.map_or(Ok(ConfidenceLevel::default()), ConfidenceLevel::new)
    }

    /// The checked groups, in input order.
    pub fn groups(&self) -> Result<Vec<PairedGroup>, StatsError> {
        self.groups.iter().map(GroupInput::check).collect()
    }

    /// Checks the input and computes every figure (see [`paired()`]).
    pub fn analyze(&self) -> Result<PairedReport, StatsError> {
        paired(&self.groups()?, self.level()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyze(json: &str) -> Result<PairedReport, String> {
        let input: PairedInput = serde_json::from_str(json).map_err(|e| e.to_string())?;
        input.analyze().map_err(|e| e.to_string())
    }

    #[test]
    fn parses_and_analyzes() {
        let r = analyze(r#"{"groups": [{"name": "a", "base": [0, 1], "tuned": [1, 1]}], "level": 0.9}"#).unwrap();
        assert_eq!(r.level.value(), 0.9);
        assert_eq!((r.groups[0].n, r.groups[0].c), (2, 1));
    }

    #[test]
    fn values_other_than_0_and_1_name_group_arm_index_and_value() {
        for (v, shown) in
            [("2", "2"), ("-1", "-1"), ("1.0", "1.0"), ("true", "true"), ("\"1\"", "\"1\""), ("null", "null")]
        {
            let json = format!(r#"{{"groups": [{{"name": "a", "base": [0, 1], "tuned": [1, {v}]}}]}}"#);
            assert_eq!(analyze(&json).unwrap_err(), format!("group \"a\": tuned[1] is {shown}, expected 0 or 1"));
        }
    }

    #[test]
    fn strict() {
        assert!(analyze(r#"{"groups": [], "extra": 1}"#).unwrap_err().contains("unknown field `extra`"));
        assert!(analyze(r#"{"groups": [{"name": "a", "base": [1], "tuned": [1], "x": 0}]}"#).is_err());
        assert_eq!(analyze(r#"{"groups": []}"#).unwrap_err(), "no groups: the input needs at least one group");
        assert_eq!(
            analyze(r#"{"groups": [{"name": "a", "base": [1], "tuned": [1]}], "level": 1.5}"#).unwrap_err(),
            "confidence level 1.5 is not strictly between 0 and 1"
        );
    }
}
