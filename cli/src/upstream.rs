//! Locating (building, fetching) what the real-model commands need: the stock upstream
//! programs, the model, and our backend library.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What ggml's loader logs (at -v) when it has loaded our backend.
pub const LOADED_LINE: &str = "loaded AttnRot backend from";

/// The repository root (the CLI drives the project's own scripts).
pub fn repo_root() -> PathBuf {
    match std::env::var_os("ATTNROT_ROOT") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
}

fn run_script(name: &str, args: &[&str], what: &str) -> Result<PathBuf> {
    let script = repo_root().join("scripts").join(name);
    if !script.exists() {
        bail!(
            "{} not found (set ATTNROT_ROOT to the attnrot checkout)",
            script.display()
        );
    }
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): see the messages above",
            script.display()
        );
    }
    let p = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .trim(),
    );
    if !p.exists() {
        bail!(
            "{what}: {} printed '{}', which does not exist",
            script.display(),
            p.display()
        );
    }
    Ok(p)
}

/// Directory with stock `llama-perplexity`, `llama-bench`, … (built on first use, cached).
/// `ATTNROT_UPSTREAM_BIN` points at an existing build instead.
pub fn upstream_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ATTNROT_UPSTREAM_BIN") {
        return Ok(PathBuf::from(p));
    }
    run_script("build-upstream.sh", &[], "building stock llama.cpp")
}

/// A user's `--model`/`--text`-style path (it must be a file: "<what> file … does not
/// exist" otherwise), or `default()` when none was given.
pub fn given_or(
    p: &Option<PathBuf>,
    what: &str,
    default: impl FnOnce() -> Result<PathBuf>,
) -> Result<PathBuf> {
    match p {
        Some(p) if p.is_file() => Ok(p.clone()),
        Some(p) => anyhow::bail!("{what} file {} does not exist", p.display()),
        None => default(),
    }
}

/// The measurement model (SmolLM2-135M-Instruct Q4_1), fetched and verified on first use.
pub fn default_model() -> Result<PathBuf> {
    run_script("fetch-model.sh", &[], "fetching the model")
}

/// The models `scripts/fetch-model.sh NAME` fetches, which `--model NAME` names.
pub const MODELS: [&str; 2] = ["smollm2", "gemma3"];

/// The name of a fetched model if `p` is one (and no file of that name is there).
fn model_name(p: &Path) -> Option<&'static str> {
    MODELS
        .into_iter()
        .find(|m| p.as_os_str() == *m && !p.is_file())
}

/// `--model`: a GGUF file, a name from [`MODELS`] (fetched and verified on first use), or
/// the default model.
pub fn model(p: &Option<PathBuf>) -> Result<PathBuf> {
    match p.as_deref().and_then(model_name) {
        Some(m) => run_script("fetch-model.sh", &[m], "fetching the model"),
        None => given_or(p, "model", default_model),
    }
}

/// Fails, before anything runs, if `--model` is neither a file nor a name from [`MODELS`].
pub fn check_model(p: &Option<PathBuf>) -> Result<()> {
    match p {
        Some(p) if model_name(p).is_none() && !p.is_file() => bail!(
            "model file {} does not exist (or name one of {})",
            p.display(),
            MODELS.join(", ")
        ),
        _ => Ok(()),
    }
}

/// `libattnrot.so`: next to this executable (cargo puts the cdylib there), or `ATTNROT_LIB`.
pub fn backend_lib() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ATTNROT_LIB") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    for cand in [dir.join("libattnrot.so"), dir.join("../libattnrot.so")] {
        if cand.exists() {
            return Ok(cand.canonicalize()?);
        }
    }
    bail!(
        "libattnrot.so not found next to {} (build it with `cargo build --release`, or set ATTNROT_LIB)",
        exe.display()
    )
}
