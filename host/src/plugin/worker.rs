//! A worker: one plugin instance in its own store, called in batches. A trap discards the
//! store; the next call gets a fresh one from the same pre-instantiated component.

use wasmtime::component::{ComponentNamedList, Instance, Lift, Lower};
use wasmtime::Store;

use super::bindings::{cleaner, critic, qc, template, wit};
use super::error::{CallError, FailureKind, PluginError};
use super::lift::CleanReplies;
use super::lower::{sample_list, SampleList};
use super::runtime::{HostState, Plugin};
use super::types::*;
use super::world::{World, WIT_PACKAGE, WIT_VERSION};

enum Bindings {
    Template(template::PromptTemplate),
    Cleaner(cleaner::Cleaner),
    Qc(qc::QcRule),
    Critic(critic::Critic),
}

struct Live {
    store: Store<HostState>,
    instance: Instance,
    bindings: Bindings,
    stdout_seen: usize,
    stderr_seen: usize,
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Info {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// WIT version it was built for.
    pub wit_version: String,
}

/// One instance of a plugin. Not shared across threads: take one worker per thread.
pub struct Worker<'p> {
    plugin: &'p Plugin,
    seed: u64,
    live: Option<Live>,
    instantiations: u64,
}

/// True when the innermost 16 frames (wasmtime keeps only the innermost 20) cycle through at
/// most 4 functions: runaway recursion.
fn in_deep_recursion(err: &wasmtime::Error) -> bool {
    let Some(bt) = err.downcast_ref::<wasmtime::WasmBacktrace>() else { return false };
    let frames = bt.frames();
    if frames.len() < 16 {
        return false;
    }
    let mut funcs: Vec<u32> = frames.iter().take(16).map(|f| f.func_index()).collect();
    funcs.sort_unstable();
    funcs.dedup();
    funcs.len() <= 4
}

/// The innermost few wasm frames, for a trap message (the full backtrace can be thousands).
fn top_frames(err: &wasmtime::Error) -> String {
    let Some(bt) = err.downcast_ref::<wasmtime::WasmBacktrace>() else { return String::new() };
    let names: Vec<String> = bt
        .frames()
        .iter()
        .take(3)
        .map(|f| f.func_name().map(str::to_string).unwrap_or_else(|| format!("func {}", f.func_index())))
        .collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" (in {})", names.join(" < "))
    }
}

type Raw<T> = wasmtime::Result<Result<T, wit::PluginError>>;

/// The ids of `items`, for error messages and quarantine (made only when a call fails).
fn ids_of<I: RecordId>(items: &[I]) -> impl Fn() -> Vec<String> + '_ {
    || items.iter().map(|r| r.record_id().to_string()).collect()
}

/// Call the function `func` of `world`'s interface with samples lowered by reference
/// ([`SampleList`]) rather than through the generated bindings, which would clone every sample.
fn call_with_samples<P, R>(live: &mut Live, world: World, func: &str, params: P) -> Raw<R>
where
    P: ComponentNamedList + Lower,
    (Result<R, wit::PluginError>,): ComponentNamedList + Lift,
{
    let iface = format!("{WIT_PACKAGE}/{}@{WIT_VERSION}", world.interface());
    let missing = || wasmtime::format_err!("the component does not export `{iface}#{func}`");
    let outer = live.instance.get_export_index(&mut live.store, None, &iface).ok_or_else(missing)?;
    let index = live.instance.get_export_index(&mut live.store, Some(&outer), func).ok_or_else(missing)?;
    let f = live.instance.get_typed_func::<P, (Result<R, wit::PluginError>,)>(&mut live.store, &index)?;
    Ok(f.call(&mut live.store, params)?.0)
}

impl<'p> Worker<'p> {
    pub(crate) fn new(plugin: &'p Plugin, seed: u64) -> Self {
        Worker { plugin, seed, live: None, instantiations: 0 }
    }

