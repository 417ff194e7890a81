//! Numeric kernels of the forward pass: weight-row conversion, dot products and
//! matrix products over stored weights, RMSNorm, rotary embedding, softmax, SiLU.
//!
//! Every output element of [`matmul`] is computed by the same lane-structured dot
//! product whatever the batch size, row blocking or instruction set, so a prompt gives
//! bit-identical logits alone, in a batch, or in a prefill versus a decode step.
//! SIMD comes from compiling that one generic code with wider target features at run
//! time; no fused multiply-add is used, which keeps every path bit-identical to the
//! portable one (tested below).

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod convert;
mod dot;
mod isa;
pub mod kquant;
pub mod packed;
pub mod pool;
pub mod qdot;

pub use dot::{dot, dot_scalar};
pub use isa::Isa;
pub use pool::{default_threads, WorkerPool};

use std::sync::{Arc, OnceLock};

use crate::dtype::{DType, KernelFamily};
use crate::tensor::Tensor;

/// A 2-D weight matrix `[rows, cols]` (PyTorch `nn.Linear` layout: one row per output).
#[derive(Clone, Debug)]
pub struct Matrix {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// The stored weights.
    pub tensor: Tensor,
    /// The weights rearranged for the integer kernels, made at the first
    /// [`Precision::Fast`] product.
    repacked: Arc<OnceLock<Repacked>>,
}

impl Matrix {
    /// Wraps a 2-D tensor.
    /// `None` unless the tensor is 2-D with rows made of whole quantization blocks.
    pub fn new(tensor: Tensor) -> Option<Matrix> {
        match tensor.shape[..] {
            [rows, cols] if tensor.dtype.row_bytes(cols).is_some() => Some(Matrix {
                rows,
                cols,
                tensor,
                repacked: Arc::default(),
            }),
            _ => None,
        }
    }

    fn dtype(&self) -> DType {
        self.tensor.dtype
    }

    /// Bytes of rows `r0..r1`.
    fn row_bytes(&self, r0: usize, r1: usize) -> &[u8] {
        let w = self.dtype().row_bytes(self.cols).unwrap_or(0);
        &self.tensor.bytes()[r0 * w..r1 * w]
    }

    /// The copy of the weights for the integer kernels, made on first use.
    fn repacked(&self, pool: &WorkerPool) -> &Repacked {
        self.repacked.get_or_init(|| {
            let (dtype, bytes) = (self.dtype(), self.tensor.bytes());
            let repacked = match dtype.kernel() {
                KernelFamily::Interleaved8 => {
                    packed::PackedMatrix::pack(dtype, bytes, self.rows, self.cols, pool)
                        .map_or(Repacked::None, Repacked::Interleaved)
                }
                KernelFamily::Interleaved4 => {
                    qdot::InterleavedQ4_1::pack(bytes, self.rows, self.cols, pool)
                        .map_or(Repacked::None, Repacked::Q4_1)
                }
                KernelFamily::KQuant if self.cols.is_multiple_of(kquant::QK_K) => Repacked::KQuant,
                _ => Repacked::None,
            };
            if matches!(repacked, Repacked::Interleaved(_) | Repacked::Q4_1(_)) {
                self.tensor.storage.release_pages();
            }
            repacked
        })
    }

    /// Makes the integer kernels' copy of the weights now rather than at the first
    /// product (a no-op for [`Precision::Exact`] and types without one).
    pub fn prepare(&self, pool: &WorkerPool, precision: Precision) {
        if precision == Precision::Fast {
            self.repacked(pool);
        }
    }

    /// Row `r` converted to f32 into `out` (`cols` long).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        crate::quant::to_f32(self.dtype(), self.row_bytes(r, r + 1), out);
    }
}

/// A weight matrix rearranged for the integer kernels.
#[derive(Debug)]
enum Repacked {
    /// Q4_0/Q8_0, eight rows interleaved ([`packed`]).
    Interleaved(packed::PackedMatrix),
    /// Q4_1, four rows interleaved ([`qdot`]).
    Q4_1(qdot::InterleavedQ4_1),
    /// Q4_K/Q5_K/Q6_K: not copied, the K-quant kernels read the file layout
    /// ([`kquant`]).
    KQuant,
    /// Types the integer kernels do not take.
    None,
}

/// Rows handled together by one micro-kernel call (shares each activation load).
const ROW_BLOCK: usize = 4;

/// How matrix products over quantized weights are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// llama.cpp's arithmetic: for Q8_0, Q4_0 and Q4_1 weights, activations are
    /// quantized to 8-bit blocks and multiplied as integers. Q4_0 and Q8_0 weights are
    /// interleaved at first use and summed per block as llama.cpp's repacked kernels do
    /// ([`packed`]); Q4_1 rows are interleaved four at a time and summed per block
    /// ([`qdot`]); products of 16+ rows run on AMX tiles where the CPU has them, with the
    /// same bits; Q4_K, Q5_K and Q6_K meet activations quantized to
    /// 256-value blocks, as llama.cpp's Q8_K, in the file layout ([`kquant`]).
    #[default]
    Fast,
    /// Weights dequantized to f32 and multiplied with f32 activations (the
    /// arithmetic of the float32 reference outputs).
    Exact,
}

/// `out[t][r] = dot(w[r], x[t])` for `n = x.len() / w.cols` activation rows, in f32.
///
/// `x` is `[n, cols]`, `out` is `[n, rows]`, both row-major. Runs on `pool`, splitting
/// the weight rows among its threads.
pub fn matmul(pool: &WorkerPool, w: &Matrix, x: &[f32], out: &mut [f32]) {
    matmul_with(pool, w, x, out, Precision::Exact)
}

/// Rows per parallel task: enough tasks to balance the pool, few enough to keep
/// per-task overhead small.
fn rows_per_task(rows: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    (rows / (threads * 8)).max(16).next_multiple_of(ROW_BLOCK)
}

/// [`matmul`] with a choice of [`Precision`] for quantized weights.
pub fn matmul_with(
    pool: &WorkerPool,
    w: &Matrix,
    x: &[f32],
    out: &mut [f32],
    precision: Precision,
) {
    matmul_group(pool, &[w], x, &mut [out], precision)
}

/// Several products of the same activations, `outs[i] = x · ws[i]ᵀ` as [`matmul_with`],
/// in one parallel operation: the activations are quantized once and the workers meet
/// once (the attention's q/k/v and the feed-forward's gate/up projections).
pub fn matmul_group(
    pool: &WorkerPool,
    ws: &[&Matrix],
    x: &[f32],
    outs: &mut [&mut [f32]],
    precision: Precision,
) {
    assert_eq!(ws.len(), outs.len(), "one output per matrix");
    let Some(cols) = ws.first().map(|w| w.cols) else {
        return;
    };
    assert!(
        cols > 0 && x.len().is_multiple_of(cols),
        "activation width mismatch"
    );
    let n = x.len() / cols;
    let threads = pool.threads();
    let mut plans = Vec::with_capacity(ws.len());
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        assert_eq!(w.cols, cols, "matrices of one group take the same input");
        assert_eq!(out.len(), n * w.rows, "output size mismatch");
        let kind = match precision {
            Precision::Fast => w.repacked(pool),
            Precision::Exact => &Repacked::None,
        };
        // Interleaved layouts are split by whole groups of rows.
        let group = match kind {
            Repacked::Interleaved(_) => packed::GROUP,
            Repacked::Q4_1(_) => qdot::GROUP,
            _ => 1,
        };
        // A prompt's Q4_1 products go to the tile unit where there is one, by panels of
        // 16 rows.
        let amx = amx_eligible(kind, n);
        let group = if amx { AMX_PANEL } else { group };
        let units = w.rows.div_ceil(group);
        let per_task = (rows_per_task(w.rows, threads) / group).max(1);
        plans.push(Plan {
            w,
            kind,
            amx,
            units,
            per_task,
            tasks: units.div_ceil(per_task),
            out: SharedOut(out.as_mut_ptr()),
        });
    }
    let needs_acts = plans
        .iter()
        .any(|p| matches!(p.kind, Repacked::Interleaved(_) | Repacked::Q4_1(_)));
    let acts = if needs_acts {
        quantize_rows(pool, x, cols, qdot::quantize_activations)
    } else {
        Vec::new()
    };
    let acts_k = if plans.iter().any(|p| matches!(p.kind, Repacked::KQuant)) {
        quantize_rows(pool, x, cols, kquant::quantize_activations)
    } else {
        Vec::new()
    };
    #[cfg(target_arch = "x86_64")]
    let tiled = if plans.iter().any(|p| p.amx) {
        amx::TiledActs::new(&acts, cols / qdot::QK)
    } else {
        amx::TiledActs::default()
    };
    let io = Inputs {
        isa: Isa::detect(),
        x,
        cols,
        n,
        acts: &acts,
        acts_k: &acts_k,
        #[cfg(target_arch = "x86_64")]
        tiled: &tiled,
    };
    let total: usize = plans.iter().map(|p| p.tasks).sum();
    pool.run(total, &|mut task| {
        for plan in &plans {
            if task >= plan.tasks {
                task -= plan.tasks;
                continue;
            }
            let u0 = task * plan.per_task;
            let u1 = (u0 + plan.per_task).min(plan.units);
            match plan.kind {
                _ if plan.amx => amx_task(plan.kind, &io, u0, u1, plan.out),
                Repacked::Interleaved(p) => group_task(p, &io, u0, u1, plan.out),
                Repacked::Q4_1(p) => group_task(p, &io, u0, u1, plan.out),
                Repacked::KQuant => kquant_task(plan.w, &io, u0, u1, plan.out),
                Repacked::None => float_task(plan.w, &io, u0, u1, plan.out),
            }
            return;
        }
    });
}

