//! Intel AMX (tile matrix multiply) products of Q4_1 ([`super::qdot`]) and Q4_0
//! ([`super::packed`]) weights with 8-bit activations, for products of [`MIN_TOKENS`] or
//! more activation rows (prompts, or decode steps of 16+ sequences).
//!
//! One `tdpbsud` multiplies a tile of 16 tokens' signed 8-bit activations of one block
//! (16 × 32 bytes) by that block of 16 weight rows as unsigned nibbles, in the
//! instruction's four-byte-interleaved layout, giving each token's and row's exact
//! integer block sum. Per block, AVX-512 then adds it into f32 accumulators as the other
//! kernels of the type do (Q4_1: `d_w * d_a * sum`, then `m_w * s_a`, as
//! [`super::qdot::dot_q4_1_reference`]; Q4_0: `(sum - 8 * sum(a)) * d_w * d_a`, as
//! [`super::packed::dot_reference`]), so every row has the bits the other kernels give it
//! (tested), whatever the batch.
//!
//! Linux hands out the tile registers per process on request (`arch_prctl`); the request
//! is made once, on the first [`available`] call. The AMX instructions are written as
//! inline assembly: Rust's AMX intrinsics are not stable.

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::packed::PackedMatrix;
use super::qdot::{InterleavedQ4_1, Q8Block, QK};
use crate::dtype::DType;

/// Fewest tokens for which the AMX path is taken (one full tile).
pub const MIN_TOKENS: usize = 16;
/// Weight rows per tile (four interleaved Q4_1 groups).
pub const PANEL_ROWS: usize = 16;
/// Tokens per tile.
const TILE_TOKENS: usize = 16;
/// Bytes of one tile of activations or weights for one block.
const TILE_BYTES: usize = 512;

/// Whether this CPU and kernel let this process use AMX-INT8 (asked once).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if !(std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("f16c")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return false;
        }
        let leaf7 = __cpuid_count(7, 0);
        let amx_tile = leaf7.edx & (1 << 24) != 0;
        let amx_int8 = leaf7.edx & (1 << 25) != 0;
        amx_tile && amx_int8 && request_tile_data()
    })
}

/// Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`); `false` where refused or not Linux.
fn request_tile_data() -> bool {
    #[cfg(target_os = "linux")]
    {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: the arch_prctl system call only changes this process's permissions;
        // `syscall` clobbers rcx and r11, declared.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Activations laid out for the tiles: per tile of 16 tokens and block, the tokens' 32
/// bytes one after another (512 bytes), and their `d` and `s`. Tokens past the last are
/// zero.
#[derive(Debug, Default)]
pub struct TiledActs {
    /// Tokens.
    pub n: usize,
    nb: usize,
    tiles: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    /// `-8 * sum(qs)`: the Q4_0 offset correction.
    offset: Vec<i32>,
}

impl TiledActs {
    /// Lays out `acts` (one row of at least `nb` blocks per token).
    pub fn new(acts: &[Vec<Q8Block>], nb: usize) -> TiledActs {
        let n = acts.len();
        let tiles = n.div_ceil(TILE_TOKENS);
        let mut q = vec![0i8; tiles * nb * TILE_BYTES];
        let mut d = vec![0.0f32; tiles * nb * TILE_TOKENS];
        let mut s = vec![0.0f32; tiles * nb * TILE_TOKENS];
        let mut offset = vec![0i32; tiles * nb * TILE_TOKENS];
        for (t, row) in acts.iter().enumerate() {
            let (tile, lane) = (t / TILE_TOKENS, t % TILE_TOKENS);
            for (b, blk) in row[..nb].iter().enumerate() {
                let at = tile * nb + b;
                q[at * TILE_BYTES + QK * lane..][..QK].copy_from_slice(&blk.qs);
                d[at * TILE_TOKENS + lane] = blk.d;
                s[at * TILE_TOKENS + lane] = blk.s;
                offset[at * TILE_TOKENS + lane] = -8 * blk.sum;
            }
        }
        TiledActs {
            n,
            nb,
            tiles,
            q,
            d,
            s,
            offset,
        }
    }
}

/// The tile shapes, twice (tmm0-2 and tmm3-5, for a pipeline of two blocks): activations
/// (16 tokens × 32 bytes), weights (8 rows × 64 bytes: four bytes of each of 16 rows),
/// sums (16 tokens × 16 int32).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1
        let mut set = |tmm: usize, rows: u8, colsb: u16| {
            c[16 + 2 * tmm..18 + 2 * tmm].copy_from_slice(&colsb.to_le_bytes());
            c[48 + tmm] = rows;
        };
        for base in [0, 3] {
            set(base, TILE_TOKENS as u8, QK as u16);
            set(base + 1, (QK / 4) as u8, 64);
            set(base + 2, TILE_TOKENS as u8, 64);
        }
        TileConfig(c)
    }
}

