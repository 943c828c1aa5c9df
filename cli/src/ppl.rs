//! Driving upstream's own `llama-perplexity` and parsing what it prints.
//!
//! Parsing is strict: every number we report must be found on a line of the exact shape
//! upstream prints (tools/perplexity/perplexity.cpp of the pinned tree); a missing or
//! changed line is an error naming the line, never a silently wrong number.
use anyhow::{bail, Context, Result};

/// What one `llama-perplexity --kl-divergence` run reports.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct KldStats {
    /// `Mean PPL(Q)` and its ±.
    pub ppl: f64,
    pub ppl_err: f64,
    /// `Mean PPL(base)`.
    pub ppl_base: f64,
    /// `Mean    KLD` and its ±.
    pub kld_mean: f64,
    pub kld_err: f64,
    /// `99.0%   KLD`.
    pub kld_p99: f64,
    /// `Same top p` in percent, and its ±.
    pub same_top: f64,
    pub same_top_err: f64,
}

/// Tokens per second of prompt processing: llama-perplexity times its first pass
/// ("`X seconds per pass`"), which evaluates `n_ctx * min(n_seq, n_chunks)` tokens
/// ("`… over N chunks, n_ctx=C, batch_size=B, n_seq=S`").
pub fn parse_prompt_tps(log: &str) -> Result<f64> {
    let spec = log
        .lines()
        .find_map(|l| {
            l.split_once(" over ")
                .filter(|(_, r)| r.contains("chunks, n_ctx="))
                .map(|(_, r)| r.to_string())
        })
        .context("llama-perplexity output has no '… over N chunks, n_ctx=…, n_seq=…' line")?;
    let num = |key: &str| -> Result<f64> {
        let v = if key.is_empty() {
            spec.split_whitespace().next()
        } else {
            spec.split(key)
                .nth(1)
                .map(|r| r.split(|c: char| !c.is_ascii_digit()).next().unwrap_or(""))
        };
        v.and_then(|x| x.parse::<f64>().ok())
            .with_context(|| format!("cannot parse '{key}' from: {spec}"))
    };
    let (chunks, n_ctx, n_seq) = (num("")?, num("n_ctx=")?, num("n_seq=")?);
    let line = log
        .lines()
        .find(|l| l.contains("seconds per pass"))
        .context("llama-perplexity output has no 'X seconds per pass' line")?;
    let secs: f64 = line
        .split("seconds per pass")
        .next()
        .and_then(|r| r.split_whitespace().last())
        .and_then(|x| x.parse().ok())
        .with_context(|| format!("cannot parse seconds per pass from: {line}"))?;
    if secs.is_nan() || secs <= 0.0 {
        bail!("llama-perplexity reported {secs} seconds per pass");
    }
    Ok(n_ctx * n_seq.min(chunks) / secs)
}

fn value_after(log: &str, label: &str) -> Result<(f64, Option<f64>)> {
    let line = log
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .with_context(|| {
            format!("llama-perplexity output has no '{label}' line (output format changed?)")
        })?;
    let rest = line.trim_start()[label.len()..].trim_start();
    let rest = rest.strip_prefix(':').unwrap_or(rest).trim();
    let rest = rest.trim_end_matches('%').trim();
    let mut parts = rest.split('±');
    let v = parts.next().unwrap().trim().trim_end_matches('%').trim();
    let v: f64 = v
        .parse()
        .with_context(|| format!("cannot parse a number from: {line}"))?;
    let e = match parts.next() {
        Some(e) => Some(
            e.trim()
                .trim_end_matches('%')
                .trim()
                .parse::<f64>()
                .with_context(|| format!("cannot parse ± from: {line}"))?,
        ),
        None => None,
    };
    Ok((v, e))
}

/// Parse the statistics block printed by `llama-perplexity --kl-divergence`.
pub fn parse_kld(log: &str) -> Result<KldStats> {
    if !log.contains("====== KL divergence statistics ======") {
        bail!("llama-perplexity printed no KL divergence statistics (did it fail? see its log)");
    }
    let (ppl, ppl_err) = value_after(log, "Mean PPL(Q)")?;
    let (ppl_base, _) = value_after(log, "Mean PPL(base)")?;
    let (kld_mean, kld_err) = value_after(log, "Mean    KLD")?;
    let (kld_p99, _) = value_after(log, "99.0%   KLD")?;
    let (same_top, same_top_err) = value_after(log, "Same top p")?;
    let s = KldStats {
        ppl,
        ppl_err: ppl_err.context("Mean PPL(Q) without ±")?,
        ppl_base,
        kld_mean,
        kld_err: kld_err.context("Mean KLD without ±")?,
        kld_p99,
        same_top,
        same_top_err: same_top_err.context("Same top p without ±")?,
    };
    for (k, v) in [
        ("PPL", s.ppl),
        ("KLD", s.kld_mean),
        ("same top", s.same_top),
    ] {
        if !v.is_finite() {
            bail!("llama-perplexity reported a non-finite {k}: {v}");
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
====== Perplexity statistics ======
Mean PPL(Q)                   :  17.123456 ±   0.512345
Mean PPL(base)                :  16.900000 ±   0.500000
Cor(ln(PPL(Q)), ln(PPL(base))):  99.12%
Mean ln(PPL(Q)/PPL(base))     :   0.013123 ±   0.002000
====== KL divergence statistics ======
Mean    KLD:   0.076543 ±   0.001234
Maximum KLD:   3.210000
99.9%   KLD:   1.900000
99.0%   KLD:   0.650000
Median  KLD:   0.030000
====== Token probability statistics ======
Same top p: 88.123 ± 0.456 %
0.07.010.319 I kl_divergence: computing over 6 chunks, n_ctx=512, batch_size=2048, n_seq=4
0.43.463.583 I kl_divergence: 4.00 seconds per pass - ETA 0.30 minutes
";

    #[test]
    fn parses_upstream_kld_block() {
        let s = parse_kld(SAMPLE).unwrap();
        assert_eq!(s.ppl, 17.123456);
        assert_eq!(s.ppl_err, 0.512345);
        assert_eq!(s.ppl_base, 16.9);
        assert_eq!(s.kld_mean, 0.076543);
        assert_eq!(s.kld_err, 0.001234);
        assert_eq!(s.kld_p99, 0.65);
        assert_eq!(s.same_top, 88.123);
        assert_eq!(s.same_top_err, 0.456);
        assert_eq!(parse_prompt_tps(SAMPLE).unwrap(), 512.0 * 4.0 / 4.0);
    }

    #[test]
    fn changed_format_is_an_error() {
        let broken = SAMPLE.replace("Mean    KLD", "Mean KL");
        let e = parse_kld(&broken).unwrap_err().to_string();
        assert!(e.contains("Mean    KLD"), "{e}");
        assert!(parse_kld("nothing here").is_err());
        assert!(parse_prompt_tps("no perf line").is_err());
    }
}
