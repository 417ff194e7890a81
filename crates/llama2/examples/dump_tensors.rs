//! Writes every intermediate tensor of one forward pass, for the layer-by-layer
//! comparison with llama.cpp (`scripts/llama_cpp_logits.cpp --dump`, then
//! `scripts/compare-dumps.py`).
//!
//! `cargo run --release -p llama2 --example dump_tensors -- MODEL IDS OUT_DIR [f16|f32] [fast|exact]`
//!
//! IDS are comma-separated token ids, run from position 0 in one call with logits for
//! every position (as `llama-cpp-logits` runs them). OUT_DIR receives `<name>.f32`
//! (rows of f32 per token, names as llama.cpp's graph names them) and `index.tsv`
//! (name, row width, rows).
use std::io::Write;
use std::sync::{Arc, Mutex};

use llama2::kernels::WorkerPool;
use llama2::model::{KvPool, KvType, SeqChunk, Workspace};
use llama2::{Llama, Precision};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err("usage: dump_tensors MODEL IDS OUT_DIR [f16|f32] [fast|exact]".into());
    }
    let ids: Vec<u32> = args[2]
        .split(',')
        .map(|t| t.trim().parse())
        .collect::<Result<_, _>>()?;
    let out = std::path::PathBuf::from(&args[3]);
    std::fs::create_dir_all(&out)?;
    let kv_type = match args.get(4).map(String::as_str) {
        Some("f32") => KvType::F32,
        _ => KvType::F16,
    };
    let precision = match args.get(5).map(String::as_str) {
        Some("exact") => Precision::Exact,
        _ => Precision::Fast,
    };
    let llama = Llama::open(&args[1])
        .max_seq_len(ids.len())
        .precision(precision)
        .build()?;
    let model = llama.model();
    let pool = WorkerPool::new(1)?;
    let mut kv = KvPool::new(model.args(), 1, ids.len(), kv_type)?;
    let rope = model.rope_table(ids.len());
    let index = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut ws = Workspace::new();
    let (dir, idx) = (out.clone(), index.clone());
    let n = ids.len();
    ws.set_trace(Some(Box::new(move |name: &str, data: &[f32]| {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.join(format!("{name}.f32")), bytes).expect("writing a dump");
        // Every row is wanted here (all logits), so each tensor has one row per id.
        let line = format!("{name}\t{}\t{n}", data.len() / n);
        idx.lock().expect("index").push(line);
    })));
    let chunk = SeqChunk {
        slot: 0,
        start_pos: 0,
        tokens: &ids,
        all_logits: true,
    };
    let mut logits = Vec::new();
    model.forward(&pool, &mut kv, &rope, &[chunk], &mut ws, &mut logits)?;
    let mut f = std::fs::File::create(out.join("index.tsv"))?;
    for line in index.lock().expect("index").iter() {
        writeln!(f, "{line}")?;
    }
    eprintln!(
        "{} tensors in {}",
        index.lock().expect("index").len(),
        out.display()
    );
    Ok(())
}
