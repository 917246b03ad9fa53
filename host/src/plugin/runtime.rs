//! The plugin runtime: one engine, components compiled once and cached precompiled on disk,
//! a sandboxed store per worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::error::PluginError;
use super::world::{self, World};
use crate::provenance::{sha256_hex, Sha256Hasher};
use crate::sandbox::RunDir;

/// Per-plugin limits and grants, from config. Nothing else is granted.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// CPU budget per call, in wasmtime fuel units (about one per wasm instruction).
    pub fuel: u64,
    /// Linear memory cap, bytes.
    pub memory_bytes: usize,
    /// Maximum size of one call's output, bytes (approximate: text plus a small per-record cost).
    pub max_output_bytes: usize,
    /// Maximum bytes a plugin may write to stdout and to stderr (each) before it traps.
    pub max_log_bytes: usize,
    /// Failed records tolerated (quarantined) before the run stops.
    pub max_failures: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 20_000_000_000,
            memory_bytes: 256 << 20,
            max_output_bytes: 64 << 20,
            max_log_bytes: 1 << 20,
            max_failures: 10,
        }
    }
}

/// Everything needed to load one plugin.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The component file.
    pub path: PathBuf,
    /// Expected sha256 (hex); a mismatch is an error.
    pub sha256: Option<String>,
    /// Limits.
    pub limits: Limits,
    /// A host folder the plugin may read, mounted read-only at `/data`.
    pub data_dir: Option<PathBuf>,
    /// The plugin's own configuration, passed to `configure` as JSON.
    pub config: serde_json::Value,
}

impl PluginSpec {
    /// A spec with default limits and no grants.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PluginSpec {
            path: path.into(),
            sha256: None,
            limits: Limits::default(),
            data_dir: None,
            config: serde_json::Value::Object(Default::default()),
        }
    }
}

/// The per-store state: WASI context (deny-by-default), resource table, limits, captured
/// output.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) stdout: MemoryOutputPipe,
    pub(crate) stderr: MemoryOutputPipe,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// A memory cap that remembers when it refused to grow (so the trap that follows can be told
/// apart from a panic).
pub(crate) struct MemoryLimiter {
    cap: usize,
    pub(crate) refused: Option<usize>,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }

    fn instances(&self) -> usize {
        1000
    }
}

/// A fixed wall clock: plugins see 2000-01-01T00:00:00Z, always.
struct FixedWallClock;

impl wasmtime_wasi::HostWallClock for FixedWallClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::from_secs(946_684_800)
    }
}

/// A virtual monotonic clock that advances by one microsecond per reading.
struct VirtualMonotonicClock(std::sync::atomic::AtomicU64);

impl wasmtime_wasi::HostMonotonicClock for VirtualMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000
    }
    fn now(&self) -> u64 {
        self.0.fetch_add(1_000, std::sync::atomic::Ordering::Relaxed)
    }
}

/// The plugin runtime: one engine and linker for every plugin, and the precompile cache.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache: Option<PathBuf>,
}

