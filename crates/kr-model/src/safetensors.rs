//! The safetensors files of a Hugging Face model directory: one `model.safetensors`, or the
//! shards listed by `model.safetensors.index.json`. Every file is memory-mapped and its
//! tensors are borrowed from the map as [`RawTensor`]s (F32, F16, BF16). A matrix `X.weight`
//! with `X.scales` and `X.biases` beside it is MLX-quantised (uint32-packed integers): its bits
//! and group size follow from the shapes, and the three are interleaved into one owned tensor
//! (see `quant::mlx`).

use crate::error::{ModelError, Result};
use crate::quant::{GgmlType, MlxAffine, ScaleType};
use crate::weights::{RawTensor, TensorBytes};
use ::safetensors::{Dtype, SafeTensors};
use memmap2::Mmap;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where one tensor lives: its file, type, shape and byte range in the map.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    offset: usize,
    len: usize,
}

/// All tensors of a model directory, by their Hugging Face names.
pub struct SafetensorsSet {
    files: Vec<(PathBuf, Arc<Mmap>)>,
    tensors: HashMap<String, Entry>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The shard files named by `model.safetensors.index.json`'s `weight_map`.
fn index_shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(io_err(index))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Truncated {
            path: index.to_path_buf(),
            what: format!("invalid JSON: {e}"),
        })?;
    let map = json["weight_map"]
        .as_object()
        .ok_or_else(|| ModelError::Metadata {
            path: index.to_path_buf(),
            key: "weight_map".into(),
            expected: "object of tensor name to shard file",
        })?;
    let files: BTreeSet<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    Ok(files.into_iter().collect())
}

