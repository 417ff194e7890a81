//! `--guard`: a Llama Guard classifier around `chat` and `serve`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use llama2::safety::{Category, Guard, GuardFormat, GuardOptions, Verdict};
use llama2::Llama;

/// Most bytes of a `--guard-categories` file.
const MAX_CATEGORIES_FILE: u64 = 1 << 20;

/// Safety classifier options.
#[derive(Args, Clone, Debug)]
pub struct GuardArgs {
    /// Llama Guard model (1, 2, 3 8B or 3 1B; any layout --model takes) that judges the
    /// user's message before the chat model runs and the answer (every 64 tokens while
    /// streaming, and once complete); unsafe ones are replaced by a fixed refusal.
    #[arg(long, value_name = "MODEL")]
    pub guard: Option<PathBuf>,
    /// The guard's prompt format, instead of the file's template (or, for a file without
    /// one, instead of the guess from the model): lg1, lg2, lg3, lg3-1b.
    #[arg(long, value_name = "FORMAT", requires = "guard", value_parser = parse_format)]
    pub guard_format: Option<GuardFormat>,
    /// Call a message unsafe when P(unsafe) at the guard's first answer token reaches
    /// this (0..1; default: the guard's own answer decides).
    #[arg(long, value_name = "P", requires = "guard")]
    pub guard_threshold: Option<f32>,
    /// Category codes to leave out of the guard's policy (comma-separated, e.g. S6,S7).
    #[arg(long, value_name = "CODES", requires = "guard", value_delimiter = ',')]
    pub guard_exclude: Vec<String>,
    /// JSON file replacing the guard's categories: a list of {"code", "name"} or an
    /// object {"S1": "Violent Crimes", ...}.
    #[arg(long, value_name = "FILE", requires = "guard")]
    pub guard_categories: Option<PathBuf>,
}

fn parse_format(s: &str) -> Result<GuardFormat, String> {
    GuardFormat::parse(s)
        .ok_or_else(|| format!("unknown guard format {s:?} (lg1, lg2, lg3, lg3-1b)"))
}

fn read_categories(path: &Path) -> Result<Vec<Category>> {
    let text = crate::read_input_file(path, MAX_CATEGORIES_FILE)?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let cats: Vec<Category> = match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(code, name)| {
                let name = name.as_str().map(str::to_string).with_context(|| {
                    format!(
                        "{}: category {code}: the name must be a string",
                        path.display()
                    )
                })?;
                Ok(Category { code, name })
            })
            .collect::<Result<_>>()?,
        other => serde_json::from_value(other).with_context(|| {
            format!(
                "{}: expected a list of {{\"code\", \"name\"}} or an object",
                path.display()
            )
        })?,
    };
    if cats.is_empty() || cats.len() > 64 {
        usage!(
            "{}: between 1 and 64 categories, got {}",
            path.display(),
            cats.len()
        );
    }
    Ok(cats)
}

impl GuardArgs {
    /// The guard's path and options (no pool yet), if `--guard` was given.
    pub fn options(&self) -> Result<Option<(PathBuf, GuardOptions)>> {
        let Some(path) = &self.guard else {
            return Ok(None);
        };
        let categories = self
            .guard_categories
            .as_ref()
            .map(|p| read_categories(p))
            .transpose()?;
        Ok(Some((
            path.clone(),
            GuardOptions {
                format: self.guard_format,
                threshold: self.guard_threshold,
                excluded: self.guard_exclude.clone(),
                categories,
                max_seq_len: None,
                threads: None,
                pool: None,
            },
        )))
    }

    /// Loads the guard on the chat model's worker pool, if `--guard` was given.
    pub fn load(&self, chat: &Llama) -> Result<Option<Guard>> {
        let Some((path, options)) = self.options()? else {
            return Ok(None);
        };
        let options = GuardOptions {
            pool: Some(chat.engine().pool()),
            // The chat model's whole context plus the classifier's instructions.
            max_seq_len: Some(chat.max_seq_len().saturating_add(1024)),
            ..options
        };
        let guard = Guard::open(&path, options)?;
        Ok(Some(guard))
    }
}

/// One line about a blocking verdict: `S1 (Violent Crimes), S10 (Hate); P(unsafe) 0.98`.
pub fn describe(v: &Verdict) -> String {
    let cats: Vec<String> = v
        .categories
        .iter()
        .map(|c| {
            if c.name.is_empty() {
                c.code.clone()
            } else {
                format!("{} ({})", c.code, c.name)
            }
        })
        .collect();
    let cats = if cats.is_empty() {
        "no category given".to_string()
    } else {
        cats.join(", ")
    };
    format!("{cats}; P(unsafe) {:.3}", v.unsafe_probability)
}

/// `--stats` line for the checks of a turn.
pub fn stats_line(checks: &[Verdict]) -> String {
    let total: f64 = checks.iter().map(|v| v.elapsed.as_secs_f64()).sum();
    let per: Vec<String> = checks
        .iter()
        .map(|v| {
            format!(
                "{} tokens {:.1} ms",
                v.prompt_tokens,
                v.elapsed.as_secs_f64() * 1e3
            )
        })
        .collect();
    format!(
        "guard: {} check{} in {:.1} ms ({})",
        checks.len(),
        if checks.len() == 1 { "" } else { "s" },
        total * 1e3,
        per.join(", ")
    )
}
