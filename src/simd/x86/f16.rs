//! x86 kernels (f16). Owned by the f16 work; see the safe wrappers for contracts.
