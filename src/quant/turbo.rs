//! TurboQuant-style vector encodings (for measurements: `attnrot stats`; not a ggml format).
//!
//! Zandieh, Daliri, Hadian, Mirrokni, "TurboQuant: Online Vector Quantization with
//! Near-optimal Distortion Rate", arXiv:2504.19874:
//! * **TurboQuant_mse** ([`TurboMse`]): store the vector's norm, rotate the unit vector
//!   randomly, and quantize every coordinate on its own with the Lloyd–Max codebook of the
//!   distribution a coordinate of a random unit vector has (density
//!   `∝ (1 − x²)^((d−3)/2)` on `[−1, 1]`, close to `N(0, 1/d)`); decoding is the codebook value,
//!   rotated back and scaled by the norm.
//! * **TurboQuant_prod** ([`TurboProd`]): TurboQuant_mse at `b − 1` bits plus the 1-bit QJL
//!   sketch of the residual (Zandieh, Daliri, Han, "QJL: 1-Bit Quantized JL Transform for KV
//!   Cache Quantization with Zero Overhead", arXiv:2406.03482): `sign(S·r)` with `S` an
//!   `m×d` matrix of i.i.d. `N(0, 1)` and the residual's norm; `⟨q, r⟩` is estimated by
//!   `√(π/2)/m · ‖r‖ · ⟨S·q, sign(S·r)⟩`, which is unbiased over the draw of `S`, so the
//!   encoding's inner products with any query are unbiased.
//!
//! The random rotation here is the fast one the papers mention as a practical choice: random
//! signs, then the normalized Walsh–Hadamard transform ([`crate::rotate`]), so `d` must be a
//! power of two. Norms are stored as f16 and counted in [`TurboMse::bits_per_value`].
//! Randomness comes from a seeded ChaCha8 generator, so a seed gives the same encoder on
//! every machine.
use crate::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A scalar quantizer: sorted reconstruction values and the decision boundaries between
/// neighbours (`bounds[i]` separates `centroids[i]` and `centroids[i + 1]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Codebook {
    pub centroids: Vec<f64>,
    pub bounds: Vec<f64>,
    /// Mean squared error of the quantizer under the density it was fitted to.
    pub mse: f64,
}

impl Codebook {
    /// Index of the nearest centroid.
    #[inline]
    pub fn index(&self, x: f64) -> usize {
        self.bounds.partition_point(|&b| b < x)
    }

    /// Nearest centroid.
    #[inline]
    pub fn quantize(&self, x: f64) -> f64 {
        self.centroids[self.index(x)]
    }
}

