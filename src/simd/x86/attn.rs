//! x86 kernels (attn). Owned by the attn work; see the safe wrappers for contracts.
