//! Helpers shared by the integration tests that run stock upstream programs or other hosts.
//! (Each test file includes this module; not every file uses every helper.)
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>/libattnrot.so`, found from the test's own path (`target/<profile>/deps/…`).
pub fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let so = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .join("libattnrot.so");
    assert!(
        so.is_file(),
        "{} not found: build it first with `cargo build --release`",
        so.display()
    );
    so
}

/// The attnrot cache (`ATTNROT_CACHE`, else `$XDG_CACHE_HOME/attnrot`, else `~/.cache/attnrot`),
/// as the scripts compute it.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("ATTNROT_CACHE") {
        return PathBuf::from(p);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"))
        .join("attnrot")
}

/// Run `scripts/<name>` and return the path it prints on stdout (its last line).
pub fn script(name: &str, args: &[&str]) -> PathBuf {
    let t0 = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(repo_root().join("scripts").join(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let p = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    eprintln!(
        "scripts/{name}: {} ({:.1} s)",
        p.display(),
        t0.elapsed().as_secs_f64()
    );
    p
}

/// The stock build's bin directory: `ATTNROT_UPSTREAM_BIN`, else `scripts/build-upstream.sh`
/// (which builds it the first time, cached in the attnrot cache).
pub fn upstream_bin() -> PathBuf {
    match std::env::var_os("ATTNROT_UPSTREAM_BIN") {
        Some(p) => PathBuf::from(p),
        None => script("build-upstream.sh", &[]),
    }
}

/// The measurement model (`scripts/fetch-model.sh`).
pub fn model() -> PathBuf {
    script("fetch-model.sh", &[])
}

/// Running in CI (`CI=true`/`1`)?
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Something a test needs is missing: in CI that is a failure; elsewhere the test is skipped
/// with the reason printed. Returns `false` (the caller returns) when skipping.
#[must_use]
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    assert!(
        !in_ci(),
        "{what} (CI=true: a missing prerequisite is a failure)"
    );
    eprintln!("SKIPPED: {what}");
    false
}

/// Is `prog` runnable (`prog --version` succeeds)?
pub fn have(prog: &str) -> bool {
    Command::new(prog)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// stdout + stderr of a finished command, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
