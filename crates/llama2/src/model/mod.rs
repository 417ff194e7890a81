//! The Llama transformer forward pass (REFERENCE §2) over stored weights, with a
//! key/value cache of sequence slots ([`kv`]) and batches of sequences at arbitrary
//! positions.
//!
//! All activation math is f32. One call processes any mix of sequences: prompt pieces
//! (many tokens) and decode steps (one token each) share the same matrix products, so
//! the weights are read once per call. Scratch memory lives in a [`Workspace`] kept
//! between calls, and logits go to a buffer the caller owns.

pub mod kv;

pub use kv::{KvPool, KvType};

use std::collections::HashMap;

use crate::config::ModelArgs;
use crate::error::{Error, Result};
use crate::kernels::{self, Isa, Matrix, Precision, RopeTable, WorkerPool};
use crate::tensor::Tensor;

/// Weights of one transformer block.
#[derive(Clone, Debug)]
struct Block {
    attention_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    w1: Matrix,
    w2: Matrix,
    w3: Matrix,
}

/// A loaded Llama model: configuration and weights, immutable after loading.
#[derive(Clone, Debug)]
pub struct Transformer {
    args: ModelArgs,
    vocab_size: usize,
    tok_embeddings: Matrix,
    blocks: Vec<Block>,
    norm: Vec<f32>,
    output: Matrix,
    precision: Precision,
}

/// Scratch memory of [`Transformer::forward`], kept between calls so a step allocates
/// nothing in proportion to the model once the buffers have grown to the batch size.
#[derive(Debug, Default)]
pub struct Workspace {
    x: Vec<f32>,
    xb: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    /// Attention results of the grouped f16 path, per (run of tokens, kv head).
    att_grouped: Vec<f32>,
    /// Runs of consecutive tokens of one sequence (grouped f16 attention).
    runs: Vec<(usize, usize)>,
    proj: Vec<f32>,
    h1: Vec<f32>,
    h3: Vec<f32>,
    normed: Vec<f32>,
    /// (slot, position) of every token of the call.
    places: Vec<(usize, usize)>,
    tokens: Vec<u32>,
    /// Token rows whose logits are returned.
    wanted: Vec<usize>,
    /// Receiver of intermediate tensors, when debugging ([`Workspace::set_trace`]).
    trace: Option<Trace>,
}

/// Receives each intermediate tensor of a [`Transformer::forward`] call by name, as
/// rows of f32: one per token of the call, or per returned row for `result_norm` and
/// `result_output` ([`Workspace::set_trace`]).
pub type TraceFn = dyn FnMut(&str, &[f32]) + Send;

/// A boxed [`TraceFn`] (a newtype only to give the workspace its `Debug`).
struct Trace(Box<TraceFn>);

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trace")
    }
}

impl Workspace {
    /// An empty workspace (buffers grow on first use).
    pub fn new() -> Self {
        Self::default()
    }

    /// Hands every intermediate tensor of later forward calls to `trace` (None: stop),
    /// named as llama.cpp's graph names them (`attn_norm-0`, `Qcur-0` after rotation,
    /// `kqv_out-0`, `ffn_out-0`, `l_out-0`, …, `result_norm`, `result_output`), so the
    /// two engines can be compared layer by layer (`examples/dump_tensors.rs`).
    pub fn set_trace(&mut self, trace: Option<Box<TraceFn>>) {
        self.trace = trace.map(Trace);
    }
}

/// Passes `data` to the trace, if any, as `name` or `name-layer`.
fn emit(trace: &mut Option<Trace>, name: &str, layer: Option<usize>, data: &[f32]) {
    if let Some(Trace(f)) = trace {
        match layer {
            Some(l) => f(&format!("{name}-{l}"), data),
            None => f(name, data),
        }
    }
}

/// `buf` as `n` zeros, reusing its allocation.
fn zeroed(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    buf.clear();
    buf.resize(n, 0.0);
    buf
}

/// Tokens of one sequence to run through the model in a [`Transformer::forward`] call.
#[derive(Clone, Copy, Debug)]
pub struct SeqChunk<'a> {
    /// KV cache slot of the sequence.
    pub slot: usize,
    /// Position of `tokens[0]`; positions before it must already be in the cache.
    pub start_pos: usize,
    /// Token ids to process (at least one).
    pub tokens: &'a [u32],
    /// Return logits for every token (true) or only the last one (false).
    pub all_logits: bool,
}

