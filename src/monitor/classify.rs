//! Which files of a run directory the monitor cares about, from their names alone: the kind
//! of artifact (and its content type), a log to tail, or nothing. No I/O here.

use std::path::Path;

/// What a file in a run directory is to the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Uploaded once it settles, and again whenever its content changes.
    Artifact(Kind),
    /// Tailed line by line into `ai.run.log` events, never uploaded.
    Log,
}

/// The kind of an artifact, as `ai.artifact.*` events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Plot,
    Pdf,
    Checkpoint,
    Config,
    Metrics,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Plot => "plot",
            Kind::Pdf => "pdf",
            Kind::Checkpoint => "checkpoint",
            Kind::Config => "config",
            Kind::Metrics => "metrics",
        }
    }
}

/// The name whose values are also reported as `ai.run.stage_metric` events.
pub const METRICS_FILE: &str = "metrics.json";

/// What `path` (relative to the run directory: the folders above it may well be hidden,
/// as `~/.local/share` is) is, or `None` for a file the monitor leaves alone: any other name, hidden files and folders (`.git`, `.cache`, editor
/// swap files), the temporary names tools write before renaming into place, and paths that
/// are not UTF-8 (events and object keys name files in text: two such folders would share a key).
pub fn classify(path: &Path) -> Option<Class> {
    if path.components().any(|part| part.as_os_str().to_str().is_none_or(|name| name.starts_with('.'))) {
        return None;
    }
    let name = path.file_name()?.to_str()?;
    if name == METRICS_FILE {
        return Some(Class::Artifact(Kind::Metrics));
    }
    if name.ends_with('~') {
        return None;
    }
    let (_, extension) = name.rsplit_once('.')?;
    let class = match extension.to_ascii_lowercase().as_str() {
        "png" | "jpg" | "jpeg" | "svg" => Class::Artifact(Kind::Plot),
        "pdf" => Class::Artifact(Kind::Pdf),
        "pt" | "pth" | "ckpt" => Class::Artifact(Kind::Checkpoint),
        "yaml" | "yml" => Class::Artifact(Kind::Config),
        "npy" => Class::Artifact(Kind::Metrics),
        "log" => Class::Log,
        _ => return None,
    };
    Some(class)
}

/// The content type an artifact is stored and registered with.
pub fn content_type(path: &Path) -> &'static str {
    let extension = path.extension().and_then(|ext| ext.to_str()).unwrap_or_default().to_ascii_lowercase();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "json" => "application/json",
        "yaml" | "yml" => "application/yaml",
        "log" => "text/plain; charset=utf-8",
        // Checkpoints (pickles, zip archives) and NumPy arrays are opaque bytes to a browser.
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_kinds() {
        let cases: &[(&str, Option<Class>)] = &[
            ("plots/loss.png", Some(Class::Artifact(Kind::Plot))),
            ("fig.JPG", Some(Class::Artifact(Kind::Plot))),
            ("a/b/c.jpeg", Some(Class::Artifact(Kind::Plot))),
            ("curve.svg", Some(Class::Artifact(Kind::Plot))),
            ("paper.pdf", Some(Class::Artifact(Kind::Pdf))),
            ("ckpt/model.pt", Some(Class::Artifact(Kind::Checkpoint))),
            ("model.pth", Some(Class::Artifact(Kind::Checkpoint))),
            ("last.ckpt", Some(Class::Artifact(Kind::Checkpoint))),
            ("config.yaml", Some(Class::Artifact(Kind::Config))),
            ("hydra.yml", Some(Class::Artifact(Kind::Config))),
            ("metrics.json", Some(Class::Artifact(Kind::Metrics))),
            ("Stage_1/metrics.json", Some(Class::Artifact(Kind::Metrics))),
            ("experiment_data.npy", Some(Class::Artifact(Kind::Metrics))),
            ("train.log", Some(Class::Log)),
            ("logs/stage.log", Some(Class::Log)),
            // Everything else is left alone.
            ("idea.json", None),
            ("result.json", None),
            ("script.py", None),
            ("README", None),
            ("model.pt.tmp", None),
            ("model.pt.part", None),
            ("loss.png~", None),
            (".loss.png.swp", None),
            (".hidden.png", None),
            (".git/objects/pack.pt", None),
            ("venv/.cache/x.log", None),
        ];
        for (path, expected) in cases {
            assert_eq!(classify(Path::new(path)), *expected, "{path}");
        }
    }

    /// Found by the `artifact_path` fuzz target: `\xff/a.png` and `\xfe/a.png` had one key.
    #[test]
    fn paths_that_are_not_utf8_are_left_alone() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        for bytes in [&b"\xff/a.png"[..], b"plots/\xfe.png", b"a/\xc3/b/metrics.json"] {
            assert_eq!(classify(Path::new(OsStr::from_bytes(bytes))), None, "{bytes:?}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type(Path::new("a.png")), "image/png");
        assert_eq!(content_type(Path::new("a.JPEG")), "image/jpeg");
        assert_eq!(content_type(Path::new("a.svg")), "image/svg+xml");
        assert_eq!(content_type(Path::new("paper.pdf")), "application/pdf");
        assert_eq!(content_type(Path::new("metrics.json")), "application/json");
        assert_eq!(content_type(Path::new("c.yaml")), "application/yaml");
        assert_eq!(content_type(Path::new("m.pt")), "application/octet-stream");
        assert_eq!(content_type(Path::new("x.npy")), "application/octet-stream");
    }
}
