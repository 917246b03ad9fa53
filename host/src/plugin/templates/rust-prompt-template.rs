//! {{name}}: a kiln prompt template (completion mode, no chat template): a numbered list of
//! example instructions for the model to continue, and "Instruction: ... Response:" for the
//! answers. Change the texts, stops and token budgets here.

wit_bindgen::generate!({ path: "wit", world: "prompt-template" });

use exports::kiln::stages::templating::{Guest, InstructionCompletion, InstructionRequest, Parsed, Prompt, ResponseRequest};
use kiln::stages::types::{PluginError, PluginInfo};

struct Plugin;

impl Guest for Plugin {
{{methods}}
    /// One prompt per request: the examples as a numbered list, ending where the next item starts.
    fn instruction_prompts(requests: Vec<InstructionRequest>) -> Result<Vec<Prompt>, PluginError> {
        Ok(requests
            .into_iter()
            .map(|r| {
                let mut text = format!("{}:\n", r.type_description);
                for (i, e) in r.examples.iter().enumerate() {
                    text.push_str(&format!("{}. {}\n", i + 1, e));
                }
                text.push_str(&format!("{}.", r.examples.len() + 1));
                Prompt { text, stop: vec!["\n".into()], max_tokens: 64 }
            })
            .collect())
    }

    /// One prompt per request, for the model to continue with the answer.
    fn response_prompts(requests: Vec<ResponseRequest>) -> Result<Vec<Prompt>, PluginError> {
        Ok(requests
            .into_iter()
            .map(|r| Prompt {
                text: format!("Instruction: {}\nResponse:", r.instruction),
                stop: vec!["\nInstruction:".into(), "\n\n".into()],
                max_tokens: 256,
            })
            .collect())
    }

    /// The instruction in each raw completion (its first line), or why there is none.
    fn parse_instructions(completions: Vec<InstructionCompletion>) -> Result<Vec<Parsed>, PluginError> {
        Ok(completions
            .into_iter()
            .map(|c| match c.text.lines().next().map(str::trim).filter(|l| !l.is_empty()) {
                Some(line) => Parsed::Instruction(line.to_string()),
                None => Parsed::Rejected("empty completion".into()),
            })
            .collect())
    }
}

export!(Plugin);
