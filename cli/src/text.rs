//! The evaluation text: real English prose from a registry package, pinned and checksummed.
//!
//! Default: the Jargon File (Debian package `jargon-text` 4.4.7-4.1, `jargon.txt.gz`), the
//! hackers' dictionary: ~1.6 MB of English prose definitions. Fetched with `apt-get download`
//! (no root needed; the .deb's sha256 is checked), unpacked with `dpkg-deb`, cached in
//! `~/.cache/attnrot/`. The table of contents at the top is dropped so the text is prose.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const DEB_NAME: &str = "jargon-text";
pub const DEB_VERSION: &str = "4.4.7-4.1";
pub const DEB_FILE: &str = "jargon-text_4.4.7-4.1_all.deb";
pub const DEB_SHA256: &str = "17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb";
const MEMBER: &str = "./usr/share/doc/jargon-text/jargon.txt.gz";
pub const TEXT_FILE: &str = "jargon-4.4.7.txt";

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
    let cache = cache_dir()?;
    let out = cache.join(TEXT_FILE);
    if out.exists() {
        return Ok(out);
    }
    let deb = cache.join(DEB_FILE);
    if !(deb.exists() && sha256_file(&deb)? == DEB_SHA256) {
        eprintln!("attnrot: fetching the evaluation text: Debian package {DEB_NAME}={DEB_VERSION} (apt-get download)");
        let tmp = tempdir_in(&cache)?;
        let dl = |tmp: &Path| {
            Command::new("apt-get")
                .args(["download", "-q", &format!("{DEB_NAME}={DEB_VERSION}")])
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
                "could not download {DEB_NAME}={DEB_VERSION} with apt-get (offline?): {}\n\
                 Pass --text FILE with any English plain text instead.",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        let got = tmp.join(DEB_FILE);
        let sum = sha256_file(&got)?;
        if sum != DEB_SHA256 {
            let _ = std::fs::remove_dir_all(&tmp);
            bail!("checksum mismatch for {DEB_FILE}: got {sum}, expected {DEB_SHA256}");
        }
        std::fs::rename(&got, &deb)?;
        let _ = std::fs::remove_dir_all(&tmp);
    }
    // dpkg-deb --fsys-tarfile | tar -xO member | gunzip
    let tar = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -xO '{MEMBER}' | gzip -dc",
            deb.display()
        ))
        .output()
        .context("cannot run dpkg-deb/tar/gzip")?;
    if !tar.status.success() || tar.stdout.len() < 100_000 {
        bail!("could not unpack {MEMBER} from {}", deb.display());
    }
    let text = String::from_utf8_lossy(&tar.stdout);
    let prose = strip_front_matter(&text);
    let tmp = cache.join(format!("{TEXT_FILE}.tmp{}", std::process::id()));
    std::fs::write(&tmp, prose)?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// Drop the Jargon File's front matter and index (short lines listing entry names): start
/// at the first glossary entry body, the entry ":0:".
fn strip_front_matter(t: &str) -> String {
    let start = t
        .lines()
        .scan(0usize, |off, l| {
            let here = *off;
            *off += l.len() + 1;
            Some((here, l))
        })
        .find(|(_, l)| l.trim() == ":0:")
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
