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

/// The element type, re-exported where tensors are (its facts live in [`crate::dtype`]).
pub use crate::dtype::DType;

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
        crate::quant::to_f32(self.dtype, self.bytes(), &mut out);
        out
    }
}
