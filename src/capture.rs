//! Captured K, V and Q rows (`ATTNROT_CAPTURE=<dir>`): the on-disk format, its writer (used
//! by the ggml backend, [`crate::ggml::ops`]) and its reader (used by `attnrot stats`).
//!
//! A capture directory holds
//! * one [safetensors](https://huggingface.co/docs/safetensors) file per event,
//!   `NNNNNN-L<layer>-<k|v|q>.safetensors`, with the tensor `data` (f32) and, for K/V, the
//!   tensor `index` (i64: the cache row each data row was written to); the event's
//!   description is in the file's metadata under `attnrot_event` as well;
//! * `manifest.jsonl`: one JSON object per event, in the order the backend saw them.
//!
//! Events:
//! * `k` / `v`: the f32 rows a `SET_ROWS` node was about to write into the layer's cache,
//!   `data` of shape `[rows, n_head_kv · head_dim]` (one token per row, heads concatenated),
//!   as llama.cpp computed them: already rotated when llama.cpp's attn-rot was on for that
//!   side (`rotated`, with the transform size `rot_n`: every `rot_n`-chunk of a row went
//!   through the normalized Walsh–Hadamard transform).
//! * `q`: the f32 Q of a `FLASH_ATTN_EXT` node, `data` of shape `[n_seq, n_head, n_q, dk]`,
//!   with the node's K/V layout (`n_head_kv`, `n_kv`, `dv`), its `scale` and `softcap`.
//!
//! In Python: `safetensors.numpy.load_file(path)["data"]`, and `json.loads` per manifest line.
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Environment variable: directory to capture into (the backend reads it once).
pub const CAPTURE_ENV: &str = "ATTNROT_CAPTURE";
/// Environment variable: size limit of a capture in MB (default [`DEFAULT_MAX_MB`]).
pub const CAPTURE_MAX_MB_ENV: &str = "ATTNROT_CAPTURE_MAX_MB";
/// Default size limit in MB (SmolLM2-135M at ctx 512: ~60 MB per chunk).
pub const DEFAULT_MAX_MB: u64 = 512;
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.jsonl";

/// What an event holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    K,
    V,
    Q,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::K => "k",
            Kind::V => "v",
            Kind::Q => "q",
        }
    }
    pub fn from_name(s: &str) -> Option<Kind> {
        match s {
            "k" => Some(Kind::K),
            "v" => Some(Kind::V),
            "q" => Some(Kind::Q),
            _ => None,
        }
    }
}

/// One captured tensor's description (a manifest line).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Position in capture order (0, 1, …).
    pub seq: u64,
    pub kind: Kind,
    pub layer: u32,
    /// File name inside the capture directory.
    pub file: String,
    /// Shape of `data` (see the module docs).
    pub shape: Vec<usize>,
    /// The rows were rotated by llama.cpp's attn-rot (every `rot_n`-chunk).
    pub rotated: bool,
    pub rot_n: usize,
    /// K/V: the cache type written to; Q: K's type.
    pub cache_type: String,
    /// K/V: head size if the graph shows it (0 = unknown). Q: `dk`.
    pub head_dim: usize,
    /// Q only: K/V heads, K/V length seen by the node, V head size, op params.
    pub n_head_kv: usize,
    pub n_kv: usize,
    pub dv: usize,
    pub scale: f32,
    pub softcap: f32,
    pub v_type: String,
}

