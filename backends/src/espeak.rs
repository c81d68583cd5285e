//! The espeak-ng text-to-speech voice: a local, offline, CPU-cheap voice (`[tts.espeak]`).
//!
//! Each synthesis runs one `espeak-ng --stdout --stdin -v VOICE -s SPEED [-p PITCH]` process.
//! The text goes in through stdin, never as an argument, so text that starts with `-` is spoken
//! rather than parsed as an option. The WAV that espeak-ng writes to stdout is decoded as it
//! arrives (its header carries placeholder sizes since espeak-ng streams) and resampled from the
//! header's rate (22 050 Hz for its own voices) to the requested rate, so the first chunk is
//! yielded while espeak-ng is still speaking.
//!
//! What it promises:
//!
//! * **Dropping the stream kills the process** (`kill_on_drop`); no task runs behind a stream.
//! * **Bounded processes.** At most `max_processes` espeak-ng processes run at once; further
//!   syntheses wait for a slot (cancellable by dropping them), so load cannot fork-bomb the host.
//! * **Failures are plain.** A missing binary, an unknown voice or a crash is a `ProviderError`
//!   that says so; `EspeakTts::new` runs the binary once so `voxd check-config` fails early.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use futures_util::stream::{self, BoxStream, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};
use voxd_core::resample::{MAX_RATE_HZ, MIN_RATE_HZ};
use voxd_core::SampleRate;

use crate::pcm::{PcmError, PcmPipeline};
use crate::{BuildError, ProviderError, Tts};

/// The name this provider reports (`Tts::name` and `ProviderError`s).
pub const PROVIDER_NAME: &str = "espeak";

/// How much of espeak-ng's stderr is kept for an error message, in bytes.
const MAX_STDERR: usize = 4096;

/// Bytes read from espeak-ng's stdout at a time (about 0.4 s of audio at 22 050 Hz).
const READ_BUF: usize = 16 * 1024;

/// The text the constructor synthesizes to check the voice.
const PROBE_TEXT: &str = "a";

/// Configuration of the espeak-ng voice (`[tts.espeak]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EspeakTtsConfig {
    /// The espeak-ng executable: a bare name is looked up in `PATH`, a path with a `/` is resolved
    /// against the config file's folder. Default "espeak-ng".
    pub binary: PathBuf,
    /// The voice (`-v`), e.g. "en-us", "en-gb", "de", "en-us+f3" (a variant). Default "en-us".
    pub voice: String,
    /// Speaking rate in words per minute (`-s`), 80 to 900. Default 175.
    pub speed: u32,
    /// Pitch adjustment (`-p`), 0 to 99; espeak-ng's own default (50) when unset. Default: unset.
    pub pitch: Option<u8>,
    /// The sample rate espeak-ng writes with this voice, checked when the provider is built.
    /// Audio is always resampled from the rate in the WAV header it actually writes. Default 22050.
    pub source_rate: u32,
    /// The most espeak-ng processes that may run at once; more syntheses wait for a slot.
    /// Default: twice the number of CPUs.
    pub max_processes: usize,
}

