//! Helpers shared by the integration tests that run stock upstream programs or other hosts.
//! (Each test file includes this module; not every file uses every helper.)
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (this module is also included by the CLI crate's tests, one level down).
pub fn repo_root() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if d.join("scripts").is_dir() {
        d
    } else {
        d.parent().expect("cli/ has a parent").to_path_buf()
    }
}

/// `target/<profile>/libattnrot.so`, found from the test's own path (`target/<profile>/deps/…`).
pub fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let so = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .join("libattnrot.so");
    assert!(
        so.is_file(),
        "{} not found: build it first with `cargo build --release`",
        so.display()
    );
    so
}

/// The attnrot cache (`ATTNROT_CACHE`, else `$XDG_CACHE_HOME/attnrot`, else `~/.cache/attnrot`),
/// as the scripts compute it.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("ATTNROT_CACHE") {
        return PathBuf::from(p);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"))
        .join("attnrot")
}

/// Run `scripts/<name>` and return the path it prints on stdout (its last line).
pub fn script(name: &str, args: &[&str]) -> PathBuf {
    let t0 = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(repo_root().join("scripts").join(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let p = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    eprintln!(
        "scripts/{name}: {} ({:.1} s)",
        p.display(),
        t0.elapsed().as_secs_f64()
    );
    p
}

/// The stock build's bin directory: `ATTNROT_UPSTREAM_BIN`, else `scripts/build-upstream.sh`
/// (which builds it the first time, cached in the attnrot cache).
pub fn upstream_bin() -> PathBuf {
    Build::Pin.bin()
}

/// A stock llama.cpp that `scripts/build-upstream.sh` builds (same flags for every tree, each
/// in its own cache directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Build {
    /// The pin: 0c1e57098, ggml 0.25.3 (PyPI `llama-cpp-python==0.3.36` sdist).
    Pin,
    /// llama.cpp v0.5.0 (0ad4a86; npm `node-llama-cpp@3.22.1`'s git bundle, de3ff81),
    /// ggml 0.25.1, with llama-server.
    V050,
    /// ggml 0.26.0 as crates.io `llama-cpp-sys-2` 0.1.161 builds it (`scripts/build-crate-host.sh`):
    /// only `test-backend-ops` (the pin's source against 0.26.0's libraries; the crate's tree
    /// has no tools or tests). Opt-in: [`Build::G026.opted_in`](Build::opted_in).
    G026,
}

impl Build {
    /// The script's argument.
    pub fn arg(self) -> &'static str {
        match self {
            Build::Pin => "pin",
            Build::V050 => "v0.5.0",
            Build::G026 => "0.26.0",
        }
    }

    /// What our backend's registration line says about this host (`host ggml X commit Y`).
    pub fn host_ggml(self) -> &'static str {
        match self {
            Build::Pin => "host ggml 0.25.3",
            Build::V050 => "host ggml 0.25.1",
            Build::G026 => "host ggml 0.26.0",
        }
    }

    /// Our backend's warning line in this host's log: `attnrot: backend AttnRot (host ggml X)
    /// claims …`, logged at WARN so it shows where INFO lines of backend loading do not
    /// (v0.5.0's tools load backends before `-lv` is parsed: no "registered" or
    /// "loaded AttnRot backend" line there).
    pub fn active_line(self) -> String {
        format!("attnrot: backend AttnRot ({}) claims", self.host_ggml())
    }

    /// Its bin directory: `ATTNROT_UPSTREAM_BIN` (pin) / `ATTNROT_UPSTREAM_V050_BIN` (v0.5.0)
    /// if set, else `scripts/build-upstream.sh <arg>` (builds it the first time: 15-25 min on
    /// 2 cores; cached in the attnrot cache).
    pub fn bin(self) -> PathBuf {
        let var = match self {
            Build::Pin => "ATTNROT_UPSTREAM_BIN",
            Build::V050 => "ATTNROT_UPSTREAM_V050_BIN",
            Build::G026 => {
                // scripts/build-crate-host.sh prints <dir>/run; test-backend-ops is in <dir>/bin
                let run = script("build-crate-host.sh", &[]);
                return run.parent().expect("<dir>/run").join("bin");
            }
        };
        match std::env::var_os(var) {
            Some(p) => PathBuf::from(p),
            None => script("build-upstream.sh", &[self.arg()]),
        }
    }

    /// Tests of an opt-in build run only when asked (`ATTNROT_TEST_GGML026=1` for
    /// [`Build::G026`], whose first build takes ~20 min); otherwise they print why and pass.
    /// The pin and v0.5.0 always run.
    pub fn opted_in(self) -> bool {
        if self != Build::G026 || std::env::var("ATTNROT_TEST_GGML026").as_deref() == Ok("1") {
            return true;
        }
        eprintln!(
            "SKIPPED (opt-in): ATTNROT_TEST_GGML026=1 runs the ggml 0.26.0 tests \
             (scripts/build-crate-host.sh builds llama-cpp-2 0.1.160 with dynamic backends)"
        );
        false
    }
}