    /// The plugin this worker runs.
    pub fn plugin(&self) -> &Plugin {
        self.plugin
    }

    /// How many stores this worker has created (1, then one after each trap and each time the
    /// log budget is half used; lazily).
    pub fn instantiations(&self) -> u64 {
        self.instantiations
    }

    fn instantiate(&mut self) -> Result<Live, PluginError> {
        let p = self.plugin;
        let mut store = p.new_store(self.seed.wrapping_add(self.instantiations))?;
        self.instantiations += 1;
        store.set_fuel(p.spec.limits.fuel).expect("fuel is enabled in the engine");
        let load = |e: wasmtime::Error| PluginError::Load {
            path: p.spec.path.clone(),
            sha256: p.sha256.clone(),
            detail: format!("{e:#}"),
        };
        let instance = p.pre.instantiate(&mut store).map_err(load)?;
        let bindings = match p.world {
            World::PromptTemplate => Bindings::Template(template::PromptTemplate::new(&mut store, &instance).map_err(load)?),
            World::Cleaner => Bindings::Cleaner(cleaner::Cleaner::new(&mut store, &instance).map_err(load)?),
            World::QcRule => Bindings::Qc(qc::QcRule::new(&mut store, &instance).map_err(load)?),
            World::Critic => Bindings::Critic(critic::Critic::new(&mut store, &instance).map_err(load)?),
        };
        Ok(Live { store, instance, bindings, stdout_seen: 0, stderr_seen: 0 })
    }

    /// The plugin's name, version and WIT version (instantiates without configuring).
    pub fn info(&mut self) -> Result<Info, PluginError> {
        let mut live = self.instantiate()?;
        let Live { store, bindings, .. } = &mut live;
        let r = match bindings {
            Bindings::Template(b) => b.kiln_stages_templating().call_info(&mut *store),
            Bindings::Cleaner(b) => b.kiln_stages_cleaning().call_info(&mut *store),
            Bindings::Qc(b) => b.kiln_stages_checking().call_info(&mut *store),
            Bindings::Critic(b) => b.kiln_stages_judging().call_info(&mut *store),
        };
        let i = r.map_err(|e| self.failure("info", &[], &mut live, e))?;
        Ok(Info { name: i.name, version: i.version, wit_version: i.wit_version })
    }

    /// Instantiate and configure now (otherwise this happens on the first call).
    pub fn ready(&mut self) -> Result<(), PluginError> {
        if self.live.is_some() {
            return Ok(());
        }
        let mut live = self.instantiate()?;
        let config = self.plugin.spec.config.to_string();
        let Live { store, bindings, .. } = &mut live;
        let r = match bindings {
            Bindings::Template(b) => b.kiln_stages_templating().call_configure(&mut *store, &config),
            Bindings::Cleaner(b) => b.kiln_stages_cleaning().call_configure(&mut *store, &config),
            Bindings::Qc(b) => b.kiln_stages_checking().call_configure(&mut *store, &config),
            Bindings::Critic(b) => b.kiln_stages_judging().call_configure(&mut *store, &config),
        };
        match r {
            Ok(Ok(())) => {
                self.live = Some(live);
                Ok(())
            }
            Ok(Err(e)) => Err(PluginError::Config {
                plugin: self.plugin.name.clone(),
                sha256: self.plugin.sha256.clone(),
                message: e.message,
            }),
            Err(trap) => Err(self.failure("configure", &[], &mut live, trap).into()),
        }
    }

