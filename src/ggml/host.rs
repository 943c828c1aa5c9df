//! The host's ggml, resolved at run time.
//!
//! `libattnrot.so` contains no ggml and has no link-time dependency on a ggml symbol (a C
//! program that uses only the plain C API loads it without any ggml). When it is loaded as a
//! ggml backend, the few ggml functions it needs are looked up in the host process: they live
//! in the host's `libggml-base.so` / `libggml.so`, which the host loaded before it could
//! `dlopen` us — in the global scope (`dlsym(RTLD_DEFAULT, …)`) for a normally linked program,
//! or privately (`RTLD_LOCAL`: Node addons, Python ctypes), where [`locate`](crate::ggml::locate) finds the
//! already-loaded copy and looks the symbols up through its handle. The CPU backend module (`libggml-cpu*.so`) is
//! opened `RTLD_LOCAL` by ggml's loader, so its symbols are *not* visible this way; what we
//! need from it (the CPU buffer type) is reached through the device registry instead.
//!
//! Also here: the pin check. The vtables in `ggml-backend-impl.h` change without a version
//! bump, so the backend only registers with the exact ggml it was generated from.
use super::locate::{self, Scope};
use super::sys;
use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::OnceLock;

/// The generated bindings a supported ggml uses (`scripts/gen-bindings.sh`). Two trees whose
/// `ggml.h`, `ggml-backend.h`, `ggml-cpu.h` and `ggml-backend-impl.h` are byte-identical share
/// one module; a tree with other headers gets its own module and variant here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bindings {
    /// [`super::sys`]: the headers of the pin (0c1e57098), identical in v0.5.0 (0ad4a86).
    Sys,
    /// [`super::sys3`]: ggml 0.26.0, backend API 3 (crates.io `llama-cpp-sys-2` 0.1.160 /
    /// 0.1.161). The backend is written against [`super::sys`]: everything it reads or fills
    /// in has the same layout in both (checked below at compile time); the one struct that
    /// differs, the buffer-type interface, is only reached through the host's functions
    /// ([`Host::buft_is_host`]); what the registry must say is the row's `api_version`.
    Sys3,
}

impl Bindings {
    /// `GGML_BACKEND_API_VERSION` of the headers the module was generated from.
    pub const fn api_version(self) -> c_int {
        match self {
            Bindings::Sys => sys::GGML_BACKEND_API_VERSION as c_int,
            Bindings::Sys3 => super::sys3::GGML_BACKEND_API_VERSION as c_int,
        }
    }
}

/// The backend is written against [`sys`]; a host of [`Bindings::Sys3`] may use it only where
/// the two layouts agree. Checked here for every struct it reads or fills in (sizes and every
/// member's offset), the enums it uses, and that the buffer-type interface does differ (so
/// the code must not read it: it calls `ggml_backend_buft_is_host` instead).
const _: () = {
    use super::sys3 as s3;
    use core::mem::{offset_of, size_of};
    macro_rules! same_layout {
        ($t:ident { $($f:ident),* $(,)? }) => {
            assert!(size_of::<sys::$t>() == size_of::<s3::$t>());
            $( assert!(offset_of!(sys::$t, $f) == offset_of!(s3::$t, $f)); )*
        };
    }
    same_layout!(ggml_tensor {
        type_,
        buffer,
        ne,
        nb,
        op,
        op_params,
        flags,
        src,
        view_src,
        view_offs,
        data,
        name,
        extra,
        padding
    });
    same_layout!(ggml_backend_i {
        get_name,
        free,
        set_tensor_async,
        get_tensor_async,
        set_tensor_2d_async,
        get_tensor_2d_async,
        cpy_tensor_async,
        synchronize,
        graph_plan_create,
        graph_plan_free,
        graph_plan_update,
        graph_plan_compute,
        graph_compute,
        event_record,
        event_wait,
        graph_optimize
    });
    same_layout!(ggml_backend {
        guid,
        iface,
        device,
        context
    });
    same_layout!(ggml_backend_device_i {
        get_name,
        get_description,
        get_memory,
        get_type,
        get_props,
        init_backend,
        get_buffer_type,
        get_host_buffer_type,
        buffer_from_host_ptr,
        supports_op,
        supports_buft,
        offload_op,
        event_new,
        event_free,
        event_synchronize
    });
    same_layout!(ggml_backend_device {
        iface,
        reg,
        context
    });
    same_layout!(ggml_backend_reg_i {
        get_name,
        get_device_count,
        get_device,
        get_proc_address
    });
    same_layout!(ggml_backend_reg {
        api_version,
        iface,
        context
    });
    same_layout!(ggml_backend_dev_props {
        name,
        description,
        memory_free,
        memory_total,
        type_,
        device_id,
        caps
    });
    same_layout!(ggml_backend_dev_caps {
        async_,
        host_buffer,
        buffer_from_host_ptr,
        events,
        mmap_support
    });
    assert!(sys::ggml_op_GGML_OP_COUNT == s3::ggml_op_GGML_OP_COUNT);
    assert!(sys::ggml_type_GGML_TYPE_COUNT == s3::ggml_type_GGML_TYPE_COUNT);
    assert!(sys::GGML_MAX_DIMS == s3::GGML_MAX_DIMS);
    assert!(sys::GGML_MAX_SRC == s3::GGML_MAX_SRC);
    assert!(sys::GGML_MAX_OP_PARAMS == s3::GGML_MAX_OP_PARAMS);
    assert!(sys::GGML_MAX_NAME == s3::GGML_MAX_NAME);
    assert!(sys::ggml_op_GGML_OP_FLASH_ATTN_EXT == s3::ggml_op_GGML_OP_FLASH_ATTN_EXT);
    assert!(sys::ggml_op_GGML_OP_SET_ROWS == s3::ggml_op_GGML_OP_SET_ROWS);
    assert!(sys::ggml_op_GGML_OP_MUL_MAT == s3::ggml_op_GGML_OP_MUL_MAT);
    // what differs: the buffer-type interface (API 3 adds alloc_buffer_n, get_alloc_size_n)
    assert!(
        offset_of!(sys::ggml_backend_buffer_type_i, is_host)
            != offset_of!(s3::ggml_backend_buffer_type_i, is_host)
    );
};

