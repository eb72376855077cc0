//! Finds the test corpus: `../shared/corpus` beside the repository when present, otherwise the
//! small credited copy in `testdata/`.

#![allow(dead_code)]

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

/// Every page of `pages/`, as (name, HTML), sorted by name.
pub fn pages() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(corpus_root().join("pages")).expect("corpus pages folder") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "html") {
            let html =
                String::from_utf8_lossy(&std::fs::read(&path).expect("read page")).into_owned();
            out.push((
                path.file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                html,
            ));
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no corpus pages found");
    out
}

/// The state folders of `states/`, each with its states in order.
pub fn state_dirs() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(corpus_root().join("states")).expect("corpus states folder") {
        let dir = entry.expect("directory entry").path();
        let mut states = Vec::new();
        for k in 0.. {
            let p = dir.join(format!("{k}.html"));
            let Ok(bytes) = std::fs::read(&p) else { break };
            states.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        out.push((
            dir.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            states,
        ));
    }
    out.sort();
    out
}

/// The morph pairs of `morph-pairs/`, as (name, from, to).
pub fn morph_pairs() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(corpus_root().join("morph-pairs")).expect("corpus morph-pairs folder")
    {
        let dir = entry.expect("directory entry").path();
        let read =
            |n: &str| std::fs::read(dir.join(n)).map(|b| String::from_utf8_lossy(&b).into_owned());
        if let (Ok(from), Ok(to)) = (read("from.html"), read("to.html")) {
            out.push((
                dir.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                from,
                to,
            ));
        }
    }
    out.sort();
    out
}

/// The pinned inputs of fuzz target `target` (`fuzz/regressions/<target>/`), sorted, without the
/// folder's README and hidden files (STYLE.md 10).
pub fn regression_inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        panic!("{} is missing", dir.display());
    };
    let mut files: Vec<_> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            p.is_file() && !name.starts_with('.') && name != "README.md"
        })
        .collect();
    files.sort();
    files
}

/// The rows (cells trimmed, header and rule skipped) of the first table after `heading` in
/// `spec/tandem.md`, for tests that hold the spec's tables to the code.
pub fn spec_table(heading: &str) -> Vec<Vec<String>> {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/tandem.md"))
        .expect("spec/tandem.md");
    let start = spec
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading} in the spec"));
    spec[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

/// The element of `dom` whose `id` attribute is `id` (the first in document order).
pub fn by_id(dom: &tandem_engine::Dom, id: &str) -> tandem_protocol::NodeId {
    dom.preorder(0)
        .find(|&n| {
            dom.node(n)
                .and_then(|x| x.element())
                .and_then(|e| e.attr("id"))
                == Some(id)
        })
        .unwrap_or_else(|| panic!("no element with id {id}"))
}
