//! Reader for llama.cpp's GGUF files (versions 2 and 3, little-endian), and the mapping
//! of a `llama` GGUF model to [`ModelWeights`].
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "GGUF"  u32 version  u64 n_tensors  u64 n_kv
//! n_kv × { string key, u32 value_type, value }
//! n_tensors × { string name, u32 n_dims, n_dims × u64 dim (innermost first),
//!               u32 ggml_type, u64 offset (relative to the data section) }
//! zero padding to `general.alignment` (default 32)
//! data section: tensor bytes, each at an aligned offset
//! ```
//!
//! A string is a `u64` byte length followed by UTF-8 bytes; an array value is a `u32`
//! element type, a `u64` count and the elements (arrays may nest).
//!
//! The file is memory-mapped once; tensors are zero-copy [`Storage::Mapped`] views with
//! their dimensions reversed into PyTorch order (outermost first). Every length, count
//! and offset read from the file is checked against the bytes actually present before
//! anything is allocated or sliced, so a corrupt or hostile file gives an error, never
//! a panic or a huge allocation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::ModelWeights;
use crate::config::{with_key_names, ModelArgs, RopeScaling};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Most dimensions a ggml tensor can have.
pub const MAX_DIMS: usize = 4;
/// Most nesting levels accepted for array values.
const MAX_ARRAY_DEPTH: usize = 8;
/// Most metadata values (array elements included) accepted in one file: far above any
/// real vocabulary (a 256k-token vocabulary with scores, types and merges is ~1M), low
/// enough that a hostile file cannot make the parser allocate gigabytes.
const MAX_METADATA_VALUES: usize = 1 << 23;
/// Largest alignment accepted.
const MAX_ALIGNMENT: usize = 1 << 16;

/// Metadata value type codes (`gguf_type`).
mod vt {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// `uint8` (type 0).
    U8(u8),
    /// `int8` (type 1).
    I8(i8),
    /// `uint16` (type 2).
    U16(u16),
    /// `int16` (type 3).
    I16(i16),
    /// `uint32` (type 4).
    U32(u32),
    /// `int32` (type 5).
    I32(i32),
    /// `uint64` (type 10).
    U64(u64),
    /// `int64` (type 11).
    I64(i64),
    /// `float32` (type 6).
    F32(f32),
    /// `float64` (type 12).
    F64(f64),
    /// `bool` (type 7; one byte, nonzero is true).
    Bool(bool),
    /// UTF-8 `string` (type 8).
    String(String),
    /// `array` (type 9): elements all of one type (an empty array is written as `u8`).
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The GGUF type code of this value.
    pub fn type_code(&self) -> u32 {
        match self {
            GgufValue::U8(_) => vt::U8,
            GgufValue::I8(_) => vt::I8,
            GgufValue::U16(_) => vt::U16,
            GgufValue::I16(_) => vt::I16,
            GgufValue::U32(_) => vt::U32,
            GgufValue::I32(_) => vt::I32,
            GgufValue::U64(_) => vt::U64,
            GgufValue::I64(_) => vt::I64,
            GgufValue::F32(_) => vt::F32,
            GgufValue::F64(_) => vt::F64,
            GgufValue::Bool(_) => vt::BOOL,
            GgufValue::String(_) => vt::STRING,
            GgufValue::Array(_) => vt::ARRAY,
        }
    }

    /// A short name of the value's type (`"u32"`, `"string"`, `"array"`, ...).
    pub fn type_name(&self) -> &'static str {
        value_type_name(self.type_code())
    }

    /// The value as an unsigned integer, for any integer type holding a value >= 0.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, for any integer type that fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, for `f32` and `f64` values.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value of a `bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value of a `string`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of an `array`.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Name of a metadata value type code.
fn value_type_name(code: u32) -> &'static str {
    match code {
        vt::U8 => "u8",
        vt::I8 => "i8",
        vt::U16 => "u16",
        vt::I16 => "i16",
        vt::U32 => "u32",
        vt::I32 => "i32",
        vt::F32 => "f32",
        vt::BOOL => "bool",
        vt::STRING => "string",
        vt::ARRAY => "array",
        vt::U64 => "u64",
        vt::I64 => "i64",
        vt::F64 => "f64",
        _ => "unknown",
    }
}

/// The ggml type id of a [`DType`] (as written in GGUF tensor infos).
pub fn ggml_type_id(dtype: DType) -> u32 {
    dtype.info().ggml_id
}

/// The [`DType`] of a ggml type id, `None` for types llama2 does not support.
pub fn dtype_from_ggml(id: u32) -> Option<DType> {
    DType::from_ggml(id)
}

