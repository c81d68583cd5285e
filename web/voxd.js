// voxd.js: a small browser client for voxd's /ws protocol (docs/protocol.md), as an ES module.
// The demo page at `/` is built on it; docs/browser.md documents it.
//
//   import { VoxdClient } from '/voxd.js';
//   const voxd = new VoxdClient({ token });              // ws(s)://<this host>/ws by default
//   voxd.on('transcript', (e) => show(e.text, e.final));
//   voxd.on('response_text', (e) => append(e.text));
//   voxd.on('connection', (c) => status(c.state, c.error));
//   await voxd.connect();                                // resolves with `ready`
//   await voxd.startMicrophone();                        // mic in, speaker out
//   voxd.update({ instructions: 'Be brief.', greeting: 'Hi!' });
//   voxd.text('what about tomorrow');
//   voxd.cancel();
//
// What it does for you:
//   - microphone: getUserMedia with echo cancellation, noise suppression and auto gain, resampled
//     in an AudioWorklet to the session's input rate and streamed as 20 ms PCM16 frames;
//   - speaker: an AudioWorklet player with a small jitter buffer that follows the barge-in rules:
//     it pauses on `playback_paused` and keeps its buffer, resumes on `playback_resumed` with
//     nothing lost, and drops its buffer on `interrupted` and on `response_done` `interrupted`;
//   - events as callbacks: every server event by its `type` (and '*' for all of them), plus
//     three of the client's own: 'connection', 'speaker' and 'microphone';
//   - a refused connection explained: a browser does not show a WebSocket's HTTP status, so on a
//     refusal the client asks the server why (the same URL over plain HTTP, then /health/ready);
//   - a dropped connection resumed: on a close without a close frame (1006: a network blip) it
//     comes back to the same session for a few seconds (docs/protocol.md §11.2), the answer goes
//     on from the first byte that had not arrived, and the microphone keeps running.
//
// It needs voxd-audio.js and voxd-worklets.js next to it (the server serves all three). The
// worklets are a module of their own, loaded from this module's URL, so the page's
// Content-Security-Policy needs no `blob:`.

import { PlaybackRules, RESUME_DELAYS_MS, ResumeTracker, SpeakerCommand } from './voxd-audio.js';

/** A failure the client reports: a stable `code` and a message for people. */
export class VoxdError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'VoxdError';
    this.code = code;
  }
}

/** The connection's states, as the 'connection' callback reports them. */
export const ConnectionState = Object.freeze({
  IDLE: 'idle',
  CONNECTING: 'connecting',
  OPEN: 'open', // `ready` received
  RESUMING: 'resuming', // the connection dropped; coming back to the same session
  CLOSED: 'closed',
});

const DEFAULTS = {
  url: null, // ws(s)://<page host>/ws
  token: null, // a key or a token from POST /v1/tokens, sent as ?token=
  sampleRate: 16000, // the microphone's rate on the wire: 8000, 16000, 24000 or 48000
  frameMs: 20,
  jitterMs: 40, // the speaker waits for this much audio before it starts (and after running dry)
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
};

