//! The four worlds of `kiln:stages` and how a component is recognised as one of them.

use std::fmt;
use std::str::FromStr;

/// The WIT package this kiln speaks.
pub const WIT_PACKAGE: &str = "kiln:stages";
/// The version of `wit/` this kiln was built with.
pub const WIT_VERSION: &str = "0.1.0";

/// A plugin world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// `prompt-template`: exports `templating`.
    PromptTemplate,
    /// `cleaner`: exports `cleaning`.
    Cleaner,
    /// `qc-rule`: exports `checking`.
    QcRule,
    /// `critic`: exports `judging`.
    Critic,
}

impl World {
    /// Every world.
    pub const ALL: [World; 4] = [World::PromptTemplate, World::Cleaner, World::QcRule, World::Critic];

    /// The world's name in WIT.
    pub fn name(self) -> &'static str {
        match self {
            World::PromptTemplate => "prompt-template",
            World::Cleaner => "cleaner",
            World::QcRule => "qc-rule",
            World::Critic => "critic",
        }
    }

    /// The interface the world exports.
    pub fn interface(self) -> &'static str {
        match self {
            World::PromptTemplate => "templating",
            World::Cleaner => "cleaning",
            World::QcRule => "checking",
            World::Critic => "judging",
        }
    }

    fn from_interface(name: &str) -> Option<World> {
        World::ALL.into_iter().find(|w| w.interface() == name)
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for World {
    type Err = String;
    fn from_str(s: &str) -> Result<World, String> {
        World::ALL.into_iter().find(|w| w.name() == s).ok_or_else(|| {
            format!("unknown world \"{s}\" (worlds: prompt-template, cleaner, qc-rule, critic)")
        })
    }
}

/// A `kiln:stages` interface export found in a component, e.g. `kiln:stages/cleaning@0.1.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KilnExport {
    /// The interface name (`cleaning`).
    pub interface: String,
    /// Its version (`0.1.0`), empty when unversioned.
    pub version: String,
    /// The world it belongs to, if it is one kiln knows.
    pub world: Option<World>,
}

/// Parse an export name of the form `kiln:stages/<interface>[@<version>]`.
pub fn parse_export(name: &str) -> Option<KilnExport> {
    let rest = name.strip_prefix(WIT_PACKAGE)?.strip_prefix('/')?;
    let (interface, version) = match rest.split_once('@') {
        Some((i, v)) => (i, v),
        None => (rest, ""),
    };
    Some(KilnExport { interface: interface.to_string(), version: version.to_string(), world: World::from_interface(interface) })
}

/// True when a plugin built for WIT version `theirs` can be run by this kiln (`ours`): the
/// same major version, or for 0.x the same minor version; and not newer than ours.
pub fn compatible(ours: &str, theirs: &str) -> bool {
    fn parse(v: &str) -> Option<(u64, u64, u64)> {
        let core = v.split(['-', '+']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
        Some((it.next()??, it.next()??, it.next()??))
    }
    let (Some(o), Some(t)) = (parse(ours), parse(theirs)) else { return false };
    if o.0 != t.0 {
        return false;
    }
    if o.0 == 0 {
        return o.1 == t.1;
    }
    t.1 <= o.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exports_and_versions() {
        let e = parse_export("kiln:stages/cleaning@0.1.0").unwrap();
        assert_eq!((e.interface.as_str(), e.version.as_str(), e.world), ("cleaning", "0.1.0", Some(World::Cleaner)));
        assert!(parse_export("wasi:cli/run@0.2.0").is_none());
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.3", "0.1.0"));
        assert!(!compatible("0.1.0", "0.2.0"));
        assert!(!compatible("0.1.0", "1.0.0"));
        assert!(compatible("1.2.0", "1.1.0"));
        assert!(!compatible("1.1.0", "1.2.0"));
        assert!(!compatible("0.1.0", "garbage"));
    }
}