impl SafetensorsSet {
    /// Opens the weights of the directory `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let names = if index.exists() {
            index_shards(&index)?
        } else if dir.join("model.safetensors").exists() {
            vec!["model.safetensors".to_string()]
        } else {
            return Err(ModelError::Io {
                path: dir.join("model.safetensors"),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json in the directory",
                ),
            });
        };
        let mut set = Self {
            files: Vec::new(),
            tensors: HashMap::new(),
        };
        for name in names {
            set.add_file(&dir.join(name))?;
        }
        Ok(set)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        // SAFETY: model files are not modified while the server runs (as for GGUF files).
        let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(io_err(path))?);
        let st = SafeTensors::deserialize(&map).map_err(|e| ModelError::Truncated {
            path: path.to_path_buf(),
            what: format!("not a valid safetensors file: {e}"),
        })?;
        let base = map.as_ptr() as usize;
        for (name, view) in st.tensors() {
            let entry = Entry {
                file: self.files.len(),
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                offset: view.data().as_ptr() as usize - base,
                len: view.data().len(),
            };
            self.tensors.insert(name, entry);
        }
        self.files.push((path.to_path_buf(), map));
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The path of the file holding `name` (or of the first file, for error messages).
    fn path_of(&self, name: &str) -> PathBuf {
        let i = self.tensors.get(name).map_or(0, |e| e.file);
        self.files.get(i).map(|f| f.0.clone()).unwrap_or_default()
    }

    /// The tensor `name` as a `rows × cols` matrix (a 1-D tensor is `1 × len`).
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<RawTensor> {
        if let Some(prefix) = name.strip_suffix(".weight") {
            if self.contains(&format!("{prefix}.scales")) {
                return self.mlx_matrix(prefix, rows, cols);
            }
        }
        let e = self.entry(name)?;
        let expected = if rows == 1 {
            vec![cols]
        } else {
            vec![rows, cols]
        };
        if e.shape != expected && e.shape != [rows, cols] {
            return Err(ModelError::Shape {
                path: self.path_of(name),
                tensor: name.to_string(),
                expected,
                actual: e.shape.clone(),
            });
        }
        let ty = match e.dtype {
            Dtype::F32 => GgmlType::F32,
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::BF16,
            other => {
                return Err(ModelError::Metadata {
                    path: self.path_of(name),
                    key: format!("{name} dtype {other:?}"),
                    expected: "F32, F16 or BF16",
                })
            }
        };
        Ok(RawTensor {
            name: name.to_string(),
            ty,
            rows,
            cols,
            bytes: TensorBytes::Mapped {
                map: self.files[e.file].1.clone(),
                offset: e.offset,
                len: e.len,
            },
        })
    }

    /// The bytes of entry `e`.
    fn bytes(&self, e: &Entry) -> &[u8] {
        &self.files[e.file].1[e.offset..e.offset + e.len]
    }

    /// The entry `name`, or an error naming the tensor and its file.
    fn entry(&self, name: &str) -> Result<&Entry> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path_of(name),
                tensor: name.to_string(),
            })
    }

    /// An entry that must exist, with its 2-D shape.
    fn entry_2d(&self, name: &str) -> Result<(&Entry, usize, usize)> {
        let e = self.entry(name)?;
        match e.shape[..] {
            [r, c] => Ok((e, r, c)),
            _ => Err(ModelError::Shape {
                path: self.path_of(name),
                tensor: name.to_string(),
                expected: vec![0, 0],
                actual: e.shape.clone(),
            }),
        }
    }

    /// The MLX-quantised matrix `prefix.{weight,scales,biases}` as `rows × cols`.
    fn mlx_matrix(&self, prefix: &str, rows: usize, cols: usize) -> Result<RawTensor> {
        let name = format!("{prefix}.weight");
        let bad = |what: String| ModelError::Truncated {
            path: self.path_of(&name),
            what: format!("MLX-quantised tensor '{name}': {what}"),
        };
        let (w, w_rows, words) = self.entry_2d(&name)?;
        let (s, s_rows, groups) = self.entry_2d(&format!("{prefix}.scales"))?;
        let (b, b_rows, b_groups) = self.entry_2d(&format!("{prefix}.biases"))?;
        if w.dtype != Dtype::U32 || w_rows != rows || s_rows != rows || b_rows != rows {
            return Err(bad(format!(
                "expected {rows} rows of uint32 with scales and biases of {rows} rows, found {:?} \
                 {:?}, scales {:?}, biases {:?}",
                w.dtype, w.shape, s.shape, b.shape
            )));
        }
        let scale = match s.dtype {
            Dtype::F16 => ScaleType::F16,
            Dtype::BF16 => ScaleType::BF16,
            Dtype::F32 => ScaleType::F32,
            other => return Err(bad(format!("scales of type {other:?}"))),
        };
        let bits = words * 32 / cols;
        let group = cols.checked_div(groups).unwrap_or(0);
        let enc = MlxAffine::new(bits, group, scale)
            .filter(|_| words * 32 == bits * cols && group * groups == cols)
            .filter(|_| b.dtype == s.dtype && b_groups == groups)
            .ok_or_else(|| {
                bad(format!(
                    "{cols} columns packed in {words} words with {groups} groups give {bits} bits \
                     in groups of {group}; supported: 4 or 8 bits in groups of 32, 64 or 128"
                ))
            })?;
        let bytes = enc.interleave(self.bytes(w), self.bytes(s), self.bytes(b), rows, cols);
        Ok(RawTensor {
            name,
            ty: GgmlType::Mlx(enc),
            rows,
            cols,
            bytes: TensorBytes::Owned(Arc::new(bytes)),
        })
    }

    /// A 1-D tensor decoded to f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        Ok(self.matrix(name, 1, len)?.to_f32())
    }

    pub fn optional_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        if self.contains(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::safetensors::tensor::TensorView;

    /// A directory with one safetensors file of the given (name, dtype, shape, bytes).
    fn dir_with(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kr-st-{}-{}", std::process::id(), tensors[0].2[1]));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.to_string(),
                    TensorView::new(*d, s.clone(), b).expect("view"),
                )
            })
            .collect();
        let bytes = ::safetensors::serialize(views, None).expect("serialize");
        std::fs::write(dir.join("model.safetensors"), bytes).expect("write");
        dir
    }

    fn mlx_tensors(words: usize, groups: usize) -> Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)> {
        vec![
            (
                "w.weight",
                Dtype::U32,
                vec![2, words],
                vec![0x21; 2 * words * 4],
            ),
            (
                "w.scales",
                Dtype::F32,
                vec![2, groups],
                0.5f32.to_le_bytes().repeat(2 * groups),
            ),
            (
                "w.biases",
                Dtype::F32,
                vec![2, groups],
                (-1f32).to_le_bytes().repeat(2 * groups),
            ),
        ]
    }

    #[test]
    fn mlx_groups_are_interleaved_and_decode() {
        let dir = dir_with(&mlx_tensors(8, 2));
        let set = SafetensorsSet::open_dir(&dir).expect("open");
        let t = set.matrix("w.weight", 2, 64).expect("4-bit, groups of 32");
        assert_eq!(t.ty.name(), "MLX 4-bit");
        // Every byte 0x21: element 2k is 1, element 2k + 1 is 2; value 0.5 q - 1.
        let v = t.to_f32();
        assert_eq!(&v[..4], &[-0.5, 0.0, -0.5, 0.0]);
    }

    #[test]
    fn unsupported_mlx_bits_name_the_tensor() {
        let dir = dir_with(&mlx_tensors(6, 2));
        let set = SafetensorsSet::open_dir(&dir).expect("open");
        let e = set.matrix("w.weight", 2, 64).unwrap_err().to_string();
        assert!(e.contains("'w.weight'") && e.contains("3 bits"), "{e}");
    }
}
