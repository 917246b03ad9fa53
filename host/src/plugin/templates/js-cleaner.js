// {{name}}: a kiln cleaner. It keeps every sample as it is: put your cleaning in `clean`.

let config = {};

function pluginError(code, message) {
  // A thrown value becomes the call's plugin-error.
  return { code, message, recordIds: [] };
}

export const cleaning = {
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

  // One outcome per sample, in order: keep (with edited texts, undefined = unchanged) or drop.
  // A drop would be: { tag: "dropped", val: { code: "too-short", detail: "12 characters" } }
  clean(samples) {
    return samples.map(() => ({ tag: "keep", val: { instruction: undefined, response: undefined, notes: [] } }));
  },
};