/// Lloyd's algorithm (Lloyd 1982; Max 1960) for the MSE-optimal scalar quantizer with
/// `levels` values of the density `pdf` on `[lo, hi]`, integrated on a grid of `grid`
/// cells (midpoint rule, prefix sums). Starts from equal-probability cells and iterates
/// "boundaries = midpoints of centroids, centroids = conditional means" to convergence.
pub fn lloyd_max(
    pdf: impl Fn(f64) -> f64,
    lo: f64,
    hi: f64,
    levels: usize,
    grid: usize,
) -> Codebook {
    assert!(levels >= 1 && grid >= 16 * levels && hi > lo);
    let h = (hi - lo) / grid as f64;
    // prefix sums of w, w·x, w·x² over the grid cells
    let (mut p0, mut p1, mut p2) = (
        vec![0f64; grid + 1],
        vec![0f64; grid + 1],
        vec![0f64; grid + 1],
    );
    for i in 0..grid {
        let x = lo + (i as f64 + 0.5) * h;
        let w = pdf(x) * h;
        p0[i + 1] = p0[i] + w;
        p1[i + 1] = p1[i] + w * x;
        p2[i + 1] = p2[i] + w * x * x;
    }
    let total = p0[grid];
    // cell index of a boundary: cells whose midpoint is below b
    let cut = |b: f64| -> usize { (((b - lo) / h).round().max(0.0) as usize).min(grid) };
    // initial centroids: conditional means of equal-probability cells
    let mut cuts: Vec<usize> = (1..levels)
        .map(|k| {
            p0.partition_point(|&c| c < total * k as f64 / levels as f64)
                .min(grid)
        })
        .collect();
    let mut c = vec![0f64; levels];
    let mut bounds = vec![0f64; levels - 1];
    let centroid = |a: usize, b: usize, fallback: f64| -> f64 {
        let w = p0[b] - p0[a];
        if w > 0.0 {
            (p1[b] - p1[a]) / w
        } else {
            fallback
        }
    };
    for _ in 0..100_000 {
        let mut prev = 0usize;
        for k in 0..levels {
            let next = if k + 1 < levels { cuts[k] } else { grid };
            let mid = lo + (prev + next) as f64 * 0.5 * h;
            c[k] = centroid(prev, next.max(prev), mid);
            prev = next;
        }
        let mut moved = false;
        for k in 0..levels - 1 {
            bounds[k] = 0.5 * (c[k] + c[k + 1]);
            let nc = cut(bounds[k]);
            moved |= nc != cuts[k];
            cuts[k] = nc;
        }
        if !moved {
            break;
        }
    }
    // MSE: sum over cells of E[(x - c_k)^2]
    let mut mse = 0.0;
    let mut prev = 0usize;
    for k in 0..levels {
        let next = if k + 1 < levels { cuts[k] } else { grid };
        let (w, s1, s2) = (
            p0[next] - p0[prev],
            p1[next] - p1[prev],
            p2[next] - p2[prev],
        );
        mse += s2 - 2.0 * c[k] * s1 + c[k] * c[k] * w;
        prev = next;
    }
    Codebook {
        centroids: c,
        bounds,
        mse: mse / total,
    }
}

/// Lloyd–Max codebook of `2^bits` values for `N(0, 1)` (MSE 0.3634, 0.1175, 0.03454,
/// 0.009497 for 1..4 bits).
pub fn gaussian_codebook(bits: u32) -> Codebook {
    let levels = 1usize << bits;
    lloyd_max(
        |x| (-0.5 * x * x).exp(),
        -9.0,
        9.0,
        levels,
        200_000.max(64 * levels),
    )
}

/// Lloyd–Max codebook of `2^bits` values for one coordinate of a uniformly random unit
/// vector in `d ≥ 3` dimensions: density `∝ (1 − x²)^((d−3)/2)` on `[−1, 1]`
/// (TurboQuant, arXiv:2504.19874, Lemma 1). Its MSE is ≈ the Gaussian one divided by `d`.
/// Computed once per `(bits, d)` per process (Lloyd's iterations take up to ~0.1 s at 8 bits).
pub fn sphere_codebook(bits: u32, d: usize) -> Result<Codebook> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static MEMO: OnceLock<Mutex<HashMap<(u32, usize), Codebook>>> = OnceLock::new();
    let memo = MEMO.get_or_init(Default::default);
    if let Some(c) = memo
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(bits, d))
    {
        return Ok(c.clone());
    }
    let c = sphere_codebook_uncached(bits, d)?;
    memo.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((bits, d), c.clone());
    Ok(c)
}

fn sphere_codebook_uncached(bits: u32, d: usize) -> Result<Codebook> {
    if d < 3 {
        return Err(Error::BadParam(format!(
            "sphere codebook needs d >= 3, got {d}"
        )));
    }
    if !(1..=12).contains(&bits) {
        return Err(Error::BadParam(format!(
            "codebook bits {bits} not in 1..=12"
        )));
    }
    let e = (d as f64 - 3.0) / 2.0;
    // the mass lies within a few multiples of 1/sqrt(d): integrate where it is
    let r = (12.0 / (d as f64).sqrt()).min(1.0);
    let levels = 1usize << bits;
    Ok(lloyd_max(
        |x| (1.0 - x * x).max(0.0).powf(e),
        -r,
        r,
        levels,
        200_000.max(64 * levels),
    ))
}

