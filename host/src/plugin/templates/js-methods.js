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
