//! Normalized Walsh–Hadamard rotation (fast transform) and upstream's rotation plan.
