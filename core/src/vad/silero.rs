//! Silero VAD v6 (16 kHz), run in pure Rust by tract: a small recurrent network that gives, for
//! each 32 ms window of audio, the probability that it holds speech. Unlike webrtc-vad's energy
//! and GMM classifier, it does not take stationary noise (a fan, a car cabin, mains hum) for
//! speech.
//!
//! Layout, chosen so that thousands of sessions share one model:
//! - **One optimized plan per process** (`plan()`), built once from the compiled-in model file
//!   and shared by every thread behind an `Arc`.
//! - **One runner per thread** (a tract `SimpleState` in a thread-local), so no lock is taken
//!   per window. A runner holds no session's data between calls: runs interleaved across
//!   sessions give bit-identical results (tested).
//! - **Per session only `Stream`**: the recurrent state (256 floats) and the 64 samples of
//!   context the model sees before each window, 1.3 KB.
//!
//! The model file is pinned (see `core/models/README.md`: origin, sha256, licence).

use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::sync::{Arc, OnceLock};

use tract_onnx::prelude::*;

/// New samples per model call (32 ms at 16 kHz).
pub const WINDOW: usize = 512;
/// Samples of the previous window the model sees before the new ones.
pub const CONTEXT: usize = 64;
const STATE: usize = 2 * 128;

/// The compiled-in model: `silero_vad_openvino_16k.onnx` from the silero-vad 6.2.3 wheel (MIT).
static MODEL: &[u8] = include_bytes!("../../models/silero_vad_openvino_16k.onnx");

/// The model could not be loaded. It is compiled in, so this is a build defect, reported at
/// start-up (`load`) rather than on a caller's first window.
#[derive(Debug, Clone)]
pub struct LoadError(String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot load the Silero VAD model: {}", self.0)
    }
}

impl std::error::Error for LoadError {}

/// The optimized model and where its inputs and outputs are.
struct Plan {
    model: Arc<TypedRunnableModel>,
    /// Index of the `input` input (the order differs between model files).
    input_ix: usize,
    /// Index of the `state` input (the other one).
    state_ix: usize,
}

static PLAN: OnceLock<Result<Plan, LoadError>> = OnceLock::new();

thread_local! {
    /// This thread's runner over the shared plan, made on the thread's first window. It is never
    /// dropped: tract's runner touches tract's own thread-locals when dropped, which may already
    /// be gone when the thread exits (the runtime's worker threads live as long as the process).
    static RUNNER: RefCell<Option<ManuallyDrop<TypedSimpleState>>> = const { RefCell::new(None) };
}

/// Loads and optimizes the model once per process (12–45 ms), and checks that it runs on a
/// window. The server calls this at start-up so a defect shows there; later calls are free.
///
/// # Errors
/// If tract cannot read, optimize or run the compiled-in model.
pub fn load() -> Result<(), LoadError> {
    plan().map(|_| ())
}

fn plan() -> Result<&'static Plan, LoadError> {
    PLAN.get_or_init(build_plan).as_ref().map_err(Clone::clone)
}

fn build_plan() -> Result<Plan, LoadError> {
    let err = |e: TractError| LoadError(format!("{e:#}"));
    let model = tract_onnx::onnx()
        .model_for_read(&mut &MODEL[..])
        .map_err(err)?;
    let names: Vec<String> = model
        .input_outlets()
        .map_err(err)?
        .iter()
        .map(|o| model.nodes[o.node].name.clone())
        .collect();
    let find = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| LoadError(format!("the model has no input `{name}` (has {names:?})")))
    };
    let (input_ix, state_ix) = (find("input")?, find("state")?);
    let model = model
        .into_optimized()
        .map_err(err)?
        .into_runnable()
        .map_err(err)?;
    let plan = Plan {
        model,
        input_ix,
        state_ix,
    };
    // One window of silence proves the shapes before any caller depends on them.
    let mut state = [0.0; STATE];
    let mut runner = plan.model.spawn().map_err(err)?;
    run(&plan, &mut runner, &[0.0; CONTEXT + WINDOW], &mut state).map_err(err)?;
    Ok(plan)
}

/// One model call: `input` is context then window, `state` is replaced by the next state.
fn run(
    plan: &Plan,
    runner: &mut TypedSimpleState,
    input: &[f32; CONTEXT + WINDOW],
    state: &mut [f32; STATE],
) -> TractResult<f32> {
    let input: TValue = Tensor::from_shape(&[1, CONTEXT + WINDOW], input)?.into();
    let recurrent: TValue = Tensor::from_shape(&[2, 1, 128], state)?.into();
    let inputs = if plan.input_ix < plan.state_ix {
        tvec![input, recurrent]
    } else {
        tvec![recurrent, input]
    };
    let outputs = runner.run(inputs)?;
    let probability = outputs[0].try_as_plain_ram()?.as_slice::<f32>()?[0];
    state.copy_from_slice(outputs[1].try_as_plain_ram()?.as_slice::<f32>()?);
    Ok(probability)
}