    /// Turn a trap into a [`CallError`] naming the plugin, the call and the records.
    fn failure(&self, call: &str, ids: &[String], live: &mut Live, err: wasmtime::Error) -> CallError {
        let stderr = String::from_utf8_lossy(&live.store.data().stderr.contents()).into_owned();
        // A growth refused in this call explains its trap (`call` clears the flag first). A
        // panic after it is no sign of another cause: guest runtimes turn running out of memory
        // into a panic too (Python's MemoryError, for one).
        let refused = live.store.data().limiter.refused;
        let trap = err.downcast_ref::<wasmtime::Trap>().copied();
        let (kind, mut detail) = if let Some(bytes) = refused {
            (
                FailureKind::OutOfMemory,
                format!("tried to grow linear memory to {bytes} bytes, over its cap of {} bytes", self.plugin.spec.limits.memory_bytes),
            )
        } else {
            match trap {
                Some(wasmtime::Trap::OutOfFuel) => (
                    FailureKind::OutOfFuel,
                    format!("used its whole budget of {} fuel units", self.plugin.spec.limits.fuel),
                ),
                Some(wasmtime::Trap::StackOverflow) => (FailureKind::StackOverflow, "wasm stack overflow".to_string()),
                Some(wasmtime::Trap::UnreachableCodeReached) => (FailureKind::Panic, "wasm `unreachable` executed".to_string()),
                // A guest language's own stack lives in linear memory: overflowing it runs off
                // the start of memory, which shows as an out-of-bounds access deep in recursion.
                Some(wasmtime::Trap::MemoryOutOfBounds) if in_deep_recursion(&err) => (
                    FailureKind::StackOverflow,
                    format!("guest stack overflow (out-of-bounds access in recursion{})", top_frames(&err)),
                ),
                Some(t) => (FailureKind::Trap, format!("{t}{}", top_frames(&err))),
                None => (FailureKind::Trap, format!("{err}")),
            }
        };
        let tail: String = {
            let t = stderr.trim_end();
            let start = t.char_indices().rev().nth(2000).map_or(0, |(i, _)| i);
            t[start..].to_string()
        };
        if !tail.is_empty() {
            detail.push_str(&format!("; plugin stderr: {tail}"));
        }
        CallError {
            plugin: self.plugin.name.clone(),
            sha256: self.plugin.sha256.clone(),
            call: call.to_string(),
            record_ids: ids.to_vec(),
            kind,
            detail,
        }
    }

    /// Run one exported call with fuel reset, output capture, trap handling and output cap.
    fn call<T: WireSize, R>(
        &mut self,
        name: &str,
        ids: &dyn Fn() -> Vec<String>,
        f: impl FnOnce(&mut Live) -> Raw<R>,
        convert: impl FnOnce(R) -> T,
    ) -> Result<T, PluginError> {
        self.ready()?;
        let mut live = self.live.take().expect("ready() made one");
        live.store.set_fuel(self.plugin.spec.limits.fuel).expect("fuel is enabled in the engine");
        // Only a refusal in this call explains a trap in this call: one an allocator took in
        // its stride in an earlier call (and went on with less) does not.
        live.store.data_mut().limiter.refused = None;
        let raw = f(&mut live);
        self.forward_logs(&mut live);
        let out = match raw {
            Err(trap) => return Err(self.failure(name, &ids(), &mut live, trap).into()),
            Ok(Err(e)) => {
                self.keep(live);
                let mut detail = format!("[{}] {}", e.code, e.message);
                if !e.record_ids.is_empty() {
                    detail.push_str(&format!(" (records named: {})", e.record_ids.join(", ")));
                }
                return Err(CallError {
                    plugin: self.plugin.name.clone(),
                    sha256: self.plugin.sha256.clone(),
                    call: name.to_string(),
                    record_ids: ids(),
                    kind: FailureKind::PluginError,
                    detail,
                }
                .into());
            }
            Ok(Ok(v)) => convert(v),
        };
        self.keep(live);
        let size = out.wire_size();
        let cap = self.plugin.spec.limits.max_output_bytes;
        if size > cap {
            return Err(self.contract(name, ids(), FailureKind::OutputTooLarge, format!("about {size} bytes, over the cap of {cap} bytes")));
        }
        Ok(out)
    }

