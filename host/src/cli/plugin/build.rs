//! `kiln plugin build DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::plugin::build::build_workspace;
use crate::plugin::source::{build_plugin, config_snippet, MANIFEST};
use crate::plugin::{PluginSpec, Runtime};

/// Build plugins into components. A plugin folder (one with a `kiln-plugin.toml`: Rust, Python
/// or JavaScript) becomes `<dist>/<name>.wasm`, and its sha256 and the config table that loads
/// it are printed; a cargo workspace of Rust plugins builds every member.
#[derive(Debug, Args)]
pub struct BuildCommand {
    /// A plugin folder, or a cargo workspace of plugins.
    #[arg(default_value = "plugins")]
    pub dir: PathBuf,
    /// Where the components go (default: plugins/dist for a plugin folder, DIR/dist for a
    /// workspace).
    #[arg(long)]
    pub dist: Option<PathBuf>,
}

impl BuildCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let rt = Runtime::with_default_cache()?;
        if self.dir.join(MANIFEST).is_file() || !self.dir.join("Cargo.toml").is_file() {
            let dist = self.dist.clone().unwrap_or_else(|| PathBuf::from("plugins/dist"));
            let built = build_plugin(&self.dir, &dist)?;
            // Loading checks what was built: a component of the manifest's world and WIT version.
            let plugin = rt.load(&PluginSpec::new(&built.path))?;
            if plugin.world != built.manifest.world {
                anyhow::bail!(
                    "{} declares world {} in {MANIFEST} but the component built from it is a {}",
                    self.dir.display(),
                    built.manifest.world.name(),
                    plugin.world.name()
                );
            }
            let bytes = std::fs::metadata(&built.path).map(|m| m.len()).unwrap_or(0);
            println!("{:<16} {}  {} ({:.1} MB)", plugin.world.name(), plugin.sha256, built.path.display(), bytes as f64 / 1e6);
            // The absolute path: a config's paths are relative to the config file, wherever it is.
            let absolute = std::path::absolute(&built.path).unwrap_or_else(|_| built.path.clone());
            println!(
                "\n# in a kiln config (a relative path there is relative to the config file):\n{}",
                config_snippet(plugin.world, &absolute, &plugin.sha256)
            );
            return Ok(ExitCode::SUCCESS);
        }
        let dist = self.dist.clone().unwrap_or_else(|| self.dir.join("dist"));
        let built = build_workspace(&self.dir, &dist)?;
        for b in built {
            match rt.load(&PluginSpec::new(&b.path)) {
                Ok(p) => println!("{:<16} {}  {}", p.world.name(), p.sha256, b.path.display()),
                Err(e) => println!("{:<16} {}  ({e})", "-", b.path.display()),
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