impl Event {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "seq": self.seq,
            "kind": self.kind.name(),
            "layer": self.layer,
            "file": self.file,
            "shape": self.shape,
            "rotated": self.rotated,
            "rot_n": self.rot_n,
            "cache_type": self.cache_type,
            "head_dim": self.head_dim,
            "n_head_kv": self.n_head_kv,
            "n_kv": self.n_kv,
            "dv": self.dv,
            "scale": self.scale,
            "softcap": self.softcap,
            "v_type": self.v_type,
        })
    }

    pub fn from_json(v: &serde_json::Value) -> Result<Event, String> {
        let u = |k: &str| -> Result<u64, String> {
            v[k].as_u64()
                .ok_or_else(|| format!("manifest entry without integer '{k}': {v}"))
        };
        let s = |k: &str| -> Result<String, String> {
            v[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("manifest entry without string '{k}': {v}"))
        };
        let f = |k: &str| -> Result<f32, String> {
            v[k].as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| format!("manifest entry without number '{k}': {v}"))
        };
        let kind = s("kind")?;
        Ok(Event {
            seq: u("seq")?,
            kind: Kind::from_name(&kind).ok_or_else(|| format!("unknown event kind '{kind}'"))?,
            layer: u("layer")? as u32,
            file: s("file")?,
            shape: v["shape"]
                .as_array()
                .ok_or_else(|| format!("manifest entry without shape: {v}"))?
                .iter()
                .map(|x| x.as_u64().map(|x| x as usize).ok_or("bad shape entry"))
                .collect::<Result<_, _>>()?,
            rotated: v["rotated"]
                .as_bool()
                .ok_or_else(|| format!("manifest entry without 'rotated': {v}"))?,
            rot_n: u("rot_n")? as usize,
            cache_type: s("cache_type")?,
            head_dim: u("head_dim")? as usize,
            n_head_kv: u("n_head_kv")? as usize,
            n_kv: u("n_kv")? as usize,
            dv: u("dv")? as usize,
            scale: f("scale")?,
            softcap: f("softcap")?,
            v_type: s("v_type")?,
        })
    }

    /// Number of f32 values in `data`.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends events to a capture directory, up to a size limit. Never panics on I/O errors:
/// the first error (or reaching the limit) stops the capture and is reported once.
pub struct Writer {
    dir: PathBuf,
    manifest: std::fs::File,
    max_bytes: u64,
    written: u64,
    seq: u64,
    stopped: bool,
}

/// What [`Writer::write`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    Yes,
    /// Capture had stopped before.
    Stopped,
    /// This event stopped the capture (limit reached or I/O error); the message says why.
    StoppedNow(String),
}

impl Writer {
    /// Create `dir` (if needed) and an empty manifest in it.
    pub fn create(dir: &Path, max_bytes: u64) -> std::io::Result<Writer> {
        std::fs::create_dir_all(dir)?;
        let manifest = std::fs::File::create(dir.join(MANIFEST))?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            manifest,
            max_bytes,
            written: 0,
            seq: 0,
            stopped: false,
        })
    }

    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Would an event of `n_values` f32 (+ `n_index` i64) still fit? (Lets the caller skip
    /// gathering the data.)
    pub fn fits(&self, n_values: usize, n_index: usize) -> bool {
        !self.stopped && self.written + (n_values * 4 + n_index * 8) as u64 <= self.max_bytes
    }

    /// Write one event: `ev`'s `seq` and `file` are assigned here; `data.len()` must be the
    /// product of `ev.shape`.
    pub fn write(&mut self, mut ev: Event, data: &[f32], index: Option<&[i64]>) -> Written {
        if self.stopped {
            return Written::Stopped;
        }
        let n_index = index.map_or(0, |i| i.len());
        if !self.fits(data.len(), n_index) {
            self.stopped = true;
            return Written::StoppedNow(format!(
                "capture limit of {} MB reached ({} events written, {} MB): capture stops ({CAPTURE_MAX_MB_ENV} raises it)",
                self.max_bytes >> 20,
                self.seq,
                self.written >> 20
            ));
        }
        ev.seq = self.seq;
        ev.file = format!(
            "{:06}-L{:02}-{}.safetensors",
            ev.seq,
            ev.layer,
            ev.kind.name()
        );
        match self.write_files(&ev, data, index) {
            Ok(()) => {
                self.seq += 1;
                self.written += (data.len() * 4 + n_index * 8) as u64;
                Written::Yes
            }
            Err(e) => {
                self.stopped = true;
                Written::StoppedNow(format!(
                    "cannot write the capture into {}: {e}; capture stops",
                    self.dir.display()
                ))
            }
        }
    }

    fn write_files(
        &mut self,
        ev: &Event,
        data: &[f32],
        index: Option<&[i64]>,
    ) -> Result<(), String> {
        use safetensors::tensor::{Dtype, TensorView};
        if data.len() != ev.len() {
            return Err(format!("{} values for shape {:?}", data.len(), ev.shape));
        }
        let json = ev.to_json().to_string();
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let ibytes: Vec<u8> = index
            .unwrap_or(&[])
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut tensors = vec![(
            "data",
            TensorView::new(Dtype::F32, ev.shape.clone(), &bytes).map_err(|e| e.to_string())?,
        )];
        if let Some(i) = index {
            tensors.push((
                "index",
                TensorView::new(Dtype::I64, vec![i.len()], &ibytes).map_err(|e| e.to_string())?,
            ));
        }
        let meta: HashMap<String, String> = [("attnrot_event".to_string(), json.clone())].into();
        let path = self.dir.join(&ev.file);
        safetensors::serialize_to_file(tensors, Some(meta), &path).map_err(|e| e.to_string())?;
        writeln!(self.manifest, "{json}").map_err(|e| e.to_string())?;
        self.manifest.flush().map_err(|e| e.to_string())
    }
}