    fn contract(&self, call: &str, ids: Vec<String>, kind: FailureKind, detail: String) -> PluginError {
        CallError {
            plugin: self.plugin.name.clone(),
            sha256: self.plugin.sha256.clone(),
            call: call.to_string(),
            record_ids: ids,
            kind,
            detail,
        }
        .into()
    }

    /// Keep the instance for the next call, unless it has used half of its log budget: the
    /// captured streams only grow, so a plugin that logs on every call gets a fresh instance
    /// (configured again) before its writes would start to fail; the cap holds per call.
    fn keep(&mut self, live: Live) {
        let half = self.plugin.spec.limits.max_log_bytes / 2;
        if live.stdout_seen <= half && live.stderr_seen <= half {
            self.live = Some(live);
        }
    }

    /// Send what the plugin printed since the last call to kiln's log, under its name.
    fn forward_logs(&self, live: &mut Live) {
        let name = &self.plugin.name;
        let out = live.store.data().stdout.contents();
        if out.len() > live.stdout_seen {
            for line in String::from_utf8_lossy(&out[live.stdout_seen..]).lines() {
                tracing::info!(plugin = %name, stream = "stdout", "{line}");
            }
            live.stdout_seen = out.len();
        }
        let err = live.store.data().stderr.contents();
        if err.len() > live.stderr_seen {
            for line in String::from_utf8_lossy(&err[live.stderr_seen..]).lines() {
                tracing::warn!(plugin = %name, stream = "stderr", "{line}");
            }
            live.stderr_seen = err.len();
        }
    }

    fn expect_world(&self, world: World, call: &str) -> Result<(), PluginError> {
        if self.plugin.world == world {
            return Ok(());
        }
        Err(PluginError::WrongWorld {
            path: self.plugin.spec.path.clone(),
            sha256: self.plugin.sha256.clone(),
            why: format!("is a {} plugin; `{call}` needs a {world} plugin", self.plugin.world),
        })
    }

    fn check_count<I: RecordId>(&self, call: &str, items: &[I], got: usize) -> Result<(), PluginError> {
        if got == items.len() {
            return Ok(());
        }
        Err(self.contract(call, ids_of(items)(), FailureKind::Contract, format!("returned {got} results for {} inputs", items.len())))
    }

    /// A template call that returns one result per input record: world check, conversion to
    /// WIT records, the call itself, conversion back, and the count check.
    fn per_record_call<I, W, R, O>(
        &mut self,
        call: &'static str,
        items: &[I],
        f: impl FnOnce(&template::PromptTemplate, &mut Store<HostState>, &[W]) -> Raw<Vec<R>>,
    ) -> Result<Vec<O>, PluginError>
    where
        I: RecordId,
        for<'a> &'a I: Into<W>,
        R: Into<O>,
        O: WireSize,
    {
        self.expect_world(World::PromptTemplate, call)?;
        let wit_items: Vec<W> = items.iter().map(Into::into).collect();
        let out: Vec<O> = self.call(
            call,
            &ids_of(items),
            |live| match &live.bindings {
                Bindings::Template(t) => f(t, &mut live.store, &wit_items),
                _ => unreachable!("world checked"),
            },
            |v| v.into_iter().map(Into::into).collect(),
        )?;
        self.check_count(call, items, out.len())?;
        Ok(out)
    }

    /// `prompt-template.instruction-prompts`.
    pub fn instruction_prompts(&mut self, reqs: &[InstructionRequest]) -> Result<Vec<Prompt>, PluginError> {
        self.per_record_call("instruction-prompts", reqs, |t, s, w| t.kiln_stages_templating().call_instruction_prompts(s, w))
    }

    /// `prompt-template.response-prompts`.
    pub fn response_prompts(&mut self, reqs: &[ResponseRequest]) -> Result<Vec<Prompt>, PluginError> {
        self.per_record_call("response-prompts", reqs, |t, s, w| t.kiln_stages_templating().call_response_prompts(s, w))
    }

