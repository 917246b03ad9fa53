//! `kiln plugin build DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::plugin::{build::build_workspace, PluginSpec, Runtime};

/// Build a cargo workspace of plugins for wasm32-wasip2 and put the components in a dist
/// folder; prints each one's world, sha256 and path.
#[derive(Debug, Args)]
pub struct BuildCommand {
    /// The plugin workspace (a folder with a Cargo.toml).
    #[arg(default_value = "plugins")]
    pub dir: PathBuf,
    /// Where the components go (default: DIR/dist).
    #[arg(long)]
    pub dist: Option<PathBuf>,
}

impl BuildCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let dist = self.dist.clone().unwrap_or_else(|| self.dir.join("dist"));
        let built = build_workspace(&self.dir, &dist)?;
        let rt = Runtime::with_default_cache()?;
        for b in built {
            match rt.load(&PluginSpec::new(&b.path)) {
                Ok(p) => println!("{:<16} {}  {}", p.world.name(), p.sha256, b.path.display()),
                Err(e) => println!("{:<16} {}  ({e})", "-", b.path.display()),
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