/// f16 rounding of a stored norm (what 16 bits of norm keep).
fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// `n` random signs (±1) from `rng`.
fn random_signs(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
        .collect()
}

/// The random rotation: `y = H·(s ⊙ x)` with `H` the normalized Walsh–Hadamard matrix
/// and `s` random signs; its inverse is `x = s ⊙ (H·y)` (`H` is symmetric and orthogonal).
#[derive(Debug, Clone)]
pub struct SignedHadamard {
    pub signs: Vec<f32>,
}

impl SignedHadamard {
    /// Random signs for dimension `d` (a power of two) from `seed`.
    pub fn new(d: usize, seed: u64) -> Result<Self> {
        crate::rotate::check_n(d)?;
        Ok(Self {
            signs: random_signs(&mut ChaCha8Rng::seed_from_u64(seed), d),
        })
    }

    pub fn forward(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        let d = self.signs.len();
        for ((o, &a), &s) in y.iter_mut().zip(x).zip(&self.signs) {
            *o = a * s;
        }
        crate::rotate::rotate_inplace(d, &mut y[..d])
    }

    pub fn inverse(&self, y: &[f32], x: &mut [f32]) -> Result<()> {
        let d = self.signs.len();
        x[..d].copy_from_slice(&y[..d]);
        crate::rotate::rotate_inplace(d, &mut x[..d])?;
        for (o, &s) in x.iter_mut().zip(&self.signs) {
            *o *= s;
        }
        Ok(())
    }
}

/// One TurboQuant_mse code: the f16 norm and one codebook index per coordinate.
#[derive(Debug, Clone, PartialEq)]
pub struct MseCode {
    pub norm: f32,
    pub idx: Vec<u16>,
}

/// TurboQuant_mse for vectors of dimension `d` at `bits` bits per coordinate (optionally
/// `n_hi` of the rotated coordinates at `bits + 1`: fractional bit rates, like the paper's
/// 2.5- and 3.5-bit settings; after the random rotation every coordinate has the same
/// distribution, so which ones get the extra bit does not matter).
#[derive(Debug, Clone)]
pub struct TurboMse {
    pub d: usize,
    pub bits: u32,
    pub rot: SignedHadamard,
    pub codebook: Codebook,
    pub n_hi: usize,
    pub codebook_hi: Codebook,
}

impl TurboMse {
    pub fn new(d: usize, bits: u32, seed: u64) -> Result<Self> {
        Self::new_mixed(d, bits, 0, seed)
    }

    /// `n_hi` coordinates at `bits + 1` bits, the others at `bits`.
    pub fn new_mixed(d: usize, bits: u32, n_hi: usize, seed: u64) -> Result<Self> {
        if n_hi > d {
            return Err(Error::BadParam(format!(
                "{n_hi} high-precision coordinates of {d}"
            )));
        }
        let codebook = sphere_codebook(bits, d)?;
        let codebook_hi = if n_hi > 0 {
            sphere_codebook(bits + 1, d)?
        } else {
            codebook.clone()
        };
        Ok(Self {
            d,
            bits,
            rot: SignedHadamard::new(d, seed)?,
            codebook,
            n_hi,
            codebook_hi,
        })
    }

    fn cb(&self, i: usize) -> &Codebook {
        if i < self.n_hi {
            &self.codebook_hi
        } else {
            &self.codebook
        }
    }

    /// Bits per value: `bits` per coordinate (+1 for the `n_hi` ones) plus a 16-bit norm
    /// per vector.
    pub fn bits_per_value(&self) -> f64 {
        self.bits as f64 + (self.n_hi as f64 + 16.0) / self.d as f64
    }

