//! The `llama2` binary end to end on the fixture checkpoints: outputs against the
//! reference goldens, and exit codes and messages for bad input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn model() -> PathBuf {
    fixtures().join("models/tiny-gqa/meta")
}

fn tokenizer() -> PathBuf {
    fixtures().join("tokenizer/tokenizer.model")
}

fn golden() -> Value {
    let text = std::fs::read_to_string(fixtures().join("models/tiny-gqa/golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn llama2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llama2"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn with_model(sub: &str, extra: &[&str]) -> Output {
    let (m, t) = (model(), tokenizer());
    let mut args = vec![
        sub,
        "--ckpt-dir",
        m.to_str().unwrap(),
        "--tokenizer",
        t.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    llama2(&args)
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn complete_json_matches_reference_greedy_output() {
    let g = golden();
    let c0 = &g["cases"][0];
    let c1 = &g["cases"][1];
    let out = with_model(
        "complete",
        &[
            "--temperature",
            "0",
            "--max-gen-len",
            "24",
            "--logprobs",
            "--json",
            c0["prompt"].as_str().unwrap(),
            c1["prompt"].as_str().unwrap(),
        ],
    );
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    for (r, c) in v.as_array().unwrap().iter().zip([c0, c1]) {
        assert_eq!(r["generation"], c["completion_text"]);
        assert_eq!(r["tokens"], c["completion_token_texts"]);
        let lp = r["logprobs"].as_array().unwrap();
        for (a, b) in lp.iter().zip(c["completion_logprobs"].as_array().unwrap()) {
            assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4);
        }
    }
    // Plain output prints the prompt and the generation.
    let out = with_model(
        "complete",
        &[
            "--temperature",
            "0",
            "--max-gen-len",
            "24",
            "--echo",
            c0["prompt"].as_str().unwrap(),
        ],
    );
    assert!(stdout(&out).contains(&format!("> {}", c0["echo_text"].as_str().unwrap())));
}

#[test]
fn chat_dialogs_file_and_message() {
    let g = golden();
    let chats: Vec<&Value> = g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "chat_completion")
        .collect();
    let dialogs: Vec<&Value> = chats.iter().map(|c| &c["dialog"]).collect();
    let path = std::env::temp_dir().join(format!("llama2-cli-dialogs-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_string(&dialogs).unwrap()).unwrap();
    let out = with_model(
        "chat",
        &[
            "--dialogs",
            path.to_str().unwrap(),
            "--temperature",
            "0",
            "--max-gen-len",
            "24",
            "--json",
        ],
    );
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    for (r, c) in v.as_array().unwrap().iter().zip(&chats) {
        assert_eq!(r["generation"]["role"], "assistant");
        assert_eq!(r["generation"]["content"], c["chat_content"]);
    }
    // A system prompt plus MESSAGE is the same dialog as chat_0.
    let d0 = &chats[0]["dialog"];
    let out = with_model(
        "chat",
        &[
            "--system",
            d0[0]["content"].as_str().unwrap(),
            "--temperature",
            "0",
            "--max-gen-len",
            "24",
            "--json",
            d0[1]["content"].as_str().unwrap(),
        ],
    );
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v[0]["generation"]["content"], chats[0]["chat_content"]);
    std::fs::remove_file(path).ok();
}

#[test]
fn interactive_chat_streams_keeps_history_and_exits_on_eof() {
    let (m, t) = (model(), tokenizer());
    let mut child = Command::new(env!("CARGO_BIN_EXE_llama2"))
        .args([
            "chat",
            "--ckpt-dir",
            m.to_str().unwrap(),
            "--tokenizer",
            t.to_str().unwrap(),
            "--temperature",
            "0",
            "--max-gen-len",
            "8",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nhow are you?\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    // The first answer equals a one-shot answer to the same message.
    let one = with_model(
        "chat",
        &[
            "--temperature",
            "0",
            "--max-gen-len",
            "8",
            "--json",
            "hello",
        ],
    );
    let v: Value = serde_json::from_str(&stdout(&one)).unwrap();
    assert_eq!(lines[0], v[0]["generation"]["content"].as_str().unwrap());
}

#[test]
fn tokenize_and_decode() {
    let t = tokenizer();
    let out = llama2(&[
        "tokenize",
        "--tokenizer",
        t.to_str().unwrap(),
        "--bos",
        "Hello world! How are you?",
    ]);
    assert_eq!(
        stdout(&out).trim(),
        "[1,15043,3186,29991,1128,526,366,29973]"
    );
    let out = llama2(&[
        "tokenize",
        "--tokenizer",
        t.to_str().unwrap(),
        "--decode",
        "[1, 15043, 3186]",
    ]);
    assert_eq!(stdout(&out), "Hello world\n");
    let out = llama2(&[
        "tokenize",
        "--tokenizer",
        t.to_str().unwrap(),
        "--decode",
        "[1, 99999]",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = llama2(&[
        "tokenize",
        "--tokenizer",
        t.to_str().unwrap(),
        "--decode",
        "[-1]",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

fn assert_fails(out: Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "{err:?} lacks {needle:?}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(!err.contains("panicked"));
}

#[test]
fn bad_input_gets_one_line_and_an_exit_code() {
    let t = tokenizer();
    let t = t.to_str().unwrap();
    assert_fails(
        llama2(&[
            "complete",
            "--ckpt-dir",
            "/nonexistent/ckpt",
            "--tokenizer",
            t,
            "x",
        ]),
        3,
        "/nonexistent/ckpt",
    );
    let empty = std::env::temp_dir().join(format!("llama2-cli-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(model().join("params.json"), empty.join("params.json")).unwrap();
    assert_fails(
        llama2(&[
            "complete",
            "--ckpt-dir",
            empty.to_str().unwrap(),
            "--tokenizer",
            t,
            "x",
        ]),
        3,
        ".pth",
    );
    std::fs::remove_dir_all(&empty).ok();
    assert_fails(
        with_model("complete", &["--max-batch-size", "1", "a", "b"]),
        2,
        "max_batch_size",
    );
    assert_fails(with_model("complete", &["--top-p", "1.5", "a"]), 2, "top_p");
    assert_fails(
        with_model("complete", &["--temperature=-1", "a"]),
        2,
        "temperature",
    );
    assert_fails(
        with_model("complete", &["--max-seq-len", "4", "a long prompt indeed"]),
        2,
        "max_seq_len",
    );
    let bad = std::env::temp_dir().join(format!("llama2-cli-bad-{}.json", std::process::id()));
    std::fs::write(&bad, r#"[[{"role": "user", "content": 3}]]"#).unwrap();
    assert_fails(
        with_model("chat", &["--dialogs", bad.to_str().unwrap()]),
        2,
        "invalid dialog JSON",
    );
    std::fs::write(&bad, r#"[[{"role": "assistant", "content": "hi"}]]"#).unwrap();
    assert_fails(
        with_model("chat", &["--dialogs", bad.to_str().unwrap()]),
        2,
        "alternating",
    );
    std::fs::remove_file(&bad).ok();
    let m = model();
    assert_fails(
        llama2(&[
            "chat",
            "--ckpt-dir",
            m.to_str().unwrap(),
            "--tokenizer",
            "/nonexistent/tok.model",
            "hi",
        ]),
        3,
        "tok.model",
    );
}

#[test]
fn inspect_reports_architecture_and_format() {
    let hf = fixtures().join("models/tiny-gqa/hf");
    let v: Value = serde_json::from_str(&stdout(&llama2(&[
        "inspect",
        "--json",
        hf.to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(v["format"], "Hugging Face safetensors");
    assert_eq!(
        (
            v["dim"].as_u64(),
            v["n_layers"].as_u64(),
            v["n_heads"].as_u64()
        ),
        (Some(32), Some(3), Some(4))
    );
    assert_eq!(
        (v["n_kv_heads"].as_u64(), v["ffn_hidden_dim"].as_u64()),
        (Some(2), Some(128))
    );
    assert_eq!(v["vocab_size"], 32000);
    assert_eq!(v["dtypes"]["BF16"]["tensors"], 3 * 9 + 3);
    assert_eq!(v["chat_template"], "llama2");
    let (m, t) = (model(), tokenizer());
    let text = stdout(&llama2(&[
        "inspect",
        m.to_str().unwrap(),
        "--tokenizer",
        t.to_str().unwrap(),
    ]));
    assert!(
        text.contains("Meta checkpoint") && text.contains("3 layers"),
        "{text}"
    );
    assert_fails(
        llama2(&["inspect", "/nonexistent/model"]),
        3,
        "/nonexistent/model",
    );
}

#[test]
fn input_files_and_lines_are_read_with_limits() {
    // A missing dialog file is bad input (2), its cause said once.
    let out = with_model("chat", &["--dialogs", "/nonexistent/dialogs.json"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_fails(out, 2, "/nonexistent/dialogs.json");
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    // /dev/zero is not read to the end.
    assert_fails(
        with_model("chat", &["--dialogs", "/dev/zero"]),
        2,
        "larger than 64 MiB",
    );
    // Nor is an endless line of standard input.
    let (m, t) = (model(), tokenizer());
    let out = Command::new(env!("CARGO_BIN_EXE_llama2"))
        .args(["chat", "--ckpt-dir", m.to_str().unwrap(), "--tokenizer"])
        .arg(&t)
        .stdin(std::fs::File::open("/dev/zero").unwrap())
        .output()
        .unwrap();
    assert_fails(out, 2, "longer than 1 MiB");
    // Usage errors are 2, not 1.
    assert_fails(with_model("chat", &["--json"]), 2, "--json needs");
}

#[test]
fn bench_runs_each_test_at_each_depth() {
    let gguf = fixtures().join("models/tiny-gqa/gguf/tiny-gqa-f32.gguf");
    let out = llama2(&[
        "bench",
        "-m",
        gguf.to_str().unwrap(),
        "-p",
        "8",
        "-n",
        "2",
        "-d",
        "0,16",
        "-r",
        "1",
        "-t",
        "1",
        "-o",
        "json",
    ]);
    let rows: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let tests: Vec<(&str, u64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["test"].as_str().unwrap(), r["n_depth"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        tests,
        [("pp8", 0), ("tg2", 0), ("pp8 @ d16", 16), ("tg2 @ d16", 16)]
    );
    // A depth past the context limit is a usage error, before anything is reserved.
    assert_fails(
        llama2(&["bench", "-m", gguf.to_str().unwrap(), "-d", "2000000"]),
        2,
        "max_seq_len",
    );
}

#[test]
fn argument_errors_are_one_line_with_exit_code_2() {
    for (args, needle) in [
        (&["complete", "--max-seq-len=-1", "x"][..], "--max-seq-len"),
        (&["complete", "--max-seq-len", "-1", "x"][..], "tip:"),
        (&["complete", "--top-p"][..], "--top-p"),
        (&["tokenize", "x"][..], "--tokenizer"),
        (&["bench", "-r", "1000000000000"][..], "--repetitions"),
        (&["serve", "--port", "70000"][..], "70000"),
    ] {
        assert_fails(llama2(args), 2, needle);
    }
}

#[test]
fn help_and_version_still_print_and_exit_0() {
    for args in [
        &["--help"][..],
        &["--version"][..],
        &["bench", "--help"][..],
    ] {
        let out = llama2(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
    // No subcommand: the help, on standard error, exit 2 (clap's convention).
    let out = llama2(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage:"));
}
