// voxd-audio.js: the audio arithmetic of voxd's browser client, with no browser API in it, so
// the same module runs in the page, in the AudioWorklet processors (voxd-worklets.js) and under
// `node --test` (web/tests/). It holds:
//   - PCM16 conversion: float samples to signed 16-bit little-endian bytes and back;
//   - Resampler: a streaming windowed-sinc resampler (the microphone's rate to the session's,
//     the answer's rate to the speaker's) that gives the same samples however its input is cut;
//   - Pcm16Framer: cuts a stream of samples into fixed PCM16 frames (20 ms for the socket);
//   - JitterBuffer: the speaker's buffer, with the barge-in rules of docs/protocol.md §7;
//   - PlaybackRules: which server event does what to the speaker, and which audio it takes.
//   - ResumeTracker: what a dropped connection needs to come back to its session (the session's
//     id and resume token, and how much of the answer's audio arrived), and when to retry.
// Nothing here allocates per call once its buffers have grown to the sizes in use.

/** Clamps a float sample to [-1, 1] and scales it to a signed 16-bit integer. NaN gives 0. */
export function floatToInt16(x) {
  if (!(x > -1)) return x <= -1 ? -32768 : 0; // NaN fails every comparison
  if (x >= 1) return 32767;
  return x < 0 ? Math.round(x * 32768) : Math.round(x * 32767);
}

/**
 * Writes `input` (floats in [-1, 1]) as PCM16 little-endian into `out` (a Uint8Array) at byte
 * `offset`. Returns the number of bytes written, 2 per sample.
 */
export function floatToPcm16le(input, out, offset = 0) {
  for (let i = 0; i < input.length; i++) {
    const s = floatToInt16(input[i]);
    out[offset + 2 * i] = s & 0xff;
    out[offset + 2 * i + 1] = (s >> 8) & 0xff;
  }
  return input.length * 2;
}

/**
 * Decodes PCM16 little-endian bytes (an ArrayBuffer or a Uint8Array) into floats in [-1, 1).
 * Writes into `out` when it is given and long enough; returns the samples as a Float32Array. An
 * odd trailing byte is ignored (the server never sends one).
 */
export function pcm16leToFloat(bytes, out) {
  const u8 = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const n = u8.length >> 1;
  const dst = out && out.length >= n ? out.subarray(0, n) : new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const v = u8[2 * i] | (u8[2 * i + 1] << 8);
    dst[i] = (v >= 0x8000 ? v - 0x10000 : v) / 32768;
  }
  return dst;
}

/**
 * A streaming resampler from `fromRate` to `toRate` Hz: a windowed-sinc interpolator (Blackman
 * window, `zeroCrossings` on each side) whose cut-off is set below the lower rate's Nyquist
 * frequency, so downsampling the microphone does not fold its high frequencies into speech.
 * Each output sample is normalised by the sum of its weights, so a constant stays constant.
 * Output `k` is the input signal at time `k * fromRate / toRate` (input samples), delayed by the
 * filter's half-width; the output does not depend on how the input is split into calls.
 * Equal rates pass samples through unchanged.
 */
export class Resampler {
  constructor(fromRate, toRate, { zeroCrossings = 8, rolloff = 0.92 } = {}) {
    if (!(fromRate >= 1 && toRate >= 1)) throw new RangeError('sample rates must be positive');
    this.fromRate = Math.round(fromRate); // whole Hz, as every audio API gives them
    this.toRate = Math.round(toRate);
    this.cutoff = Math.min(1, toRate / fromRate) * rolloff;
    this.half = Math.ceil(zeroCrossings / this.cutoff);
    // The kernel, tabulated by distance in input samples at TABLE_STEPS points per sample and
    // interpolated linearly: no trigonometry per sample.
    this.table = new Float32Array(this.half * TABLE_STEPS + 2);
    for (let i = 0; i < this.table.length; i++) {
      const d = i / TABLE_STEPS;
      this.table[i] = kernel(d * this.cutoff, d / this.half);
    }
    // Pending input; `hist[0]` is input sample `base`. It starts with `half` zeros of history.
    this.hist = new Float32Array(4096);
    this.len = this.half;
    // The next output's time in input samples, relative to `hist[0]`: `whole + frac / toRate`,
    // kept exact in integers so that no rounding depends on how the input was cut.
    this.whole = this.half;
    this.frac = 0;
    this.out = new Float32Array(0);
  }

