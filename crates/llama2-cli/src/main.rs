//! `llama2`: the command line. Subcommands: `complete`, `chat`, `serve`, `tokenize`,
//! `inspect`, `convert`, `bench`, `batched-bench`.
//!
//! Exit codes: 0 success, 2 bad input or usage (including clap's own errors),
//! 3 a model or tokenizer file that cannot be loaded, 1 anything else.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use llama2::{Dialog, GenerationOptions, Llama, Message, Role, TemplateChoice, Tokenizer};

/// Returns a usage or input error (exit code 2) from the enclosing function, as
/// `anyhow::bail!` does.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::Usage(format!($($arg)*))))
    };
}

mod batched_bench;
mod bench;
mod guard;
mod inspect;
mod serve;

#[derive(Parser)]
#[command(name = "llama2", version, about = "Llama 2 family models on the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Continue text prompts (the reference's text_completion).
    Complete(CompleteArgs),
    /// Answer dialogs (the reference's chat_completion), or chat interactively.
    Chat(ChatArgs),
    /// Serve the OpenAI API (chat, completions, models, metrics) over HTTP.
    Serve(serve::ServeArgs),
    /// Encode text to token ids, or decode ids to text.
    Tokenize(TokenizeArgs),
    /// Print a model's architecture, shapes, dtypes, tokenizer, template and size.
    Inspect(inspect::InspectArgs),
    /// Write a model (any format) as a GGUF file that llama.cpp also loads.
    Convert(ConvertArgs),
    /// Measure prompt-processing and generation speed (like llama-bench).
    Bench(bench::BenchArgs),
    /// Measure batched decoding: B sequences of PP prompt tokens then TG generated
    /// tokens each (like llama-batched-bench).
    BatchedBench(batched_bench::BatchedBenchArgs),
}

#[derive(Args)]
struct ConvertArgs {
    /// Model to convert: a Meta checkpoint folder, a Hugging Face folder or a .gguf file.
    #[arg(long, required_unless_present = "random")]
    model: Option<PathBuf>,
    /// Instead of converting, write random weights with a released shape (7b, 13b, 3.2-1b) for
    /// speed measurements; needs --tokenizer.
    #[arg(long, value_enum, conflicts_with = "model", requires = "tokenizer")]
    random: Option<RandomShape>,
    /// Tokenizer file when it is not beside the model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Output .gguf file.
    #[arg(long)]
    out: PathBuf,
    /// Type of the 2-D weights (norms stay f32).
    #[arg(long = "type", value_enum, default_value_t = WeightType::F16)]
    weight_type: WeightType,
}

#[derive(Clone, Copy, ValueEnum)]
enum RandomShape {
    #[value(name = "7b")]
    Llama7B,
    #[value(name = "13b")]
    Llama13B,
    /// Llama 3.2 1B (Llama Guard 3 1B): GQA, llama3-scaled RoPE, tied embeddings; needs
    /// a Llama 3 tokenizer.
    #[value(name = "3.2-1b")]
    Llama32_1B,
}

#[derive(Clone, Copy, ValueEnum)]
enum WeightType {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
}

#[derive(Args)]
struct ModelArgs {
    /// Model to run: a Meta checkpoint folder, a Hugging Face folder or a .gguf file
    /// (default: SmolLM2-135M-Instruct, fetched on first use).
    #[arg(long, conflicts_with = "ckpt_dir")]
    model: Option<PathBuf>,
    /// Meta checkpoint folder (params.json + consolidated.NN.pth); same as --model.
    #[arg(long)]
    ckpt_dir: Option<PathBuf>,
    /// Tokenizer file (tokenizer.model) when it is not beside the model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Chat format: the model's own template (auto), Llama 2's, or ChatML.
    #[arg(long, value_enum, default_value_t = TemplateArg::Auto)]
    template: TemplateArg,
    /// Context length per sequence (prompt + generation); default: the model's, at most 4096.
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// Most prompts per batch (default: as many as given).
    #[arg(long)]
    max_batch_size: Option<usize>,
    /// Worker threads (default: the physical cores).
    #[arg(long)]
    threads: Option<usize>,
    /// KV cache type (default: f16 for quantized models, f32 otherwise).
    #[arg(long, value_enum)]
    kv_type: Option<KvTypeArg>,
}

/// `--kv-type` values.
#[derive(Clone, Copy, ValueEnum)]
pub enum KvTypeArg {
    F16,
    F32,
}

