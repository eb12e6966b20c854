//! Artifacts on close: the run-directory monitor, in process, on a real temp run directory
//! with its real watcher, a local artifact store, and the worker's event stream delivering
//! to a recorder. Most tests give the monitor an hour to settle, so that a file registered
//! while they run can only have gone the close path: they assert which path, not how fast.
//! Every wait is on an event, with a deadline.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use scientist::artifacts::ArtifactStore;
use scientist::emit::EventStream;
use scientist::monitor::writers::{Writers, writers};
use scientist::monitor::{Monitor, Report, Settings};
use scientist::run::RunId;
use sha2::{Digest, Sha256};

#[path = "common/recorder.rs"]
mod recorder;

use recorder::{Deliveries, Delivery};

/// Longer than any test: nothing settles while one runs.
const NEVER: Duration = Duration::from_secs(3600);
const WITHIN: Duration = Duration::from_secs(30);
const REGISTERED: &str = "ai.artifact.registered";

/// A run directory under watch.
struct Watched {
    _temp: tempfile::TempDir,
    run_dir: PathBuf,
    store_dir: PathBuf,
    stream: EventStream,
    monitor: Monitor,
    events: Deliveries,
}

impl Watched {
    async fn start(settle: Duration) -> Watched {
        let temp = tempfile::tempdir().expect("temp dir");
        let run_dir = temp.path().join("run");
        let store_dir = temp.path().join("artifacts");
        std::fs::create_dir_all(&run_dir).expect("mkdir");
        leases_answer(temp.path());
        let run_id: RunId = "run-close".parse().expect("run id");
        let (stream, run_stream, events) = recorder::open(&temp.path().join("spool"), &run_id, Delivery::AtOnce).await;
        let mut settings = Settings::new(Some(ArtifactStore::local(&store_dir).expect("local store")));
        settings.settle = settle;
        let mut monitor = Monitor::start(settings, run_id, run_dir.clone(), run_stream);
        monitor.watching().await;
        Watched { _temp: temp, run_dir, store_dir, stream, monitor, events }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.run_dir.join(relative)
    }

    /// Waits for `relative`'s next registration; its sha256.
    async fn registered(&mut self, relative: &str) -> String {
        let what = format!("{relative} registered");
        let delivered = self
            .events
            .wait_for(WITHIN, &what, |delivered| {
                delivered.event_type() == REGISTERED && delivered.data_text("path") == Some(relative)
            })
            .await;
        delivered.data_text("sha256").expect("a sha256").to_owned()
    }

    /// Every registration of `relative` seen so far, as sha256s in order.
    fn registrations(&self, relative: &str) -> Vec<String> {
        registrations(&self.events, relative)
    }

    /// Ends the run: the monitor's final sweep and uploads, then every event delivered.
    async fn finish(mut self) -> (Report, Ended) {
        let report = self.monitor.finish(WITHIN).await;
        let closing = self.stream.close(WITHIN).await;
        assert_eq!(closing.undelivered, 0, "every event delivered");
        self.events.drain();
        (report, Ended { _temp: self._temp, store_dir: self.store_dir, events: self.events })
    }
}

/// What a finished run left.
struct Ended {
    _temp: tempfile::TempDir,
    store_dir: PathBuf,
    events: Deliveries,
}

impl Ended {
    fn registrations(&self, relative: &str) -> Vec<String> {
        registrations(&self.events, relative)
    }

    /// The object stored for `relative`.
    fn stored(&self, relative: &str) -> Vec<u8> {
        let object = self.store_dir.join("runs/run-close").join(relative);
        std::fs::read(&object).unwrap_or_else(|err| panic!("reading {}: {err}", object.display()))
    }
}

/// The sha256s of `relative`'s registrations among `events`, in order.
fn registrations(events: &Deliveries, relative: &str) -> Vec<String> {
    events
        .about(REGISTERED, relative)
        .iter()
        .map(|delivered| delivered.data_text("sha256").expect("a sha256").to_owned())
        .collect()
}

