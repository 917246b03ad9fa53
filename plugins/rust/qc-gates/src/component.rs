//! The component glue: WIT exports over the plain functions of the crate.

use std::sync::Mutex;

wit_bindgen::generate!({ path: "../../../wit", world: "qc-rule" });

use exports::kiln::stages::checking::{Comparison, Guest, Metric, Report};
use kiln::stages::types::{FinishReason, PluginError, PluginInfo, Sample};

static CONFIG: Mutex<Option<crate::Config>> = Mutex::new(None);

struct Component;

impl Guest for Component {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "qc-gates".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            wit_version: crate::WIT_VERSION.into(),
        }
    }

    fn configure(config: String) -> Result<(), PluginError> {
        let cfg = crate::parse_config(&config)
            .map_err(|message| PluginError { code: "bad-config".into(), message, record_ids: vec![] })?;
        *CONFIG.lock().unwrap() = Some(cfg);
        Ok(())
    }

    fn evaluate(samples: Vec<Sample>) -> Result<Report, PluginError> {
        let cfg = CONFIG.lock().unwrap().clone().unwrap_or_default();
        let items: Vec<crate::Item> = samples
            .into_iter()
            .map(|s| crate::Item {
                response_hit_limit: s.response_generation.finish_reason == FinishReason::Length,
                instruction_hit_limit: s.instruction_generation.finish_reason == FinishReason::Length,
                verdicts: s.verdicts.iter().map(|v| v.pass).collect(),
                instruction: s.instruction,
                response: s.response,
            })
            .collect();
        let r = crate::evaluate(&cfg, &items);
        Ok(Report {
            metrics: r
                .metrics
                .into_iter()
                .map(|m| Metric {
                    name: m.name,
                    value: m.value,
                    threshold: m.threshold,
                    comparison: match m.cmp {
                        crate::Cmp::Below => Comparison::LessThan,
                        crate::Cmp::AtLeast => Comparison::AtLeast,
                        crate::Cmp::Report => Comparison::ReportOnly,
                    },
                    pass: m.pass,
                })
                .collect(),
            pass: r.pass,
            reasons: r.reasons,
        })
    }
}

export!(Component);
