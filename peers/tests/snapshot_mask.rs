//! `tandem snapshot --out` honours the masking policy (spec §12, issue 4): a script can check the
//! encoded bytes of any page from outside.

use std::path::PathBuf;
use std::process::Command;

const CANARY: &str = "c4n4ry";

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("tandem-snapshot-mask-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Runs `tandem snapshot PAGE --out FILE ARGS…` and returns the frames written.
fn snapshot(page: &str, args: &[&str], tag: &str) -> Vec<u8> {
    let d = dir();
    let html = d.join(format!("{tag}.html"));
    let out = d.join(format!("{tag}.bin"));
    std::fs::write(&html, page).expect("write page");
    let status = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("snapshot")
        .arg(&html)
        .arg("--out")
        .arg(&out)
        .args(args)
        .output()
        .expect("run tandem");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    std::fs::read(&out).expect("read frames")
}

fn has(bytes: &[u8], s: &str) -> bool {
    bytes.windows(s.len()).any(|w| w == s.as_bytes())
}

#[test]
fn automatic_rules_apply_without_flags() {
    let page = format!(
        "<form><input type=password value={CANARY}1><input type=hidden value={CANARY}2>\
         <input autocomplete=cc-number value={CANARY}3><p>visible</p></form>"
    );
    let bytes = snapshot(&page, &[], "auto");
    assert!(!has(&bytes, CANARY));
    assert!(has(&bytes, "visible"));
}

#[test]
fn selector_flags_mask_block_and_ignore() {
    let page = format!(
        "<p class=bal title={CANARY}>{CANARY}</p><div id=stmt><p>{CANARY}</p></div>\
         <form class=search><input value={CANARY}></form><p>other</p>"
    );
    // Without flags the canaries are there: the check can fail.
    assert!(has(&snapshot(&page, &[], "plain"), CANARY));
    let bytes = snapshot(
        &page,
        &[
            "--mask-selector",
            ".bal",
            "--block-selector",
            "#stmt",
            "--ignore-selector",
            "form.search input",
        ],
        "flags",
    );
    assert!(!has(&bytes, CANARY));
    assert!(has(&bytes, "other") && has(&bytes, "data-tandem-blocked"));
}

#[test]
fn private_mode_and_config_file() {
    let page = format!("<h1>{CANARY}</h1><nav class=pub>Menu</nav>");
    let bytes = snapshot(
        &page,
        &["--private", "--unmask-selector", ".pub"],
        "private",
    );
    assert!(!has(&bytes, CANARY) && has(&bytes, "Menu"));
    let cfg = dir().join("mask.conf");
    std::fs::write(&cfg, "# test\nprivate\nlength keep\nunmask .pub\n").expect("write config");
    let bytes = snapshot(
        &page,
        &["--mask-config", cfg.to_str().expect("utf-8 path")],
        "cfg",
    );
    assert!(!has(&bytes, CANARY) && has(&bytes, "Menu"));
    // Keep length: six stars for the six characters of the canary.
    assert!(has(&bytes, "******") && !has(&bytes, "*******"));
}

#[test]
fn a_bad_selector_is_a_usage_error() {
    let d = dir();
    let html = d.join("bad.html");
    std::fs::write(&html, "<p>x</p>").expect("write page");
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "snapshot",
            html.to_str().expect("utf-8 path"),
            "--mask-selector",
            "a + b",
        ])
        .output()
        .expect("run tandem");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("selector"));
}
