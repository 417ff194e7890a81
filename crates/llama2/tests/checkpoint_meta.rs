//! Meta checkpoint loading through the public API: the fixture models (1 and 2 shards)
//! and hostile or inconsistent inputs.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use llama2::checkpoint::{load_meta_checkpoint, load_pth, parse_state_dict, shard_count};
use llama2::error::Error;
use llama2::tensor::{DType, Storage};

const MODELS: [(&str, usize); 2] = [("tiny-mha", 2), ("tiny-gqa", 3)];

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models")
}

/// A fresh, empty folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("llama2-ckpt-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// All entries of a zip, in order, as (name, bytes, compression).
fn zip_entries(path: &Path) -> Vec<(String, Vec<u8>)> {
    let f = std::fs::File::open(path).unwrap();
    let mut z = zip::ZipArchive::new(f).unwrap();
    (0..z.len())
        .map(|i| {
            let mut e = z.by_index(i).unwrap();
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            (e.name().unwrap().to_string(), b)
        })
        .collect()
}

/// Writes a zip from entries; `deflate_data` compresses the storage records.
fn write_zip(path: &Path, entries: &[(String, Vec<u8>)], deflate_data: bool) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = zip::ZipWriter::new(f);
    for (name, bytes) in entries {
        let method = if deflate_data && name.contains("/data/") {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap();
}

fn pkl_of(entries: &[(String, Vec<u8>)]) -> usize {
    entries
        .iter()
        .position(|(n, _)| n.ends_with("/data.pkl"))
        .unwrap()
}

fn checkpoint_msg(e: &Error) -> String {
    match e {
        Error::Checkpoint { msg, .. } => msg.clone(),
        other => panic!("expected Error::Checkpoint, got {other:?}"),
    }
}

#[test]
fn loads_single_shard_fixtures() {
    for (model, n_layers) in MODELS {
        let dir = models().join(model).join("meta");
        assert_eq!(shard_count(&dir).unwrap(), 1);
        let ck = load_meta_checkpoint(&dir).unwrap();
        let a = &ck.args;
        assert_eq!((a.dim, a.n_layers, a.n_heads), (32, n_layers, 4));
        assert_eq!(ck.vocab_size, 32000);
        let hidden = a.ffn_hidden_dim();
        let kv = a.n_kv_heads() * a.head_dim();
        let shape = |n: &str| ck.tensors[n].shape.clone();
        assert_eq!(shape("tok_embeddings.weight"), [32000, 32]);
        assert_eq!(shape("output.weight"), [32000, 32]);
        assert_eq!(shape("norm.weight"), [32]);
        for i in 0..n_layers {
            assert_eq!(shape(&format!("layers.{i}.attention.wq.weight")), [32, 32]);
            assert_eq!(shape(&format!("layers.{i}.attention.wk.weight")), [kv, 32]);
            assert_eq!(
                shape(&format!("layers.{i}.feed_forward.w1.weight")),
                [hidden, 32]
            );
            assert_eq!(
                shape(&format!("layers.{i}.feed_forward.w2.weight")),
                [32, hidden]
            );
        }
        assert_eq!(ck.tensors.len(), 9 * n_layers + 4, "includes rope.freqs");
        for (name, t) in &ck.tensors {
            assert_eq!(t.dtype, DType::BF16, "{name}");
            assert_eq!(t.bytes().len(), t.numel() * 2, "{name}");
            assert!(
                matches!(t.storage, Storage::Mapped { .. }),
                "{name} should be zero-copy"
            );
        }
        // RMSNorm weights are random around 1.0, not all ones.
        let norm = ck.tensors["norm.weight"].to_f32_vec();
        let mean = norm.iter().sum::<f32>() / norm.len() as f32;
        assert!((0.5..1.5).contains(&mean), "{model}: mean {mean}");
        assert!(norm.iter().any(|&x| x != 1.0));
        // rope.freqs[0] = 1 / 10000^0.
        assert_eq!(ck.tensors["rope.freqs"].to_f32_vec()[0], 1.0);
        let emb = ck.tensors["tok_embeddings.weight"].to_f32_vec();
        assert!(emb.iter().all(|x| x.is_finite() && x.abs() < 100.0));
        assert!(emb.iter().any(|&x| x != 0.0));
    }
}

#[test]
fn load_pth_keeps_file_order() {
    let path = models().join("tiny-mha/meta/consolidated.00.pth");
    let t = load_pth(&path).unwrap();
    assert_eq!(t[0].0, "tok_embeddings.weight");
    assert_eq!(t[1].0, "layers.0.attention.wq.weight");
    assert_eq!(t.len(), 9 * 2 + 4);
}

#[test]
fn two_shard_merge_is_byte_identical() {
    for (model, _) in MODELS {
        let one = load_meta_checkpoint(&models().join(model).join("meta")).unwrap();
        let dir2 = models().join(model).join("meta-mp2");
        assert_eq!(shard_count(&dir2).unwrap(), 2);
        let two = load_meta_checkpoint(&dir2).unwrap();
        assert_eq!(one.args, two.args);
        assert_eq!(one.vocab_size, two.vocab_size);
        let mut names: Vec<_> = one.tensors.keys().collect();
        let mut names2: Vec<_> = two.tensors.keys().collect();
        names.sort();
        names2.sort();
        assert_eq!(names, names2);
        for (name, t1) in &one.tensors {
            let t2 = &two.tensors[name];
            assert_eq!(t1.shape, t2.shape, "{model} {name}");
            assert_eq!(t1.dtype, t2.dtype, "{model} {name}");
            assert!(
                t1.bytes() == t2.bytes(),
                "{model} {name}: merged bytes differ"
            );
        }
        assert!(matches!(
            two.tensors["layers.0.attention.wo.weight"].storage,
            Storage::Owned(_)
        ));
    }
}

#[test]
fn compressed_storage_records_are_read() {
    let src = models().join("tiny-gqa/meta/consolidated.00.pth");
    let tmp = TempDir::new("deflate");
    let dst = tmp.path().join("consolidated.00.pth");
    write_zip(&dst, &zip_entries(&src), true);
    let a = load_pth(&src).unwrap();
    let b = load_pth(&dst).unwrap();
    assert_eq!(a.len(), b.len());
    for ((n1, t1), (n2, t2)) in a.iter().zip(&b) {
        assert_eq!(n1, n2);
        assert_eq!(t1.shape, t2.shape);
        assert!(t1.bytes() == t2.bytes(), "{n1}");
        assert!(matches!(t2.storage, Storage::Owned(_)));
    }
}

#[test]
fn missing_or_wrong_folders_are_clear_errors() {
    let missing = models().join("no-such-model");
    let e = load_meta_checkpoint(&missing).unwrap_err();
    assert!(checkpoint_msg(&e).contains("does not exist"), "{e}");
    assert!(e.to_string().contains("no-such-model"), "{e}");
    assert!(shard_count(&missing).is_err());

    let file = models().join("tiny-mha/meta/params.json");
    let e = load_meta_checkpoint(&file).unwrap_err();
    assert!(checkpoint_msg(&e).contains("not a folder"), "{e}");

    let tmp = TempDir::new("nopth");
    std::fs::copy(&file, tmp.path().join("params.json")).unwrap();
    let e = load_meta_checkpoint(tmp.path()).unwrap_err();
    assert!(checkpoint_msg(&e).contains("no consolidated.*.pth"), "{e}");
    assert!(checkpoint_msg(&shard_count(tmp.path()).unwrap_err()).contains("no consolidated"));

    let tmp = TempDir::new("noparams");
    std::fs::copy(
        models().join("tiny-mha/meta/consolidated.00.pth"),
        tmp.path().join("consolidated.00.pth"),
    )
    .unwrap();
    let e = load_meta_checkpoint(tmp.path()).unwrap_err();
    assert!(checkpoint_msg(&e).contains("no params.json"), "{e}");
}

/// Copies `model`'s `meta/` with a modified params.json.
fn with_params(model: &str, edit: impl Fn(&mut serde_json::Value)) -> TempDir {
    let tmp = TempDir::new("params");
    copy_dir(&models().join(model).join("meta"), tmp.path());
    let p = tmp.path().join("params.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
    tmp
}

#[test]
fn params_that_do_not_match_the_weights_are_errors() {
    let tmp = with_params("tiny-mha", |v| v["dim"] = 64.into());
    match load_meta_checkpoint(tmp.path()).unwrap_err() {
        Error::Shape {
            name,
            expected,
            found,
        } => {
            assert_eq!(name, "tok_embeddings.weight");
            assert_eq!((expected, found), (vec![32000, 64], vec![32000, 32]));
        }
        e => panic!("expected a shape error, got {e:?}"),
    }

    let tmp = with_params("tiny-mha", |v| v["n_layers"] = 4.into());
    let e = load_meta_checkpoint(tmp.path()).unwrap_err();
    let msg = checkpoint_msg(&e);
    assert!(
        msg.contains("params.json n_layers is 4 but the file holds 22 tensors"),
        "{msg}"
    );

    let tmp = with_params("tiny-gqa", |v| v["n_layers"] = 2.into());
    let msg = checkpoint_msg(&load_meta_checkpoint(tmp.path()).unwrap_err());
    assert!(
        msg.contains("layer 2") && msg.contains("n_layers = 2"),
        "{msg}"
    );

    // GQA weights read as MHA: wk has 16 rows, params now imply 32.
    let tmp = with_params("tiny-gqa", |v| v["n_kv_heads"] = 4.into());
    match load_meta_checkpoint(tmp.path()).unwrap_err() {
        Error::Shape {
            name,
            expected,
            found,
        } => {
            assert_eq!(name, "layers.0.attention.wk.weight");
            assert_eq!((expected, found), (vec![32, 32], vec![16, 32]));
        }
        e => panic!("expected a shape error, got {e:?}"),
    }

    // An explicit vocab_size that disagrees with the embedding.
    let tmp = with_params("tiny-gqa", |v| v["vocab_size"] = 32001.into());
    assert!(matches!(
        load_meta_checkpoint(tmp.path()).unwrap_err(),
        Error::Shape { name, .. } if name == "tok_embeddings.weight"
    ));

    let tmp = with_params("tiny-gqa", |v| v["dim"] = "wide".into());
    assert!(matches!(
        load_meta_checkpoint(tmp.path()).unwrap_err(),
        Error::Config(_)
    ));
}

#[test]
fn truncated_pth_files_are_errors() {
    let src = models().join("tiny-mha/meta/consolidated.00.pth");
    let bytes = std::fs::read(&src).unwrap();
    let tmp = TempDir::new("trunc");
    let dst = tmp.path().join("consolidated.00.pth");
    let n = bytes.len();
    for len in [
        0,
        1,
        4,
        30,
        100,
        1000,
        3000,
        n / 2,
        n - 200,
        n - 22,
        n - 10,
        n - 1,
    ] {
        std::fs::write(&dst, &bytes[..len]).unwrap();
        let e = load_pth(&dst).unwrap_err();
        let msg = checkpoint_msg(&e);
        assert!(
            msg.contains("empty") || msg.contains("zip"),
            "truncated to {len}: {msg}"
        );
        assert!(e.to_string().contains("consolidated.00.pth"), "{e}");
    }
}

#[test]
fn malicious_pickle_is_refused_and_not_run() {
    let marker = std::env::temp_dir().join(format!("llama2-pwned-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let src = models().join("tiny-mha/meta/consolidated.00.pth");
    let mut entries = zip_entries(&src);
    let i = pkl_of(&entries);
    entries[i].1 = format!("cos\nsystem\n(S'touch {}'\ntR.", marker.display()).into_bytes();
    let tmp = TempDir::new("evil");
    copy_dir(&models().join("tiny-mha/meta"), tmp.path());
    let dst = tmp.path().join("consolidated.00.pth");
    write_zip(&dst, &entries, false);

    let e = load_pth(&dst).unwrap_err();
    let msg = checkpoint_msg(&e);
    assert!(msg.contains("'os.system' is not allowed"), "{msg}");
    let e = load_meta_checkpoint(tmp.path()).unwrap_err();
    assert!(checkpoint_msg(&e).contains("os.system"), "{e}");
    assert!(!marker.exists(), "the pickle was executed");

    // Protocol-4 style with STACK_GLOBAL.
    entries[i].1 = b"\x80\x04\x95\x15\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x04exec\x94\x93\x94.".to_vec();
    write_zip(&dst, &entries, false);
    let msg = checkpoint_msg(&load_pth(&dst).unwrap_err());
    assert!(msg.contains("'builtins.exec' is not allowed"), "{msg}");
}

#[test]
fn inconsistent_shard_sets_are_errors() {
    let mp2 = models().join("tiny-gqa/meta-mp2");

    // Only the second shard.
    let tmp = TempDir::new("only01");
    copy_dir(&mp2, tmp.path());
    std::fs::remove_file(tmp.path().join("consolidated.00.pth")).unwrap();
    let msg = checkpoint_msg(&load_meta_checkpoint(tmp.path()).unwrap_err());
    assert!(msg.contains("consolidated.00.pth is missing"), "{msg}");

    // Only the first shard: half-width tensors.
    let tmp = TempDir::new("only00");
    copy_dir(&mp2, tmp.path());
    std::fs::remove_file(tmp.path().join("consolidated.01.pth")).unwrap();
    match load_meta_checkpoint(tmp.path()).unwrap_err() {
        Error::Shape { name, found, .. } => {
            assert_eq!(
                (name.as_str(), found),
                ("tok_embeddings.weight", vec![32000, 16])
            )
        }
        e => panic!("expected a shape error, got {e:?}"),
    }

    // A third shard (copy of the second).
    let tmp = TempDir::new("extra02");
    copy_dir(&mp2, tmp.path());
    std::fs::copy(
        tmp.path().join("consolidated.01.pth"),
        tmp.path().join("consolidated.02.pth"),
    )
    .unwrap();
    assert_eq!(shard_count(tmp.path()).unwrap(), 3);
    match load_meta_checkpoint(tmp.path()).unwrap_err() {
        Error::Shape {
            name,
            expected,
            found,
        } => {
            assert_eq!(name, "tok_embeddings.weight");
            assert_eq!((expected, found), (vec![32000, 32], vec![32000, 48]));
        }
        e => panic!("expected a shape error, got {e:?}"),
    }

    // A shard of another model: the tensor sets differ.
    let tmp = TempDir::new("mixed");
    copy_dir(&models().join("tiny-mha/meta-mp2"), tmp.path());
    std::fs::copy(
        mp2.join("consolidated.01.pth"),
        tmp.path().join("consolidated.01.pth"),
    )
    .unwrap();
    let msg = checkpoint_msg(&load_meta_checkpoint(tmp.path()).unwrap_err());
    assert!(
        msg.contains("'layers.2.")
            && msg.contains("is in consolidated.01.pth but not in consolidated.00.pth"),
        "{msg}"
    );
}

#[test]
fn shards_disagreeing_on_dtype_or_replicas_are_errors() {
    let mp2 = models().join("tiny-mha/meta-mp2");
    let shard1 = mp2.join("consolidated.01.pth");

    // Shard 01 claims f16 storages.
    let mut entries = zip_entries(&shard1);
    let i = pkl_of(&entries);
    let pkl = String::from_utf8_lossy(&entries[i].1).into_owned();
    assert!(pkl.contains("torch\nBFloat16Storage\n"));
    let pkl = entries[i].1.clone();
    let pat = b"torch\nBFloat16Storage\n";
    let at = pkl.windows(pat.len()).position(|w| w == pat).unwrap();
    let mut new = pkl[..at].to_vec();
    new.extend_from_slice(b"torch\nHalfStorage\n");
    new.extend_from_slice(&pkl[at + pat.len()..]);
    entries[i].1 = new;
    let tmp = TempDir::new("dtype");
    copy_dir(&mp2, tmp.path());
    write_zip(&tmp.path().join("consolidated.01.pth"), &entries, false);
    let msg = checkpoint_msg(&load_meta_checkpoint(tmp.path()).unwrap_err());
    assert!(
        msg.contains("BF16 in consolidated.00.pth but F16 in consolidated.01.pth"),
        "{msg}"
    );

    // Shard 01's final norm differs from shard 00's.
    let mut entries = zip_entries(&shard1);
    let i = pkl_of(&entries);
    let refs = parse_state_dict(&entries[i].1).unwrap();
    let key = &refs
        .iter()
        .find(|(n, _)| n == "norm.weight")
        .unwrap()
        .1
        .storage_key;
    let record = entries
        .iter_mut()
        .find(|(n, _)| n.ends_with(&format!("/data/{key}")))
        .unwrap();
    record.1[1] ^= 0x01;
    let tmp = TempDir::new("replica");
    copy_dir(&mp2, tmp.path());
    write_zip(&tmp.path().join("consolidated.01.pth"), &entries, false);
    let msg = checkpoint_msg(&load_meta_checkpoint(tmp.path()).unwrap_err());
    assert!(
        msg.contains("'norm.weight' should be identical in every shard"),
        "{msg}"
    );
}

/// Deterministic xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut Rng, src: &[u8]) -> Vec<u8> {
    let mut b = src.to_vec();
    match rng.below(5) {
        0 => b.truncate(rng.below(b.len())),
        1 => {
            let at = rng.below(b.len());
            b.insert(at, rng.next() as u8);
        }
        2 => {
            // Interesting values in length / integer fields.
            let at = rng.below(b.len().saturating_sub(4));
            let v: [u8; 4] = [
                [0xff; 4],
                [0x7f, 0xff, 0xff, 0xff],
                [0, 0, 0, 0x80],
                [1, 0, 0, 0],
            ][rng.below(4)];
            b[at..at + 4].copy_from_slice(&v);
        }
        _ => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(b.len());
                b[at] = rng.next() as u8;
            }
        }
    }
    b
}

#[test]
fn mutated_pickles_never_panic() {
    let src = models().join("tiny-gqa/meta-mp2/consolidated.00.pth");
    let mut entries = zip_entries(&src);
    let i = pkl_of(&entries);
    let pkl = entries[i].1.clone();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut parsed = 0;
    for _ in 0..2000 {
        let m = mutate(&mut rng, &pkl);
        if parse_state_dict(&m).is_ok() {
            parsed += 1;
        }
    }
    assert!(parsed > 0, "some mutations keep the pickle valid");

    // Through the whole loader: mutated pickles that still parse must be validated
    // against the storage records.
    let tmp = TempDir::new("mutate");
    let dst = tmp.path().join("consolidated.00.pth");
    let mut loaded = 0;
    for _ in 0..60 {
        let m = mutate(&mut rng, &pkl);
        entries[i].1 = m;
        write_zip(&dst, &entries, false);
        match load_pth(&dst) {
            Ok(t) => {
                loaded += 1;
                for (_, t) in t {
                    assert_eq!(t.bytes().len(), t.numel() * t.dtype.size());
                }
            }
            Err(e) => assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}"),
        }
    }
    let _ = loaded;
}

