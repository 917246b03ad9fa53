//! A cleaner built against a later, incompatible version of the contract (kiln:stages@0.2.0).

wit_bindgen::generate!({ path: "wit", world: "cleaner" });

use exports::kiln::stages::cleaning::{Guest, Outcome};
use kiln::stages::types::{PluginError, PluginInfo, Sample};

struct Component;

impl Guest for Component {
    fn info() -> PluginInfo {
        PluginInfo { name: "future-wit".into(), version: "0.1.0".into(), wit_version: "0.2.0".into() }
    }
    fn configure(_config: String) -> Result<(), PluginError> {
        Ok(())
    }
    fn clean(samples: Vec<Sample>) -> Result<Vec<Outcome>, PluginError> {
        Ok(samples.into_iter().map(Outcome::Keep).collect())
    }
}

export!(Component);