/// ggml's name of a type id (`"Q5_0"`, `"IQ4_XS"`, ...), `None` for ids ggml does not
/// define.
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    const NAMES: [&str; 43] = [
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
        "Q1_0",
        "Q2_0",
    ];
    NAMES.get(usize::try_from(id).ok()?).copied()
}

/// Supported tensor types, for error messages.
const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K";

/// One entry of the tensor-info table.
#[derive(Clone, Debug)]
pub struct GgufTensorInfo {
    /// Tensor name (`blk.0.attn_q.weight`, ...).
    pub name: String,
    /// Shape in PyTorch order (outermost first): the file's dimensions reversed.
    pub shape: Vec<usize>,
    /// The ggml type id as stored.
    pub ggml_type: u32,
    /// Offset of the tensor's bytes from the start of the data section.
    pub offset: u64,
    /// Absolute byte range in the file; `None` for types llama2 does not support.
    range: Option<(usize, usize)>,
}

impl GgufTensorInfo {
    /// The element type, `None` when llama2 does not support the tensor's ggml type.
    pub fn dtype(&self) -> Option<DType> {
        dtype_from_ggml(self.ggml_type)
    }

    /// ggml's name of the type, or `"unknown"`.
    pub fn type_name(&self) -> &'static str {
        ggml_type_name(self.ggml_type).unwrap_or("unknown")
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size of the tensor's data in bytes (`None` for unsupported types).
    pub fn n_bytes(&self) -> Option<usize> {
        self.range.map(|(a, b)| b - a)
    }
}

/// The bytes the file was parsed from.
#[derive(Debug)]
enum Source {
    /// A read-only memory map of the file.
    Mapped(Arc<Mmap>),
    /// Bytes handed to [`GgufFile::from_bytes`].
    Owned(Arc<Vec<u8>>),
}

impl Source {
    fn bytes(&self) -> &[u8] {
        match self {
            Source::Mapped(m) => m,
            Source::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file: metadata, tensor infos and the (mapped) bytes.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    source: Source,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    keys: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: usize,
    data_offset: usize,
}

impl GgufFile {
    /// Memory-maps and parses the GGUF file at `path`.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            return Err(Error::checkpoint(path, "the file is empty"));
        }
        // SAFETY: the mapping is only ever read, and the file is opened read-only. As with
        // every mmap, another process truncating or rewriting the file while it is mapped
        // would be undefined behaviour; we accept that usual caveat for zero-copy loading
        // of multi-gigabyte weights, as every inference engine does.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path.to_path_buf(), Source::Mapped(Arc::new(map)))
    }

    /// Parses a GGUF image held in memory (tests, fuzzing). Tensors returned by
    /// [`GgufFile::tensor`] then own a copy of their bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(PathBuf::from("<memory>"), Source::Owned(Arc::new(bytes)))
    }

    fn parse(path: PathBuf, source: Source) -> Result<GgufFile> {
        let parsed = parse_layout(source.bytes());
        match parsed {
            Ok(l) => Ok(GgufFile {
                path,
                source,
                version: l.version,
                keys: l
                    .metadata
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (k.clone(), i))
                    .collect(),
                metadata: l.metadata,
                tensor_index: l
                    .tensors
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (t.name.clone(), i))
                    .collect(),
                tensors: l.tensors,
                alignment: l.alignment,
                data_offset: l.data_offset,
            }),
            Err(msg) => Err(Error::checkpoint(path, msg)),
        }
    }

    /// The file's path (`<memory>` for [`GgufFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data-section alignment in bytes.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Offset of the data section from the start of the file.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// Every metadata key and value, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.keys.get(key).map(|&i| &self.metadata[i].1)
    }

    fn wrong_type(&self, key: &str, v: &GgufValue, want: &str) -> Error {
        Error::checkpoint(
            &self.path,
            format!(
                "metadata key '{key}' is {} {}, expected {want}",
                v.type_name(),
                brief(v)
            ),
        )
    }

    /// A `string` value; `Ok(None)` if absent, an error if of another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, v, "a string")),
        }
    }

    /// An integer value of any integer type, as `u64`; `Ok(None)` if absent, an error
    /// if of another type or negative.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, v, "a non-negative integer")),
        }
    }

    /// As [`GgufFile::get_u64`], also an error when the value exceeds `u32::MAX`.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, v, "an integer in u32 range")),
        }
    }

    /// As [`GgufFile::get_u64`], also an error when the value exceeds `usize::MAX`.
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, v, "an integer in usize range")),
        }
    }

    /// An integer value of any integer type, as `i64`.
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, v, "an integer")),
        }
    }

    /// A float value (`f32` or `f64`) as `f64` (exact for `f32`).
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, v, "a float")),
        }
    }

    /// A float value as `f32` (an `f64` value is rounded).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        Ok(self.get_f64(key)?.map(|v| v as f32))
    }

    /// A `bool` value.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, v, "a bool")),
        }
    }

    /// The elements of an `array` value.
    pub fn get_array(&self, key: &str) -> Result<Option<&[GgufValue]>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, v, "an array")),
        }
    }

    /// `general.architecture`, if present.
    pub fn architecture(&self) -> Result<Option<&str>> {
        self.get_str("general.architecture")
    }

    /// `<architecture>.context_length`: the context the model was trained with; a value
    /// of the wrong type is an error, not a silent default.
    pub fn context_length(&self) -> Result<Option<usize>> {
        let Some(arch) = self.architecture()? else {
            return Ok(None);
        };
        self.get_usize(&format!("{arch}.context_length"))
    }

    /// The tensor-info table, in file order.
    pub fn tensor_infos(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The info of tensor `name`, if present.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Tensor `name` as a zero-copy view of the mapping (PyTorch-order shape).
    ///
    /// Errors when the tensor is absent or of a type llama2 does not support.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| Error::checkpoint(&self.path, format!("missing tensor '{name}'")))?;
        let (dtype, (start, end)) = match (info.dtype(), info.range) {
            (Some(d), Some(r)) => (d, r),
            _ => {
                return Err(Error::checkpoint(
                    &self.path,
                    format!(
                        "tensor '{name}' has type {} ({}), which llama2 does not support \
                         (supported: {SUPPORTED_TYPES})",
                        info.type_name(),
                        info.ggml_type
                    ),
                ))
            }
        };
        let storage = match &self.source {
            Source::Mapped(map) => Storage::Mapped {
                map: Arc::clone(map),
                offset: start,
                len: end - start,
            },
            Source::Owned(v) => Storage::Owned(Arc::new(v[start..end].to_vec())),
        };
        Ok(Tensor {
            dtype,
            shape: info.shape.clone(),
            storage,
        })
    }
}

