//! Reference: setrows on upstream's CPU backend (a real ggml graph).