    fn check(&self, n: usize) -> Result<()> {
        if n != self.d {
            return Err(Error::BadShape(format!(
                "vector of {n} values for a TurboQuant encoder of dimension {}",
                self.d
            )));
        }
        Ok(())
    }

    pub fn encode(&self, x: &[f32]) -> Result<MseCode> {
        self.check(x.len())?;
        let norm = x
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt();
        let mut y = vec![0f32; self.d];
        self.rot.forward(x, &mut y)?;
        let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        let idx = y
            .iter()
            .enumerate()
            .map(|(i, &v)| self.cb(i).index(v as f64 * inv) as u16)
            .collect();
        Ok(MseCode {
            norm: f16_round(norm as f32),
            idx,
        })
    }

    pub fn decode(&self, c: &MseCode, out: &mut [f32]) -> Result<()> {
        self.check(out.len())?;
        let y: Vec<f32> = c
            .idx
            .iter()
            .enumerate()
            .map(|(k, &i)| (self.cb(k).centroids[i as usize] * c.norm as f64) as f32)
            .collect();
        self.rot.inverse(&y, out)
    }

    /// `decode(encode(x))`.
    pub fn roundtrip(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let c = self.encode(x)?;
        self.decode(&c, out)
    }
}

/// QJL (arXiv:2406.03482): `m` sign bits of `S·r` and the norm of `r` (f16).
#[derive(Debug, Clone)]
pub struct Qjl {
    pub d: usize,
    pub m: usize,
    /// `S`, row-major `m × d`, i.i.d. `N(0, 1)`.
    pub s: Vec<f32>,
}

/// One QJL code.
#[derive(Debug, Clone, PartialEq)]
pub struct QjlCode {
    pub norm: f32,
    pub signs: Vec<bool>,
}

impl Qjl {
    pub fn new(d: usize, m: usize, seed: u64) -> Self {
        use rand_distr::{Distribution, StandardNormal};
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let s = (0..m * d)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        Self { d, m, s }
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.s[i * self.d..(i + 1) * self.d]
    }

    pub fn encode(&self, r: &[f32]) -> QjlCode {
        let norm = r
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt();
        let signs = (0..self.m).map(|i| dot(self.row(i), r) >= 0.0).collect();
        QjlCode {
            norm: f16_round(norm as f32),
            signs,
        }
    }

    /// The vector whose inner product with any `q` is the QJL estimate of `⟨q, r⟩`:
    /// `√(π/2)/m · ‖r‖ · Sᵀ·sign(S·r)`.
    pub fn decode(&self, c: &QjlCode, out: &mut [f32]) {
        let g = (std::f64::consts::FRAC_PI_2.sqrt() / self.m as f64 * c.norm as f64) as f32;
        out.iter_mut().for_each(|o| *o = 0.0);
        for (i, &sg) in c.signs.iter().enumerate() {
            let v = if sg { g } else { -g };
            for (o, &a) in out.iter_mut().zip(self.row(i)) {
                *o += v * a;
            }
        }
    }