#[test]
fn mutated_zip_structures_never_panic() {
    let src = models().join("tiny-mha/meta/consolidated.00.pth");
    let bytes = std::fs::read(&src).unwrap();
    let n = bytes.len();
    let tmp = TempDir::new("zipmut");
    let dst = tmp.path().join("consolidated.00.pth");
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for _ in 0..100 {
        let mut b = bytes.clone();
        // Local headers and pickle live in the first KiBs, the central directory at the end.
        for _ in 0..1 + rng.below(4) {
            let at = if rng.below(2) == 0 {
                rng.below(4096)
            } else {
                n - 1 - rng.below(4096)
            };
            b[at] = rng.next() as u8;
        }
        std::fs::write(&dst, &b).unwrap();
        if let Err(e) = load_pth(&dst) {
            assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
        }
    }
}

/// The tiny-gqa checkpoint rewritten with every storage converted by `convert`
/// (bf16 bits → new element bytes) and the storage class renamed to `class`.
fn rewrite_storages(tag: &str, class: &str, convert: impl Fn(u16) -> Vec<u8>) -> TempDir {
    let src = models().join("tiny-gqa/meta");
    let mut entries = zip_entries(&src.join("consolidated.00.pth"));
    for (name, bytes) in entries.iter_mut() {
        if name.ends_with("data.pkl") {
            let pat = b"torch\nBFloat16Storage\n";
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i..].starts_with(pat) {
                    out.extend_from_slice(format!("torch\n{class}\n").as_bytes());
                    i += pat.len();
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            *bytes = out;
        } else if name.contains("/data/") {
            *bytes = bytes
                .chunks_exact(2)
                .flat_map(|b| convert(u16::from_le_bytes([b[0], b[1]])))
                .collect();
        }
    }
    let tmp = TempDir::new(tag);
    copy_dir(&src, tmp.path());
    write_zip(&tmp.path().join("consolidated.00.pth"), &entries, false);
    tmp
}

fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

#[test]
fn f32_and_f16_storages_load_and_run() {
    let tok = models().join("../tokenizer/tokenizer.model");
    let prompt = [1u32, 306, 4658, 278, 6593, 310, 2834, 338];
    let logits_of = |dir: &Path| {
        llama2::Llama::build(dir, &tok, 16, 1)
            .unwrap()
            .logits(&prompt)
            .unwrap()
    };
    let bf16 = logits_of(&models().join("tiny-gqa/meta"));

    // f32 storages holding the same values: bit-identical logits.
    let f32_dir = rewrite_storages("f32", "FloatStorage", |b| {
        bf16_bits_to_f32(b).to_le_bytes().to_vec()
    });
    let ck = load_meta_checkpoint(f32_dir.path()).unwrap();
    assert_eq!(ck.tensors["output.weight"].dtype, DType::F32);
    assert_eq!(logits_of(f32_dir.path()), bf16);

    // f16 storages: values are the f16 roundings, and the model computes exactly what
    // an f32 file holding those roundings computes.
    let to_f16 = |b: u16| half::f16::from_f32(bf16_bits_to_f32(b));
    let f16_dir = rewrite_storages("f16", "HalfStorage", |b| {
        to_f16(b).to_bits().to_le_bytes().to_vec()
    });
    let rounded_dir = rewrite_storages("f16-as-f32", "FloatStorage", |b| {
        to_f16(b).to_f32().to_le_bytes().to_vec()
    });
    let ck = load_meta_checkpoint(f16_dir.path()).unwrap();
    let w = &ck.tensors["layers.0.attention.wq.weight"];
    assert_eq!(w.dtype, DType::F16);
    let orig = load_meta_checkpoint(&models().join("tiny-gqa/meta")).unwrap();
    let want: Vec<f32> = orig.tensors["layers.0.attention.wq.weight"]
        .bytes()
        .chunks_exact(2)
        .map(|b| to_f16(u16::from_le_bytes([b[0], b[1]])).to_f32())
        .collect();
    assert_eq!(w.to_f32_vec(), want);
    assert_eq!(logits_of(f16_dir.path()), logits_of(rounded_dir.path()));
}

