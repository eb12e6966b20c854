//! The import graph matches ARCHITECTURE.md's layers: a module of `src/` names only modules
//! of its own layer or below (`crate::…` paths). A new back-edge fails here with the file
//! and the edge, so the map cannot drift from the code.

use std::collections::BTreeSet;
use std::path::Path;

/// ARCHITECTURE.md's "Layers", bottom first. Modules in one row may use each other.
const LAYERS: &[&[&str]] = &[
    &["time", "errors", "backoff", "sync", "logging", "notice", "limits", "redact", "gpu"],
    &["run", "alert"],
    &["event"],
    &["ideation", "reduce"],
    &["queue"],
    &["store"],
    &["sweep", "retention", "webhook", "otlp"],
    &["protocol"],
    &["control"],
    &["artifacts"],
    &["emit"],
    &["capture"],
    &["monitor"],
    &["worker"],
    &["server"],
    &["cmd"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&module))
}

/// The top-level module a file of `src/` belongs to (`src/store/mongo/apply.rs` → `store`).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_owned())
}

/// Every `crate::NAME` a file names outside comments.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|line| !line.trim_start().starts_with("//")) {
        for (at, _) in line.match_indices("crate::") {
            let rest = &line[at + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            // `$crate::…` in a macro and `crate::NAME!` macros name the macro's home module.
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges = 0;
    let mut forbidden = Vec::new();
    let mut unplaced = BTreeSet::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src/");
        let Some(module) = module_of(relative) else { continue };
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(own) = layer(&module) else {
            unplaced.insert(module);
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read a source file");
        for named in named_modules(&text) {
            match layer(&named) {
                Some(_) if named == module => {}
                Some(theirs) if theirs <= own => edges += 1,
                Some(_) => forbidden.push(format!("{}: {module} → {named}", relative.display())),
                None => {
                    unplaced.insert(named);
                }
            }
        }
    }
    assert!(unplaced.is_empty(), "modules missing from LAYERS (and from ARCHITECTURE.md's layers): {unplaced:?}");
    assert!(forbidden.is_empty(), "imports from a layer above:\n{}", forbidden.join("\n"));
    assert!(edges > 50, "only {edges} imports between modules found: is the scan reading src/?");
}

#[test]
fn the_scan_sees_a_back_edge() {
    let text = "use crate::store::Store;\n// crate::server in a comment\nlet x = crate::server::routes();";
    assert_eq!(named_modules(text), BTreeSet::from(["server".to_owned(), "store".to_owned()]));
}