  /** An upper bound on the output of one `process` call with `n` input samples. */
  maxOutput(n) {
    return Math.ceil(((this.len + n) * this.toRate) / this.fromRate) + 2;
  }

  /**
   * Resamples the next `input` samples. Returns a Float32Array view of the output, valid until
   * the next call.
   */
  process(input) {
    if (this.fromRate === this.toRate) return input;
    if (this.len + input.length > this.hist.length) {
      const grown = new Float32Array(Math.max(2 * this.hist.length, this.len + input.length));
      grown.set(this.hist.subarray(0, this.len));
      this.hist = grown;
    }
    this.hist.set(input, this.len);
    this.len += input.length;
    const need = this.maxOutput(0);
    if (this.out.length < need) this.out = new Float32Array(need * 2);
    const { hist, half, table, fromRate, toRate } = this;
    let n = 0;
    let whole = this.whole;
    let frac = this.frac;
    while (whole + half < this.len) {
      const centre = whole;
      const t = whole + frac / toRate;
      let acc = 0;
      let norm = 0;
      for (let j = centre - half + 1; j <= centre + half; j++) {
        const x = Math.abs(t - j) * TABLE_STEPS;
        const i = Math.floor(x);
        const w = table[i] + (table[i + 1] - table[i]) * (x - i);
        acc += hist[j] * w;
        norm += w;
      }
      this.out[n++] = norm !== 0 ? acc / norm : 0;
      frac += fromRate;
      whole += Math.floor(frac / toRate);
      frac %= toRate;
    }
    // Keep the history the next output needs: `half` samples before its centre.
    const keepFrom = Math.max(0, whole - half + 1);
    this.hist.copyWithin(0, keepFrom, this.len);
    this.len -= keepFrom;
    this.whole = whole - keepFrom;
    this.frac = frac;
    return this.out.subarray(0, n);
  }
}

/** Points per input sample in a Resampler's kernel table. */
const TABLE_STEPS = 256;

/** sinc(x) times a Blackman window over u in [-1, 1]. */
function kernel(x, u) {
  if (u <= -1 || u >= 1) return 0;
  const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
  const a = Math.PI * (u + 1);
  return sinc * (0.42 - 0.5 * Math.cos(a) + 0.08 * Math.cos(2 * a));
}

/**
 * Cuts a stream of float samples into PCM16 little-endian frames of `frameSamples` samples each
 * (320 for 20 ms at 16 kHz). `push` calls `onFrame(arrayBuffer)` for every frame completed; each
 * frame is a fresh ArrayBuffer, so it can be transferred.
 */
export class Pcm16Framer {
  constructor(frameSamples) {
    if (!(frameSamples > 0)) throw new RangeError('a frame needs at least one sample');
    this.frameSamples = frameSamples;
    this.frame = new Uint8Array(frameSamples * 2);
    this.filled = 0; // samples in `frame`
  }

  push(samples, onFrame) {
    let i = 0;
    while (i < samples.length) {
      const take = Math.min(this.frameSamples - this.filled, samples.length - i);
      floatToPcm16le(samples.subarray(i, i + take), this.frame, this.filled * 2);
      this.filled += take;
      i += take;
      if (this.filled === this.frameSamples) {
        const done = this.frame.buffer;
        this.frame = new Uint8Array(this.frameSamples * 2);
        this.filled = 0;
        onFrame(done);
      }
    }
  }
}

/** The speaker's states. `paused` remembers nothing: `resume` decides from what is buffered. */
export const SpeakerState = Object.freeze({
  IDLE: 'idle', // nothing to play, nothing expected
  BUFFERING: 'buffering', // holding audio until `startSamples` are in (or the stream ended)
  PLAYING: 'playing',
  PAUSED: 'paused', // playback_paused: silent, the buffer kept
});