/// The measurement model (`scripts/fetch-model.sh`).
pub fn model() -> PathBuf {
    script("fetch-model.sh", &[])
}

/// Running in CI (`CI=true`/`1`)?
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Something a test needs is missing: in CI that is a failure; elsewhere the test is skipped
/// with the reason printed. Returns `false` (the caller returns) when skipping.
#[must_use]
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    assert!(
        !in_ci(),
        "{what} (CI=true: a missing prerequisite is a failure)"
    );
    eprintln!("SKIPPED: {what}");
    false
}

/// Is `prog` runnable (`prog --version` succeeds)?
pub fn have(prog: &str) -> bool {
    Command::new(prog)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// stdout + stderr of a finished command, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The Jargon File (Debian `jargon-text` 4.4.7-4.1), the project's evaluation text, as
/// `attnrot eval` fetches it: `apt-get download` (sha256-checked .deb cached in
/// [`cache_dir`]), `jargon.txt.gz` unpacked with dpkg-deb (or the text `attnrot eval` left in
/// the cache); returned from its first entry (":0:") on.
pub fn jargon_prose() -> String {
    const DEB: &str = "jargon-text=4.4.7-4.1";
    const DEB_FILE: &str = "jargon-text_4.4.7-4.1_all.deb";
    const DEB_SHA256: &str = "17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb";
    const TEXT_FILE: &str = "jargon-4.4.7.txt";
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).expect("cache dir");
    let text = match std::fs::read_to_string(cache.join(TEXT_FILE)) {
        Ok(t) => t,
        Err(_) => {
            let deb = cache.join(DEB_FILE);
            if !(deb.is_file() && sha256(&deb) == DEB_SHA256) {
                let dl = cache.join(format!("dl-jargon-{}", std::process::id()));
                std::fs::create_dir_all(&dl).unwrap();
                let get = || {
                    Command::new("apt-get")
                        .args(["download", "-q", DEB])
                        .current_dir(&dl)
                        .status()
                        .expect("apt-get")
                };
                if !get().success() {
                    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
                    assert!(get().success(), "apt-get download {DEB} failed (offline?)");
                }
                assert_eq!(
                    sha256(&dl.join(DEB_FILE)),
                    DEB_SHA256,
                    "{DEB_FILE} checksum"
                );
                std::fs::rename(dl.join(DEB_FILE), &deb).unwrap();
                let _ = std::fs::remove_dir_all(&dl);
            }
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "dpkg-deb --fsys-tarfile '{}' | tar -xO ./usr/share/doc/jargon-text/jargon.txt.gz | gzip -dc",
                    deb.display()
                ))
                .output()
                .expect("dpkg-deb");
            assert!(out.status.success() && out.stdout.len() > 100_000);
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let text = &text[text.find("\n:0:").map(|i| i + 1).unwrap_or(0)..];
    text[text.find(":0:").unwrap_or(0)..].to_string()
}

/// sha256 of a file (`sha256sum`).
pub fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Like [`script`], but `Err` (with the script's stderr) instead of a panic.
pub fn try_script(name: &str, args: &[&str]) -> Result<PathBuf, String> {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts").join(name))
        .args(args)
        .output()
        .map_err(|e| format!("run scripts/{name}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/{name} {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(stdout.lines().last().unwrap_or("").trim()))
}

/// A SIMD variant of our kernels below the detected one: avx2 on an AVX-512 machine, else
/// scalar (for `ATTNROT_ISA`). Its results differ from the native variant's only in float
/// rounding: the noise floor of the end-to-end comparisons.
pub fn other_isa() -> &'static str {
    use attnrot::simd::{detected, Isa};
    match detected() {
        Isa::Avx512 => "avx2",
        _ => "scalar",
    }
}

/// A file of little-endian `f32`s (the hosts' logits dumps).
pub fn read_f32(p: &Path) -> Vec<f32> {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Mean KL divergence KL(P_base || P_other) over `positions` rows of `n_vocab` logits, and the
/// share (%) of positions whose top token agrees (as llama-perplexity's `--kl-divergence`
/// reports them). Panics on a wrong size or a non-finite logit.
pub fn kld_logits(a: &[f32], b: &[f32], n_vocab: usize, positions: usize) -> (f64, f64) {
    let n = n_vocab;
    assert_eq!(a.len(), positions * n, "logits size");
    assert_eq!(b.len(), a.len(), "logits size");
    let log_softmax = |row: &[f32]| -> Vec<f64> {
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        row.iter().map(|&x| x as f64 - lse).collect()
    };
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            })
            .0
    };
    let (mut sum, mut same) = (0.0, 0usize);
    for p in 0..positions {
        let (ra, rb) = (&a[p * n..(p + 1) * n], &b[p * n..(p + 1) * n]);
        assert!(
            ra.iter().chain(rb).all(|x| x.is_finite()),
            "non-finite logits at {p}"
        );
        let (la, lb) = (log_softmax(ra), log_softmax(rb));
        sum += la
            .iter()
            .zip(&lb)
            .map(|(x, y)| x.exp() * (x - y))
            .sum::<f64>();
        same += usize::from(argmax(ra) == argmax(rb));
    }
    (
        sum / positions as f64,
        100.0 * same as f64 / positions as f64,
    )
}