/// Tokens of one sequence whose query heads attend together in one task of
/// [`grouped_f16_attention`] (with the heads of a group: 8 x 3 = 24 queries for
/// SmolLM2, each block of the cache widened once for all of them).
const ATTENTION_RUN: usize = 8;

/// Attention over an f16 cache for a step holding prompt tokens (a whole prompt, or
/// pieces of prompts beside other sequences' decode tokens): one task per (run of up to
/// [`ATTENTION_RUN`] consecutive tokens of one sequence, kv head) through [`kernels::attend_f16_group`],
/// which gives each query the bits [`kernels::attend_f16`] gives it alone; the results
/// are then put in `att`'s (token, head) layout.
#[allow(clippy::too_many_arguments)]
fn grouped_f16_attention(
    pool: &WorkerPool,
    isa: kernels::Isa,
    kv: &KvPool,
    layer: usize,
    places: &[(usize, usize)],
    q: &[f32],
    (n_kv, group, hd): (usize, usize, usize),
    runs: &mut Vec<(usize, usize)>,
    grouped: &mut Vec<f32>,
    att: &mut [f32],
) {
    let n = places.len();
    let (q_dim, kv_dim) = (n_kv * group * hd, n_kv * hd);
    runs.clear();
    let mut t0 = 0;
    for t in 1..=n {
        if t == n || places[t].0 != places[t0].0 || t - t0 == ATTENTION_RUN {
            runs.push((t0, t));
            t0 = t;
        }
    }
    let chunk = ATTENTION_RUN * group * hd;
    // Not cleared: the kernel clears each task's outputs, and a chunk's tail past a short
    // run is never read.
    let size = runs.len() * n_kv * chunk;
    grouped.resize(size, 0.0);
    let grouped = &mut grouped[..size];
    let runs = &runs[..];
    pool.for_each_chunk_mut(grouped, chunk, &|idx, out| {
        let (r, kvh) = (idx / n_kv, idx % n_kv);
        let (t0, t1) = runs[r];
        let Some((kv::KvRows::F16(keys), kv::KvRows::F16(values))) = kv.layer(places[t0].0, layer)
        else {
            unreachable!("an f16 cache, slot mapped above");
        };
        let g = (t1 - t0) * group;
        let mut queries = Vec::with_capacity(g * hd);
        let mut lens = Vec::with_capacity(g);
        for (t, &(_, pos)) in places.iter().enumerate().take(t1).skip(t0) {
            let heads = t * q_dim + kvh * group * hd;
            queries.extend_from_slice(&q[heads..heads + group * hd]);
            lens.extend(std::iter::repeat_n(pos + 1, group));
        }
        let len = lens.iter().copied().max().unwrap_or(1);
        let mut scores = vec![0.0f32; g * len];
        let mut scratch = vec![0.0f32; kernels::F16_BLOCK * hd];
        let head = kernels::KvHead {
            keys,
            values,
            stride: kv_dim,
            offset: kvh * hd,
            len,
        };
        kernels::attend_f16_group(
            isa,
            hd,
            &queries,
            &lens,
            head,
            &mut scores,
            &mut scratch,
            &mut out[..g * hd],
        );
    });
    for (r, &(t0, t1)) in runs.iter().enumerate() {
        for kvh in 0..n_kv {
            let src = &grouped[(r * n_kv + kvh) * chunk..];
            for (i, t) in (t0..t1).enumerate() {
                let dst = t * q_dim + kvh * group * hd;
                let from = i * group * hd;
                att[dst..dst + group * hd].copy_from_slice(&src[from..from + group * hd]);
            }
        }
    }
}

