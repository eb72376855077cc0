//! Shared helpers for Tandem's benchmarks: where the corpus is.
//!
//! The benchmarks read `../shared/corpus/` beside the repository when it is there (the full
//! corpus), otherwise the small credited copy in `testdata/`.

use std::path::{Path, PathBuf};

/// The corpus root: the shared corpus if present, else the repository's `testdata/`.
pub fn corpus_root() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = repo.join("../shared/corpus");
    if shared.join("pages").is_dir() {
        shared
    } else {
        repo.join("testdata")
    }
}

/// Every page of the corpus as (name, HTML), sorted by name.
pub fn pages() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(corpus_root().join("pages")) else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "html")
            && let Ok(bytes) = std::fs::read(&path)
        {
            let name = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            out.push((name, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    out.sort();
    out
}
