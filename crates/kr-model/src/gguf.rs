//! A GGUF v2/v3 reader over a memory map: metadata, tensor directory, bounds-checked tensor
//! views. Nothing is copied; tensors borrow the map.
//!
//! Invariant: every [`TensorInfo`] returned lies fully inside the file (checked at open, so a
//! truncated file fails there, naming the first tensor that does not fit).

use crate::error::{ModelError, Result};
use crate::quant::GgmlType;
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where a tensor lives in the file and how it is encoded.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Absolute byte offset in the file.
    pub offset: usize,
    pub size: usize,
}

/// One tensor of the directory as written: name, dims, type id, offset in the data.
type DirectoryEntry = (String, Vec<usize>, u32, usize);

/// Most dimensions a GGUF tensor has (ggml's GGML_MAX_DIMS).
const MAX_DIMS: usize = 4;

impl TensorInfo {
    /// Elements of the tensor (checked not to overflow when the file was opened).
    pub fn num_elements(&self) -> usize {
        self.dims.iter().product()
    }
}

/// An open GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub metadata: HashMap<String, Value>,
    pub tensors: HashMap<String, TensorInfo>,
    map: Arc<Mmap>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| ModelError::Truncated {
                path: self.path.to_path_buf(),
                what: format!(
                    "header ends at byte {} while reading {n} more bytes",
                    self.buf.len()
                ),
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn len(&mut self) -> Result<usize> {
        let n = self.u64()?;
        // A length beyond the file is corruption; checking here avoids huge allocations.
        if n > self.buf.len() as u64 {
            return Err(ModelError::Truncated {
                path: self.path.to_path_buf(),
                what: format!("length {n} exceeds the file size"),
            });
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self, ty: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U64(self.take(1)?[0] as u64),
            1 => Value::I64(self.take(1)?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as u64),
            3 => Value::I64(i16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64),
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(self.u32()? as i32 as i64),
            6 => Value::F64(f32::from_bits(self.u32()?) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                let inner = self.u32()?;
                if inner == 9 {
                    // llama.cpp writes no nested arrays; reading them would recurse once
                    // per level, a few bytes of file each.
                    return Err(ModelError::Truncated {
                        path: self.path.to_path_buf(),
                        what: "a nested metadata array (GGUF files have none)".into(),
                    });
                }
                let n = self.len()?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(inner)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            other => {
                return Err(ModelError::Truncated {
                    path: self.path.to_path_buf(),
                    what: format!("unknown metadata value type {other}"),
                })
            }
        })
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file: header, metadata, and that every tensor fits.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file changed underneath us is outside our contract.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let mut c = Cursor {
            buf: &map,
            pos: 0,
            path,
        };
        Self::check_magic_and_version(&mut c, path)?;
        let n_tensors = c.len()?;
        let n_kv = c.len()?;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            metadata.insert(key, c.value(ty)?);
        }
        let raw = Self::tensor_directory(&mut c, path, n_tensors)?;
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let tensors = Self::tensor_infos(path, raw, data_start, map.len())?;
        Ok(Self {
            path: path.to_path_buf(),
            metadata,
            tensors,
            map: Arc::new(map),
        })
    }

    fn check_magic_and_version(c: &mut Cursor<'_>, path: &Path) -> Result<()> {
        let not_gguf = |magic| ModelError::NotGguf {
            path: path.to_path_buf(),
            magic,
        };
        let magic: [u8; 4] = c
            .take(4)
            .map_err(|_| not_gguf([0; 4]))?
            .try_into()
            .expect("4");
        if &magic != b"GGUF" {
            return Err(not_gguf(magic));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::GgufVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        Ok(())
    }

    /// The tensor directory as written: `(name, dims, type id, offset in the data)`.
    fn tensor_directory(
        c: &mut Cursor<'_>,
        path: &Path,
        n_tensors: usize,
    ) -> Result<Vec<DirectoryEntry>> {
        // Reserve for what the file could hold, not what its header claims.
        let mut raw = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims > MAX_DIMS {
                return Err(ModelError::Truncated {
                    path: path.to_path_buf(),
                    what: format!(
                        "tensor '{name}' has {n_dims} dimensions; GGUF allows {MAX_DIMS}"
                    ),
                });
            }
            let dims = (0..n_dims)
                .map(|_| c.u64().map(|d| d as usize))
                .collect::<Result<Vec<_>>>()?;
            let ty = c.u32()?;
            let offset = c.u64()? as usize;
            raw.push((name, dims, ty, offset));
        }
        Ok(raw)
    }

    fn tensor_infos(
        path: &Path,
        raw: Vec<DirectoryEntry>,
        data_start: usize,
        file_len: usize,
    ) -> Result<HashMap<String, TensorInfo>> {
        let mut tensors = HashMap::new();
        for (name, dims, ty_id, rel) in raw {
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| ModelError::UnsupportedType {
                path: path.to_path_buf(),
                tensor: name.clone(),
                ggml_type: ggml_type_label(ty_id),
                supported: GgmlType::supported_names(),
            })?;
            let overflow = || ModelError::Truncated {
                path: path.to_path_buf(),
                what: format!("tensor '{name}': its dimensions {dims:?} or offset {rel} overflow"),
            };
            let n = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(overflow)?;
            if n % ty.block_elems() != 0 {
                return Err(ModelError::Truncated {
                    path: path.to_path_buf(),
                    what: format!(
                        "tensor '{name}' has {n} elements, not a multiple of its block size"
                    ),
                });
            }
            let size = (n / ty.block_elems())
                .checked_mul(ty.block_bytes())
                .ok_or_else(overflow)?;
            let offset = data_start.checked_add(rel).ok_or_else(overflow)?;
            let end = offset.checked_add(size).ok_or_else(overflow)?;
            if end > file_len {
                return Err(ModelError::Truncated {
                    path: path.to_path_buf(),
                    what: format!("tensor '{name}' needs bytes {offset}..{end} but the file has {file_len} bytes"),
                });
            }
            tensors.insert(
                name.clone(),
                TensorInfo {
                    name,
                    dims,
                    ty,
                    offset,
                    size,
                },
            );
        }
        Ok(tensors)
    }

    /// The raw bytes of a tensor (bounds were checked at open).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.map[info.offset..info.offset + info.size]
    }

    /// A shared handle on the map, so weights can borrow it without copying.
    pub fn map(&self) -> Arc<Mmap> {
        self.map.clone()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn meta_err(&self, key: &str, expected: &'static str) -> ModelError {
        ModelError::Metadata {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
        }
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.meta_err(key, "integer"))
    }
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| self.meta_err(key, "number"))
    }
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.meta_err(key, "string"))
    }
    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        self.get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| self.meta_err(key, "array"))
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })
    }
}

/// GGML's name for type id `id` (including types kr-serve does not read) and the id.
fn ggml_type_label(id: u32) -> String {
    const NAMES: [&str; 41] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
        "NVFP4",
    ];
    match NAMES.get(id as usize) {
        Some(name) => format!("{name} (id {id})"),
        None => format!("unknown type id {id}"),
    }
}