    /// The QJL estimate of `⟨q, r⟩` from the code of `r`.
    pub fn estimate_dot(&self, q: &[f32], c: &QjlCode) -> f64 {
        let mut e = 0f64;
        for (i, &sg) in c.signs.iter().enumerate() {
            let p = dot(self.row(i), q);
            e += if sg { p } else { -p };
        }
        e * std::f64::consts::FRAC_PI_2.sqrt() / self.m as f64 * c.norm as f64
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// TurboQuant_prod at `bits` bits per coordinate: TurboQuant_mse at `bits − 1` plus a
/// `d`-bit QJL sketch of the residual (two f16 norms per vector).
#[derive(Debug, Clone)]
pub struct TurboProd {
    pub mse: TurboMse,
    pub qjl: Qjl,
}

impl TurboProd {
    pub fn new(d: usize, bits: u32, seed: u64) -> Result<Self> {
        if bits < 2 {
            return Err(Error::BadParam(format!(
                "TurboQuant_prod needs at least 2 bits (1 of them QJL), got {bits}"
            )));
        }
        Ok(Self {
            mse: TurboMse::new(d, bits - 1, seed)?,
            qjl: Qjl::new(d, d, seed ^ 0x9e37_79b9_7f4a_7c15),
        })
    }

    /// Bits per value: `bits` per coordinate plus two 16-bit norms per vector.
    pub fn bits_per_value(&self) -> f64 {
        self.mse.bits as f64 + 1.0 + 32.0 / self.mse.d as f64
    }

    /// The decoded vector: TurboQuant_mse's reconstruction plus the QJL vector of the
    /// residual; inner products with it are unbiased estimates of those with `x`.
    pub fn roundtrip(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        self.mse.roundtrip(x, out)?;
        let r: Vec<f32> = x.iter().zip(out.iter()).map(|(&a, &b)| a - b).collect();
        let c = self.qjl.encode(&r);
        let mut v = vec![0f32; self.mse.d];
        self.qjl.decode(&c, &mut v);
        for (o, a) in out.iter_mut().zip(v) {
            *o += a;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, StandardNormal};

    #[test]
    fn gaussian_codebooks_match_lloyd_max_tables() {
        // Max (1960) / the TurboQuant paper's values for N(0, 1)
        for (bits, want) in [(1, 0.3634), (2, 0.1175), (3, 0.03454), (4, 0.009497)] {
            let cb = gaussian_codebook(bits);
            assert_eq!(cb.centroids.len(), 1 << bits);
            let rel = (cb.mse - want).abs() / want;
            assert!(rel < 2e-3, "{bits} bits: mse {} vs {want}", cb.mse);
            // symmetric around 0 and sorted
            let n = cb.centroids.len();
            for i in 0..n {
                assert!(
                    (cb.centroids[i] + cb.centroids[n - 1 - i]).abs() < 1e-6,
                    "{cb:?}"
                );
            }
            assert!(cb.centroids.windows(2).all(|w| w[0] < w[1]));
        }
        // 1 bit: ±sqrt(2/pi)
        let c = gaussian_codebook(1).centroids[1];
        assert!(
            (c - (2.0 / std::f64::consts::PI).sqrt()).abs() < 1e-4,
            "{c}"
        );
    }

    #[test]
    fn sphere_codebook_is_the_scaled_gaussian_for_large_d() {
        for bits in 1..=4 {
            let g = gaussian_codebook(bits).mse;
            let s = sphere_codebook(bits, 1024).unwrap().mse * 1024.0;
            assert!((s - g).abs() / g < 0.01, "{bits}: {s} vs {g}");
        }
        assert!(sphere_codebook(2, 2).is_err());
    }

    /// TurboQuant_mse's distortion on random unit vectors is the codebook's MSE times d
    /// (the coordinates of a rotated vector follow the sphere density).
    #[test]
    fn turbo_mse_distortion_matches_codebook() {
        let d = 64;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for bits in [2u32, 3, 4] {
            let tq = TurboMse::new(d, bits, 11).unwrap();
            let mut err = 0f64;
            let n = 3000;
            let mut out = vec![0f32; d];
            for _ in 0..n {
                let x: Vec<f32> = (0..d).map(|_| StandardNormal.sample(&mut rng)).collect();
                let nx: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
                tq.roundtrip(&x, &mut out).unwrap();
                let e: f64 = x
                    .iter()
                    .zip(&out)
                    .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                    .sum();
                err += e / nx;
            }
            let got = err / n as f64;
            let want = tq.codebook.mse * d as f64;
            assert!(
                (got - want).abs() / want < 0.08,
                "{bits} bits: {got} vs {want}"
            );
            assert_eq!(tq.bits_per_value(), bits as f64 + 0.25);
        }
        // a quarter of the coordinates at 5 bits: distortion between the 4- and 5-bit ones
        let m = TurboMse::new_mixed(d, 4, 16, 11).unwrap();
        assert_eq!(m.bits_per_value(), 4.5);
        let (lo, hi) = (m.codebook.mse * d as f64, m.codebook_hi.mse * d as f64);
        let mut err = 0f64;
        let mut out = vec![0f32; d];
        for _ in 0..3000 {
            let x: Vec<f32> = (0..d).map(|_| StandardNormal.sample(&mut rng)).collect();
            let nx: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
            m.roundtrip(&x, &mut out).unwrap();
            let e: f64 = x
                .iter()
                .zip(&out)
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum();
            err += e / nx;
        }
        let got = err / 3000.0;
        let want = 0.75 * lo + 0.25 * hi;
        assert!((got - want).abs() / want < 0.08, "mixed: {got} vs {want}");
    }

    /// The QJL estimate of an inner product is unbiased over the random matrix; so are the
    /// inner products of TurboQuant_prod's decoded vectors (over the seed).
    #[test]
    fn qjl_and_turbo_prod_are_unbiased() {
        let d = 64;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x: Vec<f32> = (0..d).map(|_| StandardNormal.sample(&mut rng)).collect();
        let q: Vec<f32> = (0..d)
            .map(|i| Distribution::<f32>::sample(&StandardNormal, &mut rng) + 0.5 * x[i])
            .collect();
        let truth = dot(&q, &x);
        let seeds = 4000u64;
        let (mut s1, mut s2) = (0f64, 0f64);
        for seed in 0..seeds {
            let qjl = Qjl::new(d, d, seed);
            let e = qjl.estimate_dot(&q, &qjl.encode(&x));
            s1 += e;
            s2 += e * e;
        }
        let mean = s1 / seeds as f64;
        let sd = (s2 / seeds as f64 - mean * mean).sqrt();
        let se = sd / (seeds as f64).sqrt();
        // norm stored as f16: relative bias up to 2^-11
        assert!(
            (mean - truth).abs() < 4.0 * se + truth.abs() * 1e-3,
            "QJL mean {mean} vs {truth} (se {se})"
        );
        // a plain sign sketch without the sqrt(pi/2) factor would be biased by ~25 %
        assert!(
            se < 0.05 * truth.abs(),
            "test too weak: se {se}, truth {truth}"
        );

        let (mut p1, mut m1) = (0f64, 0f64);
        let mut out = vec![0f32; d];
        let n = 1500u64;
        for seed in 0..n {
            let tp = TurboProd::new(d, 2, seed).unwrap();
            tp.roundtrip(&x, &mut out).unwrap();
            p1 += dot(&q, &out);
            tp.mse.roundtrip(&x, &mut out).unwrap();
            m1 += dot(&q, &out);
        }
        let (pm, mm) = (p1 / n as f64, m1 / n as f64);
        // TurboQuant_mse at 1 bit shrinks inner products (biased low), prod corrects it
        assert!(
            (pm - truth).abs() < 0.03 * truth.abs(),
            "prod mean {pm} vs {truth}"
        );
        assert!(
            (mm - truth).abs() > 0.2 * truth.abs(),
            "mse(1 bit) mean {mm} vs {truth}"
        );
        assert_eq!(TurboProd::new(d, 4, 0).unwrap().bits_per_value(), 4.5);
    }

    #[test]
    fn bad_dimensions_are_errors() {
        assert!(TurboMse::new(48, 2, 0).is_err());
        let tq = TurboMse::new(64, 2, 0).unwrap();
        assert!(tq.encode(&[0.0; 32]).is_err());
        assert!(TurboProd::new(64, 1, 0).is_err());
        // the zero vector encodes and decodes to zero
        let mut out = vec![1f32; 64];
        tq.roundtrip(&[0.0; 64], &mut out).unwrap();
        assert!(out.iter().all(|&v| v == 0.0));
    }
}