/// Rows per unit of an AMX product.
#[cfg(target_arch = "x86_64")]
const AMX_PANEL: usize = amx::PANEL_ROWS;
#[cfg(not(target_arch = "x86_64"))]
const AMX_PANEL: usize = 1;

/// Whether a product of `n` activation rows with weights `kind` takes the AMX kernel.
fn amx_eligible(kind: &Repacked, n: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let layout = match kind {
            Repacked::Q4_1(_) => true,
            Repacked::Interleaved(p) => amx::supports_packed(p),
            _ => false,
        };
        layout && n >= amx::MIN_TOKENS && amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, n);
        false
    }
}

/// Panels `p0..p1` of a Q4_1 or Q4_0 product on the tile unit.
fn amx_task(kind: &Repacked, io: &Inputs<'_>, p0: usize, p1: usize, out: SharedOut) {
    #[cfg(target_arch = "x86_64")]
    {
        let w = match kind {
            Repacked::Q4_1(w) => amx::Source::Q4_1(w),
            Repacked::Interleaved(w) => amx::Source::Q4_0(w),
            _ => unreachable!("AMX plans are Q4_1 or Q4_0"),
        };
        // SAFETY: plans take this path only when `amx::available()`; the output holds
        // n * rows floats and tasks own disjoint panels (rows).
        unsafe { amx::panels(w, io.tiled, p0, p1, out.0) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, io, p0, p1, out);
        unreachable!("no AMX plans off x86-64");
    }
}

/// One matrix of a [`matmul_group`]: how it is computed and split into tasks.
struct Plan<'a> {
    w: &'a Matrix,
    kind: &'a Repacked,
    /// Computed on the AMX tile unit (units are 16-row panels).
    amx: bool,
    /// Rows, or groups of rows for the interleaved layout.
    units: usize,
    /// Units per task.
    per_task: usize,
    tasks: usize,
    out: SharedOut,
}

/// The activations of a [`matmul_group`], as each kernel wants them.
struct Inputs<'a> {
    /// The instruction set, detected once per operation.
    isa: Isa,
    x: &'a [f32],
    cols: usize,
    /// Activation rows (tokens).
    n: usize,
    /// Each row quantized to 8-bit blocks (integer kernels only).
    acts: &'a [Vec<qdot::Q8Block>],
    /// Each row quantized to 256-value blocks (K-quant kernels only).
    acts_k: &'a [Vec<kquant::Q8KBlock>],
    /// `acts` rearranged for the AMX tiles (AMX products only).
    #[cfg(target_arch = "x86_64")]
    tiled: &'a amx::TiledActs,
}

/// Tokens per tile: the tile's activations stay in L2 while a task's rows stream.
const TOKEN_TILE: usize = 64;

/// Rows `r0..r1` of a float (or dequantized) product.
fn float_task(w: &Matrix, io: &Inputs<'_>, r0: usize, r1: usize, out: SharedOut) {
    let (rows, cols) = (w.rows, io.cols);
    let mut wbuf = vec![0.0f32; ROW_BLOCK * cols];
    let mut res = [0.0f32; ROW_BLOCK];
    let mut r = r0;
    while r < r1 {
        let nb = ROW_BLOCK.min(r1 - r);
        crate::quant::to_f32(w.dtype(), w.row_bytes(r, r + nb), &mut wbuf[..nb * cols]);
        for t in 0..io.n {
            let xt = &io.x[t * cols..(t + 1) * cols];
            dot::dot_rows(io.isa, &wbuf[..nb * cols], cols, xt, &mut res[..nb]);
            for (i, v) in res[..nb].iter().enumerate() {
                // SAFETY: `t < n` and `r + i < r1 <= rows`, so the index is inside the
                // output (n * rows long); tasks own disjoint row ranges, so no two
                // write the same element.
                unsafe { *out.at(t * rows + r + i) = *v };
            }
        }
        r += nb;
    }
}

/// Rows `r0..r1` of a K-quant product, [`kquant::tile`]'s rows meeting its tokens per
/// kernel call (leftover rows one at a time, leftover tokens up to
/// [`kquant::tokens_per_call`] at a time).
fn kquant_task(w: &Matrix, io: &Inputs<'_>, r0: usize, r1: usize, out: SharedOut) {
    let (rows, n) = (w.rows, io.n);
    let simd = io.isa;
    let wide = kquant::wide(simd);
    let (per_rows, per_tokens) = kquant::tile(simd, wide);
    let single = kquant::tokens_per_call(simd, wide);
    let Some(row_bytes) = w.dtype().row_bytes(w.cols) else {
        unreachable!("a K-quant matrix's rows are whole super-blocks (checked at load)");
    };
    let mut res = [0.0f32; kquant::MAX_TOKENS * 2];
    for t0 in (0..n).step_by(TOKEN_TILE) {
        let t1 = (t0 + TOKEN_TILE).min(n);
        let mut r = r0;
        while r < r1 {
            let nr = if r + per_rows <= r1 { per_rows } else { 1 };
            let bytes = w.row_bytes(r, r + nr);
            let mut t = t0;
            while t < t1 {
                let nt = if nr > 1 && t + per_tokens <= t1 {
                    per_tokens
                } else if nr > 1 {
                    // A tile's rows past its last whole group of tokens: each row alone.
                    (t1 - t).min(per_tokens)
                } else {
                    (t1 - t).min(single)
                };
                let refs: [&[kquant::Q8KBlock]; kquant::MAX_TOKENS] =
                    std::array::from_fn(|i| io.acts_k[t + i.min(nt - 1)].as_slice());
                let (res, refs) = (&mut res[..nr * nt], &refs[..nt]);
                if nr == 1 {
                    kquant::dot_row_with(simd, wide, w.dtype(), bytes, refs, res);
                } else {
                    kquant::dot_rows_with(simd, wide, w.dtype(), bytes, row_bytes, refs, res);
                }
                for i in 0..nr {
                    for (j, v) in res[i * nt..(i + 1) * nt].iter().enumerate() {
                        // SAFETY: `t + j < n` and `r + i < r1 <= rows`: inside the output
                        // (n * rows long); tasks own disjoint row ranges.
                        unsafe { *out.at((t + j) * rows + r + i) = *v };
                    }
                }
                t += nt;
            }
            r += nr;
        }
    }
}

/// Activation rows from which [`quantize_rows`] uses the workers.
const QUANTIZE_ON_POOL_ROWS: usize = 16;

