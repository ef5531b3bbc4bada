//! One decoder session and its KV cache: run the prompt (prefill), then one token at a time.
//!
//! Graph contract (see `scripts/convert_gguf_to_onnx.py`): inputs `input_ids` int64 `[1, seq]`,
//! `attention_mask` int64 `[1, total]` (all ones: one per position so far, the new ones included)
//! and `past_key_values.{i}.key|value` f32 `[1, kv_heads, capacity, head_dim]`; outputs `logits`
//! f32 `[1, 1, vocab]` (last position) and `present.{i}.key|value`. Each layer's past and present
//! are bound to one buffer ([`KvCache`]), which the graph fills in place.
//!
//! After a generation the keys and values of its prompt stay with the session as a
//! [`PromptKv`]; the next generation whose prompt starts the same way (the same system prompt,
//! or the same conversation one turn later) resumes from them and runs only the rest.

use std::path::Path;

use ort::session::builder::{AutoDevicePolicy, GraphOptimizationLevel};
use ort::session::{IoBinding, Session};
use ort::value::Tensor;

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
        // Busy-waiting only inside a run: between runs (between requests, and while the
        // sampler picks a token) the threads sleep instead of spinning on for a while
        // (measured: ~35 ms of CPU after each generation, none with this).
        .with_config_entry("session.force_spinning_stop", if spin { "1" } else { "0" })
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
    // Models converted before the cache was bound in place (manifest version 5) have no
    // attention_mask: set-up converts them again.
    if !inputs.contains(&"attention_mask") && inputs.contains(&"input_ids") {
        return Err(
            "the graph has no input `attention_mask`: it was converted by an older edgeroute"
                .into(),
        );
    }
    let mut want_in = vec!["input_ids".to_string(), "attention_mask".to_string()];
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

/// Cache buffers are sized in steps of this many positions.
const ROOM_STEP: usize = 64;

/// `positions` rounded up to a whole number of [`ROOM_STEP`]s (at least one).
fn rounded_room(positions: usize) -> usize {
    positions.max(1).div_ceil(ROOM_STEP) * ROOM_STEP
}

/// Every layer's keys and values, each in a `[1, kv_heads, capacity, head_dim]` buffer whose
/// first positions hold the sequence so far.
///
/// A run binds each buffer as both its past and its present input/output. ONNX Runtime's
/// GroupQueryAttention then sees one buffer (the same address) and writes only the run's new
/// positions into it, where a past exactly as long as the sequence makes it clear a new present
/// and copy the whole cache into it, every layer, every token. That copy grows with the
/// sequence: at 1,000 positions it was a third of a decode step. The graph learns how many
/// positions are real from `attention_mask` (see `scripts/convert_gguf_to_onnx.py`), not from
/// the buffer's size; positions past them are never read.
pub(crate) struct KvCache {
    buffers: Vec<Tensor<f32>>,
    capacity: usize,
}

