//! The ggml backend: `GGML_BACKEND_PATH=/path/libattnrot.so` makes a stock llama.cpp (built
//! with `GGML_BACKEND_DL=ON`) load it.
//!
//! * registry "AttnRot" with one device "AttnRot" of type ACCEL on host memory (like ggml's
//!   BLAS backend, `ggml-blas.cpp`): its default buffer type is the CPU buffer type and it
//!   accepts every host buffer, so the KV cache stays where llama.cpp put it and no tensor is
//!   copied;
//! * `supports_op` / `graph_compute`: [`super::ops`];
//! * `ggml_backend_set_n_threads` through `get_proc_address`;
//! * `ggml_backend_init` refuses (returns NULL, with a log line) in a host whose ggml is not the
//!   one of the supported builds ([`check_version`](crate::ggml::host::check_version)); `ggml_backend_score` returns 1.
//!
//! Nothing here links a ggml symbol: the host's functions are resolved at run time
//! ([`super::host`]). No panic crosses the C ABI: every `extern "C"` body runs in
//! `guard`, which logs the panic and returns a failure value.
use super::host::{self, Host};
use super::ops;
use super::sys;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Registry, device and backend name (`-b AttnRot` in test-backend-ops).
pub const NAME: &CStr = c"AttnRot";
const DESCRIPTION: &CStr =
    c"attnrot: Walsh-Hadamard rotation, KV quantization, flash attention (Rust)";

/// Run `f`, turning a panic into a log line and `fail`.
fn guard<R>(what: &str, fail: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(e) => {
            let msg = e
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| e.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            host::log_error(&format!("panic in {what}: {msg}"));
            fail
        }
    }
}

/// Process-wide state, created by the first successful `ggml_backend_init` and never freed
/// (ggml keeps the registry pointer until exit; dlclose of a Rust cdylib is not supported).
struct Global {
    host: Host,
    reg: sys::ggml_backend_reg,
    dev: sys::ggml_backend_device,
    cpu_buft: OnceLock<usize>,
}

static GLOBAL: OnceLock<Result<usize, String>> = OnceLock::new();
static GUID: [u8; 16] = *b"attnrot\0backend\0";

fn global() -> Option<&'static Global> {
    match GLOBAL.get() {
        // SAFETY: the pointer came from Box::leak and is never freed.
        Some(Ok(p)) => Some(unsafe { &*(*p as *const Global) }),
        _ => None,
    }
}

fn init_global() -> Result<&'static Global, String> {
    let mut first = false;
    let r = GLOBAL.get_or_init(|| {
        first = true;
        let host = Host::resolve()?;
        let api_version = host.build.api_version;
        let g: &'static mut Global = Box::leak(Box::new(Global {
            host,
            reg: sys::ggml_backend_reg {
                api_version,
                iface: sys::ggml_backend_reg_i {
                    get_name: Some(reg_get_name),
                    get_device_count: Some(reg_get_device_count),
                    get_device: Some(reg_get_device),
                    get_proc_address: Some(reg_get_proc_address),
                },
                context: std::ptr::null_mut(),
            },
            dev: sys::ggml_backend_device {
                iface: device_iface(),
                reg: std::ptr::null_mut(),
                context: std::ptr::null_mut(),
            },
            cpu_buft: OnceLock::new(),
        }));
        g.dev.reg = &mut g.reg;
        Ok(g as *mut Global as usize)
    });
    match r {
        // SAFETY: as in `global`.
        Ok(p) => {
            if !first {
                host::check_same_host()?;
            }
            Ok(unsafe { &*(*p as *const Global) })
        }
        Err(e) => Err(e.clone()),
    }
}

// ---------------------------------------------------------------------------------------
// entry points of a dynamically loaded backend (GGML_BACKEND_DL_IMPL / _SCORE_IMPL)
// ---------------------------------------------------------------------------------------

/// `ggml_backend_init`: the registry, or NULL (with a log line) in a host of another ggml.
#[no_mangle]
pub extern "C" fn ggml_backend_init() -> sys::ggml_backend_reg_t {
    guard(
        "ggml_backend_init",
        std::ptr::null_mut(),
        || match init_global() {
            Ok(g) => {
                host::log_info(&format!(
                    "backend {} registered (host ggml {} commit {}, backend API {}; {})",
                    NAME.to_string_lossy(),
                    g.host.version,
                    g.host.commit,
                    g.host.build.api_version,
                    host::scope_description(),
                ));
                // Loud (WARN): what runs here and what does not, once per process. It names
                // the host's ggml too: some hosts drop INFO lines logged while backends load
                // (llama.cpp v0.5.0's tools load them before `-lv` is parsed).
                host::log_warn(&format!(
                    "backend {} (host ggml {}) {}",
                    NAME.to_string_lossy(),
                    g.host.version,
                    ops::claims_summary()
                ));
                &g.reg as *const _ as sys::ggml_backend_reg_t
            }
            Err(why) => {
                host::log_error(&format!("refusing to load: {why}"));
                std::ptr::null_mut()
            }
        },
    )
}

