// {{name}}: a kiln prompt template (completion mode, no chat template): a numbered list of
// example instructions for the model to continue, and "Instruction: ... Response:" for the
// answers. Change the texts, stops and token budgets here.

let config = {};

function pluginError(code, message) {
  // A thrown value becomes the call's plugin-error.
  return { code, message, recordIds: [] };
}

export const templating = {
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

  // One prompt per request: the examples as a numbered list, ending where the next item starts.
  instructionPrompts(requests) {
    return requests.map((r) => {
      const items = r.examples.map((e, i) => `${i + 1}. ${e}\n`).join("");
      return { text: `${r.typeDescription}:\n${items}${r.examples.length + 1}.`, stop: ["\n"], maxTokens: 64 };
    });
  },

  // One prompt per request, for the model to continue with the answer.
  responsePrompts(requests) {
    return requests.map((r) => ({
      text: `Instruction: ${r.instruction}\nResponse:`,
      stop: ["\nInstruction:", "\n\n"],
      maxTokens: 256,
    }));
  },

  // The instruction in each raw completion (its first line), or why there is none.
  parseInstructions(completions) {
    return completions.map((c) => {
      const first = c.text.split("\n")[0].trim();
      return first ? { tag: "instruction", val: first } : { tag: "rejected", val: "empty completion" };
    });
  },
};