impl KvCache {
    /// Buffers with room for `capacity` positions (ort fills them with zeros; nothing reads a
    /// position before a run writes it).
    fn new(session: &Session, kv: KvShape, capacity: usize) -> Result<Self> {
        let buffers = (0..kv.layers * 2)
            .map(|_| {
                Tensor::<f32>::new(
                    session.allocator(),
                    [1usize, kv.kv_heads, capacity, kv.head_dim],
                )
                .map_err(infer)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache { buffers, capacity })
    }

    /// A cache with room for `capacity` positions holding this one's first `keep`.
    fn moved(&self, session: &Session, kv: KvShape, keep: usize, capacity: usize) -> Result<Self> {
        if keep > self.capacity.min(capacity) {
            return Err(Error::Inference(format!(
                "cannot keep {keep} positions of a KV cache of {} in one of {capacity}",
                self.capacity
            )));
        }
        let mut to = KvCache::new(session, kv, capacity)?;
        let (from_row, to_row, kept) = (
            self.capacity * kv.head_dim,
            capacity * kv.head_dim,
            keep * kv.head_dim,
        );
        for (src, dst) in self.buffers.iter().zip(&mut to.buffers) {
            let (_, src) = src.try_extract_tensor::<f32>().map_err(infer)?;
            let (_, dst) = dst.try_extract_tensor_mut::<f32>().map_err(infer)?;
            for head in 0..kv.kv_heads {
                dst[head * to_row..head * to_row + kept]
                    .copy_from_slice(&src[head * from_row..head * from_row + kept]);
            }
        }
        Ok(to)
    }

    /// Writes `value` over position `at` of head `head` in buffer `index` (a test's mark).
    #[cfg(test)]
    fn mark(&mut self, index: usize, kv: KvShape, head: usize, at: usize, value: f32) {
        let (_, data) = self.buffers[index].try_extract_tensor_mut::<f32>().unwrap();
        let start = (head * self.capacity + at) * kv.head_dim;
        data[start..start + kv.head_dim].fill(value);
    }

    /// Position `at` of head `head` in buffer `index` (a test's view of what a run wrote).
    #[cfg(test)]
    fn position(&self, index: usize, kv: KvShape, head: usize, at: usize) -> Vec<f32> {
        let (_, data) = self.buffers[index].try_extract_tensor::<f32>().unwrap();
        let start = (head * self.capacity + at) * kv.head_dim;
        data[start..start + kv.head_dim].to_vec()
    }
}

/// The keys and values of a prompt's first tokens, kept on a pooled session for the next
/// generation (see [`Decoder::into_prompt_kv`] and [`Decoder::resume`]).
pub(crate) struct PromptKv {
    /// The prompt ids whose keys and values can be reused.
    ids: Vec<u32>,
    /// Holds at least `ids.len()` positions (then perhaps decoded tokens, which the next
    /// generation overwrites).
    cache: KvCache,
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

/// A generation in progress on one session.
pub(crate) struct Decoder<'s> {
    session: &'s mut Session,
    names: &'s Names,
    kv: KvShape,
    cache: KvCache,
    binding: IoBinding,
    logits: Vec<f32>,
    /// Positions consumed so far.
    pub(crate) len: usize,
    /// A run failed: what it left in the cache is not trusted for the next generation.
    failed: bool,
}

impl<'s> Decoder<'s> {
    /// A decoder with an empty cache with room for `room` positions (the prompt and the
    /// answer; it grows if a run needs more).
    pub(crate) fn new(
        session: &'s mut Session,
        names: &'s Names,
        kv: KvShape,
        room: usize,
    ) -> Result<Self> {
        let cache = KvCache::new(session, kv, rounded_room(room))?;
        Decoder::with_cache(session, names, kv, cache, 0)
    }

    /// A decoder whose cache already holds the first `keep` tokens of `cached` (at most
    /// [`PromptKv::reusable`]; 0 reuses only the buffers); feed it the rest of the prompt.
    /// `room` as for [`Decoder::new`].
    pub(crate) fn resume(
        session: &'s mut Session,
        names: &'s Names,
        kv: KvShape,
        cached: PromptKv,
        keep: usize,
        room: usize,
    ) -> Result<Self> {
        if keep > cached.ids.len() {
            return Err(Error::Inference(format!(
                "cannot resume {keep} positions of a prompt cache of {}",
                cached.ids.len()
            )));
        }
        let cache = if cached.cache.capacity >= room {
            cached.cache
        } else {
            cached.cache.moved(session, kv, keep, rounded_room(room))?
        };
        Decoder::with_cache(session, names, kv, cache, keep)
    }

    fn with_cache(
        session: &'s mut Session,
        names: &'s Names,
        kv: KvShape,
        cache: KvCache,
        len: usize,
    ) -> Result<Self> {
        let mut binding = session.create_binding().map_err(infer)?;
        binding
            .bind_output_to_device("logits", session.allocator().memory_info())
            .map_err(infer)?;
        let mut decoder = Decoder {
            session,
            names,
            kv,
            cache,
            binding,
            logits: Vec::new(),
            len,
            failed: false,
        };
        decoder.bind_cache()?;
        Ok(decoder)
    }

    /// Binds each cache buffer as its layer's past and present.
    fn bind_cache(&mut self) -> Result<()> {
        let names = self.names.past.iter().zip(&self.names.present);
        for ((past, present), buffer) in names.zip(&mut self.cache.buffers) {
            self.binding
                .bind_input(past.as_str(), &*buffer)
                .map_err(infer)?;
            self.binding
                .bind_output(present.as_str(), &mut *buffer)
                .map_err(infer)?;
        }
        Ok(())
    }

