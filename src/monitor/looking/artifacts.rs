//! What becomes of one artifact file: compared with the version stored, uploaded with
//! bounded concurrency (the rest wait their turn), registered or failed, and for
//! `metrics.json` its changed values sent as `ai.run.stage_metric`.
//!
//! A file is looked at when it settled, or at once when its writer closed it. A closed file
//! is uploaded only if nobody has it open for writing (`writers`), and registered only if,
//! after the upload, it is still the same version with still nobody writing it; else it
//! waits to settle, as does every later change of a file once uploaded on close (a rewrite).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Map, Value};

use super::{FileState, Looking, path_text};
use crate::artifacts::{UploadError, Uploaded};
use crate::capture::queue;
use crate::emit::Draft;
use crate::event::payload::{ArtifactDetected, ArtifactFailed, ArtifactRegistered, StageMetric};
use crate::monitor::beneath::BeneathError;
use crate::monitor::classify::{self, Class};
use crate::monitor::metrics;
use crate::monitor::record::Version;
use crate::monitor::writers::{Writers, writers};
use crate::run::Stage;

/// Why a file is looked at now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ready {
    /// No change was seen on it for the settle time (or the run ended).
    Settled,
    /// Its writer closed it (or renamed it into place).
    Closed,
}

/// One upload's end, back in the loop.
pub(super) struct Finished {
    relative: PathBuf,
    /// The file as it was before the upload started.
    version: Version,
    key: String,
    outcome: Result<Uploaded, UploadError>,
    /// An upload on close found the file changed, or open for writing, once it was done:
    /// what was stored may be half a version, and is not registered.
    changed: bool,
    /// `metrics.json`'s values, read after the upload.
    metrics: Option<metrics::Metrics>,
}

impl Looking {
    /// A file its writer closed: looked at now, unless it was uploaded on close before (a
    /// rewrite waits to settle). A log is read at the next tick.
    pub(super) async fn on_closed(&mut self, relative: PathBuf, now: Instant) {
        let Some(Class::Artifact(kind)) = classify::classify(&relative) else {
            return self.on_file(relative, now);
        };
        let state = self.files.entry(relative.clone()).or_insert_with(|| FileState::new(kind));
        if state.closed_once {
            self.settler.touch(relative, now);
        } else {
            self.consider(relative, Ready::Closed).await;
        }
    }

    /// A file that is `ready`: uploaded if it differs from the version stored. The file is
    /// opened here, once: what is compared, uploaded and hashed is that open file.
    pub(super) async fn consider(&mut self, relative: PathBuf, ready: Ready) {
        let Some(state) = self.files.get_mut(&relative) else { return };
        if state.in_flight {
            state.dirty = true;
            return;
        }
        if state.queued {
            return;
        }
        let file = match self.dir.open_file(&relative) {
            Ok(file) => file,
            Err(err @ BeneathError::Link { .. }) => return self.refuse(&err).await,
            // Gone again (a temporary file) or not a regular file: nothing to upload.
            Err(_) => return,
        };
        let Ok(metadata) = file.metadata() else { return };
        let version = Version::of(&metadata);
        let Some(state) = self.files.get_mut(&relative) else { return };
        if state.stored.as_ref().is_some_and(|stored| stored.same_file(&version)) {
            return;
        }
        // Another descriptor still writes it (or the kernel cannot say): it waits to settle.
        if ready == Ready::Closed && writers(&file) != Writers::None {
            self.settler.touch(relative, Instant::now());
            return;
        }
        if !state.detected {
            state.detected = true;
            let detected = ArtifactDetected {
                path: path_text(&relative),
                kind: Some(state.kind.as_str().into()),
                size_bytes: Some(version.bytes),
                extra: Map::new(),
            };
            queue(&self.stream, Draft::of(&detected)).await;
        }
        let Some(artifacts) = self.settings.artifacts.clone() else {
            // Nowhere to upload: detected is all there is to say.
            if let Some(state) = self.files.get_mut(&relative) {
                state.stored = Some(version);
                self.record_dirty = true;
            }
            if ready == Ready::Closed {
                self.settler.forget(&relative);
            }
            return;
        };
        let Some(state) = self.files.get_mut(&relative) else { return };
        if self.uploads.len() >= self.settings.uploads.max(1) {
            state.queued = true;
            self.waiting.push_back((relative, ready));
            return;
        }
        // A second descriptor of the same open file, to look at it again after the upload.
        let check = match ready {
            Ready::Settled => None,
            Ready::Closed => match file.try_clone() {
                Ok(check) => Some(check),
                Err(_) => {
                    self.settler.touch(relative, Instant::now());
                    return;
                }
            },
        };
        if check.is_some() {
            state.closed_once = true;
            self.settler.forget(&relative);
        }
        state.in_flight = true;
        let key = artifacts.key(&self.run_id, &relative);
        let is_metrics = relative.file_name().is_some_and(|name| name == classify::METRICS_FILE);
        self.uploads.spawn(async move {
            let content_type = classify::content_type(&relative);
            // A second descriptor of the same open file: the values are those of the version uploaded.
            let values = if is_metrics { file.try_clone().ok() } else { None };
            let outcome = artifacts.upload(file, &relative, &key, content_type).await;
            let changed = outcome.is_ok() && check.is_some_and(|check| !unchanged(&check, &version));
            let metrics = match (&outcome, values) {
                (Ok(_), Some(mut values)) => {
                    tokio::task::spawn_blocking(move || metrics::read(&mut values)).await.ok().flatten()
                }
                _ => None,
            };
            Finished { relative, version, key: key.to_string(), outcome, changed, metrics }
        });
    }

