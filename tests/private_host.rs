//! Hosts that keep ggml private (`RTLD_LOCAL`), as Node addons (node-llama-cpp) and Python
//! ctypes do: nothing of ggml is in the global scope, so `dlsym(RTLD_DEFAULT, "ggml_version")`
//! finds nothing — the backend used to refuse with "ggml_version not found in the host
//! process". It now finds the already-loaded ggml ([`attnrot::ggml::locate`]).
//!
//! * `c_host_rtld_local`: `tests/hosts/rtld_local_host.c`, built here with `cc`, `dlopen`s the
//!   stock build's `libggml-base.so` and `libggml.so` with `RTLD_LOCAL`, checks that
//!   `ggml_version`, `ggml_backend_load` and `ggml_log_internal` are **not** visible through
//!   `RTLD_DEFAULT` (so the old global-only lookup would fail in this process), loads
//!   `libattnrot.so` through that private `ggml_backend_load`, and checks registry and device
//!   "AttnRot", a backend created on it, and our registration line arriving through the
//!   private ggml's logger (`ggml_log_set`: the logger lookup found the right ggml too).
//! * `python_ctypes_host`: the same with Python's `ctypes.CDLL` (default mode `RTLD_LOCAL`).
//! * `two_ggml_copies`: the C host with two different ggml builds loaded privately — the
//!   stock 0.25.3 and the npm prebuilt 0.25.1 (`scripts/fetch-npm-llama.sh`) — loading the
//!   backend through one of them: it serves the one on its call stack (each way round), and
//!   refuses when the other one asks for it afterwards (its registry is bound to the first).
//!
//! Needs the stock build (`scripts/build-upstream.sh`, cached); a C compiler, python3 and (for
//! the two-copies case) npm are required in CI, skipped with a printed reason elsewhere.
mod common;

use common::{cdylib, have, require, text, upstream_bin};
use std::path::{Path, PathBuf};
use std::process::Command;