impl Default for EspeakTtsConfig {
    fn default() -> Self {
        EspeakTtsConfig {
            binary: PathBuf::from("espeak-ng"),
            voice: "en-us".to_owned(),
            speed: 175,
            pitch: None,
            source_rate: 22_050,
            max_processes: 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// The espeak-ng voice. Build it with `EspeakTts::new`.
#[derive(Debug, Clone)]
pub struct EspeakTts {
    /// The executable, as configured or resolved against the config folder.
    binary: PathBuf,
    /// Everything after the binary's name.
    args: Arc<[String]>,
    slots: Arc<Semaphore>,
    max_processes: usize,
    version: String,
}

impl EspeakTts {
    /// Builds the voice: checks the config, runs `binary --version`, and synthesizes one word to
    /// check the voice and the rate it writes. `base_dir` is the folder a relative `binary` path
    /// is resolved against (the config file's folder).
    ///
    /// Runs two short processes synchronously; call it at start-up, not per request.
    ///
    /// # Errors
    /// `BuildError::Invalid` naming the key at fault: `binary` when the binary is missing or
    /// does not run, `voice` when the voice is malformed or unknown, `speed`, `pitch`,
    /// `source_rate` (out of range, or not the rate espeak-ng writes) or `max_processes` (0).
    pub fn new(config: EspeakTtsConfig, base_dir: &Path) -> Result<EspeakTts, BuildError> {
        let invalid = |field: &str, message: String| BuildError::Invalid {
            key: field.to_owned(),
            message,
        };
        let voice_ok = !config.voice.is_empty()
            && !config.voice.starts_with(['-', '+'])
            && config
                .voice
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_+/.".contains(c));
        if !voice_ok {
            return Err(invalid(
                "voice",
                format!(
                    "{:?} is not a voice name (letters, digits and - _ + / . only, e.g. \"en-us\")",
                    config.voice
                ),
            ));
        }
        if !(80..=900).contains(&config.speed) {
            return Err(invalid(
                "speed",
                format!("expected 80 to 900 words per minute, got {}", config.speed),
            ));
        }
        if let Some(pitch) = config.pitch.filter(|&p| p > 99) {
            return Err(invalid("pitch", format!("expected 0 to 99, got {pitch}")));
        }
        if !(MIN_RATE_HZ..=MAX_RATE_HZ).contains(&config.source_rate) {
            return Err(invalid(
                "source_rate",
                format!(
                    "expected {MIN_RATE_HZ} to {MAX_RATE_HZ} Hz, got {}",
                    config.source_rate
                ),
            ));
        }
        if config.max_processes == 0 || config.max_processes > Semaphore::MAX_PERMITS {
            return Err(invalid(
                "max_processes",
                format!("expected 1 to {}", Semaphore::MAX_PERMITS),
            ));
        }

        // A bare name is looked up in PATH by the OS; only paths are tied to the config folder.
        let binary = if config.binary.components().count() > 1 {
            base_dir.join(&config.binary)
        } else {
            config.binary.clone()
        };
        let version = probe_version(&binary)?;

        let mut args: Vec<String> = vec![
            "--stdout".into(),
            "--stdin".into(),
            "-v".into(),
            // VOICE_ARG
            config.voice.clone(),
            "-s".into(),
            config.speed.to_string(),
        ];
        if let Some(pitch) = config.pitch {
            args.extend(["-p".into(), pitch.to_string()]);
        }
        let written = probe_rate(&binary, &args)
            .map_err(|message| invalid("voice", format!("{:?}: {message}", config.voice)))?;
        if written.hz() != config.source_rate {
            return Err(invalid(
                "source_rate",
                format!(
                    "espeak-ng writes {written} with voice {:?}, but source_rate is {}; set \
                     source_rate = {}",
                    config.voice,
                    config.source_rate,
                    written.hz()
                ),
            ));
        }
        debug!(binary = %binary.display(), %version, voice = %config.voice, "espeak-ng ready");
        Ok(EspeakTts {
            binary,
            args: args.into(),
            slots: Arc::new(Semaphore::new(config.max_processes)),
            max_processes: config.max_processes,
            version,
        })
    }

    /// The first line of `espeak-ng --version`, e.g. "eSpeak NG text-to-speech: 1.51 ...".
    pub fn version(&self) -> &str {
        &self.version
    }

    /// How many syntheses hold a process slot right now (at most `max_processes`).
    pub fn processes_running(&self) -> usize {
        self.max_processes - self.slots.available_permits()
    }
}

/// Runs `binary --version`, returning its first line.
fn probe_version(binary: &Path) -> Result<String, BuildError> {
    let invalid = |message: String| BuildError::Invalid {
        key: "binary".to_owned(),
        message,
    };
    let output = std::process::Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            invalid(if e.kind() == ErrorKind::NotFound {
                format!(
                    "{} not found; install it with apt-get install espeak-ng, or set this key \
                     to its path",
                    binary.display()
                )
            } else {
                format!("cannot run {}: {e}", binary.display())
            })
        })?;
    if !output.status.success() {
        return Err(invalid(format!(
            "{} --version failed ({}): {}",
            binary.display(),
            output.status,
            first_line(&output.stderr)
        )));
    }
    Ok(first_line(&output.stdout))
}

/// Synthesizes `PROBE_TEXT` and returns the rate espeak-ng writes, or why it wrote no audio.
fn probe_rate(binary: &Path, args: &[String]) -> Result<SampleRate, String> {
    use std::io::Write;
    let mut child = std::process::Command::new(binary)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // The probe text is far below a pipe's buffer, so this cannot block on a full stdout. A
        // failed write means the process exited without reading; its status and stderr say why.
        let _ = stdin.write_all(PROBE_TEXT.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("cannot read espeak-ng's output: {e}"))?;
    let mut pipeline = PcmPipeline::wav(SampleRate::INTERNAL);
    let decoded = pipeline
        .push(&output.stdout)
        .and_then(|_| pipeline.finish());
    match (output.status.success(), decoded, pipeline.source_rate()) {
        (true, Ok(_), Some(rate)) => Ok(rate),
        (_, Err(PcmError::Empty), _) | (false, _, _) => Err(format!(
            "espeak-ng wrote no audio ({}): {}",
            output.status,
            first_line(&output.stderr)
        )),
        (_, Err(e), _) => Err(format!("espeak-ng wrote an unreadable WAV stream: {e}")),
        (true, Ok(_), None) => Err("espeak-ng wrote no WAV header".to_owned()),
    }
}

/// The first non-empty line of a process's output, lossily decoded and trimmed.
fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    line.map_or_else(
        || "(no message)".to_owned(),
        |l| l.trim_start_matches("Error: ").to_owned(),
    )
}

