//! `kiln plugin run --world W FILE --input samples.jsonl`: the researcher's quick loop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::config::PluginConfig;
use crate::plugin::*;
use crate::sandbox::{read_jsonl, RunDir};

/// Which `prompt-template` function to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TemplateCall {
    /// Input: `{"id", "instruction_type", "type_description", "examples": [...]}` lines.
    InstructionPrompts,
    /// Input: `{"id", "instruction_type", "instruction"}` lines.
    ResponsePrompts,
    /// Input: `{"id", "instruction_type", "prompt", "text"}` lines.
    ParseInstructions,
}

/// Run a plugin on JSON lines and print its output as JSON lines (one per input record; a
/// QC rule prints one report). Records that make the plugin fail are isolated, printed as
/// `"outcome": "quarantined"` and written to the quarantine file. Exit code: 0 done (for a QC
/// rule: its report passed), 2 a QC rule's report failed, 1 error.
#[derive(Debug, Args)]
pub struct RunCommand {
    /// The world the plugin must implement.
    #[arg(long)]
    pub world: World,
    /// The component file.
    pub file: PathBuf,
    /// Input records, JSON lines (`-` for stdin): samples, or the template call's requests.
    #[arg(long)]
    pub input: PathBuf,
    /// For prompt-template plugins: which function to run.
    #[arg(long, value_enum)]
    pub call: Option<TemplateCall>,
    /// For critics: scores (JSON lines `{"sample_id", "aspect", "logprob_a", "logprob_b"}`);
    /// given, runs `decide`, else prints the scoring requests.
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// The plugin's configuration, a JSON object.
    #[arg(long, default_value = "{}")]
    pub plugin_config: String,
    /// Expected sha256 of the component.
    #[arg(long)]
    pub sha256: Option<String>,
    /// CPU budget per call, fuel units.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Memory cap, MiB.
    #[arg(long)]
    pub memory_mib: Option<usize>,
    /// Output cap per call, MiB.
    #[arg(long)]
    pub max_output_mib: Option<usize>,
    /// Quarantined records tolerated before stopping.
    #[arg(long)]
    pub max_failures: Option<usize>,
    /// A read-only folder for the plugin, mounted at `/data`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Records per plugin call.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Seed of the plugin's random source.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where quarantined records go (JSON lines; default: `quarantine.jsonl` beside the input,
    /// or in the current directory for stdin).
    #[arg(long)]
    pub quarantine: Option<PathBuf>,
}

#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    id: &'a str,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
enum Failed<'a> {
    Quarantined { error: &'a str },
}

impl RunCommand {
    fn spec(&self) -> anyhow::Result<PluginSpec> {
        let config: serde_json::Value = serde_json::from_str(&self.plugin_config)
            .with_context(|| format!("--plugin-config is not valid JSON: {}", self.plugin_config))?;
        let serde_json::Value::Object(map) = config else {
            bail!("--plugin-config must be a JSON object, got {}", self.plugin_config);
        };
        let table: toml::Table = serde_json::from_value(serde_json::Value::Object(map.clone()))
            .context("--plugin-config cannot be represented as a config table")?;
        let pc = PluginConfig {
            path: self.file.clone(),
            sha256: self.sha256.clone(),
            fuel: self.fuel,
            memory_mib: self.memory_mib,
            max_output_mib: self.max_output_mib,
            max_failures: self.max_failures,
            data_dir: self.data_dir.clone(),
            config: table,
        };
        let mut spec = pc.to_spec("command line", "plugin", Path::new(""))?;
        // Keep the JSON as given (TOML has no null; numbers keep their form).
        spec.config = serde_json::Value::Object(map);
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        Ok(spec)
    }

