//! The examples in `ffi/examples/` are built with the system compilers and run:
//!
//! * `kv_attention.c` (C11, `-Wall -Wextra -Werror -pedantic`, linked against
//!   `libattnrot.so` only, no ggml): quantizes a K/V cache in every format, runs
//!   `attnrot_attention` with and without attn-rot, compares with float attention in C, and
//!   exits non-zero if an error exceeds its bound or rotation fails to help;
//! * `ggml_plugin.cpp` (C++17, linked against the pinned upstream ggml built by the
//!   `attnrot-ref` crate, and `libattnrot.so`): puts the ggml-shaped entry points in tables of
//!   ggml's own function-pointer types, compares them with ggml's type traits bit for bit, and
//!   runs ggml MUL_MAT / GET_ROWS / a custom op over bytes attnrot wrote.
//!
//! `CC` / `CXX` pick the compilers; `ATTNROT_SANITIZE=1` adds
//! `-fsanitize=address,undefined -fno-sanitize-recover=all` (scripts/sanitize.sh sets it).
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>/deps`, where `cargo test` just built libattnrot.so.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    assert!(
        deps.join("libattnrot.so").exists(),
        "{} has no libattnrot.so",
        deps.display()
    );
    deps
}

fn out_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("capi-examples");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{cmd:?} failed ({}):\n{text}", o.status);
    text
}

fn sanitize_flags() -> Vec<&'static str> {
    if std::env::var("ATTNROT_SANITIZE")
        .map(|v| v == "1")
        .unwrap_or(false)
    {
        vec![
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
        ]
    } else {
        vec![]
    }
}

/// The upstream ggml static libraries the `attnrot-ref` build script compiled:
/// `ATTNROT_GGML_REF_LIB_DIR` if set, else the directory where the `attnrot-ref` build
/// script cached the reference ggml (`attnrot_ref::LIB_DIR`, the same build this test links).
fn ggml_lib_dir() -> PathBuf {
    if let Ok(d) = std::env::var("ATTNROT_GGML_REF_LIB_DIR") {
        return PathBuf::from(d);
    }
    let d = PathBuf::from(attnrot_ref::LIB_DIR);
    assert!(
        d.join("libggml_ref_c.a").is_file() && d.join("libggml_ref_cxx.a").is_file(),
        "{} has no libggml_ref_c.a / libggml_ref_cxx.a (built by attnrot-ref)",
        d.display()
    );
    d
}

fn run_example(exe: &Path) -> String {
    // cargo puts target/<profile> (possibly a stale libattnrot.so) on LD_LIBRARY_PATH.
    let out = run(Command::new(exe).env_remove("LD_LIBRARY_PATH"));
    eprintln!("{out}");
    out
}

#[test]
fn c_example_kv_attention() {
    let lib = lib_dir();
    let exe = out_dir().join("kv_attention");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    run(Command::new(&cc)
        .args([
            "-O2",
            "-g",
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
        ])
        .args(sanitize_flags())
        .arg("-I")
        .arg(root().join("ffi"))
        .arg(root().join("ffi/examples/kv_attention.c"))
        .arg("-L")
        .arg(&lib)
        .arg("-lattnrot")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lm")
        .arg("-o")
        .arg(&exe));
    let out = run_example(&exe);
    assert!(out.contains("kv_attention: ok"), "{out}");
    // the example needs no ggml
    let ldd = run(Command::new("ldd").arg(&exe).env_remove("LD_LIBRARY_PATH"));
    assert!(!ldd.contains("ggml"), "{ldd}");
}

#[test]
fn cxx_example_ggml_plugin() {
    let lib = lib_dir();
    let ggml = ggml_lib_dir();
    let include = PathBuf::from(attnrot_ref::TREE).join("ggml/include");
    let exe = out_dir().join("ggml_plugin");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    run(Command::new(&cxx)
        .args(["-O2", "-g", "-std=c++17", "-Wall", "-Wextra", "-Werror"])
        .args(sanitize_flags())
        .arg("-I")
        .arg(root().join("ffi"))
        .arg("-I")
        .arg(&include)
        .arg(root().join("ffi/examples/ggml_plugin.cpp"))
        .arg("-L")
        .arg(&lib)
        .arg("-lattnrot")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-Wl,--start-group")
        .arg(ggml.join("libggml_ref_cxx.a"))
        .arg(ggml.join("libggml_ref_c.a"))
        .arg("-Wl,--end-group")
        .args(["-lpthread", "-ldl", "-lm"])
        .arg("-o")
        .arg(&exe));
    let out = run_example(&exe);
    assert!(out.contains("ggml_plugin: ok"), "{out}");
}
