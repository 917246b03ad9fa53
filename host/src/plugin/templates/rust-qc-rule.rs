//! {{name}}: a kiln QC rule. It reports the number of samples and passes every set: put your
//! metrics and gates in `evaluate`.

wit_bindgen::generate!({ path: "wit", world: "qc-rule" });

use exports::kiln::stages::checking::{Comparison, Guest, Metric, Report};
use kiln::stages::types::{PluginError, PluginInfo, Sample};

struct Plugin;

impl Guest for Plugin {
{{methods}}
    /// Judge the whole set: named metrics, each with its threshold and pass, and the reasons
    /// for a failure.
    fn evaluate(samples: Vec<Sample>) -> Result<Report, PluginError> {
        let count = Metric {
            name: "samples".into(),
            value: samples.len() as f64,
            threshold: None,
            comparison: Comparison::ReportOnly,
            pass: true,
        };
        Ok(Report { metrics: vec![count], pass: true, reasons: vec![] })
    }
}

export!(Plugin);
