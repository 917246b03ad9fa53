// {{name}}: a kiln critic. It asks the model nothing and passes every sample: put your judging
// prompts in `requests` and your decision in `decide`.

let config = {};

function pluginError(code, message) {
  // A thrown value becomes the call's plugin-error.
  return { code, message, recordIds: [] };
}

export const judging = {
  info() {
    return { name: "{{name}}", version: "0.1.0", witVersion: "{{wit_version}}" };
  },

  // `text` is the plugin's table from the kiln config, as JSON ("{}" when there is none).
  configure(text) {
    try {
      config = JSON.parse(text || "{}");
    } catch (e) {
      throw pluginError("bad-config", `{{name}} config: ${e.message}`);
    }
  },

  // The prompts the model scores: kiln computes the log-probabilities of the two single-token
  // answers (e.g. " A" and " B") after each prompt.
  requests(samples) {
    return [];
  },

  // Verdicts from the scores of `requests` (one score per request, same ids and aspects).
  decide(samples, scores) {
    return samples.map((s) => ({
      sampleId: s.id,
      verdict: { critic: "{{name}}", aspect: "any", pass: true, margin: 0, reason: "every sample passes" },
    }));
  },
};
