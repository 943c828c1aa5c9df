//! `ffi/attnrot.h` cannot drift from `src/capi.rs`:
//!
//! * static check: every `#[no_mangle]` function in `src/capi.rs` is declared in the header
//!   with the same return type, parameter names and parameter types (Rust types mapped to C),
//!   and the header declares nothing else; the two `#[repr(C)]` structs have the same fields
//!   in the same order; the status/type constants and the version macros have the same values;
//! * the built library exports exactly the functions the header declares;
//! * `ffi/tests/api_check.c` (which assigns every function to a pointer of the prototype's
//!   type, static-asserts every constant, and calls every function) compiles with the system
//!   C compiler (`-std=c11 -Wall -Wextra -Werror -pedantic`) and C++ compiler (`-std=c++11`),
//!   links against both `libattnrot.so` and `libattnrot.a`, and runs clean; the struct
//!   layouts it prints match Rust's `size_of`/`offset_of`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &str) -> String {
    std::fs::read_to_string(root().join(p)).unwrap_or_else(|e| panic!("read {p}: {e}"))
}

/// Remove all whitespace (types compare equal regardless of spacing).
fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// A Rust FFI type as C spells it (squashed).
fn c_type(rust: &str) -> String {
    let t = rust.trim();
    if let Some(r) = t.strip_prefix("*const ") {
        return squash(&format!("const {}*", c_type(r)));
    }
    if let Some(r) = t.strip_prefix("*mut ") {
        return squash(&format!("{}*", c_type(r)));
    }
    let base = match t {
        "i32" => "int32_t",
        "i64" => "int64_t",
        "u32" => "uint32_t",
        "usize" => "size_t",
        "f32" => "float",
        "c_int" => "int",
        "c_void" => "void",
        "c_char" => "char",
        "()" => "void",
        s if s.starts_with("attnrot_") => s,
        other => panic!("no C mapping for Rust type `{other}` in src/capi.rs: extend the test"),
    };
    base.to_string()
}

#[derive(Debug, PartialEq, Eq)]
struct Sig {
    ret: String,
    params: Vec<(String, String)>, // (name, squashed C type)
}

/// Split at top-level commas (parentheses/angle brackets nest).
fn split_top(s: &str) -> Vec<String> {
    let (mut depth, mut cur, mut out) = (0i32, String::new(), Vec::new());
    for c in s.chars() {
        match c {
            '(' | '<' => depth += 1,
            ')' | '>' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The exported functions of `src/capi.rs`.
fn rust_fns(src: &str) -> BTreeMap<String, Sig> {
    let mut out = BTreeMap::new();
    // Attribute lines only (the docs mention the attribute too).
    let starts: Vec<usize> = src
        .match_indices("#[no_mangle]")
        .map(|(i, _)| i)
        .filter(|&i| src[..i].rsplit('\n').next().unwrap().trim().is_empty())
        .collect();
    for i in starts {
        let rest = &src[i + "#[no_mangle]".len()..];
        let f = rest.find("fn ").expect("fn after #[no_mangle]");
        let head = &rest[..f];
        assert!(
            head.contains("extern \"C\""),
            "#[no_mangle] fn without extern \"C\": {head}"
        );
        let after = &rest[f + 3..];
        let open = after.find('(').unwrap();
        let name = after[..open].trim().to_string();
        // matching parenthesis
        let (mut depth, mut close) = (0, 0);
        for (j, c) in after[open..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + j;
                        break;
                    }
                }
                _ => {}
            }
        }
        let params = split_top(&after[open + 1..close])
            .into_iter()
            .map(|p| {
                let (n, t) = p
                    .split_once(':')
                    .unwrap_or_else(|| panic!("param `{p}` of {name}"));
                (n.trim().trim_end_matches('_').to_string(), c_type(t))
            })
            .collect();
        let tail = &after[close + 1..];
        let body = tail.find('{').unwrap();
        let ret = tail[..body].trim();
        let ret = ret
            .strip_prefix("->")
            .map(c_type)
            .unwrap_or_else(|| "void".into());
        assert!(
            out.insert(name.clone(), Sig { ret, params }).is_none(),
            "{name} twice"
        );
    }
    out
}

