// The pure parts of voxd's browser client (web/voxd-audio.js) under `node --test`.
// tests/browser.rs runs this file, so `cargo test` does.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  JitterBuffer,
  Pcm16Framer,
  PlaybackRules,
  Resampler,
  SpeakerCommand,
  SpeakerState,
  floatToInt16,
  floatToPcm16le,
  pcm16leToFloat,
  RESUME_DELAYS_MS,
  ResumeTracker,
} from '../voxd-audio.js';

/** `n` samples 0, 1, 2, ... (distinct, so a lost or repeated sample shows). */
const ramp = (n, from = 0) => Float32Array.from({ length: n }, (_, i) => from + i);

/** Resamples `input` in chunks of `chunk` samples; returns everything produced. */
function resampleAll(r, input, chunk) {
  const out = [];
  for (let i = 0; i < input.length; i += chunk) out.push(...r.process(input.subarray(i, i + chunk)));
  return Float32Array.from(out);
}

function sine(freq, rate, n, amplitude = 0.5) {
  return Float32Array.from({ length: n }, (_, i) => amplitude * Math.sin((2 * Math.PI * freq * i) / rate));
}

function rms(x) {
  return Math.sqrt(x.reduce((a, v) => a + v * v, 0) / x.length);
}

// ----- PCM16 ------------------------------------------------------------------------------------

test('floats become signed 16-bit samples, clamped, with NaN as silence', () => {
  assert.equal(floatToInt16(0), 0);
  assert.equal(floatToInt16(1), 32767);
  assert.equal(floatToInt16(-1), -32768);
  assert.equal(floatToInt16(0.5), 16384);
  assert.equal(floatToInt16(-0.5), -16384);
  assert.equal(floatToInt16(3), 32767);
  assert.equal(floatToInt16(-3), -32768);
  assert.equal(floatToInt16(NaN), 0);
});

test('PCM16 is little-endian on the wire and decodes back', () => {
  const out = new Uint8Array(8);
  assert.equal(floatToPcm16le(Float32Array.of(1, -1, 0, 0.5), out), 8);
  assert.deepEqual([...out], [0xff, 0x7f, 0x00, 0x80, 0x00, 0x00, 0x00, 0x40]);
  const back = pcm16leToFloat(out.buffer);
  assert.deepEqual([...back], [32767 / 32768, -1, 0, 16384 / 32768]);
  // A reused output buffer is written in place, and an odd trailing byte is ignored.
  const reuse = new Float32Array(16);
  const view = pcm16leToFloat(Uint8Array.of(0x01, 0x00, 0xff), reuse);
  assert.equal(view.length, 1);
  assert.equal(view.buffer, reuse.buffer);
  assert.equal(view[0], 1 / 32768);
});

test('the framer cuts any stream into whole frames, each its own transferable buffer', () => {
  const framer = new Pcm16Framer(320);
  const frames = [];
  const input = Float32Array.from({ length: 1000 }, (_, i) => ((i % 200) - 100) / 128);
  // Pieces of awkward sizes, as an AudioWorklet's 128-sample quanta after resampling give.
  for (const [a, b] of [[0, 43], [43, 85], [85, 700], [700, 1000]]) {
    framer.push(input.subarray(a, b), (f) => frames.push(f));
  }
  assert.equal(frames.length, 3); // 960 samples framed, 40 pending
  assert.equal(framer.filled, 40);
  for (const f of frames) assert.equal(f.byteLength, 640);
  assert.equal(new Set(frames).size, 3);
  const samples = frames.flatMap((f) => [...new Int16Array(f)]);
  assert.deepEqual(samples, [...input.subarray(0, 960)].map(floatToInt16));
});

// ----- resampling -------------------------------------------------------------------------------

test('equal rates pass samples through untouched', () => {
  const r = new Resampler(16000, 16000);
  const x = ramp(100);
  assert.equal(r.process(x), x);
});