export class VoxdClient {
  /**
   * @param {object} [options]
   * @param {string} [options.url] the /ws URL (default: this page's host, ws or wss like the page)
   * @param {string} [options.token] an API key or a short-lived token (docs/protocol.md §1)
   * @param {number} [options.sampleRate] the input rate sent to the server (default 16000)
   * @param {number} [options.jitterMs] the speaker's start threshold (default 40 ms)
   * @param {object} [options.audio] getUserMedia audio constraints
   */
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options, audio: { ...DEFAULTS.audio, ...options.audio } };
    this.handlers = new Map();
    this.state = ConnectionState.IDLE;
    this.ws = null;
    this.ready = null;
    this.rules = new PlaybackRules();
    this.resume = new ResumeTracker();
    this.closing = false; // close() was called: a drop is not resumed
    this.context = null;
    this.worklets = null;
    this.player = null;
    this.capture = null;
    this.stream = null;
    this.source = null;
  }

  /**
   * Calls `handler(payload)` for `type`: a server event type ('transcript', 'response_done', ...),
   * '*' for every server event, 'connection' ({state, error?, code?, reason?}), 'speaker' ({state,
   * bufferedMs, playedMs, droppedMs, underruns}) or 'microphone' ({state, level?, error?}).
   * Returns a function that removes the handler.
   */
  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(handler);
    return () => this.handlers.get(type).delete(handler);
  }

  emit(type, payload) {
    for (const h of this.handlers.get(type) || []) {
      try {
        h(payload);
      } catch (err) {
        // A handler's bug must not break the client's own bookkeeping; it still shows.
        setTimeout(() => {
          throw err;
        });
      }
    }
  }

  setState(state, extra = {}) {
    this.state = state;
    this.emit('connection', { state, ...extra });
  }

  /** The /ws URL with `sample_rate` and `token`. */
  socketUrl() {
    const base = this.options.url
      ? new URL(this.options.url, location.href)
      : new URL('/ws', location.href);
    if (base.protocol === 'http:') base.protocol = 'ws:';
    if (base.protocol === 'https:') base.protocol = 'wss:';
    base.searchParams.set('sample_rate', String(this.options.sampleRate));
    if (this.options.token) base.searchParams.set('token', this.options.token);
    return base;
  }

  /**
   * Opens the session. Resolves with the `ready` event; rejects with a VoxdError whose code says
   * why the server refused (`unauthorized`, `origin_not_allowed`, `full`, `draining`,
   * `unreachable`, ...).
   */
  connect() {
    if (this.ws || this.state === ConnectionState.RESUMING) {
      return Promise.reject(new VoxdError('already_connected', 'already connected'));
    }
    this.closing = false;
    this.rules = new PlaybackRules();
    this.resume = new ResumeTracker();
    this.setState(ConnectionState.CONNECTING);
    return this.openSocket(this.socketUrl()).catch((error) => {
      this.setState(ConnectionState.CLOSED, { code: error.closeCode, reason: error.closeReason, error });
      throw error;
    });
  }

  /**
   * Opens a socket at `url`. Resolves with its `ready`; rejects with a VoxdError (why the server
   * refused, `closeCode`/`closeReason` set) when it closes before. Once open, a close is
   * `onClosed`'s.
   */
  openSocket(url) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(url);
      } catch (err) {
        reject(new VoxdError('bad_url', `cannot open ${url.origin}: ${err.message}`));
        return;
      }
      ws.binaryType = 'arraybuffer';
      this.ws = ws;
      let opened = false;
      ws.onmessage = (msg) => {
        if (typeof msg.data !== 'string') {
          this.resume.onAudio(msg.data.byteLength);
          this.onAudio(msg.data);
          return;
        }
        let event;
        try {
          event = JSON.parse(msg.data);
        } catch {
          return; // the server sends JSON only
        }
        this.resume.onEvent(event);
        if (event.type === 'ready' && !opened) {
          opened = true;
          this.ready = event;
          this.setState(ConnectionState.OPEN, { ready: event, resumed: !!event.resumed });
          resolve(event);
        }
        this.onEvent(event);
      };
      ws.onclose = async (e) => {
        if (this.ws === ws) this.ws = null;
        if (opened) {
          this.onClosed(e);
          return;
        }
        const error = await explainRefusal(url);
        error.closeCode = e.code;
        error.closeReason = e.reason;
        reject(error);
      };
    });
  }

  /** An open session's socket closed: resumed if it dropped, else the session is over. */
  onClosed(e) {
    if (!this.closing && this.resume.canResume(e.code)) {
      this.resumeSession(e);
      return;
    }
    this.stopMicrophone();
    this.speaker(SpeakerCommand.CLEAR);
    this.setState(ConnectionState.CLOSED, { code: e.code, reason: e.reason });
  }

  /**
   * Comes back to the session after a drop: tries `RESUME_DELAYS_MS` apart, each with what has
   * arrived of the answer. The microphone keeps running (its frames are dropped meanwhile) and the
   * speaker keeps its buffer: the answer goes on from the first byte that had not arrived. When
   * every try fails, the session is over (`resume_failed`): connect() starts a new one.
   */
  async resumeSession(drop) {
    for (const [i, delay] of RESUME_DELAYS_MS.entries()) {
      if (this.closing) break;
      this.setState(ConnectionState.RESUMING, { attempt: i + 1, code: drop.code });
      await new Promise((r) => setTimeout(r, delay));
      if (this.closing) break;
      try {
        await this.openSocket(this.resume.resumeUrl(this.socketUrl()));
        if (this.closing && this.ws) this.ws.close(1000, 'client closed');
        return;
      } catch {
        // refused (the server has not noticed the drop yet, or the session is gone) or
        // unreachable: try again until the tries run out
      }
    }
    if (this.closing) return; // close() said so already
    this.stopMicrophone();
    this.speaker(SpeakerCommand.CLEAR);
    const error = new VoxdError(
      'resume_failed',
      'The connection dropped and the session could not be resumed.',
    );
    this.setState(ConnectionState.CLOSED, { code: drop.code, reason: drop.reason, error });
  }

  onEvent(event) {
    const command = this.rules.onEvent(event);
    if (command) this.speaker(command);
    this.emit(event.type, event);
    this.emit('*', event);
  }

  onAudio(data) {
    if (!this.rules.acceptsAudio() || !this.player) return;
    const rate = (this.ready && this.ready.output_sample_rate) || 16000;
    this.player.port.postMessage({ type: 'audio', pcm: data, sampleRate: rate }, [data]);
  }

  speaker(command) {
    if (this.player) this.player.port.postMessage({ type: command });
  }

  /** Sends a JSON message (`{type, ...}`). Returns false when the socket is not open. */
  send(message) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  /** A user turn as text. */
  text(text) {
    return this.send({ type: 'text', text });
  }

  /** `session_update`: any of instructions, voice, language, tools, turn, history, greeting. */
  update(fields) {
    return this.send({ type: 'session_update', ...fields });
  }

  /** Stops the answer in progress (the server answers `interrupted`). */
  cancel() {
    return this.send({ type: 'cancel' });
  }

  /** The bot says `text` verbatim. */
  say(text) {
    return this.send({ type: 'say', text });
  }

  /** The bot answers now, from the history. */
  respond() {
    return this.send({ type: 'respond' });
  }

  /** The answer to a `tool_call` with `runs: "client"`. */
  toolResult(callId, result) {
    return this.send({ type: 'tool_result', call_id: callId, result });
  }

  /**
   * The AudioContext, its worklets and the speaker, made on first use. Browsers start a context
   * only after a user gesture (unless the page may autoplay): call this from a click, or call
   * `resumeAudio()` from one later.
   */
  async audio() {
    if (!this.context) {
      this.context = new AudioContext({ latencyHint: 'interactive' });
      this.worklets = this.context.audioWorklet.addModule(
        new URL('./voxd-worklets.js', import.meta.url),
      );
    }
    await this.worklets;
    if (!this.player) {
      this.player = new AudioWorkletNode(this.context, 'voxd-player', {
        numberOfInputs: 0,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: { startMs: this.options.jitterMs },
      });
      this.player.port.onmessage = (e) => this.emit('speaker', e.data);
      this.player.connect(this.context.destination);
    }
    if (this.context.state === 'suspended') {
      // Resolves at once where autoplay is allowed; otherwise it waits for a gesture, so do not
      // wait on it.
      this.context.resume().catch(() => {});
    }
    return this.context;
  }

  /** Whether audio is blocked until a user gesture (call `resumeAudio()` from one). */
  get audioBlocked() {
    return !!this.context && this.context.state !== 'running';
  }

  /** Resumes the AudioContext: call it from a click or key press. */
  resumeAudio() {
    return this.context ? this.context.resume() : Promise.resolve();
  }

  /**
   * Opens the microphone and streams it. Rejects with a VoxdError (`microphone_denied`,
   * `no_microphone`, `microphone_failed`); the session stays open, so text still works.
   */
  async startMicrophone() {
    if (this.capture) return;
    const context = await this.audio();
    this.emit('microphone', { state: 'starting' });
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, ...this.options.audio },
      });
    } catch (err) {
      const error =
        err && err.name === 'NotAllowedError'
          ? new VoxdError('microphone_denied', 'The browser denied the microphone.')
          : err && err.name === 'NotFoundError'
            ? new VoxdError('no_microphone', 'No microphone was found.')
            : new VoxdError('microphone_failed', `The microphone failed: ${err && err.message}`);
      this.emit('microphone', { state: 'off', error });
      throw error;
    }
    this.stream = stream;
    this.source = context.createMediaStreamSource(stream);
    this.capture = new AudioWorkletNode(context, 'voxd-capture', {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: 'explicit',
      processorOptions: { targetRate: this.options.sampleRate, frameMs: this.options.frameMs },
    });
    this.capture.port.onmessage = (e) => {
      if (e.data.type === 'frame') {
        if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(e.data.frame);
      } else if (e.data.type === 'level') {
        this.emit('microphone', { state: 'on', level: e.data.rms });
      }
    };
    this.source.connect(this.capture);
    this.emit('microphone', { state: 'on', level: 0 });
  }

  /** Stops the microphone (the session stays open). */
  stopMicrophone() {
    if (!this.capture) return;
    this.capture.port.postMessage({ type: 'stop' });
    this.source.disconnect();
    this.capture.disconnect();
    for (const track of this.stream.getTracks()) track.stop();
    this.capture = null;
    this.source = null;
    this.stream = null;
    this.emit('microphone', { state: 'off' });
  }

  /** Closes the session and the microphone. The speaker stays ready for a next `connect`. */
  close() {
    this.closing = true;
    this.stopMicrophone();
    if (this.state === ConnectionState.RESUMING) {
      // No socket is open: the session ends here (a resume under way is closed when it opens).
      this.speaker(SpeakerCommand.CLEAR);
      this.setState(ConnectionState.CLOSED, { code: 1000, reason: 'client closed' });
    }
    if (this.ws) this.ws.close(1000, 'client closed');
  }
}