/// A weight matrix the tiles can read: Q4_1 in four-row groups, or Q4_0 in eight-row
/// groups.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// Interleaved Q4_1.
    Q4_1(&'a InterleavedQ4_1),
    /// Packed Q4_0.
    Q4_0(&'a PackedMatrix),
}

impl Source<'_> {
    fn rows(self) -> usize {
        match self {
            Source::Q4_1(w) => w.rows(),
            Source::Q4_0(w) => w.rows(),
        }
    }

    fn blocks(self) -> usize {
        match self {
            Source::Q4_1(w) => w.blocks(),
            Source::Q4_0(w) => w.blocks(),
        }
    }
}

/// Whether the tiles take `w` (Q4_0; Q8_0 stays on the VNNI kernel).
pub fn supports_packed(w: &PackedMatrix) -> bool {
    w.dtype() == DType::Q4_0
}

/// Rows `16 * p0 ..` (panels `p0..p1` of 16 rows; the matrix's last panel may be
/// partial) against every token of `acts`, into `out[t * rows + r]`.
///
/// # Safety
/// [`available`] must have returned true, and `out` must be valid for writes of
/// `acts.n * w.rows()` floats, of which no other thread writes rows of these panels.
pub unsafe fn panels(w: Source<'_>, acts: &TiledActs, p0: usize, p1: usize, out: *mut f32) {
    assert!(acts.nb == w.blocks() && p1 <= w.rows().div_ceil(PANEL_ROWS));
    if let Source::Q4_0(m) = w {
        assert!(supports_packed(m));
    }
    let cfg = TileConfig::new();
    // SAFETY: the caller checked AMX; the configuration is a valid palette-1 layout.
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    let mut weights = Weights {
        q: vec![Tile([0; TILE_BYTES]); acts.nb],
        d: vec![[0.0; PANEL_ROWS]; acts.nb],
        m: vec![[0.0; PANEL_ROWS]; acts.nb],
    };
    for p in p0..p1 {
        match w {
            Source::Q4_1(m) => {
                weights.load_q4_1(m, p);
                for tile in 0..acts.tiles {
                    panel_tile::<true>(&weights, acts, tile, m.rows(), p, out);
                }
            }
            Source::Q4_0(m) => {
                weights.load_q4_0(m, p);
                for tile in 0..acts.tiles {
                    panel_tile::<false>(&weights, acts, tile, m.rows(), p, out);
                }
            }
        }
    }
    // SAFETY: ends this thread's use of the tiles.
    asm!("tilerelease", options(nostack, nomem));
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Tile([u8; TILE_BYTES]);

/// One panel's weights in the tile layout, per block: `q[k / 4][4 * r + k % 4]` for row
/// `r` and value `k` (unsigned nibbles), and the rows' scales and (Q4_1) minimums.
struct Weights {
    q: Vec<Tile>,
    d: Vec<[f32; PANEL_ROWS]>,
    m: Vec<[f32; PANEL_ROWS]>,
}

impl Weights {
    /// Lays out panel `p` (groups `2p`, `2p + 1`) of a packed Q4_0 matrix, whose chunk
    /// `j` already holds four bytes of each of the group's eight rows: tile row `j`
    /// (values `4j..4j + 4`) is chunk `j`'s low nibbles of both groups, tile row `4 + j`
    /// their high nibbles.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
    unsafe fn load_q4_0(&mut self, w: &PackedMatrix, p: usize) {
        const SCALES: usize = 16;
        let groups = w.groups();
        let low = _mm512_set1_epi8(0x0f);
        for b in 0..self.q.len() {
            let mut chunks = [_mm512_setzero_si512(); 4];
            for k in 0..2 {
                let g = 2 * p + k;
                if g >= groups {
                    self.d[b][8 * k..8 * k + 8].fill(0.0);
                    continue;
                }
                let blk = w.group_block(g, b);
                // SAFETY: a Q4_0 group block is 16 bytes of f16 scales, then four chunks
                // of 32 quant bytes.
                let d8 = _mm256_cvtph_ps(_mm_loadu_si128(blk.as_ptr() as *const __m128i));
                _mm256_storeu_ps(self.d[b].as_mut_ptr().add(8 * k), d8);
                for (j, c) in chunks.iter_mut().enumerate() {
                    let q = _mm256_loadu_si256(blk.as_ptr().add(SCALES + 32 * j) as *const __m256i);
                    *c = if k == 0 {
                        _mm512_zextsi256_si512(q)
                    } else {
                        _mm512_inserti64x4::<1>(*c, q)
                    };
                }
            }
            let dst = self.q[b].0.as_mut_ptr();
            for (j, c) in chunks.into_iter().enumerate() {
                _mm512_store_si512(dst.add(64 * j) as *mut _, _mm512_and_si512(c, low));
                let hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), low);
                _mm512_store_si512(dst.add(64 * (4 + j)) as *mut _, hi);
            }
        }
    }

    /// Lays out panel `p` (groups `4p..4p + 4`) of an interleaved Q4_1 matrix.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
    unsafe fn load_q4_1(&mut self, w: &InterleavedQ4_1, p: usize) {
        let groups = w.groups();
        let low = _mm512_set1_epi8(0x0f);
        // Dword 4r + q (row r's values 4q..4q+3) to 4q + r: lane q holds the four rows.
        let by_quad = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
        for b in 0..self.q.len() {
            let mut lo = [_mm512_setzero_si512(); 4];
            let mut hi = [_mm512_setzero_si512(); 4];
            for k in 0..4 {
                let g = 4 * p + k;
                if g >= groups {
                    // Past the last group: zero rows (never written out).
                    self.d[b][4 * k..4 * k + 4].fill(0.0);
                    self.m[b][4 * k..4 * k + 4].fill(0.0);
                    continue;
                }
                let blk = w.group_block(g, b);
                // SAFETY: a group block is 80 bytes: 64 of quants (row r's 16 at 16r; byte
                // j holds values j and j + 16), then 4 f16 scales and 4 f16 minimums.
                let z = _mm512_loadu_si512(blk.as_ptr() as *const _);
                lo[k] = _mm512_permutexvar_epi32(by_quad, _mm512_and_si512(z, low));
                hi[k] = _mm512_permutexvar_epi32(
                    by_quad,
                    _mm512_and_si512(_mm512_srli_epi16(z, 4), low),
                );
                let d4 = _mm_cvtph_ps(_mm_loadl_epi64(blk.as_ptr().add(64) as *const __m128i));
                let m4 = _mm_cvtph_ps(_mm_loadl_epi64(blk.as_ptr().add(72) as *const __m128i));
                _mm_storeu_ps(self.d[b].as_mut_ptr().add(4 * k), d4);
                _mm_storeu_ps(self.m[b].as_mut_ptr().add(4 * k), m4);
            }
            // Tile row q (values 4q..4q+3 of all 16 rows) is lane q of each group's
            // register: a 4 x 4 transpose of 128-bit lanes; the high nibbles give rows
            // 4..7.
            let dst = self.q[b].0.as_mut_ptr();
            for (half, x) in [lo, hi].iter().enumerate() {
                let t0 = _mm512_shuffle_i32x4::<0x44>(x[0], x[1]);
                let t1 = _mm512_shuffle_i32x4::<0xEE>(x[0], x[1]);
                let t2 = _mm512_shuffle_i32x4::<0x44>(x[2], x[3]);
                let t3 = _mm512_shuffle_i32x4::<0xEE>(x[2], x[3]);
                let rows = [
                    _mm512_shuffle_i32x4::<0x88>(t0, t2),
                    _mm512_shuffle_i32x4::<0xDD>(t0, t2),
                    _mm512_shuffle_i32x4::<0x88>(t1, t3),
                    _mm512_shuffle_i32x4::<0xDD>(t1, t3),
                ];
                for (q, v) in rows.into_iter().enumerate() {
                    _mm512_store_si512(dst.add(64 * (4 * half + q)) as *mut _, v);
                }
            }
        }
    }
}

