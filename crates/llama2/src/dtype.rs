//! Element types of stored weights and every fact about each in one table: ggml's name
//! and type id, block size and bytes, whether the converter can quantize to it, and
//! which kernel family multiplies it. The block formats themselves are in
//! [`crate::quant`]; this module imports nothing of the crate.

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

/// Which kernels multiply a weight type ([`crate::kernels`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFamily {
    /// Converted to f32 rows and multiplied in f32 (floats; every type with
    /// `Precision::Exact`).
    Float,
    /// Rows interleaved eight at a time, 8-bit activations (`kernels::packed`).
    Interleaved8,
    /// Q4_1 rows interleaved four at a time, 8-bit activations (`kernels::qdot`).
    Interleaved4,
    /// K-quant super-blocks in the file layout, 256-value activations
    /// (`kernels::kquant`).
    KQuant,
}

/// The facts of one [`DType`].
#[derive(Clone, Copy, Debug)]
pub struct DTypeInfo {
    /// The type.
    pub dtype: DType,
    /// ggml's name (`"Q4_K"`).
    pub name: &'static str,
    /// ggml's type id, as GGUF tensor infos store it.
    pub ggml_id: u32,
    /// Values per block (1 for plain floats).
    pub block_size: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    /// Whether [`crate::quant::quantize`] produces it.
    pub quantizable: bool,
    /// The kernels of `Precision::Fast` products.
    pub kernel: KernelFamily,
}

const fn info(
    dtype: DType,
    name: &'static str,
    ggml_id: u32,
    block_size: usize,
    block_bytes: usize,
    quantizable: bool,
    kernel: KernelFamily,
) -> DTypeInfo {
    DTypeInfo {
        dtype,
        name,
        ggml_id,
        block_size,
        block_bytes,
        quantizable,
        kernel,
    }
}

use KernelFamily::{Float, Interleaved4, Interleaved8, KQuant};

/// Every type, in [`DType`] order.
pub const DTYPES: [DTypeInfo; 9] = [
    info(DType::F32, "F32", 0, 1, 4, false, Float),
    info(DType::F16, "F16", 1, 1, 2, false, Float),
    info(DType::BF16, "BF16", 30, 1, 2, false, Float),
    info(DType::Q8_0, "Q8_0", 8, 32, 34, true, Interleaved8),
    info(DType::Q4_0, "Q4_0", 2, 32, 18, true, Interleaved8),
    info(DType::Q4_1, "Q4_1", 3, 32, 20, true, Interleaved4),
    info(DType::Q4_K, "Q4_K", 12, 256, 144, false, KQuant),
    info(DType::Q5_K, "Q5_K", 13, 256, 176, false, KQuant),
    info(DType::Q6_K, "Q6_K", 14, 256, 210, false, KQuant),
];

impl DType {
    /// This type's row of [`DTYPES`].
    pub fn info(self) -> &'static DTypeInfo {
        &DTYPES[self as usize]
    }

    /// The type with ggml type id `id`, `None` for types llama2 does not support.
    pub fn from_ggml(id: u32) -> Option<DType> {
        DTYPES.iter().find(|i| i.ggml_id == id).map(|i| i.dtype)
    }

    /// ggml's name.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Values per block (1 for plain floats).
    pub fn block_size(self) -> usize {
        self.info().block_size
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.info().block_bytes
    }

    /// True for the block-quantized types.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// The kernels that multiply it.
    pub fn kernel(self) -> KernelFamily {
        self.info().kernel
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_are_in_enum_order_and_ids_round_trip() {
        for (i, row) in DTYPES.iter().enumerate() {
            assert_eq!(row.dtype as usize, i);
            assert_eq!(DType::from_ggml(row.ggml_id), Some(row.dtype));
            assert_eq!(format!("{:?}", row.dtype), row.name);
        }
        assert_eq!(DType::from_ggml(6), None); // Q5_0: not supported
    }
}
