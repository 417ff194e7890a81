//! Writer for GGUF version 3 files (little-endian), the format [`super::gguf`] reads.
//!
//! Metadata is written in insertion order, then the tensor infos (dimensions reversed
//! from PyTorch order to GGUF's innermost-first order), zero padding to the alignment
//! (`general.alignment` when the caller set it, else 32), and the tensor data, each
//! tensor starting at an aligned offset and followed by padding, as llama.cpp writes
//! files.
//!
//! Tensor data can be given up front (bytes or a loaded [`Tensor`], which is not
//! copied) or produced lazily while writing ([`GgufWriter::add_tensor_lazy`]), so a
//! converter can quantize one tensor at a time instead of holding the whole model.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use super::gguf::{ggml_type_id, GgufValue, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Where a tensor's bytes come from.
enum Data<'a> {
    Bytes(Vec<u8>),
    Tensor(Tensor),
    Lazy(Box<dyn FnOnce() -> Result<Vec<u8>> + 'a>),
}

/// A tensor waiting to be written.
struct Pending<'a> {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    n_bytes: usize,
    data: Data<'a>,
}

/// Builds a GGUF v3 file: add metadata and tensors, then [`GgufWriter::write_file`] or
/// [`GgufWriter::write_to`].
pub struct GgufWriter<'a> {
    metadata: Vec<(String, GgufValue)>,
    keys: HashSet<String>,
    tensors: Vec<Pending<'a>>,
    names: HashSet<String>,
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> GgufWriter<'a> {
    /// An empty file (no metadata, no tensors).
    pub fn new() -> Self {
        GgufWriter {
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
        }
    }

    /// Appends a metadata entry. Errors on an empty or repeated key, an array whose
    /// elements are not all of one type, or an invalid `general.alignment`.
    pub fn add(&mut self, key: impl Into<String>, value: GgufValue) -> Result<()> {
        let key = key.into();
        if key.is_empty() {
            return Err(invalid("metadata keys must not be empty".into()));
        }
        if self.keys.contains(&key) {
            return Err(invalid(format!("metadata key '{key}' was already added")));
        }
        check_homogeneous(&key, &value)?;
        if key == "general.alignment" {
            match value {
                GgufValue::U32(a) if a.is_power_of_two() && a <= 1 << 16 => {}
                _ => {
                    return Err(invalid(format!(
                        "general.alignment must be a u32 power of two up to 65536, got {value:?}"
                    )))
                }
            }
        }
        self.keys.insert(key.clone());
        self.metadata.push((key, value));
        Ok(())
    }

    /// The metadata added so far, in order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    fn check_tensor(&self, name: &str, dtype: DType, shape: &[usize]) -> Result<usize> {
        if name.is_empty() {
            return Err(invalid("tensor names must not be empty".into()));
        }
        if self.names.contains(name) {
            return Err(invalid(format!("tensor '{name}' was already added")));
        }
        if shape.len() > MAX_DIMS {
            return Err(invalid(format!(
                "tensor '{name}' has {} dimensions (GGUF allows at most {MAX_DIMS})",
                shape.len()
            )));
        }
        let row = shape.last().copied().unwrap_or(1);
        // As the reader requires: the product of the nonzero dimensions must fit.
        let numel = shape
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| invalid(format!("tensor '{name}': shape {shape:?} overflows")))?;
        let row_bytes = dtype.row_bytes(row).ok_or_else(|| {
            invalid(format!(
                "tensor '{name}' ({dtype:?}): rows of {row} values are not a whole number of \
                 {}-value blocks",
                dtype.block_size()
            ))
        })?;
        if shape.contains(&0) {
            return Ok(0);
        }
        row_bytes
            .checked_mul(numel / row)
            .ok_or_else(|| invalid(format!("tensor '{name}': size overflows")))
    }

    fn push(&mut self, name: String, dtype: DType, shape: &[usize], data: Data<'a>) -> Result<()> {
        let n_bytes = self.check_tensor(&name, dtype, shape)?;
        let given = match &data {
            Data::Bytes(b) => Some(b.len()),
            Data::Tensor(t) => Some(t.bytes().len()),
            Data::Lazy(_) => None,
        };
        if let Some(g) = given {
            if g != n_bytes {
                return Err(invalid(format!(
                    "tensor '{name}' ({dtype:?} {shape:?}) needs {n_bytes} bytes, got {g}"
                )));
            }
        }
        self.names.insert(name.clone());
        self.tensors.push(Pending {
            name,
            dtype,
            shape: shape.to_vec(),
            n_bytes,
            data,
        });
        Ok(())
    }

    /// Adds a tensor from its raw little-endian bytes; `shape` is in PyTorch order
    /// (outermost first) and `data` must be exactly `dtype.row_bytes` of it.
    pub fn add_tensor_bytes(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: &[usize],
        data: Vec<u8>,
    ) -> Result<()> {
        self.push(name.into(), dtype, shape, Data::Bytes(data))
    }

    /// Adds a loaded tensor as it is stored (its dtype, shape and bytes; a memory-mapped
    /// tensor is read only when the file is written).
    pub fn add_tensor(&mut self, name: impl Into<String>, tensor: &Tensor) -> Result<()> {
        let shape = tensor.shape.clone();
        self.push(
            name.into(),
            tensor.dtype,
            &shape,
            Data::Tensor(tensor.clone()),
        )
    }

    /// Adds a tensor whose bytes `produce` returns when the file is written (called
    /// once, in tensor order); it must return exactly the tensor's size in bytes.
    pub fn add_tensor_lazy(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: &[usize],
        produce: impl FnOnce() -> Result<Vec<u8>> + 'a,
    ) -> Result<()> {
        self.push(name.into(), dtype, shape, Data::Lazy(Box::new(produce)))
    }

    fn alignment(&self) -> usize {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .map_or(DEFAULT_ALIGNMENT, |a| a as usize)
    }

    /// Writes the file to `out` (wrap files in a `BufWriter`). I/O errors are reported
    /// against `path_for_errors`.
    pub fn write_to<W: Write>(self, out: W, path_for_errors: &Path) -> Result<()> {
        let mut w = Counter { inner: out, n: 0 };
        let io = |e: std::io::Error| Error::io(path_for_errors, e);
        let alignment = self.alignment();

        w.put(&GGUF_MAGIC).map_err(io)?;
        w.put(&3u32.to_le_bytes()).map_err(io)?;
        w.put(&(self.tensors.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.put(&(self.metadata.len() as u64).to_le_bytes())
            .map_err(io)?;
        for (key, value) in &self.metadata {
            write_str(&mut w, key).map_err(io)?;
            w.put(&value.type_code().to_le_bytes()).map_err(io)?;
            write_value(&mut w, value).map_err(io)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_str(&mut w, &t.name).map_err(io)?;
            w.put(&(t.shape.len() as u32).to_le_bytes()).map_err(io)?;
            for d in t.shape.iter().rev() {
                w.put(&(*d as u64).to_le_bytes()).map_err(io)?;
            }
            w.put(&ggml_type_id(t.dtype).to_le_bytes()).map_err(io)?;
            w.put(&offset.to_le_bytes()).map_err(io)?;
            offset += (t.n_bytes as u64).next_multiple_of(alignment as u64);
        }
        w.pad(alignment).map_err(io)?;
        for t in self.tensors {
            let Pending {
                name,
                dtype,
                shape,
                n_bytes,
                data,
            } = t;
            let owned: Vec<u8>;
            let tensor: Tensor;
            let bytes: &[u8] = match data {
                Data::Bytes(b) => {
                    owned = b;
                    &owned
                }
                Data::Tensor(x) => {
                    tensor = x;
                    tensor.bytes()
                }
                Data::Lazy(f) => {
                    owned = f()?;
                    if owned.len() != n_bytes {
                        return Err(invalid(format!(
                            "tensor '{name}' ({dtype:?} {shape:?}) needs {n_bytes} bytes, \
                             its producer returned {}",
                            owned.len()
                        )));
                    }
                    &owned
                }
            };
            w.put(bytes).map_err(io)?;
            w.pad(alignment).map_err(io)?;
        }
        w.inner.flush().map_err(io)
    }

    /// Writes the file to `path` (created or truncated).
    pub fn write_file(self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        self.write_to(std::io::BufWriter::with_capacity(1 << 20, file), path)
    }

    /// The whole file as bytes (tests, small files).
    pub fn to_bytes(self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.write_to(&mut v, Path::new("<memory>"))?;
        Ok(v)
    }
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// Arrays must hold one element type (nested arrays may differ from each other).
fn check_homogeneous(key: &str, v: &GgufValue) -> Result<()> {
    if let GgufValue::Array(a) = v {
        if let Some(first) = a.first() {
            let t = first.type_code();
            if a.iter().any(|e| e.type_code() != t) {
                return Err(invalid(format!(
                    "metadata array '{key}' mixes element types"
                )));
            }
        }
        for e in a {
            check_homogeneous(key, e)?;
        }
    }
    Ok(())
}

/// Counts bytes written, for padding.
struct Counter<W: Write> {
    inner: W,
    n: u64,
}

impl<W: Write> Counter<W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(b)?;
        self.n += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self, alignment: usize) -> std::io::Result<()> {
        let target = self.n.next_multiple_of(alignment as u64);
        let zeros = [0u8; 64];
        while self.n < target {
            let k = ((target - self.n) as usize).min(zeros.len());
            self.put(&zeros[..k])?;
        }
        Ok(())
    }
}