/// Each activation row quantized to 8-bit blocks by `quantize`.
fn quantize_rows<B: Send>(
    pool: &WorkerPool,
    x: &[f32],
    cols: usize,
    quantize: fn(&[f32], &mut Vec<B>),
) -> Vec<Vec<B>> {
    let mut rows: Vec<Vec<B>> = (0..x.len() / cols).map(|_| Vec::new()).collect();
    let one = |t: usize, out: &mut [Vec<B>]| quantize(&x[t * cols..(t + 1) * cols], &mut out[0]);
    if rows.len() >= QUANTIZE_ON_POOL_ROWS {
        // A prompt: rows on the workers (serial, this measured 8% of a prefill).
        pool.for_each_chunk_mut(&mut rows, 1, &one);
    } else {
        // A decode step of a few sequences: meeting the workers would cost more.
        for t in 0..rows.len() {
            one(t, &mut rows[t..]);
        }
    }
    rows
}

/// A weight layout of interleaved row groups with integer kernels ([`packed`],
/// [`qdot`]): what [`group_task`] needs of it.
trait GroupKernel {
    /// Rows per group.
    const GROUP: usize;
    /// Most activation rows per kernel call.
    const MAX_TOKENS: usize;
    fn rows(&self) -> usize;
    /// Group `g` against up to `MAX_TOKENS` tokens: `out[t * GROUP + r]`.
    fn dot_group(&self, g: usize, acts: &[&[qdot::Q8Block]], simd: Isa, out: &mut [f32]);
    /// Groups `g0..` against one token: `out[i]` for row `GROUP * g0 + i`.
    fn dot_rows(&self, g0: usize, acts: &[qdot::Q8Block], simd: Isa, out: &mut [f32]);
}

/// The trait's methods are the types' own `*_with` methods.
macro_rules! group_kernel {
    ($ty:ty, $module:ident) => {
        impl GroupKernel for $ty {
            const GROUP: usize = $module::GROUP;
            const MAX_TOKENS: usize = $module::MAX_TOKENS;
            fn rows(&self) -> usize {
                self.rows()
            }
            fn dot_group(&self, g: usize, acts: &[&[qdot::Q8Block]], simd: Isa, out: &mut [f32]) {
                self.dot_group_with(simd, g, acts, out)
            }
            fn dot_rows(&self, g0: usize, acts: &[qdot::Q8Block], simd: Isa, out: &mut [f32]) {
                self.dot_rows_with(simd, g0, acts, out)
            }
        }
    };
}
group_kernel!(packed::PackedMatrix, packed);
group_kernel!(qdot::InterleavedQ4_1, qdot);

/// `group(g, dst)` for the groups of `G` rows from `g0` that cover `out` (rows
/// `G * g0 ..`; the last group may be partial, computed into a scratch tile): the decode
/// loop of the interleaved layouts.
pub(crate) fn for_groups<const G: usize>(
    g0: usize,
    out: &mut [f32],
    mut group: impl FnMut(usize, &mut [f32]),
) {
    let mut tail = [0.0f32; G];
    for (k, o) in out.chunks_mut(G).enumerate() {
        if o.len() == G {
            group(g0 + k, o);
        } else {
            group(g0 + k, &mut tail);
            o.copy_from_slice(&tail[..o.len()]);
        }
    }
}

/// Largest `GROUP * MAX_TOKENS` of the [`GroupKernel`]s (their result tile).
const MAX_GROUP_TILE: usize = 32;
/// Largest `MAX_TOKENS` of the [`GroupKernel`]s.
const MAX_KERNEL_TOKENS: usize = 4;
const _: () =
    assert!(packed::MAX_TOKENS <= MAX_KERNEL_TOKENS && qdot::MAX_TOKENS <= MAX_KERNEL_TOKENS);
const _: () = assert!(packed::GROUP * packed::MAX_TOKENS <= MAX_GROUP_TILE);
const _: () = assert!(qdot::GROUP * qdot::MAX_TOKENS <= MAX_GROUP_TILE);

/// Groups `g0..g1` of an interleaved product: each group meets the tokens
/// `MAX_TOKENS` at a time, a tile of tokens at once.
fn group_task<K: GroupKernel>(w: &K, io: &Inputs<'_>, g0: usize, g1: usize, out: SharedOut) {
    let (rows, n) = (w.rows(), io.n);
    let simd = io.isa;
    if n == 1 {
        let (r0, r1) = (g0 * K::GROUP, (g1 * K::GROUP).min(rows));
        // SAFETY: rows `r0..r1` of the single output row are `out[r0..r1]`, inside the
        // output (`rows` long); tasks own disjoint groups.
        let o = unsafe { std::slice::from_raw_parts_mut(out.at(r0), r1 - r0) };
        return w.dot_rows(g0, &io.acts[0], simd, o);
    }
    let mut res = [0.0f32; MAX_GROUP_TILE];
    for t0 in (0..n).step_by(TOKEN_TILE) {
        let tile = &io.acts[t0..(t0 + TOKEN_TILE).min(n)];
        for g in g0..g1 {
            let live = K::GROUP.min(rows - g * K::GROUP);
            for (k, chunk) in tile.chunks(K::MAX_TOKENS).enumerate() {
                let refs: [&[qdot::Q8Block]; MAX_KERNEL_TOKENS] =
                    std::array::from_fn(|i| chunk.get(i).map_or(&[][..], Vec::as_slice));
                w.dot_group(g, &refs[..chunk.len()], simd, &mut res);
                for (i, vals) in res.chunks_exact(K::GROUP).take(chunk.len()).enumerate() {
                    let t = t0 + k * K::MAX_TOKENS + i;
                    for (r, v) in vals[..live].iter().enumerate() {
                        // SAFETY: `t < n` and `g * GROUP + r < rows`: inside the output
                        // (n * rows long); tasks own disjoint groups, so each element has
                        // one writer.
                        unsafe { *out.at(t * rows + g * K::GROUP + r) = *v };
                    }
                }
            }
        }
    }
}

/// Raw output pointer shared by parallel tasks that write disjoint elements.
pub(crate) struct SharedOut<T = f32>(pub(crate) *mut T);
impl<T> Clone for SharedOut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedOut<T> {}
// SAFETY: tasks write disjoint indices of one live `&mut [T]` (see each use).
unsafe impl<T: Send> Send for SharedOut<T> {}
// SAFETY: as above; the pointer is only used for disjoint writes.
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// Pointer to element `i` (a method, so closures capture the whole wrapper).
    pub(crate) fn at(self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

/// RMSNorm as the reference computes it in f32: `x / sqrt(mean(x²) + eps) * weight`.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / n as f32;
    let inv = 1.0 / (ss + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * inv) * w;
    }
}

/// Precomputed rotary angles: `cos`/`sin` of `pos * theta^(-2i/head_dim)` for every
/// position below `max_pos` and pair `i < head_dim / 2`, computed in f32 as the
/// reference does.
#[derive(Clone, Debug)]
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Table for `max_pos` positions over given per-pair frequencies (after any
    /// long-context scaling; see `ModelArgs::rope_frequencies`).
    pub fn from_frequencies(freqs: &[f32], max_pos: usize) -> Self {
        let half = freqs.len();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for f in freqs {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        RopeTable { half, cos, sin }
    }

    /// Positions covered.
    pub fn max_pos(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates every head of `x` (`[n_heads * head_dim]`) in place at position `pos`;
    /// elements `2i, 2i+1` of a head form one complex number (Meta's layout).
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let cos = &self.cos[pos * self.half..(pos + 1) * self.half];
        let sin = &self.sin[pos * self.half..(pos + 1) * self.half];
        for head in x.chunks_exact_mut(2 * self.half) {
            for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * cos[i] - b * sin[i];
                pair[1] = a * sin[i] + b * cos[i];
            }
        }
    }
}

/// In-place softmax in f32 (max-subtracted).
pub fn softmax(x: &mut [f32]) {
    softmax_generic(x)
}

/// [`softmax`], inlined into callers compiled for wider vectors. The sum runs in order
/// and each exponential is libm's: the parity tests with llama.cpp turn on single ulps
/// here (a lane-wise sum or a polynomial exponential moved greedy tokens).
///
/// The exponentials are taken in one pass and summed in the next: the same values added
/// in the same order, without a call in the middle of the sum's dependency chain.
#[inline(always)]
fn softmax_generic(x: &mut [f32]) {
    softmax_with(x, exp_shifted_generic)
}