impl From<KvTypeArg> for llama2::KvType {
    fn from(a: KvTypeArg) -> Self {
        match a {
            KvTypeArg::F16 => llama2::KvType::F16,
            KvTypeArg::F32 => llama2::KvType::F32,
        }
    }
}

/// One line on the KV cache an engine reserves.
pub fn kv_summary(llama: &Llama) -> String {
    let c = llama.engine().config();
    format!(
        "KV cache {}: {} slot{} x {} positions, {:.1} MiB reserved",
        c.kv_type.name(),
        c.slots,
        if c.slots == 1 { "" } else { "s" },
        c.ctx,
        llama.engine().kv_reserved_bytes() as f64 / (1 << 20) as f64
    )
}

/// `--template` values.
#[derive(Clone, Copy, ValueEnum)]
pub enum TemplateArg {
    Auto,
    Llama2,
    Llama3,
    Chatml,
}

impl From<TemplateArg> for TemplateChoice {
    fn from(t: TemplateArg) -> Self {
        match t {
            TemplateArg::Auto => TemplateChoice::Auto,
            TemplateArg::Llama2 => TemplateChoice::Llama2,
            TemplateArg::Llama3 => TemplateChoice::Llama3,
            TemplateArg::Chatml => TemplateChoice::ChatMl,
        }
    }
}

impl ModelArgs {
    /// The model path: --model, --ckpt-dir, or the default model (fetched if missing).
    fn path(&self) -> Result<PathBuf> {
        match (&self.model, &self.ckpt_dir) {
            (Some(p), _) | (None, Some(p)) => Ok(p.clone()),
            (None, None) => Ok(llama2_default_model::path_or_fetch()?),
        }
    }
}

#[derive(Args)]
struct SamplingArgs {
    /// Sampling temperature; 0 = greedy (default 0.6, or the model's own default).
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling mass, in (0, 1] (default 0.9, or the model's own default).
    #[arg(long)]
    top_p: Option<f32>,
    /// Most tokens to generate (default: max_seq_len - 1).
    #[arg(long)]
    max_gen_len: Option<usize>,
    /// Seed of the sampler (default 1, as the reference).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Report each token's log-probability.
    #[arg(long)]
    logprobs: bool,
    /// Print results as JSON, shaped like the reference's return value.
    #[arg(long)]
    json: bool,
    /// Print token counts and speeds to standard error.
    #[arg(long)]
    stats: bool,
}

#[derive(Args)]
struct CompleteArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Return the prompt too.
    #[arg(long)]
    echo: bool,
    /// Prompts, completed as one batch.
    #[arg(required = true)]
    prompts: Vec<String>,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// JSON file with a list of dialogs (lists of {"role", "content"}), answered as one batch.
    #[arg(long, conflicts_with = "message")]
    dialogs: Option<PathBuf>,
    /// System prompt for MESSAGE or the interactive session.
    #[arg(long)]
    system: Option<String>,
    /// One user message; without it (and without --dialogs) chat interactively.
    message: Option<String>,
    #[command(flatten)]
    guard: guard::GuardArgs,
}

#[derive(Args)]
struct TokenizeArgs {
    /// SentencePiece tokenizer.model.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Prepend BOS.
    #[arg(long)]
    bos: bool,
    /// Append EOS.
    #[arg(long)]
    eos: bool,
    /// Treat the input as a JSON list of ids and print the decoded text.
    #[arg(long)]
    decode: bool,
    /// Text to encode (or the JSON id list with --decode).
    input: String,
}

