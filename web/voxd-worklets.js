// voxd-worklets.js: the two AudioWorklet processors of voxd's browser client (voxd.js loads this
// module with `audioWorklet.addModule`; it runs on the audio rendering thread).
//   - `voxd-capture`: the microphone in. Resamples channel 0 from the context's rate to the
//     session's input rate, cuts it into 20 ms PCM16 frames and posts each frame (a transferred
//     ArrayBuffer) to the main thread, which sends it on the socket; every 100 ms it also posts
//     the level (RMS) of the audio.
//   - `voxd-player`: the speaker. Takes PCM16 frames at the answer's rate, resamples them to the
//     context's rate into a JitterBuffer and plays them, obeying the commands the main thread
//     posts in order with the audio (start, pause, resume, clear, end). It posts its state on
//     every change and every 100 ms while it plays.
// The arithmetic is voxd-audio.js's, which the Node tests cover.

import {
  JitterBuffer,
  Pcm16Framer,
  Resampler,
  SpeakerCommand,
  SpeakerState,
  pcm16leToFloat,
} from './voxd-audio.js';

// `sampleRate` is the AudioWorkletGlobalScope's: the context's rate.
/* global sampleRate, registerProcessor, AudioWorkletProcessor */

/** How often each processor reports, in seconds. */
const REPORT_S = 0.1;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate = 16000, frameMs = 20 } = options.processorOptions || {};
    this.resampler = new Resampler(sampleRate, targetRate);
    this.framer = new Pcm16Framer(Math.round((targetRate * frameMs) / 1000));
    this.sumSquares = 0;
    this.samples = 0;
    this.reportEvery = Math.round(sampleRate * REPORT_S);
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === 'stop') this.running = false;
    };
  }

  process(inputs) {
    if (!this.running) return false;
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true; // not connected yet
    for (let i = 0; i < channel.length; i++) this.sumSquares += channel[i] * channel[i];
    this.samples += channel.length;
    if (this.samples >= this.reportEvery) {
      this.port.postMessage({ type: 'level', rms: Math.sqrt(this.sumSquares / this.samples) });
      this.sumSquares = 0;
      this.samples = 0;
    }
    this.framer.push(this.resampler.process(channel), (frame) => {
      this.port.postMessage({ type: 'frame', frame }, [frame]);
    });
    return true;
  }
}

class PlayerProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { startMs = 40, capacityMs = 10000 } = options.processorOptions || {};
    this.buffer = new JitterBuffer({
      capacitySamples: Math.round((sampleRate * capacityMs) / 1000),
      startSamples: Math.round((sampleRate * startMs) / 1000),
    });
    this.resampler = null;
    this.sourceRate = 0;
    this.decoded = new Float32Array(0);
    this.sinceReport = 0;
    this.reportEvery = Math.round(sampleRate * REPORT_S);
    this.port.onmessage = (e) => this.command(e.data);
  }

  command(msg) {
    const before = this.buffer.state;
    switch (msg.type) {
      case 'audio': {
        if (msg.sampleRate !== this.sourceRate) {
          this.sourceRate = msg.sampleRate;
          this.resampler = new Resampler(msg.sampleRate, sampleRate);
        }
        const n = msg.pcm.byteLength >> 1;
        if (this.decoded.length < n) this.decoded = new Float32Array(n * 2);
        this.buffer.push(this.resampler.process(pcm16leToFloat(msg.pcm, this.decoded)));
        break;
      }
      case SpeakerCommand.START:
        break; // the audio that follows is pushed as it comes
      case SpeakerCommand.PAUSE:
        this.buffer.pause();
        break;
      case SpeakerCommand.RESUME:
        this.buffer.resume();
        break;
      case SpeakerCommand.CLEAR:
        this.buffer.clear();
        break;
      case SpeakerCommand.END:
        this.buffer.end();
        break;
      default:
        return;
    }
    if (this.buffer.state !== before || msg.type === SpeakerCommand.CLEAR) this.report();
  }

  report() {
    const b = this.buffer;
    this.port.postMessage({
      type: 'speaker',
      state: b.state,
      bufferedMs: (b.buffered * 1000) / sampleRate,
      playedMs: (b.played * 1000) / sampleRate,
      droppedMs: (b.dropped * 1000) / sampleRate,
      underruns: b.underruns,
    });
    this.sinceReport = 0;
  }

  process(_inputs, outputs) {
    const out = outputs[0];
    const before = this.buffer.state;
    this.buffer.pull(out[0]);
    for (let c = 1; c < out.length; c++) out[c].set(out[0]);
    this.sinceReport += out[0].length;
    if (
      this.buffer.state !== before ||
      (this.sinceReport >= this.reportEvery && before !== SpeakerState.IDLE)
    ) {
      this.report();
    }
    return true;
  }
}

registerProcessor('voxd-capture', CaptureProcessor);
registerProcessor('voxd-player', PlayerProcessor);
