//! The safetensors files of a Hugging Face model directory: one `model.safetensors`, or the
//! shards listed by `model.safetensors.index.json`. Every file is memory-mapped and its
//! tensors are borrowed from the map as [`RawTensor`]s (F32, F16, BF16 only).

use crate::error::{ModelError, Result};
use crate::quant::GgmlType;
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
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path_of(name),
                tensor: name.to_string(),
            })?;
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
