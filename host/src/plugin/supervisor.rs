//! Isolation of failing records and the failure budget.
//!
//! When a batch call fails (a trap, an error value, a contract breach), the batch is split in
//! halves and retried until every failing record stands alone; those records go to the
//! quarantine with the error, the rest carry on. Each quarantined record spends one unit of
//! the plugin's failure budget; when the budget is spent the run stops cleanly with an error
//! that names the plugin and its last failure.

use serde::Serialize;

use super::error::{CallError, PluginError};
use super::types::RecordId;
use super::worker::Worker;
use crate::sandbox::RunDir;

/// One quarantined record and why.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineEntry {
    /// The record's id.
    pub record_id: String,
    /// The failure.
    pub error: CallError,
    /// The error as one sentence.
    pub message: String,
    /// The record itself, as given to the plugin.
    pub record: serde_json::Value,
}

/// The quarantine: records that made a plugin fail, kept with the failure. When it has a
/// file, the file is rewritten atomically after every addition.
#[derive(Debug, Default)]
pub struct Quarantine {
    entries: Vec<QuarantineEntry>,
    previous: String,
    file: Option<(RunDir, String)>,
}

impl Quarantine {
    /// A quarantine kept in memory only.
    pub fn in_memory() -> Self {
        Quarantine::default()
    }

    /// A quarantine written to `rel` (JSON lines) inside `dir`; existing entries are kept.
    pub fn at(dir: RunDir, rel: &str) -> Result<Self, PluginError> {
        let mut q = Quarantine::default();
        if let Some(bytes) = dir.read_optional(rel)? {
            q.previous = String::from_utf8_lossy(&bytes).into_owned();
        }
        q.file = Some((dir, rel.to_string()));
        Ok(q)
    }

    /// Entries added in this session.
    pub fn entries(&self) -> &[QuarantineEntry] {
        &self.entries
    }

    fn add(&mut self, entry: QuarantineEntry) -> Result<(), PluginError> {
        self.entries.push(entry);
        if let Some((dir, rel)) = &self.file {
            let mut text = self.previous.clone();
            for e in &self.entries {
                text.push_str(&serde_json::to_string(e).expect("quarantine entries serialise"));
                text.push('\n');
            }
            dir.write_atomic(rel, text.as_bytes())?;
        }
        Ok(())
    }
}

/// Calls a plugin through a worker, isolating failing records.
pub struct Supervisor<'w, 'p> {
    worker: &'w mut Worker<'p>,
    quarantine: &'w mut Quarantine,
    failures: usize,
}

impl<'w, 'p> Supervisor<'w, 'p> {
    /// Supervise calls through `worker`, quarantining into `quarantine`.
    pub fn new(worker: &'w mut Worker<'p>, quarantine: &'w mut Quarantine) -> Self {
        Supervisor { worker, quarantine, failures: 0 }
    }

    /// Records quarantined by this supervisor.
    pub fn failures(&self) -> usize {
        self.failures
    }

    /// The message of the latest quarantine entry for a record, if it has one.
    pub fn quarantined(&self, id: &str) -> Option<String> {
        self.quarantine.entries.iter().rev().find(|e| e.record_id == id).map(|e| e.message.clone())
    }

    /// The worker.
    pub fn worker(&mut self) -> &mut Worker<'p> {
        self.worker
    }

    /// Call `f` on `items`, one result per item; `None` for a quarantined item. `f` must
    /// return exactly one result per item it is given.
    pub fn per_record<I, O>(
        &mut self,
        items: &[I],
        f: &mut dyn FnMut(&mut Worker<'p>, &[I]) -> Result<Vec<O>, PluginError>,
    ) -> Result<Vec<Option<O>>, PluginError>
    where
        I: RecordId + Serialize,
    {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        match f(self.worker, items) {
            Ok(out) => Ok(out.into_iter().map(Some).collect()),
            Err(PluginError::Call(err)) => {
                if items.len() == 1 {
                    self.quarantine_one(&items[0], err)?;
                    return Ok(vec![None]);
                }
                let (a, b) = items.split_at(items.len() / 2);
                let mut out = self.per_record(a, f)?;
                out.extend(self.per_record(b, f)?);
                Ok(out)
            }
            Err(other) => Err(other),
        }
    }

    fn quarantine_one<I: RecordId + Serialize>(&mut self, item: &I, mut err: CallError) -> Result<(), PluginError> {
        err.record_ids = vec![item.record_id().to_string()];
        tracing::warn!("{err}; record quarantined");
        self.quarantine.add(QuarantineEntry {
            record_id: item.record_id().to_string(),
            message: err.to_string(),
            error: err.clone(),
            record: serde_json::to_value(item).unwrap_or(serde_json::Value::Null),
        })?;
        self.failures += 1;
        let budget = self.worker.plugin().spec.limits.max_failures;
        if self.failures > budget {
            let p = self.worker.plugin();
            return Err(PluginError::BudgetSpent {
                plugin: p.name.clone(),
                sha256: p.sha256.clone(),
                failures: self.failures,
                budget,
                last: Box::new(err),
            });
        }
        Ok(())
    }
}
