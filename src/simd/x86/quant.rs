//! x86 kernels (quant). Owned by the quant work; see the safe wrappers for contracts.