impl Transformer {
    /// Builds the model from Meta-named tensors (`tok_embeddings.weight`,
    /// `layers.{i}.attention.wq.weight`, …), checking every shape against `args`.
    pub fn from_tensors(
        args: &ModelArgs,
        vocab_size: usize,
        tensors: &mut HashMap<String, Tensor>,
    ) -> Result<Self> {
        args.check_layers(tensors.len(), "n_layers")
            .map_err(Error::Config)?;
        let dim = args.dim;
        let hd = args.head_dim();
        let q_dim = args.n_heads * hd;
        let kv_dim = args.n_kv_heads() * hd;
        let hidden = args.ffn_hidden_dim();
        let mut take = |name: String, shape: &[usize]| -> Result<Tensor> {
            let t = tensors.remove(&name).ok_or_else(|| Error::Checkpoint {
                path: Default::default(),
                msg: format!("missing tensor {name}"),
            })?;
            if t.shape != shape {
                return Err(Error::Shape {
                    name,
                    expected: shape.to_vec(),
                    found: t.shape.clone(),
                });
            }
            Ok(t)
        };
        let matrix = |t: Tensor| Matrix::new(t).expect("shape checked to be 2-D");
        let vector = |t: Tensor| t.to_f32_vec();
        let tok_embeddings = matrix(take("tok_embeddings.weight".into(), &[vocab_size, dim])?);
        let mut blocks = Vec::with_capacity(args.n_layers);
        for i in 0..args.n_layers {
            let p = format!("layers.{i}.");
            blocks.push(Block {
                attention_norm: vector(take(format!("{p}attention_norm.weight"), &[dim])?),
                wq: matrix(take(format!("{p}attention.wq.weight"), &[q_dim, dim])?),
                wk: matrix(take(format!("{p}attention.wk.weight"), &[kv_dim, dim])?),
                wv: matrix(take(format!("{p}attention.wv.weight"), &[kv_dim, dim])?),
                wo: matrix(take(format!("{p}attention.wo.weight"), &[dim, q_dim])?),
                ffn_norm: vector(take(format!("{p}ffn_norm.weight"), &[dim])?),
                w1: matrix(take(format!("{p}feed_forward.w1.weight"), &[hidden, dim])?),
                w2: matrix(take(format!("{p}feed_forward.w2.weight"), &[dim, hidden])?),
                w3: matrix(take(format!("{p}feed_forward.w3.weight"), &[hidden, dim])?),
            });
        }
        let norm = vector(take("norm.weight".into(), &[dim])?);
        let output = matrix(take("output.weight".into(), &[vocab_size, dim])?);
        Ok(Transformer {
            args: args.clone(),
            vocab_size,
            tok_embeddings,
            blocks,
            norm,
            output,
            precision: Precision::default(),
        })
    }

    /// Chooses how products over quantized weights are computed (default
    /// [`Precision::Fast`]; float weights are unaffected).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// The current [`Precision`].
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The model's hyper-parameters.
    pub fn args(&self) -> &ModelArgs {
        &self.args
    }

    /// Rows of the output layer.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Rearranges every weight matrix for its kernels now (done otherwise at first use),
    /// so the first request does not pay for it.
    pub fn prepare(&self, pool: &WorkerPool) {
        for b in &self.blocks {
            for m in [&b.wq, &b.wk, &b.wv, &b.wo, &b.w1, &b.w2, &b.w3] {
                m.prepare(pool, self.precision);
            }
        }
        self.output.prepare(pool, self.precision);
    }

    /// Whether any weight matrix is stored in a quantized block format.
    pub fn is_quantized(&self) -> bool {
        let q = |m: &Matrix| m.tensor.dtype.is_quantized();
        q(&self.tok_embeddings)
            || q(&self.output)
            || self.blocks.iter().any(|b| {
                [&b.wq, &b.wk, &b.wv, &b.wo, &b.w1, &b.w2, &b.w3]
                    .into_iter()
                    .any(q)
            })
    }

    /// Bytes of weights (as stored).
    pub fn weight_bytes(&self) -> usize {
        let m = |m: &Matrix| m.tensor.bytes().len();
        m(&self.tok_embeddings)
            + m(&self.output)
            + self
                .blocks
                .iter()
                .map(|b| m(&b.wq) + m(&b.wk) + m(&b.wv) + m(&b.wo) + m(&b.w1) + m(&b.w2) + m(&b.w3))
                .sum::<usize>()
    }

    /// A rotary table long enough for `max_seq_len` positions.
    pub fn rope_table(&self, max_seq_len: usize) -> RopeTable {
        RopeTable::from_frequencies(&self.args.rope_frequencies(), max_seq_len)
    }