    /// `prompt-template.parse-instructions`.
    pub fn parse_instructions(&mut self, completions: &[InstructionCompletion]) -> Result<Vec<Parsed>, PluginError> {
        self.per_record_call("parse-instructions", completions, |t, s, w| t.kiln_stages_templating().call_parse_instructions(s, w))
    }

    /// `cleaner.clean`: the plugin's edits applied to copies of `samples`.
    pub fn clean(&mut self, samples: &[Sample]) -> Result<Vec<CleanOutcome>, PluginError> {
        const CALL: &str = "clean";
        self.expect_world(World::Cleaner, CALL)?;
        let refs = sample_list(samples);
        let out: Vec<CleanReply> = self.call(
            CALL,
            &ids_of(samples),
            |live| call_with_samples::<(&SampleList,), CleanReplies>(live, World::Cleaner, CALL, (&refs,)),
            |v| v.0,
        )?;
        self.check_count(CALL, samples, out.len())?;
        Ok(out.into_iter().zip(samples).map(|(o, s)| o.apply(s)).collect())
    }

    /// `qc-rule.evaluate` over a whole set.
    pub fn evaluate(&mut self, samples: &[Sample]) -> Result<QcReport, PluginError> {
        const CALL: &str = "evaluate";
        self.expect_world(World::QcRule, CALL)?;
        let refs = sample_list(samples);
        self.call(
            CALL,
            &ids_of(samples),
            |live| call_with_samples::<(&SampleList,), qc::exports::kiln::stages::checking::Report>(live, World::QcRule, CALL, (&refs,)),
            Into::into,
        )
    }

    /// `critic.requests`.
    pub fn score_requests(&mut self, samples: &[Sample]) -> Result<Vec<ScoreRequest>, PluginError> {
        use super::bindings::critic::exports::kiln::stages::judging::ScoreRequest as WitRequest;
        const CALL: &str = "requests";
        self.expect_world(World::Critic, CALL)?;
        let refs = sample_list(samples);
        let out: Vec<ScoreRequest> = self.call(
            CALL,
            &ids_of(samples),
            |live| call_with_samples::<(&SampleList,), Vec<WitRequest>>(live, World::Critic, CALL, (&refs,)),
            |v| v.into_iter().map(Into::into).collect(),
        )?;
        self.check_known(CALL, samples, out.iter().map(|r| r.sample_id.as_str()), "requested a score for")?;
        Ok(out)
    }

    /// `critic.decide`.
    pub fn decide(&mut self, samples: &[Sample], scores: &[Score]) -> Result<Vec<Judged>, PluginError> {
        use super::bindings::critic::exports::kiln::stages::judging::{Judged as WitJudged, Score as WitScore};
        const CALL: &str = "decide";
        self.expect_world(World::Critic, CALL)?;
        let refs = sample_list(samples);
        let wit_scores: Vec<WitScore> = scores.iter().map(Into::into).collect();
        let out: Vec<Judged> = self.call(
            CALL,
            &ids_of(samples),
            |live| {
                call_with_samples::<(&SampleList, &[WitScore]), Vec<WitJudged>>(live, World::Critic, CALL, (&refs, &wit_scores))
            },
            |v| v.into_iter().map(Into::into).collect(),
        )?;
        self.check_known(CALL, samples, out.iter().map(|j| j.sample_id.as_str()), "returned a verdict for")?;
        Ok(out)
    }

    /// A contract failure when a result names a sample that was not in the call.
    fn check_known<'a>(&self, call: &str, samples: &[Sample], named: impl Iterator<Item = &'a str>, what: &str) -> Result<(), PluginError> {
        let known: std::collections::HashSet<&str> = samples.iter().map(|s| s.id.as_str()).collect();
        for id in named {
            if !known.contains(id) {
                return Err(self.contract(call, ids_of(samples)(), FailureKind::Contract, format!("{what} unknown sample {id}")));
            }
        }
        Ok(())
    }
}
