//! One decoder session and its KV cache: run the prompt (prefill), then one token at a time.
//!
//! Graph contract (see `scripts/convert_gguf_to_onnx.py`): input `input_ids` int64 `[1, seq]` and
//! `past_key_values.{i}.key|value` f32 `[1, kv_heads, past, head_dim]`; outputs `logits`
//! f32 `[1, 1, vocab]` (last position) and `present.{i}.key|value`. The present tensors are moved
//! back in as the next step's past without copying.
//!
//! After a generation the keys and values of its prompt stay with the session as a
//! [`PromptKv`]; the next generation whose prompt starts the same way (the same system prompt,
//! or the same conversation one turn later) resumes from them and runs only the rest.

use std::borrow::Cow;
use std::path::Path;

use ort::session::builder::{AutoDevicePolicy, GraphOptimizationLevel};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

use super::manifest::unavailable;
use super::runtime::{error_chain, Runtime};
use crate::error::{Error, Result};

/// The KV cache layout a decoder expects.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KvShape {
    pub(crate) layers: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
}

/// Opens `model` as a session. Every failure (missing, corrupt, truncated external data, wrong
/// graph) is [`Error::ModelUnavailable`] naming the file.
pub(crate) fn open_session(
    rt: &Runtime,
    model: &Path,
    threads: usize,
    spin: bool,
    kv: KvShape,
) -> Result<Session> {
    let fail = |what: &str, e: &dyn std::fmt::Display| unavailable(model, format!("{what}: {e}"));
    let session = Session::builder(&rt.env)
        .map_err(|e| fail("session options", &error_chain(&e)))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| fail("session options", &e))?
        .with_intra_threads(threads.max(1))
        .map_err(|e| fail("session options", &e))?
        .with_inter_threads(1)
        .map_err(|e| fail("session options", &e))?
        .with_intra_op_spinning(spin)
        .map_err(|e| fail("session options", &e))?
        // ort's builder selects devices with the "max efficiency" policy by default; for this
        // CPU-only graph that measured ~35% slower per run than ONNX Runtime's default policy
        // (32-token prefill, 1 thread, interleaved in one process: 209 vs 152 ms).
        .with_auto_device(AutoDevicePolicy::Default)
        .map_err(|e| fail("session options", &e))?
        .commit_from_file(model)
        .map_err(|e| fail("ONNX Runtime cannot load the model", &e))?;
    check_signature(&session, kv).map_err(|reason| unavailable(model, reason))?;
    Ok(session)
}

