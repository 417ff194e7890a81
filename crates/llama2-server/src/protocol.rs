//! OpenAI's request shapes as the server reads them, and the checks that turn one into
//! engine settings. Unknown fields are ignored; a field of the wrong type is a 400 that
//! names it (`serde_path_to_error`).

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// Parses a JSON body; a syntax or type error is a 400 naming the field.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    parse_value(&value)
}

/// Reads `T` out of a parsed body, naming the field of a type error.
pub fn parse_value<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad_request(format!("invalid request: {inner}"))
        } else {
            ApiError::invalid_param(path.clone(), format!("invalid value for `{path}`: {inner}"))
        }
    })
}

/// Parses a generation request: its own fields and the shared sampling fields.
pub fn parse_generation<T: DeserializeOwned>(body: &[u8]) -> Result<(T, SamplingFields), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    Ok((parse_value(&value)?, parse_value(&value)?))
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the request's token counts.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The sampling fields chat and completions share.
#[derive(Debug, Default, Deserialize)]
pub struct SamplingFields {
    /// Most tokens to generate.
    pub max_tokens: Option<i64>,
    /// Chat's newer name for `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    /// Softmax temperature, 0..=2.
    pub temperature: Option<f64>,
    /// Nucleus mass, (0, 1].
    pub top_p: Option<f64>,
    /// Sampler seed.
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Option<StopField>,
    /// Choices per prompt.
    pub n: Option<i64>,
    /// Stream Server-Sent Events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Keep generating through end-of-sequence tokens (vLLM's extension).
    pub ignore_eos: Option<bool>,
}

/// A checked set of sampling settings.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// Most tokens to generate, when the client set it.
    pub max_tokens: Option<usize>,
    /// Temperature.
    pub temperature: f32,
    /// Nucleus mass.
    pub top_p: f32,
    /// Seed, when the client set it.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Choices per prompt.
    pub n: usize,
    /// Stream the answer.
    pub stream: bool,
    /// Send the usage chunk when streaming.
    pub include_usage: bool,
    /// Ignore end-of-sequence tokens.
    pub ignore_eos: bool,
}

/// Limits a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Context per slot.
    pub ctx: usize,
    /// Slots (the most choices in one request).
    pub slots: usize,
}

impl SamplingFields {
    /// Checks ranges. Defaults are OpenAI's: temperature 1, top_p 1, n 1.
    pub fn check(&self, limits: Limits) -> Result<Sampling, ApiError> {
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => Some(("max_completion_tokens", m)),
            (None, Some(m)) => Some(("max_tokens", m)),
            (None, None) => None,
        };
        let max_tokens = match max_tokens {
            None => None,
            Some((name, m)) if m < 1 || m as u64 > limits.ctx as u64 => {
                return Err(ApiError::invalid_param(
                    name,
                    format!(
                        "`{name}` must be between 1 and the context size {}, got {m}",
                        limits.ctx
                    ),
                ))
            }
            Some((_, m)) => Some(m as usize),
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid_param(
                "temperature",
                format!("`temperature` must be between 0 and 2, got {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid_param(
                "top_p",
                format!("`top_p` must be in (0, 1], got {top_p}"),
            ));
        }
        let n = self.n.unwrap_or(1);
        if n < 1 || n as u64 > limits.slots as u64 {
            return Err(ApiError::invalid_param(
                "n",
                format!(
                    "`n` must be between 1 and the server's {} slots, got {n}",
                    limits.slots
                ),
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
        if stop.len() > llama2::engine::MAX_STOP_STRINGS {
            return Err(ApiError::invalid_param(
                "stop",
                format!(
                    "at most {} stop strings, got {}",
                    llama2::engine::MAX_STOP_STRINGS,
                    stop.len()
                ),
            ));
        }
        if stop
            .iter()
            .any(|s| s.len() > llama2::engine::MAX_STOP_BYTES)
        {
            return Err(ApiError::invalid_param(
                "stop",
                format!(
                    "stop strings are limited to {} bytes",
                    llama2::engine::MAX_STOP_BYTES
                ),
            ));
        }
        Ok(Sampling {
            max_tokens,
            temperature: temperature as f32,
            top_p: top_p as f32,
            // Any 64-bit pattern is a seed; negative seeds are their two's complement.
            seed: self.seed.map(|s| s as u64),
            stop,
            n: n as usize,
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            ignore_eos: self.ignore_eos.unwrap_or(false),
        })
    }
}

/// A message's `content`: a string, or a list of parts of which only text is read.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// `text` (images and audio are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// One chat message as sent.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// `system` (or `developer`), `user` or `assistant`.
    pub role: String,
    /// The text; `null` reads as empty.
    pub content: Option<MessageContent>,
}

/// `POST /v1/chat/completions` (besides [`SamplingFields`]).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Report each token's log-probability.
    pub logprobs: Option<bool>,
    /// And this many alternatives (0..=20).
    pub top_logprobs: Option<i64>,
}