    fn quarantine(&self) -> anyhow::Result<Quarantine> {
        let path = match &self.quarantine {
            Some(p) => p.clone(),
            None if self.input == Path::new("-") => PathBuf::from("quarantine.jsonl"),
            None => self.input.with_file_name("quarantine.jsonl"),
        };
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().context("--quarantine must name a file")?.to_string_lossy().into_owned();
        Ok(Quarantine::at(RunDir::create(dir)?, &name)?)
    }

    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let spec = self.spec()?;
        let rt = Runtime::with_default_cache()?;
        let plugin = rt.load(&spec)?;
        if plugin.world != self.world {
            bail!(
                "\"{}\" is a {} plugin (\"{}\"), not a {} plugin",
                self.file.display(),
                plugin.world,
                plugin.name,
                self.world
            );
        }
        let mut quarantine = self.quarantine()?;
        let mut worker = plugin.worker(self.seed);
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let n_input;
        let mut failed_report: Option<Vec<String>> = None;
        {
            let mut sup = Supervisor::new(&mut worker, &mut quarantine);
            n_input = match self.world {
                World::Cleaner => {
                    let samples: Vec<Sample> = read_jsonl(&self.input)?;
                    self.per_record(&mut sup, &mut out, &samples, &mut |w, b| w.clean(b))?
                }
                World::PromptTemplate => match self.call {
                    None => bail!("a prompt-template plugin needs --call (instruction-prompts, response-prompts or parse-instructions)"),
                    Some(TemplateCall::InstructionPrompts) => {
                        let reqs: Vec<InstructionRequest> = read_jsonl(&self.input)?;
                        self.per_record(&mut sup, &mut out, &reqs, &mut |w, b| w.instruction_prompts(b))?
                    }
                    Some(TemplateCall::ResponsePrompts) => {
                        let reqs: Vec<ResponseRequest> = read_jsonl(&self.input)?;
                        self.per_record(&mut sup, &mut out, &reqs, &mut |w, b| w.response_prompts(b))?
                    }
                    Some(TemplateCall::ParseInstructions) => {
                        let reqs: Vec<InstructionCompletion> = read_jsonl(&self.input)?;
                        self.per_record(&mut sup, &mut out, &reqs, &mut |w, b| w.parse_instructions(b))?
                    }
                },
                World::Critic => {
                    let samples: Vec<Sample> = read_jsonl(&self.input)?;
                    match &self.scores {
                        None => self.grouped(&mut sup, &mut out, &samples, &mut |w, b| w.score_requests(b), |r| r.sample_id.clone())?,
                        Some(path) => {
                            let scores: Vec<Score> = read_jsonl(path)?;
                            self.grouped(
                                &mut sup,
                                &mut out,
                                &samples,
                                &mut |w, b| {
                                    let ids: std::collections::HashSet<&str> = b.iter().map(|s| s.id.as_str()).collect();
                                    let mine: Vec<Score> =
                                        scores.iter().filter(|s| ids.contains(s.sample_id.as_str())).cloned().collect();
                                    w.decide(b, &mine)
                                },
                                |j| j.sample_id.clone(),
                            )?
                        }
                    }
                }
                World::QcRule => {
                    let samples: Vec<Sample> = read_jsonl(&self.input)?;
                    let report = sup.worker().evaluate(&samples)?;
                    writeln!(out, "{}", serde_json::to_string(&report)?)?;
                    if !report.pass {
                        failed_report = Some(report.reasons.clone());
                    }
                    samples.len()
                }
            };
        }
        out.flush()?;
        let q = quarantine.entries().len();
        eprintln!(
            "kiln: {} \"{}\" (sha256 {}) processed {n_input} records; {q} quarantined",
            plugin.world,
            plugin.name,
            &plugin.sha256[..12]
        );
        if let Some(reasons) = failed_report {
            eprintln!("kiln: the QC report FAILED: {}", if reasons.is_empty() { "(no reasons given)".to_string() } else { reasons.join("; ") });
            return Ok(ExitCode::from(2));
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Batches through the supervisor; one output line per input record.
    fn per_record<I, O>(
        &self,
        sup: &mut Supervisor<'_, '_>,
        out: &mut impl Write,
        items: &[I],
        f: &mut dyn FnMut(&mut Worker<'_>, &[I]) -> Result<Vec<O>, PluginError>,
    ) -> anyhow::Result<usize>
    where
        I: RecordId + Serialize,
        O: Serialize,
    {
        for chunk in items.chunks(self.batch_size) {
            let results = sup.per_record(chunk, &mut |w, b| f(w, b))?;
            for (item, r) in chunk.iter().zip(results) {
                let id = item.record_id();
                match r {
                    Some(o) => writeln!(out, "{}", serde_json::to_string(&Line { id, body: o })?)?,
                    None => {
                        let msg = sup_last_error(sup, id);
                        writeln!(out, "{}", serde_json::to_string(&Line { id, body: Failed::Quarantined { error: &msg } })?)?
                    }
                }
            }
        }
        Ok(items.len())
    }

    /// Batches whose outputs are many per record (critic requests and verdicts): results are
    /// grouped by sample and printed in input order.
    fn grouped<O: Serialize>(
        &self,
        sup: &mut Supervisor<'_, '_>,
        out: &mut impl Write,
        samples: &[Sample],
        f: &mut dyn FnMut(&mut Worker<'_>, &[Sample]) -> Result<Vec<O>, PluginError>,
        key: impl Fn(&O) -> String,
    ) -> anyhow::Result<usize> {
        for chunk in samples.chunks(self.batch_size) {
            let results = sup.per_record(chunk, &mut |w, b| {
                let all = f(w, b)?;
                let mut per: Vec<Vec<O>> = b.iter().map(|_| Vec::new()).collect();
                for o in all {
                    let k = key(&o);
                    if let Some(i) = b.iter().position(|s| s.id == k) {
                        per[i].push(o);
                    }
                }
                Ok(per)
            })?;
            for (s, r) in chunk.iter().zip(results) {
                match r {
                    Some(list) => {
                        for o in list {
                            writeln!(out, "{}", serde_json::to_string(&o)?)?;
                        }
                    }
                    None => {
                        let msg = sup_last_error(sup, &s.id);
                        writeln!(out, "{}", serde_json::to_string(&Line { id: &s.id, body: Failed::Quarantined { error: &msg } })?)?
                    }
                }
            }
        }
        Ok(samples.len())
    }
}

fn sup_last_error(sup: &mut Supervisor<'_, '_>, id: &str) -> String {
    sup.quarantined(id).unwrap_or_else(|| "quarantined".to_string())
}