/// One ggml build the backend serves: what the host reports, what it needs from us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supported {
    /// `ggml_version()` (ggml/CMakeLists.txt `GGML_VERSION`).
    pub version: &'static str,
    /// Commits a build of it may report through `ggml_commit()` (the short hash; `unknown`
    /// is accepted too, see [`check_version`]).
    pub commits: &'static [&'static str],
    /// `GGML_BACKEND_API_VERSION` the host's loader expects in our registry.
    pub api_version: c_int,
    /// Struct layouts and op numbering: which generated module describes them.
    pub bindings: Bindings,
    /// Where the tree comes from (vendor/README.md has provenance and checksums).
    pub source: &'static str,
}

/// The ggml builds this backend serves. Adding one: diff its four headers against an
/// existing entry's tree (identical → same [`Bindings`]; else generate a module with
/// `scripts/gen-bindings.sh` and add a variant), add a row, run the tests against it.
pub const SUPPORTED: &[Supported] = &[
    Supported {
        version: "0.25.3",
        commits: &["0c1e57098"],
        api_version: 2,
        bindings: Bindings::Sys,
        source: "llama.cpp 0c1e57098, the pin (PyPI llama-cpp-python 0.3.36)",
    },
    Supported {
        version: "0.25.1",
        // 0ad4a86: ggml-org's v0.5.0 tag (what the npm prebuilt @node-llama-cpp/linux-x64
        // 3.22.1 reports). de3ff81: the same tree as node-llama-cpp's git bundle has it
        // (one squashed commit), i.e. what a build from that bundle reports.
        commits: &["0ad4a86", "de3ff81"],
        api_version: 2,
        bindings: Bindings::Sys,
        source: "llama.cpp v0.5.0 0ad4a86 (npm node-llama-cpp 3.22.1)",
    },
    Supported {
        version: "0.26.0",
        // The crate vendors the tree without git history and does not record its llama.cpp
        // commit: its CMake build reports "unknown", the only commit accepted here.
        commits: &[],
        api_version: 3,
        bindings: Bindings::Sys3,
        source: "crates.io llama-cpp-sys-2 0.1.160/0.1.161, as the crate builds it",
    },
];

/// The pin: the tree the tests, benches and the in-process reference are built from.
pub const PIN: &Supported = &SUPPORTED[0];
/// `GGML_VERSION` of the pinned tree (ggml/CMakeLists.txt: 0.25.3).
pub const PINNED_GGML_VERSION: &str = PIN.version;
/// The pinned upstream commit (ggml-org/llama.cpp@0c1e57098, vendored by llama-cpp-python 0.3.36).
pub const PINNED_COMMIT: &str = PIN.commits[0];
/// `GGML_BACKEND_API_VERSION` of the pinned headers (ggml-backend-impl.h).
pub const PINNED_API_VERSION: c_int = PIN.api_version;

