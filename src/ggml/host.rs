//! The host's ggml, resolved at run time.
//!
//! `libattnrot.so` contains no ggml and has no link-time dependency on a ggml symbol (a C
//! program that uses only the plain C API loads it without any ggml). When it is loaded as a
//! ggml backend, the few ggml functions it needs are looked up in the host process: they live
//! in the host's `libggml-base.so` / `libggml.so`, which the host loaded before it could
//! `dlopen` us — in the global scope (`dlsym(RTLD_DEFAULT, …)`) for a normally linked program,
//! or privately (`RTLD_LOCAL`: Node addons, Python ctypes), where [`super::locate`] finds the
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

/// `GGML_VERSION` of the pinned tree (ggml/CMakeLists.txt: 0.25.3).
pub const PINNED_GGML_VERSION: &str = "0.25.3";
/// The pinned upstream commit (ggml-org/llama.cpp@0c1e57098, vendored by llama-cpp-python 0.3.36).
pub const PINNED_COMMIT: &str = "0c1e57098";
/// `GGML_BACKEND_API_VERSION` of the pinned headers (ggml-backend-impl.h).
pub const PINNED_API_VERSION: c_int = sys::GGML_BACKEND_API_VERSION as c_int;
/// `sizeof(struct ggml_object)` on 64-bit targets (ggml-impl.h: offs, size, next, type, padding).
const GGML_OBJECT_SIZE: usize = 32;

type FnStr = unsafe extern "C" fn() -> *const c_char;
type FnSize = unsafe extern "C" fn() -> usize;
type FnNNodes = unsafe extern "C" fn(*mut sys::ggml_cgraph) -> c_int;
type FnNode = unsafe extern "C" fn(*mut sys::ggml_cgraph, c_int) -> *mut sys::ggml_tensor;
type FnDevByType = unsafe extern "C" fn(sys::ggml_backend_dev_type) -> sys::ggml_backend_dev_t;
type FnLog = unsafe extern "C" fn(sys::ggml_log_level, *const c_char, ...);

/// The ggml functions the backend calls, resolved from the host process.
pub struct Host {
    pub version: String,
    pub commit: String,
    graph_n_nodes: FnNNodes,
    graph_node: FnNode,
    dev_by_type: FnDevByType,
    tensor_overhead: FnSize,
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

/// Does a host ggml that reports `version` / `commit` match the pin? `Err` says why not.
///
/// A stock CMake build of the pinned tree from the PyPI sdist reports commit `"unknown"`
/// (the sdist's `.git` is a dangling submodule pointer, so `git rev-parse` fails); a build
/// from a git checkout reports the short hash, possibly with `-dirty`. So: the version must
/// be exactly [`PINNED_GGML_VERSION`], and the commit either `unknown` or a prefix-match of
/// [`PINNED_COMMIT`] (at least 7 hex digits).
pub fn check_pin(version: &str, commit: &str) -> Result<(), String> {
    if version != PINNED_GGML_VERSION {
        return Err(format!(
            "host ggml version is {version:?}, this backend is built for exactly {PINNED_GGML_VERSION:?} \
             (llama.cpp {PINNED_COMMIT}); the backend vtables differ between versions"
        ));
    }
    let c = commit
        .trim()
        .strip_suffix("-dirty")
        .unwrap_or(commit.trim());
    if c == "unknown" {
        return Ok(());
    }
    let hex = c.len() >= 7 && c.bytes().all(|b| b.is_ascii_hexdigit());
    let same = hex && (PINNED_COMMIT.starts_with(c) || c.starts_with(PINNED_COMMIT));
    if !same {
        return Err(format!(
            "host ggml {version} is from commit {commit:?}, this backend is built for commit {PINNED_COMMIT}"
        ));
    }
    Ok(())
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
        check_pin(&version, &commit)?;
        let host = Host {
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
    fn pin_check() {
        assert!(check_pin("0.25.3", "unknown").is_ok());
        assert!(check_pin("0.25.3", "0c1e570").is_ok());
        assert!(check_pin("0.25.3", "0c1e57098").is_ok());
        assert!(check_pin("0.25.3", "0c1e570-dirty").is_ok());
        assert!(check_pin("0.25.3", "0c1e5709812345").is_ok());
        assert!(check_pin("0.25.2", "unknown").is_err());
        assert!(check_pin("0.25.3.1", "unknown").is_err());
        assert!(check_pin("0.25.3", "abcdef1").is_err());
        assert!(check_pin("0.25.3", "0c1e").is_err());
        assert!(check_pin("0.25.3", "").is_err());
    }
}