/// The header without comments and preprocessor lines.
fn header_text(h: &str) -> String {
    let mut s = String::new();
    let mut rest = h;
    while let Some(i) = rest.find("/*") {
        s.push_str(&rest[..i]);
        let j = rest[i..].find("*/").expect("unterminated comment");
        rest = &rest[i + j + 2..];
    }
    s.push_str(rest);
    s.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("extern \"C\" {", "")
}

fn header_fns(h: &str) -> BTreeMap<String, Sig> {
    let text = header_text(h);
    let mut out = BTreeMap::new();
    for stmt in text.split(';') {
        let stmt = stmt.split('}').next_back().unwrap().trim();
        if !stmt.contains('(') || stmt.starts_with("typedef") {
            continue;
        }
        let open = stmt.find('(').unwrap();
        let close = stmt.rfind(')').unwrap();
        let before = stmt[..open].trim_end();
        let name_start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map(|i| i + 1)
            .unwrap_or(0);
        let name = before[name_start..].to_string();
        let ret = squash(&before[..name_start]);
        let inner = stmt[open + 1..close].trim();
        let params = if inner == "void" {
            vec![]
        } else {
            split_top(inner)
                .into_iter()
                .map(|p| {
                    let ns = p
                        .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .unwrap()
                        + 1;
                    (p[ns..].to_string(), squash(&p[..ns]))
                })
                .collect()
        };
        assert!(
            out.insert(name.clone(), Sig { ret, params }).is_none(),
            "{name} declared twice"
        );
    }
    out
}