/**
 * The speaker's jitter buffer, in samples at the speaker's rate. Its rules are the protocol's
 * (docs/protocol.md §7, "The client's player"):
 *   - `pause()` (playback_paused): output stops; the buffer is kept, and audio that still
 *     arrives is kept too;
 *   - `resume()` (playback_resumed): playback continues from the first unplayed sample, so the
 *     samples played are exactly those of an answer never paused;
 *   - `clear()` (interrupted, response_done interrupted): the buffer is dropped;
 *   - `end()` (response_done completed or failed): no more audio is coming, so what is buffered
 *     plays out even below the start threshold.
 * Playback starts once `startSamples` are buffered, and restarts the same way after running dry
 * mid-answer (an underrun), so a late packet costs one gap, not a stutter.
 *
 * | state     | push                      | pull (runs dry)           | pause  | resume               | clear | end               |
 * |-----------|---------------------------|---------------------------|--------|----------------------|-------|-------------------|
 * | idle      | buffering, or playing     | -                         | paused | -                    | idle  | -                 |
 * | buffering | playing at the threshold  | -                         | paused | -                    | idle  | playing if any    |
 * | playing   | -                         | idle if ended, else buffering (an underrun) | paused | -  | idle  | -                 |
 * | paused    | kept                      | -                         | -      | playing, or idle     | idle  | kept for resume   |
 *
 * The buffer holds at most `capacitySamples`; audio past that is dropped (counted in
 * `overflowed`). The server keeps at most its playback lead (200 ms) ahead, so only a server that
 * breaks the protocol can fill it.
 */
export class JitterBuffer {
  constructor({ capacitySamples, startSamples }) {
    if (!(capacitySamples > 0)) throw new RangeError('capacity must be positive');
    this.ring = new Float32Array(capacitySamples);
    this.startSamples = Math.min(Math.max(0, startSamples | 0), capacitySamples);
    this.read = 0;
    this.count = 0;
    this.state = SpeakerState.IDLE;
    this.ended = false;
    this.played = 0; // samples played, in total
    this.dropped = 0; // samples dropped by `clear`, in total
    this.overflowed = 0; // samples refused for lack of room, in total
    this.underruns = 0; // times the buffer ran dry mid-stream
  }

  get buffered() {
    return this.count;
  }

  /** Appends `samples`; returns how many were taken (the rest overflowed). */
  push(samples) {
    const cap = this.ring.length;
    const take = Math.min(samples.length, cap - this.count);
    let write = (this.read + this.count) % cap;
    for (let i = 0; i < take; i++) {
      this.ring[write] = samples[i];
      write = write + 1 === cap ? 0 : write + 1;
    }
    this.count += take;
    this.overflowed += samples.length - take;
    if (take > 0) {
      this.ended = false;
      if (this.state === SpeakerState.IDLE) this.state = SpeakerState.BUFFERING;
      if (this.state === SpeakerState.BUFFERING && this.count >= this.startSamples) {
        this.state = SpeakerState.PLAYING;
      }
    }
    return take;
  }

  /**
   * Fills `out` with the next samples to play, silence where there are none. Returns the number
   * of real samples written.
   */
  pull(out) {
    let n = 0;
    if (this.state === SpeakerState.PLAYING) {
      const cap = this.ring.length;
      n = Math.min(out.length, this.count);
      for (let i = 0; i < n; i++) {
        out[i] = this.ring[this.read];
        this.read = this.read + 1 === cap ? 0 : this.read + 1;
      }
      this.count -= n;
      this.played += n;
      if (this.count === 0) {
        if (this.ended) {
          this.state = SpeakerState.IDLE;
        } else {
          this.state = SpeakerState.BUFFERING;
          if (n < out.length) this.underruns += 1;
        }
      }
    }
    out.fill(0, n);
    return n;
  }

  pause() {
    this.state = SpeakerState.PAUSED;
  }

  resume() {
    if (this.state !== SpeakerState.PAUSED) return;
    if (this.count > 0) this.state = SpeakerState.PLAYING;
    else this.state = this.ended ? SpeakerState.IDLE : SpeakerState.BUFFERING;
  }

  /** Drops everything buffered; returns the number of samples dropped. */
  clear() {
    const n = this.count;
    this.dropped += n;
    this.read = 0;
    this.count = 0;
    this.ended = false;
    this.state = SpeakerState.IDLE;
    return n;
  }