/// One block's integer sums of a token tile and panel, as the tile unit stores them.
#[repr(C, align(64))]
struct Sums([i32; TILE_TOKENS * PANEL_ROWS]);

/// Panel `p` against token tile `tile`: sixteen accumulators (one per token, a row per
/// lane) in registers over every block, then stored into the output rows. `Q4_1`:
/// minimums; else Q4_0's offset correction.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
unsafe fn panel_tile<const Q4_1: bool>(
    w: &Weights,
    acts: &TiledActs,
    tile: usize,
    rows: usize,
    p: usize,
    out: *mut f32,
) {
    let mut c = [
        Sums([0; TILE_TOKENS * PANEL_ROWS]),
        Sums([0; TILE_TOKENS * PANEL_ROWS]),
    ];
    let mut acc = [_mm512_setzero_ps(); TILE_TOKENS];
    // Adds block `b`'s `d_w * d_a * sum + m_w * s_a` into the accumulators (a macro, so
    // that they stay in registers).
    macro_rules! finish {
        ($b:expr, $sums:expr) => {{
            let at = tile * acts.nb + $b;
            let dw = _mm512_loadu_ps(w.d[$b].as_ptr());
            let da = &acts.d[at * TILE_TOKENS..][..TILE_TOKENS];
            if Q4_1 {
                let mw = _mm512_loadu_ps(w.m[$b].as_ptr());
                let sa = &acts.s[at * TILE_TOKENS..][..TILE_TOKENS];
                for (t, a) in acc.iter_mut().enumerate() {
                    let v = _mm512_load_si512($sums.0.as_ptr().add(16 * t) as *const _);
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(da[t]));
                    *a = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(v), *a);
                    *a = _mm512_fmadd_ps(mw, _mm512_set1_ps(sa[t]), *a);
                }
            } else {
                let off = &acts.offset[at * TILE_TOKENS..][..TILE_TOKENS];
                for (t, a) in acc.iter_mut().enumerate() {
                    let v = _mm512_load_si512($sums.0.as_ptr().add(16 * t) as *const _);
                    let v = _mm512_add_epi32(v, _mm512_set1_epi32(off[t]));
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(da[t]));
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), scale, *a);
                }
            }
        }};
    }
    // Software pipelined over blocks: block b's product runs on the tile unit (tiles
    // 0-2 for even b, 3-5 for odd) while block b - 1's sums are stored and scaled.
    let a_at = |b: usize| acts.q.as_ptr().add((tile * acts.nb + b) * TILE_BYTES);
    // SAFETY (every asm below): the activation tile reads 16 rows of 32 bytes of one
    // block's tile (inside `acts.q`), the weight tile 8 rows of 64 bytes of `w.q[b]`,
    // and the sums go to `c[b % 2]` (16 rows of 64 bytes).
    macro_rules! product {
        ($b:expr, $ta:literal, $tw:literal, $tc:literal) => {
            asm!(
                concat!("tileloadd ", $ta, ", [{a} + {as}*1]"),
                concat!("tileloadd ", $tw, ", [{w} + {ws}*1]"),
                concat!("tilezero ", $tc),
                concat!("tdpbsud ", $tc, ", ", $ta, ", ", $tw),
                a = in(reg) a_at($b),
                as = in(reg) QK,
                w = in(reg) w.q[$b].0.as_ptr(),
                ws = in(reg) 64usize,
                options(nostack, readonly),
            )
        };
    }
    macro_rules! store {
        ($tc:literal, $dst:expr) => {
            asm!(
                concat!("tilestored [{c} + {cs}*1], ", $tc),
                c = in(reg) $dst,
                cs = in(reg) 64usize,
                options(nostack),
            )
        };
    }
    for b in 0..acts.nb {
        if b.is_multiple_of(2) {
            product!(b, "tmm0", "tmm1", "tmm2");
            if b > 0 {
                store!("tmm5", c[1].0.as_mut_ptr());
                finish!(b - 1, &c[1]);
            }
        } else {
            product!(b, "tmm3", "tmm4", "tmm5");
            store!("tmm2", c[0].0.as_mut_ptr());
            finish!(b - 1, &c[0]);
        }
    }
    let last = acts.nb - 1;
    if last.is_multiple_of(2) {
        store!("tmm2", c[0].0.as_mut_ptr());
        finish!(last, &c[0]);
    } else {
        store!("tmm5", c[1].0.as_mut_ptr());
        finish!(last, &c[1]);
    }
    let live_rows = PANEL_ROWS.min(rows - PANEL_ROWS * p);
    let mask: __mmask16 = if live_rows == PANEL_ROWS {
        0xffff
    } else {
        (1u16 << live_rows) - 1
    };
    let live_tokens = TILE_TOKENS.min(acts.n - TILE_TOKENS * tile);
    for (t, a) in acc.iter().enumerate().take(live_tokens) {
        let token = TILE_TOKENS * tile + t;
        _mm512_mask_storeu_ps(out.add(token * rows + PANEL_ROWS * p), mask, *a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::pool::WorkerPool;
    use crate::kernels::qdot::{dot_q4_1_reference, quantize_activations};
    use crate::kernels::test_values as values;

    /// For `dtype` (Q4_1 or Q4_0) and several shapes (partial last panel, partial last
    /// token tile): every product of the tiles has the bits of the type's reference dot.
    fn check(dtype: DType, reference: fn(&[u8], &[Q8Block]) -> f32) {
        for (rows, cols, n) in [(16, 64, 16), (40, 96, 37), (48, 576, 130)] {
            let mut src = Vec::new();
            crate::quant::quantize(dtype, &values(rows * cols, 11), &mut src).unwrap();
            let pool = WorkerPool::new(1).unwrap();
            let acts: Vec<Vec<Q8Block>> = values(n * cols, 5)
                .chunks_exact(cols)
                .map(|r| {
                    let mut v = Vec::new();
                    quantize_activations(r, &mut v);
                    v
                })
                .collect();
            let tiled = TiledActs::new(&acts, cols / QK);
            let mut out = vec![f32::NAN; n * rows];
            let q4_1;
            let q4_0;
            let source = if dtype == DType::Q4_1 {
                q4_1 = InterleavedQ4_1::pack(&src, rows, cols, &pool).unwrap();
                Source::Q4_1(&q4_1)
            } else {
                q4_0 = PackedMatrix::pack(dtype, &src, rows, cols, &pool).unwrap();
                Source::Q4_0(&q4_0)
            };
            // SAFETY: AMX checked by the callers; `out` holds n * rows floats.
            unsafe {
                panels(
                    source,
                    &tiled,
                    0,
                    rows.div_ceil(PANEL_ROWS),
                    out.as_mut_ptr(),
                )
            };
            let row_bytes = src.len() / rows;
            for t in 0..n {
                for r in 0..rows {
                    let got = out[t * rows + r];
                    let want = reference(&src[r * row_bytes..][..row_bytes], &acts[t]);
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{dtype:?} rows {rows} cols {cols} token {t} row {r}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn amx_products_have_the_reference_bits() {
        if !available() {
            eprintln!("no AMX-INT8 here: the AMX kernel is not tested");
            return;
        }
        check(DType::Q4_1, dot_q4_1_reference);
        check(DType::Q4_0, |row, acts| {
            crate::kernels::packed::dot_reference(DType::Q4_0, row, acts)
        });
    }
}