fn failed(message: String) -> ProviderError {
    ProviderError::Failed {
        provider: PROVIDER_NAME.to_owned(),
        message,
    }
}

/// The index of the voice in `EspeakTts::args`.
const VOICE_ARG: usize = 3;

impl Tts for EspeakTts {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

    fn synthesize(
        &self,
        text: String,
        rate: SampleRate,
    ) -> BoxStream<'static, Result<Vec<i16>, ProviderError>> {
        self.synthesize_as(text, rate, None)
    }

    /// `voice` is an espeak-ng voice (`en-us`, `fr`, `de+f3`); it must keep the configured
    /// voice's sample rate, which every espeak-ng voice does.
    fn synthesize_as(
        &self,
        text: String,
        rate: SampleRate,
        voice: Option<&str>,
    ) -> BoxStream<'static, Result<Vec<i16>, ProviderError>> {
        if !(MIN_RATE_HZ..=MAX_RATE_HZ).contains(&rate.hz()) {
            let err = ProviderError::InvalidRequest {
                provider: PROVIDER_NAME.to_owned(),
                message: format!("unsupported output rate {rate}"),
            };
            return stream::iter([Err(err)]).boxed();
        }
        if text.trim().is_empty() {
            return stream::empty().boxed();
        }
        let start = Start {
            binary: self.binary.clone(),
            args: match voice {
                // `-v` is always the third argument.
                Some(v) => {
                    let mut args = self.args.to_vec();
                    args[VOICE_ARG] = v.to_owned();
                    args.into()
                }
                None => Arc::clone(&self.args),
            },
            slots: Arc::clone(&self.slots),
            text: text.into_bytes(),
            rate,
        };
        // No task: the process is started when the stream is first polled and read only as the
        // consumer polls, so dropping the stream drops the child, which kills it.
        stream::unfold(Some(Job::Start(start)), |job| async move {
            let mut run = match job? {
                Job::Start(start) => match start.spawn().await {
                    Ok(run) => run,
                    Err(e) => return Some((Err(e), None)),
                },
                Job::Run(run) => run,
            };
            match run.next_chunk().await {
                Some(Ok(chunk)) => Some((Ok(chunk), Some(Job::Run(run)))),
                Some(Err(e)) => Some((Err(e), None)),
                None => None,
            }
        })
        .boxed()
    }
}

/// A synthesis stream's state.
enum Job {
    /// Not started: waiting for its first poll.
    Start(Start),
    /// espeak-ng is running.
    Run(Box<Run>),
}

/// What a synthesis needs to start.
struct Start {
    binary: PathBuf,
    args: Arc<[String]>,
    slots: Arc<Semaphore>,
    text: Vec<u8>,
    rate: SampleRate,
}

impl Start {
    /// Waits for a process slot and starts espeak-ng.
    async fn spawn(self) -> Result<Box<Run>, ProviderError> {
        let permit = self
            .slots
            .acquire_owned()
            .await
            .map_err(|_| failed("the voice is shutting down".to_owned()))?;
        let mut child = Command::new(&self.binary)
            .args(self.args.iter())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                failed(if e.kind() == ErrorKind::NotFound {
                    format!(
                        "{} not found; install it with apt-get install espeak-ng",
                        self.binary.display()
                    )
                } else {
                    format!("cannot start {}: {e}", self.binary.display())
                })
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(failed("espeak-ng's pipes are missing".to_owned()));
        };
        Ok(Box::new(Run {
            child,
            stdin: Some(stdin),
            text: self.text,
            written: 0,
            stdout: Some(stdout),
            stderr: Some(stderr),
            stderr_text: Vec::new(),
            pipeline: PcmPipeline::wav(self.rate),
            buf: vec![0; READ_BUF],
            err_buf: vec![0; 512],
            _permit: permit,
        }))
    }
}