fn main() -> ExitCode {
    // llama.cpp spells some flags with one dash (`-npp 128`, `-np 4`): accept those too.
    let args = std::env::args_os().map(|a| match a.to_str() {
        Some(f @ ("-npp" | "-ntg" | "-npl")) => format!("-{f}").into(),
        Some("-np") => "--parallel".into(),
        _ => a,
    });
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        // A usage error: one line, exit 2 (clap would add the usage and a hint).
        Err(e)
            if e.use_stderr()
                && e.kind() != ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            eprintln!("error: {}", clap_one_line(&e));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Complete(a) => complete(a),
        Command::Chat(a) => chat(a),
        Command::Serve(a) => serve::run(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert(a),
        Command::Bench(a) => bench::run(a),
        Command::BatchedBench(a) => batched_bench::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// A clap error as one line: its message (a list of missing arguments joined on it) and
/// any tip, without the usage paragraph.
fn clap_one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut paragraphs = text.split("\n\n").map(|p| {
        p.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    });
    let mut line = paragraphs.next().unwrap_or_default();
    line = line.strip_prefix("error: ").unwrap_or(&line).to_string();
    for tip in paragraphs.filter(|p| p.starts_with("tip:")) {
        line.push_str(&format!(" ({tip})"));
    }
    line
}

/// A usage or input error of the command line (exit code 2); see [`usage!`].
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn exit_code(e: &anyhow::Error) -> u8 {
    use llama2::Error::*;
    match e.downcast_ref::<llama2::Error>() {
        Some(Io { .. } | Checkpoint { .. } | Config(_) | Tokenizer(_) | Shape { .. }) => 3,
        Some(_) => 2,
        None if e.downcast_ref::<serde_json::Error>().is_some() => 2,
        None if e.downcast_ref::<Usage>().is_some() => 2,
        None => 1,
    }
}

/// The error and its causes on one line, each cause once (an I/O error's message often
/// already holds its source's text).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        // An I/O error's message ends with its source's text: say it once.
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Most bytes of a `--dialogs` file.
const MAX_DIALOGS_FILE: u64 = 64 << 20;

/// Most bytes of one line of standard input in an interactive chat.
const MAX_INPUT_LINE: u64 = 1 << 20;

/// Reads a text file the user named, up to `limit` bytes; errors are input errors.
pub(crate) fn read_input_file(path: &std::path::Path, limit: u64) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| Usage(format!("{}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Usage(format!("{}: {e}", path.display())))?;
    if bytes.len() as u64 > limit {
        let size = if limit >= 1 << 20 {
            format!("{} MiB", limit >> 20)
        } else {
            format!("{limit} bytes")
        };
        usage!("{}: larger than {size}", path.display());
    }
    String::from_utf8(bytes)
        .map_err(|_| Usage(format!("{}: not UTF-8 text", path.display())).into())
}

impl SamplingArgs {
    fn options(&self, llama: &Llama) -> GenerationOptions {
        let d = llama.default_options();
        GenerationOptions {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            max_gen_len: self.max_gen_len,
            logprobs: self.logprobs,
            echo: false,
            seed: Some(self.seed),
        }
    }
}

impl SamplingArgs {
    fn report(&self, llama: &Llama) {
        if self.stats {
            let s = llama.last_stats();
            eprintln!(
                "prompt: {} tokens ({} reused) in {:.3}s ({:.1} tok/s); generated: {} tokens in {:.3}s ({:.1} tok/s); {} threads",
                s.prompt_tokens,
                s.reused_tokens,
                s.prefill.as_secs_f64(),
                s.prefill_tokens_per_s(),
                s.generated_tokens,
                s.decode.as_secs_f64(),
                s.decode_tokens_per_s(),
                llama.threads()
            );
            eprintln!("{}", kv_summary(llama));
        }
    }
}

fn load(m: &ModelArgs, batch: usize) -> Result<Llama> {
    let path = m.path()?;
    let spinner = std::io::stderr().is_terminal().then(|| {
        let s = indicatif::ProgressBar::new_spinner();
        s.set_message(format!("loading {}", path.display()));
        s.enable_steady_tick(Duration::from_millis(100));
        s
    });
    let start = std::time::Instant::now();
    let mut b = Llama::open(&path)
        .max_batch_size(m.max_batch_size.unwrap_or(batch.max(1)))
        .template(m.template.into());
    if let Some(t) = &m.tokenizer {
        b = b.tokenizer(t);
    }
    if let Some(n) = m.max_seq_len {
        b = b.max_seq_len(n);
    }
    if let Some(t) = m.threads {
        b = b.threads(t);
    }
    if let Some(t) = m.kv_type {
        b = b.kv_type(t.into());
    }
    let llama = b.build();
    if let Some(s) = spinner {
        match &llama {
            Ok(l) => s.finish_with_message(format!(
                "loaded {} in {:.2}s; {}",
                path.display(),
                start.elapsed().as_secs_f64(),
                kv_summary(l)
            )),
            Err(_) => s.finish_and_clear(),
        }
    }
    Ok(llama?)
}

fn complete(a: CompleteArgs) -> Result<()> {
    let llama = load(&a.model, a.prompts.len())?;
    let opts = GenerationOptions {
        echo: a.echo,
        ..a.sampling.options(&llama)
    };
    let results = llama.text_completion(&a.prompts, &opts)?;
    a.sampling.report(&llama);
    if a.sampling.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    for (prompt, r) in a.prompts.iter().zip(&results) {
        println!("{prompt}");
        println!("> {}", r.generation);
        if let (Some(t), Some(l)) = (&r.tokens, &r.logprobs) {
            println!("tokens: {}", serde_json::to_string(t)?);
            println!("logprobs: {}", serde_json::to_string(l)?);
        }
        println!("\n==================================\n");
    }
    Ok(())
}

fn chat(a: ChatArgs) -> Result<()> {
    let dialogs: Vec<Dialog> = if let Some(path) = &a.dialogs {
        let text = read_input_file(path, MAX_DIALOGS_FILE)?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid dialog JSON", path.display()))?
    } else if let Some(msg) = &a.message {
        let mut d = Vec::new();
        if let Some(s) = &a.system {
            d.push(Message::new(Role::System, s.clone()));
        }
        d.push(Message::new(Role::User, msg.clone()));
        vec![d]
    } else {
        return interactive(a);
    };
    let llama = load(&a.model, dialogs.len())?;
    let opts = a.sampling.options(&llama);
    if let Some(g) = a.guard.load(&llama)? {
        return chat_guarded(&a, &llama, &g, &dialogs, &opts);
    }
    let results = llama.chat_completion(&dialogs, &opts)?;
    a.sampling.report(&llama);
    if a.sampling.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    for (dialog, r) in dialogs.iter().zip(&results) {
        for m in dialog {
            println!("{}: {}\n", m.role.as_str(), m.content);
        }
        println!("> {}: {}", r.generation.role.as_str(), r.generation.content);
        println!("\n==================================\n");
    }
    Ok(())
}

/// `chat --guard` over a batch: blocked turns answer with the refusal, their categories
/// go to standard error (`--json`: a `safety` field per result).
fn chat_guarded(
    a: &ChatArgs,
    llama: &Llama,
    g: &llama2::safety::Guard,
    dialogs: &[Dialog],
    opts: &GenerationOptions,
) -> Result<()> {
    let answers = llama2::safety::guarded_chat_batch(llama, g, dialogs, opts, &mut |_, _| {
        ControlFlow::Continue(())
    })?;
    if a.sampling.stats {
        if answers.iter().any(|ans| ans.prediction.is_some()) {
            a.sampling.report(llama);
        }
        for ans in &answers {
            eprintln!("{}", guard::stats_line(&ans.checks));
        }
    }
    if a.sampling.json {
        let out: Vec<serde_json::Value> = answers
            .iter()
            .map(|ans| {
                let mut v = match &ans.prediction {
                    Some(p) if ans.blocked.is_none() => serde_json::to_value(p),
                    _ => serde_json::to_value(serde_json::json!({ "generation": ans.message })),
                }?;
                v["safety"] = serde_json::json!({
                    "blocked": ans.blocked.as_ref().map(|b| b.stage),
                    "categories": ans.blocked.as_ref().map_or(&[][..], |b| &b.verdict.categories[..]),
                    "unsafe_probability": ans.blocked.as_ref().map(|b| b.verdict.unsafe_probability),
                    "checks": ans.checks.len(),
                });
                Ok(v)
            })
            .collect::<Result<_, serde_json::Error>>()?;
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for (dialog, ans) in dialogs.iter().zip(&answers) {
        for m in dialog {
            println!("{}: {}\n", m.role.as_str(), m.content);
        }
        if let Some(b) = &ans.blocked {
            eprintln!(
                "safety: {} blocked: {}",
                b.stage.as_str(),
                guard::describe(&b.verdict)
            );
        }
        println!("> {}: {}", ans.message.role.as_str(), ans.message.content);
        println!("\n==================================\n");
    }
    Ok(())
}

fn interactive(a: ChatArgs) -> Result<()> {
    if a.sampling.json {
        usage!("--json needs --dialogs or a MESSAGE");
    }
    let llama = load(&a.model, 1)?;
    let opts = a.sampling.options(&llama);
    let guard = a.guard.load(&llama)?;
    let mut dialog: Dialog = Vec::new();
    if let Some(s) = &a.system {
        dialog.push(Message::new(Role::System, s.clone()));
    }
    let tty = std::io::stdin().is_terminal();
    let mut stdin = std::io::stdin().lock();
    let mut out = std::io::stdout();
    let mut buf = Vec::new();
    loop {
        if tty {
            print!("you> ");
            out.flush()?;
        }
        // One line of at most MAX_INPUT_LINE bytes: `/dev/zero` is no endless line.
        buf.clear();
        let n = (&mut stdin)
            .take(MAX_INPUT_LINE + 2)
            .read_until(b'\n', &mut buf)
            .context("reading standard input")?;
        if n == 0 {
            break;
        }
        if buf.strip_suffix(b"\n").unwrap_or(&buf).len() as u64 > MAX_INPUT_LINE {
            usage!(
                "a line of standard input is longer than {} MiB",
                MAX_INPUT_LINE >> 20
            );
        }
        let Ok(line) = String::from_utf8(std::mem::take(&mut buf)) else {
            usage!("standard input is not UTF-8 text");
        };
        let line = line.trim_end_matches(['\n', '\r']).to_string();
        if line.trim().is_empty() {
            continue;
        }
        dialog.push(Message::new(Role::User, line));
        if tty {
            print!("assistant> ");
        }
        // Each turn's prompt starts with the last one's tokens, still in the engine's KV
        // slot: only the new message is prefilled.
        let mut print = |delta: &str| {
            print!("{delta}");
            let _ = std::io::stdout().flush();
            ControlFlow::Continue(())
        };
        let answer = match &guard {
            None => llama
                .chat_completion_stream(&dialog, &opts, &mut print)
                .map(|p| (p.generation, None, Vec::new())),
            Some(g) => llama2::safety::guarded_chat(&llama, g, &dialog, &opts, &mut print)
                .map(|ans| (ans.message, ans.blocked, ans.checks)),
        };
        println!();
        let chat_ran =
            !matches!(&answer, Ok((_, Some(b), _)) if b.stage == llama2::safety::Stage::Prompt);
        if chat_ran {
            a.sampling.report(&llama);
        }
        match answer {
            Ok((message, blocked, checks)) => {
                if a.sampling.stats && !checks.is_empty() {
                    eprintln!("{}", guard::stats_line(&checks));
                }
                match blocked {
                    // A blocked turn leaves the history as it was.
                    Some(b) => {
                        eprintln!(
                            "safety: {} blocked: {}",
                            b.stage.as_str(),
                            guard::describe(&b.verdict)
                        );
                        dialog.pop();
                    }
                    None => dialog.push(message),
                }
            }
            Err(e) => {
                // Keep the session alive (e.g. the history outgrew the context).
                eprintln!("error: {e}");
                dialog.pop();
            }
        }
    }
    Ok(())
}

fn convert(a: ConvertArgs) -> Result<()> {
    use llama2::tensor::DType;
    let dtype = match a.weight_type {
        WeightType::F32 => DType::F32,
        WeightType::F16 => DType::F16,
        WeightType::Q8_0 => DType::Q8_0,
        WeightType::Q4_0 => DType::Q4_0,
    };
    match (a.random, &a.model, &a.tokenizer) {
        (Some(shape), _, Some(tok)) => {
            let json = match shape {
                RandomShape::Llama7B => r#"{"dim": 4096, "n_layers": 32, "n_heads": 32}"#,
                RandomShape::Llama13B => r#"{"dim": 5120, "n_layers": 40, "n_heads": 40}"#,
                RandomShape::Llama32_1B => {
                    r#"{"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8,
                        "ffn_dim_multiplier": 1.5, "multiple_of": 256, "rope_theta": 500000.0,
                        "use_scaled_rope": true, "rope_scaling_factor": 32.0}"#
                }
            };
            let args = llama2::ModelArgs::from_json(json)?;
            let tokenizer = Tokenizer::from_file(tok)?;
            let tied = matches!(shape, RandomShape::Llama32_1B);
            llama2::convert::write_random_gguf(&args, &tokenizer, dtype, &a.out, 1, tied)?;
        }
        (None, Some(model), _) => {
            let model = llama2::load_model(model, a.tokenizer.as_deref())?;
            llama2::convert::convert_to_gguf(&model, &a.out, dtype)?;
        }
        _ => usage!("give --model, or --random with --tokenizer"),
    }
    let size = std::fs::metadata(&a.out).map_or(0, |m| m.len());
    eprintln!(
        "wrote {} ({:.1} MiB)",
        a.out.display(),
        size as f64 / (1 << 20) as f64
    );
    Ok(())
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let tok = Tokenizer::from_file(&a.tokenizer)?;
    if a.decode {
        let ids: Vec<u32> = serde_json::from_str(&a.input)
            .context("--decode expects a JSON list of non-negative token ids")?;
        println!("{}", tok.decode(&ids)?);
    } else {
        println!(
            "{}",
            serde_json::to_string(&tok.encode(&a.input, a.bos, a.eos))?
        );
    }
    Ok(())
}
