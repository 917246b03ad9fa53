"""{{name}}: a kiln prompt template (completion mode, no chat template): a numbered list of
example instructions for the model to continue, and "Instruction: ... Response:" for the
answers. Change the texts, stops and token budgets here."""

{{prelude}}from wit_world.exports import templating
from wit_world.imports import types

CONFIG = {}


class Templating(exports.Templating):
{{methods}}
    def instruction_prompts(self, requests: List[templating.InstructionRequest]) -> List[templating.Prompt]:
        """One prompt per request: the examples as a numbered list, ending where the next item starts."""
        prompts = []
        for r in requests:
            items = "".join(f"{i + 1}. {e}\n" for i, e in enumerate(r.examples))
            text = f"{r.type_description}:\n{items}{len(r.examples) + 1}."
            prompts.append(templating.Prompt(text=text, stop=["\n"], max_tokens=64))
        return prompts

    def response_prompts(self, requests: List[templating.ResponseRequest]) -> List[templating.Prompt]:
        """One prompt per request, for the model to continue with the answer."""
        return [
            templating.Prompt(text=f"Instruction: {r.instruction}\nResponse:", stop=["\nInstruction:", "\n\n"], max_tokens=256)
            for r in requests
        ]

    def parse_instructions(self, completions: List[templating.InstructionCompletion]) -> List[templating.Parsed]:
        """The instruction in each raw completion (its first line), or why there is none."""
        out = []
        for c in completions:
            lines = c.text.split("\n")
            first = lines[0].strip() if lines else ""
            out.append(templating.Parsed_Instruction(first) if first else templating.Parsed_Rejected("empty completion"))
        return out
