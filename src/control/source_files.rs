//! Reading the configuration source's files off the control loop.
//!
//! A (re)load first reads the files its source names (the TOML file; the manifests and their
//! settings file; the node settings of `--kubernetes`) on tokio's blocking pool, bounded by
//! [`READ_TIMEOUT`], and only then parses them on the control loop. So a read that blocks (a
//! stuck network file system; FIFOs and devices are already refused by
//! [`crate::config::read_file`]) delays nothing else: signals, the watchdog, `ctl` requests
//! and health checks go on, and the reload fails with a clear error while the running
//! configuration keeps serving. A read that never returns leaves one blocking thread behind;
//! the process does not wait for it when it exits.
//!
//! This module does IO only; what the text means is `config`'s business.

use crate::config::manifests::{ManifestFiles, Manifests};
use crate::config::{self, ConfigError};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

/// How long reading the configuration files may take before the (re)load fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a (re)load reads.
#[derive(Debug, Clone)]
pub enum ReadPlan {
    /// Nothing: a built-in model, or a watched source applying what it holds.
    Nothing,
    /// A TOML configuration file.
    File(PathBuf),
    /// A manifests directory and its settings file.
    Manifests(Manifests),
    /// The node settings file of a watched source.
    Settings(PathBuf),
}

/// What it read.
#[derive(Debug)]
pub enum ReadInput {
    Nothing,
    File(String),
    Manifests(ManifestFiles),
    Settings(String),
}

impl ReadInput {
    /// What kind of source it was read for (for messages: not the texts).
    pub fn kind(&self) -> &'static str {
        match self {
            ReadInput::Nothing => "nothing",
            ReadInput::File(_) => "a configuration file",
            ReadInput::Manifests(_) => "manifests",
            ReadInput::Settings(_) => "a settings file",
        }
    }
}

/// A read under way.
pub type Reading = Pin<Box<dyn Future<Output = Result<ReadInput, ConfigError>> + Send>>;

impl ReadPlan {
    /// Reads on the blocking pool; fails when that takes longer than [`READ_TIMEOUT`].
    pub fn start(self) -> Reading {
        Box::pin(async move {
            if matches!(self, ReadPlan::Nothing) {
                return Ok(ReadInput::Nothing);
            }
            let origin = self.origin();
            let failed = |message: String| ConfigError {
                origin: origin.clone(),
                line: 0,
                column: 0,
                message,
            };
            let task = tokio::task::spawn_blocking(move || self.read());
            match tokio::time::timeout(READ_TIMEOUT, task).await {
                Ok(Ok(read)) => read,
                Ok(Err(e)) => Err(failed(format!("reading failed: {e}"))),
                Err(_) => Err(failed(format!(
                    "not read within {}s (a stuck file system?)",
                    READ_TIMEOUT.as_secs()
                ))),
            }
        })
    }

    /// The blocking part.
    fn read(self) -> Result<ReadInput, ConfigError> {
        Ok(match self {
            ReadPlan::Nothing => ReadInput::Nothing,
            ReadPlan::File(path) => {
                ReadInput::File(config::read_file(&path, config::MAX_CONFIG_BYTES)?)
            }
            ReadPlan::Manifests(m) => ReadInput::Manifests(m.read()?),
            ReadPlan::Settings(path) => {
                ReadInput::Settings(config::read_file(&path, config::MAX_CONFIG_BYTES)?)
            }
        })
    }

    /// What errors name.
    fn origin(&self) -> String {
        match self {
            ReadPlan::Nothing => String::new(),
            ReadPlan::File(p) | ReadPlan::Settings(p) => p.display().to_string(),
            ReadPlan::Manifests(m) => m.dir.display().to_string(),
        }
    }
}

/// Reloads asked for and the read under way. A reload asked for while a read is under way
/// gets a read of its own, started when that one is done, so every reload sees the files
/// as they were after it was asked for; those asked for meanwhile share that next read.
pub struct Reloads<W> {
    reading: Option<(Reading, Vec<W>)>,
    queued: Vec<W>,
}

impl<W> Default for Reloads<W> {
    fn default() -> Self {
        Reloads {
            reading: None,
            queued: Vec::new(),
        }
    }
}

impl<W> Reloads<W> {
    /// Asks for a reload on behalf of `waiter`; `plan` says what to read.
    pub fn request(&mut self, waiter: W, plan: impl FnOnce() -> ReadPlan) {
        if self.reading.is_some() {
            self.queued.push(waiter);
        } else {
            self.reading = Some((plan().start(), vec![waiter]));
        }
    }

    pub fn is_reading(&self) -> bool {
        self.reading.is_some()
    }

    /// The read under way (pending forever when there is none). Call
    /// [`finished`](Self::finished) when it returns.
    pub async fn read(&mut self) -> Result<ReadInput, ConfigError> {
        match &mut self.reading {
            Some((reading, _)) => reading.await,
            None => std::future::pending().await,
        }
    }

    /// After [`read`](Self::read) returned: the waiters of that read. Starts the read of
    /// those queued meanwhile.
    pub fn finished(&mut self, plan: impl FnOnce() -> ReadPlan) -> Vec<W> {
        let waiters = self.reading.take().map(|(_, w)| w).unwrap_or_default();
        if !self.queued.is_empty() {
            self.reading = Some((plan().start(), std::mem::take(&mut self.queued)));
        }
        waiters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = std::env::temp_dir().join(format!("sluice-read-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let fifo = dir.join("sluice.toml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(matches!(made, Ok(s) if s.success()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = runtime
            .block_on(ReadPlan::File(fifo.clone()).start())
            .unwrap_err();
        assert_eq!(e.origin, fifo.display().to_string());
        assert!(e.message.contains("is a FIFO"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reload_asked_for_during_a_read_gets_a_read_of_its_own() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut reloads = Reloads::<u32>::default();
            let mut plans = 0;
            reloads.request(1, || {
                plans += 1;
                ReadPlan::Nothing
            });
            reloads.request(2, || unreachable!("queued, not read yet"));
            reloads.request(3, || unreachable!("queued, not read yet"));
            assert!(matches!(reloads.read().await, Ok(ReadInput::Nothing)));
            let first = reloads.finished(|| {
                plans += 1;
                ReadPlan::Nothing
            });
            assert_eq!(first, [1]);
            assert!(reloads.is_reading(), "the queued ones' read started");
            reloads.read().await.unwrap();
            assert_eq!(reloads.finished(|| unreachable!("nothing queued")), [2, 3]);
            assert!(!reloads.is_reading());
            assert_eq!(plans, 2);
        });
    }
}