#[test]
fn a_central_directory_pointing_one_record_at_another_is_refused() {
    let src = models().join("tiny-mha/meta/consolidated.00.pth");
    let mut bytes = std::fs::read(&src).unwrap();
    // Central directory entries: signature, ..., name length at +28, local header offset
    // at +42, name at +46.
    let entry = |bytes: &[u8], suffix: &str| -> usize {
        (0..bytes.len() - 46)
            .find(|&i| {
                bytes[i..i + 4] == *b"PK\x01\x02" && {
                    let n = u16::from_le_bytes([bytes[i + 28], bytes[i + 29]]) as usize;
                    bytes[i + 46..i + 46 + n].ends_with(suffix.as_bytes())
                }
            })
            .unwrap()
    };
    let (a, b) = (entry(&bytes, "/data/0"), entry(&bytes, "/data/1"));
    let offset_of_0 = bytes[a + 42..a + 46].to_vec();
    bytes[b + 42..b + 46].copy_from_slice(&offset_of_0);
    let tmp = TempDir::new("crossed");
    let dst = tmp.path().join("consolidated.00.pth");
    std::fs::write(&dst, &bytes).unwrap();
    let e = load_pth(&dst).unwrap_err();
    assert!(
        checkpoint_msg(&e).contains("local header does not match"),
        "{e}"
    );
}