fn write_str<W: Write>(w: &mut Counter<W>, s: &str) -> std::io::Result<()> {
    w.put(&(s.len() as u64).to_le_bytes())?;
    w.put(s.as_bytes())
}

/// Writes a value's payload (its type code is written by the caller).
fn write_value<W: Write>(w: &mut Counter<W>, v: &GgufValue) -> std::io::Result<()> {
    match v {
        GgufValue::U8(x) => w.put(&[*x]),
        GgufValue::I8(x) => w.put(&x.to_le_bytes()),
        GgufValue::U16(x) => w.put(&x.to_le_bytes()),
        GgufValue::I16(x) => w.put(&x.to_le_bytes()),
        GgufValue::U32(x) => w.put(&x.to_le_bytes()),
        GgufValue::I32(x) => w.put(&x.to_le_bytes()),
        GgufValue::U64(x) => w.put(&x.to_le_bytes()),
        GgufValue::I64(x) => w.put(&x.to_le_bytes()),
        GgufValue::F32(x) => w.put(&x.to_le_bytes()),
        GgufValue::F64(x) => w.put(&x.to_le_bytes()),
        GgufValue::Bool(x) => w.put(&[*x as u8]),
        GgufValue::String(s) => write_str(w, s),
        GgufValue::Array(a) => {
            // An empty array has no element to take the type from: write it as u8.
            let elem = a.first().map_or(0, GgufValue::type_code);
            w.put(&elem.to_le_bytes())?;
            w.put(&(a.len() as u64).to_le_bytes())?;
            for e in a {
                write_value(w, e)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gguf::GgufFile;
    use super::*;

    #[test]
    fn round_trip_every_value_type() {
        let values = vec![
            ("a.u8", GgufValue::U8(200)),
            ("a.i8", GgufValue::I8(-5)),
            ("a.u16", GgufValue::U16(65535)),
            ("a.i16", GgufValue::I16(-30000)),
            ("a.u32", GgufValue::U32(4_000_000_000)),
            ("a.i32", GgufValue::I32(-2_000_000_000)),
            ("a.u64", GgufValue::U64(u64::MAX)),
            ("a.i64", GgufValue::I64(i64::MIN)),
            ("a.f32", GgufValue::F32(1.5e-5)),
            ("a.f64", GgufValue::F64(-2.25e300)),
            ("a.bool", GgufValue::Bool(true)),
            ("a.str", GgufValue::String("héllo ▁ 🦙".into())),
            ("a.empty", GgufValue::Array(vec![])),
            (
                "a.strs",
                GgufValue::Array(vec![
                    GgufValue::String("x".into()),
                    GgufValue::String(String::new()),
                ]),
            ),
            (
                "a.nested",
                GgufValue::Array(vec![
                    GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(-2)]),
                    GgufValue::Array(vec![GgufValue::F64(0.5)]),
                ]),
            ),
        ];
        let mut w = GgufWriter::new();
        for (k, v) in &values {
            w.add(*k, v.clone()).unwrap();
        }
        assert!(w.add("a.u8", GgufValue::U8(1)).is_err());
        assert!(w
            .add(
                "a.mixed",
                GgufValue::Array(vec![GgufValue::U8(1), GgufValue::I8(1)])
            )
            .is_err());
        let q: Vec<u8> = (0..34 * 2).map(|i| i as u8).collect();
        w.add_tensor_bytes("q", DType::Q8_0, &[2, 32], q.clone())
            .unwrap();
        w.add_tensor_lazy("f", DType::F32, &[3], || {
            Ok([1.0f32, 2.0, 3.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect())
        })
        .unwrap();
        assert!(w
            .add_tensor_bytes("bad", DType::Q8_0, &[2, 31], vec![])
            .is_err());
        assert!(w
            .add_tensor_bytes("q", DType::F32, &[1], vec![0; 4])
            .is_err());
        let bytes = w.to_bytes().unwrap();

        let f = GgufFile::from_bytes(bytes).unwrap();
        assert_eq!(f.version(), 3);
        let got: Vec<(&str, &GgufValue)> =
            f.metadata().iter().map(|(k, v)| (k.as_str(), v)).collect();
        let want: Vec<(&str, &GgufValue)> = values.iter().map(|(k, v)| (*k, v)).collect();
        assert_eq!(got, want);
        assert_eq!(f.data_offset() % 32, 0);
        let t = f.tensor("q").unwrap();
        assert_eq!((t.dtype, t.shape.clone()), (DType::Q8_0, vec![2, 32]));
        assert_eq!(t.bytes(), &q[..]);
        assert_eq!(f.tensor_infos()[1].offset, 96); // 68 bytes padded to 96
        assert_eq!(f.tensor("f").unwrap().to_f32_vec(), vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn custom_alignment_and_bad_producer() {
        let mut w = GgufWriter::new();
        w.add("general.alignment", GgufValue::U32(64)).unwrap();
        w.add_tensor_bytes("a", DType::F16, &[3], vec![0, 60, 0, 64, 0, 66])
            .unwrap();
        w.add_tensor_bytes("b", DType::BF16, &[1, 1], vec![0x80, 0x3f])
            .unwrap();
        let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
        assert_eq!(f.alignment(), 64);
        assert_eq!(f.data_offset() % 64, 0);
        assert_eq!(f.tensor_infos()[1].offset, 64);
        assert_eq!(f.tensor("a").unwrap().to_f32_vec(), vec![1.0, 2.0, 3.0]);
        assert_eq!(f.tensor("b").unwrap().to_f32_vec(), vec![1.0]);

        assert!(GgufWriter::new()
            .add("general.alignment", GgufValue::U32(48))
            .is_err());
        let mut w = GgufWriter::new();
        w.add_tensor_lazy("x", DType::F32, &[2], || Ok(vec![0; 4]))
            .unwrap();
        assert!(w.to_bytes().is_err());
    }
}
