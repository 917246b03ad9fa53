//! The component glue: WIT exports over the plain functions of the crate.

use std::sync::Mutex;

/// A call's blocks (the host's copies of the batch, the working memory, the results) come from
/// one arena chunk that is reused once they are all freed; the rest from talc (whose wasm
/// allocator assumes a single thread, hence not with atomics).
#[cfg(not(target_feature = "atomics"))]
#[global_allocator]
static ALLOC: kiln_alloc::Arena<talc::wasm::WasmDynamicTalc> = kiln_alloc::Arena::new(talc::wasm::new_wasm_dynamic_allocator());

wit_bindgen::generate!({ path: "../../../wit", world: "cleaner" });

use exports::kiln::stages::cleaning::{Drop, Edit, Guest, Outcome};
use kiln::stages::types::{Entry, PluginError, PluginInfo, Sample};

struct State {
    cfg: crate::Config,
    reference: kiln_text::NearDupIndex,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn error(code: &str, message: String) -> PluginError {
    PluginError { code: code.into(), message, record_ids: vec![] }
}

/// The configuration and the reference index outlive the call: kept out of the arena.
fn build_state(config: &str) -> Result<State, PluginError> {
    #[cfg(not(target_feature = "atomics"))]
    return ALLOC.persistent(|| state_from(config));
    #[cfg(target_feature = "atomics")]
    return state_from(config);
}

fn state_from(config: &str) -> Result<State, PluginError> {
    let cfg = crate::parse_config(config).map_err(|m| error("bad-config", m))?;
    let mut extra = Vec::new();
    if let Some(path) = &cfg.reference_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            error("bad-config", format!("cleaner-basic: cannot read reference_file \"{path}\": {e}"))
        })?;
        extra = crate::parse_reference_lines(path, &text).map_err(|m| error("bad-config", m))?;
    }
    let reference = crate::reference_index(&cfg, &extra);
    Ok(State { cfg, reference })
}

struct Component;

impl Guest for Component {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "cleaner-basic".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            wit_version: crate::WIT_VERSION.into(),
        }
    }

    fn configure(config: String) -> Result<(), PluginError> {
        let state = build_state(&config)?;
        *STATE.lock().unwrap() = Some(state);
        Ok(())
    }

    fn clean(samples: Vec<Sample>) -> Result<Vec<Outcome>, PluginError> {
        let mut guard = STATE.lock().unwrap();
        if guard.is_none() {
            *guard = Some(build_state("{}")?);
        }
        let state = guard.as_ref().unwrap();
        let texts: Vec<crate::Texts> = samples
            .into_iter()
            .map(|s| crate::Texts { id: s.id, instruction: s.instruction, response: s.response })
            .collect();
        let outcomes = crate::clean(&state.cfg, &state.reference, &texts);
        Ok(outcomes
            .into_iter()
            .map(|o| match o {
                crate::Outcome::Keep { instruction, response, notes } => Outcome::Keep(Edit {
                    instruction,
                    response,
                    notes: notes.into_iter().map(|(key, value)| Entry { key, value }).collect(),
                }),
                crate::Outcome::Drop { code, detail } => Outcome::Dropped(Drop { code, detail }),
            })
            .collect())
    }
}

export!(Component);
