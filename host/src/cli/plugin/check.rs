//! `kiln plugin check FILE...`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::plugin::{PluginSpec, Runtime};

/// Load each file as a kiln plugin and say what it is; one line per file, an error line for
/// anything that is not a valid kiln component, and a non-zero exit if any failed.
#[derive(Debug, Args)]
pub struct CheckCommand {
    /// Component files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl CheckCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let rt = Runtime::with_default_cache()?;
        let mut failed = 0;
        for f in &self.files {
            match rt.load(&PluginSpec::new(f)) {
                Ok(p) => {
                    if self.json {
                        let v = serde_json::json!({
                            "file": f, "world": p.world, "name": p.name, "version": p.version,
                            "wit_version": p.wit_version, "sha256": p.sha256,
                        });
                        println!("{v}");
                    } else {
                        println!(
                            "{:<16} {:<20} {:<8} wit {:<6} {}  {}",
                            p.world.name(),
                            p.name,
                            p.version,
                            p.wit_version,
                            p.sha256,
                            f.display()
                        );
                    }
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("kiln: error: {e}");
                }
            }
        }
        Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    }
}