fn out_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("private-host");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Our registration line as a private host sees it (one line, through ggml's logger).
fn assert_registered_privately(out: &str) {
    let line = common::registration_line(out, out);
    assert!(
        line.contains("private ggml") && line.contains("libggml-base.so"),
        "the backend did not say it found a private ggml: {line}"
    );
}

/// Build `tests/hosts/rtld_local_host.c` (once per test binary run).
fn c_host() -> Option<PathBuf> {
    static EXE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        if !require(have(&cc), &format!("no C compiler ({cc})")) {
            return None;
        }
        let exe = out_dir().join("rtld_local_host");
        let src = common::repo_root().join("tests/hosts/rtld_local_host.c");
        let o = Command::new(&cc)
            .args(["-O1", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Werror"])
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .arg("-ldl")
            .output()
            .expect("run the C compiler");
        assert!(
            o.status.success(),
            "compile {}:\n{}",
            src.display(),
            text(&o)
        );
        Some(exe)
    })
    .clone()
}

/// Run the C host: backend loaded through `ggml` (base, libggml), optionally with `other`
/// loaded privately too.
fn run_c_host(exe: &Path, ggml: (&Path, &Path), other: Option<(&Path, &Path)>) -> (bool, String) {
    let mut cmd = Command::new(exe);
    cmd.arg(ggml.0).arg(ggml.1).arg(cdylib());
    if let Some((b, g)) = other {
        cmd.arg(b).arg(g);
    }
    let o = cmd
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("GGML_BACKEND_PATH")
        .output()
        .expect("run rtld_local_host");
    let out = text(&o);
    eprintln!("{out}");
    // the process is what it claims to be: the old lookup would have found nothing
    assert!(
        out.contains(
            "global scope: ggml_version not visible, ggml_backend_load not visible, ggml_log_internal not visible"
        ),
        "ggml leaked into the global scope, the test proves nothing:\n{out}"
    );
    (
        o.status.success() && out.contains("rtld_local_host: ok"),
        out,
    )
}

#[test]
fn c_host_rtld_local() {
    let Some(exe) = c_host() else { return };
    let bin = upstream_bin();
    let (ok, out) = run_c_host(
        &exe,
        (&bin.join("libggml-base.so"), &bin.join("libggml.so")),
        None,
    );
    assert!(ok, "rtld_local_host failed:\n{out}");
    assert!(out.contains("registry AttnRot, 1 device(s)") && out.contains("device AttnRot"));
    assert!(!out.contains("refusing to load"), "{out}");
    assert_registered_privately(&out);
    assert!(
        out.contains("it loaded this backend"),
        "the backend did not tell the registry that loaded it from the call stack:\n{out}"
    );
}

#[test]
fn two_ggml_copies() {
    let Some(exe) = c_host() else { return };
    let stock = upstream_bin();
    let npm = match common::try_script("fetch-npm-llama.sh", &["install"]) {
        Ok(p) => p.join("node_modules/@node-llama-cpp/linux-x64/bins/linux-x64"),
        Err(e) => {
            let _ = require(false, &format!("npm prebuilt not available: {e}"));
            return;
        }
    };
    let stock = (stock.join("libggml-base.so"), stock.join("libggml.so"));
    let npm = (npm.join("libggml-base.so"), npm.join("libggml.v0.5.0.so"));
    for (first, second, want) in [
        (&stock, &npm, "host ggml 0.25.3 commit unknown"),
        (&npm, &stock, "host ggml 0.25.1 commit 0ad4a86"),
    ] {
        let (ok, out) = run_c_host(&exe, (&first.0, &first.1), Some((&second.0, &second.1)));
        assert!(ok, "rtld_local_host failed:\n{out}");
        assert_registered_privately(&out);
        let reg = out
            .lines()
            .find(|l| l.contains("AttnRot registered"))
            .unwrap();
        assert!(
            reg.contains(want)
                && reg.contains(first.0.to_str().unwrap())
                && reg.contains("other ggml copies are loaded too"),
            "served the wrong ggml: {reg}"
        );
        assert!(
            out.contains("second ggml: refused") && out.contains("already serves"),
            "the second ggml got a registry bound to the first:\n{out}"
        );
    }
}

const PY_HOST: &str = r#"
import ctypes, os, sys
bindir, backend = sys.argv[1], sys.argv[2]
base = ctypes.CDLL(os.path.join(bindir, "libggml-base.so"))   # mode: RTLD_LOCAL (default)
ggml = ctypes.CDLL(os.path.join(bindir, "libggml.so"))
glob = ctypes.CDLL(None)                                      # the global scope
print("global ggml_version:", "visible" if hasattr(glob, "ggml_version") else "not visible")
LOG = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
lines = []
def on_log(level, text, user):
    lines.append(text.decode(errors="replace"))
    sys.stdout.write(text.decode(errors="replace"))
cb = LOG(on_log)
base.ggml_log_set(cb, None)
ggml.ggml_backend_load.restype = ctypes.c_void_p
ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
reg = ggml.ggml_backend_load(backend.encode())
if not reg:
    print("backend refused"); sys.exit(3)
ggml.ggml_backend_reg_name.restype = ctypes.c_char_p
ggml.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
ggml.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
ggml.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
ggml.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
ggml.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
ggml.ggml_backend_dev_name.restype = ctypes.c_char_p
ggml.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
name = ggml.ggml_backend_reg_name(reg).decode()
n = ggml.ggml_backend_reg_dev_count(reg)
dev = ggml.ggml_backend_dev_name(ggml.ggml_backend_reg_dev_get(reg, 0)).decode() if n else ""
print(f"registry {name}, {n} device(s), device {dev}")
ok = name == "AttnRot" and n == 1 and dev == "AttnRot" and any("AttnRot registered" in l for l in lines)
print("python_ctypes_host: ok" if ok else "python_ctypes_host: FAILED")
sys.exit(0 if ok else 1)
"#;

#[test]
fn python_ctypes_host() {
    if !require(have("python3"), "python3 not found") {
        return;
    }
    let bin = upstream_bin();
    let o = Command::new("python3")
        .arg("-c")
        .arg(PY_HOST)
        .arg(&bin)
        .arg(cdylib())
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("GGML_BACKEND_PATH")
        .output()
        .expect("run python3");
    let out = text(&o);
    eprintln!("{out}");
    assert!(
        out.contains("global ggml_version: not visible"),
        "ggml is global in the python host, the test proves nothing:\n{out}"
    );
    assert!(
        o.status.success() && out.contains("python_ctypes_host: ok"),
        "python ctypes host failed ({}):\n{out}",
        o.status
    );
    assert_registered_privately(&out);
    assert!(!out.contains("refusing to load"), "{out}");
}
