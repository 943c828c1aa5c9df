//! Where the host's ggml lives in this process.
//!
//! A llama.cpp program links `libggml-base.so` / `libggml.so` normally, so their symbols are in
//! the global scope and `dlsym(RTLD_DEFAULT, …)` finds them. Hosts that load ggml *privately*
//! do not: Node addons (node-llama-cpp) and Python `ctypes.CDLL` (default mode `RTLD_LOCAL`)
//! `dlopen` ggml with `RTLD_LOCAL`, so nothing of it is global, yet their ggml is what calls
//! our `ggml_backend_init`. This module finds that ggml:
//!
//! 1. the loaded objects (`dl_iterate_phdr`) are reopened with `RTLD_NOLOAD` — which never
//!    loads anything, it only returns a handle to an object already in the process — and each
//!    handle is asked for `ggml_version` (a ggml-base copy) and `ggml_backend_load` (a ggml
//!    *registry*, `libggml.so`, whose dependency scope contains its ggml-base); `dladdr` on the
//!    answer names the object that really defines it, so a library that merely depends on
//!    ggml (libllama, the Node addon) is not counted twice;
//! 2. [`choose`](crate::ggml::locate::choose) decides: one ggml copy reachable globally → `RTLD_DEFAULT` (as before); one
//!    copy reachable only privately → its registry's handle; several copies → the registry
//!    whose code is on the call stack of `ggml_backend_init` (it is the one loading us), else
//!    refuse with one line naming the copies.
//!
//! A second ggml is never brought into the process: only `RTLD_NOLOAD` opens.
use std::ffi::{c_char, c_int, c_void, CStr, CString};

/// An object (shared library or executable) in the process, identified by its load base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// `dli_fbase` of `dladdr`: unique per loaded object.
    pub base: usize,
    /// Its path as the dynamic loader knows it (`dli_fname`).
    pub path: String,
}

/// A ggml registry object (defines `ggml_backend_load`) and the ggml-base copy its own
/// dependency scope resolves `ggml_version` to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    pub object: Object,
    /// `None` when its scope does not reach a `ggml_version` (not a usable ggml).
    pub ggml_base: Option<Object>,
    /// `dlopen(path, RTLD_NOW | RTLD_NOLOAD)` handle (as usize; 0 in unit tests).
    pub handle: usize,
}

/// What the process looks like, as far as ggml is concerned.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    /// The ggml-base copy `dlsym(RTLD_DEFAULT, "ggml_version")` finds.
    pub global_base: Option<Object>,
    /// The registry `dlsym(RTLD_DEFAULT, "ggml_backend_load")` finds.
    pub global_registry: Option<Object>,
    /// Every distinct object defining `ggml_version` (global or private).
    pub copies: Vec<Object>,
    /// Every distinct object defining `ggml_backend_load`.
    pub registries: Vec<Registry>,
    /// Load bases of the objects on the call stack, innermost first, our own library excluded.
    pub callers: Vec<usize>,
}

/// Where to `dlsym` the host's ggml functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `RTLD_DEFAULT`: ggml is in the global scope (a normally linked llama.cpp program).
    Global,
    /// The handle of a registry object loaded privately (`RTLD_LOCAL`); its dependency scope
    /// contains its ggml-base. `why` says how it was picked (for the log).
    Private {
        handle: usize,
        registry: String,
        ggml_base: String,
        why: &'static str,
    },
}

impl Scope {
    /// The same ggml (the reason it was picked aside)?
    pub fn same_ggml(&self, other: &Scope) -> bool {
        match (self, other) {
            (Scope::Global, Scope::Global) => true,
            (Scope::Private { handle: a, .. }, Scope::Private { handle: b, .. }) => a == b,
            _ => false,
        }
    }

    /// One phrase for the registration log line.
    pub fn describe(&self) -> String {
        match self {
            Scope::Global => "global symbols".into(),
            Scope::Private {
                registry,
                ggml_base,
                why,
                ..
            } => format!("private ggml {ggml_base} via {registry}, {why}"),
        }
    }
}

