//! A Meta checkpoint folder: `params.json` plus `consolidated.NN.pth` shards, merged
//! the way the reference splits them for model parallelism, and validated against the
//! shapes `params.json` implies.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::pth::load_pth;
use super::ModelWeights;
use crate::config::ModelArgs;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// How model parallelism splits a tensor across shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    /// Concatenate the shards along this dimension.
    Concat(usize),
    /// Every shard holds the same tensor.
    Replicated,
}

/// The reference's split for `name` (fairscale's parallel layers).
fn split_of(name: &str) -> Split {
    const COLUMN: [&str; 5] = [
        "attention.wq.weight",
        "attention.wk.weight",
        "attention.wv.weight",
        "feed_forward.w1.weight",
        "feed_forward.w3.weight",
    ];
    const ROW: [&str; 2] = ["attention.wo.weight", "feed_forward.w2.weight"];
    if name == "tok_embeddings.weight" {
        Split::Concat(1) // ParallelEmbedding splits the embedding width
    } else if name == "output.weight" || COLUMN.iter().any(|s| name.ends_with(&format!(".{s}"))) {
        Split::Concat(0) // ColumnParallelLinear splits output features
    } else if ROW.iter().any(|s| name.ends_with(&format!(".{s}"))) {
        Split::Concat(1) // RowParallelLinear splits input features
    } else {
        Split::Replicated // norms, rope.freqs and anything unknown
    }
}

/// The `consolidated.*.pth` files of `dir`, sorted by name.
fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::checkpoint(dir, "checkpoint folder does not exist")
        } else {
            Error::io(dir, e)
        }
    })?;
    if !meta.is_dir() {
        return Err(Error::checkpoint(
            dir,
            "not a folder (expected a Meta checkpoint folder)",
        ));
    }
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("consolidated.") && name.ends_with(".pth") {
            shards.push(entry.path());
        }
    }
    if shards.is_empty() {
        return Err(Error::checkpoint(
            dir,
            "no consolidated.*.pth file in the checkpoint folder",
        ));
    }
    shards.sort();
    // Meta numbers shards 00, 01, …; a gap means a shard is missing.
    let numbers: Option<Vec<usize>> = shards
        .iter()
        .map(|p| {
            let n = p.file_name()?.to_str()?;
            n.strip_prefix("consolidated.")?
                .strip_suffix(".pth")?
                .parse()
                .ok()
        })
        .collect();
    if let Some(numbers) = numbers {
        for (i, n) in numbers.iter().enumerate() {
            if *n != i {
                return Err(Error::checkpoint(
                    dir,
                    format!(
                        "shard consolidated.{i:02}.pth is missing (found {} shard files, numbered {numbers:?})",
                        shards.len()
                    ),
                ));
            }
        }
    }
    Ok(shards)
}

/// Number of `consolidated.*.pth` shards in a Meta checkpoint folder (its model-parallel
/// size).
pub fn shard_count(dir: &Path) -> Result<usize> {
    shard_paths(dir).map(|s| s.len())
}