// Every row's API number is that of its bindings.
const _: () = {
    let mut i = 0;
    while i < SUPPORTED.len() {
        assert!(SUPPORTED[i].api_version == SUPPORTED[i].bindings.api_version());
        i += 1;
    }
};

/// "ggml 0.25.3 (llama.cpp 0c1e57098, …), ggml 0.25.1 (…)" for refusal messages.
pub fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(|s| format!("ggml {} ({})", s.version, s.source))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `sizeof(struct ggml_object)` on 64-bit targets (ggml-impl.h: offs, size, next, type, padding).
const GGML_OBJECT_SIZE: usize = 32;

type FnStr = unsafe extern "C" fn() -> *const c_char;
type FnSize = unsafe extern "C" fn() -> usize;
type FnNNodes = unsafe extern "C" fn(*mut sys::ggml_cgraph) -> c_int;
type FnNode = unsafe extern "C" fn(*mut sys::ggml_cgraph, c_int) -> *mut sys::ggml_tensor;
type FnDevByType = unsafe extern "C" fn(sys::ggml_backend_dev_type) -> sys::ggml_backend_dev_t;
type FnLog = unsafe extern "C" fn(sys::ggml_log_level, *const c_char, ...);
type FnBuftIsHost = unsafe extern "C" fn(sys::ggml_backend_buffer_type_t) -> bool;

/// The ggml functions the backend calls, resolved from the host process.
pub struct Host {
    /// The row of [`SUPPORTED`] the host matched.
    pub build: &'static Supported,
    pub version: String,
    pub commit: String,
    graph_n_nodes: FnNNodes,
    graph_node: FnNode,
    dev_by_type: FnDevByType,
    tensor_overhead: FnSize,
    buft_is_host: FnBuftIsHost,
}

/// Where the host's ggml is (surveyed once, at the first lookup — in `ggml_backend_init`, so
/// the registry loading us is on the call stack; see [`locate`]).
fn scope() -> &'static Result<Scope, String> {
    static SCOPE: OnceLock<Result<Scope, String>> = OnceLock::new();
    SCOPE.get_or_init(|| locate::choose(&locate::survey()))
}

/// How the host's ggml was found (for the registration log line).
pub fn scope_description() -> String {
    match scope() {
        Ok(s) => s.describe(),
        Err(e) => e.clone(),
    }
}

/// A later `ggml_backend_init` in the same process: is the ggml loading us now the one this
/// backend was bound to by the first? (A process with two ggml copies could ask through both;
/// the registry we return is bound to the first one's functions.)
pub fn check_same_host() -> Result<(), String> {
    let now = locate::choose(&locate::survey());
    match (scope(), now) {
        (Ok(first), Ok(now)) if first.same_ggml(&now) => Ok(()),
        (Ok(first), Ok(now)) => Err(format!(
            "this backend already serves {} in this process; not also {}",
            first.describe(),
            now.describe()
        )),
        (Ok(first), Err(e)) => Err(format!(
            "this backend already serves {} in this process; the ggml loading it now is unclear: {e}",
            first.describe()
        )),
        (Err(e), _) => Err(e.clone()),
    }
}

/// A host ggml function by name, from the scope [`scope`] chose.
fn lookup(name: &str) -> Result<*mut libc::c_void, String> {
    let handle = match scope() {
        Ok(Scope::Global) => libc::RTLD_DEFAULT,
        Ok(Scope::Private { handle, .. }) => *handle as *mut libc::c_void,
        Err(e) => return Err(e.clone()),
    };
    // SAFETY: RTLD_DEFAULT, or a registry handle that `survey` keeps open for good.
    unsafe { locate::dlsym(handle, name) }.ok_or_else(|| {
        format!(
            "{name} not found in the host's ggml ({})",
            scope_description()
        )
    })
}

fn sym(name: &str) -> Option<*mut libc::c_void> {
    lookup(name).ok()
}

fn log_fn() -> Option<FnLog> {
    static LOG: OnceLock<Option<usize>> = OnceLock::new();
    let p = (*LOG.get_or_init(|| sym("ggml_log_internal").map(|p| p as usize)))?;
    // SAFETY: `ggml_log_internal(enum ggml_log_level, const char * fmt, ...)` (ggml-impl.h).
    Some(unsafe { std::mem::transmute::<usize, FnLog>(p) })
}

/// Log through the host's ggml logger (so `llama_log_set` etc. see it), or stderr without one.
pub fn log(level: sys::ggml_log_level, msg: &str) {
    let line = format!("attnrot: {msg}\n");
    match (log_fn(), CString::new(line.replace('\0', " "))) {
        (Some(f), Ok(c)) => {
            // SAFETY: "%s" with a NUL-terminated string.
            unsafe { f(level, c"%s".as_ptr(), c.as_ptr()) }
        }
        _ => eprint!("{line}"),
    }
}