/// [`softmax_generic`] with `exp_shifted` taking the exponentials (same bits).
#[inline(always)]
fn softmax_with(x: &mut [f32], exp_shifted: impl Fn(&mut [f32], f32)) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    exp_shifted(x, max);
    let mut sum = 0.0f32;
    for &v in x.iter() {
        sum += v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// [`softmax_generic`] of the first `lens[g]` values of each row `g` of `rows` (rows
/// `row_len` apart), with the same bits: the rows' sums, each still in its own order,
/// advance side by side, so the adds of different rows overlap instead of waiting on
/// one another.
#[inline(always)]
fn softmax_rows(
    rows: &mut [f32],
    row_len: usize,
    lens: &[usize],
    exp_shifted: impl Fn(&mut [f32], f32),
) {
    const SIDE_BY_SIDE: usize = 8;
    for (r, &l) in rows.chunks_exact_mut(row_len).zip(lens) {
        let r = &mut r[..l];
        let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        exp_shifted(r, max);
    }
    for (block, lens) in rows
        .chunks_mut(SIDE_BY_SIDE * row_len)
        .zip(lens.chunks(SIDE_BY_SIDE))
    {
        let mut sums = [0.0f32; SIDE_BY_SIDE];
        // Positions every row of the block has, the rows' adds interleaved...
        let common = lens.iter().copied().min().unwrap_or(0);
        if lens.len() == SIDE_BY_SIDE {
            for j in 0..common {
                for (i, s) in sums.iter_mut().enumerate() {
                    *s += block[i * row_len + j];
                }
            }
        } else {
            for j in 0..common {
                for (i, s) in sums.iter_mut().enumerate().take(lens.len()) {
                    *s += block[i * row_len + j];
                }
            }
        }
        // ...then each row's remaining positions, still in order.
        for (i, (&l, s)) in lens.iter().zip(sums.iter_mut()).enumerate() {
            for &v in &block[i * row_len + common..i * row_len + l] {
                *s += v;
            }
        }
        for (i, (&l, s)) in lens.iter().zip(sums).enumerate() {
            let inv = 1.0 / s;
            for v in &mut block[i * row_len..i * row_len + l] {
                *v *= inv;
            }
        }
    }
}

/// `x[i] = exp(x[i] - max)`, each exponential libm's `f32::exp`.
#[inline(always)]
fn exp_shifted_generic(x: &mut [f32], max: f32) {
    for v in x.iter_mut() {
        *v = (*v - max).exp();
    }
}

/// glibc's `expf` table (`__exp2f_data.tab`: 2^(i/32) with the index bits folded out).
#[cfg(target_arch = "x86_64")]
const EXP2F_TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// [`exp_shifted_generic`] sixteen lanes at a time: glibc's `expf` algorithm (double
/// precision, a 32-entry table and a cubic; the FMA variant x86-64 glibc runs on every
/// CPU with AVX-512), operation for operation, so each value has the bits `f32::exp`
/// gives on such a system (tested against it). Lanes glibc sends down its special path
/// (|x| of 88 and more, infinities, NaN) are taken by `f32::exp` itself.
///
/// Used only with glibc (Linux, GNU): elsewhere `f32::exp` is another library's, and the
/// AVX-512 paths take [`exp_shifted_generic`] so that every instruction set keeps giving
/// the same bits. (glibc picks its FMA `expf` on every CPU with AVX-512 unless told
/// otherwise through `GLIBC_TUNABLES`.)
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn exp_shifted_avx512_checked(x: &mut [f32], max: f32) {
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        // SAFETY: only inlined into functions compiled with AVX-512F, which run only
        // where detection found it; `exp_shifted_avx512` reads and writes inside `x`.
        unsafe { exp_shifted_avx512(x, max) }
    } else {
        exp_shifted_generic(x, max)
    }
}

/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted_avx512(x: &mut [f32], max: f32) {
    use std::arch::x86_64::*;
    let table = |i: usize| {
        // SAFETY: eight of the 32 entries from `i` (i is 0, 8, 16 or 24).
        unsafe { _mm512_loadu_pd(EXP2F_TABLE.as_ptr().add(i).cast::<f64>()) }
    };
    let (t0, t1, t2, t3) = (table(0), table(8), table(16), table(24));
    let invln2n = _mm512_set1_pd(f64::from_bits(0x40471547652b82fe));
    let shift = _mm512_set1_pd(f64::from_bits(0x4338000000000000));
    let c0 = _mm512_set1_pd(f64::from_bits(0x3ebc6af84b912394));
    let c1 = _mm512_set1_pd(f64::from_bits(0x3f2ebfce50fac4f3));
    let c2 = _mm512_set1_pd(f64::from_bits(0x3f962e42ff0c52d6));
    let one = _mm512_set1_pd(1.0);
    // glibc's main path for eight values (its statements, with the contractions into
    // fused multiply-adds its FMA build makes).
    let exp8 = |xd: __m512d| -> __m256 {
        let kd = _mm512_fmadd_pd(invln2n, xd, shift);
        let ki = _mm512_castpd_si512(kd);
        let kd = _mm512_sub_pd(kd, shift);
        let r = _mm512_fmsub_pd(invln2n, xd, kd);
        let idx = _mm512_and_si512(ki, _mm512_set1_epi64(31));
        let low = _mm512_permutex2var_pd(t0, idx, t1);
        let high = _mm512_permutex2var_pd(t2, idx, t3);
        let upper = _mm512_test_epi64_mask(idx, _mm512_set1_epi64(16));
        let t = _mm512_castpd_si512(_mm512_mask_blend_pd(upper, low, high));
        let s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64::<47>(ki)));
        let z = _mm512_fmadd_pd(c0, r, c1);
        let r2 = _mm512_mul_pd(r, r);
        let y = _mm512_fmadd_pd(r, c2, one);
        let y = _mm512_fmadd_pd(z, r2, y);
        _mm512_cvtpd_ps(_mm512_mul_pd(y, s))
    };
    let m = _mm512_set1_ps(max);
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: elements `i..i + 16` lie inside `x` (`i + 16 <= n`).
        let v = _mm512_sub_ps(unsafe { _mm512_loadu_ps(p.add(i)) }, m);
        let lo = exp8(_mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        let hi = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v));
        let hi = exp8(_mm512_cvtps_pd(_mm256_castpd_ps(hi)));
        let both = _mm512_insertf64x4::<1>(
            _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
            _mm256_castps_pd(hi),
        );
        // SAFETY: as for the load.
        unsafe { _mm512_storeu_ps(p.add(i), _mm512_castpd_ps(both)) };
        let top = _mm512_and_si512(
            _mm512_srli_epi32::<20>(_mm512_castps_si512(v)),
            _mm512_set1_epi32(0x7ff),
        );
        let special = _mm512_cmpgt_epi32_mask(top, _mm512_set1_epi32(0x42a));
        if special != 0 {
            let mut lanes = [0.0f32; 16];
            // SAFETY: `lanes` holds sixteen floats.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
            for (l, &d) in lanes.iter().enumerate() {
                if special & (1 << l) != 0 {
                    // SAFETY: `i + l < i + 16 <= n`; written through `p`, as the vector
                    // stores are.
                    unsafe { *p.add(i + l) = d.exp() };
                }
            }
        }
        i += 16;
    }
    exp_shifted_generic(&mut x[i..], max);
}

/// SwiGLU gate in place: `gate = silu(gate) * up`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        let s = *g / (1.0 + (-*g).exp());
        *g = s * u;
    }
}

/// One kv head's cached keys and values for [`attend`]: `len` rows of `stride` values
/// in each of `keys` and `values`, the head's slice of a row starting at `offset`. `T` is
/// `f32`, or `u16` for IEEE half bit patterns ([`attend_f16`]).
#[derive(Clone, Copy, Debug)]
pub struct KvHead<'a, T = f32> {
    /// Cached keys, row-major.
    pub keys: &'a [T],
    /// Cached values, row-major.
    pub values: &'a [T],
    /// Values per cached row (all kv heads).
    pub stride: usize,
    /// Where this head's slice starts in a row.
    pub offset: usize,
    /// Cached positions to attend over.
    pub len: usize,
}

impl<T> KvHead<'_, T> {
    fn check(&self, hd: usize, out: &[f32]) {
        assert!(self.len > 0);
        let need = (self.len - 1)
            .checked_mul(self.stride)
            .and_then(|n| n.checked_add(self.offset))
            .and_then(|n| n.checked_add(hd))
            .expect("attention extent overflows");
        assert!(self.keys.len() >= need && self.values.len() >= need);
        assert!(out.len() == hd);
    }
}

