//! Builds the pinned upstream ggml-base + ggml-cpu as a static library with the `cc` crate.
//!
//! * The tree comes from `vendor/fetch.sh` (pinned PyPI sdist, sha256-checked), or
//!   `ATTNROT_LLAMA_CPP_DIR` for offline builds.
//! * ISA: what a default upstream CPU build (`GGML_NATIVE=ON`) uses on the build machine,
//!   `-march=native`, minus AMX (upstream's AMX path crashes here, see DESIGN.md).
//!   `ATTNROT_REF_ARCH=avx2` instead builds what upstream's `haswell` CPU variant
//!   (`GGML_CPU_ALL_VARIANTS`: SSE42 AVX F16C FMA AVX2 BMI2) gets from its CMake — the flags
//!   `-msse4.2 -mf16c -mfma -mbmi2 -mavx -mavx2` on the compiler's baseline, and the
//!   definitions `GGML_SSE42 GGML_F16C GGML_FMA GGML_BMI2 GGML_AVX GGML_AVX2` — no AVX-512,
//!   in its own cache key (an AVX2-only reference on an AVX-512 machine, for benches).
//! * Cached in `~/.cache/attnrot/ref-build/<key>/` (`ATTNROT_CACHE` moves it; key = pinned
//!   sdist checksum or tree path, sources, flags, compiler), so `cargo test`, `cargo bench`,
//!   release and debug builds, fresh target dirs and fresh clones all share one compile.
//!   Built into a temporary directory and renamed into place, so concurrent builds are safe.
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

const C_SOURCES: &[&str] = &[
    "ggml/src/ggml.c",
    "ggml/src/ggml-alloc.c",
    "ggml/src/ggml-quants.c",
    "ggml/src/ggml-cpu/ggml-cpu.c",
    "ggml/src/ggml-cpu/quants.c",
    "ggml/src/ggml-cpu/arch/x86/quants.c",
];
const CXX_SOURCES: &[&str] = &[
    "ggml/src/ggml.cpp",
    "ggml/src/ggml-backend.cpp",
    "ggml/src/ggml-backend-meta.cpp",
    "ggml/src/ggml-opt.cpp",
    "ggml/src/ggml-threading.cpp",
    "ggml/src/gguf.cpp",
    "ggml/src/ggml-cpu/ggml-cpu.cpp",
    "ggml/src/ggml-cpu/traits.cpp",
    "ggml/src/ggml-cpu/binary-ops.cpp",
    "ggml/src/ggml-cpu/unary-ops.cpp",
    "ggml/src/ggml-cpu/vec.cpp",
    "ggml/src/ggml-cpu/ops.cpp",
    "ggml/src/ggml-cpu/hbm.cpp",
    "ggml/src/ggml-cpu/amx/amx.cpp",
    "ggml/src/ggml-cpu/amx/mmq.cpp",
    "ggml/src/ggml-cpu/tiled/tiled.cpp",
    "ggml/src/ggml-cpu/tiled/tiled-kernel.cpp",
];
const ARCH_FLAGS: &[&str] = &[
    "-march=native",
    "-mno-amx-tile",
    "-mno-amx-int8",
    "-mno-amx-bf16",
];
/// `ATTNROT_REF_ARCH=avx2`: upstream's `haswell` variant (ggml/src/CMakeLists.txt,
/// `ggml_add_cpu_backend_variant(haswell SSE42 AVX F16C FMA AVX2 BMI2)`), flags in the order
/// ggml-cpu/CMakeLists.txt appends them, and the definitions it adds with them.
const AVX2_ARCH_FLAGS: &[&str] = &["-msse4.2", "-mf16c", "-mfma", "-mbmi2", "-mavx", "-mavx2"];
const AVX2_ARCH_DEFINES: &[&str] = &[
    "GGML_SSE42",
    "GGML_F16C",
    "GGML_FMA",
    "GGML_BMI2",
    "GGML_AVX",
    "GGML_AVX2",
];