/// The decision, from the facts of a [`Survey`] (pure: unit-tested with made-up processes).
pub fn choose(s: &Survey) -> Result<Scope, String> {
    if s.copies.is_empty() {
        return Err(
            "ggml_version not found in the host process: no loaded object (global or RTLD_LOCAL) exports it"
                .into(),
        );
    }
    let private = |r: &Registry, why: &'static str| Scope::Private {
        handle: r.handle,
        registry: r.object.path.clone(),
        ggml_base: r
            .ggml_base
            .as_ref()
            .map(|b| b.path.clone())
            .unwrap_or_default(),
        why,
    };
    // The registry that is loading us: the first one on the call stack.
    let caller = s
        .callers
        .iter()
        .find_map(|b| s.registries.iter().find(|r| r.object.base == *b))
        .filter(|r| r.ggml_base.is_some());
    if s.copies.len() == 1 {
        let only = &s.copies[0];
        // The old path: everything global and consistent.
        if s.global_base.as_ref() == Some(only)
            && s.global_registry.is_some()
            && s.registries.iter().any(|r| {
                Some(&r.object) == s.global_registry.as_ref() && r.ggml_base.as_ref() == Some(only)
            })
        {
            return Ok(Scope::Global);
        }
        if let Some(r) = caller {
            return Ok(private(r, "it loaded this backend"));
        }
        let mine: Vec<&Registry> = s
            .registries
            .iter()
            .filter(|r| r.ggml_base.as_ref() == Some(only))
            .collect();
        return match mine.as_slice() {
            [r] => Ok(private(r, "the only ggml in the process")),
            [] => Err(format!(
                "ggml {} is loaded privately but no loaded object with ggml_backend_load uses it",
                only.path
            )),
            more => Err(format!(
                "{} ggml registries share {} and none of them is loading this backend: {}",
                more.len(),
                only.path,
                more.iter()
                    .map(|r| r.object.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
    }
    match caller {
        Some(r) => Ok(private(r, "it loaded this backend (other ggml copies are loaded too)")),
        None => Err(format!(
            "{} different ggml copies are loaded ({}) and the one loading this backend cannot be told",
            s.copies.len(),
            s.copies.iter().map(|c| c.path.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

// ---------------------------------------------------------------------------------------
// the real process
// ---------------------------------------------------------------------------------------

/// The object defining the code or data at `p` (`dladdr`).
fn object_of(p: *const c_void) -> Option<Object> {
    if p.is_null() {
        return None;
    }
    // SAFETY: dladdr only reads the loader's tables; Dl_info is plain data.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    if unsafe { libc::dladdr(p, &mut info) } == 0 || info.dli_fbase.is_null() {
        return None;
    }
    let path = if info.dli_fname.is_null() {
        String::new()
    } else {
        // SAFETY: dladdr's file name is a NUL-terminated string owned by the loader.
        unsafe { CStr::from_ptr(info.dli_fname) }
            .to_string_lossy()
            .into_owned()
    };
    Some(Object {
        base: info.dli_fbase as usize,
        path,
    })
}

/// `dlsym(handle, name)`.
///
/// # Safety
/// `handle` must be `RTLD_DEFAULT` or a live `dlopen` handle.
pub unsafe fn dlsym(handle: *mut c_void, name: &str) -> Option<*mut c_void> {
    let c = CString::new(name).ok()?;
    // SAFETY: caller's contract on `handle`; `c` is a valid C string.
    let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// Paths of the loaded objects (the executable, whose name is empty, and the vDSO excluded).
fn loaded_objects() -> Vec<CString> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: the loader passes a valid dl_phdr_info; `data` is our Vec.
        let (info, out) = unsafe { (&*info, &mut *(data as *mut Vec<CString>)) };
        if !info.dlpi_name.is_null() {
            // SAFETY: NUL-terminated name owned by the loader.
            let name: &CStr = unsafe { CStr::from_ptr(info.dlpi_name as *const c_char) };
            if !name.is_empty() && !name.to_bytes().starts_with(b"linux-vdso") {
                out.push(name.to_owned());
            }
        }
        0
    }
    let mut out: Vec<CString> = Vec::new();
    // SAFETY: the callback only reads `info` and pushes into `out`.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut out as *mut Vec<CString> as *mut c_void) };
    out
}

/// Load bases of the objects on the current call stack, innermost first, without our own.
fn call_stack_objects() -> Vec<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut frames = [std::ptr::null_mut::<c_void>(); 64];
        // SAFETY: glibc's backtrace fills at most `len` return addresses.
        let n = unsafe { libc::backtrace(frames.as_mut_ptr(), frames.len() as c_int) };
        let ours = object_of(call_stack_objects as *const c_void).map(|o| o.base);
        let mut out: Vec<usize> = Vec::new();
        for f in &frames[..n.max(0) as usize] {
            // a return address points after the call: look one byte back
            if let Some(o) = object_of((*f as *const u8).wrapping_sub(1) as *const c_void) {
                if Some(o.base) != ours && out.last() != Some(&o.base) {
                    out.push(o.base);
                }
            }
        }
        out
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        Vec::new()
    }
}

/// Survey the running process (see the module doc). Handles of registries are kept open
/// (they are loaded anyway); the others are closed again.
pub fn survey() -> Survey {
    let mut s = Survey {
        callers: call_stack_objects(),
        ..Survey::default()
    };
    // SAFETY: RTLD_DEFAULT is always a valid pseudo-handle.
    unsafe {
        s.global_base = dlsym(libc::RTLD_DEFAULT, "ggml_version").and_then(|p| object_of(p));
        s.global_registry =
            dlsym(libc::RTLD_DEFAULT, "ggml_backend_load").and_then(|p| object_of(p));
    }
    // An executable that exports ggml itself (static ggml, -rdynamic) is not in the walk.
    if let Some(g) = &s.global_base {
        s.copies.push(g.clone());
    }
    if let Some(r) = &s.global_registry {
        s.registries.push(Registry {
            object: r.clone(),
            ggml_base: s.global_base.clone(),
            handle: libc::RTLD_DEFAULT as usize,
        });
    }
    for name in loaded_objects() {
        // SAFETY: RTLD_NOLOAD returns NULL unless `name` is already loaded; it never loads.
        let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        if h.is_null() {
            continue;
        }
        // SAFETY: `h` is a live handle until the dlclose below.
        let base = unsafe { dlsym(h, "ggml_version") }.and_then(|p| object_of(p));
        let reg = unsafe { dlsym(h, "ggml_backend_load") }.and_then(|p| object_of(p));
        if let Some(b) = &base {
            if !s.copies.contains(b) {
                s.copies.push(b.clone());
            }
        }
        let mut keep = false;
        if let Some(r) = reg {
            // Keep the handle of the object that defines ggml_backend_load itself (the
            // registry), not of the libraries that merely depend on it.
            if r.path.as_bytes() == name.to_bytes() {
                match s.registries.iter_mut().find(|x| x.object == r) {
                    // found through RTLD_DEFAULT first: give it its own handle
                    Some(x) if x.handle == libc::RTLD_DEFAULT as usize => {
                        x.handle = h as usize;
                        keep = true;
                    }
                    Some(_) => {}
                    None => {
                        s.registries.push(Registry {
                            object: r,
                            ggml_base: base,
                            handle: h as usize,
                        });
                        keep = true;
                    }
                }
            }
        }
        if !keep {
            // SAFETY: balances the RTLD_NOLOAD open above (which only bumped a refcount).
            unsafe { libc::dlclose(h) };
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(base: usize, path: &str) -> Object {
        Object {
            base,
            path: path.into(),
        }
    }
    fn reg(base: usize, path: &str, ggml_base: &Object, handle: usize) -> Registry {
        Registry {
            object: obj(base, path),
            ggml_base: Some(ggml_base.clone()),
            handle,
        }
    }

    #[test]
    fn nothing_loaded_is_refused() {
        let e = choose(&Survey::default()).unwrap_err();
        assert!(e.contains("ggml_version not found"), "{e}");
    }

    #[test]
    fn one_global_ggml_keeps_rtld_default() {
        let base = obj(0x1000, "/b/libggml-base.so");
        let s = Survey {
            global_base: Some(base.clone()),
            global_registry: Some(obj(0x2000, "/b/libggml.so")),
            copies: vec![base.clone()],
            registries: vec![reg(0x2000, "/b/libggml.so", &base, 7)],
            callers: vec![0x2000],
        };
        assert_eq!(choose(&s), Ok(Scope::Global));
    }

    #[test]
    fn one_private_ggml_is_used_through_its_registry() {
        let base = obj(0x1000, "/n/libggml-base.so");
        let mut s = Survey {
            copies: vec![base.clone()],
            registries: vec![reg(0x2000, "/n/libggml.v0.5.0.so", &base, 42)],
            ..Survey::default()
        };
        // caller unknown (no backtrace): the only one
        match choose(&s).unwrap() {
            Scope::Private { handle, why, .. } => {
                assert_eq!(handle, 42);
                assert!(why.contains("only"));
            }
            g => panic!("{g:?}"),
        }
        // caller known
        s.callers = vec![0x9000, 0x2000, 0x3000];
        match choose(&s).unwrap() {
            Scope::Private { handle, why, .. } => {
                assert_eq!(handle, 42);
                assert!(why.contains("loaded this backend"));
            }
            g => panic!("{g:?}"),
        }
    }

    #[test]
    fn private_ggml_without_registry_is_refused() {
        let base = obj(0x1000, "/n/libggml-base.so");
        let s = Survey {
            copies: vec![base],
            ..Survey::default()
        };
        assert!(choose(&s).unwrap_err().contains("ggml_backend_load"));
    }

    #[test]
    fn two_copies_pick_the_caller_or_refuse() {
        let a = obj(0x1000, "/a/libggml-base.so");
        let b = obj(0x5000, "/b/libggml-base.so");
        let mut s = Survey {
            global_base: Some(a.clone()),
            global_registry: Some(obj(0x2000, "/a/libggml.so")),
            copies: vec![a.clone(), b.clone()],
            registries: vec![
                reg(0x2000, "/a/libggml.so", &a, 1),
                reg(0x6000, "/b/libggml.so", &b, 2),
            ],
            callers: vec![],
        };
        let e = choose(&s).unwrap_err();
        assert!(
            e.contains("2 different ggml copies")
                && e.contains("/a/libggml-base.so")
                && e.contains("/b/libggml-base.so"),
            "{e}"
        );
        // the private copy is loading us: it wins over the global one
        s.callers = vec![0x6000, 0x2000];
        match choose(&s).unwrap() {
            Scope::Private {
                handle, ggml_base, ..
            } => {
                assert_eq!(handle, 2);
                assert_eq!(ggml_base, "/b/libggml-base.so");
            }
            g => panic!("{g:?}"),
        }
        s.callers = vec![0x2000];
        assert!(matches!(choose(&s), Ok(Scope::Private { handle: 1, .. })));
    }

    #[test]
    fn shared_base_two_registries_need_the_caller() {
        let a = obj(0x1000, "/a/libggml-base.so");
        let mut s = Survey {
            copies: vec![a.clone()],
            registries: vec![
                reg(0x2000, "/a/libggml.so", &a, 1),
                reg(0x3000, "/a/other.so", &a, 2),
            ],
            ..Survey::default()
        };
        assert!(choose(&s).unwrap_err().contains("2 ggml registries"));
        s.callers = vec![0x3000];
        assert!(matches!(choose(&s), Ok(Scope::Private { handle: 2, .. })));
    }

    /// In this test process there is no ggml: the survey finds none and nothing is loaded by it.
    #[test]
    fn survey_of_a_process_without_ggml() {
        let s = survey();
        assert!(s.copies.is_empty() && s.registries.is_empty(), "{s:?}");
        assert!(!s.callers.is_empty(), "backtrace found no caller objects");
    }
}
