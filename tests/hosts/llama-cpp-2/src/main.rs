//! A Rust program on `llama-cpp-2` 0.1.160 with its `dynamic-backends` feature, written the way
//! a user of the crate would (its public API only), driven by attnrot's opt-in test
//! `tests/llama_cpp_2.rs` with and without `GGML_BACKEND_PATH=libattnrot.so`.
//!
//! usage: attnrot-llama-cpp-2-host <model.gguf> <q8_0|q4_0|f16> <text file> <positions> <logits out>
//! 1. `load_backends()` (ggml's `ggml_backend_load_all_from_path` over the crate's backends
//!    directory: the best `libggml-cpu-<variant>.so`, then `GGML_BACKEND_PATH` if set), then
//!    `LlamaBackend::init`; llama.cpp's log goes to stderr (the crate's default);
//! 2. a context of 512 tokens with the K and V cache of the given type, flash attention
//!    `auto` (llama.cpp's default), one sequence, one thread;
//! 3. greedy completion (64 tokens) of a fixed prompt;
//! 4. the cache cleared, the first <positions> tokens of the text decoded in one batch with
//!    logits for every position, written as float32 [positions][n_vocab] to <logits out>.
//! stdout: one line `text=<json-escaped text>` and one `n_vocab=<n>`.
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::llama_backend::{load_backends, LlamaBackend};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use std::io::Write;
use std::num::NonZeroU32;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        eprintln!("usage: {} <model.gguf> <q8_0|q4_0|f16> <text file> <positions> <logits out>", a[0]);
        std::process::exit(2);
    }
    let (model_path, ty, text_file, logits_out) = (&a[1], a[2].as_str(), &a[3], &a[5]);
    let positions: usize = a[4].parse()?;
    let kv = match ty {
        "q8_0" => KvCacheType::Q8_0,
        "q4_0" => KvCacheType::Q4_0,
        "f16" => KvCacheType::F16,
        _ => return Err(format!("cache type {ty}?").into()),
    };

    load_backends();
    let backend = LlamaBackend::init()?;
    let model = LlamaModel::load_from_file(&backend, model_path, &LlamaModelParams::default())?;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(512))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_threads(1)
        .with_n_threads_batch(1)
        .with_type_k(kv)
        .with_type_v(kv);
    let mut ctx = model.new_context(&backend, params)?;
    let vocab = model.vocab();
    let n_vocab = model.n_vocab() as usize;

    // greedy completion
    let prompt = vocab.tokenize(b"The capital of France is", true, false);
    let mut batch = LlamaBatch::new(512, 1);
    for (i, &t) in prompt.iter().enumerate() {
        batch.add(t, i as i32, &[0], i + 1 == prompt.len())?;
    }
    ctx.decode(&mut batch)?;
    let mut text = Vec::new();
    let mut pos = prompt.len() as i32;
    for _ in 0..64 {
        let row = ctx.get_logits_ith(batch.n_tokens() - 1);
        let best = argmax(row);
        let tok = llama_cpp_2::token::LlamaToken(best as i32);
        if vocab.is_eog(tok) {
            break;
        }
        text.extend(vocab.token_to_piece(tok, false, None));
        batch.clear();
        batch.add(tok, pos, &[0], true)?;
        pos += 1;
        ctx.decode(&mut batch)?;
    }

    // teacher-forced logits over the text
    ctx.clear_kv_cache();
    let body = std::fs::read(text_file)?;
    let toks = vocab.tokenize(&body, true, false);
    if toks.len() < positions {
        return Err(format!("text has only {} tokens", toks.len()).into());
    }
    batch.clear();
    for (i, &t) in toks[..positions].iter().enumerate() {
        batch.add(t, i as i32, &[0], true)?;
    }
    ctx.decode(&mut batch)?;
    let mut out = Vec::with_capacity(positions * n_vocab * 4);
    for i in 0..positions {
        let row = ctx.get_logits_ith(i as i32);
        if row.len() != n_vocab {
            return Err(format!("logits row of {} values, n_vocab {n_vocab}", row.len()).into());
        }
        for &x in row {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(logits_out, out)?;

    let mut so = std::io::stdout().lock();
    writeln!(so, "text={}", escape(&String::from_utf8_lossy(&text)))?;
    writeln!(so, "n_vocab={n_vocab}")?;
    Ok(())
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Newlines and backslashes escaped, so the text is one line.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}