/// `prompt` of a completion: text, texts, token ids, or lists of ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Ids(Vec<u32>),
    /// Several prompts as token ids.
    IdLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions` (besides [`SamplingFields`]).
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// The prompt(s).
    pub prompt: PromptField,
    /// Report log-probabilities with this many alternatives (0..=20).
    pub logprobs: Option<i64>,
    /// Return the prompt before the completion.
    pub echo: Option<bool>,
}

/// `POST /tokenize` (llama-server's `content` or vLLM's `prompt`).
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    /// Text to encode (llama-server's name).
    pub content: Option<String>,
    /// Text to encode (vLLM's name).
    pub prompt: Option<String>,
    /// Add the model's BOS token (default true).
    pub add_special: Option<bool>,
}

/// `POST /detokenize`.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    /// Token ids.
    pub tokens: Vec<u32>,
}

/// Checks `top_logprobs`-style counts (0..=20).
pub fn check_top_logprobs(name: &str, v: Option<i64>) -> Result<usize, ApiError> {
    let max = llama2::engine::MAX_TOP_LOGPROBS as i64;
    match v {
        None => Ok(0),
        Some(k) if (0..=max).contains(&k) => Ok(k as usize),
        Some(k) => Err(ApiError::invalid_param(
            name,
            format!("`{name}` must be between 0 and {max}, got {k}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { ctx: 100, slots: 4 };

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse_body::<ChatRequest>(br#"{"messages": [{"role": "user", "content": 5}]}"#)
            .unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        let e = parse_generation::<ChatRequest>(br#"{"messages": [], "max_tokens": "ten"}"#)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = parse_body::<ChatRequest>(b"{not json").unwrap_err();
        assert!(e.message.starts_with("invalid JSON"), "{}", e.message);
    }

    #[test]
    fn unknown_fields_are_ignored_and_stop_takes_both_shapes() {
        let (_, s): (ChatRequest, _) = parse_generation(
            br#"{"messages": [], "frequency_penalty": 0, "user": "x", "stop": "END"}"#,
        )
        .unwrap();
        assert_eq!(s.check(LIMITS).unwrap().stop, vec!["END"]);
        let (_, s): (ChatRequest, _) =
            parse_generation(br#"{"messages": [], "stop": ["a", "b"]}"#).unwrap();
        assert_eq!(s.check(LIMITS).unwrap().stop, vec!["a", "b"]);
    }

    #[test]
    fn ranges_are_checked() {
        let check = |json: &str| {
            parse_generation::<ChatRequest>(json.as_bytes())
                .unwrap()
                .1
                .check(LIMITS)
        };
        assert_eq!(
            check(r#"{"messages": [], "max_tokens": -1}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("max_tokens")
        );
        assert!(check(r#"{"messages": [], "max_tokens": 101}"#).is_err());
        assert_eq!(
            check(r#"{"messages": [], "max_tokens": 100}"#)
                .unwrap()
                .max_tokens,
            Some(100)
        );
        assert!(check(r#"{"messages": [], "max_completion_tokens": 0}"#).is_err());
        assert!(check(r#"{"messages": [], "temperature": 2.5}"#).is_err());
        assert!(check(r#"{"messages": [], "top_p": 0}"#).is_err());
        assert!(check(r#"{"messages": [], "n": 5}"#).is_err());
        assert_eq!(check(r#"{"messages": [], "n": 4}"#).unwrap().n, 4);
        let many = serde_json::json!({"messages": [], "stop": vec!["x"; 17]}).to_string();
        assert!(check(&many).is_err());
        assert!(check_top_logprobs("top_logprobs", Some(21)).is_err());
        assert_eq!(check_top_logprobs("top_logprobs", Some(20)).unwrap(), 20);
    }

    #[test]
    fn prompts_take_all_four_shapes() {
        for (json, want) in [
            (r#"{"prompt": "hi"}"#, "Text"),
            (r#"{"prompt": ["a", "b"]}"#, "Texts"),
            (r#"{"prompt": [1, 2]}"#, "Ids"),
            (r#"{"prompt": [[1], [2, 3]]}"#, "IdLists"),
        ] {
            let r: CompletionRequest = parse_body(json.as_bytes()).unwrap();
            let got = match r.prompt {
                PromptField::Text(_) => "Text",
                PromptField::Texts(_) => "Texts",
                PromptField::Ids(_) => "Ids",
                PromptField::IdLists(_) => "IdLists",
            };
            assert_eq!(got, want);
        }
        assert!(parse_body::<CompletionRequest>(br#"{"prompt": [-1]}"#).is_err());
    }
}