for (const [from, to] of [[48000, 16000], [44100, 16000], [16000, 48000], [16000, 44100], [24000, 16000]]) {
  test(`${from} Hz to ${to} Hz: the output does not depend on how the input is cut`, () => {
    const input = sine(440, from, from / 2); // 0.5 s
    const whole = resampleAll(new Resampler(from, to), input, input.length);
    const quanta = resampleAll(new Resampler(from, to), input, 128);
    const odd = resampleAll(new Resampler(from, to), input, 37);
    assert.equal(quanta.length, whole.length);
    assert.equal(odd.length, whole.length);
    for (let i = 0; i < whole.length; i++) {
      assert.ok(Math.abs(quanta[i] - whole[i]) < 1e-6, `sample ${i}: ${quanta[i]} vs ${whole[i]}`);
      assert.ok(Math.abs(odd[i] - whole[i]) < 1e-6, `sample ${i}: ${odd[i]} vs ${whole[i]}`);
    }
    // Output k is input time k * from / to, behind by the filter's half-width only.
    const r = new Resampler(from, to);
    const expected = Math.floor(((input.length - r.half) * to) / from);
    assert.ok(Math.abs(whole.length - expected) <= 1, `${whole.length} vs ${expected}`);
  });

  test(`${from} Hz to ${to} Hz: speech-band tones keep their level and pitch`, () => {
    const r = new Resampler(from, to);
    const tone = 1000;
    const out = resampleAll(r, sine(tone, from, from), 128).subarray(r.half * 2); // skip the warm-up
    assert.ok(Math.abs(rms(out) - 0.5 / Math.SQRT2) < 0.01, `rms ${rms(out)}`);
    let crossings = 0;
    for (let i = 1; i < out.length; i++) if (out[i - 1] < 0 !== out[i] < 0) crossings += 1;
    const measured = (crossings / 2) * (to / out.length);
    assert.ok(Math.abs(measured - tone) < 10, `pitch ${measured} Hz`);
  });
}

test('a constant stays constant', () => {
  const r = new Resampler(44100, 16000);
  const out = resampleAll(r, new Float32Array(44100).fill(0.25), 128).subarray(r.half);
  for (const v of out) assert.ok(Math.abs(v - 0.25) < 1e-6, `${v}`);
});

test('downsampling removes what the lower rate cannot carry (no aliasing)', () => {
  // 12 kHz is above 16 kHz's Nyquist frequency: unfiltered, it would fold down to 4 kHz.
  const r = new Resampler(48000, 16000);
  const out = resampleAll(r, sine(12000, 48000, 48000), 128).subarray(r.half);
  assert.ok(rms(out) < 0.01 * (0.5 / Math.SQRT2), `rms ${rms(out)}`);
});

// ----- the speaker's jitter buffer --------------------------------------------------------------

const buffer = (start = 4, capacity = 64) =>
  new JitterBuffer({ capacitySamples: capacity, startSamples: start });

/** Pulls `n` samples; returns [real samples written, the samples]. */
function pull(b, n) {
  const out = new Float32Array(n).fill(-1);
  const got = b.pull(out);
  return [got, [...out]];
}

test('playback waits for the start threshold, then plays in order', () => {
  const b = buffer(4);
  assert.equal(b.state, SpeakerState.IDLE);
  b.push(ramp(3, 1));
  assert.equal(b.state, SpeakerState.BUFFERING);
  assert.deepEqual(pull(b, 2), [0, [0, 0]]);
  b.push(ramp(2, 4));
  assert.equal(b.state, SpeakerState.PLAYING);
  assert.deepEqual(pull(b, 3), [3, [1, 2, 3]]);
  assert.deepEqual(pull(b, 3), [2, [4, 5, 0]]);
});

test('running dry mid-answer is an underrun: it waits for the threshold again', () => {
  const b = buffer(4);
  b.push(ramp(4, 1));
  pull(b, 6);
  assert.equal(b.state, SpeakerState.BUFFERING);
  assert.equal(b.underruns, 1);
  b.push(ramp(2, 5));
  assert.deepEqual(pull(b, 2), [0, [0, 0]]);
  b.push(ramp(2, 7));
  assert.deepEqual(pull(b, 4), [4, [5, 6, 7, 8]]);
});

