// {{name}}: a kiln prompt template (completion mode, no chat template): a numbered list of
// example instructions for the model to continue, and "Instruction: ... Response:" for the
// answers. Change the texts, stops and token budgets here.

{{prelude}}
export const templating = {
{{methods}}
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