    /// The keys and values of `prompt`'s first `min(prompt.len(), cap)` tokens (fewer when the
    /// prefill stopped part-way: those it ran), for the next generation on this session; `None`
    /// when there is nothing worth keeping or a run failed. `prompt` must be what this
    /// decoder's prefill consumed or began to.
    pub(crate) fn into_prompt_kv(self, prompt: &[u32], cap: usize) -> Result<Option<PromptKv>> {
        let keep = prompt.len().min(cap).min(self.len);
        if keep < MIN_PREFILL || self.failed {
            return Ok(None);
        }
        // The buffers stay as they are (the next generation writes into them) unless they are
        // larger than the cap: a session holds at most about `cap` positions.
        let cache = if self.cache.capacity <= rounded_room(cap) {
            self.cache
        } else {
            self.cache
                .moved(self.session, self.kv, keep, rounded_room(keep))?
        };
        Ok(Some(PromptKv {
            ids: prompt[..keep].to_vec(),
            cache,
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
        let result = self.run(ids);
        if result.is_err() {
            self.failed = true;
        }
        result?;
        Ok(&self.logits)
    }

    fn run(&mut self, ids: &[u32]) -> Result<()> {
        let total = self.len + ids.len();
        if total > self.cache.capacity {
            let capacity = rounded_room(total.max(self.cache.capacity * 2));
            self.cache = self
                .cache
                .moved(self.session, self.kv, self.len, capacity)?;
            self.bind_cache()?;
        }
        let input: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let input = Tensor::<i64>::from_array(([1usize, input.len()], input)).map_err(infer)?;
        let mask =
            Tensor::<i64>::from_array(([1usize, total], vec![1i64; total])).map_err(infer)?;
        self.binding
            .bind_input("input_ids", &input)
            .map_err(infer)?;
        self.binding
            .bind_input("attention_mask", &mask)
            .map_err(infer)?;
        let out = self.session.run_binding(&self.binding).map_err(infer)?;
        let (_, logits) = out
            .get("logits")
            .ok_or_else(|| Error::Inference("no `logits` output".into()))?
            .try_extract_tensor::<f32>()
            .map_err(infer)?;
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        self.len = total;
        Ok(())
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
        head_dim: 8,
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

    /// The token ids a cache holds at its first `n` positions: the tiny decoder's key (and
    /// value) at a position is its token id, eight times.
    fn held(cache: &KvCache, n: usize) -> Vec<f32> {
        (0..n)
            .map(|at| {
                let key = cache.position(0, TINY, 0, at);
                assert_eq!(key, cache.position(1, TINY, 0, at), "key and value differ");
                assert!(key.iter().all(|&x| x == key[0]), "{key:?}");
                key[0]
            })
            .collect()
    }

    #[test]
    fn the_cache_is_written_in_place_and_grows_keeping_what_it_holds() {
        let (mut session, names) = tiny_session();
        let mut d = Decoder::new(&mut session, &names, TINY, 3).unwrap();
        assert_eq!(d.cache.capacity, ROOM_STEP);
        let logits = d.step(&[5, 13]).unwrap().to_vec();
        assert_eq!(logits.len(), 259);
        assert_eq!(logits.iter().position(|&l| l == 10.0), Some(75));
        // One token: the graph's attention_mask says three positions, of a buffer of 64.
        let logits = d.step(&[7]).unwrap().to_vec();
        assert_eq!(logits.iter().position(|&l| l == 10.0), Some(123)); // after 7: "x"
        assert_eq!(d.len, 3);
        assert_eq!(held(&d.cache, 3), [5.0, 13.0, 7.0]);
        // In place: a run writes its own positions and nothing else. Where the past is copied
        // into the present instead, ONNX Runtime clears the whole present first.
        d.cache.mark(0, TINY, 0, 10, 42.0);
        d.step(&[9]).unwrap();
        assert_eq!(held(&d.cache, 4), [5.0, 13.0, 7.0, 9.0]);
        assert_eq!(d.cache.position(0, TINY, 0, 10), [42.0; 8]);

        // A run past the room moves the cache to a buffer twice as large (or as large as the
        // run needs), keeping every position.
        let long: Vec<u32> = (0..130).map(|i| 20 + i % 50).collect();
        d.step(&long[..70]).unwrap();
        assert_eq!((d.len, d.cache.capacity), (74, 128));
        d.step(&long[70..]).unwrap();
        assert_eq!((d.len, d.cache.capacity), (134, 256));
        let mut want = vec![5.0, 13.0, 7.0, 9.0];
        want.extend(long.iter().map(|&i| i as f32));
        assert_eq!(held(&d.cache, 134), want);
    }

    #[test]
    fn a_kept_prompt_resumes_with_the_same_cache() {
        let (mut session, names) = tiny_session();

        // Prompt [5, 13, 9], one decoded token; kept under a cap of 8.
        let mut d = Decoder::new(&mut session, &names, TINY, 4).unwrap();
        d.step(&[5, 13, 9]).unwrap();
        d.step(&[7]).unwrap();
        let kept = d.into_prompt_kv(&[5, 13, 9], 8).unwrap().unwrap();
        assert_eq!(kept.ids, [5, 13, 9]);
        // Same start, different end: two tokens shared; at least MIN_PREFILL are left to run.
        assert_eq!(kept.reusable(&[5, 13, 4, 4]), 2);
        assert_eq!(kept.reusable(&[5, 13, 9]), 1);
        assert_eq!(kept.reusable(&[5, 13, 9, 2, 2]), 3);
        assert_eq!(kept.reusable(&[6, 13, 9, 2]), 0);

        // The resumed run writes over what came after the kept part.
        let mut d = Decoder::resume(&mut session, &names, TINY, kept, 2, 8).unwrap();
        assert_eq!(d.len, 2);
        assert_eq!(held(&d.cache, 2), [5.0, 13.0]);
        d.step(&[4, 4]).unwrap();
        assert_eq!(held(&d.cache, 4), [5.0, 13.0, 4.0, 4.0]);

        // Over the cap only the prompt's first `cap` tokens are kept.
        let kept = d.into_prompt_kv(&[5, 13, 4, 4], 3).unwrap().unwrap();
        assert_eq!(kept.ids, [5, 13, 4]);
        // A resume that needs more room than the buffer has moves the kept positions.
        let d = Decoder::resume(&mut session, &names, TINY, kept, 3, 100).unwrap();
        assert_eq!((d.len, d.cache.capacity), (3, 128));
        assert_eq!(held(&d.cache, 3), [5.0, 13.0, 4.0]);

        // A buffer larger than the cap is not held on to: one that fits what is kept is.
        let mut d = Decoder::new(&mut session, &names, TINY, 200).unwrap();
        assert_eq!(d.cache.capacity, 256);
        d.step(&[5, 13, 9]).unwrap();
        let kept = d.into_prompt_kv(&[5, 13, 9], 8).unwrap().unwrap();
        assert_eq!(kept.cache.capacity, ROOM_STEP);
        assert_eq!(held(&kept.cache, 3), [5.0, 13.0, 9.0]);
        // A prompt that shares nothing still runs in the kept buffers, from the start.
        let mut d = Decoder::resume(&mut session, &names, TINY, kept, 0, 10).unwrap();
        assert_eq!((d.len, d.cache.capacity), (0, ROOM_STEP));
        d.step(&[8, 8]).unwrap();
        assert_eq!(held(&d.cache, 3), [8.0, 8.0, 9.0]);

        // A long prompt runs in parts of at most 3 tokens, never leaving a 1-token run; when
        // the check between runs fails, the runs done stay for the next generation.
        let mut d = Decoder::new(&mut session, &names, TINY, 8).unwrap();
        d.prefill(&[5, 13, 9, 2, 2, 6, 7], 3, &|| Ok(())).unwrap();
        assert_eq!(d.len, 7);
        assert_eq!(held(&d.cache, 7), [5.0, 13.0, 9.0, 2.0, 2.0, 6.0, 7.0]);
        let runs = std::cell::Cell::new(0);
        let mut d = Decoder::new(&mut session, &names, TINY, 8).unwrap();
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
        assert_eq!(kept.ids, [5, 13, 9, 2, 2, 6]);

        // A failed run loses the cache: nothing is kept.
        let mut d = Decoder::new(&mut session, &names, TINY, 8).unwrap();
        d.step(&[5, 13]).unwrap();
        assert!(d.step(&[100_000]).is_err());
        assert!(d.into_prompt_kv(&[5, 13], 8).unwrap().is_none());
    }
}