pub fn log_info(msg: &str) {
    log(sys::ggml_log_level_GGML_LOG_LEVEL_INFO, msg)
}
pub fn log_warn(msg: &str) {
    log(sys::ggml_log_level_GGML_LOG_LEVEL_WARN, msg)
}
pub fn log_error(msg: &str) {
    log(sys::ggml_log_level_GGML_LOG_LEVEL_ERROR, msg)
}

/// Which supported build is a host ggml that reports `version` / `commit`? `Err` says why
/// none, naming the supported versions.
///
/// A stock CMake build from a source archive without git history (the PyPI sdist: its `.git`
/// is a dangling submodule pointer) reports commit `"unknown"`; a build from a git checkout
/// reports the short hash, possibly with `-dirty`. So: the version must equal a row's, and the
/// commit be either `unknown` or a prefix-match (at least 7 hex digits) of one of its commits.
pub fn check_version(version: &str, commit: &str) -> Result<&'static Supported, String> {
    let Some(row) = SUPPORTED.iter().find(|s| s.version == version) else {
        return Err(format!(
            "host ggml version is {version:?} (commit {commit:?}); this backend serves exactly: {} \
             (the backend vtables differ between versions)",
            supported_list()
        ));
    };
    let c = commit
        .trim()
        .strip_suffix("-dirty")
        .unwrap_or(commit.trim());
    if c == "unknown" {
        return Ok(row);
    }
    let hex = c.len() >= 7 && c.bytes().all(|b| b.is_ascii_hexdigit());
    let same = |k: &&str| hex && (k.starts_with(c) || c.starts_with(*k));
    if !row.commits.iter().any(same) {
        let which = if row.commits.is_empty() {
            "only as built from its source archive (commit \"unknown\")".to_string()
        } else {
            format!("only from commit {}", row.commits.join(" / "))
        };
        return Err(format!(
            "host ggml {version} is from commit {commit:?}, this backend serves ggml {version} {which}; supported: {}",
            supported_list()
        ));
    }
    Ok(row)
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns static NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl Host {
    /// Resolve the host's ggml and check it against the pin.
    pub fn resolve() -> Result<Host, String> {
        let need = lookup;
        // SAFETY (all transmutes below): the symbols have these C signatures in the pinned
        // ggml.h / ggml-backend.h.
        let version_fn: FnStr = unsafe { std::mem::transmute(need("ggml_version")?) };
        let commit_fn: FnStr = unsafe { std::mem::transmute(need("ggml_commit")?) };
        let version = cstr(unsafe { version_fn() });
        let commit = cstr(unsafe { commit_fn() });
        let build = check_version(&version, &commit)?;
        let host = Host {
            build,
            version,
            commit,
            graph_n_nodes: unsafe {
                std::mem::transmute::<*mut libc::c_void, FnNNodes>(need("ggml_graph_n_nodes")?)
            },
            graph_node: unsafe {
                std::mem::transmute::<*mut libc::c_void, FnNode>(need("ggml_graph_node")?)
            },
            dev_by_type: unsafe {
                std::mem::transmute::<*mut libc::c_void, FnDevByType>(need(
                    "ggml_backend_dev_by_type",
                )?)
            },
            tensor_overhead: unsafe {
                std::mem::transmute::<*mut libc::c_void, FnSize>(need("ggml_tensor_overhead")?)
            },
            buft_is_host: unsafe {
                std::mem::transmute::<*mut libc::c_void, FnBuftIsHost>(need(
                    "ggml_backend_buft_is_host",
                )?)
            },
        };
        // ABI guard beyond the version string: the host's tensor struct has our size.
        let overhead = unsafe { (host.tensor_overhead)() };
        let ours = GGML_OBJECT_SIZE + std::mem::size_of::<sys::ggml_tensor>();
        if overhead != ours {
            return Err(format!(
                "host ggml_tensor_overhead() = {overhead}, the pinned headers give {ours}: different struct layout"
            ));
        }
        Ok(host)
    }

    /// Number of nodes of a graph (`ggml_graph_n_nodes`).
    ///
    /// # Safety
    /// `g` must be a valid graph of the host's ggml.
    pub unsafe fn n_nodes(&self, g: *mut sys::ggml_cgraph) -> usize {
        // SAFETY: caller's contract.
        unsafe { (self.graph_n_nodes)(g) }.max(0) as usize
    }

    /// Node `i` of a graph (`ggml_graph_node`).
    ///
    /// # Safety
    /// `g` must be a valid graph and `i < n_nodes(g)`.
    pub unsafe fn node(&self, g: *mut sys::ggml_cgraph, i: usize) -> *mut sys::ggml_tensor {
        // SAFETY: caller's contract.
        unsafe { (self.graph_node)(g, i as c_int) }
    }

    /// Is `buft` host memory? Asked through the host's `ggml_backend_buft_is_host`, not by
    /// reading `buft->iface.is_host`: that member moves between backend API 2 and 3 (API 3
    /// inserts `alloc_buffer_n` and `get_alloc_size_n` before it).
    ///
    /// # Safety
    /// `buft` must be a valid buffer type of the host's ggml.
    pub unsafe fn buft_is_host(&self, buft: sys::ggml_backend_buffer_type_t) -> bool {
        // SAFETY: caller's contract.
        unsafe { (self.buft_is_host)(buft) }
    }

    /// The CPU device's default buffer type (`ggml_backend_cpu_buffer_type()`, reached through
    /// the registry because the CPU module's own symbols are not global).
    pub fn cpu_buffer_type(&self) -> sys::ggml_backend_buffer_type_t {
        // SAFETY: registry call; the device pointer it returns is valid for the process.
        unsafe {
            let dev = (self.dev_by_type)(sys::ggml_backend_dev_type_GGML_BACKEND_DEVICE_TYPE_CPU);
            if dev.is_null() {
                return std::ptr::null_mut();
            }
            match (*dev).iface.get_buffer_type {
                Some(f) => f(dev),
                None => std::ptr::null_mut(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_table() {
        let ok = |v, c| check_version(v, c).map(|s| s.version);
        // the pin
        for c in [
            "unknown",
            "0c1e570",
            "0c1e57098",
            "0c1e570-dirty",
            "0c1e5709812345",
        ] {
            assert_eq!(ok("0.25.3", c), Ok("0.25.3"), "{c}");
        }
        // v0.5.0 (npm): the tag's commit and the git bundle's squashed commit
        for c in [
            "unknown",
            "0ad4a86",
            "0ad4a86ab",
            "de3ff81",
            "0ad4a86-dirty",
        ] {
            assert_eq!(ok("0.25.1", c), Ok("0.25.1"), "{c}");
        }
        assert_eq!(check_version("0.25.1", "0ad4a86").unwrap().api_version, 2);
        // 0.26.0 (crates.io llama-cpp-sys-2): API 3, its own bindings, commit "unknown" only
        for c in ["unknown", "unknown-dirty", " unknown "] {
            let r = check_version("0.26.0", c).unwrap();
            assert_eq!((r.version, r.api_version), ("0.26.0", 3), "{c}");
            assert_eq!(r.bindings, Bindings::Sys3);
        }
        for c in ["0c1e570", "0ad4a86", "abcdef1", ""] {
            let e = check_version("0.26.0", c).unwrap_err();
            assert!(e.contains("only as built from its source archive"), "{e}");
        }
        assert_eq!(check_version("0.25.3", "unknown").unwrap(), PIN);
        // a commit of another row, or none, is refused
        for (v, c) in [
            ("0.25.3", "0ad4a86"),
            ("0.25.1", "0c1e570"),
            ("0.25.3", "abcdef1"),
            ("0.25.3", "0c1e"),
            ("0.25.3", ""),
            ("0.25.1", "0ad4"),
        ] {
            let e = check_version(v, c).unwrap_err();
            assert!(e.contains("0.25.3") && e.contains("0.25.1"), "{e}");
        }
        // other versions: refused, naming what is supported
        for v in ["0.25.2", "0.25.3.1", "0.26.1", "0.27.0", "", "0.25", "0.26"] {
            let e = check_version(v, "unknown").unwrap_err();
            assert!(
                e.contains("ggml 0.25.3 (llama.cpp 0c1e57098")
                    && e.contains("ggml 0.25.1 (llama.cpp v0.5.0 0ad4a86")
                    && e.contains("ggml 0.26.0 (crates.io llama-cpp-sys-2"),
                "{e}"
            );
        }
        // each row's registry number is that of its bindings, and the generated modules
        // carry the numbers the loaders check (ggml-backend-impl.h)
        assert_eq!(Bindings::Sys.api_version(), 2);
        assert_eq!(Bindings::Sys3.api_version(), 3);
        for s in SUPPORTED {
            assert_eq!(s.api_version, s.bindings.api_version(), "{}", s.version);
        }
        // one row per version
        for (i, a) in SUPPORTED.iter().enumerate() {
            assert!(SUPPORTED[i + 1..].iter().all(|b| b.version != a.version));
        }
    }
}