/// Causal attention of one query head `q` over the cached positions of `kv`.
///
/// `scores` is scratch of at least `kv.len`; the result goes to `out` (head_dim). The
/// whole loop is compiled for the detected instruction set (scores use the same
/// lane-structured dot as everything else, so results do not depend on it).
pub fn attend(isa: Isa, q: &[f32], kv: KvHead<'_>, scores: &mut [f32], out: &mut [f32]) {
    kv.check(q.len(), out);
    match isa.runnable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `runnable` keeps `Isa::Avx2` only where detection found AVX2.
        Isa::Avx2 => unsafe { attend_avx2(q, kv, scores, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `runnable` keeps `Isa::Avx512*` only where detection found AVX-512F, F16C.
        Isa::Avx512 | Isa::Avx512Vnni => unsafe { attend_avx512(q, kv, scores, out) },
        _ => attend_generic(q, kv, scores, out),
    }
}

/// Positions whose f16 keys or values are widened at a time by [`attend_f16`].
pub const F16_BLOCK: usize = 32;

/// [`attend`] over an f16 cache: keys and values are widened to f32 (exactly)
/// [`F16_BLOCK`] positions at a time into `scratch` (at least `F16_BLOCK * head_dim`),
/// then meet the same arithmetic as [`attend`], so the result equals [`attend`] on the
/// widened cache, on every instruction set.
pub fn attend_f16(
    isa: Isa,
    q: &[f32],
    kv: KvHead<'_, u16>,
    scores: &mut [f32],
    scratch: &mut [f32],
    out: &mut [f32],
) {
    kv.check(q.len(), out);
    assert!(scratch.len() >= F16_BLOCK * q.len());
    match isa.runnable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `runnable` keeps `Isa::Avx2` only where detection found AVX2 and F16C.
        Isa::Avx2 => unsafe { attend_f16_avx2(q, kv, scores, scratch, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `runnable` keeps `Isa::Avx512*` only where detection found AVX-512F, F16C.
        Isa::Avx512 | Isa::Avx512Vnni => unsafe { attend_f16_avx512(q, kv, scores, scratch, out) },
        _ => attend_f16_with(q, kv, scores, scratch, out, dot4_generic, widen_generic),
    }
}

/// [`attend_f16`] for several queries over one KV head (the query heads of a group, for
/// consecutive tokens of one sequence): every block of cached rows is widened once and
/// used by all of them, and each query's result has the bits [`attend_f16`] gives it
/// alone. Query `g` is `queries[g * hd..(g + 1) * hd]` and attends over the first
/// `lens[g]` rows of `kv` (`kv.len` must be their maximum); its result goes to
/// `outs[g * hd..(g + 1) * hd]`. `scores` is scratch of at least `lens.len() * kv.len`,
/// `scratch` of at least `F16_BLOCK * hd`.
#[allow(clippy::too_many_arguments)]
pub fn attend_f16_group(
    isa: Isa,
    hd: usize,
    queries: &[f32],
    lens: &[usize],
    kv: KvHead<'_, u16>,
    scores: &mut [f32],
    scratch: &mut [f32],
    outs: &mut [f32],
) {
    let g = lens.len();
    assert!(queries.len() == g * hd && outs.len() == g * hd && hd > 0);
    assert!(lens.iter().all(|&l| l > 0 && l <= kv.len) && lens.contains(&kv.len));
    kv.check(hd, &outs[..hd]);
    assert!(scratch.len() >= F16_BLOCK * hd && scores.len() >= g * kv.len);
    match isa.runnable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `runnable` keeps `Isa::Avx2` only where detection found AVX2 and F16C.
        Isa::Avx2 => unsafe { attend_f16_group_avx2(hd, queries, lens, kv, scores, scratch, outs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `runnable` keeps `Isa::Avx512*` only where detection found AVX-512F, F16C.
        Isa::Avx512 | Isa::Avx512Vnni if hd.is_multiple_of(16) => unsafe {
            attend_f16_group_avx512(hd, queries, lens, kv, scores, scratch, outs)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above; head sizes off the 16-lane grid take the AVX2 arithmetic.
        Isa::Avx512 | Isa::Avx512Vnni => unsafe {
            attend_f16_group_avx2(hd, queries, lens, kv, scores, scratch, outs)
        },
        _ => attend_f16_group_with(
            hd,
            queries,
            lens,
            kv,
            scores,
            scratch,
            outs,
            dot4_generic,
            widen_generic,
            exp_shifted_generic,
        ),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn attend_f16_group_avx2(
    hd: usize,
    queries: &[f32],
    lens: &[usize],
    kv: KvHead<'_, u16>,
    scores: &mut [f32],
    scratch: &mut [f32],
    outs: &mut [f32],
) {
    attend_f16_group_with(
        hd,
        queries,
        lens,
        kv,
        scores,
        scratch,
        outs,
        dot4_generic,
        widen_f16c,
        exp_shifted_generic,
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn attend_f16_group_avx512(
    hd: usize,
    queries: &[f32],
    lens: &[usize],
    kv: KvHead<'_, u16>,
    scores: &mut [f32],
    scratch: &mut [f32],
    outs: &mut [f32],
) {
    attend_f16_group_with(
        hd,
        queries,
        lens,
        kv,
        scores,
        scratch,
        outs,
        dot4_avx512_checked,
        widen_f16c,
        exp_shifted_avx512_checked,
    )
}

/// The body of [`attend_f16_group`]: [`attend_f16_with`]'s blocks, each widened once for
/// every query that reaches it.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_f16_group_with(
    hd: usize,
    queries: &[f32],
    lens: &[usize],
    kv: KvHead<'_, u16>,
    scores: &mut [f32],
    scratch: &mut [f32],
    outs: &mut [f32],
    dot4: impl Fn(&[f32], usize, &[f32], &mut [f32; 4]),
    widen_row: impl Fn(&[u16], &mut [f32]),
    exp_shifted: impl Fn(&mut [f32], f32),
) {
    let KvHead {
        keys,
        values,
        stride,
        offset,
        len,
    } = kv;
    let scores = &mut scores[..lens.len() * len];
    for j0 in (0..len).step_by(F16_BLOCK) {
        let j1 = (j0 + F16_BLOCK).min(len);
        for (j, dst) in (j0..j1).zip(scratch.chunks_exact_mut(hd)) {
            widen_row(&keys[j * stride + offset..][..hd], dst);
        }
        for ((q, &l), s) in queries
            .chunks_exact(hd)
            .zip(lens)
            .zip(scores.chunks_exact_mut(len))
        {
            if l > j0 {
                key_scores(q, scratch, hd, &mut s[j0..j1.min(l)], &dot4);
            }
        }
    }
    softmax_rows(scores, len, lens, exp_shifted);
    outs.fill(0.0);
    for j0 in (0..len).step_by(F16_BLOCK) {
        let j1 = (j0 + F16_BLOCK).min(len);
        for (j, dst) in (j0..j1).zip(scratch.chunks_exact_mut(hd)) {
            widen_row(&values[j * stride + offset..][..hd], dst);
        }
        for ((out, &l), s) in outs
            .chunks_exact_mut(hd)
            .zip(lens)
            .zip(scores.chunks_exact(len))
        {
            if l > j0 {
                value_sums(&s[j0..j1.min(l)], scratch, hd, out);
            }
        }
    }
}

/// f16 bit patterns widened to f32 (exact) by the portable conversion.
#[inline(always)]
fn widen_generic(src: &[u16], dst: &mut [f32]) {
    convert::f16_to_f32(src, dst)
}

/// f16 bit patterns widened to f32 eight at a time by F16C's `vcvtph2ps` (exact, as the
/// portable conversion). Only inlined into functions compiled with F16C.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn widen_f16c(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    assert_eq!(src.len(), dst.len());
    let n = src.len();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: elements `i..i + 8` lie inside both slices (`i + 8 <= n`); unaligned
        // loads and stores; F16C and AVX are enabled in every caller
        // (`attend_f16_avx2`, `attend_f16_avx512`).
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i).cast::<__m128i>());
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    convert::f16_to_f32(&src[i..], &mut dst[i..]);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_avx2(q: &[f32], kv: KvHead<'_>, scores: &mut [f32], out: &mut [f32]) {
    attend_generic(q, kv, scores, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn attend_f16_avx2(
    q: &[f32],
    kv: KvHead<'_, u16>,
    scores: &mut [f32],
    scratch: &mut [f32],
    out: &mut [f32],
) {
    attend_f16_with(q, kv, scores, scratch, out, dot4_generic, widen_f16c)
}

/// [`dot4_avx512`] behind a safe signature (AVX-512F must be enabled by the caller).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn dot4_avx512_checked(k: &[f32], stride: usize, q: &[f32], r: &mut [f32; 4]) {
    assert!(k.len() >= 3 * stride + q.len() && q.len().is_multiple_of(16));
    // SAFETY: only inlined into functions compiled with AVX-512F (`attend_avx512`,
    // `attend_f16_avx512`), which run only where detection found it; the four rows lie
    // inside `k` (asserted).
    unsafe { dot4_avx512(k, stride, q, r) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn attend_avx512(q: &[f32], kv: KvHead<'_>, scores: &mut [f32], out: &mut [f32]) {
    if q.len().is_multiple_of(16) {
        return attend_with(q, kv, scores, out, dot4_avx512_checked);
    }
    attend_generic(q, kv, scores, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn attend_f16_avx512(
    q: &[f32],
    kv: KvHead<'_, u16>,
    scores: &mut [f32],
    scratch: &mut [f32],
    out: &mut [f32],
) {
    if q.len().is_multiple_of(16) {
        return attend_f16_avx512_direct(q, kv, scores, scratch, out);
    }
    attend_f16_with(q, kv, scores, scratch, out, dot4_generic, widen_f16c)
}

/// [`attend_f16_with`] for head sizes that are a multiple of 16, reading the f16 cache
/// straight into registers (`vcvtph2ps`, exact) instead of through `scratch`: the same
/// lane arithmetic as [`dot4_avx512`] for the scores and as [`value_sums`] for the
/// values, so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn attend_f16_avx512_direct(
    q: &[f32],
    kv: KvHead<'_, u16>,
    scores: &mut [f32],
    scratch: &mut [f32],
    out: &mut [f32],
) {
    let KvHead {
        keys,
        values,
        stride,
        offset,
        len,
    } = kv;
    let hd = q.len();
    let scale = 1.0 / (hd as f32).sqrt();
    let scores = &mut scores[..len];
    let keys = &keys[offset..];
    let mut j = 0;
    let mut r = [0.0f32; 4];
    while j + 4 <= len {
        let k = &keys[j * stride..];
        assert!(k.len() >= 3 * stride + hd);
        // SAFETY: AVX-512F and F16C are enabled here; the four rows lie inside `k`.
        unsafe { dot4_avx512(k, stride, q, &mut r) };
        for (s, v) in scores[j..j + 4].iter_mut().zip(r) {
            *s = v * scale;
        }
        j += 4;
    }
    for (j, s) in scores.iter_mut().enumerate().skip(j) {
        let row = &mut scratch[..hd];
        widen_f16c(&keys[j * stride..][..hd], row);
        dot::dot_rows_strided_generic::<1>(row, hd, hd, q, &mut r[..1]);
        *s = r[0] * scale;
    }
    softmax_with(scores, exp_shifted_avx512_checked);
    let values = &values[offset..];
    assert!(values.len() >= (len - 1) * stride + hd && out.len() == hd);
    // SAFETY: AVX-512F and F16C are enabled here; every row read lies inside `values`
    // (asserted) and `out` is `hd` long.
    unsafe { value_sums_avx512(scores, values, stride, out) };
}

/// A cached element type the AVX-512 attention reads sixteen at a time as f32.
#[cfg(target_arch = "x86_64")]
trait KvLanes: Copy {
    /// Sixteen values from `p` widened to f32 (exact).
    ///
    /// # Safety
    /// AVX-512F and F16C must be enabled in the caller and `p..p + 16` readable.
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

#[cfg(target_arch = "x86_64")]
impl KvLanes for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

#[cfg(target_arch = "x86_64")]
impl KvLanes for u16 {
    #[inline(always)]
    unsafe fn load16(p: *const u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract (sixteen f16 values are 32 bytes).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast::<__m256i>())) }
    }
}

/// [`value_sums`] with AVX-512 registers for `out.len()` a multiple of 16: each output
/// element adds `p[j] * v[j]` over the positions in order (multiply, then add: the same
/// bits).
///
/// # Safety
/// AVX-512F and F16C enabled; rows `0..p.len()` of `stride` hold `out.len()` values each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn value_sums_avx512<T: KvLanes>(p: &[f32], values: &[T], stride: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd = out.len();
    let mut c = 0;
    while c + 64 <= hd {
        let mut acc = [_mm512_setzero_ps(); 4];
        for (j, &pj) in p.iter().enumerate() {
            let pv = _mm512_set1_ps(pj);
            let row = values.as_ptr().add(j * stride + c);
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm512_add_ps(*a, _mm512_mul_ps(pv, T::load16(row.add(16 * i))));
            }
        }
        for (i, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(c + 16 * i), *a);
        }
        c += 64;
    }
    while c + 16 <= hd {
        let mut acc = _mm512_setzero_ps();
        for (j, &pj) in p.iter().enumerate() {
            let v = T::load16(values.as_ptr().add(j * stride + c));
            acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(pj), v));
        }
        _mm512_storeu_ps(out.as_mut_ptr().add(c), acc);
        c += 16;
    }
}

/// Four dot products of `q` (a multiple of 16 long) with rows `stride` apart, with the
/// arithmetic of [`dot::dot_rows_strided_generic`] (sixteen lanes of products added in
/// order, then the halving tree), the four trees folded together: each level's adds are
/// the same, in a quarter of the instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn dot4_avx512<T: KvLanes>(k: &[T], stride: usize, q: &[f32], r: &mut [f32; 4]) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 4];
    for c in (0..q.len()).step_by(16) {
        let qv = _mm512_loadu_ps(q.as_ptr().add(c));
        for (i, a) in acc.iter_mut().enumerate() {
            let kv = T::load16(k.as_ptr().add(i * stride + c));
            *a = _mm512_add_ps(*a, _mm512_mul_ps(kv, qv));
        }
    }
    // Width 8: lanes i + (i + 8) of rows 0,1 and of rows 2,3, two rows per register.
    let s01 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(acc[0], acc[1]),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(acc[0], acc[1]),
    );
    let s23 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(acc[2], acc[3]),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(acc[2], acc[3]),
    );
    // Width 4: one 128-bit quarter per row.
    let s = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(s01, s23),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(s01, s23),
    );
    // Widths 2 and 1 inside each quarter.
    let s = _mm512_add_ps(s, _mm512_permute_ps::<0b01_00_11_10>(s));
    let s = _mm512_add_ps(s, _mm512_permute_ps::<0b10_11_00_01>(s));
    let mut lanes = [0.0f32; 16];
    _mm512_storeu_ps(lanes.as_mut_ptr(), s);
    *r = [lanes[0], lanes[4], lanes[8], lanes[12]];
}