fn check_signature(session: &Session, kv: KvShape) -> std::result::Result<(), String> {
    let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
    let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    let mut want_in = vec!["input_ids".to_string()];
    let mut want_out = vec!["logits".to_string()];
    for i in 0..kv.layers {
        for k in ["key", "value"] {
            want_in.push(format!("past_key_values.{i}.{k}"));
            want_out.push(format!("present.{i}.{k}"));
        }
    }
    for w in &want_in {
        if !inputs.contains(&w.as_str()) {
            return Err(format!(
                "the graph has no input `{w}` (not an edgeroute KV-cache decoder?)"
            ));
        }
    }
    for w in &want_out {
        if !outputs.contains(&w.as_str()) {
            return Err(format!(
                "the graph has no output `{w}` (not an edgeroute KV-cache decoder?)"
            ));
        }
    }
    // The manifest's architecture must be the graph's: a mismatch would fail in the middle of
    // the first generation with ONNX Runtime's words ("invalid dimensions", "missing input").
    let graph_layers = inputs
        .iter()
        .filter(|n| n.starts_with("past_key_values.") && n.ends_with(".key"))
        .count();
    if graph_layers != kv.layers {
        return Err(format!(
            "the manifest says {} layers, the graph has {graph_layers}: the manifest does not belong to this model",
            kv.layers
        ));
    }
    for input in session.inputs() {
        if !input.name().starts_with("past_key_values.") {
            continue;
        }
        let Some(shape) = input.dtype().tensor_shape() else {
            continue;
        };
        // `[batch, kv_heads, past, head_dim]`; a symbolic dimension is -1.
        for (axis, what, want) in [
            (1, "KV heads", kv.kv_heads),
            (3, "head dimension", kv.head_dim),
        ] {
            match shape.get(axis).copied() {
                Some(d) if d >= 0 && usize::try_from(d).ok() != Some(want) => {
                    return Err(format!(
                        "the manifest says {what} {want}, the graph's `{}` has {d}: the manifest does not belong to this model",
                        input.name()
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Input/output names, built once.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    past: Vec<String>,
    present: Vec<String>,
}

impl Names {
    pub(crate) fn new(layers: usize) -> Self {
        let mut past = Vec::with_capacity(layers * 2);
        let mut present = Vec::with_capacity(layers * 2);
        for i in 0..layers {
            for k in ["key", "value"] {
                past.push(format!("past_key_values.{i}.{k}"));
                present.push(format!("present.{i}.{k}"));
            }
        }
        Names { past, present }
    }
}

fn infer(e: impl std::fmt::Display) -> Error {
    Error::Inference(e.to_string())
}

/// The fewest tokens a prefill run may have. ONNX Runtime's kernels give a run of two or more
/// tokens bit-identical keys, values and logits however the prompt is split between runs (checked
/// on every split of the eight reference prompts, 1 and 2 threads), while a one-token run takes
/// the decode path, whose results differ in the last bits. So a resumed prompt always runs at
/// least this many tokens, and the cache holds only positions computed by such runs.
pub(crate) const MIN_PREFILL: usize = 2;

/// The keys and values of a prompt's first tokens, kept on a pooled session for the next
/// generation (see [`Decoder::into_prompt_kv`] and [`Decoder::resume`]).
pub(crate) struct PromptKv {
    /// The prompt ids whose keys and values can be reused.
    ids: Vec<u32>,
    /// Keys and values, `positions` long: `ids`, possibly followed by decoded tokens.
    past: Vec<DynValue>,
    positions: usize,
}

impl PromptKv {
    /// How many leading tokens of `prompt` can come from here: the common prefix, leaving at
    /// least [`MIN_PREFILL`] tokens to run.
    pub(crate) fn reusable(&self, prompt: &[u32]) -> usize {
        let common = self
            .ids
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        common.min(prompt.len().saturating_sub(MIN_PREFILL))
    }
}

/// The first `keep` positions of a `[1, heads, positions, head_dim]` tensor, copied.
fn truncate(value: &DynValue, keep: usize) -> Result<DynValue> {
    let (shape, data) = value.try_extract_tensor::<f32>().map_err(infer)?;
    let dims: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(0))
        .collect();
    let &[1, heads, positions, head_dim] = dims.as_slice() else {
        return Err(Error::Inference(format!(
            "unexpected KV cache shape {dims:?}"
        )));
    };
    if keep > positions || data.len() != heads * positions * head_dim {
        return Err(Error::Inference(format!(
            "cannot keep {keep} positions of a KV cache shaped {dims:?}"
        )));
    }
    let mut out = Vec::with_capacity(heads * keep * head_dim);
    for head in data.chunks_exact(positions * head_dim) {
        out.extend_from_slice(&head[..keep * head_dim]);
    }
    Ok(
        Tensor::<f32>::from_array(([1usize, heads, keep, head_dim], out))
            .map_err(infer)?
            .into_dyn(),
    )
}

/// A generation in progress on one session.
pub(crate) struct Decoder<'s> {
    session: &'s mut Session,
    names: &'s Names,
    past: Vec<DynValue>,
    logits: Vec<f32>,
    /// Positions consumed so far.
    pub(crate) len: usize,
}

impl<'s> Decoder<'s> {
    pub(crate) fn new(session: &'s mut Session, names: &'s Names, kv: KvShape) -> Result<Self> {
        let mut past = Vec::with_capacity(names.past.len());
        for _ in 0..names.past.len() {
            let empty = Tensor::<f32>::from_array((
                [1usize, kv.kv_heads, 0, kv.head_dim],
                Vec::<f32>::new(),
            ))
            .map_err(infer)?;
            past.push(empty.into_dyn());
        }
        Ok(Decoder {
            session,
            names,
            past,
            logits: Vec::new(),
            len: 0,
        })
    }

    /// A decoder whose cache already holds the first `keep` tokens of `cached` (at most
    /// [`PromptKv::reusable`]); feed it the rest of the prompt.
    pub(crate) fn resume(
        session: &'s mut Session,
        names: &'s Names,
        cached: PromptKv,
        keep: usize,
    ) -> Result<Self> {
        let past = if keep == cached.positions {
            cached.past
        } else {
            cached
                .past
                .iter()
                .map(|v| truncate(v, keep))
                .collect::<Result<Vec<_>>>()?
        };
        Ok(Decoder {
            session,
            names,
            past,
            logits: Vec::new(),
            len: keep,
        })
    }

    /// The keys and values of `prompt`'s first `min(prompt.len(), cap)` tokens (fewer when the
    /// prefill stopped part-way: those it ran), for the next generation on this session; `None`
    /// when there is nothing worth keeping or a failed step lost the cache. `prompt` must be what
    /// this decoder's prefill consumed or began to.
    pub(crate) fn into_prompt_kv(self, prompt: &[u32], cap: usize) -> Result<Option<PromptKv>> {
        let keep = prompt.len().min(cap).min(self.len);
        if keep < MIN_PREFILL || self.past.len() != self.names.past.len() {
            return Ok(None);
        }
        // Decoded positions ride along while the whole cache fits under `cap` (no copy now;
        // the next resume copies only what it reuses); beyond it, keep just the prompt's part.
        let (past, positions) = if self.len <= cap {
            (self.past, self.len)
        } else {
            let past = self
                .past
                .iter()
                .map(|v| truncate(v, keep))
                .collect::<Result<Vec<_>>>()?;
            (past, keep)
        };
        Ok(Some(PromptKv {
            ids: prompt[..keep].to_vec(),
            past,
            positions,
        }))
    }

    /// Feeds a prompt (or the rest of one) in runs of at most `chunk` tokens, calling `between`
    /// after each run but the last, and returns the next-token logits. A prompt is one blocking
    /// ONNX Runtime call per run: running a long one whole would leave cancellation and the
    /// deadline unchecked for as long as it takes (seconds for thousands of tokens). The split
    /// does not change results (see [`MIN_PREFILL`]; no run is shorter than it). When `between`
    /// fails, the positions already run stay in the cache for [`Decoder::into_prompt_kv`].
    pub(crate) fn prefill(
        &mut self,
        ids: &[u32],
        chunk: usize,
        between: &dyn Fn() -> Result<()>,
    ) -> Result<&[f32]> {
        // A run of `chunk + 1` tokens leaves `chunk - 1` and 2, so `chunk` must be at least 3.
        let chunk = chunk.max(MIN_PREFILL + 1);
        let mut rest = ids;
        while rest.len() > chunk {
            let take = if rest.len() - chunk < MIN_PREFILL {
                rest.len() - MIN_PREFILL
            } else {
                chunk
            };
            self.step(&rest[..take])?;
            rest = &rest[take..];
            between()?;
        }
        self.step(rest)
    }

    /// Feeds `ids` (the prompt, or one new token) and returns the next-token logits.
    pub(crate) fn step(&mut self, ids: &[u32]) -> Result<&[f32]> {
        let input: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let input = Tensor::<i64>::from_array(([1usize, input.len()], input)).map_err(infer)?;
        let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(self.past.len() + 1);
        feed.push((Cow::Borrowed("input_ids"), input.into_dyn().into()));
        for (name, value) in self.names.past.iter().zip(std::mem::take(&mut self.past)) {
            feed.push((Cow::Borrowed(name.as_str()), value.into()));
        }
        let mut out = self.session.run(feed).map_err(infer)?;
        {
            let (_, logits) = out
                .get("logits")
                .ok_or_else(|| Error::Inference("no `logits` output".into()))?
                .try_extract_tensor::<f32>()
                .map_err(infer)?;
            self.logits.clear();
            self.logits.extend_from_slice(logits);
        }
        for name in &self.names.present {
            let v = out
                .remove(name.as_str())
                .ok_or_else(|| Error::Inference(format!("no `{name}` output")))?;
            self.past.push(v);
        }
        self.len += ids.len();
        Ok(&self.logits)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The tiny hand-made decoder's KV layout.
    const TINY: KvShape = KvShape {
        layers: 1,
        kv_heads: 1,
        head_dim: 2,
    };

    /// A session on the tiny decoder, with its input/output names.
    fn tiny_session() -> (Session, Names) {
        let home_dir = crate::home::resolve(None);
        let rt = match super::super::runtime::ensure(None, &home_dir) {
            Ok(rt) => rt,
            Err(e) => panic!("{e}"),
        };
        let model = super::super::tests::fixture("tiny/model.onnx");
        let session = open_session(rt, &model, 1, false, TINY).unwrap();
        (session, Names::new(TINY.layers))
    }

    #[test]
    fn present_is_fed_back_as_past() {
        let (mut session, names) = tiny_session();
        let kv = TINY;
        let mut d = Decoder::new(&mut session, &names, kv).unwrap();
        let logits = d.step(&[5, 13]).unwrap().to_vec();
        assert_eq!(logits.len(), 259);
        assert_eq!(logits.iter().position(|&l| l == 10.0), Some(75));
        d.step(&[7]).unwrap();
        assert_eq!(d.len, 3);
        let (shape, data) = d.past[0].try_extract_tensor::<f32>().unwrap();
        assert_eq!(&**shape, &[1, 1, 3, 2]);
        assert_eq!(data, &[5.0, 5.0, 13.0, 13.0, 7.0, 7.0]);
    }

    #[test]
    fn a_kept_prompt_resumes_with_the_same_cache() {
        let (mut session, names) = tiny_session();
        let kv = TINY;
        let cache = |d: &Decoder<'_>| {
            let (shape, data) = d.past[0].try_extract_tensor::<f32>().unwrap();
            (shape.to_vec(), data.to_vec())
        };

        // Prompt [5, 13, 9], one decoded token; the whole cache fits under the cap of 8.
        let mut d = Decoder::new(&mut session, &names, kv).unwrap();
        d.step(&[5, 13, 9]).unwrap();
        d.step(&[7]).unwrap();
        let kept = d.into_prompt_kv(&[5, 13, 9], 8).unwrap().unwrap();
        assert_eq!((kept.ids.as_slice(), kept.positions), (&[5, 13, 9][..], 4));
        // Same start, different end: two tokens shared; at least MIN_PREFILL are left to run.
        assert_eq!(kept.reusable(&[5, 13, 4, 4]), 2);
        assert_eq!(kept.reusable(&[5, 13, 9]), 1);
        assert_eq!(kept.reusable(&[5, 13, 9, 2, 2]), 3);
        assert_eq!(kept.reusable(&[6, 13, 9, 2]), 0);

        let mut d = Decoder::resume(&mut session, &names, kept, 2).unwrap();
        assert_eq!(d.len, 2);
        assert_eq!(cache(&d), (vec![1, 1, 2, 2], vec![5.0, 5.0, 13.0, 13.0]));
        d.step(&[4, 4]).unwrap();
        assert_eq!(
            cache(&d),
            (
                vec![1, 1, 4, 2],
                vec![5.0, 5.0, 13.0, 13.0, 4.0, 4.0, 4.0, 4.0]
            )
        );

        // Over the cap only the prompt's first `cap` positions stay.
        let kept = d.into_prompt_kv(&[5, 13, 4, 4], 3).unwrap().unwrap();
        assert_eq!((kept.ids.as_slice(), kept.positions), (&[5, 13, 4][..], 3));
        let d = Decoder::resume(&mut session, &names, kept, 3).unwrap();
        assert_eq!(cache(&d).1, vec![5.0, 5.0, 13.0, 13.0, 4.0, 4.0]);

        // A long prompt runs in parts of at most 3 tokens, never leaving a 1-token run; when
        // the check between runs fails, the runs done stay for the next generation.
        let mut d = Decoder::new(&mut session, &names, kv).unwrap();
        d.prefill(&[5, 13, 9, 2, 2, 6, 7], 3, &|| Ok(())).unwrap();
        assert_eq!(d.len, 7);
        let (shape, data) = d.past[0].try_extract_tensor::<f32>().unwrap();
        assert_eq!(&**shape, &[1, 1, 7, 2]);
        assert_eq!(data[12..], [7.0, 7.0]);
        let runs = std::cell::Cell::new(0);
        let mut d = Decoder::new(&mut session, &names, kv).unwrap();
        let stop_after_two = || {
            runs.set(runs.get() + 1);
            if runs.get() == 2 {
                Err(Error::Cancelled)
            } else {
                Ok(())
            }
        };
        assert!(matches!(
            d.prefill(&[5, 13, 9, 2, 2, 6, 7, 8], 3, &stop_after_two),
            Err(Error::Cancelled)
        ));
        assert_eq!(d.len, 6);
        let kept = d
            .into_prompt_kv(&[5, 13, 9, 2, 2, 6, 7, 8], 8)
            .unwrap()
            .unwrap();
        assert_eq!(
            (kept.ids.as_slice(), kept.positions),
            (&[5, 13, 9, 2, 2, 6][..], 6)
        );

        // A failed step loses the cache: nothing is kept.
        let mut d = Decoder::new(&mut session, &names, kv).unwrap();
        d.step(&[5, 13]).unwrap();
        assert!(d.step(&[100_000]).is_err());
        assert!(d.into_prompt_kv(&[5, 13], 8).unwrap().is_none());
    }
}
