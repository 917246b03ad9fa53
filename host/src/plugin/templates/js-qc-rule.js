// {{name}}: a kiln QC rule. It reports the number of samples and passes every set: put your
// metrics and gates in `evaluate`.

let config = {};

function pluginError(code, message) {
  // A thrown value becomes the call's plugin-error.
  return { code, message, recordIds: [] };
}

export const checking = {
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

  // Judge the whole set: named metrics with thresholds, a pass, and reasons for a failure.
  evaluate(samples) {
    const count = { name: "samples", value: samples.length, threshold: undefined, comparison: "report-only", pass: true };
    return { metrics: [count], pass: true, reasons: [] };
  },
};
