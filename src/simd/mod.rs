//! The only module that uses `core::arch`.
//!
//! Pattern (after zlib-rs): a safe wrapper in the format/kernel module asks [`isa()`] which
//! variant to run and calls a `#[target_feature]` kernel from the `x86` submodule. Detection
//! runs once and is cached in an atomic; tests force each variant with [`with_isa`] (per
//! thread) or the whole process with `ATTNROT_ISA=scalar|avx2|avx512` (read once).
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

#[cfg(target_arch = "x86_64")]
pub mod x86;

/// Instruction-set levels attnrot has kernels for, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, no `core::arch`.
    Scalar = 1,
    /// AVX2 + FMA + F16C (+ BMI2).
    Avx2 = 2,
    /// AVX-512 F/BW/VL/DQ on top of `Avx2`.
    Avx512 = 3,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    pub fn from_name(s: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s))
    }

    fn from_u8(v: u8) -> Isa {
        match v {
            3 => Isa::Avx512,
            2 => Isa::Avx2,
            _ => Isa::Scalar,
        }
    }
}

static DETECTED: AtomicU8 = AtomicU8::new(0);
static GLOBAL: AtomicU8 = AtomicU8::new(0);

/// Entries of a per-ISA kernel table indexed by [`slot`] (only `0..=4` are ever returned;
/// the table has 8 so that `slot() & 7` needs no bounds check).
pub const SLOTS: usize = 8;

thread_local! {
    static FORCED: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// Bits 0..8: the process-wide [`slot`] (0 until [`global`] has run). Bits 8..: how many
/// [`with_isa`] scopes are active on any thread (`FORCING_ONE` each). While there are none,
/// [`isa()`] skips the thread-local lookup and [`slot`] is this word's low bits (one relaxed
/// load per call).
static STATE: AtomicUsize = AtomicUsize::new(0);
const FORCING_ONE: usize = 1 << 8;

/// Whether no [`with_isa`] scope is active on any thread.
#[inline(always)]
fn not_forcing() -> bool {
    STATE.load(Ordering::Relaxed) < FORCING_ONE
}

/// The best ISA this CPU supports (detected once).
pub fn detected() -> Isa {
    let v = DETECTED.load(Ordering::Relaxed);
    if v != 0 {
        return Isa::from_u8(v);
    }
    let isa = detect();
    DETECTED.store(isa as u8, Ordering::Relaxed);
    isa
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        Isa::Avx512
    } else if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        Isa::Avx2
    } else {
        Isa::Scalar
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Scalar
}

/// The process-wide ISA: the detected one, or `ATTNROT_ISA` if set (never above detected).
pub fn global() -> Isa {
    let v = GLOBAL.load(Ordering::Relaxed);
    if v != 0 {
        return Isa::from_u8(v);
    }
    let det = detected();
    let isa = match std::env::var("ATTNROT_ISA") {
        Ok(s) => Isa::from_name(s.trim()).map(|i| i.min(det)).unwrap_or(det),
        Err(_) => det,
    };
    // every thread that gets here computes the same slot, so or-ing it in is idempotent
    STATE.fetch_or(slot_of(isa) as usize, Ordering::Relaxed);
    GLOBAL.store(isa as u8, Ordering::Relaxed);
    isa
}

/// The ISA kernels on this thread should use right now.
///
/// A thread inside [`with_isa`] incremented the count in `STATE` before setting its override, so it
/// always sees its own override; other threads may look at their (empty) override for a
/// while, which gives the same answer.
#[inline]
pub fn isa() -> Isa {
    if not_forcing() {
        let v = GLOBAL.load(Ordering::Relaxed);
        if v != 0 {
            return Isa::from_u8(v);
        }
        return global();
    }
    match FORCED.with(|f| f.get()) {
        Some(i) => i,
        None => global(),
    }
}

/// [`isa()`] with no call on its fast path (so a dispatching wrapper needs no stack frame):
/// `None` while a [`with_isa`] scope is active on any thread or before the process-wide ISA
/// is known; callers then fall back to [`isa()`].
#[inline(always)]
pub fn isa_fast() -> Option<Isa> {
    if not_forcing() {
        let v = GLOBAL.load(Ordering::Relaxed);
        if v != 0 {
            return Some(Isa::from_u8(v));
        }
    }
    None
}

/// The table slot of the process-wide `isa`: `isa as u8`, or 4 for AVX-512 with both
/// VNNI and BF16 (whose table entries call those kernels directly).
fn slot_of(isa: Isa) -> u8 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && x86::q8::has_vnni() && x86::f16::has_avx512bf16() {
        return 4;
    }
    isa as u8
}

/// Index into a per-ISA kernel table ([`SLOTS`] entries) for code that reaches a kernel
/// through one indirect call (`quant::FormatOps`), decided without any call on the fast path:
/// * 0 before the process-wide ISA is known: the entry must run the full dispatch ([`isa()`]);
/// * 1 = [`Isa::Scalar`], 2 = [`Isa::Avx2`], 3 = [`Isa::Avx512`] (entries may still check
///   VNNI / BF16 at run time), 4 = `Isa::Avx512` with AVX512-VNNI and AVX512-BF16.
///
/// Inside a [`with_isa`] scope, the slot of the forced ISA (so the differential tests run
/// the same table entries as production). Only ever names kernels the CPU can run.
#[inline(always)]
pub fn slot() -> usize {
    let s = STATE.load(Ordering::Relaxed);
    if s < FORCING_ONE {
        s & (SLOTS - 1)
    } else {
        forced_slot()
    }
}

/// [`slot`] while a [`with_isa`] scope is active somewhere (this thread's [`isa()`]).
#[cold]
#[inline(never)]
fn forced_slot() -> usize {
    slot_of(isa()) as usize
}

/// Run `f` with kernels on this thread forced to `isa` (clamped to what the CPU has).
/// Returns `None` (and does not run `f`) if the CPU lacks `isa`.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> Option<R> {
    if isa > detected() {
        return None;
    }
    STATE.fetch_add(FORCING_ONE, Ordering::Relaxed);
    let prev = FORCED.with(|c| c.replace(Some(isa)));
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
            STATE.fetch_sub(FORCING_ONE, Ordering::Relaxed);
        }
    }
    let _r = Restore(prev);
    Some(f())
}

/// Every ISA this CPU can run, lowest first.
pub fn available() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| *i <= detected()).collect()
}
