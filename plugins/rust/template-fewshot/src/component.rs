//! The component glue: WIT exports over the plain functions of the crate.

use std::sync::Mutex;

use crate::Config;

wit_bindgen::generate!({ path: "../../../wit", world: "prompt-template" });

use exports::kiln::stages::templating::{
    Guest, InstructionCompletion, InstructionRequest, Parsed, Prompt, ResponseRequest,
};
use kiln::stages::types::{PluginError, PluginInfo};

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

fn config() -> Config {
    CONFIG.lock().unwrap().clone().unwrap_or_default()
}

fn to_wit(p: crate::Prompt) -> Prompt {
    Prompt { text: p.text, stop: p.stop, max_tokens: p.max_tokens }
}

struct Component;

impl Guest for Component {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "template-fewshot".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            wit_version: crate::WIT_VERSION.into(),
        }
    }

    fn configure(config: String) -> Result<(), PluginError> {
        let cfg = crate::parse_config(&config)
            .map_err(|message| PluginError { code: "bad-config".into(), message, record_ids: vec![] })?;
        *CONFIG.lock().unwrap() = Some(cfg);
        Ok(())
    }

    fn instruction_prompts(requests: Vec<InstructionRequest>) -> Result<Vec<Prompt>, PluginError> {
        let cfg = config();
        requests
            .into_iter()
            .map(|r| {
                crate::instruction_prompt(&cfg, &r.instruction_type, &r.type_description, &r.examples)
                    .map(to_wit)
                    .map_err(|message| PluginError { code: "bad-input".into(), message, record_ids: vec![r.id] })
            })
            .collect()
    }

    fn response_prompts(requests: Vec<ResponseRequest>) -> Result<Vec<Prompt>, PluginError> {
        let cfg = config();
        Ok(requests.iter().map(|r| to_wit(crate::response_prompt(&cfg, &r.instruction))).collect())
    }

    fn parse_instructions(completions: Vec<InstructionCompletion>) -> Result<Vec<Parsed>, PluginError> {
        let cfg = config();
        Ok(completions
            .iter()
            .map(|c| match crate::parse_instruction(&cfg, &c.text) {
                Ok(s) => Parsed::Instruction(s),
                Err(why) => Parsed::Rejected(why),
            })
            .collect())
    }
}

export!(Component);
