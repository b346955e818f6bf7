//! `bench --sample`: greedy-decode a short answer with the tokenizer stored in the GGUF, so a
//! user sees the weights are real. `gpt2` vocabularies go through candle's converter;
//! SentencePiece (`llama`) vocabularies, used by Gemma, TinyLlama and Mistral, are converted
//! here from the GGUF's tokens and scores.

use super::model::{Model, UBATCH};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// llama.cpp's token types.
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

enum Vocabulary {
    Bpe(Box<tokenizers::Tokenizer>),
    SentencePiece(SentencePiece),
}

struct Tokenizer {
    vocabulary: Vocabulary,
    tokens: Vec<String>,
    types: Vec<i64>,
    bos: Option<u32>,
    add_bos: bool,
}

struct SentencePiece {
    index: HashMap<String, u32>,
    scores: Vec<f32>,
    add_space_prefix: bool,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(|v| v.to_vec().ok())
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.to_string().ok().cloned())
                .collect()
        })
        .unwrap_or_default()
}

fn numbers(v: Option<&Value>) -> Vec<f64> {
    v.and_then(|v| v.to_vec().ok())
        .map(|items| {
            items
                .iter()
                .map(|i| match i {
                    Value::F32(x) => f64::from(*x),
                    Value::I32(x) => f64::from(*x),
                    Value::U32(x) => f64::from(*x),
                    _ => 0.0,
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Tokenizer {
    fn from_gguf(content: &gguf_file::Content) -> anyhow::Result<Tokenizer> {
        let md = &content.metadata;
        let kind = md
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let tokens = strings(md.get("tokenizer.ggml.tokens"));
        let types: Vec<i64> = numbers(md.get("tokenizer.ggml.token_type"))
            .into_iter()
            .map(|t| t as i64)
            .collect();
        let flag = |key: &str, default: bool| {
            md.get(key)
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(default)
        };
        let vocabulary = match kind.as_str() {
            "gpt2" => Vocabulary::Bpe(Box::new(
                tokenizers::Tokenizer::from_gguf(content).map_err(|e| anyhow::anyhow!("{e}"))?,
            )),
            "llama" => Vocabulary::SentencePiece(SentencePiece {
                index: tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect(),
                scores: numbers(md.get("tokenizer.ggml.scores")).into_iter().map(|s| s as f32).collect(),
                add_space_prefix: flag("tokenizer.ggml.add_space_prefix", true),
            }),
            other => anyhow::bail!("--sample: tokenizer `{other}` is not supported; gpt2 and llama (SentencePiece) are"),
        };
        Ok(Tokenizer {
            vocabulary,
            bos: md
                .get("tokenizer.ggml.bos_token_id")
                .and_then(|v| v.to_u32().ok()),
            // llama.cpp adds BOS by default for SentencePiece vocabularies.
            add_bos: flag("tokenizer.ggml.add_bos_token", kind == "llama"),
            tokens,
            types,
        })
    }

    fn is_special(&self, id: usize) -> bool {
        matches!(
            self.types.get(id),
            Some(&TYPE_CONTROL) | Some(&TYPE_USER_DEFINED)
        )
    }

    fn id_of(&self, token: &str) -> Option<u32> {
        self.tokens
            .iter()
            .position(|t| t == token)
            .map(|i| i as u32)
    }

    /// Special tokens spelled in the text (`<|im_start|>`) become their ids; the text between
    /// is encoded by the vocabulary.
    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let specials: Vec<(usize, &str)> = (0..self.tokens.len())
            .filter(|i| self.is_special(*i) && self.tokens[*i].len() > 1)
            .map(|i| (i, self.tokens[i].as_str()))
            .collect();
        let mut ids = Vec::new();
        if self.add_bos {
            ids.extend(self.bos);
        }
        let mut rest = text;
        while !rest.is_empty() {
            let next = specials
                .iter()
                .filter_map(|(id, s)| rest.find(s).map(|at| (at, *id, s.len())))
                .min_by_key(|(at, _, len)| (*at, usize::MAX - len));
            let (segment, special) = match next {
                Some((at, id, len)) => {
                    let segment = &rest[..at];
                    rest = &rest[at + len..];
                    (segment, Some(id as u32))
                }
                None => (std::mem::take(&mut rest), None),
            };
            if !segment.is_empty() {
                ids.extend(self.encode_plain(segment)?);
            }
            ids.extend(special);
        }
        Ok(ids)
    }

    fn encode_plain(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        match &self.vocabulary {
            Vocabulary::Bpe(tokenizer) => {
                let encoding = tokenizer
                    .encode(text, false)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut ids = encoding.get_ids().to_vec();
                // candle's byte-level pipeline adds a space llama.cpp does not; undo it.
                if !text.starts_with(' ') {
                    if let Some(first) = ids
                        .first()
                        .and_then(|id| self.tokens.get(*id as usize))
                        .cloned()
                    {
                        if let Some(stripped) = first.strip_prefix('Ġ') {
                            match (stripped.is_empty(), self.id_of(stripped)) {
                                (true, _) => {
                                    ids.remove(0);
                                }
                                (false, Some(id)) => ids[0] = id,
                                (false, None) => {}
                            }
                        }
                    }
                }
                Ok(ids)
            }
            Vocabulary::SentencePiece(spm) => Ok(spm.encode(text)),
        }
    }

    fn decode(&self, ids: &[u32]) -> String {
        match &self.vocabulary {
            Vocabulary::Bpe(tokenizer) => tokenizer.decode(ids, true).unwrap_or_default(),
            Vocabulary::SentencePiece(_) => {
                let mut bytes = Vec::new();
                for &id in ids {
                    let id = id as usize;
                    let piece = self.tokens.get(id).map(String::as_str).unwrap_or("");
                    if self.types.get(id) == Some(&TYPE_BYTE) {
                        let hex = piece.trim_start_matches("<0x").trim_end_matches('>');
                        bytes.extend(u8::from_str_radix(hex, 16).ok());
                    } else if !self.is_special(id) {
                        bytes.extend(piece.replace('▁', " ").as_bytes());
                    }
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }
}

impl SentencePiece {
    /// SentencePiece BPE: start from characters and keep merging the adjacent pair whose
    /// merge is the highest-scoring piece in the vocabulary; what is left unknown falls back
    /// to byte tokens.
    fn encode(&self, text: &str) -> Vec<u32> {
        let mut normalized = text.replace(' ', "▁");
        if self.add_space_prefix && !normalized.starts_with('▁') {
            normalized.insert(0, '▁');
        }
        let mut symbols: Vec<String> = normalized.chars().map(String::from).collect();
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, pair)| {
                    let merged = format!("{}{}", pair[0], pair[1]);
                    let id = *self.index.get(&merged)?;
                    Some((
                        i,
                        merged,
                        self.scores.get(id as usize).copied().unwrap_or(0.0),
                    ))
                })
                .max_by(|a, b| a.2.total_cmp(&b.2).then(b.0.cmp(&a.0)));
            let Some((i, merged, _)) = best else { break };
            symbols[i] = merged;
            symbols.remove(i + 1);
        }
        symbols
            .iter()
            .flat_map(|s| match self.index.get(s) {
                Some(id) => vec![*id],
                None => s
                    .bytes()
                    .filter_map(|b| self.index.get(&format!("<0x{b:02X}>")).copied())
                    .collect(),
            })
            .collect()
    }
}

const QUESTION: &str = "What is the capital of France?";

/// An instruct model (its GGUF carries a chat template) gets the question in its own chat
/// format; a base model gets the start of a sentence to complete.
fn prompt_text(tokenizer: &Tokenizer, is_chat: bool) -> String {
    if !is_chat {
        "The capital of France is".to_string()
    } else if tokenizer.id_of("<|im_start|>").is_some() {
        format!("<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    } else if tokenizer.id_of("<start_of_turn>").is_some() {
        format!("<start_of_turn>user\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n")
    } else {
        QUESTION.to_string()
    }
}

/// The prompt and up to `max_tokens` of the greedy answer.
pub fn answer(path: &Path, max_tokens: usize) -> anyhow::Result<(String, String)> {
    let mut file =
        std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let eos = content
        .metadata
        .get("tokenizer.ggml.eos_token_id")
        .and_then(|v| v.to_u32().ok());
    let stops: Vec<u32> = ["<|im_end|>", "<end_of_turn>"]
        .iter()
        .filter_map(|t| tokenizer.id_of(t))
        .chain(eos)
        .collect();
    let device = Device::Cpu;
    let is_chat = content.metadata.contains_key("tokenizer.chat_template");
    let text = prompt_text(&tokenizer, is_chat);
    let prompt = tokenizer.encode(&text)?;
    if prompt.is_empty() {
        anyhow::bail!(
            "{}: --sample: the tokenizer encoded the prompt to nothing",
            path.display()
        );
    }
    let mut model = Model::load(path, &device, prompt.len() + max_tokens)?;
    let mut logits = model.prefill(&prompt, 0, UBATCH, &device)?;
    let mut answer = Vec::new();
    for pos in prompt.len()..prompt.len() + max_tokens {
        let next = logits.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        if stops.contains(&next) {
            break;
        }
        answer.push(next);
        logits = model.forward(&Tensor::new(&[next], &device)?.unsqueeze(0)?, pos)?;
    }
    let shown = if is_chat {
        "What is the capital of France?".to_string()
    } else {
        text
    };
    Ok((shown, tokenizer.decode(&answer).trim().to_string()))
}
