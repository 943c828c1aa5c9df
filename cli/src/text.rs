//! The texts: real English prose from registry packages, pinned and checksummed.
//!
//! * Evaluation (default of `eval`): the Jargon File (Debian package `jargon-text`
//!   4.4.7-4.1, `jargon.txt.gz`), the hackers' dictionary: ~1.6 MB of English prose
//!   definitions.
//! * Calibration (default of `stats`, and of anything that is tuned): the Debian Policy
//!   Manual (Debian package `debian-policy` 4.6.2.0, `policy.txt.gz`): ~480 KB of English
//!   technical prose, a different text from the evaluation one.
//!
//! Fetched with `apt-get download` (no root needed; the .deb's sha256 is checked), unpacked
//! with `dpkg-deb`, cached in `~/.cache/attnrot/`. The front matter (table of contents, index)
//! is dropped so the text is prose.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A plain text inside a pinned Debian package.
pub struct DebText {
    /// What it is for (messages).
    pub what: &'static str,
    pub name: &'static str,
    pub version: &'static str,
    pub file: &'static str,
    pub sha256: &'static str,
    /// The gzipped text inside the package.
    pub member: &'static str,
    /// File name of the unpacked text in the cache.
    pub text_file: &'static str,
    /// The prose starts at the first line equal to this (after trimming).
    pub start_line: &'static str,
}

/// The evaluation text (`attnrot eval`).
pub const JARGON: DebText = DebText {
    what: "the evaluation text",
    name: "jargon-text",
    version: "4.4.7-4.1",
    file: "jargon-text_4.4.7-4.1_all.deb",
    sha256: "17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb",
    member: "./usr/share/doc/jargon-text/jargon.txt.gz",
    text_file: "jargon-4.4.7.txt",
    // the first glossary entry body
    start_line: ":0:",
};

/// The calibration text (`attnrot stats`): not the evaluation text.
pub const POLICY: DebText = DebText {
    what: "the calibration text",
    name: "debian-policy",
    version: "4.6.2.0",
    file: "debian-policy_4.6.2.0_all.deb",
    sha256: "ef9d01b625c3b87c3a845c2cd1b66f1a16e9240b2b9e5bee53472a00e8457a39",
    member: "./usr/share/doc/debian-policy/policy.txt.gz",
    text_file: "debian-policy-4.6.2.0.txt",
    // chapter 1's heading (the table of contents lists it as "* 1. About this manual")
    start_line: "1. About this manual",
};

/// `~/.cache/attnrot` (or `ATTNROT_CACHE`).
pub fn cache_dir() -> Result<PathBuf> {
    let d = match std::env::var_os("ATTNROT_CACHE") {
        Some(p) => PathBuf::from(p),
        None => {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .context("neither ATTNROT_CACHE, XDG_CACHE_HOME nor HOME is set")?;
            base.join("attnrot")
        }
    };
    std::fs::create_dir_all(&d)
        .with_context(|| format!("cannot create cache dir {}", d.display()))?;
    Ok(d)
}

pub fn sha256_file(p: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .context("sha256sum not found")?;
    if !out.status.success() {
        bail!("sha256sum {} failed", p.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string())
}

/// The default evaluation text, fetched on first use. Returns the path of the plain text.
pub fn default_text() -> Result<PathBuf> {
    JARGON.fetch()
}

/// The default calibration text, fetched on first use.
pub fn calibration_text() -> Result<PathBuf> {
    POLICY.fetch()
}

impl DebText {
    /// Fetch (once), verify and unpack the text; the path of the plain text.
    pub fn fetch(&self) -> Result<PathBuf> {
        let cache = cache_dir()?;
        let out = cache.join(self.text_file);
        if out.exists() {
            return Ok(out);
        }
        let (name, version, file, sha) = (self.name, self.version, self.file, self.sha256);
        let deb = cache.join(file);
        if !(deb.exists() && sha256_file(&deb)? == sha) {
            eprintln!(
                "attnrot: fetching {}: Debian package {name}={version} (apt-get download)",
                self.what
            );
            let tmp = tempdir_in(&cache)?;
            let dl = |tmp: &Path| {
                Command::new("apt-get")
                    .args(["download", "-q", &format!("{name}={version}")])
                    .current_dir(tmp)
                    .output()
            };
            let mut o = dl(&tmp)
                .context("apt-get not found: install the text yourself and pass --text FILE")?;
            if !o.status.success() {
                // a fresh machine may have no package lists yet
                let _ = Command::new("apt-get").args(["update", "-qq"]).status();
                o = dl(&tmp)?;
            }
            if !o.status.success() {
                let _ = std::fs::remove_dir_all(&tmp);
                bail!(
                    "could not download {name}={version} with apt-get (offline?): {}\n\
                     Pass --text FILE with any English plain text instead.",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
            let got = tmp.join(file);
            let sum = sha256_file(&got)?;
            if sum != sha {
                let _ = std::fs::remove_dir_all(&tmp);
                bail!("checksum mismatch for {file}: got {sum}, expected {sha}");
            }
            std::fs::rename(&got, &deb)?;
            let _ = std::fs::remove_dir_all(&tmp);
        }
        // dpkg-deb --fsys-tarfile | tar -xO member | gunzip
        let member = self.member;
        let tar = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "dpkg-deb --fsys-tarfile '{}' | tar -xO '{member}' | gzip -dc",
                deb.display()
            ))
            .output()
            .context("cannot run dpkg-deb/tar/gzip")?;
        if !tar.status.success() || tar.stdout.len() < 100_000 {
            bail!("could not unpack {member} from {}", deb.display());
        }
        let text = String::from_utf8_lossy(&tar.stdout);
        let prose = strip_front_matter(&text, self.start_line);
        let tmp = cache.join(format!("{}.tmp{}", self.text_file, std::process::id()));
        std::fs::write(&tmp, prose)?;
        std::fs::rename(&tmp, &out)?;
        Ok(out)
    }
}

/// Drop a text's front matter (table of contents, index): start at the first line equal
/// to `start_line` (the whole text if there is none).
fn strip_front_matter(t: &str, start_line: &str) -> String {
    let start = t
        .lines()
        .scan(0usize, |off, l| {
            let here = *off;
            *off += l.len() + 1;
            Some((here, l))
        })
        .find(|(_, l)| l.trim() == start_line)
        .map(|(o, _)| o)
        .unwrap_or(0);
    t[start..].to_string()
}

fn tempdir_in(d: &Path) -> Result<PathBuf> {
    let p = d.join(format!(
        ".dl-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_is_dropped() {
        let t = "Contents\n* 1. About this manual\n\n1. About this manual\n****\nBody.\n";
        assert_eq!(
            strip_front_matter(t, POLICY.start_line),
            "1. About this manual\n****\nBody.\n"
        );
        assert_eq!(
            strip_front_matter("a\n:0:\nzero", JARGON.start_line),
            ":0:\nzero"
        );
        assert_eq!(strip_front_matter("no marker", ":0:"), "no marker");
        assert_ne!(JARGON.text_file, POLICY.text_file);
    }
}