/// `ggml_backend_score`: non-zero (0 would make the loader skip us).
#[no_mangle]
pub extern "C" fn ggml_backend_score() -> c_int {
    1
}

// ---------------------------------------------------------------------------------------
// registry
// ---------------------------------------------------------------------------------------

unsafe extern "C" fn reg_get_name(_reg: sys::ggml_backend_reg_t) -> *const c_char {
    NAME.as_ptr()
}

unsafe extern "C" fn reg_get_device_count(_reg: sys::ggml_backend_reg_t) -> usize {
    1
}

unsafe extern "C" fn reg_get_device(
    _reg: sys::ggml_backend_reg_t,
    index: usize,
) -> sys::ggml_backend_dev_t {
    guard("get_device", std::ptr::null_mut(), || match global() {
        Some(g) if index == 0 => &g.dev as *const _ as sys::ggml_backend_dev_t,
        _ => std::ptr::null_mut(),
    })
}

unsafe extern "C" fn reg_get_proc_address(
    _reg: sys::ggml_backend_reg_t,
    name: *const c_char,
) -> *mut c_void {
    guard("get_proc_address", std::ptr::null_mut(), || {
        if name.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: ggml passes a NUL-terminated name.
        match unsafe { CStr::from_ptr(name) }.to_bytes() {
            b"ggml_backend_set_n_threads" => set_n_threads as *mut c_void,
            _ => std::ptr::null_mut(),
        }
    })
}

// ---------------------------------------------------------------------------------------
// device
// ---------------------------------------------------------------------------------------

fn device_iface() -> sys::ggml_backend_device_i {
    sys::ggml_backend_device_i {
        get_name: Some(dev_get_name),
        get_description: Some(dev_get_description),
        get_memory: Some(dev_get_memory),
        get_type: Some(dev_get_type),
        get_props: Some(dev_get_props),
        init_backend: Some(dev_init_backend),
        get_buffer_type: Some(dev_get_buffer_type),
        get_host_buffer_type: None,
        buffer_from_host_ptr: None,
        supports_op: Some(dev_supports_op),
        supports_buft: Some(dev_supports_buft),
        offload_op: None,
        event_new: None,
        event_free: None,
        event_synchronize: None,
    }
}

unsafe extern "C" fn dev_get_name(_dev: sys::ggml_backend_dev_t) -> *const c_char {
    NAME.as_ptr()
}

unsafe extern "C" fn dev_get_description(_dev: sys::ggml_backend_dev_t) -> *const c_char {
    DESCRIPTION.as_ptr()
}

/// No memory of its own (host memory, like BLAS): 0 / 0.
unsafe extern "C" fn dev_get_memory(
    _dev: sys::ggml_backend_dev_t,
    free: *mut usize,
    total: *mut usize,
) {
    // SAFETY: ggml passes valid out-pointers; tolerate NULL anyway.
    unsafe {
        if !free.is_null() {
            *free = 0;
        }
        if !total.is_null() {
            *total = 0;
        }
    }
}

unsafe extern "C" fn dev_get_type(_dev: sys::ggml_backend_dev_t) -> sys::ggml_backend_dev_type {
    sys::ggml_backend_dev_type_GGML_BACKEND_DEVICE_TYPE_ACCEL
}

unsafe extern "C" fn dev_get_props(
    dev: sys::ggml_backend_dev_t,
    props: *mut sys::ggml_backend_dev_props,
) {
    guard("get_props", (), || {
        if props.is_null() {
            return;
        }
        // SAFETY: valid out-pointer from ggml.
        unsafe {
            let p = &mut *props;
            p.name = NAME.as_ptr();
            p.description = DESCRIPTION.as_ptr();
            p.type_ = dev_get_type(dev);
            p.device_id = std::ptr::null();
            dev_get_memory(dev, &mut p.memory_free, &mut p.memory_total);
            p.caps = sys::ggml_backend_dev_caps {
                async_: false,
                host_buffer: false,
                buffer_from_host_ptr: false,
                events: false,
                mmap_support: false,
            };
        }
    })
}

/// The CPU buffer type, found through the host's registry (cached).
unsafe extern "C" fn dev_get_buffer_type(
    _dev: sys::ggml_backend_dev_t,
) -> sys::ggml_backend_buffer_type_t {
    guard("get_buffer_type", std::ptr::null_mut(), || {
        let Some(g) = global() else {
            return std::ptr::null_mut();
        };
        if let Some(&p) = g.cpu_buft.get() {
            return p as sys::ggml_backend_buffer_type_t;
        }
        let p = g.host.cpu_buffer_type();
        if p.is_null() {
            host::log_error("no CPU device in the host: cannot provide a buffer type");
        } else {
            let _ = g.cpu_buft.set(p as usize);
        }
        p
    })
}

