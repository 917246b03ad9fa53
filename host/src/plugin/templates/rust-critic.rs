//! {{name}}: a kiln critic. It asks the model nothing and passes every sample: put your
//! judging prompts in `requests` and your decision in `decide`.

wit_bindgen::generate!({ path: "wit", world: "critic" });

use exports::kiln::stages::judging::{Guest, Judged, Score, ScoreRequest};
use kiln::stages::types::{PluginError, PluginInfo, Sample, Verdict};

struct Plugin;

impl Guest for Plugin {
{{methods}}
    /// The prompts the model scores: for each, kiln computes the log-probabilities of the two
    /// single-token answers (e.g. " A" and " B") after the prompt.
    fn requests(_samples: Vec<Sample>) -> Result<Vec<ScoreRequest>, PluginError> {
        Ok(vec![])
    }

    /// Verdicts from the scores of `requests` (one score per request, same ids and aspects).
    fn decide(samples: Vec<Sample>, _scores: Vec<Score>) -> Result<Vec<Judged>, PluginError> {
        Ok(samples
            .into_iter()
            .map(|s| Judged {
                sample_id: s.id,
                verdict: Verdict {
                    critic: "{{name}}".into(),
                    aspect: "any".into(),
                    pass: true,
                    margin: 0.0,
                    reason: "every sample passes".into(),
                },
            })
            .collect())
    }
}

export!(Plugin);