impl Runtime {
    /// A runtime whose precompiled components live in `cache` (None: compile every time).
    pub fn new(cache: Option<PathBuf>) -> Result<Runtime, PluginError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.consume_fuel(true);
        config.max_wasm_stack(512 << 10);
        config.concurrency_support(false);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        Ok(Runtime { engine, linker: Arc::new(linker), cache })
    }

    /// A runtime with the default cache (`<kiln cache>/components`).
    pub fn with_default_cache() -> Result<Runtime, PluginError> {
        Runtime::new(Some(crate::sandbox::cache_dir().join("components")))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A digest of the engine settings that precompiled code depends on.
    pub fn engine_key(&self) -> String {
        let mut h = Sha256Hasher::default();
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut h);
        h.hex()
    }

    /// Compile (or load from the cache) a component from its bytes.
    fn component(&self, path: &Path, bytes: &[u8], sha256: &str) -> Result<Component, PluginError> {
        check_component_header(path, bytes)?;
        let load_err = |e: wasmtime::Error| PluginError::Load {
            path: path.to_path_buf(),
            sha256: sha256.to_string(),
            detail: format!("{e:#}"),
        };
        let Some(cache) = &self.cache else {
            return Component::new(&self.engine, bytes).map_err(load_err);
        };
        let name = format!("{sha256}-{}.cwasm", &self.engine_key()[..16]);
        let file = cache.join(&name);
        if file.exists() {
            // SAFETY: files in kiln's component cache are written only by kiln itself, below,
            // from `Engine::precompile_component`, and are keyed by the component's sha256 and
            // the engine's compatibility hash; wasmtime additionally checks the header.
            if let Ok(c) = unsafe { Component::deserialize_file(&self.engine, &file) } {
                return Ok(c);
            }
            tracing::warn!(file = %file.display(), "precompiled component unusable; recompiling");
        }
        let compiled = self.engine.precompile_component(bytes).map_err(load_err)?;
        let dir = RunDir::create(cache)?;
        dir.write_atomic(&name, &compiled)?;
        // From the file, as later loads do: mapped, so that instances start from copy-on-write
        // memory images. SAFETY: the file was written just above from this engine's output.
        if let Ok(c) = unsafe { Component::deserialize_file(&self.engine, &file) } {
            return Ok(c);
        }
        // SAFETY: these bytes were produced just above by this engine.
        unsafe { Component::deserialize(&self.engine, &compiled) }.map_err(load_err)
    }

    /// Load a plugin: read, check the pin, compile or fetch from cache, recognise its world,
    /// check the WIT version, instantiate once to read its info and validate its config.
    pub fn load(&self, spec: &PluginSpec) -> Result<Plugin, PluginError> {
        let bytes = std::fs::read(&spec.path).map_err(|source| PluginError::Read { path: spec.path.clone(), source })?;
        let sha256 = sha256_hex(&bytes);
        if let Some(expected) = &spec.sha256 {
            if !expected.eq_ignore_ascii_case(&sha256) {
                return Err(PluginError::HashMismatch { path: spec.path.clone(), found: sha256, expected: expected.clone() });
            }
        }
        let component = self.component(&spec.path, &bytes, &sha256)?;
        let world = self.recognise(&spec.path, &sha256, &component)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| PluginError::Load {
            path: spec.path.clone(),
            sha256: sha256.clone(),
            detail: format!("{e:#}"),
        })?;
        let mut plugin = Plugin {
            name: spec.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            version: String::new(),
            wit_version: String::new(),
            world,
            sha256,
            spec: spec.clone(),
            pre,
            engine: self.engine.clone(),
        };
        let info = super::Worker::new(&plugin, 0).info()?;
        if !world::compatible(world::WIT_VERSION, &info.wit_version) {
            return Err(PluginError::WitVersion {
                path: spec.path.clone(),
                sha256: plugin.sha256.clone(),
                theirs: info.wit_version,
                ours: world::WIT_VERSION.to_string(),
            });
        }
        plugin.name = info.name;
        plugin.version = info.version;
        plugin.wit_version = info.wit_version;
        // Configure once now so that a bad configuration is reported at load time.
        super::Worker::new(&plugin, 0).ready()?;
        Ok(plugin)
    }

    fn recognise(&self, path: &Path, sha256: &str, component: &Component) -> Result<World, PluginError> {
        let ty = component.component_type();
        let names: Vec<String> = ty.exports(&self.engine).map(|(n, _)| n.to_string()).collect();
        let kiln: Vec<_> = names.iter().filter_map(|n| world::parse_export(n)).collect();
        let wrong = |why: String| PluginError::WrongWorld { path: path.to_path_buf(), sha256: sha256.to_string(), why };
        if kiln.is_empty() {
            let list = if names.is_empty() { "nothing".to_string() } else { names.join(", ") };
            return Err(wrong(format!(
                "is a component but not a kiln plugin: it exports {list}, and no kiln:stages world (prompt-template, cleaner, qc-rule, critic)"
            )));
        }
        if kiln.len() > 1 {
            let list: Vec<_> = kiln.iter().map(|k| format!("{}@{}", k.interface, k.version)).collect();
            return Err(wrong(format!("exports several kiln:stages interfaces ({}); a plugin implements exactly one world", list.join(", "))));
        }
        let k = &kiln[0];
        if !world::compatible(world::WIT_VERSION, &k.version) {
            return Err(PluginError::WitVersion {
                path: path.to_path_buf(),
                sha256: sha256.to_string(),
                theirs: if k.version.is_empty() { "(unversioned)".to_string() } else { k.version.clone() },
                ours: world::WIT_VERSION.to_string(),
            });
        }
        k.world.ok_or_else(|| wrong(format!("exports kiln:stages/{}, which is no world kiln knows", k.interface)))
    }
}

/// Reject what is not a component before wasmtime sees it, with a message a user understands.
fn check_component_header(path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    let not = |why: &str| PluginError::NotAComponent { path: path.to_path_buf(), why: why.to_string() };
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(not("not a WebAssembly file (no \\0asm header)"));
    }
    match &bytes[4..8] {
        [1, 0, 0, 0] => Err(not(
            "a core WebAssembly module, not a component; build it for wasm32-wasip2 (or wrap it with `wasm-tools component new`)",
        )),
        [_, _, 1, 0] => Ok(()),
        v => Err(not(&format!("unknown WebAssembly version/layer {v:?}"))),
    }
}

/// A loaded plugin: compiled, recognised and checked; ready to give out workers.
pub struct Plugin {
    /// Name reported by the plugin.
    pub name: String,
    /// Version reported by the plugin.
    pub version: String,
    /// WIT version the plugin was built for.
    pub wit_version: String,
    /// Its world.
    pub world: World,
    /// sha256 of the component file.
    pub sha256: String,
    /// How it was loaded.
    pub spec: PluginSpec,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) engine: Engine,
}

impl Plugin {
    /// A new worker (its own store, created lazily) whose random source is seeded by `seed`.
    pub fn worker(&self, seed: u64) -> super::Worker<'_> {
        super::Worker::new(self, seed)
    }

    /// A fresh sandboxed store for this plugin.
    pub(crate) fn new_store(&self, seed: u64) -> Result<Store<HostState>, PluginError> {
        let limits = &self.spec.limits;
        let stdout = MemoryOutputPipe::new(limits.max_log_bytes);
        let stderr = MemoryOutputPipe::new(limits.max_log_bytes);
        let mut b = WasiCtxBuilder::new();
        b.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(FixedWallClock)
            .monotonic_clock(VirtualMonotonicClock(Default::default()))
            .secure_random(seeded_rng(seed, 1))
            .insecure_random(seeded_rng(seed, 2))
            .insecure_random_seed(u128::from(seed) << 64 | 0x6b696c6e);
        if let Some(dir) = &self.spec.data_dir {
            b.preopened_dir(dir, "/data", FsPerms::ReadOnly).map_err(|e| PluginError::Load {
                path: self.spec.path.clone(),
                sha256: self.sha256.clone(),
                detail: format!("cannot grant data folder \"{}\": {e:#}", dir.display()),
            })?;
        }
        let state = HostState {
            wasi: b.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter { cap: limits.memory_bytes, refused: None },
            stdout,
            stderr,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        Ok(store)
    }
}

fn seeded_rng(seed: u64, stream: u64) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    rand::rngs::StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}
