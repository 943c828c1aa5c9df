//! The quality policy: what `attnrot tune` measured on a model, read by the backend from
//! `ATTNROT_POLICY=<file>`.
//!
//! One safetensors file (loadable by any safetensors reader): the metadata entry
//! `attnrot_policy` holds a JSON description (format version, the model's fingerprint, the
//! calibration run, the damping), and for every layer two tensors of shape
//! `[n_head_kv, d, d]` (f32): `k_metric.rot.l<N>` and `k_metric.plain.l<N>`, the second
//! moment `E[q·qᵀ]` of the queries that read each K head, in the Walsh–Hadamard-rotated space
//! (llama.cpp's attn-rot on) and in the model's own space (rotation off). The backend uses
//! them as [`HeadMetric`]s to choose K cache blocks by score error
//! ([`crate::quant::best::quantize_row_best_metric`]).
use crate::quant::best::HeadMetric;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Format version of the policy file.
pub const POLICY_VERSION: u64 = 1;
/// Metadata key of the JSON description.
pub const META_KEY: &str = "attnrot_policy";
/// Default damping of the metrics (fraction of the mean diagonal added to it).
pub const DEFAULT_DAMPING: f64 = 0.01;

/// The model a policy was measured on, as the backend can check it from the graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub n_layer: usize,
    pub n_head_kv: usize,
    pub head_dim_k: usize,
}

/// A loaded policy.
#[derive(Debug)]
pub struct Policy {
    pub fingerprint: Fingerprint,
    /// The model file it was tuned on (for people; not checked).
    pub model: String,
    pub damping: f64,
    /// per layer: the metrics of its K heads, rotated space
    rot: Vec<Vec<HeadMetric>>,
    /// per layer: the metrics of its K heads, unrotated space
    plain: Vec<Vec<HeadMetric>>,
}

/// What `attnrot tune` writes: per layer, `E[q·qᵀ]` of each K head's queries
/// (`n_head_kv·d·d` values, row-major), rotated and unrotated.
pub struct PolicyData<'a> {
    pub fingerprint: Fingerprint,
    pub model: &'a str,
    /// JSON object describing the calibration run (text, chunks, ctx, rows)
    pub calibration: serde_json::Value,
    pub damping: f64,
    pub rot: &'a [Vec<f32>],
    pub plain: &'a [Vec<f32>],
}

fn tensor_name(space: &str, layer: usize) -> String {
    format!("k_metric.{space}.l{layer}")
}