#[test]
fn header_declares_exactly_the_rust_functions() {
    let rust = rust_fns(&read("src/capi.rs"));
    let header = header_fns(&read("ffi/attnrot.h"));
    assert!(
        rust.len() >= 50,
        "parsed only {} Rust functions",
        rust.len()
    );
    let mut problems = Vec::new();
    for (name, sig) in &rust {
        match header.get(name) {
            None => problems.push(format!(
                "{name}: exported by src/capi.rs, missing from ffi/attnrot.h"
            )),
            Some(h) if h != sig => {
                problems.push(format!("{name}:\n   rust   {sig:?}\n   header {h:?}"))
            }
            _ => {}
        }
    }
    for name in header.keys() {
        if !rust.contains_key(name) {
            problems.push(format!(
                "{name}: declared in ffi/attnrot.h, not exported by src/capi.rs"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "header drift:\n{}",
        problems.join("\n")
    );
    eprintln!("{} functions match", rust.len());
}

fn rust_struct(src: &str, name: &str) -> Vec<(String, String)> {
    let start = src
        .find(&format!("pub struct {name} {{"))
        .unwrap_or_else(|| panic!("struct {name}"));
    let body = &src[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find("\n}").unwrap()];
    body.lines()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("pub "))
        .map(|l| {
            let (n, t) = l["pub ".len()..].split_once(':').unwrap();
            (n.trim().to_string(), c_type(t.trim().trim_end_matches(',')))
        })
        .collect()
}

fn header_struct(h: &str, name: &str) -> Vec<(String, String)> {
    let text = header_text(h);
    let start = text
        .find(&format!("typedef struct {name} {{"))
        .unwrap_or_else(|| panic!("struct {name}"));
    let body = &text[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find('}').unwrap()];
    body.split(';')
        .map(|f| f.trim())
        .filter(|f| !f.is_empty())
        .map(|f| {
            let ns = f
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap()
                + 1;
            (f[ns..].to_string(), squash(&f[..ns]))
        })
        .collect()
}

#[test]
fn structs_match() {
    let (src, h) = (read("src/capi.rs"), read("ffi/attnrot.h"));
    for s in ["attnrot_attn_params", "attnrot_ggml_traits"] {
        let (r, c) = (rust_struct(&src, s), header_struct(&h, s));
        assert!(!r.is_empty());
        assert_eq!(
            r, c,
            "{s}: fields differ between src/capi.rs and ffi/attnrot.h"
        );
    }
    // The function-pointer typedefs: same parameter lists as the per-format functions.
    let text = squash(&header_text(&h));
    for (t, f) in [
        ("attnrot_to_float_t", "attnrot_ggml_q4_0_to_float"),
        ("attnrot_from_float_t", "attnrot_ggml_q4_0_from_float"),
        ("attnrot_vec_dot_t", "attnrot_ggml_q4_0_vec_dot"),
    ] {
        let td = text
            .find(&format!("(*{t})("))
            .unwrap_or_else(|| panic!("typedef {t}"));
        let td_params = &text[td + t.len() + 4..];
        let td_params = &td_params[..td_params.find(')').unwrap()];
        let fd = text.find(&format!("{f}(")).unwrap();
        let f_params = &text[fd + f.len() + 1..];
        let f_params = &f_params[..f_params.find(')').unwrap()];
        assert_eq!(td_params, f_params, "typedef {t} vs {f}");
    }
}

/// Every named constant in the header's enums and the Rust constants agree (both ways).
#[test]
fn constants_match() {
    use attnrot::capi::*;
    let rust: BTreeMap<&str, i64> = [
        ("ATTNROT_OK", ATTNROT_OK as i64),
        ("ATTNROT_E_NULL", ATTNROT_E_NULL as i64),
        ("ATTNROT_E_LENGTH", ATTNROT_E_LENGTH as i64),
        ("ATTNROT_E_ALIGNMENT", ATTNROT_E_ALIGNMENT as i64),
        ("ATTNROT_E_UNSUPPORTED", ATTNROT_E_UNSUPPORTED as i64),
        ("ATTNROT_E_OVERLAP", ATTNROT_E_OVERLAP as i64),
        ("ATTNROT_E_INTERNAL", ATTNROT_E_INTERNAL as i64),
        ("ATTNROT_E_INVALID", ATTNROT_E_INVALID as i64),
        ("ATTNROT_TYPE_F32", ATTNROT_TYPE_F32 as i64),
        ("ATTNROT_TYPE_F16", ATTNROT_TYPE_F16 as i64),
        ("ATTNROT_TYPE_Q4_0", ATTNROT_TYPE_Q4_0 as i64),
        ("ATTNROT_TYPE_Q4_1", ATTNROT_TYPE_Q4_1 as i64),
        ("ATTNROT_TYPE_Q5_0", ATTNROT_TYPE_Q5_0 as i64),
        ("ATTNROT_TYPE_Q5_1", ATTNROT_TYPE_Q5_1 as i64),
        ("ATTNROT_TYPE_Q8_0", ATTNROT_TYPE_Q8_0 as i64),
        ("ATTNROT_TYPE_Q8_1", ATTNROT_TYPE_Q8_1 as i64),
        ("ATTNROT_TYPE_IQ4_NL", ATTNROT_TYPE_IQ4_NL as i64),
        ("ATTNROT_TYPE_BF16", ATTNROT_TYPE_BF16 as i64),
    ]
    .into_iter()
    .collect();
    // Every `pub const ATTNROT_*` of src/capi.rs (but the version ones) is in the table above.
    let src = read("src/capi.rs");
    for l in src.lines() {
        if let Some(r) = l.trim().strip_prefix("pub const ATTNROT_") {
            let name = format!("ATTNROT_{}", &r[..r.find(':').unwrap()]);
            if !name.starts_with("ATTNROT_VERSION") {
                assert!(
                    rust.contains_key(name.as_str()),
                    "{name} in src/capi.rs is not checked against the header"
                );
            }
        }
    }
    // The header's enum constants.
    let text = header_text(&read("ffi/attnrot.h"));
    let mut header = BTreeMap::new();
    for part in text.split(['{', ',', '}']) {
        if let Some((n, v)) = part.split_once('=') {
            let n = n.trim();
            if n.starts_with("ATTNROT_") {
                header.insert(
                    n.to_string(),
                    v.trim()
                        .parse::<i64>()
                        .unwrap_or_else(|_| panic!("{n} = {v}")),
                );
            }
        }
    }
    let rust: BTreeMap<String, i64> = rust.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(rust, header);
    // Type ids are ggml's.
    for t in attnrot::GgmlType::ALL {
        let n = format!("ATTNROT_TYPE_{}", t.name().to_ascii_uppercase());
        assert_eq!(header[&n], t as i64, "{n}");
    }
}

#[test]
fn version_macros_match_the_crate() {
    let h = read("ffi/attnrot.h");
    let mac = |k: &str| -> u32 {
        h.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("#define {k} "))
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("#define {k}"))
    };
    let (ma, mi, pa) = (
        mac("ATTNROT_VERSION_MAJOR"),
        mac("ATTNROT_VERSION_MINOR"),
        mac("ATTNROT_VERSION_PATCH"),
    );
    assert_eq!(
        format!("{ma}.{mi}.{pa}"),
        env!("CARGO_PKG_VERSION"),
        "bump the version macros in ffi/attnrot.h"
    );
    assert_eq!(
        attnrot::capi::attnrot_version(),
        (ma << 16) | (mi << 8) | pa
    );
    let s = unsafe { std::ffi::CStr::from_ptr(attnrot::capi::attnrot_version_string()) };
    assert_eq!(s.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

// ---------------------------------------------------------------------------------------
// Compiled checks
// ---------------------------------------------------------------------------------------

/// Where the library this test was built with lies: `cargo test` compiles the crate's
/// cdylib and staticlib into `target/<profile>/deps/` next to the test executable (it only
/// copies them up to `target/<profile>/` on `cargo build`, so those may be stale).
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    for f in ["libattnrot.so", "libattnrot.a"] {
        assert!(
            deps.join(f).exists(),
            "{} missing (cargo test builds it with the integration tests)",
            deps.join(f).display()
        );
    }
    deps
}

fn out_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("capi");
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

/// `ATTNROT_SANITIZE=1` (scripts/sanitize.sh): build the C/C++ programs with AddressSanitizer
/// and UndefinedBehaviorSanitizer, aborting on the first report.
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

fn compiler(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// Compile `ffi/tests/api_check.c` as `lang` ("c" or "c++") and link it against the shared
/// or static library; returns the executable.
fn build_check(lang: &str, link_static: bool) -> PathBuf {
    let lib = lib_dir();
    let exe = out_dir().join(format!(
        "api_check_{}_{}",
        if lang == "c" { "c" } else { "cxx" },
        if link_static { "static" } else { "shared" }
    ));
    let mut cmd = if lang == "c" {
        let mut c = Command::new(compiler("CC", "cc"));
        c.args(["-std=c11", "-x", "c"]);
        c
    } else {
        let mut c = Command::new(compiler("CXX", "c++"));
        c.args(["-std=c++11", "-x", "c++"]);
        c
    };
    cmd.args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-g"])
        .args(sanitize_flags())
        .arg("-I")
        .arg(root().join("ffi"))
        .arg(root().join("ffi/tests/api_check.c"))
        .args(["-x", "none"])
        .arg("-o")
        .arg(&exe);
    if link_static {
        cmd.arg(lib.join("libattnrot.a"))
            .args(["-lpthread", "-ldl", "-lm"]);
    } else {
        cmd.arg("-L")
            .arg(&lib)
            .arg("-lattnrot")
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-lm");
    }
    run(&mut cmd);
    exe
}

fn check_layout(output: &str) {
    use attnrot::capi::{attnrot_attn_params as P, attnrot_ggml_traits as T};
    use std::mem::{offset_of, size_of};
    let want: BTreeMap<&str, usize> = [
        ("sizeof attnrot_attn_params", size_of::<P>()),
        ("attnrot_attn_params.n_q", offset_of!(P, n_q)),
        ("attnrot_attn_params.n_kv", offset_of!(P, n_kv)),
        ("attnrot_attn_params.n_head", offset_of!(P, n_head)),
        ("attnrot_attn_params.n_head_kv", offset_of!(P, n_head_kv)),
        ("attnrot_attn_params.head_dim_k", offset_of!(P, head_dim_k)),
        ("attnrot_attn_params.head_dim_v", offset_of!(P, head_dim_v)),
        ("attnrot_attn_params.k_type", offset_of!(P, k_type)),
        ("attnrot_attn_params.v_type", offset_of!(P, v_type)),
        ("attnrot_attn_params.scale", offset_of!(P, scale)),
        ("attnrot_attn_params.max_bias", offset_of!(P, max_bias)),
        ("attnrot_attn_params.softcap", offset_of!(P, softcap)),
        ("attnrot_attn_params.mask_type", offset_of!(P, mask_type)),
        ("attnrot_attn_params.n_threads", offset_of!(P, n_threads)),
        ("attnrot_attn_params.flags", offset_of!(P, flags)),
        ("sizeof attnrot_ggml_traits", size_of::<T>()),
        ("attnrot_ggml_traits.to_float", offset_of!(T, to_float)),
        ("attnrot_ggml_traits.from_float", offset_of!(T, from_float)),
        (
            "attnrot_ggml_traits.from_float_ref",
            offset_of!(T, from_float_ref),
        ),
        ("attnrot_ggml_traits.vec_dot", offset_of!(T, vec_dot)),
        (
            "attnrot_ggml_traits.vec_dot_type",
            offset_of!(T, vec_dot_type),
        ),
        ("attnrot_ggml_traits.block_size", offset_of!(T, block_size)),
        ("attnrot_ggml_traits.type_size", offset_of!(T, type_size)),
    ]
    .into_iter()
    .collect();
    let mut got = BTreeMap::new();
    for l in output.lines() {
        if let Some(r) = l.strip_prefix("layout ") {
            let (k, v) = r.rsplit_once(' ').unwrap();
            got.insert(k.trim(), v.trim().parse::<usize>().unwrap());
        }
    }
    let want: BTreeMap<&str, usize> = want.into_iter().collect();
    assert_eq!(got, want, "C layout (left) vs Rust layout (right)");
}

fn run_check(exe: &Path) {
    // cargo puts target/<profile> (with a possibly stale libattnrot.so) on LD_LIBRARY_PATH,
    // which would win over the executable's RUNPATH.
    let out = run(Command::new(exe).env_remove("LD_LIBRARY_PATH"));
    eprintln!(
        "{}: {}",
        exe.display(),
        out.lines()
            .filter(|l| l.contains("checks"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert!(out.contains("api_check: ok"), "{out}");
    check_layout(&out);
}

#[test]
fn c_program_against_shared_library() {
    run_check(&build_check("c", false));
}

#[test]
fn c_program_against_static_library() {
    run_check(&build_check("c", true));
}

#[test]
fn cxx_program_against_shared_library() {
    run_check(&build_check("c++", false));
}

/// The header alone is valid C99 and C++98-with-stdint, warning-free.
#[test]
fn header_compiles_alone() {
    let d = out_dir();
    let tu = d.join("header_only.c");
    std::fs::write(&tu, "#include \"attnrot.h\"\nint main(void) { return attnrot_version() == ATTNROT_VERSION ? 0 : 1; }\n").unwrap();
    for (cc, std) in [
        (compiler("CC", "cc"), "-std=c99"),
        (compiler("CXX", "c++"), "-std=c++11"),
    ] {
        let lang = if std.contains("++") { "c++" } else { "c" };
        run(Command::new(&cc)
            .args([
                std,
                "-x",
                lang,
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-fsyntax-only",
                "-I",
            ])
            .arg(root().join("ffi"))
            .arg(&tu));
    }
}

/// What the shared library exports is what the header declares.
#[test]
fn library_exports_match_header() {
    let so = lib_dir().join("libattnrot.so");
    let out = run(Command::new("nm").args(["-D", "--defined-only"]).arg(&so));
    let exported: std::collections::BTreeSet<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|s| s.starts_with("attnrot_"))
        .map(|s| s.to_string())
        .collect();
    let declared: std::collections::BTreeSet<String> =
        header_fns(&read("ffi/attnrot.h")).into_keys().collect();
    assert_eq!(
        exported, declared,
        "exported by libattnrot.so (left) vs declared in ffi/attnrot.h (right)"
    );
    let undefined = run(Command::new("nm").args(["-D", "--undefined-only"]).arg(&so));
    let ggml: Vec<&str> = undefined.lines().filter(|l| l.contains("ggml")).collect();
    assert!(
        ggml.is_empty(),
        "libattnrot.so must not need ggml (C API users have none): {ggml:?}"
    );
}