/**
 * Why the server refused the WebSocket at `url`: asks the same URL over plain HTTP (the auth
 * check comes before the upgrade check, so a bad token shows as 401 `unauthorized`), then
 * `/health/ready` (full, draining).
 */
export async function explainRefusal(url) {
  const http = new URL(url);
  http.protocol = http.protocol === 'wss:' ? 'https:' : 'http:';
  let response;
  try {
    response = await fetch(http, { cache: 'no-store' });
  } catch {
    if (typeof location !== 'undefined' && http.origin !== location.origin) {
      // voxd's error answers carry no CORS header: another origin cannot read them.
      return new VoxdError('refused', `voxd at ${http.host} refused the connection or cannot be reached.`);
    }
    return new VoxdError('unreachable', `voxd at ${http.host} cannot be reached.`);
  }
  const body = await response.json().catch(() => null);
  const error = body && body.error;
  if (response.status === 401) {
    const message = http.searchParams.has('token')
      ? 'The server refused this token: it is wrong or has expired. Ask for a new one.'
      : 'This server needs an API key or a token: open the page with ?token=YOUR_TOKEN.';
    return new VoxdError('unauthorized', message);
  }
  if (error && error.code && error.code !== 'not_websocket') {
    return new VoxdError(error.code, error.message || error.code);
  }
  try {
    const ready = await fetch(new URL('/health/ready', http), { cache: 'no-store' });
    const status = (await ready.json()).status;
    if (ready.status === 503) {
      return new VoxdError(status, `The server is not taking sessions now (${status}).`);
    }
  } catch {
    // fall through to the generic message
  }
  return new VoxdError('refused', 'The server closed the connection before the session began.');
}
