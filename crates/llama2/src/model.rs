//! The Llama transformer forward pass (REFERENCE §2) over stored weights, with a
//! key/value cache and batches of sequences at arbitrary positions.
//!
//! All activation math is f32. One call processes any mix of sequences: a prompt
//! prefill (many tokens from position 0) and decode steps (one token each) share the
//! same matrix products, so the weights are read once per call.

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

/// Keys and values of every layer for a number of sequence slots.
#[derive(Clone, Debug)]
pub struct KvCache {
    slots: usize,
    max_seq_len: usize,
    kv_dim: usize,
    /// Per layer: `[slots, max_seq_len, kv_dim]`.
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvCache {
    /// Cache for `slots` sequences of up to `max_seq_len` positions.
    ///
    /// Memory is requested zeroed, so untouched positions cost no resident memory.
    pub fn new(model: &Transformer, slots: usize, max_seq_len: usize) -> Self {
        let kv_dim = model.args.n_kv_heads() * model.args.head_dim();
        let per_layer = slots * max_seq_len * kv_dim;
        KvCache {
            slots,
            max_seq_len,
            kv_dim,
            k: (0..model.args.n_layers)
                .map(|_| vec![0.0; per_layer])
                .collect(),
            v: (0..model.args.n_layers)
                .map(|_| vec![0.0; per_layer])
                .collect(),
        }
    }

    /// Number of sequence slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Positions per slot.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    fn row(&self, slot: usize, pos: usize) -> usize {
        (slot * self.max_seq_len + pos) * self.kv_dim
    }
}

/// Tokens of one sequence to run through the model in a [`Transformer::forward`] call.
#[derive(Clone, Copy, Debug)]
pub struct SeqChunk<'a> {
    /// Cache slot of the sequence.
    pub slot: usize,
    /// Position of `tokens[0]`; positions before it must already be in the cache.
    pub start_pos: usize,
    /// Token ids to process (at least one).
    pub tokens: &'a [u32],
    /// Return logits for every token (true) or only the last one (false).
    pub all_logits: bool,
}

impl Transformer {
    /// Builds the model from Meta-named tensors (`tok_embeddings.weight`,
    /// `layers.{i}.attention.wq.weight`, …), checking every shape against `args`.
    pub fn from_tensors(
        args: &ModelArgs,
        vocab_size: usize,
        tensors: &mut HashMap<String, Tensor>,
    ) -> Result<Self> {
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
        RopeTable::new(self.args.head_dim(), max_seq_len, self.args.rope_theta)
    }