  end() {
    this.ended = true;
    if (this.state === SpeakerState.BUFFERING) {
      this.state = this.count > 0 ? SpeakerState.PLAYING : SpeakerState.IDLE;
    }
  }
}

/** What the speaker does: the commands `PlaybackRules.onEvent` returns. */
export const SpeakerCommand = Object.freeze({
  START: 'start', // audio_start: the turn's audio follows
  PAUSE: 'pause',
  RESUME: 'resume',
  CLEAR: 'clear',
  END: 'end',
});

/**
 * Which server event does what to the speaker, and which binary frames it takes. A binary frame
 * belongs to the turn of the latest `audio_start` (frames carry no turn id); after that turn's
 * `interrupted` or `response_done`, no frame of it may come, so until the next `audio_start`
 * frames are refused (`acceptsAudio()` is false) rather than played.
 */
export class PlaybackRules {
  constructor() {
    this.turn = null; // the turn of the latest audio_start
    this.open = false; // between that audio_start and its turn's end
  }

  /** The speaker command for a server event (a parsed JSON object), or null for none. */
  onEvent(event) {
    switch (event.type) {
      case 'audio_start':
        this.turn = event.turn_id;
        this.open = true;
        return SpeakerCommand.START;
      case 'playback_paused':
        return event.turn_id === this.turn ? SpeakerCommand.PAUSE : null;
      case 'playback_resumed':
        return event.turn_id === this.turn ? SpeakerCommand.RESUME : null;
      case 'interrupted':
        if (event.turn_id !== this.turn) return null;
        this.open = false;
        return SpeakerCommand.CLEAR;
      case 'response_done':
        if (event.turn_id !== this.turn) return null;
        this.open = false;
        return event.status === 'interrupted' ? SpeakerCommand.CLEAR : SpeakerCommand.END;
      default:
        return null;
    }
  }

  acceptsAudio() {
    return this.open;
  }
}

/**
 * When to try to resume after a dropped connection, in ms after the drop and after each failed
 * try: a few seconds with backoff (docs/protocol.md §11.2: the server may notice a vanished
 * connection only after a write times out, and refuses the resume until then).
 */
export const RESUME_DELAYS_MS = Object.freeze([250, 500, 1000, 2000, 4000]);

/**
 * What a client needs to resume its session after a dropped connection (docs/protocol.md §11.2):
 * the `session_id` and `resume_token` of its `ready`, and how many bytes of the current answer's
 * audio arrived (the turn of the latest `audio_start`), so that the server sends the rest from the
 * first byte that did not.
 */
export class ResumeTracker {
  constructor() {
    this.sessionId = null;
    this.token = null;
    this.turn = null; // the turn of the latest audio_start
    this.bytes = 0; // bytes of its audio received
  }

  /** A server event (a parsed JSON object). */
  onEvent(event) {
    if (event.type === 'ready') {
      this.sessionId = event.session_id || null;
      this.token = event.resume_token || null;
      if (!event.resumed) {
        this.turn = null;
        this.bytes = 0;
      }
    } else if (event.type === 'audio_start') {
      this.turn = event.turn_id;
      this.bytes = 0;
    }
  }

  /** A binary frame of `byteLength` bytes arrived. */
  onAudio(byteLength) {
    if (this.turn !== null) this.bytes += byteLength;
  }

  /**
   * Whether a close with `code` may be resumed: only a connection that dropped without a close
   * frame (1006), of a session that gave a resume token. A close frame ends the session (1000,
   * 1001 at a drain, 1008 and 1009 for a client's fault).
   */
  canResume(code) {
    return code === 1006 && this.sessionId !== null && this.token !== null;
  }

  /** `url` (a URL) with the resume query: `resume`, `resume_token`, and `received` once audio began. */
  resumeUrl(url) {
    const u = new URL(url);
    u.searchParams.set('resume', this.sessionId);
    u.searchParams.set('resume_token', this.token);
    if (this.turn !== null) u.searchParams.set('received', `${this.turn}:${this.bytes}`);
    else u.searchParams.delete('received');
    return u;
  }
}

