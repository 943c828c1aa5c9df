//! x86-64 kernels. Every function here is `unsafe` with `#[target_feature]`; callers in
//! the safe modules check [`super::isa()`] first.
#![allow(clippy::missing_safety_doc)]

/// Runs `$body` for the query rows `0..$mr` in groups of 4 and then the 1–3 left: `$m` is the
/// group's first row and `$r` a `const usize` with its size (for `::<…, $r>` kernels).
macro_rules! by_fours {
    ($mr:expr, |$m:ident, $r:ident| $body:expr) => {{
        let mr: usize = $mr;
        let mut $m = 0usize;
        while $m + 4 <= mr {
            {
                const $r: usize = 4;
                $body;
            }
            $m += 4;
        }
        match mr - $m {
            3 => {
                const $r: usize = 3;
                $body;
            }
            2 => {
                const $r: usize = 2;
                $body;
            }
            1 => {
                const $r: usize = 1;
                $body;
            }
            _ => {}
        }
    }};
}

/// Runs `$body` for the 32-column groups `0..$nb` two at a time, then the one left: `$g` is
/// the pass's first group and `$ng` a `const usize` with its number of groups (2 or 1).
macro_rules! by_pairs {
    ($nb:expr, |$g:ident, $ng:ident| $body:expr) => {{
        let nb: usize = $nb;
        let mut $g = 0usize;
        while $g + 2 <= nb {
            {
                const $ng: usize = 2;
                $body;
            }
            $g += 2;
        }
        if $g < nb {
            const $ng: usize = 1;
            $body;
        }
    }};
}

pub mod attn;
pub mod attn_avx2;
pub mod f16;
pub mod fwht;
pub mod q4;
pub mod q8;
pub mod rows;