/// The events of a capture directory, in order. A truncated last line (a crash mid-write)
/// is ignored; any other malformed line is an error.
pub fn read_manifest(dir: &Path) -> Result<Vec<Event>, String> {
    let p = dir.join(MANIFEST);
    let text =
        std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) => out.push(
                Event::from_json(&v)
                    .map_err(|e| format!("{}: line {}: {e}", p.display(), i + 1))?,
            ),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => return Err(format!("{}: line {}: {e}", p.display(), i + 1)),
        }
    }
    Ok(out)
}

/// The data (and K/V index) of one event, checked against its description.
pub fn read_event(dir: &Path, ev: &Event) -> Result<(Vec<f32>, Option<Vec<i64>>), String> {
    use safetensors::tensor::Dtype;
    let p = dir.join(&ev.file);
    let bytes = std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("{}: not a safetensors file: {e}", p.display()))?;
    let d = st
        .tensor("data")
        .map_err(|e| format!("{}: no 'data' tensor: {e}", p.display()))?;
    if d.dtype() != Dtype::F32 || d.shape() != ev.shape.as_slice() {
        return Err(format!(
            "{}: data is {:?} {:?}, the manifest says f32 {:?}",
            p.display(),
            d.dtype(),
            d.shape(),
            ev.shape
        ));
    }
    let data = d
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let index = match st.tensor("index") {
        Ok(t) if t.dtype() == Dtype::I64 => Some(
            t.data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<i64>>(),
        ),
        Ok(_) => return Err(format!("{}: index is not i64", p.display())),
        Err(_) => None,
    };
    if ev.kind != Kind::Q {
        match &index {
            Some(i) if i.len() == ev.shape[0] => {}
            _ => {
                return Err(format!(
                    "{}: K/V event without one index per row",
                    p.display()
                ))
            }
        }
    }
    Ok((data, index))
}

