//! What the backend claims (`supports_op`) and how it computes it (`graph_compute`).
//!
//! One function decides whether a node is ours ([`classify`]); `supports_op` answers with it
//! and `graph_compute` asks it again for every node before touching it, so the two can never
//! disagree. Every check mirrors what ggml's CPU backend would assert or assume for the op
//! (cited per op), plus what our kernels need (strides that are whole elements, power-of-two
//! transform sizes, implemented formats).
use super::sys;
use super::tensor as t;
use crate::GgmlType;

/// What a node is, for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// NONE / VIEW / RESHAPE / PERMUTE / TRANSPOSE: nothing to compute.
    NoOp,
    /// `GGML_OP_SET_ROWS` into one of the KV formats.
    SetRows,
    /// `GGML_OP_MUL_MAT` hinted `GGML_HINT_SRC0_IS_HADAMARD`: a Walsh–Hadamard rotation.
    Hadamard,
    /// `GGML_OP_FLASH_ATTN_EXT`.
    FlashAttn,
}

/// KV formats SET_ROWS is implemented for: the eight whose `quantize_row` (the CPU backend's
/// `from_float`) is in [`crate::quant`]. Which of them are *claimed* is
/// [`set_rows_claims_type`].
pub const SET_ROWS_TYPES: &[GgmlType] = &GgmlType::KV;

/// Is SET_ROWS into a `t` cache claimed? `fa_all` = [`fa_claims_unquantized_v`].
///
/// The quantized formats always. f16/bf16 only with `ATTNROT_FA_ALL=1`: by default the
/// attention over an f16/bf16 V stays on the CPU backend (see [`fa_claims_unquantized_v`]), and
/// then taking only the cache write (a plain conversion, no faster than the CPU's) would just
/// add two graph splits per layer to llama.cpp's default f16 cache — measured at depth 4096:
/// tg128 0.89–0.93× stock with it, 0.98–1.0× without. An f16 K next to a quantized V loses
/// nothing either: llama.cpp writes K right after its RoPE, in a CPU split anyway.
pub fn set_rows_claims_type(t: GgmlType, fa_all: bool) -> bool {
    SET_ROWS_TYPES.contains(&t) && (fa_all || t.is_quantized())
}

/// K/V types FLASH_ATTN_EXT is claimed for ([`crate::attn`]): the eight KV formats and f32.
pub const FLASH_ATTN_KV_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::IQ4_NL,
];

/// Environment variable: `ATTNROT_FA_ALL=1` also claims FLASH_ATTN_EXT with an unquantized
/// (f32/f16/bf16) V; see [`fa_claims_unquantized_v`].
pub const FA_ALL_ENV: &str = "ATTNROT_FA_ALL";

/// Does the backend claim FLASH_ATTN_EXT when V is not quantized (f32/f16/bf16)?
///
/// Default: no. llama.cpp's default `-fa auto` enables flash attention tentatively and then
/// (`llama_context::resolve_fused_ops`, llama-context.cpp) turns it off for the whole model
/// when any FLASH_ATTN_EXT node is assigned to another device than its layer's ("Flash
/// Attention not supported, set to disabled"). A quantized V cache forces flash attention on
/// before that probe (`llama_init_from_model`: "enabling flash_attn since it is required for
/// quantized V cache"), so claiming it there is harmless; with an f16/bf16/f32 V it would make
/// the default run fall back to the slower non-fused attention. Those nodes are left to ggml's
/// CPU backend. `ATTNROT_FA_ALL=1` (read once per process) claims them too — for
/// test-backend-ops, or for runs with an explicit `-fa on`.
pub fn fa_claims_unquantized_v() -> bool {
    static ALL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALL.get_or_init(|| env_flag(FA_ALL_ENV))
}

/// Is the switch `name` on (set, not empty, not `0`)?
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Environment variable: `ATTNROT_QUALITY=1` turns on the quality mode; see [`quality_mode`].
pub const QUALITY_ENV: &str = "ATTNROT_QUALITY";

/// Quality mode (opt-in, read once per process): SET_ROWS into a quantized cache stores the
/// blocks [`crate::quant::best::quantize_row_best`] chooses — the same ggml block type,
/// readable by every reader (ggml's CPU attention, context shift, session files), never a
/// larger error than upstream's block. Off (the default), SET_ROWS is bit-exact with the
/// CPU backend.
pub fn quality_mode() -> bool {
    static Q: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *Q.get_or_init(|| {
        let policy_set = std::env::var_os(POLICY_ENV).is_some_and(|v| !v.is_empty());
        // a policy that does not load means exact mode (logged by `policy()`)
        (env_flag(QUALITY_ENV) || policy_set) && (!policy_set || policy().is_some())
    });
    on && !POLICY_REJECTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Environment variable: `ATTNROT_POLICY=<file>` (written by `attnrot tune`) turns on the
/// quality mode with the model's measured K metrics; see [`policy`].
pub const POLICY_ENV: &str = "ATTNROT_POLICY";

/// Set when the policy turned out to be another model's: exact mode from then on.
static POLICY_REJECTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The policy `ATTNROT_POLICY` names, loaded once (one log line either way). A missing or
/// malformed file leaves the backend in exact mode.
pub fn policy() -> Option<&'static crate::rotate::policy::Policy> {
    static P: std::sync::OnceLock<Option<crate::rotate::policy::Policy>> =
        std::sync::OnceLock::new();
    P.get_or_init(|| {
        let path = std::env::var_os(POLICY_ENV).filter(|v| !v.is_empty())?;
        match crate::rotate::policy::Policy::load(std::path::Path::new(&path)) {
            Ok(p) => {
                super::host::log_info(&format!(
                    "{POLICY_ENV}: quality policy for {} ({} layers, {} KV heads of {}) loaded from {}",
                    p.model,
                    p.fingerprint.n_layer,
                    p.fingerprint.n_head_kv,
                    p.fingerprint.head_dim_k,
                    std::path::Path::new(&path).display()
                ));
                Some(p)
            }
            Err(e) => {
                super::host::log_error(&format!(
                    "{POLICY_ENV}: {e}; the backend stays in exact mode"
                ));
                None
            }
        }
    })
    .as_ref()
}

/// How SET_ROWS writes one node's rows.
enum WriteMode {
    /// the CPU backend's `from_float`, bit-exact
    Exact,
    /// the squared-error search ([`crate::quant::best::quantize_row_best`])
    Search,
    /// the score-error search with the policy's metrics of this K layer
    Metric(&'static [crate::quant::best::HeadMetric]),
}

/// The write mode of a SET_ROWS into `dst` from `rows` (`nc` values a row).
fn write_mode(dst: &sys::ggml_tensor, rows: &sys::ggml_tensor, nc: usize) -> WriteMode {
    let dty = t::ty(dst);
    if !quality_mode() || !dty.is_some_and(|t| t.is_quantized()) {
        return WriteMode::Exact;
    }
    let Some(p) = policy() else {
        return WriteMode::Search;
    };
    match capture::cache_layer(dst) {
        Some((true, layer)) => match p.check_k_row(layer as usize, nc) {
            Ok(()) => {
                // llama.cpp rotated these rows, unless the policy made its rotation the identity
                let rotated =
                    capture::rotation_of(rows).is_some() && dty.is_some_and(|t| p.rotates(true, t));
                match p.k_metric(layer as usize, rotated) {
                    Some(m) => WriteMode::Metric(m),
                    None => WriteMode::Search,
                }
            }
            Err(why) => {
                if !POLICY_REJECTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    super::host::log_error(&format!(
                        "{POLICY_ENV}: the policy does not match this model ({why}); the backend is in exact mode from now on"
                    ));
                }
                WriteMode::Exact
            }
        },
        _ => WriteMode::Search,
    }
}

/// Environment variable: `ATTNROT_OPS=set_rows,hadamard,fa` (any subset, comma-separated)
/// limits what the backend claims; unset = all three. A diagnostic for measuring what each
/// kind of node (and the graph splits it causes) costs; see [`enabled_ops`].
pub const OPS_ENV: &str = "ATTNROT_OPS";

/// The node kinds `ATTNROT_OPS` enables, as `[set_rows, hadamard, fa]`, plus the entries it
/// did not understand (logged at init). Read once per process.
pub fn enabled_ops() -> ([bool; 3], &'static [String]) {
    static OPS: std::sync::OnceLock<([bool; 3], Vec<String>)> = std::sync::OnceLock::new();
    let (on, bad) = OPS.get_or_init(|| match std::env::var(OPS_ENV) {
        Err(_) => ([true; 3], Vec::new()),
        Ok(v) => parse_ops(&v),
    });
    (*on, bad)
}

/// Parse an `ATTNROT_OPS` value: `([set_rows, hadamard, fa], unknown entries)`.
pub fn parse_ops(v: &str) -> ([bool; 3], Vec<String>) {
    let mut on = [false; 3];
    let mut bad = Vec::new();
    for e in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match e.to_ascii_lowercase().as_str() {
            "set_rows" => on[0] = true,
            "hadamard" => on[1] = true,
            "fa" | "flash_attn_ext" => on[2] = true,
            _ => bad.push(e.to_string()),
        }
    }
    (on, bad)
}

/// Is a FLASH_ATTN_EXT with this K/V type pair claimed (types only; shapes are checked by
/// [`classify`])? `fa_all` = [`fa_claims_unquantized_v`].
pub fn fa_claims_types(k: GgmlType, v: GgmlType, fa_all: bool) -> bool {
    FLASH_ATTN_KV_TYPES.contains(&k)
        && FLASH_ATTN_KV_TYPES.contains(&v)
        && (fa_all || v.is_quantized())
}