impl PolicyData<'_> {
    /// The policy file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let f = &self.fingerprint;
        let per = f.n_head_kv * f.head_dim_k * f.head_dim_k;
        if self.rot.len() != f.n_layer
            || self.plain.len() != f.n_layer
            || self.rot.iter().chain(self.plain).any(|m| m.len() != per)
        {
            return Err("policy data does not match its fingerprint".into());
        }
        let meta = serde_json::json!({
            "version": POLICY_VERSION,
            "model": self.model,
            "n_layer": f.n_layer,
            "n_head_kv": f.n_head_kv,
            "head_dim_k": f.head_dim_k,
            "damping": self.damping,
            "calibration": self.calibration,
        });
        let bytes: Vec<(String, Vec<u8>)> = (0..f.n_layer)
            .flat_map(|l| {
                [("rot", &self.rot[l]), ("plain", &self.plain[l])].map(|(s, m)| {
                    (
                        tensor_name(s, l),
                        m.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    )
                })
            })
            .collect();
        let shape = vec![f.n_head_kv, f.head_dim_k, f.head_dim_k];
        let views: Vec<(String, TensorView)> = bytes
            .iter()
            .map(|(n, b)| {
                TensorView::new(Dtype::F32, shape.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        let md = HashMap::from([(META_KEY.to_string(), meta.to_string())]);
        safetensors::serialize(views, Some(md)).map_err(|e| e.to_string())
    }
}

impl Policy {
    /// Read and check a policy file. `Err` says what is wrong, in one line.
    pub fn load(path: &Path) -> Result<Policy, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Policy::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parse and check a policy file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Policy, String> {
        let (_, md) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a safetensors file ({e})"))?;
        let meta = md
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or("no attnrot_policy metadata (not a file written by `attnrot tune`)")?;
        let meta: serde_json::Value =
            serde_json::from_str(meta).map_err(|e| format!("bad policy metadata: {e}"))?;
        let num = |k: &str| -> Result<u64, String> {
            meta[k]
                .as_u64()
                .ok_or(format!("policy metadata without {k}"))
        };
        let version = num("version")?;
        if version != POLICY_VERSION {
            return Err(format!(
                "policy format {version}, this attnrot reads {POLICY_VERSION}"
            ));
        }
        let fingerprint = Fingerprint {
            n_layer: num("n_layer")? as usize,
            n_head_kv: num("n_head_kv")? as usize,
            head_dim_k: num("head_dim_k")? as usize,
        };
        let f = &fingerprint;
        if f.n_layer == 0 || f.n_layer > 4096 || f.n_head_kv == 0 || f.n_head_kv > 1024 {
            return Err(format!("implausible model fingerprint {f:?}"));
        }
        let damping = meta["damping"]
            .as_f64()
            .ok_or("policy metadata without damping")?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| format!("bad tensors ({e})"))?;
        let d = f.head_dim_k;
        let mut spaces: [Vec<Vec<HeadMetric>>; 2] = [Vec::new(), Vec::new()];
        for (si, space) in ["rot", "plain"].into_iter().enumerate() {
            for l in 0..f.n_layer {
                let name = tensor_name(space, l);
                let t = st
                    .tensor(&name)
                    .map_err(|_| format!("tensor {name} missing"))?;
                if t.dtype() != Dtype::F32 || t.shape() != [f.n_head_kv, d, d] {
                    return Err(format!(
                        "tensor {name} is {:?} {:?}, expected F32 [{}, {d}, {d}]",
                        t.dtype(),
                        t.shape(),
                        f.n_head_kv
                    ));
                }
                let vals: Vec<f32> = t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let heads = vals
                    .chunks_exact(d * d)
                    .map(|h| HeadMetric::new(h, d, damping))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("tensor {name}: {e}"))?;
                spaces[si].push(heads);
            }
        }
        let [rot, plain] = spaces;
        Ok(Policy {
            fingerprint,
            model: meta["model"].as_str().unwrap_or("").to_string(),
            damping,
            rot,
            plain,
        })
    }

    /// The metrics of layer `layer`'s K heads, for a cache that is `rotated` or not; `None`
    /// if the layer is out of the policy's range.
    pub fn k_metric(&self, layer: usize, rotated: bool) -> Option<&[HeadMetric]> {
        let s = if rotated { &self.rot } else { &self.plain };
        s.get(layer).map(|v| v.as_slice())
    }

    /// Does a K cache row of `row_len` values in layer `layer` belong to the model this
    /// policy was tuned on? `Err` says why not.
    pub fn check_k_row(&self, layer: usize, row_len: usize) -> Result<(), String> {
        let f = &self.fingerprint;
        if layer >= f.n_layer {
            return Err(format!(
                "the model has a layer {layer}; the policy was tuned on {} layers",
                f.n_layer
            ));
        }
        if row_len != f.n_head_kv * f.head_dim_k {
            return Err(format!(
                "the model's K rows have {row_len} values; the policy's {} heads of {}",
                f.n_head_kv, f.head_dim_k
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n_layer: usize, n_head_kv: usize, d: usize) -> (Fingerprint, Vec<Vec<f32>>) {
        let f = Fingerprint {
            n_layer,
            n_head_kv,
            head_dim_k: d,
        };
        let eye: Vec<f32> = (0..n_head_kv * d * d)
            .map(|k| f32::from((k % (d * d)) / d == k % d) * (1.0 + k as f32 * 1e-6))
            .collect();
        (f, vec![eye; n_layer])
    }

    #[test]
    fn round_trip() {
        let (f, m) = data(3, 2, 32);
        let bytes = PolicyData {
            fingerprint: f.clone(),
            model: "m.gguf",
            calibration: serde_json::json!({"text": "t"}),
            damping: 0.01,
            rot: &m,
            plain: &m,
        }
        .to_bytes()
        .unwrap();
        let p = Policy::from_bytes(&bytes).unwrap();
        assert_eq!(p.fingerprint, f);
        assert_eq!(p.model, "m.gguf");
        assert_eq!(p.k_metric(2, true).unwrap().len(), 2);
        assert!(p.k_metric(3, false).is_none());
        assert!(p.check_k_row(2, 64).is_ok());
        assert!(p.check_k_row(3, 64).unwrap_err().contains("layer 3"));
        assert!(p.check_k_row(0, 128).unwrap_err().contains("128 values"));
    }

    #[test]
    fn bad_files_are_one_line_errors() {
        assert!(Policy::from_bytes(b"").is_err());
        assert!(Policy::from_bytes(b"not a policy at all").is_err());
        let (f, m) = data(2, 1, 32);
        let good = PolicyData {
            fingerprint: f.clone(),
            model: "m",
            calibration: serde_json::json!({}),
            damping: 0.01,
            rot: &m,
            plain: &m,
        };
        let bytes = good.to_bytes().unwrap();
        for cut in [8, 100, bytes.len() - 1] {
            let e = Policy::from_bytes(&bytes[..cut]).expect_err("truncated file accepted");
            assert!(!e.contains('\n'), "{e}");
        }
        // a plain safetensors file without our metadata
        let b = vec![0u8; 16];
        let v = TensorView::new(Dtype::F32, vec![4], &b).unwrap();
        let other = safetensors::serialize([("x", v)], None).unwrap();
        assert!(Policy::from_bytes(&other)
            .unwrap_err()
            .contains("attnrot_policy"));
        // NaN in a metric
        let mut bad = m.clone();
        bad[1][5] = f32::NAN;
        let bytes = PolicyData { rot: &bad, ..good }.to_bytes().unwrap();
        assert!(Policy::from_bytes(&bytes)
            .unwrap_err()
            .contains("k_metric.rot.l1"));
    }
}
