//! Helpers of the `attnrot` command's end-to-end tests (each test file includes this module).
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::Command;

/// The `attnrot` binary, without the variables of the caller's shell that would change what
/// the tests measure (backtraces in error output, a quality mode or policy turned on).
pub fn attnrot() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_attnrot"));
    c.env_remove("RUST_BACKTRACE")
        .env_remove("ATTNROT_QUALITY")
        .env_remove("ATTNROT_POLICY");
    c
}

/// A path in this test process's own temporary directory (`attnrot-<what>-test-<pid>`).
pub fn tmp(what: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attnrot-{what}-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Runs `attnrot` with `args` (which include `--json <file>`), prints its stdout, fails the
/// test if it failed, and returns the JSON it wrote.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    run_json_stdout(args).0
}

/// [`run_json`], with the command's stdout as well.
pub fn run_json_stdout(args: &[&str]) -> (serde_json::Value, String) {
    let out = attnrot().args(args).output().expect("run attnrot");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    assert!(
        out.status.success(),
        "attnrot {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = args[args
        .iter()
        .position(|a| *a == "--json")
        .expect("a --json argument")
        + 1];
    let v = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (v, stdout)
}

/// A path as a `&str` argument.
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `attnrot` with `args` followed by `--json <json>` and checks that it failed, said
/// `want` on stderr and wrote no JSON file; returns the stderr.
pub fn fails_saying(args: &[&str], json: &std::path::Path, want: &str) -> String {
    let out = attnrot()
        .args(args)
        .arg("--json")
        .arg(json)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        err.contains(want),
        "{args:?}: stderr does not say '{want}':\n{err}"
    );
    assert!(!json.exists(), "{args:?} left {}", json.display());
    err
}