/// One finished run of a host program (node with node-llama-cpp, the llama-cpp-2 program).
pub struct HostRun {
    pub stdout: String,
    pub stderr: String,
    /// the last 40 lines of stderr, for failure messages
    pub tail: String,
}

/// Runs a host program the way the host tests do: the variables they control are cleared
/// (`GGML_BACKEND_PATH`, `LLAMA_ATTN_ROT_DISABLE`, `ATTNROT_ISA`, `ATTNROT_FA_ALL`,
/// `LD_LIBRARY_PATH`), then `env` is set, and `GGML_BACKEND_PATH` = our backend when `ours`.
/// Prints one line with the time and what ran (`label`); fails the test if the host failed.
pub fn run_host(mut cmd: Command, label: &str, ours: bool, env: &[(&str, &str)]) -> HostRun {
    cmd.env_remove("GGML_BACKEND_PATH")
        .env_remove("LLAMA_ATTN_ROT_DISABLE")
        .env_remove("ATTNROT_ISA")
        .env_remove(attnrot::ggml::ops::FA_ALL_ENV)
        .env_remove("LD_LIBRARY_PATH")
        .envs(env.iter().copied());
    if ours {
        cmd.env("GGML_BACKEND_PATH", cdylib());
    }
    let t0 = std::time::Instant::now();
    let o = cmd.output().unwrap_or_else(|e| panic!("run {label}: {e}"));
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!(
        "  [{:.1} s] {}{label}{}",
        t0.elapsed().as_secs_f64(),
        if ours {
            "GGML_BACKEND_PATH=libattnrot.so "
        } else {
            ""
        },
        env.iter()
            .map(|(k, v)| format!(" {k}={v}"))
            .collect::<String>()
    );
    let tail = {
        let l: Vec<&str> = stderr.lines().collect();
        l[l.len().saturating_sub(40)..].join("\n")
    };
    assert!(
        o.status.success(),
        "{label} failed ({}):\n{stdout}\n--- stderr tail ---\n{tail}",
        o.status
    );
    HostRun {
        stdout,
        stderr,
        tail,
    }
}

/// The noise rule of the host tests: our KLD against stock is within twice the rounding-noise
/// floor `f` (our kernels on another ISA against ours) plus 1e-4. Prints the floor.
pub fn assert_within_noise_floor(ty: &str, k: f64, f: f64) {
    eprintln!(
        "{ty}: rounding-noise floor (ours[ATTNROT_ISA={}] vs ours) {f:.3e}",
        other_isa()
    );
    assert!(
        k <= 2.0 * f + 1e-4,
        "{ty}: KLD ours vs stock {k:.3e} is above the rounding-noise floor (2 x {f:.3e})"
    );
}

/// One cache type's result in a host test: type, greedy text identical, KLD ours vs stock,
/// same top token %, the noise floor if measured.
pub type HostResult<'a> = (&'a str, bool, f64, f64, Option<f64>);

/// The host tests' closing summary.
pub fn print_host_summary(title: &str, report: &[HostResult]) {
    eprintln!("summary ({title}):");
    for (ty, same, k, top, floor) in report {
        eprintln!(
            "  {ty}: text {}, KLD ours vs stock {k:.3e}, same top {top:.1} %{}",
            if *same { "identical" } else { "differs" },
            floor.map_or(String::new(), |f| format!(", noise floor {f:.3e}"))
        );
    }
}

/// Our backend's registration line in a host's log (`attnrot: backend AttnRot registered …`);
/// fails the test, showing `shown`, when there is none.
pub fn registration_line<'a>(log: &'a str, shown: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains("attnrot: backend AttnRot registered"))
        .unwrap_or_else(|| panic!("our backend did not register:\n{shown}"))
}
