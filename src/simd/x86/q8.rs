//! x86 kernels (q8_0 / q8_1). Owned by the q8 work; see the safe wrappers for contracts.