/// The close path needs the kernel to say whether a file is open for writing; a file system
/// that does not (NFS, leases turned off) sends every file down the settle path.
fn leases_answer(dir: &Path) {
    let probe = dir.join("lease-probe");
    std::fs::write(&probe, b"probe").expect("write");
    let file = File::open(&probe).expect("open");
    assert_eq!(
        writers(&file),
        Writers::None,
        "the kernel gives no file lease in {} (leases off in /proc/sys/fs/leases-enable, or a file system \
         without them): the close path cannot be tested here; run the tests on a local file system",
        dir.display()
    );
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

fn content(bytes: usize, seed: u8) -> Vec<u8> {
    (0..bytes).map(|index| (index % 251) as u8 ^ seed).collect()
}

fn write_closed(path: &Path, bytes: &[u8]) {
    let mut file = File::create(path).expect("create");
    file.write_all(bytes).expect("write");
}

fn append_closed(path: &Path, bytes: &[u8]) {
    let mut file = OpenOptions::new().append(true).open(path).expect("open to append");
    file.write_all(bytes).expect("append");
}

#[tokio::test]
async fn a_file_written_and_closed_is_registered_without_waiting_to_settle() {
    let mut watched = Watched::start(NEVER).await;
    let files = [("plots/loss.png", content(1024, 1)), ("model.pt", content(3 * 1024 * 1024, 2))];
    std::fs::create_dir_all(watched.path("plots")).expect("mkdir");
    for (relative, bytes) in &files {
        write_closed(&watched.path(relative), bytes);
        assert_eq!(watched.registered(relative).await, sha256(bytes), "{relative}");
    }
    let (report, ended) = watched.finish().await;
    assert_eq!((report.registered, report.failed), (2, 0));
    for (relative, bytes) in &files {
        assert_eq!(ended.registrations(relative).len(), 1, "{relative} registered once");
        assert!(ended.stored(relative) == *bytes, "{relative}: the stored object is the file");
    }
}

/// A file closed by one of its writers while another still has it open is not registered
/// (nor detected) until that one closes it too.
#[tokio::test]
async fn a_file_another_writer_still_holds_waits_for_its_last_close() {
    let mut watched = Watched::start(NEVER).await;
    let path = watched.path("model.pt");
    let mut first = File::create(&path).expect("create");
    let mut second = OpenOptions::new().append(true).open(&path).expect("open to append");
    first.write_all(b"first piece ").expect("write");
    drop(first);
    second.write_all(b"second piece ").expect("write");
    // The close of `first` came before this marker's: once the marker is registered, the
    // monitor has looked at model.pt and left it.
    write_closed(&watched.path("marker.png"), b"marker");
    watched.registered("marker.png").await;
    assert!(watched.events.about("ai.artifact.detected", "model.pt").is_empty(), "{:?}", watched.events.seen);
    assert!(watched.registrations("model.pt").is_empty());

    second.write_all(b"last piece").expect("write");
    drop(second);
    assert_eq!(watched.registered("model.pt").await, sha256(b"first piece second piece last piece"));
    let (_, ended) = watched.finish().await;
    assert_eq!(ended.registrations("model.pt").len(), 1);
}

/// A file kept open and written in pieces is registered once it settles, while still open:
/// the settle path remains for files nobody closes.
#[tokio::test]
async fn a_file_kept_open_is_registered_once_it_settles() {
    let mut watched = Watched::start(Duration::from_millis(200)).await;
    let mut writer = File::create(watched.path("checkpoint.ckpt")).expect("create");
    let mut written = Vec::new();
    for piece in 0..5u8 {
        let bytes = content(64 * 1024, piece);
        writer.write_all(&bytes).expect("write");
        written.extend_from_slice(&bytes);
    }
    assert_eq!(watched.registered("checkpoint.ckpt").await, sha256(&written));
    drop(writer);
    let (_, ended) = watched.finish().await;
    assert_eq!(ended.registrations("checkpoint.ckpt"), [sha256(&written)], "its close changed nothing");
}

/// Closed, then reopened and appended: the first version is registered on close, the
/// rewrite waits to settle (here: the run's end), and the last registration is the final
/// content. Files reopened at once, racing the upload on close, never have half a version
/// registered: only the first or the final content.
#[tokio::test]
async fn a_file_closed_then_reopened_and_appended_ends_registered_with_its_final_content() {
    let mut watched = Watched::start(NEVER).await;
    let path = watched.path("config.yaml");
    write_closed(&path, b"lr: 0.1\n");
    assert_eq!(watched.registered("config.yaml").await, sha256(b"lr: 0.1\n"));
    append_closed(&path, b"epochs: 10\n");

    let racing: Vec<(String, Vec<u8>, Vec<u8>)> = (0..20u8)
        .map(|n| (format!("race-{n}.pt"), content(256 * 1024, n), content(1024 * 1024 + usize::from(n), n ^ 0x55)))
        .collect();
    for (relative, first, appended) in &racing {
        let path = watched.path(relative);
        write_closed(&path, first);
        append_closed(&path, appended);
    }
    let (_, ended) = watched.finish().await;

    let final_config = b"lr: 0.1\nepochs: 10\n";
    assert_eq!(ended.registrations("config.yaml"), [sha256(b"lr: 0.1\n"), sha256(final_config)]);
    assert!(ended.stored("config.yaml") == final_config);
    for (relative, first, appended) in &racing {
        let whole = [first.as_slice(), appended.as_slice()].concat();
        let versions = [sha256(first), sha256(&whole)];
        let registered = ended.registrations(relative);
        assert!(registered.iter().all(|sha| versions.contains(sha)), "{relative}: half a version registered");
        assert_eq!(registered.last(), Some(&versions[1]), "{relative}: the final content is registered last");
        assert!(ended.stored(relative) == whole, "{relative}: the stored object is the final content");
    }
}

/// A link renamed into place raises a close-like event: refused at once, never followed;
/// a link made directly (no close) is refused by the final sweep. Nothing from outside is
/// stored or registered.
#[tokio::test]
async fn links_are_refused_on_close_as_when_settled() {
    let mut watched = Watched::start(NEVER).await;
    let outside = watched._temp.path().join("outside.png");
    let secret = b"the secret outside the run directory";
    std::fs::write(&outside, secret).expect("write outside");
    std::os::unix::fs::symlink(&outside, watched.path(".leak.png.tmp")).expect("link");
    std::fs::rename(watched.path(".leak.png.tmp"), watched.path("leak.png")).expect("rename into place");
    let failed = watched
        .events
        .wait_for(WITHIN, "leak.png refused", |delivered| {
            delivered.event_type() == "ai.artifact.failed" && delivered.data_text("path") == Some("leak.png")
        })
        .await;
    let error = failed.data_text("error").expect("an error");
    assert!(error.contains("symbolic link") && error.contains("outside the run directory"), "{error}");
    // A real file swapped for a link right after its close: stored as it was, or refused.
    write_closed(&watched.path("swap.png"), b"real png");
    std::os::unix::fs::symlink(&outside, watched.path(".swap.png.tmp")).expect("link");
    std::fs::rename(watched.path(".swap.png.tmp"), watched.path("swap.png")).expect("rename into place");
    std::os::unix::fs::symlink(&outside, watched.path("direct.yaml")).expect("link");
    let (_, ended) = watched.finish().await;

    let refused: Vec<&str> = ended
        .events
        .seen
        .iter()
        .filter(|d| d.event_type() == "ai.artifact.failed")
        .filter_map(|d| d.data_text("path"))
        .collect();
    assert!(refused.contains(&"leak.png") && refused.contains(&"direct.yaml"), "{refused:?}");
    assert_eq!(refused.iter().filter(|path| **path == "leak.png").count(), 1, "reported once");
    assert!(ended.registrations("leak.png").is_empty() && ended.registrations("direct.yaml").is_empty());
    assert!(ended.registrations("swap.png").iter().all(|sha| *sha == sha256(b"real png")));
    let mut folders = vec![ended.store_dir.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("list").map(|entry| entry.expect("entry")) {
            if entry.file_type().expect("type").is_dir() {
                folders.push(entry.path());
            } else {
                assert!(
                    std::fs::read(entry.path()).expect("read") != secret,
                    "{} holds the outside file",
                    entry.path().display()
                );
            }
        }
    }
}

/// Rewritten from the start (truncated) while its upload on close goes, as soon as it was
/// detected: what the upload read is then the start of one version and the rest of the
/// other, and must not be registered. The rewrite is registered at the run's end.
#[tokio::test]
async fn a_file_rewritten_during_its_upload_on_close_is_never_registered_half_written() {
    let mut watched = Watched::start(NEVER).await;
    let rounds: Vec<(String, Vec<u8>, Vec<u8>)> =
        (0..4u8).map(|n| (format!("rewrite-{n}.pt"), content(8 << 20, n), content(8 << 20, n ^ 0xaa))).collect();
    for (relative, first, second) in &rounds {
        let path = watched.path(relative);
        write_closed(&path, first);
        watched
            .events
            .wait_for(WITHIN, &format!("{relative} detected"), |delivered| {
                delivered.event_type() == "ai.artifact.detected"
                    && delivered.data_text("path") == Some(relative.as_str())
            })
            .await;
        write_closed(&path, second);
    }
    let (_, ended) = watched.finish().await;
    for (relative, first, second) in &rounds {
        let versions = [sha256(first), sha256(second)];
        let registered = ended.registrations(relative);
        assert!(registered.iter().all(|sha| versions.contains(sha)), "{relative}: half a version registered");
        assert_eq!(registered.last(), Some(&versions[1]), "{relative}: the rewrite is registered last");
        assert!(ended.stored(relative) == *second, "{relative}: the stored object is the rewrite");
    }
}