#[inline(always)]
fn dot4_generic(k: &[f32], stride: usize, q: &[f32], r: &mut [f32; 4]) {
    dot::dot_rows_strided_generic::<4>(k, stride, q.len(), q, r)
}

#[inline(always)]
fn attend_generic(q: &[f32], kv: KvHead<'_>, scores: &mut [f32], out: &mut [f32]) {
    attend_with(q, kv, scores, out, dot4_generic)
}

/// The attention of [`attend`], with `dot4` computing four keys' scores at once (each
/// the same arithmetic as [`dot::dot_rows_strided_generic`]).
#[inline(always)]
fn attend_with(
    q: &[f32],
    kv: KvHead<'_>,
    scores: &mut [f32],
    out: &mut [f32],
    dot4: impl Fn(&[f32], usize, &[f32], &mut [f32; 4]),
) {
    let KvHead {
        keys,
        values,
        stride,
        offset,
        len,
    } = kv;
    let scores = &mut scores[..len];
    key_scores(q, &keys[offset..], stride, scores, &dot4);
    softmax_generic(scores);
    out.fill(0.0);
    value_sums(scores, &values[offset..], stride, out);
}

/// [`attend_with`] over f16 storage, widened block by block (see [`attend_f16`]).
#[inline(always)]
fn attend_f16_with(
    q: &[f32],
    kv: KvHead<'_, u16>,
    scores: &mut [f32],
    scratch: &mut [f32],
    out: &mut [f32],
    dot4: impl Fn(&[f32], usize, &[f32], &mut [f32; 4]),
    widen_row: impl Fn(&[u16], &mut [f32]),
) {
    let KvHead {
        keys,
        values,
        stride,
        offset,
        len,
    } = kv;
    let hd = q.len();
    let scores = &mut scores[..len];
    // Each block's slice of this head in rows `j0..j1`, widened into `scratch` (stride
    // `hd`). Plain loops, not closures: the conversion must inline into the caller's
    // instruction set.
    for j0 in (0..len).step_by(F16_BLOCK) {
        let j1 = (j0 + F16_BLOCK).min(len);
        for (j, dst) in (j0..j1).zip(scratch.chunks_exact_mut(hd)) {
            widen_row(&keys[j * stride + offset..][..hd], dst);
        }
        key_scores(q, scratch, hd, &mut scores[j0..j1], &dot4);
    }
    softmax_generic(scores);
    out.fill(0.0);
    for j0 in (0..len).step_by(F16_BLOCK) {
        let j1 = (j0 + F16_BLOCK).min(len);
        for (j, dst) in (j0..j1).zip(scratch.chunks_exact_mut(hd)) {
            widen_row(&values[j * stride + offset..][..hd], dst);
        }
        value_sums(&scores[j0..j1], scratch, hd, out);
    }
}