/// A running espeak-ng process and the decoding of its output.
struct Run {
    child: Child,
    /// `None` once all the text is written (dropping it closes the pipe: end of text).
    stdin: Option<ChildStdin>,
    text: Vec<u8>,
    written: usize,
    /// `None` once it reached end of file.
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// The start of what espeak-ng wrote to stderr, for error messages.
    stderr_text: Vec<u8>,
    pipeline: PcmPipeline,
    buf: Vec<u8>,
    err_buf: Vec<u8>,
    /// Held until the process is gone (the stream ends or is dropped).
    _permit: OwnedSemaphorePermit,
}

/// What one wait on the process's pipes produced.
enum PipeEvent {
    Stdout(std::io::Result<usize>),
    Stdin(std::io::Result<usize>),
    Stderr(std::io::Result<usize>),
}

/// Writes to `pipe`, or never completes when there is none.
async fn write_some<W: AsyncWrite + Unpin>(
    pipe: Option<&mut W>,
    data: &[u8],
) -> std::io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.write(data).await,
        None => std::future::pending().await,
    }
}

/// Reads from `pipe`, or never completes when there is none.
async fn read_some<R: AsyncRead + Unpin>(
    pipe: Option<&mut R>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buf).await,
        None => std::future::pending().await,
    }
}

impl Run {
    /// The next non-empty chunk of audio, `None` at the end, or the error that ends the stream.
    async fn next_chunk(&mut self) -> Option<Result<Vec<i16>, ProviderError>> {
        loop {
            let Some(stdout) = self.stdout.as_mut() else {
                return self.finish().await;
            };
            // stdin, stdout and stderr are served together: espeak-ng speaks while it reads, so
            // waiting on one pipe while another is full would deadlock on long text.
            let event = tokio::select! {
                biased;
                r = stdout.read(&mut self.buf) => PipeEvent::Stdout(r),
                r = write_some(self.stdin.as_mut(), &self.text[self.written..]) => PipeEvent::Stdin(r),
                r = read_some(self.stderr.as_mut(), &mut self.err_buf) => PipeEvent::Stderr(r),
            };
            match event {
                PipeEvent::Stdout(Ok(0)) => self.stdout = None,
                PipeEvent::Stdout(Ok(n)) => match self.pipeline.push(&self.buf[..n]) {
                    Ok(chunk) if chunk.is_empty() => {}
                    Ok(chunk) => return Some(Ok(chunk)),
                    Err(e) => return Some(Err(self.decode_error(&e))),
                },
                PipeEvent::Stdout(Err(e)) => {
                    return Some(Err(failed(format!("cannot read espeak-ng's output: {e}"))))
                }
                PipeEvent::Stdin(Ok(n)) => {
                    self.written += n;
                    if self.written >= self.text.len() {
                        self.stdin = None;
                    }
                }
                // A broken pipe means espeak-ng stopped reading (it exited); its status says why.
                PipeEvent::Stdin(Err(_)) => self.stdin = None,
                PipeEvent::Stderr(Ok(0) | Err(_)) => self.stderr = None,
                PipeEvent::Stderr(Ok(n)) => self.keep_stderr(n),
            }
        }
    }

    /// Keeps the start of stderr (the line that says what went wrong), discarding the rest.
    fn keep_stderr(&mut self, n: usize) {
        let room = MAX_STDERR.saturating_sub(self.stderr_text.len());
        self.stderr_text
            .extend_from_slice(&self.err_buf[..n.min(room)]);
    }

    /// stdout is closed: reap the process, check how it ended and flush the last samples.
    async fn finish(&mut self) -> Option<Result<Vec<i16>, ProviderError>> {
        self.stdin = None;
        while let Some(stderr) = self.stderr.as_mut() {
            match stderr.read(&mut self.err_buf).await {
                Ok(0) | Err(_) => self.stderr = None,
                Ok(n) => self.keep_stderr(n),
            }
        }
        let status = match self.child.wait().await {
            Ok(status) => status,
            Err(e) => return Some(Err(failed(format!("cannot wait for espeak-ng: {e}")))),
        };
        if !status.success() {
            return Some(Err(self.exit_error(status)));
        }
        match self.pipeline.finish() {
            Ok((chunk, dangling)) => {
                if dangling {
                    warn!(
                        provider = PROVIDER_NAME,
                        "espeak-ng's output ended mid-sample"
                    );
                }
                (!chunk.is_empty()).then_some(Ok(chunk))
            }
            Err(PcmError::Empty) => Some(Err(failed(format!(
                "espeak-ng wrote no audio: {}",
                first_line(&self.stderr_text)
            )))),
            Err(e) => Some(Err(self.decode_error(&e))),
        }
    }

