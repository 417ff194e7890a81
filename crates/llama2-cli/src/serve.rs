//! `llama2 serve`: flags, then the server of `llama2-server` on a tokio runtime.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use llama2_server::ServerConfig;

use crate::{KvTypeArg, TemplateArg};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    guard: crate::guard::GuardArgs,
    /// Model: a Meta checkpoint folder, a Hugging Face folder or a .gguf file
    /// (default: SmolLM2-135M-Instruct, fetched on first use).
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// Tokenizer file when it is not beside the model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Address to bind (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Slots: requests decoded together (llama-server's `-np` works too).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Context (prompt + answer) of each slot; default: the model's, at most 4096.
    #[arg(long, short = 'c')]
    ctx_size: Option<usize>,
    /// Worker threads (default: the physical cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Requests that may wait for a slot; beyond them new requests get 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// API key clients must send as `Authorization: Bearer KEY` (all routes but /health).
    #[arg(long, conflicts_with = "api_key_file")]
    api_key: Option<String>,
    /// File holding the API key (first line), so it stays out of the process list.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Chat format: the model's own template (auto), Llama 2's, or ChatML.
    #[arg(long, value_enum, default_value_t = TemplateArg::Auto)]
    template: TemplateArg,
    /// KV cache type (default: f16 for quantized models, f32 otherwise).
    #[arg(long, value_enum)]
    kv_type: Option<KvTypeArg>,
    /// Most tokens per engine step: every running request's next token, then pieces of
    /// waiting prompts (smaller steps: steadier token times, later first tokens).
    #[arg(long, short = 'b', default_value_t = 512)]
    step_tokens: usize,
    /// Model name in answers and /v1/models (default: the file's stem).
    #[arg(long)]
    alias: Option<String>,
    /// Largest request body in bytes (at most 1 GiB).
    #[arg(long, default_value_t = llama2_server::DEFAULT_BODY_LIMIT as u64,
          value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    max_body: u64,
    /// Seconds to wait for open responses after SIGTERM or Ctrl-C (at most a day).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    shutdown_grace: u64,
}

pub fn run(a: ServeArgs) -> Result<()> {
    if a.parallel == 0 {
        usage!("--parallel must be at least 1");
    }
    if a.step_tokens == 0 {
        usage!("--step-tokens must be at least 1");
    }
    let api_key = match (&a.api_key, &a.api_key_file) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(f)) => {
            // A key file is a line: at most 4 KiB (`/dev/zero` is not read forever).
            let text = crate::read_input_file(f, 4096)?;
            let key = text.lines().next().unwrap_or("").trim().to_string();
            if key.is_empty() {
                usage!("{} holds no API key", f.display());
            }
            Some(key)
        }
        (None, None) => None,
    };
    if api_key.as_deref().is_some_and(str::is_empty) {
        usage!("--api-key is empty");
    }
    // A key travels in an HTTP header: visible ASCII only, or no client could send it.
    if api_key
        .as_deref()
        .is_some_and(|k| !k.bytes().all(|b| b.is_ascii_graphic()))
    {
        usage!("the API key must be visible ASCII characters (no spaces or control bytes)");
    }
    let model_path = match &a.model {
        Some(p) => p.clone(),
        None => llama2_default_model::path_or_fetch()?,
    };
    let config = ServerConfig {
        model_path,
        tokenizer: a.tokenizer,
        template: a.template.into(),
        ctx_size: a.ctx_size,
        parallel: a.parallel,
        queue: a.queue,
        threads: a.threads,
        kv_type: a.kv_type.map(Into::into),
        step_tokens: Some(a.step_tokens),
        addr: SocketAddr::new(a.host, a.port),
        api_key,
        model_id: a.alias,
        body_limit: a.max_body as usize,
        shutdown_grace: Duration::from_secs(a.shutdown_grace),
        guard: a.guard.options()?,
    };
    // The engine has its own worker threads; HTTP needs only a couple.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("llama2-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let served = rt.block_on(llama2_server::serve(
        config,
        llama2_server::shutdown_signal(),
    ));
    // A model still loading (a stop during the load) is not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    served?;
    eprintln!("llama2 serve: stopped");
    Ok(())
}
