//! Weight storage: raw little-endian bytes of one tensor, memory-mapped or owned,
//! tagged with their element type. Kernels read rows straight from these bytes.

use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Memory-maps a whole file read-only (empty files are an error: they cannot be mapped).
pub fn map_file(path: &Path) -> Result<Arc<Mmap>> {
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
    Ok(Arc::new(map))
}

/// Element type of stored weights: plain floats, or ggml's block-quantized types
/// (a block of `block_size` values stored in `block_bytes` bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)] // ggml's names
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the upper half of an f32).
    BF16,
    /// ggml Q8_0: 32 values, f16 scale + 32 × i8.
    Q8_0,
    /// ggml Q4_0: 32 values, f16 scale + 32 × 4-bit (offset 8).
    Q4_0,
    /// ggml Q4_1: 32 values, f16 scale and minimum + 32 × 4-bit.
    Q4_1,
    /// ggml Q4_K: 256-value super-blocks, 6-bit sub-block scales and minimums.
    Q4_K,
    /// ggml Q5_K: as Q4_K with a fifth bit per value.
    Q5_K,
    /// ggml Q6_K: 256-value super-blocks, 6-bit values, 8-bit sub-block scales.
    Q6_K,
}

impl DType {
    /// Values per block (1 for plain floats).
    pub fn block_size(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => 32,
            DType::Q4_K | DType::Q5_K | DType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q4_K => 144,
            DType::Q5_K => 176,
            DType::Q6_K => 210,
        }
    }

    /// True for the block-quantized types.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes per element of a plain float type (the block size for quantized types:
    /// use [`DType::row_bytes`] for those).
    pub fn size(self) -> usize {
        self.block_bytes()
    }

    /// Bytes holding `n` consecutive values, or `None` when `n` is not a whole number
    /// of blocks (or the size overflows).
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.block_bytes())
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

    /// Drops this process's resident pages of a mapped tensor (the whole pages inside
    /// its range), for bytes that were copied into another layout and are not read in
    /// place any more: weights are then not resident twice. The bytes stay readable;
    /// touching them again reads them back from the file. A no-op for owned bytes and
    /// on platforms without `madvise`.
    pub fn release_pages(&self) {
        #[cfg(unix)]
        if let Storage::Mapped { map, offset, len } = self {
            const PAGE: usize = 4096;
            let start = offset.next_multiple_of(PAGE);
            let end = (offset + len) / PAGE * PAGE;
            if end > start {
                // SAFETY: the mapping is a read-only, private mapping of a file that is
                // never written through it, so MADV_DONTNEED only drops clean pages: a
                // later read faults the same file bytes back in. No reference into the
                // range is invalidated.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
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
