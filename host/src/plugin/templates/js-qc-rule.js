// {{name}}: a kiln QC rule. It reports the number of samples and passes every set: put your
// metrics and gates in `evaluate`.

{{prelude}}
export const checking = {
{{methods}}
  // Judge the whole set: named metrics with thresholds, a pass, and reasons for a failure.
  evaluate(samples) {
    const count = { name: "samples", value: samples.length, threshold: undefined, comparison: "report-only", pass: true };
    return { metrics: [count], pass: true, reasons: [] };
  },
};