/// One line for the log at init: what is claimed, what is left to the CPU, and why.
pub fn claims_summary() -> String {
    let names =
        |ts: &mut dyn Iterator<Item = GgmlType>| ts.map(|t| t.name()).collect::<Vec<_>>().join("/");
    let fa_all = fa_claims_unquantized_v();
    let set_rows = names(
        &mut SET_ROWS_TYPES
            .iter()
            .copied()
            .filter(|&t| set_rows_claims_type(t, fa_all)),
    );
    let set_rows = if fa_all {
        set_rows
    } else {
        format!("{set_rows} (f16/bf16 caches only with {FA_ALL_ENV}=1, with their attention)")
    };
    let quant_v = names(
        &mut FLASH_ATTN_KV_TYPES
            .iter()
            .copied()
            .filter(|t| t.is_quantized()),
    );
    let fa = if fa_claims_unquantized_v() {
        format!(
            "FLASH_ATTN_EXT for K,V in {} ({FA_ALL_ENV}=1: unquantized V claimed too; with llama.cpp's default -fa auto an f16/bf16/f32 V cache then turns flash attention OFF for the whole model — run with -fa on)",
            names(&mut FLASH_ATTN_KV_TYPES.iter().copied())
        )
    } else {
        format!(
            "FLASH_ATTN_EXT only with a quantized V cache ({quant_v}); with an f16/bf16/f32 V cache the attention stays on the CPU backend, because llama.cpp's default -fa auto would otherwise turn flash attention off for the whole model (slower than stock); {FA_ALL_ENV}=1 claims those too"
        )
    };
    let (on, bad) = enabled_ops();
    let mut parts = Vec::new();
    if on[0] {
        parts.push(format!("SET_ROWS into {set_rows}"));
    }
    if on[1] {
        parts.push("MUL_MAT with the Hadamard hint (attn-rot)".to_string());
    }
    if on[2] {
        parts.push(fa);
    }
    let mut s = if parts.is_empty() {
        "claims nothing".to_string()
    } else {
        format!("claims {}", parts.join("; "))
    };
    s.push_str("; everything else stays on the CPU backend");
    if quality_mode() {
        let how = match policy() {
            Some(p) => format!(
                "K blocks by score error with the {POLICY_ENV} metrics of {}, V blocks by squared error",
                p.model
            ),
            None => "blocks by squared error".to_string(),
        };
        s.push_str(&format!(
            "; QUALITY MODE: quantized cache {how} (same ggml types, readable by any reader, not bit-exact with upstream)"
        ));
    }
    if on != [true; 3] {
        s.push_str(&format!(" ({OPS_ENV} limits the claims)"));
    }
    if !bad.is_empty() {
        s.push_str(&format!(
            "; {OPS_ENV}: ignored unknown entries {:?} (known: set_rows, hadamard, fa)",
            bad
        ));
    }
    s
}

/// The KV cache types this process writes (`[K, V]`, ggml type id + 1; 0 = not seen yet),
/// learnt from the SET_ROWS nodes llama.cpp asks about while it plans its graphs (before any
/// node runs). The rotation policy is looked up by them.
static CACHE_TYPES: [std::sync::atomic::AtomicU32; 2] = [
    std::sync::atomic::AtomicU32::new(0),
    std::sync::atomic::AtomicU32::new(0),
];

fn cache_type(is_k: bool) -> Option<GgmlType> {
    let v = CACHE_TYPES[usize::from(!is_k)].load(std::sync::atomic::Ordering::Relaxed);
    v.checked_sub(1).and_then(|id| GgmlType::from_id(id as i64))
}

/// The side of a Hadamard product, from its matrix: llama.cpp's `attn_inp_k_rot` (Q, K and
/// context shift's K products) or `attn_inp_v_rot` (V and the attention output)
/// (`build_input_k_rot` / `build_input_v_rot`, src/llama-kv-cache.cpp). `None`: another graph.
fn hadamard_side(node: &sys::ggml_tensor) -> Option<bool> {
    let a = src(node, 0).ok()?;
    match t::name(a).as_str() {
        "attn_inp_k_rot" => Some(true),
        "attn_inp_v_rot" => Some(false),
        _ => None,
    }
}

/// Does the policy make this Hadamard product the identity (its side's rotation off for
/// the cache type in use)?
fn hadamard_is_identity(node: &sys::ggml_tensor) -> bool {
    if !quality_mode() {
        return false;
    }
    let (Some(p), Some(side)) = (policy(), hadamard_side(node)) else {
        return false;
    };
    cache_type(side).is_some_and(|ty| !p.rotates(side, ty))
}

/// Is `t` something the backend does? `Err` carries the reason it is refused.
///
/// With a policy that turns a rotation off, every Hadamard product of that side must be
/// ours (we compute the identity for it): one we cannot take would rotate what the others
/// leave alone, so the policy is dropped (one log line, exact mode) before anything runs.
pub fn classify(node: &sys::ggml_tensor) -> Result<Kind, &'static str> {
    let r = classify_node(node);
    match (&r, node.op) {
        (Ok(Kind::SetRows), _) => {
            if let (Some((is_k, _)), Some(ty)) = (capture::cache_layer(node), t::ty(node)) {
                CACHE_TYPES[usize::from(!is_k)]
                    .store(ty as u32 + 1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        (Err(why), sys::ggml_op_GGML_OP_MUL_MAT)
            if t::param_i32(node, 1) == sys::ggml_op_hint_GGML_HINT_SRC0_IS_HADAMARD as i32
                && quality_mode()
                && policy().is_some_and(|p| p.disables_rotation())
                // log once: the first such node drops the policy
                && !POLICY_REJECTED.swap(true, std::sync::atomic::Ordering::Relaxed) =>
        {
            super::host::log_error(&format!(
                "{POLICY_ENV}: a Hadamard product stays on another backend ({why}), so a rotation the policy turns off cannot be turned off everywhere; the backend is in exact mode"
            ));
        }
        _ => {}
    }
    r
}

/// Environment variable (diagnostic, for tests): `ATTNROT_DECLINE=Qcur,…` declines every node
/// whose name or first input's name starts with one of the prefixes (e.g. `Qcur`: the
/// Hadamard products of Q), so a test can leave a chosen node to the CPU backend.
pub const DECLINE_ENV: &str = "ATTNROT_DECLINE";

fn declined_by_env(node: &sys::ggml_tensor) -> bool {
    static D: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let prefixes = D.get_or_init(|| {
        std::env::var(DECLINE_ENV)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    });
    if prefixes.is_empty() {
        return false;
    }
    let mut names = vec![t::name(node)];
    if let Ok(x) = src(node, 1) {
        names.push(t::name(x));
    }
    names
        .iter()
        .any(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
}

fn classify_node(node: &sys::ggml_tensor) -> Result<Kind, &'static str> {
    if t::is_noop(node.op) {
        return Ok(Kind::NoOp);
    }
    if declined_by_env(node) {
        return Err("declined by ATTNROT_DECLINE");
    }
    let (on, _) = enabled_ops();
    let off: Result<Kind, &'static str> = Err("not enabled by ATTNROT_OPS");
    match node.op {
        sys::ggml_op_GGML_OP_SET_ROWS if !on[0] => off,
        sys::ggml_op_GGML_OP_MUL_MAT if !on[1] => off,
        sys::ggml_op_GGML_OP_FLASH_ATTN_EXT if !on[2] => off,
        sys::ggml_op_GGML_OP_SET_ROWS => set_rows_ok(node).map(|_| Kind::SetRows),
        sys::ggml_op_GGML_OP_MUL_MAT => hadamard_ok(node).map(|_| Kind::Hadamard),
        sys::ggml_op_GGML_OP_FLASH_ATTN_EXT => flash_attn_ok(node).map(|_| Kind::FlashAttn),
        _ => Err("op not implemented"),
    }
}

fn src(node: &sys::ggml_tensor, i: usize) -> Result<&sys::ggml_tensor, &'static str> {
    let p = node.src[i];
    if p.is_null() {
        return Err("missing source");
    }
    // SAFETY: ggml keeps sources alive as long as the node.
    Ok(unsafe { &*p })
}

// ---------------------------------------------------------------------------------------
// SET_ROWS
// ---------------------------------------------------------------------------------------

/// The checks of `ggml_set_rows` (ggml.c) and `ggml_compute_forward_set_rows_impl`
/// (ggml-cpu/ops.cpp): dst = rows of `a` (src[2]) overwritten by rows of `b` (src[0], f32
/// or f16) at indices `c` (src[1], i32/i64), `b` broadcast over `c`'s dims 1 and 2.
fn set_rows_ok(dst: &sys::ggml_tensor) -> Result<(), &'static str> {
    let b = src(dst, 0)?;
    let c = src(dst, 1)?;
    let dty = t::ty(dst).ok_or("destination type not handled")?;
    if !SET_ROWS_TYPES.contains(&dty) {
        return Err("destination format not implemented");
    }
    if !set_rows_claims_type(dty, fa_claims_unquantized_v()) {
        return Err(
            "f16/bf16 cache: left to the CPU with its attention (ATTNROT_FA_ALL=1 claims it)",
        );
    }
    let bty = match t::ty(b) {
        Some(GgmlType::F32) => GgmlType::F32,
        Some(GgmlType::F16) => GgmlType::F16,
        _ => return Err("source rows must be f32 or f16"),
    };
    let isz = t::index_size(c).ok_or("indices must be i32 or i64")?;
    let (dd, bd, cd) = (
        t::dims(dst).ok_or("bad dims")?,
        t::dims(b).ok_or("bad dims")?,
        t::dims(c).ok_or("bad dims")?,
    );
    if dd[0] != bd[0] || dd[2] != bd[2] || dd[3] != bd[3] || bd[1] != cd[0] || cd[3] != 1 {
        return Err("shape mismatch");
    }
    if cd[1] == 0 || cd[2] == 0 || bd[2] % cd[1] != 0 || bd[3] % cd[2] != 0 {
        return Err("indices do not broadcast");
    }
    if !t::rows_contiguous(dst, dty) || !t::rows_contiguous(b, bty) {
        return Err("rows not contiguous");
    }
    if c.nb[0] != isz {
        return Err("indices not contiguous");
    }
    Ok(())
}

