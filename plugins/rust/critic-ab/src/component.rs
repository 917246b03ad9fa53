//! The component glue: WIT exports over the plain functions of the crate.

use std::collections::HashMap;
use std::sync::Mutex;

wit_bindgen::generate!({ path: "../../../wit", world: "critic" });

use exports::kiln::stages::judging::{Guest, Judged, Score, ScoreRequest};
use kiln::stages::types::{PluginError, PluginInfo, Sample, Verdict};

static CONFIG: Mutex<Option<crate::Config>> = Mutex::new(None);

fn config() -> crate::Config {
    CONFIG.lock().unwrap().clone().unwrap_or_default()
}

struct Component;

impl Guest for Component {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "critic-ab".into(),
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

    fn requests(samples: Vec<Sample>) -> Result<Vec<ScoreRequest>, PluginError> {
        let cfg = config();
        Ok(samples
            .iter()
            .flat_map(|s| crate::requests(&cfg, &s.id, &s.instruction, &s.response))
            .map(|r| ScoreRequest {
                sample_id: r.sample_id,
                aspect: r.aspect,
                prompt: r.prompt,
                answer_a: r.answer_good,
                answer_b: r.answer_bad,
            })
            .collect())
    }

    fn decide(samples: Vec<Sample>, scores: Vec<Score>) -> Result<Vec<Judged>, PluginError> {
        let cfg = config();
        let by_key: HashMap<(&str, &str), &Score> =
            scores.iter().map(|s| ((s.sample_id.as_str(), s.aspect.as_str()), s)).collect();
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for s in &samples {
            for aspect in &cfg.aspects {
                let swapped = format!("{aspect}{}", crate::SWAPPED);
                let keys: &[&str] = if cfg.order == "both" { &[aspect.as_str(), swapped.as_str()] } else { &[aspect.as_str()] };
                let found: Option<Vec<(f64, f64)>> = keys
                    .iter()
                    .map(|k| by_key.get(&(s.id.as_str(), *k)).map(|sc| (sc.logprob_a, sc.logprob_b)))
                    .collect();
                let Some(orders) = found else {
                    missing.push(s.id.clone());
                    continue;
                };
                let (pass, margin, reason) = crate::decide(&cfg, aspect, &orders)
                    .map_err(|message| PluginError { code: "bad-input".into(), message, record_ids: vec![s.id.clone()] })?;
                out.push(Judged {
                    sample_id: s.id.clone(),
                    verdict: Verdict { critic: "critic-ab".into(), aspect: aspect.clone(), pass, margin, reason },
                });
            }
        }
        if !missing.is_empty() {
            missing.dedup();
            return Err(PluginError {
                code: "bad-input".into(),
                message: format!("critic-ab: no score given for {} sample(s)", missing.len()),
                record_ids: missing,
            });
        }
        Ok(out)
    }
}

export!(Component);