test('playback_paused keeps the buffer; playback_resumed plays every sample exactly once', () => {
  const b = buffer(2);
  const played = [];
  const take = (n) => {
    const out = new Float32Array(n);
    const got = b.pull(out);
    played.push(...out.subarray(0, got));
    return got;
  };
  b.push(ramp(10, 1));
  take(3);
  b.pause();
  assert.equal(b.state, SpeakerState.PAUSED);
  assert.equal(take(5), 0, 'nothing plays while paused');
  b.push(ramp(5, 11)); // frames already on the way when the server paused are kept
  assert.equal(b.buffered, 12);
  b.resume();
  assert.equal(b.state, SpeakerState.PLAYING);
  while (take(4) > 0);
  assert.deepEqual(played, [...ramp(15, 1)]);
  assert.equal(b.played, 15);
  assert.equal(b.dropped, 0);
});

test('a pause before the audio starts holds it until resumed', () => {
  const b = buffer(4);
  b.pause();
  b.push(ramp(8, 1));
  assert.equal(b.state, SpeakerState.PAUSED);
  assert.deepEqual(pull(b, 2), [0, [0, 0]]);
  b.resume();
  assert.deepEqual(pull(b, 2), [2, [1, 2]]);
});

test('interrupted drops the buffer, and the next answer starts from its own first sample', () => {
  const b = buffer(2);
  b.push(ramp(10, 1));
  pull(b, 2);
  b.pause();
  assert.equal(b.clear(), 8);
  assert.equal(b.dropped, 8);
  assert.equal(b.state, SpeakerState.IDLE);
  assert.deepEqual(pull(b, 3), [0, [0, 0, 0]]);
  b.push(ramp(3, 100));
  assert.deepEqual(pull(b, 3), [3, [100, 101, 102]]);
});

test('the end of an answer plays out what is left, even under the threshold', () => {
  const b = buffer(8);
  b.push(ramp(3, 1));
  assert.equal(b.state, SpeakerState.BUFFERING);
  b.end();
  assert.equal(b.state, SpeakerState.PLAYING);
  assert.deepEqual(pull(b, 4), [3, [1, 2, 3, 0]]);
  assert.equal(b.state, SpeakerState.IDLE);
  assert.equal(b.underruns, 0, 'the end of an answer is not an underrun');
  // An answer that ended while paused (response_done after a resume) plays out on resume.
  b.push(ramp(2, 1));
  b.pause();
  b.end();
  b.resume();
  assert.deepEqual(pull(b, 3), [2, [1, 2, 0]]);
  assert.equal(b.state, SpeakerState.IDLE);
});

test('past its capacity the buffer refuses audio and counts it', () => {
  const b = buffer(1, 8);
  assert.equal(b.push(ramp(6, 1)), 6);
  assert.equal(b.push(ramp(6, 7)), 2);
  assert.equal(b.overflowed, 4);
  assert.deepEqual(pull(b, 10)[1].slice(0, 8), [1, 2, 3, 4, 5, 6, 7, 8]);
  // The ring wraps around without losing order.
  b.push(ramp(5, 20));
  b.push(ramp(3, 25));
  assert.deepEqual(pull(b, 8), [8, [20, 21, 22, 23, 24, 25, 26, 27]]);
});

// ----- which event does what --------------------------------------------------------------------