    /// Runs `chunks` through the model, filling their KV slots (mapped here if they hold
    /// no memory yet), and writes the logits to `logits`: per chunk in order,
    /// `tokens.len()` rows of `vocab_size` when `all_logits`, else one row (the last
    /// token's).
    ///
    /// Parallel work runs on `pool`; `ws` is scratch kept between calls.
    pub fn forward(
        &self,
        pool: &WorkerPool,
        kv: &mut KvPool,
        rope: &RopeTable,
        chunks: &[SeqChunk<'_>],
        ws: &mut Workspace,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let a = &self.args;
        let (dim, hd) = (a.dim, a.head_dim());
        let (n_heads, n_kv) = (a.n_heads, a.n_kv_heads());
        let (q_dim, kv_dim) = (n_heads * hd, n_kv * hd);
        let eps = a.norm_eps as f32;
        let isa = Isa::detect();

        // (slot, position) of every token, after checking ids and positions.
        ws.places.clear();
        ws.tokens.clear();
        for c in chunks {
            if c.tokens.is_empty() || c.slot >= kv.slots() {
                return Err(Error::InvalidArgument(format!(
                    "bad forward chunk: {} tokens in slot {} of {}",
                    c.tokens.len(),
                    c.slot,
                    kv.slots()
                )));
            }
            let end = c.start_pos.saturating_add(c.tokens.len());
            if end > kv.ctx() || end > rope.max_pos() {
                return Err(Error::InvalidArgument(format!(
                    "positions up to {end} exceed the cache length {}",
                    kv.ctx().min(rope.max_pos())
                )));
            }
            if let Some(&t) = c.tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
                return Err(Error::InvalidTokenId {
                    id: t,
                    n_words: self.vocab_size,
                });
            }
            for i in 0..c.tokens.len() {
                ws.places.push((c.slot, c.start_pos + i));
            }
            ws.tokens.extend_from_slice(c.tokens);
        }
        for c in chunks {
            kv.ensure(c.slot)?;
        }
        let n = ws.places.len();
        let hidden = a.ffn_hidden_dim();
        let Workspace {
            x,
            xb,
            q,
            k,
            v,
            att,
            att_grouped,
            runs,
            proj,
            h1,
            h3,
            normed,
            places,
            tokens,
            wanted,
            trace,
        } = ws;
        let x = zeroed(x, n * dim);
        for (row, &t) in x.chunks_exact_mut(dim).zip(tokens.iter()) {
            self.tok_embeddings.row_f32(t as usize, row);
        }
        emit(trace, "embd", None, x);
        let xb = zeroed(xb, n * dim);
        let q = zeroed(q, n * q_dim);
        let k = zeroed(k, n * kv_dim);
        let v = zeroed(v, n * kv_dim);
        let att = zeroed(att, n * q_dim);
        let proj = zeroed(proj, n * dim);
        let h1 = zeroed(h1, n * hidden);
        let h3 = zeroed(h3, n * hidden);
        let places = &places[..];
        let group = n_heads / n_kv;

        for (layer, b) in self.blocks.iter().enumerate() {
            per_row(pool, xb, dim, &|t, o| {
                kernels::rmsnorm(&x[t * dim..(t + 1) * dim], &b.attention_norm, eps, o)
            });
            let l = Some(layer);
            emit(trace, "attn_norm", l, xb);
            let qkv = [&b.wq, &b.wk, &b.wv];
            kernels::matmul_group(
                pool,
                &qkv,
                xb,
                &mut [&mut *q, &mut *k, &mut *v],
                self.precision,
            );
            per_row(pool, q, q_dim, &|t, qt| rope.apply(qt, places[t].1));
            per_row(pool, k, kv_dim, &|t, kt| rope.apply(kt, places[t].1));
            emit(trace, "Qcur", l, q);
            emit(trace, "Kcur", l, k);
            emit(trace, "Vcur", l, v);
            for (t, &(slot, pos)) in places.iter().enumerate() {
                let span = t * kv_dim..(t + 1) * kv_dim;
                kv.write(slot, layer, pos, &k[span.clone()], &v[span]);
            }
            let kv_ref = &*kv;
            let q = &*q;
            // Grouped when some sequence brings several tokens (a prompt or a piece of
            // one); a batch of one decode token per sequence keeps one task per head.
            let several = places.windows(2).any(|w| w[0].0 == w[1].0);
            if kv_ref.kv_type() == KvType::F16 && several {
                grouped_f16_attention(
                    pool,
                    isa,
                    kv_ref,
                    layer,
                    places,
                    q,
                    (n_kv, group, hd),
                    runs,
                    att_grouped,
                    att,
                );
            } else {
                // One task per (token, query head), each writing its own `hd` outputs.
                pool.for_each_chunk_mut(att, hd, &|idx, out| {
                    let (t, h) = (idx / n_heads, idx % n_heads);
                    let (slot, pos) = places[t];
                    let (keys, values) = kv_ref.layer(slot, layer).expect("slot mapped above");
                    let q_head = &q[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
                    let offset = (h / group) * hd;
                    let len = pos + 1;
                    match (keys, values) {
                        (kv::KvRows::F32(keys), kv::KvRows::F32(values)) => {
                            let mut scores = vec![0.0f32; len];
                            let head = kernels::KvHead {
                                keys,
                                values,
                                stride: kv_dim,
                                offset,
                                len,
                            };
                            kernels::attend(isa, q_head, head, &mut scores, out)
                        }
                        (kv::KvRows::F16(keys), kv::KvRows::F16(values)) => {
                            let mut scratch = vec![0.0f32; len + kernels::F16_BLOCK * hd];
                            let (scores, widened) = scratch.split_at_mut(len);
                            let head = kernels::KvHead {
                                keys,
                                values,
                                stride: kv_dim,
                                offset,
                                len,
                            };
                            kernels::attend_f16(isa, q_head, head, scores, widened, out)
                        }
                        _ => unreachable!("keys and values share one storage type"),
                    }
                });
            }
            emit(trace, "kqv_out", l, att);
            kernels::matmul_with(pool, &b.wo, att, proj, self.precision);
            emit(trace, "attn_out", l, proj);
            add_in_place(x, proj);
            emit(trace, "ffn_inp", l, x);

            per_row(pool, xb, dim, &|t, o| {
                kernels::rmsnorm(&x[t * dim..(t + 1) * dim], &b.ffn_norm, eps, o)
            });
            emit(trace, "ffn_norm", l, xb);
            let gate_up = [&b.w1, &b.w3];
            kernels::matmul_group(
                pool,
                &gate_up,
                xb,
                &mut [&mut *h1, &mut *h3],
                self.precision,
            );
            emit(trace, "ffn_gate", l, h1);
            emit(trace, "ffn_up", l, h3);
            let h3 = &*h3;
            // An exponential per element: worth the workers even for one token.
            pool.for_each_chunk_mut(h1, SWIGLU_CHUNK, &|i, g| {
                kernels::swiglu(g, &h3[i * SWIGLU_CHUNK..i * SWIGLU_CHUNK + g.len()])
            });
            emit(trace, "ffn_swiglu", l, h1);
            kernels::matmul_with(pool, &b.w2, h1, proj, self.precision);
            emit(trace, "ffn_out", l, proj);
            add_in_place(x, proj);
            emit(trace, "l_out", l, x);
        }

        // Final norm and output layer, only on the rows whose logits are wanted.
        wanted.clear();
        let mut first = 0;
        for c in chunks {
            let len = c.tokens.len();
            let from = if c.all_logits { first } else { first + len - 1 };
            wanted.extend(from..first + len);
            first += len;
        }
        let normed = zeroed(normed, wanted.len() * dim);
        for (o, &t) in normed.chunks_exact_mut(dim).zip(wanted.iter()) {
            kernels::rmsnorm(&x[t * dim..(t + 1) * dim], &self.norm, eps, o);
        }
        emit(trace, "result_norm", None, normed);
        let logits = zeroed(logits, wanted.len() * self.vocab_size);
        kernels::matmul_with(pool, &self.output, normed, logits, self.precision);
        emit(trace, "result_output", None, logits);
        Ok(())
    }

    /// [`Transformer::forward`] with a fresh workspace, returning each chunk's logits as
    /// its own vector (tests and one-off calls).
    pub fn forward_once(
        &self,
        pool: &WorkerPool,
        kv: &mut KvPool,
        rope: &RopeTable,
        chunks: &[SeqChunk<'_>],
    ) -> Result<Vec<Vec<f32>>> {
        let mut logits = Vec::new();
        self.forward(pool, kv, rope, chunks, &mut Workspace::new(), &mut logits)?;
        let vocab = self.vocab_size;
        let mut rows = logits.chunks_exact(vocab);
        Ok(chunks
            .iter()
            .map(|c| {
                let n = if c.all_logits { c.tokens.len() } else { 1 };
                rows.by_ref().take(n).flatten().copied().collect()
            })
            .collect())
    }
}

/// Elements per parallel task of the SwiGLU step.
const SWIGLU_CHUNK: usize = 1024;

/// Rows below which [`per_row`] runs inline: a decode step of a few sequences, where
/// meeting the workers would cost more than the work.
const INLINE_ROWS: usize = 16;

/// `f(t, row)` for every `width`-long row `t` of `data`: on the pool's workers for many
/// rows (a prompt), inline for a few (decode steps).
fn per_row(
    pool: &WorkerPool,
    data: &mut [f32],
    width: usize,
    f: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    if data.len() >= INLINE_ROWS * width {
        pool.for_each_chunk_mut(data, width, f);
    } else {
        for (t, row) in data.chunks_exact_mut(width).enumerate() {
            f(t, row);
        }
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
