//! The plain C API (`ffi/attnrot.h`): status codes, null/length checks, no panic across the boundary.