/// The layer of a KV cache tensor from llama.cpp's name `cache_<tag>k_l<N>` /
/// `cache_<tag>v_l<N>` (`llama_kv_cache` constructor, src/llama-kv-cache.cpp), possibly with
/// a suffix like ` (view)`: `(is_k, layer)`.
pub fn parse_cache_name(name: &str) -> Option<(bool, u32)> {
    let rest = name.strip_prefix("cache_")?;
    let rest = rest.split(' ').next()?;
    let at = rest.rfind("_l")?;
    let layer: u32 = rest[at + 2..].parse().ok()?;
    match rest[..at].chars().last()? {
        'k' => Some((true, layer)),
        'v' => Some((false, layer)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: Kind, layer: u32, shape: Vec<usize>) -> Event {
        Event {
            seq: 0,
            kind,
            layer,
            file: String::new(),
            shape,
            rotated: kind != Kind::V,
            rot_n: 64,
            cache_type: "q8_0".into(),
            head_dim: 64,
            n_head_kv: 3,
            n_kv: 256,
            dv: 64,
            scale: 0.125,
            softcap: 0.0,
            v_type: "q8_0".into(),
        }
    }

    #[test]
    fn write_read_round_trip_and_limit() {
        let dir = std::env::temp_dir().join(format!("attnrot-capture-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = Writer::create(&dir, 8_000).unwrap();
        let k: Vec<f32> = (0..4 * 192).map(|i| i as f32 * 0.5 - 7.0).collect();
        let idx: Vec<i64> = vec![5, 6, 7, 8];
        assert_eq!(
            w.write(ev(Kind::K, 12, vec![4, 192]), &k, Some(&idx)),
            Written::Yes
        );
        let q = vec![f32::NAN, -0.0, f32::INFINITY, 1e-40];
        assert_eq!(
            w.write(ev(Kind::Q, 12, vec![1, 1, 1, 4]), &q, None),
            Written::Yes
        );
        // 3072 + 32 + 16 bytes written; the next 3104 bytes fit in 8000, the ones after not
        assert_eq!(
            w.write(ev(Kind::V, 3, vec![4, 192]), &k, Some(&idx)),
            Written::Yes
        );
        match w.write(ev(Kind::V, 4, vec![4, 192]), &k, Some(&idx)) {
            Written::StoppedNow(m) => assert!(m.contains("limit"), "{m}"),
            o => panic!("{o:?}"),
        }
        assert_eq!(
            w.write(ev(Kind::Q, 4, vec![1, 1, 1, 4]), &q, None),
            Written::Stopped
        );
        let evs = read_manifest(&dir).unwrap();
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0].layer, 12);
        assert_eq!(evs[1].kind, Kind::Q);
        assert_eq!(evs[2].seq, 2);
        assert_eq!(evs[1].scale, 0.125);
        let (d, i) = read_event(&dir, &evs[0]).unwrap();
        assert_eq!(d, k);
        assert_eq!(i.unwrap(), idx);
        let (d, i) = read_event(&dir, &evs[1]).unwrap();
        assert!(i.is_none());
        assert!(d[0].is_nan() && d[1].to_bits() == (-0.0f32).to_bits());
        assert_eq!(&d[2..], &q[2..]);
        // the description travels inside the file too
        let bytes = std::fs::read(dir.join(&evs[0].file)).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let m = meta.metadata().as_ref().unwrap()["attnrot_event"].clone();
        let back = Event::from_json(&serde_json::from_str(&m).unwrap()).unwrap();
        assert_eq!(back, evs[0]);
        // a truncated last manifest line is ignored, a broken middle one is an error
        let mp = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&mp).unwrap();
        std::fs::write(&mp, format!("{text}{{\"seq\": 3, \"ki")).unwrap();
        assert_eq!(read_manifest(&dir).unwrap().len(), 3);
        std::fs::write(&mp, format!("garbage\n{text}")).unwrap();
        assert!(read_manifest(&dir).is_err());
        // a data file that does not match its description
        let mut wrong = evs[0].clone();
        wrong.shape = vec![2, 192];
        assert!(read_event(&dir, &wrong)
            .unwrap_err()
            .contains("manifest says"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unwritable_directory_stops_with_a_message() {
        let dir = std::env::temp_dir().join(format!("attnrot-capture-ro-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = Writer::create(&dir, 1 << 20).unwrap();
        std::fs::remove_dir_all(&dir).unwrap(); // the directory disappears under the writer
        match w.write(ev(Kind::K, 0, vec![1, 4]), &[1.0; 4], Some(&[0])) {
            Written::StoppedNow(m) => assert!(m.contains("cannot write"), "{m}"),
            o => panic!("{o:?}"),
        }
        assert!(w.is_stopped());
    }

    #[test]
    fn cache_names() {
        assert_eq!(parse_cache_name("cache_k_l12"), Some((true, 12)));
        assert_eq!(parse_cache_name("cache_v_l0 (view)"), Some((false, 0)));
        assert_eq!(parse_cache_name("cache_swa_k_l3"), Some((true, 3)));
        assert_eq!(parse_cache_name("cache_k_lx"), None);
        assert_eq!(parse_cache_name("k-12"), None);
        assert_eq!(parse_cache_name("cache_q_l1"), None);
    }
}
