//! {{name}}: a kiln cleaner. It keeps every sample as it is: put your cleaning in `clean`.

wit_bindgen::generate!({ path: "wit", world: "cleaner" });

use exports::kiln::stages::cleaning::{Edit, Guest, Outcome};
use kiln::stages::types::{PluginError, PluginInfo, Sample};

struct Plugin;

impl Guest for Plugin {
{{methods}}
    /// One outcome per sample, in order: keep (with edited texts, None = unchanged) or drop.
    fn clean(samples: Vec<Sample>) -> Result<Vec<Outcome>, PluginError> {
        // A drop would be: Outcome::Dropped(Drop { code: "too-short".into(), detail: "12 characters".into() })
        Ok(samples.iter().map(|_| Outcome::Keep(Edit { instruction: None, response: None, notes: vec![] })).collect())
    }
}

export!(Plugin);
