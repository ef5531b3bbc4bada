//! Text in and out: the chat prompt as token ids, and generated ids back to UTF-8 text.
//!
//! The prompt is assembled from token ids: the template's special tokens are inserted by id and
//! message text is encoded with special-token parsing off, so a message containing
//! `<|im_end|>` cannot forge a turn. (Added tokens already split the text, so encoding the pieces
//! gives the same ids as encoding the rendered template string in one go.)
//!
//! Output is byte-level BPE: a token may end in the middle of a UTF-8 character. [`Utf8Stream`]
//! holds incomplete bytes back so every streamed delta is valid text.

use std::collections::HashSet;
use std::path::Path;

use tokenizers::Tokenizer;

use super::manifest::{unavailable, ChatTemplate};
use crate::error::{Error, Result};
use crate::request::{Message, Role};

/// Tokenizer plus what generation needs around it. `Send + Sync`.
pub(crate) struct TextCodec {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    turn_start: u32,
    turn_end: u32,
    /// Bytes of each token id (empty for special tokens, which print nothing).
    token_bytes: Vec<Vec<u8>>,
    /// The tokenizer's special tokens (`<|im_start|>`, `<|endoftext|>`, ...).
    specials: HashSet<u32>,
}

/// GPT-2's byte-level alphabet: the char each byte is written as in the vocabulary.
fn byte_level_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            u32::from(b)
        } else {
            n += 1;
            255 + n
        };
        table[usize::from(b)] = char::from_u32(c).unwrap_or('\0');
    }
    table
}

impl TextCodec {
    pub(crate) fn load(path: &Path, template: ChatTemplate, vocab_size: usize) -> Result<Self> {
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| unavailable(path, format!("invalid tokenizer: {e}")))?;
        tokenizer.set_encode_special_tokens(true);
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| unavailable(path, format!("the tokenizer has no `{t}` token")))
        };
        let turn_start = id(&template.turn_start)?;
        let turn_end = id(&template.turn_end)?;

        let mut byte_of = std::collections::HashMap::new();
        for (b, c) in byte_level_chars().iter().enumerate() {
            byte_of.insert(*c, b as u8);
        }
        let specials: HashSet<u32> = tokenizer
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        let mut token_bytes = vec![Vec::new(); vocab_size.max(tokenizer.get_vocab_size(true))];
        for (token, id) in tokenizer.get_vocab(true) {
            if specials.contains(&id) {
                continue;
            }
            let mut bytes = Vec::with_capacity(token.len());
            for c in token.chars() {
                match byte_of.get(&c) {
                    Some(b) => bytes.push(*b),
                    None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            if let Some(slot) = token_bytes.get_mut(id as usize) {
                *slot = bytes;
            }
        }
        Ok(TextCodec {
            tokenizer,
            template,
            turn_start,
            turn_end,
            token_bytes,
            specials,
        })
    }

    fn encode_text(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Inference(format!("tokenization failed: {e}")))?;
        out.extend_from_slice(enc.get_ids());
        Ok(())
    }

    /// The ChatML prompt for `messages`, ending with the assistant header. When the conversation
    /// does not start with a system message, the model's default system prompt is used (as its
    /// own template does; replies are better calibrated with it).
    pub(crate) fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        if messages.is_empty() {
            return Err(Error::InvalidRequest("no messages".into()));
        }
        let mut ids = Vec::with_capacity(64);
        let turn = |ids: &mut Vec<u32>, role: &str, content: &str| -> Result<()> {
            ids.push(self.turn_start);
            self.encode_text(&format!("{role}\n{content}"), ids)?;
            ids.push(self.turn_end);
            self.encode_text("\n", ids)
        };
        if messages[0].role != Role::System {
            turn(&mut ids, "system", &self.template.default_system)?;
        }
        for m in messages {
            turn(&mut ids, m.role.as_str(), &m.content)?;
        }
        ids.push(self.turn_start);
        self.encode_text("assistant\n", &mut ids)?;
        Ok(ids)
    }

    /// Whether `id` is one of the tokenizer's special tokens. A reply never contains one: a
    /// generated `<|im_start|>` means the model has begun a turn of its own.
    pub(crate) fn is_special(&self, id: u32) -> bool {
        self.specials.contains(&id)
    }

    /// The bytes a token prints (nothing for special tokens and unknown ids).
    pub(crate) fn bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// Turns a byte stream into valid UTF-8 text chunks, holding back an incomplete trailing character.
#[derive(Debug, Default)]
pub(crate) struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes; returns the text that is complete so far (possibly empty). Invalid sequences
    /// become U+FFFD, like a lossy decode of the whole reply.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid + bad;
                        }
                        None => {
                            start = valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Forgets the bytes of an incomplete character (an answer cut short in the middle of it).
    pub(crate) fn cut(&mut self) {
        self.pending.clear();
    }

    /// Whatever is left at the end (an incomplete character becomes U+FFFD).
    pub(crate) fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_is_a_bijection() {
        let t = byte_level_chars();
        let set: HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(t[usize::from(b' ')], 'Ġ');
        assert_eq!(t[usize::from(b'\n')], 'Ċ');
        assert_eq!(t[usize::from(b'a')], 'a');
    }

    #[test]
    fn utf8_stream_holds_back_split_characters() {
        let text = "é€😀";
        let mut s = Utf8Stream::default();
        let mut chunks = Vec::new();
        for b in text.as_bytes() {
            chunks.push(s.push(&[*b]));
        }
        // A character comes out whole with its last byte; the bytes before it yield nothing.
        assert_eq!(
            chunks,
            ["", "é", "", "", "€", "", "", "", "😀"].map(String::from)
        );
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn utf8_stream_replaces_invalid_bytes_like_lossy_decode() {
        let mut s = Utf8Stream::default();
        let mut out = s.push(&[b'a', 0xFF, b'b', 0xE2, 0x82]);
        out.push_str(&s.finish());
        assert_eq!(
            out,
            String::from_utf8_lossy(&[b'a', 0xFF, b'b', 0xE2, 0x82])
        );
    }
}