/// `scores[j] = dot(q, keys[j * stride..]) / sqrt(hd)` for every `j`.
#[inline(always)]
fn key_scores(
    q: &[f32],
    keys: &[f32],
    stride: usize,
    scores: &mut [f32],
    dot4: &impl Fn(&[f32], usize, &[f32], &mut [f32; 4]),
) {
    let hd = q.len();
    let scale = 1.0 / (hd as f32).sqrt();
    // Four keys per pass share the query's loads; each score is the same dot as alone.
    let mut j = 0;
    let mut r = [0.0f32; 4];
    while j + 4 <= scores.len() {
        dot4(&keys[j * stride..], stride, q, &mut r);
        for (s, v) in scores[j..j + 4].iter_mut().zip(r) {
            *s = v * scale;
        }
        j += 4;
    }
    for (j, s) in scores.iter_mut().enumerate().skip(j) {
        dot::dot_rows_strided_generic::<1>(&keys[j * stride..], stride, hd, q, &mut r[..1]);
        *s = r[0] * scale;
    }
}

/// `out[i] += p[j] * values[j * stride + i]` over the positions `j` in order. Sixty-four
/// (then sixteen, then one) elements at a time, their sums held in registers for the
/// whole pass rather than reloaded from `out` per position.
#[inline(always)]
fn value_sums(p: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
    let hd = out.len();
    let mut c = 0;
    while c + 64 <= hd {
        weighted_sum::<64>(p, values, stride, c, &mut out[c..]);
        c += 64;
    }
    while c + 16 <= hd {
        weighted_sum::<16>(p, values, stride, c, &mut out[c..]);
        c += 16;
    }
    while c < hd {
        weighted_sum::<1>(p, values, stride, c, &mut out[c..]);
        c += 1;
    }
}

/// `out[i] += sum_j p[j] * values[j * stride + at + i]` for `i < W`, positions in order.
#[inline(always)]
fn weighted_sum<const W: usize>(
    p: &[f32],
    values: &[f32],
    stride: usize,
    at: usize,
    out: &mut [f32],
) {
    let mut acc: [f32; W] = out[..W].try_into().expect("W elements");
    for (j, &pj) in p.iter().enumerate() {
        let v = &values[j * stride + at..][..W];
        for (a, x) in acc.iter_mut().zip(v) {
            *a += pj * x;
        }
    }
    out[..W].copy_from_slice(&acc);
}