    /// Runs `chunks` through the model, filling the cache, and returns for each chunk
    /// its logits: `tokens.len()` rows of `vocab_size` when `all_logits`, else one row.
    ///
    /// Parallel work runs on `pool`.
    pub fn forward(
        &self,
        pool: &WorkerPool,
        cache: &mut KvCache,
        rope: &RopeTable,
        chunks: &[SeqChunk<'_>],
    ) -> Result<Vec<Vec<f32>>> {
        let a = &self.args;
        let (dim, hd) = (a.dim, a.head_dim());
        let (n_heads, n_kv) = (a.n_heads, a.n_kv_heads());
        let (q_dim, kv_dim) = (n_heads * hd, n_kv * hd);
        let eps = a.norm_eps as f32;
        let isa = Isa::detect();

        // (slot, position) of every token, after checking ids and positions.
        let mut where_: Vec<(usize, usize)> = Vec::new();
        for c in chunks {
            if c.tokens.is_empty() || c.slot >= cache.slots {
                return Err(Error::InvalidArgument(format!(
                    "bad forward chunk: {} tokens in slot {} of {}",
                    c.tokens.len(),
                    c.slot,
                    cache.slots
                )));
            }
            let end = c.start_pos + c.tokens.len();
            if end > cache.max_seq_len || end > rope.max_pos() {
                return Err(Error::InvalidArgument(format!(
                    "positions up to {end} exceed the cache length {}",
                    cache.max_seq_len.min(rope.max_pos())
                )));
            }
            for (i, &t) in c.tokens.iter().enumerate() {
                if t as usize >= self.vocab_size {
                    return Err(Error::InvalidTokenId {
                        id: t,
                        n_words: self.vocab_size,
                    });
                }
                where_.push((c.slot, c.start_pos + i));
            }
        }
        let n = where_.len();
        let tokens: Vec<u32> = chunks
            .iter()
            .flat_map(|c| c.tokens.iter().copied())
            .collect();

        let mut x = vec![0.0f32; n * dim];
        for (row, &t) in x.chunks_exact_mut(dim).zip(&tokens) {
            self.tok_embeddings.row_f32(t as usize, row);
        }
        let mut xb = vec![0.0f32; n * dim];
        let mut q = vec![0.0f32; n * q_dim];
        let mut k = vec![0.0f32; n * kv_dim];
        let mut v = vec![0.0f32; n * kv_dim];
        let mut att = vec![0.0f32; n * q_dim];
        let mut proj = vec![0.0f32; n * dim];
        let hidden = a.ffn_hidden_dim();
        let mut h1 = vec![0.0f32; n * hidden];
        let mut h3 = vec![0.0f32; n * hidden];
        let group = n_heads / n_kv;

        for (layer, b) in self.blocks.iter().enumerate() {
            per_row(pool, &mut xb, dim, &|t, o| {
                kernels::rmsnorm(&x[t * dim..(t + 1) * dim], &b.attention_norm, eps, o)
            });
            let qkv = [&b.wq, &b.wk, &b.wv];
            kernels::matmul_group(
                pool,
                &qkv,
                &xb,
                &mut [&mut q, &mut k, &mut v],
                self.precision,
            );
            per_row(pool, &mut q, q_dim, &|t, qt| rope.apply(qt, where_[t].1));
            per_row(pool, &mut k, kv_dim, &|t, kt| rope.apply(kt, where_[t].1));
            for (t, &(slot, pos)) in where_.iter().enumerate() {
                let r = cache.row(slot, pos);
                cache.k[layer][r..r + kv_dim].copy_from_slice(&k[t * kv_dim..(t + 1) * kv_dim]);
                cache.v[layer][r..r + kv_dim].copy_from_slice(&v[t * kv_dim..(t + 1) * kv_dim]);
            }
            let (kc, vc) = (&cache.k[layer], &cache.v[layer]);
            let seq_len = cache.max_seq_len;
            // One task per (token, query head), each writing its own `hd` outputs.
            pool.for_each_chunk_mut(&mut att, hd, &|idx, out| {
                let (t, h) = (idx / n_heads, idx % n_heads);
                let (slot, pos) = where_[t];
                let base = slot * seq_len * kv_dim;
                let span = (pos + 1) * kv_dim;
                let mut scores = vec![0.0f32; pos + 1];
                let kv = kernels::KvHead {
                    keys: &kc[base..base + span],
                    values: &vc[base..base + span],
                    stride: kv_dim,
                    offset: (h / group) * hd,
                    len: pos + 1,
                };
                let q_head = &q[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
                kernels::attend(isa, q_head, kv, &mut scores, out)
            });
            kernels::matmul_with(pool, &b.wo, &att, &mut proj, self.precision);
            add_in_place(&mut x, &proj);

            per_row(pool, &mut xb, dim, &|t, o| {
                kernels::rmsnorm(&x[t * dim..(t + 1) * dim], &b.ffn_norm, eps, o)
            });
            let gate_up = [&b.w1, &b.w3];
            kernels::matmul_group(pool, &gate_up, &xb, &mut [&mut h1, &mut h3], self.precision);
            // An exponential per element: worth the workers even for one token.
            pool.for_each_chunk_mut(&mut h1, SWIGLU_CHUNK, &|i, g| {
                kernels::swiglu(g, &h3[i * SWIGLU_CHUNK..i * SWIGLU_CHUNK + g.len()])
            });
            kernels::matmul_with(pool, &b.w2, &h1, &mut proj, self.precision);
            add_in_place(&mut x, &proj);
        }

        // Final norm and output layer, only on the rows whose logits are wanted.
        let mut wanted = Vec::new();
        let mut first = 0;
        for c in chunks {
            let len = c.tokens.len();
            let from = if c.all_logits { first } else { first + len - 1 };
            wanted.extend(from..first + len);
            first += len;
        }
        let mut normed = vec![0.0f32; wanted.len() * dim];
        for (o, &t) in normed.chunks_exact_mut(dim).zip(&wanted) {
            kernels::rmsnorm(&x[t * dim..(t + 1) * dim], &self.norm, eps, o);
        }
        let vocab = self.vocab_size;
        let mut logits = vec![0.0f32; wanted.len() * vocab];
        kernels::matmul_with(pool, &self.output, &normed, &mut logits, self.precision);
        let mut out = Vec::with_capacity(chunks.len());
        let mut at = 0;
        for c in chunks {
            let rows = if c.all_logits { c.tokens.len() } else { 1 };
            out.push(logits[at * vocab..(at + rows) * vocab].to_vec());
            at += rows;
        }
        Ok(out)
    }
}

/// Elements per parallel task of the SwiGLU step.
const SWIGLU_CHUNK: usize = 1024;

/// `f(t, row)` for every `width`-long row `t` of `data`: on the pool's workers when
/// there are several rows (a prompt), inline for one (a decode step, where meeting the
/// workers would cost more than the work).
fn per_row(
    pool: &WorkerPool,
    data: &mut [f32],
    width: usize,
    f: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    if data.len() > width {
        pool.for_each_chunk_mut(data, width, f);
    } else if !data.is_empty() {
        f(0, data);
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
