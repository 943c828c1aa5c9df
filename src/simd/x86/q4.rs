//! x86 kernels (q4_0, q4_1, q5_0, q5_1, iq4_nl). Owned by the quant work; see the safe wrappers for contracts.