/// The reference build's ISA: `ATTNROT_REF_ARCH` unset or `native` (the default), or `avx2`.
fn arch() -> (
    &'static [&'static str],
    &'static [&'static str],
    Option<&'static str>,
) {
    println!("cargo:rerun-if-env-changed=ATTNROT_REF_ARCH");
    match std::env::var("ATTNROT_REF_ARCH").as_deref() {
        Err(_) | Ok("") | Ok("native") => (ARCH_FLAGS, &[], None),
        Ok("avx2") => (AVX2_ARCH_FLAGS, AVX2_ARCH_DEFINES, Some("avx2")),
        Ok(other) => panic!("attnrot-ref: ATTNROT_REF_ARCH={other:?}: use avx2 or native"),
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.join("../..").canonicalize().unwrap();
    println!("cargo:rerun-if-changed=build.rs");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("vendor/fetch.sh").display()
    );
    println!("cargo:rerun-if-env-changed=ATTNROT_LLAMA_CPP_DIR");

    let (arch_flags, arch_defines, arch_name) = arch();
    let tree = fetch_tree(&root);
    println!(
        "cargo:rerun-if-changed={}",
        tree.join("ggml/src/ggml.c").display()
    );
    let ggml = tree.join("ggml");

    let version = read_ggml_version(&ggml.join("CMakeLists.txt"));
    let commit = "0c1e57098";
    let cc_version = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();

    // The pinned tree is identified by its sdist checksum (vendor/fetch.sh writes it), a
    // user-provided tree by its path.
    let ident = std::fs::read_to_string(tree.join(".attnrot-pin"))
        .unwrap_or_else(|_| tree.display().to_string());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        ident.trim(),
        C_SOURCES,
        CXX_SOURCES,
        arch_flags,
        &version,
        cc_version,
        4u32,
    )
        .hash(&mut h);
    // the default build's key is unchanged; another ISA hashes its name and definitions too
    if let Some(name) = arch_name {
        (name, arch_defines).hash(&mut h);
    }
    let key = format!("{:016x}", h.finish());
    let cache = cache_root().join("ref-build").join(&key);
    let done = cache.join(".complete");

    if !done.exists() {
        let stage = cache.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&stage);
        let gen = stage.join("include");
        std::fs::create_dir_all(&gen).unwrap();
        std::fs::write(
            gen.join("ggml-version.h"),
            format!("#pragma once\n#define GGML_VERSION \"{version}\"\n#define GGML_COMMIT \"{commit}\"\n"),
        )
        .unwrap();
        let configure = |b: &mut cc::Build| {
            b.include(ggml.join("include"))
                .include(ggml.join("src"))
                .include(ggml.join("src/ggml-cpu"))
                .include(&gen)
                .define("NDEBUG", None)
                .define("_GNU_SOURCE", None)
                .define("_XOPEN_SOURCE", "600")
                .define("GGML_SCHED_MAX_COPIES", "4")
                .define("GGML_VERSION", format!("\"{version}\"").as_str())
                .define("GGML_COMMIT", format!("\"{commit}\"").as_str())
                .opt_level(3)
                .debug(false)
                .pic(true)
                .warnings(false)
                .cargo_metadata(false)
                .out_dir(&stage);
            for f in arch_flags {
                b.flag(f);
            }
            for d in arch_defines {
                b.define(d, None);
            }
        };
        let mut c = cc::Build::new();
        configure(&mut c);
        c.std("gnu11");
        for s in C_SOURCES {
            c.file(tree.join(s));
        }
        c.compile("ggml_ref_c");
        let mut cxx = cc::Build::new();
        configure(&mut cxx);
        cxx.cpp(true).std("gnu++17");
        for s in CXX_SOURCES {
            cxx.file(tree.join(s));
        }
        cxx.compile("ggml_ref_cxx");
        std::fs::write(stage.join(".complete"), key.as_bytes()).unwrap();
        if std::fs::rename(&stage, &cache).is_err() {
            // another build finished the same key first: use theirs
            let _ = std::fs::remove_dir_all(&stage);
            assert!(
                done.exists(),
                "attnrot-ref: could not move {} to {}",
                stage.display(),
                cache.display()
            );
        }
    }

    println!("cargo:rustc-link-search=native={}", cache.display());
    println!("cargo:rustc-link-lib=static=ggml_ref_cxx");
    println!("cargo:rustc-link-lib=static=ggml_ref_c");
    println!("cargo:rustc-link-lib=dylib=stdc++");
    println!("cargo:rustc-link-lib=dylib=m");
    println!("cargo:rustc-link-lib=dylib=pthread");
    println!(
        "cargo:rustc-env=ATTNROT_REF_ARCH_FLAGS={}",
        arch_flags.join(" ")
    );
    println!("cargo:rustc-env=ATTNROT_REF_TREE={}", tree.display());
    println!("cargo:rustc-env=ATTNROT_REF_LIB_DIR={}", cache.display());
    println!("cargo:tree={}", tree.display());
}

fn cache_root() -> PathBuf {
    println!("cargo:rerun-if-env-changed=ATTNROT_CACHE");
    if let Some(p) = std::env::var_os("ATTNROT_CACHE") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("attnrot")
}

fn fetch_tree(root: &Path) -> PathBuf {
    let out = Command::new("bash")
        .arg(root.join("vendor/fetch.sh"))
        .output()
        .expect("attnrot-ref: cannot run bash vendor/fetch.sh");
    if !out.status.success() {
        panic!(
            "attnrot-ref: fetching the pinned llama.cpp failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn read_ggml_version(cmake: &Path) -> String {
    let text = std::fs::read_to_string(cmake).expect("ggml/CMakeLists.txt");
    let get = |k: &str| {
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("set({k} "))
                    .map(|r| r.trim_end_matches(')').trim().to_string())
            })
            .unwrap_or_else(|| panic!("{k} not found in ggml/CMakeLists.txt"))
    };
    format!(
        "{}.{}.{}",
        get("GGML_VERSION_MAJOR"),
        get("GGML_VERSION_MINOR"),
        get("GGML_VERSION_PATCH")
    )
}
