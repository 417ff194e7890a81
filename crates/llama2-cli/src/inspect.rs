//! `llama2 inspect PATH`: what a model file or folder holds, without running it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use llama2::{load_model, ChatTemplate};
use serde_json::json;

/// Arguments of `llama2 inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// A Meta checkpoint folder, a Hugging Face folder or a .gguf file.
    path: PathBuf,
    /// Tokenizer file when it is not beside the model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn disk_size(path: &std::path::Path) -> u64 {
    if path.is_file() {
        return path.metadata().map_or(0, |m| m.len());
    }
    std::fs::read_dir(path)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Prints the report.
pub fn run(a: InspectArgs) -> Result<()> {
    let m = load_model(&a.path, a.tokenizer.as_deref())?;
    let args = &m.weights.args;
    let mut dtypes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut params = 0usize;
    let tied = m
        .weights
        .tensors
        .get("output.weight")
        .map(|t| t.bytes().as_ptr())
        == m.weights
            .tensors
            .get("tok_embeddings.weight")
            .map(|t| t.bytes().as_ptr());
    for (name, t) in &m.weights.tensors {
        if tied && name == "output.weight" {
            continue; // the embedding, counted once
        }
        let e = dtypes.entry(format!("{:?}", t.dtype)).or_default();
        e.0 += 1;
        e.1 += t.bytes().len();
        params += t.numel();
    }
    let template = match &m.chat_template {
        Some(src) => ChatTemplate::jinja("model", src.clone(), &m.tokenizer)?,
        None => ChatTemplate::builtin_for(&m.tokenizer),
    };
    let tok = &m.tokenizer;
    let piece = |id: u32| tok.id_to_piece(id).unwrap_or("?").to_string();
    let report = json!({
        "path": m.path,
        "format": m.format.name(),
        "name": m.name,
        "architecture": "llama",
        "dim": args.dim,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "n_kv_heads": args.n_kv_heads(),
        "head_dim": args.head_dim(),
        "ffn_hidden_dim": args.ffn_hidden_dim(),
        "vocab_size": m.weights.vocab_size,
        "rope_theta": args.rope_theta,
        "norm_eps": args.norm_eps,
        "context_length": m.context_length,
        "parameters": params,
        "tensors": dtypes.values().map(|d| d.0).sum::<usize>(),
        "dtypes": dtypes.iter().map(|(k, (n, b))| (k.clone(), json!({"tensors": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
        "size_on_disk": disk_size(&m.path),
        "tokenizer": {
            "n_words": tok.n_words(),
            "bos": [tok.bos_id(), piece(tok.bos_id())],
            "eos": [tok.eos_id(), piece(tok.eos_id())],
        },
        "chat_template": template.name(),
        "chat_template_source": m.chat_template,
        "refused_strings": template.control_strings(),
        "stop_tokens": template.stop_ids(tok).iter().map(|&i| json!([i, piece(i)])).collect::<Vec<_>>(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{}  ({})", m.path.display(), m.format.name());
    println!(
        "  architecture  llama: dim {}, {} layers, {} heads ({} kv), head_dim {}, ffn {}",
        args.dim,
        args.n_layers,
        args.n_heads,
        args.n_kv_heads(),
        args.head_dim(),
        args.ffn_hidden_dim()
    );
    println!(
        "  vocabulary    {} (tokenizer {} pieces, bos {:?} {}, eos {:?} {})",
        m.weights.vocab_size,
        tok.n_words(),
        piece(tok.bos_id()),
        tok.bos_id(),
        piece(tok.eos_id()),
        tok.eos_id()
    );
    let scaling = match &args.rope_scaling {
        None => String::new(),
        Some(llama2::RopeScaling::Llama3 { factor, .. }) => format!(" (llama3 scaling x{factor})"),
        Some(llama2::RopeScaling::Factors(_)) => " (llama3 scaling: rope_freqs.weight)".into(),
    };
    println!(
        "  rope theta    {}{scaling}, rms eps {}",
        args.rope_theta, args.norm_eps
    );
    if let Some(c) = m.context_length {
        println!("  context       {c}");
    }
    println!(
        "  parameters    {:.1} M in {} tensors",
        params as f64 / 1e6,
        dtypes.values().map(|d| d.0).sum::<usize>()
    );
    for (k, (n, b)) in &dtypes {
        println!(
            "  dtype {k:<7} {n} tensors, {:.1} MiB",
            *b as f64 / (1 << 20) as f64
        );
    }
    println!(
        "  on disk       {:.1} MiB",
        disk_size(&m.path) as f64 / (1 << 20) as f64
    );
    println!(
        "  chat template {} (refuses {:?}; stops at {:?})",
        template.name(),
        template.control_strings(),
        template
            .stop_ids(tok)
            .iter()
            .map(|&i| piece(i))
            .collect::<Vec<_>>()
    );
    Ok(())
}