test('the protocol events map to the speaker rules of docs/protocol.md', () => {
  const r = new PlaybackRules();
  assert.equal(r.acceptsAudio(), false, 'no audio before audio_start');
  assert.equal(r.onEvent({ type: 'response_text', turn_id: 1, text: 'Hi.' }), null);
  assert.equal(r.onEvent({ type: 'audio_start', turn_id: 1 }), SpeakerCommand.START);
  assert.equal(r.acceptsAudio(), true);
  assert.equal(r.onEvent({ type: 'playback_paused', turn_id: 1 }), SpeakerCommand.PAUSE);
  assert.equal(r.onEvent({ type: 'playback_resumed', turn_id: 1 }), SpeakerCommand.RESUME);
  assert.equal(r.onEvent({ type: 'response_done', turn_id: 1, status: 'completed' }), SpeakerCommand.END);
  assert.equal(r.acceptsAudio(), false, 'no audio of a turn after its response_done');

  assert.equal(r.onEvent({ type: 'audio_start', turn_id: 3 }), SpeakerCommand.START);
  assert.equal(r.onEvent({ type: 'playback_paused', turn_id: 3 }), SpeakerCommand.PAUSE);
  assert.equal(r.onEvent({ type: 'interrupted', turn_id: 3 }), SpeakerCommand.CLEAR);
  assert.equal(r.acceptsAudio(), false, 'no audio of a turn after its interrupted');
  assert.equal(r.onEvent({ type: 'response_done', turn_id: 3, status: 'interrupted' }), SpeakerCommand.CLEAR);

  // A turn interrupted before its audio began had no audio_start: it leaves the speaker alone.
  assert.equal(r.onEvent({ type: 'interrupted', turn_id: 4 }), null);
  assert.equal(r.onEvent({ type: 'response_done', turn_id: 4, status: 'interrupted' }), null);
  // A failed answer plays out what it sent: that was heard.
  r.onEvent({ type: 'audio_start', turn_id: 5 });
  assert.equal(r.onEvent({ type: 'response_done', turn_id: 5, status: 'failed' }), SpeakerCommand.END);
});

test('a dropped connection resumes with the session, its token and the audio that arrived', () => {
  const r = new ResumeTracker();
  assert.equal(r.canResume(1006), false, 'nothing to resume before ready');
  r.onEvent({ type: 'ready', session_id: 's1', resume_token: 'ab12' });
  const base = new URL('ws://voxd.test/ws?sample_rate=16000&token=t');
  let u = r.resumeUrl(base);
  assert.equal(u.searchParams.get('resume'), 's1');
  assert.equal(u.searchParams.get('resume_token'), 'ab12');
  assert.equal(u.searchParams.get('received'), null, 'no audio yet: no received');
  assert.equal(u.searchParams.get('token'), 't', 'the credentials stay');
  assert.equal(base.searchParams.get('resume'), null, 'the base URL is left alone');

  r.onAudio(640); // before any audio_start: not an answer's
  r.onEvent({ type: 'audio_start', turn_id: 3 });
  r.onAudio(640);
  r.onAudio(320);
  assert.equal(r.resumeUrl(base).searchParams.get('received'), '3:960');
  // Back in the same session: the count goes on; a new answer counts from zero.
  r.onEvent({ type: 'ready', session_id: 's1', resume_token: 'ab12', resumed: true });
  r.onAudio(640);
  assert.equal(r.resumeUrl(base).searchParams.get('received'), '3:1600');
  r.onEvent({ type: 'audio_start', turn_id: 5 });
  assert.equal(r.resumeUrl(base).searchParams.get('received'), '5:0');

  // Only a drop without a close frame is resumed.
  assert.equal(r.canResume(1006), true);
  for (const code of [1000, 1001, 1008, 1009, 1011]) assert.equal(r.canResume(code), false, `${code}`);
  // A new session (not resumed) forgets the old answer; one without a token cannot resume.
  r.onEvent({ type: 'ready', session_id: 's2' });
  assert.equal(r.canResume(1006), false);
  assert.equal(r.turn, null);

  const total = RESUME_DELAYS_MS.reduce((a, b) => a + b, 0);
  assert.ok(total >= 5000 && total <= 10000, `retries span a few seconds: ${total} ms`);
  assert.ok(RESUME_DELAYS_MS.every((d, i) => i === 0 || d >= RESUME_DELAYS_MS[i - 1]), 'backoff');
});