/// Loads a Meta checkpoint folder: reads `params.json`, loads every shard, merges them
/// and checks every tensor the model needs against the shapes `params.json` implies.
///
/// `rope.freqs` is kept if present but not required; a missing `output.weight` means
/// tied embeddings.
pub fn load_meta_checkpoint(dir: &Path) -> Result<ModelWeights> {
    let shards = shard_paths(dir)?;
    let params = dir.join("params.json");
    if !params.is_file() {
        return Err(Error::checkpoint(
            dir,
            "no params.json in the checkpoint folder",
        ));
    }
    let args = ModelArgs::from_file(&params)?;

    let mut loaded = Vec::with_capacity(shards.len());
    for path in &shards {
        loaded.push(load_pth(path)?);
    }
    let mut tensors = merge_shards(dir, &shards, loaded)?;
    // Tied embeddings (Llama 3.2 1B and 3B): without `output.weight` the output layer
    // is the embedding.
    if !tensors.contains_key("output.weight") {
        if let Some(e) = tensors.get("tok_embeddings.weight").cloned() {
            tensors.insert("output.weight".into(), e);
        }
    }
    let vocab_size = validate(dir, &args, &tensors)?;
    Ok(ModelWeights {
        args,
        tensors,
        vocab_size,
    })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Merges per-shard tensor lists into full tensors.
fn merge_shards(
    dir: &Path,
    paths: &[PathBuf],
    mut shards: Vec<Vec<(String, Tensor)>>,
) -> Result<HashMap<String, Tensor>> {
    if shards.len() == 1 {
        // Zero-copy: tensors stay views of the mapping.
        return Ok(shards.pop().unwrap_or_default().into_iter().collect());
    }
    let bad = |msg: String| Error::checkpoint(dir, msg);
    let mut maps: Vec<HashMap<String, Tensor>> = shards
        .into_iter()
        .map(|s| s.into_iter().collect())
        .collect();
    // Every shard must hold the same names.
    for (i, m) in maps.iter().enumerate().skip(1) {
        for name in maps[0].keys() {
            if !m.contains_key(name) {
                return Err(bad(format!(
                    "tensor '{name}' is in {} but not in {}",
                    file_name(&paths[0]),
                    file_name(&paths[i])
                )));
            }
        }
        for name in m.keys() {
            if !maps[0].contains_key(name) {
                return Err(bad(format!(
                    "tensor '{name}' is in {} but not in {}",
                    file_name(&paths[i]),
                    file_name(&paths[0])
                )));
            }
        }
    }
    let names: Vec<String> = maps[0].keys().cloned().collect();
    let mut out = HashMap::with_capacity(names.len());
    for name in names {
        let parts: Vec<Tensor> = maps.iter_mut().filter_map(|m| m.remove(&name)).collect();
        let first = &parts[0];
        for (i, t) in parts.iter().enumerate().skip(1) {
            if t.dtype != first.dtype {
                return Err(bad(format!(
                    "tensor '{name}' is {:?} in {} but {:?} in {}",
                    first.dtype,
                    file_name(&paths[0]),
                    t.dtype,
                    file_name(&paths[i])
                )));
            }
        }
        let merged = match split_of(&name) {
            Split::Replicated => {
                for (i, t) in parts.iter().enumerate().skip(1) {
                    if t.shape != first.shape || t.bytes() != first.bytes() {
                        return Err(bad(format!(
                            "tensor '{name}' should be identical in every shard but {} differs from {}",
                            file_name(&paths[i]),
                            file_name(&paths[0])
                        )));
                    }
                }
                first.clone()
            }
            Split::Concat(dim) => concat(&parts, dim).map_err(|m| {
                let shapes: Vec<&Vec<usize>> = parts.iter().map(|t| &t.shape).collect();
                bad(format!(
                    "cannot merge tensor '{name}' across shards: {m} (shard shapes {shapes:?})"
                ))
            })?,
        };
        out.insert(name, merged);
    }
    Ok(out)
}

/// Concatenates row-major tensors along `dim`, keeping their dtype.
fn concat(parts: &[Tensor], dim: usize) -> Result<Tensor, String> {
    let first = &parts[0];
    let rank = first.shape.len();
    if dim >= rank {
        return Err(format!("expected at least {} dimensions", dim + 1));
    }
    for t in parts {
        let same_other_dims =
            t.shape.len() == rank && (0..rank).all(|d| d == dim || t.shape[d] == first.shape[d]);
        if !same_other_dims {
            return Err(format!("shards may differ only in dimension {dim}"));
        }
    }
    let overflow = || "size overflows".to_string();
    let outer: usize = first.shape[..dim].iter().product();
    let elem = first.dtype.size();
    // Bytes of one outer slice in each shard.
    let chunks: Vec<usize> = parts
        .iter()
        .map(|t| {
            t.shape[dim..]
                .iter()
                .try_fold(elem, |a, &d| a.checked_mul(d))
                .ok_or_else(overflow)
        })
        .collect::<Result<_, _>>()?;
    let row: usize = chunks
        .iter()
        .try_fold(0usize, |a, &c| a.checked_add(c))
        .ok_or_else(overflow)?;
    let total = outer.checked_mul(row).ok_or_else(overflow)?;
    let mut bytes = Vec::with_capacity(total);
    for o in 0..outer {
        for (t, &c) in parts.iter().zip(&chunks) {
            // In range: load_pth sized each tensor's bytes as numel * dtype size.
            bytes.extend_from_slice(&t.bytes()[o * c..(o + 1) * c]);
        }
    }
    let mut shape = first.shape.clone();
    shape[dim] = parts.iter().map(|t| t.shape[dim]).sum();
    Ok(Tensor {
        dtype: first.dtype,
        shape,
        storage: Storage::Owned(Arc::new(bytes)),
    })
}

/// Checks every tensor the model needs; returns the vocabulary size.
fn validate(dir: &Path, args: &ModelArgs, tensors: &HashMap<String, Tensor>) -> Result<usize> {
    let get = |name: &str| {
        tensors.get(name).ok_or_else(|| {
            Error::checkpoint(
                dir,
                format!(
                    "tensor '{name}' is missing (params.json: dim {}, n_layers {}, n_heads {})",
                    args.dim, args.n_layers, args.n_heads
                ),
            )
        })
    };
    let vocab = if args.vocab_size > 0 {
        usize::try_from(args.vocab_size)
            .map_err(|_| Error::Config(format!("vocab_size {} is too large", args.vocab_size)))?
    } else {
        match get("tok_embeddings.weight")?.shape.as_slice() {
            [rows, _] if *rows > 0 => *rows,
            other => {
                return Err(Error::Shape {
                    name: "tok_embeddings.weight".into(),
                    expected: vec![0, args.dim],
                    found: other.to_vec(),
                })
            }
        }
    };
    args.check_layers(tensors.len(), "params.json n_layers")
        .map_err(|m| Error::checkpoint(dir, m))?;
    let dim = args.dim;
    let hd = args.head_dim();
    let q = args.n_heads * hd;
    let kv = args.n_kv_heads() * hd;
    let hidden = args.ffn_hidden_dim();
    let mut expected: Vec<(String, Vec<usize>)> =
        vec![("tok_embeddings.weight".into(), vec![vocab, dim])];
    for i in 0..args.n_layers {
        let p = format!("layers.{i}.");
        expected.extend([
            (format!("{p}attention.wq.weight"), vec![q, dim]),
            (format!("{p}attention.wk.weight"), vec![kv, dim]),
            (format!("{p}attention.wv.weight"), vec![kv, dim]),
            (format!("{p}attention.wo.weight"), vec![dim, q]),
            (format!("{p}feed_forward.w1.weight"), vec![hidden, dim]),
            (format!("{p}feed_forward.w2.weight"), vec![dim, hidden]),
            (format!("{p}feed_forward.w3.weight"), vec![hidden, dim]),
            (format!("{p}attention_norm.weight"), vec![dim]),
            (format!("{p}ffn_norm.weight"), vec![dim]),
        ]);
    }
    expected.push(("norm.weight".into(), vec![dim]));
    expected.push(("output.weight".into(), vec![vocab, dim]));
    for (name, shape) in expected {
        let t = get(&name)?;
        if t.shape != shape {
            return Err(Error::Shape {
                name,
                expected: shape,
                found: t.shape.clone(),
            });
        }
    }
    // Layers beyond n_layers mean params.json does not describe this checkpoint.
    for name in tensors.keys() {
        let layer = name
            .strip_prefix("layers.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(l) = layer.filter(|&l| l >= args.n_layers) {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "tensor '{name}' belongs to layer {l} but params.json says n_layers = {}",
                    args.n_layers
                ),
            ));
        }
    }
    Ok(vocab)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    fn owned(shape: &[usize], bytes: Vec<u8>) -> Tensor {
        Tensor {
            dtype: DType::F16,
            shape: shape.to_vec(),
            storage: Storage::Owned(Arc::new(bytes)),
        }
    }

    #[test]
    fn splits_follow_the_reference() {
        assert_eq!(split_of("tok_embeddings.weight"), Split::Concat(1));
        assert_eq!(split_of("layers.3.attention.wk.weight"), Split::Concat(0));
        assert_eq!(
            split_of("layers.0.feed_forward.w3.weight"),
            Split::Concat(0)
        );
        assert_eq!(split_of("output.weight"), Split::Concat(0));
        assert_eq!(split_of("layers.10.attention.wo.weight"), Split::Concat(1));
        assert_eq!(
            split_of("layers.1.feed_forward.w2.weight"),
            Split::Concat(1)
        );
        assert_eq!(split_of("layers.1.ffn_norm.weight"), Split::Replicated);
        assert_eq!(split_of("rope.freqs"), Split::Replicated);
    }

    #[test]
    fn concat_interleaves_rows() {
        // [2, 1] ++ [2, 2] along dim 1 with 2-byte elements.
        let a = owned(&[2, 1], vec![1, 1, 2, 2]);
        let b = owned(&[2, 2], vec![3, 3, 4, 4, 5, 5, 6, 6]);
        let c = concat(&[a.clone(), b.clone()], 1).unwrap();
        assert_eq!(c.shape, vec![2, 3]);
        assert_eq!(c.bytes(), &[1, 1, 3, 3, 4, 4, 2, 2, 5, 5, 6, 6]);
        let d = concat(&[b.clone(), b.clone()], 0).unwrap();
        assert_eq!(d.shape, vec![4, 2]);
        assert!(concat(&[a.clone(), b], 0)
            .unwrap_err()
            .contains("dimension 0"));
        assert!(concat(&[a.clone(), a], 2).is_err());
    }
}
