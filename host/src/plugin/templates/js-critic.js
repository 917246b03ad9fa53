// {{name}}: a kiln critic. It asks the model nothing and passes every sample: put your judging
// prompts in `requests` and your decision in `decide`.

{{prelude}}
export const judging = {
{{methods}}
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
