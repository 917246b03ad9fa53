//! `kiln plugin new --world W --lang L NAME`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::plugin::scaffold::new_plugin;
use crate::plugin::source::Lang;
use crate::plugin::World;

/// Write a ready-to-build plugin folder: the world's functions stubbed to keep everything, a
/// build script, a README, a sample input and the WIT contract.
#[derive(Debug, Args)]
pub struct NewCommand {
    /// The world the plugin implements.
    #[arg(long)]
    pub world: World,
    /// The language it is written in.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// The plugin's name (lower-case letters, digits, dashes); also the folder's name.
    pub name: String,
    /// Where the folder goes (default: the current directory).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

impl NewCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let dir = self.dir.join(&self.name);
        let files = new_plugin(&dir, &self.name, self.world, self.lang)?;
        for f in &files {
            println!("{}", f.display());
        }
        println!("next: kiln plugin build {}", dir.display());
        Ok(ExitCode::SUCCESS)
    }
}