unsafe extern "C" fn dev_supports_op(
    _dev: sys::ggml_backend_dev_t,
    op: *const sys::ggml_tensor,
) -> bool {
    guard("supports_op", false, || {
        if op.is_null() {
            return false;
        }
        // SAFETY: ggml passes a valid tensor.
        ops::classify(unsafe { &*op }).is_ok()
    })
}

/// Host buffers (`ggml_backend_buft_is_host`), like BLAS: the data is ordinary memory we can
/// read. Asked through the host's function ([`host::Host::buft_is_host`]): the buffer-type
/// interface's layout differs between the backend APIs.
unsafe extern "C" fn dev_supports_buft(
    _dev: sys::ggml_backend_dev_t,
    buft: sys::ggml_backend_buffer_type_t,
) -> bool {
    guard("supports_buft", false, || {
        if buft.is_null() {
            return false;
        }
        let Some(g) = global() else {
            return false;
        };
        // SAFETY: valid buffer type from the host's ggml.
        unsafe { g.host.buft_is_host(buft) }
    })
}

// ---------------------------------------------------------------------------------------
// backend (stream)
// ---------------------------------------------------------------------------------------

struct BackendCtx {
    n_threads: AtomicUsize,
}

fn backend_iface() -> sys::ggml_backend_i {
    sys::ggml_backend_i {
        get_name: Some(backend_get_name),
        free: Some(backend_free),
        set_tensor_async: None,
        get_tensor_async: None,
        set_tensor_2d_async: None,
        get_tensor_2d_async: None,
        cpy_tensor_async: None,
        synchronize: None,
        graph_plan_create: None,
        graph_plan_free: None,
        graph_plan_update: None,
        graph_plan_compute: None,
        graph_compute: Some(backend_graph_compute),
        event_record: None,
        event_wait: None,
        graph_optimize: None,
    }
}

unsafe extern "C" fn dev_init_backend(
    dev: sys::ggml_backend_dev_t,
    _params: *const c_char,
) -> sys::ggml_backend_t {
    guard("init_backend", std::ptr::null_mut(), || {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let ctx = Box::into_raw(Box::new(BackendCtx {
            n_threads: AtomicUsize::new(threads),
        }));
        let b = Box::new(sys::ggml_backend {
            guid: GUID.as_ptr() as *mut sys::ggml_guid,
            iface: backend_iface(),
            device: dev,
            context: ctx as *mut c_void,
        });
        Box::into_raw(b)
    })
}

unsafe extern "C" fn backend_get_name(_b: sys::ggml_backend_t) -> *const c_char {
    NAME.as_ptr()
}

unsafe extern "C" fn backend_free(b: sys::ggml_backend_t) {
    guard("backend_free", (), || {
        if b.is_null() {
            return;
        }
        // SAFETY: created by dev_init_backend; ggml frees each backend once.
        unsafe {
            let b = Box::from_raw(b);
            if !b.context.is_null() {
                drop(Box::from_raw(b.context as *mut BackendCtx));
            }
        }
    })
}

/// `ggml_backend_set_n_threads` (resolved by llama.cpp / test-backend-ops through
/// `get_proc_address`).
unsafe extern "C" fn set_n_threads(b: sys::ggml_backend_t, n: c_int) {
    guard("set_n_threads", (), || {
        // SAFETY: a backend we created (ggml only hands our own backends to our functions).
        unsafe {
            if b.is_null() || (*b).context.is_null() || (*b).guid.is_null() || *(*b).guid != GUID {
                return;
            }
            let ctx = &*((*b).context as *const BackendCtx);
            ctx.n_threads.store(n.max(1) as usize, Ordering::Relaxed);
        }
    })
}

unsafe extern "C" fn backend_graph_compute(
    b: sys::ggml_backend_t,
    g: *mut sys::ggml_cgraph,
) -> sys::ggml_status {
    guard("graph_compute", sys::ggml_status_GGML_STATUS_FAILED, || {
        let Some(gl) = global() else {
            return sys::ggml_status_GGML_STATUS_FAILED;
        };
        if g.is_null() {
            return sys::ggml_status_GGML_STATUS_FAILED;
        }
        // SAFETY: ggml passes our backend and a valid graph whose nodes' data lives in host
        // buffers (we accept only host buffer types).
        unsafe {
            let n_threads = match b.is_null() || (*b).context.is_null() {
                true => 1,
                false => (*((*b).context as *const BackendCtx))
                    .n_threads
                    .load(Ordering::Relaxed),
            };
            for i in 0..gl.host.n_nodes(g) {
                let node = gl.host.node(g, i);
                if node.is_null() {
                    continue;
                }
                if let Err(e) = ops::compute(node, n_threads) {
                    host::log_error(&format!("graph_compute: {e}"));
                    return sys::ggml_status_GGML_STATUS_FAILED;
                }
            }
        }
        sys::ggml_status_GGML_STATUS_SUCCESS
    })
}