/// A raw pointer that may cross to the worker threads of [`par_ranges`] (each thread writes
/// disjoint rows).
#[derive(Clone, Copy)]
struct SyncPtr(*mut u8);
// SAFETY: only used for disjoint writes / shared reads inside one `par_ranges` call.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the whole `SyncPtr`, not its field).
    fn get(self) -> *mut u8 {
        self.0
    }
}

/// Minimum elements of work per thread before SET_ROWS / the Hadamard product use more than
/// one, when the threads are scoped threads of our own (no OpenMP in the host): a thread costs
/// ~10-20 µs to start, quantizing or rotating 32K elements ~10-30 µs. Decode-sized nodes (one
/// token: a few hundred elements) stay on the caller's thread, prompt-sized ones (hundreds of
/// tokens) use `n_threads`.
pub const MIN_ELEMS_PER_THREAD: usize = 1 << 15;

/// Same, when the threads are the host's OpenMP workers ([`super::team`]): handing work to a
/// spinning worker costs a few µs, so 8K elements per thread are worth it.
pub const MIN_ELEMS_PER_THREAD_OMP: usize = 1 << 13;

/// Minimum multiply-adds of attention (`n_q·n_head·n_kv·(dk+dv)`) per thread before
/// FLASH_ATTN_EXT uses more than one, with scoped threads of our own. Besides the ~20 µs a
/// scoped thread costs, extra threads compete with the host's OpenMP workers, which spin for a
/// while after each CPU split of the graph (measured: llama-bench tg128 at 3.9 t/s instead of
/// 12 on a loaded 2-core machine with a thread per FA node).
pub const MIN_FA_MACS_PER_THREAD: usize = 1 << 21;

/// Same, on the host's OpenMP workers: 256K multiply-adds are ~10 µs of our decode kernel,
/// several times what the hand-over costs (SmolLM2 decode uses both threads from ~300 KV rows).
pub const MIN_FA_MACS_PER_THREAD_OMP: usize = 1 << 18;

/// How many threads `work` units are worth at `min` units per thread, at most `n_threads`.
fn threads_at(work: usize, min: usize, n_threads: usize) -> usize {
    (work / min).clamp(1, n_threads.max(1))
}

/// How many threads `work` elements are worth, at most `n_threads`.
pub fn threads_for(work: usize, n_threads: usize) -> usize {
    let omp = super::team::have_openmp();
    threads_at(
        work,
        if omp {
            MIN_ELEMS_PER_THREAD_OMP
        } else {
            MIN_ELEMS_PER_THREAD
        },
        n_threads,
    )
}

/// How many threads an attention node of `macs` multiply-adds is worth, at most `n_threads`.
pub fn fa_threads_for(macs: usize, n_threads: usize) -> usize {
    let omp = super::team::have_openmp();
    threads_at(
        macs,
        if omp {
            MIN_FA_MACS_PER_THREAD_OMP
        } else {
            MIN_FA_MACS_PER_THREAD
        },
        n_threads,
    )
}

