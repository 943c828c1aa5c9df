//! One error type for the Rust API; the C API maps it onto status codes.
use crate::types::GgmlType;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("length {len} is not a multiple of the block size {block} of {ty}")]
    NotBlockMultiple {
        ty: GgmlType,
        len: usize,
        block: usize,
    },
    #[error("buffer too small: {what} needs {need} but has {have}")]
    BufferTooSmall {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("unsupported type {0:?} for this operation")]
    UnsupportedType(GgmlType),
    #[error("unknown ggml type id {0}")]
    UnknownType(i64),
    #[error("bad shape: {0}")]
    BadShape(String),
    #[error("bad parameter: {0}")]
    BadParam(String),
    #[error("size overflow")]
    Overflow,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