/// A short rendering of a value for error messages.
fn brief(v: &GgufValue) -> String {
    match v {
        GgufValue::String(s) if s.len() > 40 => format!("{:?}...", &s[..s.floor_char(40)]),
        GgufValue::Array(a) => format!("of {} elements", a.len()),
        GgufValue::String(s) => format!("{s:?}"),
        GgufValue::U8(x) => x.to_string(),
        GgufValue::I8(x) => x.to_string(),
        GgufValue::U16(x) => x.to_string(),
        GgufValue::I16(x) => x.to_string(),
        GgufValue::U32(x) => x.to_string(),
        GgufValue::I32(x) => x.to_string(),
        GgufValue::U64(x) => x.to_string(),
        GgufValue::I64(x) => x.to_string(),
        GgufValue::F32(x) => x.to_string(),
        GgufValue::F64(x) => x.to_string(),
        GgufValue::Bool(x) => x.to_string(),
    }
}

/// `floor_char_boundary` for Rust 1.85.
trait FloorChar {
    fn floor_char(&self, i: usize) -> usize;
}

impl FloorChar for str {
    fn floor_char(&self, mut i: usize) -> usize {
        if i >= self.len() {
            return self.len();
        }
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// Everything [`parse_layout`] extracts.
struct Layout {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<GgufTensorInfo>,
    alignment: usize,
    data_offset: usize,
}

/// Parse errors are plain messages; [`GgufFile`] attaches the path.
type PResult<T> = std::result::Result<T, String>;

/// A bounds-checked little-endian reader over the file's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> PResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(format!(
                "truncated file: {} needs {n} bytes at offset {}, but only {} remain",
                what(),
                self.pos,
                self.remaining()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> PResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> PResult<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> PResult<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A `u64` count or length that must fit in `usize`.
    fn len(&mut self, what: &dyn Fn() -> String) -> PResult<usize> {
        let n = self.u64(what)?;
        usize::try_from(n).map_err(|_| format!("{}: length {n} is too large", what()))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> PResult<String> {
        let n = self.len(what)?;
        let bytes = self.take(n, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(format!("{} is not valid UTF-8 ({e})", what())),
        }
    }
}

/// Fixed encoded size of a scalar value type (`None` for string/array/unknown).
fn scalar_size(ty: u32) -> Option<usize> {
    match ty {
        vt::U8 | vt::I8 | vt::BOOL => Some(1),
        vt::U16 | vt::I16 => Some(2),
        vt::U32 | vt::I32 | vt::F32 => Some(4),
        vt::U64 | vt::I64 | vt::F64 => Some(8),
        _ => None,
    }
}

/// Decodes one scalar of type `ty` from exactly `scalar_size(ty)` bytes.
fn decode_scalar(ty: u32, b: &[u8]) -> GgufValue {
    let a2 = || [b[0], b[1]];
    let a4 = || [b[0], b[1], b[2], b[3]];
    let a8 = || [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
    match ty {
        vt::U8 => GgufValue::U8(b[0]),
        vt::I8 => GgufValue::I8(b[0] as i8),
        vt::BOOL => GgufValue::Bool(b[0] != 0),
        vt::U16 => GgufValue::U16(u16::from_le_bytes(a2())),
        vt::I16 => GgufValue::I16(i16::from_le_bytes(a2())),
        vt::U32 => GgufValue::U32(u32::from_le_bytes(a4())),
        vt::I32 => GgufValue::I32(i32::from_le_bytes(a4())),
        vt::F32 => GgufValue::F32(f32::from_le_bytes(a4())),
        vt::U64 => GgufValue::U64(u64::from_le_bytes(a8())),
        vt::I64 => GgufValue::I64(i64::from_le_bytes(a8())),
        _ => GgufValue::F64(f64::from_le_bytes(a8())),
    }
}

/// Reads one value of type `ty`; `budget` counts the values still allowed.
fn read_value(
    r: &mut Reader<'_>,
    ty: u32,
    key: &str,
    depth: usize,
    budget: &mut usize,
) -> PResult<GgufValue> {
    let what = || format!("metadata value '{key}'");
    if let Some(n) = scalar_size(ty) {
        return Ok(decode_scalar(ty, r.take(n, &what)?));
    }
    match ty {
        vt::STRING => Ok(GgufValue::String(r.string(&what)?)),
        vt::ARRAY => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(format!(
                    "metadata value '{key}': arrays nested more than {MAX_ARRAY_DEPTH} deep"
                ));
            }
            let elem = r.u32(&what)?;
            let n = r.len(&what)?;
            // Smallest encoding of one element: checked before allocating anything.
            let min_size = match elem {
                vt::STRING => 8,
                vt::ARRAY => 12,
                t => scalar_size(t).ok_or_else(|| {
                    format!("metadata value '{key}': array of unknown value type {t}")
                })?,
            };
            if n > r.remaining() / min_size {
                return Err(format!(
                    "truncated file: metadata array '{key}' of {n} {} elements does not fit \
                     in the {} remaining bytes",
                    value_type_name(elem),
                    r.remaining()
                ));
            }
            if n > *budget {
                return Err(format!(
                    "metadata array '{key}' has {n} elements: the file holds more than \
                     {MAX_METADATA_VALUES} metadata values in all"
                ));
            }
            *budget -= n;
            let mut out = Vec::with_capacity(n);
            if let Some(size) = scalar_size(elem) {
                let bytes = r.take(n * size, &what)?;
                out.extend(bytes.chunks_exact(size).map(|b| decode_scalar(elem, b)));
            } else {
                for _ in 0..n {
                    out.push(read_value(r, elem, key, depth + 1, budget)?);
                }
            }
            Ok(GgufValue::Array(out))
        }
        t => Err(format!("metadata key '{key}' has unknown value type {t}")),
    }
}

/// Parses header, metadata and tensor infos, and checks every tensor's bytes lie in
/// `buf`.
fn parse_layout(buf: &[u8]) -> PResult<Layout> {
    let mut r = Reader { buf, pos: 0 };
    let magic: [u8; 4] = r.array(&|| "the GGUF magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(format!(
            "not a GGUF file: it starts with {magic:02x?}, expected \"GGUF\""
        ));
    }
    let version = r.u32(&|| "the GGUF version".into())?;
    if version != 0 && version & 0xFFFF == 0 {
        return Err(format!(
            "GGUF version field reads {version:#x}: this looks like a big-endian GGUF file, \
             which llama2 does not support (only little-endian files)"
        ));
    }
    match version {
        2 | 3 => {}
        1 => {
            return Err(
                "GGUF version 1 is not supported (only versions 2 and 3); convert the file \
                 with a recent llama.cpp"
                    .into(),
            )
        }
        v => return Err(format!("unsupported GGUF version {v} (only 2 and 3)")),
    }
    let n_tensors = r.u64(&|| "the tensor count".into())?;
    let n_kv = r.u64(&|| "the metadata count".into())?;
    // Each KV needs >= 12 bytes (key length + type), each tensor info >= 24.
    if n_kv > (r.remaining() / 12) as u64 {
        return Err(format!(
            "truncated or corrupt file: {n_kv} metadata entries cannot fit in {} bytes",
            r.remaining()
        ));
    }
    let n_kv = n_kv as usize;
    let mut budget = MAX_METADATA_VALUES;
    let mut metadata = Vec::with_capacity(n_kv);
    let mut seen = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = r.string(&|| format!("metadata key {i}"))?;
        if key.is_empty() {
            return Err(format!("metadata key {i} is empty"));
        }
        if seen.insert(key.clone(), i).is_some() {
            return Err(format!("duplicate metadata key '{key}'"));
        }
        let ty = r.u32(&|| format!("the type of metadata key '{key}'"))?;
        if budget == 0 {
            return Err(format!(
                "more than {MAX_METADATA_VALUES} metadata values in all"
            ));
        }
        budget -= 1;
        let value = read_value(&mut r, ty, &key, 0, &mut budget)?;
        metadata.push((key, value));
    }

    let alignment = match seen.get("general.alignment").map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT as u64 => a as usize,
            _ => {
                return Err(format!(
                    "general.alignment must be a power of two up to {MAX_ALIGNMENT}, found {} {}",
                    v.type_name(),
                    brief(v)
                ))
            }
        },
    };

    if n_tensors > (r.remaining() / 24) as u64 {
        return Err(format!(
            "truncated or corrupt file: {n_tensors} tensor infos cannot fit in {} bytes",
            r.remaining()
        ));
    }
    let n_tensors = n_tensors as usize;
    let mut raw = Vec::with_capacity(n_tensors);
    let mut names = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = r.string(&|| format!("the name of tensor {i}"))?;
        if names.insert(name.clone(), i).is_some() {
            return Err(format!("duplicate tensor name '{name}'"));
        }
        let what = || format!("the info of tensor '{name}'");
        let n_dims = r.u32(&what)? as usize;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS})"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = r.u64(&what)?;
            let d = usize::try_from(d)
                .ok()
                .filter(|&d| d as u64 <= i64::MAX as u64)
                .ok_or_else(|| format!("tensor '{name}' has a dimension of {d}"))?;
            dims.push(d);
        }
        let ggml_type = r.u32(&what)?;
        let offset = r.u64(&what)?;
        raw.push((name, dims, ggml_type, offset));
    }

    let data_offset = r
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or("data section offset overflows")?;
    if n_tensors > 0 && data_offset > buf.len() {
        return Err(format!(
            "truncated file: the data section would start at byte {data_offset}, past the \
             end of the file ({} bytes)",
            buf.len()
        ));
    }

    let mut tensors = Vec::with_capacity(n_tensors);
    for (name, dims, ggml_type, offset) in raw {
        // The product of the nonzero dimensions must fit, so that multiplying the
        // dimensions in any order (as `Tensor::numel` does) cannot overflow.
        let nonzero = dims
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(1usize, |a, &d| a.checked_mul(d));
        let numel = match nonzero {
            Some(_) if dims.contains(&0) => 0,
            Some(n) => n,
            None => {
                return Err(format!(
                    "tensor '{name}': element count of {dims:?} overflows"
                ))
            }
        };
        if offset % alignment as u64 != 0 {
            return Err(format!(
                "tensor '{name}': data offset {offset} is not a multiple of the alignment \
                 {alignment}"
            ));
        }
        let range = match dtype_from_ggml(ggml_type) {
            None => {
                if ggml_type_name(ggml_type).is_none() {
                    return Err(format!(
                        "tensor '{name}' has unknown ggml type {ggml_type} (supported: \
                         {SUPPORTED_TYPES})"
                    ));
                }
                None
            }
            Some(dtype) => {
                let row = dims.first().copied().unwrap_or(1);
                let row_bytes = dtype.row_bytes(row).ok_or_else(|| {
                    format!(
                        "tensor '{name}' of type {dtype:?}: its rows of {row} values are not \
                         a whole number of {}-value blocks",
                        dtype.block_size()
                    )
                })?;
                // Rows of `row` values each; no rows at all when a dimension is 0.
                let n_bytes = match numel.checked_div(row) {
                    None => Some(0),
                    Some(rows) => row_bytes.checked_mul(rows),
                };
                let start = usize::try_from(offset)
                    .ok()
                    .and_then(|o| o.checked_add(data_offset));
                let end = match (start, n_bytes) {
                    (Some(s), Some(n)) => s.checked_add(n),
                    _ => None,
                };
                match (start, end) {
                    (Some(s), Some(e)) if e <= buf.len() => Some((s, e)),
                    _ => {
                        return Err(format!(
                            "tensor '{name}' ({dtype:?}, dims {dims:?}, {} bytes at data offset \
                             {offset}) extends beyond the end of the file ({} bytes)",
                            n_bytes.map_or("too many".to_string(), |n| n.to_string()),
                            buf.len()
                        ))
                    }
                }
            }
        };
        let mut shape = dims;
        shape.reverse();
        tensors.push(GgufTensorInfo {
            name,
            shape,
            ggml_type,
            offset,
            range,
        });
    }

    Ok(Layout {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// Maps a GGUF `llama` tensor name to its Meta name (`None` for unknown names).
/// Returns the layer index too, for `blk.{i}.*` names.
fn meta_name(gguf: &str) -> Option<(String, Option<usize>)> {
    let fixed = match gguf {
        "token_embd.weight" => Some("tok_embeddings.weight"),
        "output_norm.weight" => Some("norm.weight"),
        "output.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some((f.to_string(), None));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (idx, suffix) = rest.split_once('.')?;
    if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) || idx.len() > 9 {
        return None;
    }
    let i: usize = idx.parse().ok()?;
    if idx != i.to_string() {
        return None; // no leading zeros
    }
    let part = match suffix {
        "attn_q.weight" => "attention.wq.weight",
        "attn_k.weight" => "attention.wk.weight",
        "attn_v.weight" => "attention.wv.weight",
        "attn_output.weight" => "attention.wo.weight",
        "ffn_gate.weight" => "feed_forward.w1.weight",
        "ffn_down.weight" => "feed_forward.w2.weight",
        "ffn_up.weight" => "feed_forward.w3.weight",
        "attn_norm.weight" => "attention_norm.weight",
        "ffn_norm.weight" => "ffn_norm.weight",
        _ => return None,
    };
    Some((format!("layers.{i}.{part}"), Some(i)))
}

/// A float value as `f64`; an `f32` goes through its shortest decimal form, so the
/// `1e-5` a converter stored as f32 reads back as `1e-5`, as in `params.json` (both
/// round to the same f32, which is what the model computes with).
fn decimal_f64(file: &GgufFile, key: &str) -> Result<Option<f64>> {
    Ok(match file.get(key) {
        Some(GgufValue::F32(x)) => Some(x.to_string().parse::<f64>().unwrap_or(f64::from(*x))),
        _ => file.get_f64(key)?,
    })
}

/// Opens the GGUF file at `path` and maps it to [`ModelWeights`]
/// (see [`gguf_model_weights`]).
pub fn load_gguf(path: &Path) -> Result<ModelWeights> {
    let file = GgufFile::open(path)?;
    gguf_model_weights(&file, path)
}

/// The model of a `general.architecture = "llama"` GGUF file as [`ModelWeights`] with
/// Meta tensor names; `path` names the file in errors.
///
/// Hyper-parameters come from `llama.embedding_length`, `llama.block_count`,
/// `llama.attention.head_count`, `llama.attention.head_count_kv` (default: head count),
/// `llama.attention.layer_norm_rms_epsilon`, `llama.rope.freq_base` (default 10000) and
/// `llama.feed_forward_length`; the vocabulary size is the row count of
/// `token_embd.weight` (checked against `llama.vocab_size` when present). Tensors stay
/// zero-copy views of the mapping; without `output.weight` the output layer shares the
/// embedding (tied weights). GGUF's llama `attn_q`/`attn_k` rows already use Meta's
/// adjacent-pair rotary layout, so nothing is permuted.
///
/// Errors name what is unsupported: another architecture, partial rotary
/// (`llama.rope.dimension_count` other than the head width), rope scaling other than
/// llama3's frequency factors (`rope_freqs.weight`), mixture-of-experts, per-layer head counts, tensors llama2 does not know
/// (biases, ...), tensor types llama2 cannot read.
pub fn gguf_model_weights(file: &GgufFile, path: &Path) -> Result<ModelWeights> {
    let bad = |msg: String| Error::checkpoint(path, msg);
    let arch = file
        .architecture()?
        .ok_or_else(|| bad("metadata key 'general.architecture' is missing".into()))?;
    if arch != "llama" {
        return Err(bad(format!(
            "architecture '{arch}' is not supported (llama2 reads only 'llama' GGUF models)"
        )));
    }
    let required = |key: &str| -> Result<usize> {
        if let Some(GgufValue::Array(_)) = file.get(key) {
            return Err(bad(format!(
                "metadata key '{key}' holds per-layer values, which llama2 does not support"
            )));
        }
        file.get_usize(key)?
            .ok_or_else(|| bad(format!("metadata key '{key}' is missing")))
    };
    let dim = required("llama.embedding_length")?;
    let n_layers = required("llama.block_count")?;
    let n_heads = required("llama.attention.head_count")?;
    let n_kv_heads = match file.get("llama.attention.head_count_kv") {
        None => n_heads,
        Some(_) => required("llama.attention.head_count_kv")?,
    };
    let hidden = required("llama.feed_forward_length")?;
    let norm_eps =
        decimal_f64(file, "llama.attention.layer_norm_rms_epsilon")?.ok_or_else(|| {
            bad("metadata key 'llama.attention.layer_norm_rms_epsilon' is missing".into())
        })?;
    let rope_theta = decimal_f64(file, "llama.rope.freq_base")?.unwrap_or(10000.0);

    if let Some(n) = file.get_u64("llama.expert_count")? {
        if n > 0 {
            return Err(bad(format!(
                "mixture-of-experts models (llama.expert_count = {n}) are not supported"
            )));
        }
    }
    if let Some(kind) = file.get_str("llama.rope.scaling.type")? {
        if kind != "none" {
            return Err(bad(format!(
                "rope scaling '{kind}' (llama.rope.scaling.type) is not supported"
            )));
        }
    }
    // Llama 3.1-style scaling: llama.cpp's converter stores the `llama3` rule as one
    // divisor per rotary frequency.
    let rope_scaling = match file.tensor_info("rope_freqs.weight") {
        None => None,
        Some(_) => {
            let t = file.tensor("rope_freqs.weight")?;
            if t.shape.len() != 1 || t.dtype != DType::F32 {
                return Err(bad(format!(
                    "tensor 'rope_freqs.weight' must be a 1-D F32 vector (found {:?} {:?})",
                    t.dtype, t.shape
                )));
            }
            Some(RopeScaling::Factors(t.to_f32_vec()))
        }
    };

    let args = ModelArgs {
        dim,
        n_layers,
        n_heads,
        n_kv_heads: Some(n_kv_heads),
        ffn_hidden_dim: Some(hidden),
        norm_eps,
        rope_theta,
        rope_scaling,
        ..ModelArgs::default()
    };
    args.check_layers(file.tensor_infos().len(), "llama.block_count")
        .map_err(bad)?;
    args.validate().map_err(|e| {
        let names = [
            ("dim", "llama.embedding_length"),
            ("n_layers", "llama.block_count"),
            ("n_heads", "llama.attention.head_count"),
            ("n_kv_heads", "llama.attention.head_count_kv"),
            ("ffn_hidden_dim", "llama.feed_forward_length"),
            ("norm_eps", "llama.attention.layer_norm_rms_epsilon"),
            ("rope_theta", "llama.rope.freq_base"),
        ];
        bad(with_key_names(&e.to_string(), &names))
    })?;
    let head_dim = args.head_dim();
    if let Some(n_rot) = file.get_usize("llama.rope.dimension_count")? {
        if n_rot != head_dim {
            return Err(bad(format!(
                "llama.rope.dimension_count is {n_rot} but the head width is {head_dim}: \
                 partial rotary embeddings are not supported"
            )));
        }
    }
    for key in ["llama.attention.key_length", "llama.attention.value_length"] {
        if let Some(n) = file.get_usize(key)? {
            if n != head_dim {
                return Err(bad(format!(
                    "{key} is {n} but embedding_length / head_count is {head_dim}: \
                     head widths other than dim / n_heads are not supported"
                )));
            }
        }
    }

    let embd = file
        .tensor_info("token_embd.weight")
        .ok_or_else(|| bad("tensor 'token_embd.weight' (the token embedding) is missing".into()))?;
    let vocab_size = match embd.shape[..] {
        [rows, cols] if cols == dim && rows > 0 => rows,
        _ => {
            return Err(Error::Shape {
                name: "token_embd.weight".into(),
                expected: vec![0, dim],
                found: embd.shape.clone(),
            })
        }
    };
    if let Some(v) = file.get_usize("llama.vocab_size")? {
        if v != vocab_size {
            return Err(bad(format!(
                "llama.vocab_size is {v} but token_embd.weight has {vocab_size} rows"
            )));
        }
    }

    let mut tensors = HashMap::with_capacity(file.tensor_infos().len() + 1);
    for info in file.tensor_infos() {
        if info.name == "rope_freqs.weight" {
            continue; // read into the rope scaling above
        }
        let (meta, layer) = meta_name(&info.name).ok_or_else(|| {
            bad(format!(
                "tensor '{}' is not part of a Llama model as llama2 supports it",
                info.name
            ))
        })?;
        if let Some(i) = layer {
            if i >= n_layers {
                return Err(bad(format!(
                    "tensor '{}' belongs to layer {i}, but llama.block_count is {n_layers}",
                    info.name
                )));
            }
        }
        tensors.insert(meta, file.tensor(&info.name)?);
    }
    if !tensors.contains_key("output.weight") {
        let embedding = tensors
            .get("tok_embeddings.weight")
            .cloned()
            .ok_or_else(|| bad("tensor 'token_embd.weight' is missing".into()))?;
        tensors.insert("output.weight".into(), embedding);
    }
    let mut args = args;
    args.vocab_size = i64::try_from(vocab_size)
        .map_err(|_| bad(format!("vocabulary of {vocab_size} rows is too large")))?;
    Ok(ModelWeights {
        args,
        tensors,
        vocab_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_ids_round_trip() {
        for d in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
        ] {
            assert_eq!(dtype_from_ggml(ggml_type_id(d)), Some(d));
            assert_eq!(
                ggml_type_name(ggml_type_id(d)),
                Some(format!("{d:?}").as_str())
            );
        }
        assert_eq!(ggml_type_name(6), Some("Q5_0"));
        assert_eq!(ggml_type_name(23), Some("IQ4_XS"));
        assert_eq!(ggml_type_name(1000), None);
    }

    #[test]
    fn names_map_to_meta() {
        assert_eq!(
            meta_name("blk.12.attn_q.weight"),
            Some(("layers.12.attention.wq.weight".into(), Some(12)))
        );
        assert_eq!(
            meta_name("token_embd.weight"),
            Some(("tok_embeddings.weight".into(), None))
        );
        for bad in [
            "blk.01.attn_q.weight",
            "blk..attn_q.weight",
            "blk.1.attn_q.bias",
            "blk.x.ffn_up.weight",
            "rope_freqs.weight",
            "blk.99999999999999999999.attn_q.weight",
        ] {
            assert_eq!(meta_name(bad), None, "{bad}");
        }
    }

    /// A file with no metadata and one tensor `t` of `dims` (GGUF order) and type.
    fn one_tensor(dims: &[u64], ggml_type: u32, data: usize) -> Vec<u8> {
        let mut b = b"GGUF\x03\0\0\0".to_vec();
        b.extend(1u64.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.push(b't');
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ggml_type.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.resize(b.len().next_multiple_of(32) + data, 0);
        b
    }

    #[test]
    fn zero_sized_and_overflowing_shapes() {
        // A zero dimension makes an empty tensor, whatever the others.
        let f = GgufFile::from_bytes(one_tensor(&[5, 0, 1 << 40], 0, 0)).unwrap();
        let t = f.tensor("t").unwrap();
        assert_eq!(
            (t.shape.clone(), t.numel(), t.bytes().len()),
            (vec![1 << 40, 0, 5], 0, 0)
        );
        // ... but the other dimensions may not overflow when multiplied in any order.
        assert!(GgufFile::from_bytes(one_tensor(&[0, 1 << 40, 1 << 40], 0, 0)).is_err());
        assert!(GgufFile::from_bytes(one_tensor(&[1 << 62, 4], 0, 0)).is_err());
        assert!(GgufFile::from_bytes(one_tensor(&[1 << 63], 0, 0)).is_err());
        let f = GgufFile::from_bytes(one_tensor(&[32, 2], 8, 68)).unwrap();
        assert_eq!(f.tensor("t").unwrap().shape, vec![2, 32]);
        assert!(GgufFile::from_bytes(one_tensor(&[32, 2], 8, 67)).is_err());
        assert!(GgufFile::from_bytes(one_tensor(&[16, 2], 8, 68)).is_err());
        // Unsupported but known types open; the tensor itself is an error.
        let f = GgufFile::from_bytes(one_tensor(&[32], 6, 0)).unwrap();
        assert!(f.tensor("t").is_err());
        assert!(GgufFile::from_bytes(one_tensor(&[32], 4242, 0)).is_err());
        assert!(GgufFile::from_bytes(one_tensor(&[1, 1, 1, 1, 1], 0, 4)).is_err());
    }

    #[test]
    fn header_errors() {
        let msg = |b: &[u8]| match parse_layout(b) {
            Err(m) => m,
            Ok(_) => panic!("parsed"),
        };
        assert!(msg(b"GGU").contains("truncated"));
        assert!(msg(b"GGML\x03\0\0\0").contains("not a GGUF file"));
        assert!(msg(b"GGUF\x01\0\0\0").contains("version 1"));
        assert!(msg(b"GGUF\0\0\0\x03").contains("big-endian"));
        assert!(msg(b"GGUF\x04\0\0\0").contains("unsupported GGUF version 4"));
        let mut h = b"GGUF\x03\0\0\0".to_vec();
        h.extend(0u64.to_le_bytes());
        h.extend(u64::MAX.to_le_bytes());
        assert!(msg(&h).contains("metadata entries"));
        let mut ok = b"GGUF\x03\0\0\0".to_vec();
        ok.extend([0u8; 16]);
        let l = parse_layout(&ok).unwrap();
        assert_eq!((l.version, l.metadata.len(), l.tensors.len()), (3, 0, 0));
    }
}
