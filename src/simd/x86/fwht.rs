//! x86 kernels (fwht). Owned by the fwht work; see the safe wrappers for contracts.