/// Deterministic pseudo-random test values in [-2, 2) (an LCG), shared by the kernel tests.
#[cfg(test)]
fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Storage;
    use std::sync::Arc;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    fn matrix(rows: usize, cols: usize, dtype: DType, seed: &mut u64) -> (Matrix, Vec<f32>) {
        let vals: Vec<f32> = (0..rows * cols).map(|_| lcg(seed)).collect();
        let mut bytes = Vec::new();
        let mut exact = Vec::new();
        for v in &vals {
            match dtype {
                DType::F32 => {
                    bytes.extend_from_slice(&v.to_le_bytes());
                    exact.push(*v);
                }
                DType::BF16 => {
                    let h = half::bf16::from_f32(*v);
                    bytes.extend_from_slice(&h.to_bits().to_le_bytes());
                    exact.push(h.to_f32());
                }
                DType::F16 => {
                    let h = half::f16::from_f32(*v);
                    bytes.extend_from_slice(&h.to_bits().to_le_bytes());
                    exact.push(h.to_f32());
                }
                _ => unreachable!("float types only"),
            }
        }
        let tensor = Tensor {
            dtype,
            shape: vec![rows, cols],
            storage: Storage::Owned(Arc::new(bytes)),
        };
        (Matrix::new(tensor).unwrap(), exact)
    }

    #[test]
    fn matmul_matches_f64_reference_and_is_batch_invariant() {
        let mut seed = 7;
        let pool = WorkerPool::new(3).unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            for (rows, cols, n) in [(37, 53, 3), (64, 128, 5), (5, 7, 1), (130, 96, 2)] {
                let (w, exact) = matrix(rows, cols, dtype, &mut seed);
                let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
                let mut out = vec![0.0; n * rows];
                matmul(&pool, &w, &x, &mut out);
                for t in 0..n {
                    for r in 0..rows {
                        let want: f64 = (0..cols)
                            .map(|c| exact[r * cols + c] as f64 * x[t * cols + c] as f64)
                            .sum();
                        let got = out[t * rows + r] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{dtype:?} {rows}x{cols}: {got} vs {want}"
                        );
                    }
                    // One activation row alone gives bit-identical results.
                    let mut single = vec![0.0; rows];
                    matmul(&pool, &w, &x[t * cols..(t + 1) * cols], &mut single);
                    assert_eq!(single, out[t * rows..(t + 1) * rows]);
                }
            }
        }
    }

    #[test]
    fn simd_dot_is_bit_identical_to_scalar() {
        let mut seed = 11;
        for len in [1, 3, 8, 15, 16, 17, 31, 32, 33, 64, 100, 4096, 4099] {
            let a: Vec<f32> = (0..len).map(|_| lcg(&mut seed) * 10.0).collect();
            let b: Vec<f32> = (0..len).map(|_| lcg(&mut seed)).collect();
            let want = dot_scalar(&a, &b);
            for isa in Isa::available() {
                assert_eq!(
                    dot(isa, &a, &b).to_bits(),
                    want.to_bits(),
                    "{isa:?} len {len}"
                );
                let mut res = [0.0f32; ROW_BLOCK];
                let rows: Vec<f32> = a.iter().cycle().take(ROW_BLOCK * len).copied().collect();
                dot::dot_rows(isa, &rows, len, &b, &mut res);
                for r in res {
                    assert_eq!(r.to_bits(), want.to_bits(), "{isa:?} rows len {len}");
                }
            }
        }
    }

    #[test]
    fn rope_rotates_adjacent_pairs() {
        let t = RopeTable::from_frequencies(&[1.0, 0.01], 8); // head_dim 4, theta 10000
        let mut x = [1.0, 0.0, 0.0, 1.0];
        t.apply(&mut x, 3);
        // pair 0: frequency 1, angle 3; pair 1: frequency 1/100, angle 0.03
        assert!((x[0] - 3f32.cos()).abs() < 1e-6 && (x[1] - 3f32.sin()).abs() < 1e-6);
        assert!((x[2] + 0.03f32.sin()).abs() < 1e-6 && (x[3] - 0.03f32.cos()).abs() < 1e-6);
        let mut y = [0.5, -0.25, 2.0, 1.0];
        t.apply(&mut y, 0);
        assert_eq!(y, [0.5, -0.25, 2.0, 1.0]);
    }

    /// Attention gives the same bits with every instruction set (head sizes with and
    /// without a 16-multiple, lengths around the four-key passes).
    #[test]
    fn attention_is_identical_on_every_isa() {
        for hd in [64, 48, 40, 128] {
            let (stride, offset) = (3 * hd, hd);
            for len in [1, 3, 4, 5, 13, 37] {
                let keys = test_values(len * stride, 7 + len as u64);
                let values = test_values(len * stride, 9 + len as u64);
                let q = test_values(hd, 11);
                let mut want = vec![0.0f32; hd];
                let mut scores = vec![0.0f32; len];
                let kv = KvHead {
                    keys: &keys,
                    values: &values,
                    stride,
                    offset,
                    len,
                };
                attend(Isa::Baseline, &q, kv, &mut scores, &mut want);
                for isa in Isa::available() {
                    let mut got = vec![f32::NAN; hd];
                    attend(isa, &q, kv, &mut scores, &mut got);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{isa:?} hd {hd} len {len}");
                }
                // And it is attention: the softmax-weighted mean of the values.
                let sc: Vec<f64> = (0..len)
                    .map(|j| {
                        let k = &keys[j * stride + offset..][..hd];
                        k.iter().zip(&q).map(|(a, b)| (a * b) as f64).sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (i, w) in want.iter().enumerate() {
                    let exact: f64 = (0..len)
                        .map(|j| e[j] / z * values[j * stride + offset + i] as f64)
                        .sum();
                    assert!((*w as f64 - exact).abs() < 1e-4, "hd {hd} len {len} #{i}");
                }
            }
        }
    }

    /// The sixteen-lane exponential has libm's bits (glibc's FMA `expf`, which x86-64
    /// glibc uses on every CPU with AVX-512) over the whole range softmax feeds it and
    /// on the special values.
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    #[test]
    fn sixteen_lane_exp_is_libm_s() {
        if !Isa::available().contains(&Isa::Avx512) {
            eprintln!("no AVX-512 here: the sixteen-lane exponential is not run");
            return;
        }
        // Every 37th float from 0 down to -inf (2^31 / 37 values), then specials.
        let mut xs: Vec<f32> = (0..(0xff80_0000u32 - 0x8000_0000) / 37)
            .map(|k| f32::from_bits(0x8000_0000 + 37 * k))
            .collect();
        xs.extend([
            0.0,
            -0.0,
            f32::NEG_INFINITY,
            f32::NAN,
            -88.0,
            -88.7,
            -103.0,
            -103.5,
            -104.0,
            -150.0,
            1e-30,
            88.0,
            88.8,
            f32::INFINITY,
            5.5,
            1.0,
        ]);
        for max in [0.0f32, 2.5, -1.25] {
            let mut got = xs.clone();
            // SAFETY: AVX-512F was detected above.
            unsafe { exp_shifted_avx512(&mut got, max) };
            for (x, g) in xs.iter().zip(&got) {
                let want = (x - max).exp();
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "exp({x} - {max}): {g:e} ({:#x}) != {want:e} ({:#x})",
                    g.to_bits(),
                    want.to_bits()
                );
            }
        }
    }

    /// Rows of a batch softmax exactly as one by one.
    #[test]
    fn softmax_rows_is_softmax_of_each_row() {
        let lens = [1, 7, 40, 3, 40, 17, 9, 2, 33, 40, 5];
        let row_len = 40;
        let data = test_values(lens.len() * row_len, 31);
        let mut rows: Vec<f32> = data.iter().map(|v| v * 30.0).collect();
        let mut want = rows.clone();
        softmax_rows(&mut rows, row_len, &lens, exp_shifted_generic);
        for (g, &l) in lens.iter().enumerate() {
            softmax(&mut want[g * row_len..g * row_len + l]);
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&rows), bits(&want));
        // And each row sums to one.
        for (g, &l) in lens.iter().enumerate() {
            let s: f32 = rows[g * row_len..g * row_len + l].iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "row {g}: {s}");
        }
    }

    /// Grouped f16 attention gives every query the bits it gets alone, on every
    /// instruction set (queries of several lengths, across the widening blocks).
    #[test]
    fn grouped_f16_attention_is_each_query_alone() {
        for hd in [64, 48, 128] {
            let (stride, offset) = (2 * hd, hd);
            let len = 70;
            let mut k16 = vec![0u16; len * stride];
            let mut v16 = vec![0u16; len * stride];
            convert::f32_to_f16(&test_values(len * stride, 21), &mut k16);
            convert::f32_to_f16(&test_values(len * stride, 23), &mut v16);
            let lens = [1, 31, 32, 33, 69, 70, 5, 64];
            let queries = test_values(lens.len() * hd, 25);
            let kv = |len| KvHead {
                keys: &k16[..],
                values: &v16[..],
                stride,
                offset,
                len,
            };
            for isa in Isa::available() {
                let mut outs = vec![f32::NAN; lens.len() * hd];
                let mut scores = vec![0.0f32; lens.len() * len];
                let mut scratch = vec![0.0f32; F16_BLOCK * hd];
                attend_f16_group(
                    isa,
                    hd,
                    &queries,
                    &lens,
                    kv(len),
                    &mut scores,
                    &mut scratch,
                    &mut outs,
                );
                for (g, &l) in lens.iter().enumerate() {
                    let mut want = vec![0.0f32; hd];
                    let mut s = vec![0.0f32; l];
                    let q = &queries[g * hd..(g + 1) * hd];
                    attend_f16(Isa::Baseline, q, kv(l), &mut s, &mut scratch, &mut want);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&outs[g * hd..(g + 1) * hd]),
                        bits(&want),
                        "{isa:?} hd {hd} query {g} len {l}"
                    );
                }
            }
        }
    }

    /// f16 attention equals f32 attention over the same values rounded to f16, on every
    /// instruction set (lengths across the widening blocks).
    #[test]
    fn f16_attention_is_f32_attention_on_the_rounded_cache() {
        for hd in [64, 48, 128] {
            let (stride, offset) = (2 * hd, hd);
            for len in [1, 5, 31, 32, 33, 70] {
                let keys = test_values(len * stride, 3 + len as u64);
                let values = test_values(len * stride, 5 + len as u64);
                let q = test_values(hd, 13);
                let (mut k16, mut v16) = (vec![0u16; keys.len()], vec![0u16; values.len()]);
                convert::f32_to_f16(&keys, &mut k16);
                convert::f32_to_f16(&values, &mut v16);
                let (mut kr, mut vr) = (vec![0f32; keys.len()], vec![0f32; values.len()]);
                convert::f16_to_f32(&k16, &mut kr);
                convert::f16_to_f32(&v16, &mut vr);
                let mut scores = vec![0.0f32; len];
                let mut scratch = vec![0.0f32; F16_BLOCK * hd];
                let mut want = vec![0.0f32; hd];
                let kv = KvHead {
                    keys: &kr[..],
                    values: &vr[..],
                    stride,
                    offset,
                    len,
                };
                attend(Isa::Baseline, &q, kv, &mut scores, &mut want);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                for isa in Isa::available() {
                    let mut got = vec![f32::NAN; hd];
                    let kv16 = KvHead {
                        keys: &k16[..],
                        values: &v16[..],
                        stride,
                        offset,
                        len,
                    };
                    attend_f16(isa, &q, kv16, &mut scores, &mut scratch, &mut got);
                    assert_eq!(bits(&got), bits(&want), "{isa:?} hd {hd} len {len}");
                }
            }
        }
    }

    #[test]
    fn norm_softmax_swiglu() {
        let mut out = [0.0; 2];
        rmsnorm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out);
        let inv = 1.0 / 12.5f32.sqrt();
        assert_eq!(out, [3.0 * inv, 4.0 * inv * 2.0]);
        let mut s = [1.0, 2.0, 3.0];
        softmax(&mut s);
        let e: f32 = [1f32, 2., 3.].iter().map(|v| v.exp()).sum();
        assert!((s[2] - 3f32.exp() / e).abs() < 1e-7);
        let mut g = [0.0, 2.0];
        swiglu(&mut g, &[5.0, 3.0]);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 3.0 * 2.0 / (1.0 + (-2f32).exp())).abs() < 1e-6);
    }
}