    pub(super) async fn on_joined(&mut self, joined: Result<Finished, tokio::task::JoinError>) {
        let finished = match joined {
            Ok(finished) => finished,
            Err(err) => {
                // Only a panic in object_store could get here; the file is looked at again
                // at the final sweep.
                tracing::error!(error = %err, "an artifact upload task failed");
                return;
            }
        };
        let Finished { relative, mut version, key, outcome, changed, metrics } = finished;
        let Some(state) = self.files.get_mut(&relative) else { return };
        state.in_flight = false;
        let kind = state.kind;
        match outcome {
            Ok(_) if changed => {
                // Written again while it went up: stored again once it settles.
                tracing::debug!(file = %relative.display(), "an artifact changed during its upload on close");
                state.dirty = true;
            }
            Ok(uploaded) => {
                let new = state.stored.as_ref().and_then(|stored| stored.sha256.as_ref()) != Some(&uploaded.sha256);
                version.sha256 = Some(uploaded.sha256.clone());
                state.stored = Some(version);
                self.record_dirty = true;
                if new {
                    self.report.registered += 1;
                    let registered = ArtifactRegistered {
                        key,
                        bytes: Some(uploaded.bytes),
                        sha256: Some(uploaded.sha256),
                        content_type: Some(classify::content_type(&relative).into()),
                        kind: Some(kind.as_str().into()),
                        extra: Map::from_iter([("path".to_owned(), Value::from(path_text(&relative)))]),
                    };
                    queue(&self.stream, Draft::of(&registered)).await;
                    if let Some(metrics) = metrics {
                        self.emit_metrics(&metrics, &relative).await;
                    }
                }
            }
            Err(err) => {
                self.report.failed += 1;
                tracing::warn!(file = %relative.display(), error = %err, "artifact upload failed");
                let failed = ArtifactFailed {
                    path: path_text(&relative),
                    error: Some(err.to_string()),
                    extra: Map::from_iter([("key".to_owned(), Value::from(key))]),
                };
                queue(&self.stream, Draft::of(&failed)).await;
            }
        }
        if let Some(state) = self.files.get_mut(&relative)
            && std::mem::take(&mut state.dirty)
        {
            if self.ending {
                self.consider(relative, Ready::Settled).await;
            } else {
                self.settler.touch(relative, Instant::now());
            }
        }
        while self.uploads.len() < self.settings.uploads.max(1)
            && let Some((next, ready)) = self.waiting.pop_front()
        {
            if let Some(state) = self.files.get_mut(&next) {
                state.queued = false;
            }
            self.consider(next, ready).await;
        }
    }

    /// `metrics.json` values that changed, as `ai.run.stage_metric` events.
    async fn emit_metrics(&mut self, metrics: &metrics::Metrics, relative: &Path) {
        let stage = metrics.stage.clone().and_then(|name| Stage::try_from(name).ok());
        for (name, value) in metrics::changed(metrics, &self.reported_metrics) {
            let metric = StageMetric {
                stage,
                name: name.clone(),
                value,
                step: metrics.step,
                extra: Map::from_iter([("source".to_owned(), Value::from(path_text(relative)))]),
            };
            queue(&self.stream, Draft::of(&metric)).await;
            self.reported_metrics.insert(name, value);
        }
    }
}

/// Whether `file` is still `version`, with nobody writing it: what an upload on close read
/// from it was one whole version.
fn unchanged(file: &File, version: &Version) -> bool {
    file.metadata().is_ok_and(|metadata| Version::of(&metadata).same_file(version)) && writers(file) == Writers::None
}