    fn exit_error(&self, status: ExitStatus) -> ProviderError {
        failed(format!(
            "espeak-ng exited with {status}: {}",
            first_line(&self.stderr_text)
        ))
    }

    fn decode_error(&self, e: &PcmError) -> ProviderError {
        match e {
            PcmError::Resample(e) => ProviderError::InvalidRequest {
                provider: PROVIDER_NAME.to_owned(),
                message: e.to_string(),
            },
            e => failed(format!("espeak-ng wrote an unreadable WAV stream: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use futures_util::FutureExt;
    use voxd_core::resample::resample_all;

    fn espeak_installed() -> bool {
        std::process::Command::new("espeak-ng")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Returns from the test, visibly, when espeak-ng is not installed; fails it instead when
    /// `VOXD_REQUIRE_ESPEAK=1` (CI installs espeak-ng, so a skip there would hide a broken setup).
    macro_rules! require_espeak {
        () => {
            if !espeak_installed() {
                assert!(
                    std::env::var("VOXD_REQUIRE_ESPEAK").as_deref() != Ok("1"),
                    "espeak-ng is not installed, and VOXD_REQUIRE_ESPEAK=1 requires it"
                );
                eprintln!("SKIPPED: espeak-ng not installed (apt-get install espeak-ng)");
                return;
            }
        };
    }

    /// A fresh, empty folder under the system temp dir.
    fn temp_dir(name: &str) -> PathBuf {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "voxd-espeak-{}-{name}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    /// Writes an executable shell script `name` into `dir`.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // A process forked by another test thread while the file was open for writing holds it
        // open until it execs, and running the script meanwhile fails with ETXTBSY. Run it once
        // here, retrying past that moment, so the code under test never meets it.
        for _ in 0..100 {
            match std::process::Command::new(&path).arg("--version").output() {
                Err(e) if e.raw_os_error() == Some(26) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => break,
            }
        }
        path
    }

    /// A stand-in for espeak-ng that logs its pid to `pids` and runs the real one.
    fn logging_espeak(dir: &Path) -> PathBuf {
        script(
            dir,
            "espeak-logged",
            "echo $$ >> \"$(dirname \"$0\")/pids\"\nexec espeak-ng \"$@\"",
        )
    }

    /// The pid of the last process `logging_espeak` started.
    fn last_pid(dir: &Path) -> u32 {
        let pids = std::fs::read_to_string(dir.join("pids")).expect("pid log");
        pids.lines()
            .last()
            .expect("a pid")
            .trim()
            .parse()
            .expect("a number")
    }

    /// Whether `pid` is a live process (not gone, not a zombie).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !state.is_some_and(|s| s.starts_with('Z'))
        })
    }

    fn voice(config: EspeakTtsConfig) -> EspeakTts {
        EspeakTts::new(config, Path::new(".")).expect("valid config")
    }

    async fn speak(tts: &EspeakTts, text: &str, hz: u32) -> Result<Vec<Vec<i16>>, ProviderError> {
        let mut stream = tts.synthesize(text.to_owned(), SampleRate(hz));
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.next().await {
            chunks.push(chunk?);
        }
        Ok(chunks)
    }

    fn rms(samples: &[i16]) -> f64 {
        let sum: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
        (sum / samples.len().max(1) as f64).sqrt()
    }

    /// What `espeak-ng --stdout` writes for `text` (read from stdin) with the default voice,
    /// as samples after its 44-byte header.
    fn espeak_directly(text: &str) -> Vec<i16> {
        use std::io::Write;
        let mut child = std::process::Command::new("espeak-ng")
            .args(["--stdout", "--stdin", "-v", "en-us", "-s", "175"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("espeak-ng runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write text");
        let out = child.wait_with_output().expect("espeak-ng output");
        assert_eq!(&out.stdout[..4], b"RIFF");
        assert_eq!(&out.stdout[36..40], b"data");
        out.stdout[44..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    #[test]
    fn config_defaults_and_unknown_keys() {
        let parsed: EspeakTtsConfig = toml::from_str("").expect("empty table");
        assert_eq!(parsed, EspeakTtsConfig::default());
        assert_eq!(parsed.voice, "en-us");
        assert_eq!(parsed.speed, 175);
        assert_eq!(parsed.source_rate, 22_050);
        assert!(parsed.max_processes >= 2);
        let parsed: EspeakTtsConfig =
            toml::from_str("voice = \"en-gb\"\npitch = 40\nmax_processes = 3").expect("valid");
        assert_eq!(parsed.pitch, Some(40));
        assert_eq!(parsed.max_processes, 3);
        let err = toml::from_str::<EspeakTtsConfig>("rate = 16000").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn bad_config_values_name_their_key() {
        let cases = [
            (
                EspeakTtsConfig {
                    voice: "--path=/tmp".into(),
                    ..EspeakTtsConfig::default()
                },
                "voice",
            ),
            (
                EspeakTtsConfig {
                    voice: "en us".into(),
                    ..EspeakTtsConfig::default()
                },
                "voice",
            ),
            (
                EspeakTtsConfig {
                    speed: 20,
                    ..EspeakTtsConfig::default()
                },
                "speed",
            ),
            (
                EspeakTtsConfig {
                    pitch: Some(100),
                    ..EspeakTtsConfig::default()
                },
                "pitch",
            ),
            (
                EspeakTtsConfig {
                    source_rate: 0,
                    ..EspeakTtsConfig::default()
                },
                "source_rate",
            ),
            (
                EspeakTtsConfig {
                    max_processes: 0,
                    ..EspeakTtsConfig::default()
                },
                "max_processes",
            ),
        ];
        for (config, key) in cases {
            let err = EspeakTts::new(config, Path::new(".")).unwrap_err();
            assert!(err.to_string().starts_with(&format!("{key}: ")), "{err}");
        }
    }

    #[test]
    fn a_missing_binary_is_a_clear_build_error() {
        for binary in ["/nonexistent/espeak-ng", "voxd-surely-no-such-espeak"] {
            let config = EspeakTtsConfig {
                binary: binary.into(),
                ..EspeakTtsConfig::default()
            };
            let err = EspeakTts::new(config, Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("binary: "), "{err}");
            assert!(err.contains("apt-get install espeak-ng"), "{err}");
        }
    }

    #[test]
    fn a_relative_binary_path_is_resolved_against_the_config_folder() {
        let dir = temp_dir("relative");
        std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
        script(&dir.join("bin"), "speak", "exit 0");
        let config = EspeakTtsConfig {
            binary: "bin/speak".into(),
            ..EspeakTtsConfig::default()
        };
        // The script runs (so it was found) but writes no audio: the voice check fails.
        let err = EspeakTts::new(config, &dir).unwrap_err().to_string();
        assert!(err.starts_with("voice: "), "{err}");
        assert!(err.contains("wrote no audio"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `out.wav` in `dir`: what a fake espeak-ng streams, 0.1 s of a ramp at 22.05 kHz with the
    /// open-ended length espeak-ng writes to a pipe.
    fn write_fake_wav(dir: &Path) {
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF\x24\xf0\xff\x7fWAVEfmt \x10\0\0\0\x01\0\x01\0");
        wav.extend_from_slice(&22_050u32.to_le_bytes());
        wav.extend_from_slice(&44_100u32.to_le_bytes());
        wav.extend_from_slice(b"\x02\0\x10\0data\0\xf0\xff\x7f");
        wav.extend((0..2205i16).flat_map(|i| (i * 10).to_le_bytes()));
        std::fs::write(dir.join("out.wav"), &wav).expect("write wav");
    }

    #[tokio::test]
    async fn runtime_failures_are_provider_errors() {
        let dir = temp_dir("failures");
        // A fake espeak-ng: a tiny valid WAV stream until `fail` exists, then an error exit.
        write_fake_wav(&dir);
        let fake = script(
            &dir,
            "fake-espeak",
            "d=$(dirname \"$0\")\n\
             [ \"$1\" = --version ] && { echo 'eSpeak NG text-to-speech: fake'; exit 0; }\n\
             cat > /dev/null\n\
             [ -e \"$d/fail\" ] && { echo 'Error: the voice broke' >&2; exit 3; }\n\
             cat \"$d/out.wav\"",
        );
        let tts = voice(EspeakTtsConfig {
            binary: fake.clone(),
            ..EspeakTtsConfig::default()
        });
        assert_eq!(tts.version(), "eSpeak NG text-to-speech: fake");
        let audio = speak(&tts, "hello", 16_000)
            .await
            .expect("fake audio")
            .concat();
        assert_eq!(audio.len(), 1600);

        std::fs::write(dir.join("fail"), "").expect("touch");
        let err = speak(&tts, "hello", 16_000).await.unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, ProviderError::Failed { .. }), "{err:?}");
        assert!(message.contains("exit status: 3"), "{message}");
        assert!(message.contains("the voice broke"), "{message}");

        std::fs::remove_file(&fake).expect("remove the binary");
        let message = speak(&tts, "hello", 16_000).await.unwrap_err().to_string();
        assert!(
            message.contains("not found; install it with apt-get install espeak-ng"),
            "{message}"
        );
        assert_eq!(tts.processes_running(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_sessions_voice_replaces_the_configured_one() {
        let dir = temp_dir("voices");
        write_fake_wav(&dir);
        // A fake espeak-ng that records its arguments.
        let fake = script(
            &dir,
            "fake-espeak",
            "d=$(dirname \"$0\")\n\
             [ \"$1\" = --version ] && { echo 'eSpeak NG text-to-speech: fake'; exit 0; }\n\
             echo \"$@\" >> \"$d/args\"\n\
             cat > /dev/null\n\
             cat \"$d/out.wav\"",
        );
        let tts = voice(EspeakTtsConfig {
            binary: fake,
            ..EspeakTtsConfig::default()
        });
        std::fs::remove_file(dir.join("args")).expect("the probe ran");
        let mut stream = tts.synthesize_as("bonjour".into(), SampleRate(16_000), Some("fr"));
        while let Some(chunk) = stream.next().await {
            chunk.expect("fake audio");
        }
        speak(&tts, "hello", 16_000).await.expect("fake audio");
        let args = std::fs::read_to_string(dir.join("args")).expect("args");
        let lines: Vec<&str> = args.lines().collect();
        assert_eq!(
            lines,
            [
                "--stdout --stdin -v fr -s 175",
                "--stdout --stdin -v en-us -s 175"
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn blank_text_and_bad_rates_start_no_process() {
        let dir = temp_dir("blank");
        let fake = script(
            &dir,
            "fake-espeak",
            "[ \"$1\" = --version ] && { echo fake; exit 0; }\n\
             echo started >> \"$(dirname \"$0\")/runs\"\n\
             printf 'RIFF\\044\\360\\377\\177WAVEfmt \\020\\0\\0\\0\\001\\0\\001\\0\\042\\126\\0\\0\\104\\254\\0\\0\\002\\0\\020\\0data\\0\\360\\377\\177'",
        );
        let tts = voice(EspeakTtsConfig {
            binary: fake,
            ..EspeakTtsConfig::default()
        });
        let probes = std::fs::read_to_string(dir.join("runs")).expect("probe ran");
        assert!(speak(&tts, "  \n", 16_000)
            .await
            .expect("no error")
            .is_empty());
        let err = speak(&tts, "hello", 0).await.unwrap_err();
        assert!(
            matches!(err, ProviderError::InvalidRequest { .. }),
            "{err:?}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("runs")).expect("runs"),
            probes
        );
        // A header and no samples is an empty sentence, not an error.
        assert!(speak(&tts, ".", 16_000).await.expect("no error").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn dropping_the_stream_kills_even_a_process_that_ignores_its_pipes() {
        let dir = temp_dir("kill");
        // Writes a header and 0.1 s of audio, then sleeps without touching its pipes: only a
        // kill ends it early.
        let fake = script(
            &dir,
            "fake-espeak",
            "[ \"$1\" = --version ] && { echo fake; exit 0; }\n\
             echo $$ >> \"$(dirname \"$0\")/pids\"\n\
             cat \"$(dirname \"$0\")/out.wav\"\n\
             exec sleep 600",
        );
        let mut wav = b"RIFF\x24\xf0\xff\x7fWAVEfmt \x10\0\0\0\x01\0\x01\0".to_vec();
        wav.extend_from_slice(&16_000u32.to_le_bytes());
        wav.extend_from_slice(&32_000u32.to_le_bytes());
        wav.extend_from_slice(b"\x02\0\x10\0data\0\xf0\xff\x7f");
        wav.extend((0..1600i16).flat_map(|i| (i * 3).to_le_bytes()));
        std::fs::write(dir.join("out.wav"), &wav).expect("write wav");
        // The constructor's probe would sleep too; let it see a finished stream instead.
        std::fs::write(dir.join("pids"), "").expect("pid log");
        let probe_fake = script(
            &dir,
            "probe-espeak",
            "[ \"$1\" = --version ] && { echo fake; exit 0; }\n\
             cat \"$(dirname \"$0\")/out.wav\"",
        );
        let mut tts = voice(EspeakTtsConfig {
            binary: probe_fake,
            source_rate: 16_000,
            ..EspeakTtsConfig::default()
        });
        tts.binary = fake;

        let mut stream = tts.synthesize("hello".into(), SampleRate::INTERNAL);
        let first = stream.next().await.expect("a chunk").expect("audio");
        assert!(!first.is_empty());
        let pid = last_pid(&dir);
        assert!(alive(pid));
        drop(stream);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while alive(pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!alive(pid), "process {pid} outlived its stream");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn speaks_a_sentence_at_16k_and_24k() {
        require_espeak!();
        let tts = voice(EspeakTtsConfig::default());
        assert!(tts.version().contains("eSpeak"), "{}", tts.version());
        let text = "The weather tomorrow will be sunny with a light breeze.";
        let mut lengths = Vec::new();
        for hz in [16_000, 24_000] {
            let chunks = speak(&tts, text, hz).await.expect("speech");
            assert!(chunks.iter().all(|c| !c.is_empty()));
            let audio = chunks.concat();
            let seconds = audio.len() as f64 / f64::from(hz);
            assert!((0.5..5.0).contains(&seconds), "{hz} Hz: {seconds} s");
            let level = rms(&audio);
            assert!(level > 500.0, "{hz} Hz: rms {level}");
            // Streamed, it is exactly the one-shot conversion of what espeak-ng writes.
            let direct = espeak_directly(text);
            assert_eq!(
                audio,
                resample_all(SampleRate(22_050), SampleRate(hz), &direct).expect("resample"),
                "{hz} Hz"
            );
            lengths.push(audio.len());
        }
        assert!(lengths[1].abs_diff(lengths[0] * 3 / 2) <= 2, "{lengths:?}");
        assert_eq!(tts.processes_running(), 0);
    }

    #[tokio::test]
    async fn text_that_looks_like_an_option_is_spoken() {
        require_espeak!();
        let tts = voice(EspeakTtsConfig::default());
        for text in ["-v de hello", "--help", "-"] {
            let audio = speak(&tts, text, 22_050).await.expect("speech").concat();
            assert_eq!(audio, espeak_directly(text), "{text:?}");
            assert!(!audio.is_empty(), "{text:?}");
        }
    }

    #[tokio::test]
    async fn an_unknown_voice_fails_at_build_time() {
        require_espeak!();
        let config = EspeakTtsConfig {
            voice: "xx-no-such-voice".into(),
            ..EspeakTtsConfig::default()
        };
        let err = EspeakTts::new(config, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("voice: "), "{err}");
        assert!(err.contains("does not exist"), "{err}");
        let config = EspeakTtsConfig {
            source_rate: 16_000,
            ..EspeakTtsConfig::default()
        };
        let err = EspeakTts::new(config, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("source_rate: "), "{err}");
        assert!(err.contains("source_rate = 22050"), "{err}");
    }

    #[tokio::test]
    async fn audio_streams_while_espeak_runs_and_dropping_kills_it() {
        require_espeak!();
        let dir = temp_dir("drop");
        let tts = voice(EspeakTtsConfig {
            binary: logging_espeak(&dir),
            ..EspeakTtsConfig::default()
        });
        // Minutes of speech: far more than a pipe holds, so espeak-ng cannot finish while the
        // stream is not read.
        let text = "This sentence goes on and on. ".repeat(400);
        let mut stream = tts.synthesize(text, SampleRate::INTERNAL);
        let first = stream.next().await.expect("a chunk").expect("speech");
        assert!(!first.is_empty());
        let pid = last_pid(&dir);
        assert!(alive(pid), "espeak-ng {pid} should still be speaking");
        assert_eq!(tts.processes_running(), 1);

        drop(stream);
        assert_eq!(tts.processes_running(), 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while alive(pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!alive(pid), "espeak-ng {pid} outlived its stream");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn process_slots_bound_concurrent_syntheses() {
        require_espeak!();
        let tts = voice(EspeakTtsConfig {
            max_processes: 1,
            ..EspeakTtsConfig::default()
        });
        let long = "One more sentence to speak. ".repeat(400);
        let mut first = tts.synthesize(long, SampleRate::INTERNAL);
        first.next().await.expect("a chunk").expect("speech");
        assert_eq!(tts.processes_running(), 1);

        let mut second = tts.synthesize("Next, please.".into(), SampleRate::INTERNAL);
        // Polled once, it waits for the slot rather than starting a second process.
        assert!(second.next().now_or_never().is_none());
        assert_eq!(tts.processes_running(), 1);

        drop(first);
        let audio = second.next().await.expect("a chunk").expect("speech");
        assert!(!audio.is_empty());
        drop(second);
        assert_eq!(tts.processes_running(), 0);
    }
}
