//! Reference: fattn on upstream's CPU backend (a real ggml graph).