/// Run `f` over `0..n` in `nt` contiguous ranges on a [`super::team`] of `nt` threads (the
/// host's OpenMP workers, or scoped threads with the caller's forced ISA). `nt <= 1`: just
/// `f(0..n)` on the calling thread. The first error (by range) wins; a panic is resumed here.
fn par_ranges<F>(n: usize, nt: usize, f: F) -> Result<(), String>
where
    F: Fn(std::ops::Range<usize>) -> Result<(), String> + Sync,
{
    use crate::par::Team;
    let nt = nt.min(n);
    if nt <= 1 {
        return f(0..n);
    }
    let chunk = n.div_ceil(nt);
    let results: Vec<std::sync::Mutex<Result<(), String>>> =
        (0..nt).map(|_| std::sync::Mutex::new(Ok(()))).collect();
    super::team::team(nt).run(&|t| {
        let r = f((t * chunk).min(n)..((t + 1) * chunk).min(n));
        *results[t].lock().unwrap_or_else(|e| e.into_inner()) = r;
    });
    results
        .into_iter()
        .try_for_each(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
}

thread_local! {
    /// The f32 row buffer of SET_ROWS from f16 (or unaligned f32) rows, reused across calls.
    static ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `ggml_compute_forward_set_rows` (ggml-cpu/ops.cpp): every row `i` of `b` (plane i02,
/// i03) goes through the destination type's `from_float` into row `c[i, i02 % ne11,
/// i03 % ne12]` of `dst`; f16 -> f16 is a copy. Rows are split among `n_threads` threads when
/// the node is big enough ([`threads_for`]) and no destination row is written twice (with
/// duplicate indices the last write wins, as on one thread).
///
/// # Safety
/// `dst` passed [`set_rows_ok`], its data and its sources' data are valid for their extents.
unsafe fn set_rows(dst: &sys::ggml_tensor, n_threads: usize) -> Result<(), String> {
    let b = src(dst, 0)?;
    let c = src(dst, 1)?;
    let dty = t::ty(dst).ok_or("type")?;
    let bty = t::ty(b).ok_or("type")?;
    let fmt = crate::quant::format(dty).map_err(|e| e.to_string())?;
    let isz = t::index_size(c).ok_or("index type")?;
    let [nc, nr, ne02, ne03] = t::dims(b).ok_or("dims")?;
    let [_, ne11, ne12, _] = t::dims(c).ok_or("dims")?;
    let ne1 = dst.ne[1];
    if dst.data.is_null() || b.data.is_null() || c.data.is_null() {
        return Err("tensor without data".into());
    }
    let row_bytes = dty.row_bytes(nc).map_err(|e| e.to_string())?;
    let (db, bb, cb) = (
        SyncPtr(dst.data as *mut u8),
        SyncPtr(b.data as *mut u8),
        SyncPtr(c.data as *mut u8),
    );
    let (c_nb, b_nb, d_nb) = (c.nb, b.nb, dst.nb);

    let index = |i: usize, i02: usize, i03: usize| -> i64 {
        let off = i * c_nb[0] + (i02 % ne11) * c_nb[1] + (i03 % ne12) * c_nb[2];
        // SAFETY: inside c's extent (shape checked); unaligned reads allowed.
        unsafe {
            if isz == 8 {
                std::ptr::read_unaligned(cb.get().add(off) as *const i64)
            } else {
                std::ptr::read_unaligned(cb.get().add(off) as *const i32) as i64
            }
        }
    };
    // Validate every index before writing anything (the CPU backend aborts mid-way instead).
    for i03 in 0..ne03 {
        for i02 in 0..ne02 {
            for i in 0..nr {
                let i1 = index(i, i02, i03);
                if i1 < 0 || i1 >= ne1 {
                    return Err(format!("SET_ROWS index {i1} out of range 0..{ne1}"));
                }
            }
        }
    }
    if let Some(cap) = capture::writer() {
        // SAFETY: shapes and indices checked above; data valid (caller's contract).
        unsafe { capture::set_rows(cap, dst, b, bty, &|i| index(i, 0, 0)) };
    }
    let total = nr * ne02 * ne03;
    let mode = write_mode(dst, b, nc);
    // The quality mode's search costs about ten times the plain quantizer per value.
    let work = total
        * nc
        * if matches!(mode, WriteMode::Exact) {
            1
        } else {
            10
        };
    let mut nt = threads_for(work, n_threads);
    if nt > 1 {
        // Several threads only if no destination row of a plane is written twice.
        let mut seen = vec![0u64; (ne1 as usize).div_ceil(64)];
        'planes: for i03 in 0..ne03 {
            for i02 in 0..ne02 {
                seen.fill(0);
                for i in 0..nr {
                    let i1 = index(i, i02, i03) as usize;
                    let (w, bit) = (i1 / 64, 1u64 << (i1 % 64));
                    if seen[w] & bit != 0 {
                        nt = 1;
                        break 'planes;
                    }
                    seen[w] |= bit;
                }
            }
        }
    }
    // Runs (below) only where one call per run writes what a call per row would: the plain
    // quantizer (the search modes weigh a row as a whole), aligned f32 rows, packed rows.
    let runs = matches!(mode, WriteMode::Exact)
        && fmt.rows_batch()
        && bty == GgmlType::F32
        && [bb.get() as usize, b_nb[2], b_nb[3]]
            .iter()
            .all(|v| v.is_multiple_of(4))
        && b_nb[1] == nc * 4
        && d_nb[1] == row_bytes;
    par_ranges(total, nt, |range| {
        ROW.with(|row| {
            let mut row = row.borrow_mut();
            if row.len() < nc {
                row.resize(nc, 0.0);
            }
            let row = &mut row[..nc];
            let mut u = range.start;
            while u < range.end {
                let (i, p) = (u % nr, u / nr);
                let (i02, i03) = (p % ne02, p / ne02);
                let i1 = index(i, i02, i03) as usize;
                // A run of rows of this plane with consecutive indices, whose source and
                // destination rows are both packed, is one contiguous block on each side:
                // one `from_float` call for all of it (the same bytes as row by row, the
                // formats being blockwise) instead of a call per row — llama.cpp's prefill
                // writes its batch to consecutive cache slots.
                let mut len = 1;
                if runs {
                    while u + len < range.end
                        && i + len < nr
                        && index(i + len, i02, i03) == (i1 + len) as i64
                    {
                        len += 1;
                    }
                }
                u += len;
                // SAFETY: offsets inside the tensors' extents (shape and indices checked);
                // rows written by one thread only (distinct targets, or one thread).
                unsafe {
                    let s = bb.get().add(i * b_nb[1] + i02 * b_nb[2] + i03 * b_nb[3]) as *const u8;
                    let d = std::slice::from_raw_parts_mut(
                        db.get().add(i1 * d_nb[1] + i02 * d_nb[2] + i03 * d_nb[3]),
                        row_bytes * len,
                    );
                    let x: &[f32] = match bty {
                        GgmlType::F32 if (s as usize).is_multiple_of(4) => {
                            std::slice::from_raw_parts(s as *const f32, nc * len)
                        }
                        GgmlType::F32 => {
                            std::ptr::copy_nonoverlapping(s, row.as_mut_ptr() as *mut u8, nc * 4);
                            row
                        }
                        _ if dty == GgmlType::F16 => {
                            // f16 -> f16 is a copy (ggml_compute_forward_set_rows_impl).
                            std::ptr::copy(s, d.as_mut_ptr(), row_bytes);
                            continue;
                        }
                        _ => {
                            let h = std::slice::from_raw_parts(s as *const [u8; 2], nc);
                            crate::quant::fp16::f16_row_to_f32(h, row)
                                .map_err(|e| e.to_string())?;
                            row
                        }
                    };
                    match mode {
                        WriteMode::Exact => fmt.quantize_row(x, d),
                        WriteMode::Search => crate::quant::best::quantize_row_best(dty, x, None, d),
                        WriteMode::Metric(m) => {
                            crate::quant::best::quantize_row_best_metric(dty, x, m, d)
                        }
                    }
                    .map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        })
    })
}

// ---------------------------------------------------------------------------------------
// MUL_MAT with GGML_HINT_SRC0_IS_HADAMARD
// ---------------------------------------------------------------------------------------

/// What the CPU backend accepts for the hinted product (`ggml_backend_cpu_device_supports_op`:
/// src0 f32, dst f32, src1 f32 or f16) and assumes in `ggml_compute_forward_fwht`
/// (ggml-cpu/ops.cpp: n = ne10 a power of two, src1 rows contiguous, dst rows contiguous;
/// src0 is never read, it is `H_n/√n` by the hint's contract), plus `ggml_mul_mat`'s shape
/// rule (dst = [ne01, ne11, ne12, ne13]) with a square src0.
fn hadamard_ok(dst: &sys::ggml_tensor) -> Result<(), &'static str> {
    if t::param_i32(dst, 1) != sys::ggml_op_hint_GGML_HINT_SRC0_IS_HADAMARD as i32 {
        return Err("MUL_MAT without the Hadamard hint");
    }
    let a = src(dst, 0)?;
    let x = src(dst, 1)?;
    if t::ty(a) != Some(GgmlType::F32) || t::ty(dst) != Some(GgmlType::F32) {
        return Err("Hadamard product must be f32 x -> f32");
    }
    let xty = match t::ty(x) {
        Some(ty @ (GgmlType::F32 | GgmlType::F16)) => ty,
        _ => return Err("Hadamard input must be f32 or f16"),
    };
    let (ad, xd, dd) = (
        t::dims(a).ok_or("bad dims")?,
        t::dims(x).ok_or("bad dims")?,
        t::dims(dst).ok_or("bad dims")?,
    );
    let n = xd[0];
    if crate::rotate::check_n(n).is_err() {
        return Err("transform size not a power of two in range");
    }
    if ad[0] != n || ad[1] != n || dd[0] != n || dd[1] != xd[1] || dd[2] != xd[2] || dd[3] != xd[3]
    {
        return Err("shape mismatch");
    }
    let es = xty.block_bytes();
    if x.nb[0] != es || dst.nb[0] != 4 {
        return Err("rows not contiguous");
    }
    if (1..4).any(|i| !x.nb[i].is_multiple_of(es) || !dst.nb[i].is_multiple_of(4)) {
        return Err("strides not whole elements");
    }
    Ok(())
}

/// `ggml_compute_forward_fwht` (ggml-cpu/ops.cpp): every row of `x` rotated into `dst`.
/// Rows (over all planes) are split among `n_threads` threads when the node is big enough
/// ([`threads_for`]); each row's numbers do not depend on the split.
///
/// # Safety
/// `dst` passed [`hadamard_ok`]; data pointers valid for the tensors' extents.
unsafe fn hadamard(dst: &sys::ggml_tensor, n_threads: usize) -> Result<(), String> {
    let x = src(dst, 1)?;
    let xty = t::ty(x).ok_or("type")?;
    let [n, rows, ne12, ne13] = t::dims(x).ok_or("dims")?;
    if x.data.is_null() || dst.data.is_null() {
        return Err("tensor without data".into());
    }
    if hadamard_is_identity(dst) {
        // SAFETY: caller's contract (shapes and strides checked by hadamard_ok).
        return unsafe { identity(x, xty, dst) };
    }
    let es = xty.block_bytes();
    let (xs, ds) = (x.nb[1] / es, dst.nb[1] / 4);
    let src_len = (rows - 1) * xs + n;
    let dst_len = (rows - 1) * ds + n;
    let (x0, xnb, d0, dnb) = (x.data as usize, x.nb, dst.data as usize, dst.nb);
    let plane = move |i12: usize, i13: usize| -> (usize, usize) {
        (
            x0 + i12 * xnb[2] + i13 * xnb[3],
            d0 + i12 * dnb[2] + i13 * dnb[3],
        )
    };
    // Fast path: no plane's source overlaps its destination, sources aligned. Otherwise the
    // careful one-thread path below (copies through a buffer).
    let mut plain = true;
    for i13 in 0..ne13 {
        for i12 in 0..ne12 {
            let (sp, dp) = plane(i12, i13);
            let overlap = sp < dp + dst_len * 4 && dp < sp + src_len * es;
            plain &= !overlap && sp % es == 0;
        }
    }
    if plain {
        let total = rows * ne12 * ne13;
        let nt = threads_for(total * n, n_threads);
        return par_ranges(total, nt, |range| {
            let mut u = range.start;
            while u < range.end {
                let (r0, p) = (u % rows, u / rows);
                let cnt = (rows - r0).min(range.end - u);
                let (sp, dp) = plane(p % ne12, p / ne12);
                // SAFETY: rows r0..r0+cnt of one plane, inside the extents; destination rows
                // are disjoint between ranges; sources do not overlap destinations.
                let r = unsafe {
                    let d = std::slice::from_raw_parts_mut(
                        (dp as *mut f32).add(r0 * ds),
                        (cnt - 1) * ds + n,
                    );
                    if xty == GgmlType::F32 {
                        let s = std::slice::from_raw_parts(
                            (sp as *const f32).add(r0 * xs),
                            (cnt - 1) * xs + n,
                        );
                        crate::rotate::rotate_rows(n, n, cnt, s, xs, d, ds)
                    } else {
                        let s = std::slice::from_raw_parts(
                            (sp as *const u16).add(r0 * xs),
                            (cnt - 1) * xs + n,
                        );
                        crate::rotate::rotate_rows_f16(n, n, cnt, s, xs, d, ds)
                    }
                };
                r.map_err(|e| e.to_string())?;
                u += cnt;
            }
            Ok(())
        });
    }
    for i13 in 0..ne13 {
        for i12 in 0..ne12 {
            let (sp, dp) = plane(i12, i13);
            // SAFETY: offsets inside the extents; the source is copied out first.
            unsafe {
                let d = std::slice::from_raw_parts_mut(dp as *mut f32, dst_len);
                let r = if xty == GgmlType::F32 {
                    let mut tmp = vec![0f32; src_len];
                    std::ptr::copy(sp as *const u8, tmp.as_mut_ptr() as *mut u8, src_len * 4);
                    crate::rotate::rotate_rows(n, n, rows, &tmp, xs, d, ds)
                } else {
                    let mut tmp = vec![0u16; src_len];
                    std::ptr::copy(sp as *const u8, tmp.as_mut_ptr() as *mut u8, src_len * 2);
                    crate::rotate::rotate_rows_f16(n, n, rows, &tmp, xs, d, ds)
                };
                r.map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

/// The policy's "no rotation": `dst = x` (f32 or f16 rows), through a buffer per row so a
/// source overlapping its destination is safe.
///
/// # Safety
/// As [`hadamard`].
unsafe fn identity(
    x: &sys::ggml_tensor,
    xty: GgmlType,
    dst: &sys::ggml_tensor,
) -> Result<(), String> {
    let [n, rows, ne12, ne13] = t::dims(x).ok_or("dims")?;
    let mut row = vec![0f32; n];
    let mut h = vec![[0u8; 2]; if xty == GgmlType::F32 { 0 } else { n }];
    for i13 in 0..ne13 {
        for i12 in 0..ne12 {
            for r in 0..rows {
                // SAFETY: offsets inside the extents (caller).
                unsafe {
                    let sp = (x.data as *const u8).add(r * x.nb[1] + i12 * x.nb[2] + i13 * x.nb[3]);
                    let dp = (dst.data as *mut u8)
                        .add(r * dst.nb[1] + i12 * dst.nb[2] + i13 * dst.nb[3]);
                    if xty == GgmlType::F32 {
                        std::ptr::copy_nonoverlapping(sp, row.as_mut_ptr() as *mut u8, n * 4);
                    } else {
                        std::ptr::copy_nonoverlapping(sp, h.as_mut_ptr() as *mut u8, n * 2);
                        crate::quant::fp16::f16_row_to_f32(&h, &mut row)
                            .map_err(|e| e.to_string())?;
                    }
                    std::ptr::copy(row.as_ptr() as *const u8, dp, n * 4);
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// FLASH_ATTN_EXT
// ---------------------------------------------------------------------------------------

/// `ggml_flash_attn_ext` (ggml.c) plus the asserts of `ggml_compute_forward_flash_attn_ext_f16`
/// (ggml-cpu/ops.cpp) and what [`crate::attn::flash_attn_ext`] takes: q f32, K/V in
/// [`FLASH_ATTN_KV_TYPES`] with contiguous rows (any other strides: views into the cache),
/// optional contiguous f16 mask broadcast over heads/sequences, optional f32 sinks (one per
/// head), f32 output `[DV, n_head, n_q, n_seq]` with contiguous rows, finite op params
/// (`scale`, `max_bias` ≥ 0 needing a mask, `logit_softcap`), precision DEFAULT or F32.
fn flash_attn_ok(dst: &sys::ggml_tensor) -> Result<(), &'static str> {
    let q = src(dst, 0)?;
    let k = src(dst, 1)?;
    let v = src(dst, 2)?;
    if dst.src[5..].iter().any(|p| !p.is_null()) {
        return Err("unexpected extra sources");
    }
    if t::ty(q) != Some(GgmlType::F32) || t::ty(dst) != Some(GgmlType::F32) {
        return Err("q and dst must be f32");
    }
    let kty = t::ty(k)
        .filter(|ty| FLASH_ATTN_KV_TYPES.contains(ty))
        .ok_or("K type not implemented")?;
    let vty = t::ty(v)
        .filter(|ty| FLASH_ATTN_KV_TYPES.contains(ty))
        .ok_or("V type not implemented")?;
    if !fa_claims_types(kty, vty, fa_claims_unquantized_v()) {
        return Err("V not quantized: left to the CPU backend so that -fa auto keeps flash attention (ATTNROT_FA_ALL=1 claims it)");
    }
    let (qd, kd, vd, dd) = (
        t::dims(q).ok_or("bad dims")?,
        t::dims(k).ok_or("bad dims")?,
        t::dims(v).ok_or("bad dims")?,
        t::dims(dst).ok_or("bad dims")?,
    );
    let [dk, n_q, n_head, n_seq] = qd;
    if kd[0] != dk || vd[1] != kd[1] || dk == 0 || vd[0] == 0 {
        return Err("head sizes / KV lengths differ");
    }
    if kd[2] == 0 || vd[2] == 0 || n_head % kd[2] != 0 || n_head % vd[2] != 0 {
        return Err("query heads not a multiple of KV heads");
    }
    if kd[3] != n_seq || vd[3] != n_seq {
        return Err("sequence counts differ");
    }
    if dd != [vd[0], n_head, n_q, n_seq] {
        return Err("dst shape");
    }
    if !t::rows_contiguous(q, GgmlType::F32)
        || !t::rows_contiguous(k, kty)
        || !t::rows_contiguous(v, vty)
    {
        return Err("rows not contiguous");
    }
    if dst.nb[0] != 4 || dst.nb[0] > dst.nb[1] || dst.nb[1] > dst.nb[2] || dst.nb[2] > dst.nb[3] {
        return Err("dst layout");
    }
    if let Some(m) = opt_src(dst, 3) {
        let md = t::dims(m).ok_or("bad dims")?;
        if t::ty(m) != Some(GgmlType::F16) || !is_contiguous(m, GgmlType::F16) {
            return Err("mask must be contiguous f16");
        }
        if md[0] < kd[1]
            || md[1] < n_q
            || md[2] == 0
            || md[3] == 0
            || n_head % md[2] != 0
            || n_seq % md[3] != 0
        {
            return Err("mask shape");
        }
    }
    if let Some(sk) = opt_src(dst, 4) {
        if t::ty(sk) != Some(GgmlType::F32)
            || sk.ne[0] as usize != n_head
            || !is_contiguous(sk, GgmlType::F32)
        {
            return Err("sinks must be contiguous f32, one per head");
        }
    }
    let (scale, max_bias, softcap) = (
        t::param_f32(dst, 0),
        t::param_f32(dst, 1),
        t::param_f32(dst, 2),
    );
    if !scale.is_finite() || !max_bias.is_finite() || !softcap.is_finite() || max_bias < 0.0 {
        return Err("op params");
    }
    if max_bias > 0.0 && dst.src[3].is_null() {
        return Err("max_bias needs a mask");
    }
    let prec = t::param_i32(dst, 3);
    if prec != sys::ggml_prec_GGML_PREC_DEFAULT as i32
        && prec != sys::ggml_prec_GGML_PREC_F32 as i32
    {
        return Err("precision");
    }
    Ok(())
}

fn opt_src(node: &sys::ggml_tensor, i: usize) -> Option<&sys::ggml_tensor> {
    // SAFETY: as in `src`.
    (!node.src[i].is_null()).then(|| unsafe { &*node.src[i] })
}

/// `ggml_is_contiguous`: strides are exactly the packed ones (dims of size 1 ignored).
fn is_contiguous(x: &sys::ggml_tensor, ty: GgmlType) -> bool {
    let Some(d) = t::dims(x) else { return false };
    if x.nb[0] != ty.block_bytes() || d[0] % ty.block_size() != 0 {
        return false;
    }
    let mut next = ty.block_bytes() * (d[0] / ty.block_size());
    for (&n, &nb) in d.iter().zip(x.nb.iter()).skip(1) {
        if n != 1 && nb != next {
            return false;
        }
        next *= n;
    }
    true
}

/// A read-only [`crate::attn::Tensor`] over a ggml tensor's bytes.
///
/// # Safety
/// `x.data` valid for its extent.
unsafe fn attn_view<'a>(x: &'a sys::ggml_tensor) -> Result<crate::attn::Tensor<'a>, String> {
    let ty = t::ty(x).ok_or("type")?;
    let len = t::extent(x, ty).ok_or("extent")?;
    if x.data.is_null() && len > 0 {
        return Err("tensor without data".into());
    }
    let data: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: caller's contract.
        unsafe { std::slice::from_raw_parts(x.data as *const u8, len) }
    };
    Ok(crate::attn::Tensor {
        data,
        ty,
        ne: t::dims(x).ok_or("dims")?,
        nb: x.nb,
    })
}

/// The type the CPU backend converts Q to before its K·Q dot products, if any
/// (`ggml_compute_forward_flash_attn_ext_f16`, ggml-cpu/ops.cpp): the one-chunk kernel
/// (`…_f16_one_chunk`) runs `q_to_vec_dot` = `from_float` of K's `vec_dot_type` (q8_0 for
/// q8_0/q4_0/q5_0/iq4_nl K, q8_1 for q4_1/q5_1, f16, bf16) on every Q row; only the tiled
/// kernel (f32/f16 K of the same type as V, ≥ `GGML_FA_TILE_Q` = 64 query rows, not the
/// split-KV decode path: one query row, one sequence, ≥ 512 KV rows) and f32 K use Q as f32.
///
/// [`crate::attn`] keeps Q in f32 (closer to exact) except in its int8 decode kernel. The
/// backend rounds Q the CPU's way first (`to_float(from_float(q))`, which the int8 kernel
/// re-quantizes to the same bytes), so that it computes what stock llama.cpp computes:
/// on FLASH_ATTN_EXT inputs dumped from llama-perplexity on SmolLM2 (f16 K, q8_0 V, 256
/// query rows) the output's NMSE vs the stock CPU kernel is 1.2e-13 with the rounding and
/// 1.7e-7 without. (q4_1/q5_1 K: stock's q8_1 Q also carries an f16-rounded block sum for
/// the `m` term, which f32 Q does not reproduce — a rounding-level difference.)
pub fn q_rounding(
    k: GgmlType,
    v: GgmlType,
    n_q: usize,
    n_seq: usize,
    n_kv: usize,
) -> Option<GgmlType> {
    let vdt = k.vec_dot_type();
    if vdt == GgmlType::F32 {
        return None;
    }
    let kv_f32_or_f16 = matches!(k, GgmlType::F32 | GgmlType::F16);
    let split_kv = n_q == 1 && n_seq == 1 && kv_f32_or_f16 && k == v && n_kv >= 512;
    let tiled = !split_kv && kv_f32_or_f16 && k == v && n_q >= 64;
    (!tiled).then_some(vdt)
}

thread_local! {
    /// Q rounded to K's `vec_dot_type` (f32 values), reused across calls.
    static QROUND: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// One Q row in K's `vec_dot_type` (bytes).
    static QROW: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Q (`[dk, n_q, n_head, n_seq]`, any row strides) rounded through `ty` into `out`, packed
/// (`out[((i3·n_head + i2)·n_q + i1)·dk ..]`): `to_float(from_float(row))`, the values the
/// CPU's `vec_dot` sees. Rows are split among threads like SET_ROWS.
///
/// # Safety
/// `q.data` valid for its extent, f32 rows contiguous.
unsafe fn round_q(
    q: &sys::ggml_tensor,
    ty: GgmlType,
    out: &mut [f32],
    n_threads: usize,
) -> Result<(), String> {
    let fmt = crate::quant::format(ty).map_err(|e| e.to_string())?;
    let [dk, n_q, n_head, n_seq] = t::dims(q).ok_or("dims")?;
    let rows = n_q * n_head * n_seq;
    let row_bytes = ty.row_bytes(dk).map_err(|e| e.to_string())?;
    let (q0, nb) = (SyncPtr(q.data as *mut u8), q.nb);
    let o0 = SyncPtr(out.as_mut_ptr() as *mut u8);
    if out.len() < rows * dk {
        return Err("Q buffer too small".into());
    }
    par_ranges(rows, threads_for(rows * dk, n_threads), |range| {
        QROW.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < row_bytes {
                b.resize(row_bytes, 0);
            }
            let qb = &mut b[..row_bytes];
            for r in range {
                let (i1, p) = (r % n_q, r / n_q);
                let (i2, i3) = (p % n_head, p / n_head);
                // SAFETY: row inside q's extent (caller) and inside `out` (checked above);
                // rows of `out` are written by one thread each.
                unsafe {
                    let s = q0.get().add(i1 * nb[1] + i2 * nb[2] + i3 * nb[3]);
                    let d = std::slice::from_raw_parts_mut((o0.get() as *mut f32).add(r * dk), dk);
                    if (s as usize).is_multiple_of(4) {
                        let x = std::slice::from_raw_parts(s as *const f32, dk);
                        fmt.quantize_row(x, qb).map_err(|e| e.to_string())?;
                    } else {
                        std::ptr::copy_nonoverlapping(s, d.as_mut_ptr() as *mut u8, dk * 4);
                        fmt.quantize_row(d, qb).map_err(|e| e.to_string())?;
                    }
                    fmt.dequantize_row(qb, d).map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        })
    })
}

/// # Safety
/// `dst` passed [`flash_attn_ok`]; data pointers valid for the tensors' extents; `dst` does
/// not overlap its sources.
unsafe fn flash_attn(dst: &sys::ggml_tensor, n_threads: usize) -> Result<(), String> {
    // SAFETY: caller's contract.
    unsafe {
        let qt = src(dst, 0)?;
        if let Some(cap) = capture::writer() {
            capture::flash_attn(cap, dst);
        }
        let k = attn_view(src(dst, 1)?)?;
        let v = attn_view(src(dst, 2)?)?;
        let [dk, n_q, n_head, n_seq] = t::dims(qt).ok_or("dims")?;
        let round = q_rounding(k.ty, v.ty, n_q, n_seq, k.ne[1]);
        QROUND.with(|qbuf| -> Result<(), String> {
            let mut qbuf = qbuf.borrow_mut();
            let q = match round {
                None => attn_view(qt)?,
                Some(ty) => {
                    let n = dk * n_q * n_head * n_seq;
                    if qbuf.len() < n {
                        qbuf.resize(n, 0.0);
                    }
                    round_q(qt, ty, &mut qbuf[..n], n_threads)?;
                    let ne = [dk, n_q, n_head, n_seq];
                    crate::attn::Tensor {
                        data: std::slice::from_raw_parts(qbuf.as_ptr() as *const u8, n * 4),
                        ty: GgmlType::F32,
                        ne,
                        nb: crate::attn::contiguous_strides(GgmlType::F32, ne)
                            .map_err(|e| e.to_string())?,
                    }
                }
            };
            let mask = match opt_src(dst, 3) {
                Some(m) => Some(attn_view(m)?),
                None => None,
            };
            // Sinks (one f32 per head) copied out: on the stack for up to 256 heads.
            let mut sinks_buf = [0f32; 256];
            let mut sinks_vec = Vec::new();
            let sinks: Option<&[f32]> = match opt_src(dst, 4) {
                None => None,
                Some(sk) => {
                    let n = sk.ne[0] as usize;
                    let out: &mut [f32] = if n <= sinks_buf.len() {
                        &mut sinks_buf[..n]
                    } else {
                        sinks_vec.resize(n, 0f32);
                        &mut sinks_vec[..]
                    };
                    std::ptr::copy_nonoverlapping(
                        sk.data as *const u8,
                        out.as_mut_ptr() as *mut u8,
                        n * 4,
                    );
                    Some(out)
                }
            };
            let prec = if t::param_i32(dst, 3) == sys::ggml_prec_GGML_PREC_F32 as i32 {
                crate::attn::Precision::F32
            } else {
                crate::attn::Precision::Default
            };
            let params = crate::attn::Params {
                scale: t::param_f32(dst, 0),
                max_bias: t::param_f32(dst, 1),
                logit_softcap: t::param_f32(dst, 2),
                precision: prec,
            };
            let len = t::extent(dst, GgmlType::F32).ok_or("extent")?;
            if dst.data.is_null() {
                return Err("tensor without data".into());
            }
            let mut out = crate::attn::TensorMut {
                data: std::slice::from_raw_parts_mut(dst.data as *mut u8, len),
                ne: t::dims(dst).ok_or("dims")?,
                nb: dst.nb,
            };
            let macs = n_q
                .saturating_mul(n_head)
                .saturating_mul(k.ne[1])
                .saturating_mul(dk + v.ne[0]);
            let team = super::team::team(fa_threads_for(macs, n_threads));
            crate::attn::flash_attn_ext_team(
                &q,
                &k,
                &v,
                mask.as_ref(),
                sinks,
                &params,
                &mut out,
                &team,
            )
            .map_err(|e| e.to_string())
        })
    }
}

/// Compute one node. Re-checks [`classify`]; an unclaimed node is an error, never a guess.
///
/// # Safety
/// `node` must be a valid tensor of the host's ggml whose data (and its sources' data) is
/// allocated in host memory.
pub unsafe fn compute(node: *mut sys::ggml_tensor, n_threads: usize) -> Result<(), String> {
    // SAFETY: caller's contract.
    let node = unsafe { &*node };
    let kind = classify(node).map_err(|why| {
        format!(
            "node {:?} (op {}) reached graph_compute but is not supported: {why}",
            t::name(node),
            node.op
        )
    })?;
    if kind == Kind::NoOp || t::is_empty(node) {
        return Ok(());
    }
    // SAFETY: classified; caller's contract on data.
    unsafe {
        match kind {
            Kind::SetRows => set_rows(node, n_threads),
            Kind::Hadamard => hadamard(node, n_threads),
            Kind::FlashAttn => flash_attn(node, n_threads),
            Kind::NoOp => Ok(()),
        }
    }
}

/// `ATTNROT_CAPTURE`: the K/V rows SET_ROWS writes and the Q rows FLASH_ATTN_EXT reads,
/// appended to a capture directory ([`crate::capture`] has the format). Off (one atomic
/// load per node) unless the variable is set; read once per process.
mod capture {
    use super::{src, sys, t};
    use crate::capture::{
        Event, Kind, Writer, Written, CAPTURE_ENV, CAPTURE_MAX_MB_ENV, DEFAULT_MAX_MB,
    };
    use crate::ggml::host::log_warn;
    use crate::GgmlType;
    use std::sync::{Mutex, OnceLock};

    /// The writer, if `ATTNROT_CAPTURE` is set and its directory could be created.
    pub fn writer() -> Option<&'static Mutex<Writer>> {
        static W: OnceLock<Option<Mutex<Writer>>> = OnceLock::new();
        W.get_or_init(|| {
            let dir = std::env::var_os(CAPTURE_ENV).filter(|d| !d.is_empty())?;
            let mb = match std::env::var(CAPTURE_MAX_MB_ENV) {
                Err(_) => DEFAULT_MAX_MB,
                Ok(v) => match v.trim().parse::<u64>() {
                    Ok(mb) if mb > 0 => mb,
                    _ => {
                        log_warn(&format!(
                            "{CAPTURE_MAX_MB_ENV}={v:?} is not a positive number of MB; using {DEFAULT_MAX_MB}"
                        ));
                        DEFAULT_MAX_MB
                    }
                },
            };
            let dir = std::path::PathBuf::from(dir);
            match Writer::create(&dir, mb.saturating_mul(1 << 20)) {
                Ok(w) => {
                    log_warn(&format!(
                        "{CAPTURE_ENV}: capturing the K/V rows of claimed SET_ROWS nodes and the Q of claimed FLASH_ATTN_EXT nodes into {} (limit {mb} MB)",
                        dir.display()
                    ));
                    Some(Mutex::new(w))
                }
                Err(e) => {
                    log_warn(&format!(
                        "{CAPTURE_ENV}: cannot create {}: {e}; nothing is captured",
                        dir.display()
                    ));
                    None
                }
            }
        })
        .as_ref()
    }

    fn write(cap: &Mutex<Writer>, ev: Event, data: &[f32], index: Option<&[i64]>) {
        let mut w = cap.lock().unwrap_or_else(|e| e.into_inner());
        if let Written::StoppedNow(msg) = w.write(ev, data, index) {
            log_warn(&format!("{CAPTURE_ENV}: {msg}"));
        }
    }

    fn stopped(cap: &Mutex<Writer>) -> bool {
        cap.lock().unwrap_or_else(|e| e.into_inner()).is_stopped()
    }

    /// The Hadamard size if `x` is (a view/reshape/permute/copy of) a MUL_MAT carrying
    /// llama.cpp's Hadamard hint: `llama_mul_mat_hadamard` (src/llama-impl.h) reshapes its
    /// input to `[n, …]`, multiplies by the `n×n` matrix and reshapes back; the graph then
    /// views (`cpy_k`/`cpy_v`, src/llama-kv-cache.cpp) or permutes (Q) the result.
    pub fn rotation_of(mut x: &sys::ggml_tensor) -> Option<usize> {
        for _ in 0..8 {
            if x.op == sys::ggml_op_GGML_OP_MUL_MAT {
                if t::param_i32(x, 1) != sys::ggml_op_hint_GGML_HINT_SRC0_IS_HADAMARD as i32 {
                    return None;
                }
                return src(x, 0).ok().map(|a| a.ne[0] as usize);
            }
            if !(t::is_noop(x.op) || x.op == sys::ggml_op_GGML_OP_CONT) {
                return None;
            }
            x = src(x, 0).ok()?;
        }
        None
    }

    /// `(is_k, layer)` of the KV cache tensor `x` views (through `view_src`), from its name.
    pub fn cache_layer(x: &sys::ggml_tensor) -> Option<(bool, u32)> {
        let mut root = x;
        for _ in 0..8 {
            if let Some(l) = crate::capture::parse_cache_name(&t::name(root)) {
                return Some(l);
            }
            if root.view_src.is_null() {
                break;
            }
            // SAFETY: ggml keeps a view's source alive as long as the view.
            root = unsafe { &*root.view_src };
        }
        None
    }

    /// Capture the rows of a SET_ROWS into a KV cache (`dst` a view of `cache_k_l<N>` /
    /// `cache_v_l<N>`): one row per token (not the transposed V cache of non-FA runs, whose
    /// rows are single elements), one plane.
    ///
    /// # Safety
    /// `dst` passed `set_rows_ok`, `index(i)` is valid for `i < nr`, data valid.
    pub unsafe fn set_rows(
        cap: &Mutex<Writer>,
        dst: &sys::ggml_tensor,
        b: &sys::ggml_tensor,
        bty: GgmlType,
        index: &dyn Fn(usize) -> i64,
    ) {
        let Some((is_k, layer)) = cache_layer(dst) else {
            return;
        };
        let Some([nc, nr, ne02, ne03]) = t::dims(b) else {
            return;
        };
        if ne02 * ne03 != 1 || nc < 2 || stopped(cap) {
            return;
        }
        let mut data = vec![0f32; nc * nr];
        for (i, row) in data.chunks_exact_mut(nc).enumerate() {
            // SAFETY: row i of b inside its extent (caller).
            unsafe {
                let s = (b.data as *const u8).add(i * b.nb[1]);
                if bty == GgmlType::F32 {
                    std::ptr::copy_nonoverlapping(s, row.as_mut_ptr() as *mut u8, nc * 4);
                } else {
                    for (j, o) in row.iter_mut().enumerate() {
                        let h = std::ptr::read_unaligned((s as *const u16).add(j));
                        *o = half::f16::from_bits(h).to_f32();
                    }
                }
            }
        }
        let idx: Vec<i64> = (0..nr).map(index).collect();
        // K/V rows are a view of the [head_dim, n_head_kv, n_tokens] tensor
        let head_dim = src(b, 0)
            .ok()
            .filter(|_| b.op == sys::ggml_op_GGML_OP_VIEW)
            .map(|x| x.ne[0] as usize)
            .filter(|&h| h > 0 && nc % h == 0)
            .unwrap_or(0);
        let rot = rotation_of(b);
        let ev = Event {
            seq: 0,
            kind: if is_k { Kind::K } else { Kind::V },
            layer,
            file: String::new(),
            shape: vec![nr, nc],
            rotated: rot.is_some(),
            rot_n: rot.unwrap_or(0),
            cache_type: t::ty(dst).map_or("?", |t| t.name()).to_string(),
            head_dim,
            n_head_kv: nc.checked_div(head_dim).unwrap_or(0),
            n_kv: 0,
            dv: 0,
            scale: 0.0,
            softcap: 0.0,
            v_type: String::new(),
        };
        write(cap, ev, &data, Some(&idx));
    }

    /// Capture the f32 Q of a FLASH_ATTN_EXT over a KV cache (K a view of `cache_k_l<N>`),
    /// packed as `[n_seq, n_head, n_q, dk]`.
    pub fn flash_attn(cap: &Mutex<Writer>, dst: &sys::ggml_tensor) {
        let (Ok(q), Ok(k), Ok(v)) = (src(dst, 0), src(dst, 1), src(dst, 2)) else {
            return;
        };
        let Some((true, layer)) = cache_layer(k) else {
            return;
        };
        let (Some([dk, n_q, n_head, n_seq]), Some(kd), Some(vd)) =
            (t::dims(q), t::dims(k), t::dims(v))
        else {
            return;
        };
        if q.data.is_null() || stopped(cap) {
            return;
        }
        let mut data = vec![0f32; dk * n_q * n_head * n_seq];
        for (r, row) in data.chunks_exact_mut(dk).enumerate() {
            let (i1, p) = (r % n_q, r / n_q);
            let (i2, i3) = (p % n_head, p / n_head);
            // SAFETY: flash_attn_ok checked an f32 Q with contiguous rows; the row is inside
            // Q's extent.
            unsafe {
                let s = (q.data as *const u8).add(i1 * q.nb[1] + i2 * q.nb[2] + i3 * q.nb[3]);
                std::ptr::copy_nonoverlapping(s, row.as_mut_ptr() as *mut u8, dk * 4);
            }
        }
        let rot = rotation_of(q);
        let ev = Event {
            seq: 0,
            kind: Kind::Q,
            layer,
            file: String::new(),
            shape: vec![n_seq, n_head, n_q, dk],
            rotated: rot.is_some(),
            rot_n: rot.unwrap_or(0),
            cache_type: t::ty(k).map_or("?", |t| t.name()).to_string(),
            head_dim: dk,
            n_head_kv: kd[2],
            n_kv: kd[1],
            dv: vd[0],
            scale: t::param_f32(dst, 0),
            softcap: t::param_f32(dst, 2),
            v_type: t::ty(v).map_or("?", |t| t.name()).to_string(),
        };
        write(cap, ev, &data, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_rounding_follows_the_cpu_kernel_choice() {
        use GgmlType::*;
        // quantized K: always the one-chunk kernel, Q -> vec_dot_type
        assert_eq!(q_rounding(Q8_0, Q8_0, 256, 1, 256), Some(Q8_0));
        assert_eq!(q_rounding(Q4_0, Q4_0, 1, 1, 4096), Some(Q8_0));
        assert_eq!(q_rounding(Q4_1, Q8_0, 3, 1, 96), Some(Q8_1));
        assert_eq!(q_rounding(Q5_1, Q5_1, 3, 1, 96), Some(Q8_1));
        assert_eq!(q_rounding(IQ4_NL, F16, 3, 1, 96), Some(Q8_0));
        assert_eq!(q_rounding(BF16, BF16, 256, 1, 256), Some(BF16));
        // f16 K: tiled (f32 Q) only with V of the same type and >= 64 query rows
        assert_eq!(q_rounding(F16, F16, 64, 1, 256), None);
        assert_eq!(q_rounding(F16, F16, 63, 1, 256), Some(F16));
        assert_eq!(q_rounding(F16, Q8_0, 256, 1, 256), Some(F16));
        // split-KV decode path (one row, one sequence, >= 512 KV) is one-chunk too
        assert_eq!(q_rounding(F16, F16, 1, 1, 512), Some(F16));
        assert_eq!(q_rounding(F16, F16, 1, 2, 512), Some(F16));
        // f32 K: Q stays f32
        assert_eq!(q_rounding(F32, F32, 1, 1, 16), None);
        assert_eq!(q_rounding(F32, Q8_0, 1, 1, 16), None);
    }

    /// Rounding Q through q8_0 (f16, bf16) and quantizing the result again (what the int8
    /// decode kernel of `crate::attn` does) gives the same bytes; q8_1 the same quants.
    #[test]
    fn q_rounding_is_idempotent() {
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q8_1,
            GgmlType::F16,
            GgmlType::BF16,
        ] {
            let f = crate::quant::format(ty).unwrap();
            for trial in 0..200 {
                let scale = 10f32.powi(trial % 7 - 3);
                let x: Vec<f32> = (0..128).map(|_| next() * scale).collect();
                let n = ty.row_bytes(x.len()).unwrap();
                let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
                let mut r = vec![0f32; x.len()];
                f.quantize_row(&x, &mut a).unwrap();
                f.dequantize_row(&a, &mut r).unwrap();
                f.quantize_row(&r, &mut b).unwrap();
                if ty == GgmlType::Q8_1 {
                    // Same d and quants; the f16 block sum `s` (bytes 2..4) is recomputed from
                    // the rounded values (used by q4_1/q5_1 K only, not by the int8 kernel).
                    for (ba, bb) in a.chunks(36).zip(b.chunks(36)) {
                        assert_eq!((&ba[..2], &ba[4..]), (&bb[..2], &bb[4..]), "q8_1 {trial}");
                    }
                } else {
                    assert_eq!(a, b, "{ty:?} trial {trial}");
                }
            }
        }
    }

    #[test]
    fn set_rows_claims() {
        for &t in SET_ROWS_TYPES {
            assert!(set_rows_claims_type(t, true), "{t} with ATTNROT_FA_ALL");
            assert_eq!(
                set_rows_claims_type(t, false),
                t.is_quantized(),
                "{t} by default"
            );
        }
        assert!(!set_rows_claims_type(GgmlType::F32, true));
    }

    #[test]
    fn parse_ops_env() {
        assert_eq!(parse_ops(""), ([false; 3], vec![]));
        assert_eq!(parse_ops("hadamard"), ([false, true, false], vec![]));
        assert_eq!(parse_ops(" FA , set_rows,"), ([true, false, true], vec![]));
        assert_eq!(
            parse_ops("fa,rope"),
            ([false, false, true], vec!["rope".to_string()])
        );
    }

    #[test]
    fn threads_for_thresholds() {
        assert_eq!(threads_for(0, 4), 1);
        assert_eq!(threads_for(192, 2), 1);
        assert_eq!(threads_for(MIN_ELEMS_PER_THREAD * 2, 2), 2);
        assert_eq!(threads_for(MIN_ELEMS_PER_THREAD * 100, 2), 2);
        assert_eq!(threads_for(MIN_ELEMS_PER_THREAD * 100, 0), 1);
        assert_eq!(fa_threads_for(0, 4), 1);
        assert_eq!(fa_threads_for(MIN_FA_MACS_PER_THREAD * 3, 2), 2);
        assert_eq!(fa_threads_for(MIN_FA_MACS_PER_THREAD_OMP - 1, 4), 1);
    }

    #[test]
    fn par_ranges_covers_every_index_once() {
        for (n, nt) in [(0, 3), (1, 4), (7, 3), (100, 2), (5, 8)] {
            let hits: Vec<std::sync::atomic::AtomicUsize> =
                (0..n).map(|_| Default::default()).collect();
            par_ranges(n, nt, |r| {
                for i in r {
                    hits[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            })
            .unwrap();
            assert!(hits
                .iter()
                .all(|h| h.load(std::sync::atomic::Ordering::Relaxed) == 1));
        }
        let e = par_ranges(
            10,
            2,
            |r| if r.start > 0 { Err("x".into()) } else { Ok(()) },
        );
        assert!(e.is_err());
    }

    /// A contiguous tensor description over `data`.
    fn tensor(ty: sys::ggml_type, es: usize, ne: [usize; 4], data: *mut u8) -> sys::ggml_tensor {
        let mut x = t::zeroed();
        x.type_ = ty;
        let row = if ty == sys::ggml_type_GGML_TYPE_Q8_0 {
            ne[0] / 32 * 34
        } else {
            ne[0] * es
        };
        x.ne = ne.map(|n| n as i64);
        x.nb = [es, row, row * ne[1], row * ne[1] * ne[2]];
        x.data = data as *mut std::ffi::c_void;
        x
    }

    /// SET_ROWS of the f32 rows `src` (`[nc, nr, planes, 1]`) by the i64 indices `idx`
    /// (`[nr, idx_rows, 1, 1]`) into a zeroed q8_0 tensor `[nc, ne1, planes, 1]`, on `nt`
    /// threads: the destination's bytes.
    fn set_rows_q8(
        src: &mut [f32],
        [nc, nr, planes]: [usize; 3],
        idx: &mut [i64],
        idx_rows: usize,
        ne1: usize,
        nt: usize,
    ) -> Vec<u8> {
        let rb = GgmlType::Q8_0.row_bytes(nc).unwrap();
        let mut dst = vec![0u8; rb * ne1 * planes];
        let mut b = tensor(
            sys::ggml_type_GGML_TYPE_F32,
            4,
            [nc, nr, planes, 1],
            src.as_mut_ptr() as *mut u8,
        );
        let mut c = tensor(
            sys::ggml_type_GGML_TYPE_I64,
            8,
            [nr, idx_rows, 1, 1],
            idx.as_mut_ptr() as *mut u8,
        );
        let mut d = tensor(
            sys::ggml_type_GGML_TYPE_Q8_0,
            34,
            [nc, ne1, planes, 1],
            dst.as_mut_ptr(),
        );
        d.op = sys::ggml_op_GGML_OP_SET_ROWS;
        d.src[0] = &mut b;
        d.src[1] = &mut c;
        assert_eq!(classify(&d), Ok(Kind::SetRows));
        // SAFETY: the descriptions point at live buffers of the right sizes.
        unsafe { compute(&mut d, nt) }.unwrap();
        dst
    }

    /// SET_ROWS over two planes, each with its own index row, whose slots continue across
    /// the planes (plane 0 writes 10..310, plane 1 310..610): a run of consecutive slots never
    /// crosses into the next plane, every row lands where `quantize_row` row by row puts it,
    /// and no other slot is touched, on 1 and 2 threads.
    #[test]
    fn set_rows_runs_stay_in_their_plane() {
        let (nc, nr, ne1) = (256usize, 300usize, 640usize);
        let mut src: Vec<f32> = (0..nc * nr * 2)
            .map(|i| ((i * 37) % 101) as f32 - 50.0)
            .collect();
        let mut idx: Vec<i64> = (10..610).collect();
        let fmt = crate::quant::format(GgmlType::Q8_0).unwrap();
        let rb = GgmlType::Q8_0.row_bytes(nc).unwrap();
        for nt in [1usize, 2] {
            assert_eq!(
                threads_for(nc * nr * 2, nt),
                nt,
                "big enough for {nt} threads"
            );
            let dst = set_rows_q8(&mut src, [nc, nr, 2], &mut idx, 2, ne1, nt);
            let mut want = vec![0u8; rb];
            let mut written = vec![false; ne1 * 2];
            for plane in 0..2 {
                for i in 0..nr {
                    let r = idx[plane * nr + i] as usize;
                    fmt.quantize_row(&src[(plane * nr + i) * nc..][..nc], &mut want)
                        .unwrap();
                    let at = (plane * ne1 + r) * rb;
                    assert_eq!(
                        &dst[at..at + rb],
                        &want[..],
                        "plane {plane} row {i} nt {nt}"
                    );
                    written[plane * ne1 + r] = true;
                }
            }
            for (slot, _) in written.iter().enumerate().filter(|(_, w)| !**w) {
                let at = slot * rb;
                assert!(
                    dst[at..at + rb].iter().all(|&v| v == 0),
                    "slot {slot} nt {nt}"
                );
            }
        }
    }

    /// SET_ROWS split over threads writes exactly what one thread writes, and what
    /// `quantize_row` gives row by row; duplicate targets fall back to one thread (last wins).
    #[test]
    fn set_rows_threads_match_one_thread() {
        let (nc, nr, ne1) = (256usize, 600usize, 700usize);
        let mut state = 0x2545f4914f6cdd1du64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut src: Vec<f32> = (0..nc * nr)
            .map(|_| (rnd() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect();
        let fmt = crate::quant::format(GgmlType::Q8_0).unwrap();
        let rb = GgmlType::Q8_0.row_bytes(nc).unwrap();
        for (pattern, dup) in [0, 1, 2].into_iter().flat_map(|p| [(p, false), (p, true)]) {
            // a permutation of 0..ne1 (first nr); runs of consecutive slots (prefill into
            // a cache: one `from_float` call per run) of lengths 1..=40 at random places;
            // or all of it one run at an offset. Each with or without a duplicated target.
            let mut perm: Vec<i64> = (0..ne1 as i64).collect();
            for i in (1..ne1).rev() {
                perm.swap(i, (rnd() % (i as u64 + 1)) as usize);
            }
            let mut idx: Vec<i64> = match pattern {
                0 => perm[..nr].to_vec(),
                1 => {
                    let mut v = Vec::new();
                    while v.len() < nr {
                        let len = (1 + rnd() % 40) as usize;
                        let at = (rnd() % (ne1 - len) as u64) as i64;
                        v.extend((at..).take(len));
                    }
                    v.truncate(nr);
                    v
                }
                _ => (77..).take(nr).collect(),
            };
            if dup {
                idx[nr - 1] = idx[3];
            }
            let mut outs = Vec::new();
            for nt in [1usize, 2, 3] {
                assert!(threads_for(nc * nr, nt) == nt.min(4));
                let dst = set_rows_q8(&mut src, [nc, nr, 1], &mut idx, 1, ne1, nt);
                outs.push(dst);
            }
            assert_eq!(outs[0], outs[1], "pattern {pattern} dup={dup}");
            assert_eq!(outs[0], outs[2], "pattern {pattern} dup={dup}");
            let mut want = vec![0u8; rb];
            for (i, &r) in idx.iter().enumerate() {
                if idx[i + 1..].contains(&r) {
                    continue; // overwritten by a later row
                }
                fmt.quantize_row(&src[i * nc..(i + 1) * nc], &mut want)
                    .unwrap();
                assert_eq!(
                    &outs[0][r as usize * rb..][..rb],
                    &want[..],
                    "row {i} pattern {pattern} dup={dup}"
                );
            }
        }
    }
}
