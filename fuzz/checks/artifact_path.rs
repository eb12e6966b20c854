//! `artifact_path`: a file's path in the run directory becoming its object key
//! (`ArtifactStore::key`), and that key becoming a file in a local artifact directory.
//!
//! Input: the first byte picks a store prefix, the bytes up to the first `\n` are the run id
//! (an invalid one is replaced by `run-1`), the rest are paths separated by NUL (which no
//! path can contain). Every key has no empty, `.` or `..` segment, does not start with `/`,
//! and lies inside `[PREFIX/]runs/<run id>/`; in a local store its file lies inside that
//! run's folder. For files the monitor uploads (`classify` says so): the key names a file
//! below the run's prefix, and two different paths never share a key (one would overwrite
//! the other).
//!
//! Shared by `fuzz_targets/artifact_path.rs` and `tests/fuzz_corpus.rs`; a violation panics.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use scientist::artifacts::ArtifactStore;
use scientist::monitor::classify;
use scientist::run::RunId;

/// Store URLs and the key prefix each gives (as `ArtifactStore::open` reads `s3://` URLs).
const STORES: &[(&str, &[&str])] = &[
    ("s3://fuzz", &[]),
    ("s3://fuzz/team/exp", &["team", "exp"]),
    ("s3://fuzz//a//b/", &["a", "b"]),
    ("s3://fuzz/runs", &["runs"]),
    ("s3://fuzz/..", &[".."]),
];

struct Stores {
    /// The local store first, then `STORES`, each with its key prefix.
    stores: Vec<(ArtifactStore, Vec<String>)>,
    /// The same directory as the local store, to map keys to files.
    files: LocalFileSystem,
}

static STORE_SET: LazyLock<Stores> = LazyLock::new(|| {
    let root = std::env::temp_dir().join("scientist-fuzz-artifact-path");
    let local = ArtifactStore::local(&root).unwrap_or_else(|err| panic!("cannot make a local store: {err}"));
    let files = LocalFileSystem::new_with_prefix(&root).unwrap_or_else(|err| panic!("cannot open {root:?}: {err}"));
    let mut stores = vec![(local, Vec::new())];
    for (url, prefix) in STORES {
        // Never contacted: keys are computed without I/O.
        let store = ArtifactStore::open(url, Some("http://127.0.0.1:9"))
            .unwrap_or_else(|err| panic!("cannot open {url}: {err}"));
        stores.push((store, prefix.iter().map(|part| (*part).to_owned()).collect()));
    }
    Stores { stores, files }
});

pub fn check(data: &[u8]) {
    let Some((&choice, rest)) = data.split_first() else { return };
    let (id, paths) = match rest.iter().position(|byte| *byte == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    let run_id: RunId = String::from_utf8_lossy(id).parse().or_else(|_| "run-1".parse()).expect("run-1 is a valid id");
    let set = &*STORE_SET;
    let (store, prefix) = &set.stores[usize::from(choice) % set.stores.len()];
    let run_prefix = ObjectPath::from_iter(prefix.iter().map(String::as_str).chain(["runs", run_id.as_str()]));
    let run_parts = run_prefix.parts().count();

    let mut uploaded: Vec<(ObjectPath, Vec<&OsStr>)> = Vec::new();
    for path in paths.split(|byte| *byte == 0).map(|bytes| Path::new(OsStr::from_bytes(bytes))) {
        let key = store.key(&run_id, path);
        let raw = key.as_ref();
        assert!(!raw.starts_with('/'), "key {raw:?} of {path:?} starts with /");
        for segment in raw.split('/') {
            assert!(!matches!(segment, "" | "." | ".."), "key {raw:?} of {path:?} has the segment {segment:?}");
        }
        assert!(key.prefix_match(&run_prefix).is_some(), "key {raw:?} of {path:?} is outside {run_prefix}");
        let uploads = classify(path).is_some();
        in_the_run_folder(&set.files, &key, &run_prefix, path, uploads);
        if uploads {
            assert!(key.parts().count() > run_parts, "the uploaded file {path:?} has the run's own key {raw:?}");
            let names = path.components().filter_map(normal).collect();
            if let Some((_, other)) = uploaded.iter().find(|(seen, names_seen)| *seen == key && *names_seen != names) {
                panic!("{path:?} and {other:?} share the key {raw:?}");
            }
            uploaded.push((key, names));
        }
    }
}

/// A key of a local store is a file inside the run's folder, never above it; a file the
/// monitor uploads always has one.
fn in_the_run_folder(files: &LocalFileSystem, key: &ObjectPath, run_prefix: &ObjectPath, path: &Path, uploads: bool) {
    let file = match files.path_to_filesystem(key) {
        Ok(file) => file,
        Err(err) if uploads => panic!("the artifact {path:?} (key {key}) cannot be stored in a directory: {err}"),
        Err(_) => return,
    };
    let folder: PathBuf = match files.path_to_filesystem(run_prefix) {
        Ok(folder) => folder,
        Err(err) => panic!("the run prefix {run_prefix} has no folder: {err}"),
    };
    assert!(
        !file.components().any(|part| matches!(part, Component::ParentDir | Component::CurDir)),
        "{path:?} is stored at {file:?}"
    );
    assert!(file.starts_with(&folder), "{path:?} is stored at {file:?}, outside {folder:?}");
}

fn normal(component: Component<'_>) -> Option<&OsStr> {
    match component {
        Component::Normal(name) => Some(name),
        _ => None,
    }
}
