//! Weight storage: raw little-endian bytes of one tensor, memory-mapped or owned,
//! tagged with their element type. Kernels read rows straight from these bytes.

use std::sync::Arc;

use memmap2::Mmap;

/// Element type of stored weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the upper half of an f32).
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// Where a tensor's bytes live.
#[derive(Clone, Debug)]
pub enum Storage {
    /// A byte range of a memory-mapped file (zero-copy).
    Mapped {
        /// The shared mapping.
        map: Arc<Mmap>,
        /// Start of the tensor's bytes in the mapping.
        offset: usize,
        /// Length in bytes.
        len: usize,
    },
    /// Bytes held in memory (merged shards, converted data).
    Owned(Arc<Vec<u8>>),
}

impl Storage {
    /// The tensor's raw bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            Storage::Owned(v) => v,
        }
    }
}

/// A dense, row-major (C-contiguous) tensor of stored weights.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost dimension first (PyTorch order).
    pub shape: Vec<usize>,
    /// The bytes, exactly `numel * dtype.size()` long.
    pub storage: Storage,
}

impl Tensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// All elements converted to f32 (exact for every supported dtype).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.numel()];
        crate::kernels::convert::to_f32(self.dtype, self.bytes(), &mut out);
        out
    }
}