/// One session's view of the model: its recurrent state and the context before the next window.
#[derive(Clone)]
pub struct Stream {
    state: [f32; STATE],
    /// The model's input: `CONTEXT` samples of the previous window, then the new window.
    input: [f32; CONTEXT + WINDOW],
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("silero::Stream").finish_non_exhaustive()
    }
}

impl Default for Stream {
    fn default() -> Self {
        Stream::new()
    }
}

impl Stream {
    /// A stream at the start of audio (zero state, zero context).
    pub fn new() -> Self {
        Stream {
            state: [0.0; STATE],
            input: [0.0; CONTEXT + WINDOW],
        }
    }

    /// The speech probability of `window` (`WINDOW` samples at 16 kHz), advancing the state.
    ///
    /// # Panics
    /// If `window` is not `WINDOW` samples long, or if the model cannot be loaded (`load` at
    /// start-up reports that first) or fails to run on a window of the shape it was checked
    /// with: both are build defects, not conditions of the input.
    pub fn probability(&mut self, window: &[i16]) -> f32 {
        self.fill(window);
        let plan = plan().unwrap_or_else(|e| panic!("{e}"));
        let p = RUNNER.with(|cell| {
            let mut slot = cell.borrow_mut();
            let runner = match &mut *slot {
                Some(r) => r,
                None => slot.insert(ManuallyDrop::new(
                    plan.model
                        .spawn()
                        .unwrap_or_else(|e| panic!("silero: cannot make a runner: {e:#}")),
                )),
            };
            run(plan, runner, &self.input, &mut self.state)
                .unwrap_or_else(|e| panic!("silero: a model call failed: {e:#}"))
        });
        self.keep_context();
        p
    }

    /// Moves past `window` without a model call: the state stays as it was and only the
    /// context follows the audio. For windows an energy gate has judged silent.
    pub fn skip(&mut self, window: &[i16]) {
        self.fill(window);
        self.keep_context();
    }

    fn fill(&mut self, window: &[i16]) {
        assert_eq!(window.len(), WINDOW, "silero takes {WINDOW}-sample windows");
        for (dst, &s) in self.input[CONTEXT..].iter_mut().zip(window) {
            *dst = f32::from(s) / 32768.0;
        }
    }

    fn keep_context(&mut self) {
        self.input.copy_within(WINDOW.., 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_model_is_the_pinned_file() {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(MODEL);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87"
        );
        load().expect("the model loads and runs");
    }

    fn fixture(name: &str) -> Vec<i16> {
        crate::test_audio::fixture(name)
    }

    #[test]
    fn speech_is_likely_and_silence_is_not() {
        let audio = fixture("interrupt.wav");
        let mut s = Stream::new();
        let p: Vec<f32> = audio
            .chunks_exact(WINDOW)
            .map(|w| s.probability(w))
            .collect();
        // 200 ms of digital silence, then speech from ~0.2 s to ~2.7 s.
        assert!(p[..5].iter().all(|&p| p < 0.1), "{p:?}");
        let voiced = p[7..80].iter().filter(|&&p| p > 0.5).count();
        assert!(voiced > 60, "{voiced} of 73 speech windows over 0.5: {p:?}");
        assert!(p[p.len() - 10..].iter().all(|&p| p < 0.1), "{p:?}");
    }

    #[test]
    fn runners_are_shared_across_sessions_without_crosstalk() {
        let a = fixture("weather.wav");
        let b = fixture("stop.wav");
        let alone = |audio: &[i16]| {
            let mut s = Stream::new();
            audio
                .chunks_exact(WINDOW)
                .map(|w| s.probability(w))
                .collect::<Vec<_>>()
        };
        let (pa, pb) = (alone(&a), alone(&b));
        // Interleaved on this thread's one runner.
        let (mut sa, mut sb) = (Stream::new(), Stream::new());
        let (mut ia, mut ib) = (Vec::new(), Vec::new());
        for (wa, wb) in a.chunks_exact(WINDOW).zip(b.chunks_exact(WINDOW)) {
            ia.push(sa.probability(wa));
            ib.push(sb.probability(wb));
        }
        assert_eq!(ia[..], pa[..ia.len()]);
        assert_eq!(ib[..], pb[..ib.len()]);
        // On another thread (another runner), the same numbers.
        let other = std::thread::spawn(move || alone(&a)).join().unwrap();
        assert_eq!(other, pa);
    }
}
