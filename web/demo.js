// demo.js: voxd's demo page (index.html), built on voxd.js. Shows the conversation turn by turn
// (the live transcript, the reply as it arrives, what was heard after a barge-in, tool calls and
// their results, time to first audio and the timing waterfall), the connection, the speaker and
// the microphone, and a settings panel that shapes the session with `session_update`.
//
// URL parameters: `?token=` (a key or a token, passed to /ws; removed from the address bar once
// read), `?autostart=1` (start the session and the microphone on load, without a click).
//
// Every turn is an <li class="turn" data-turn="ID" data-status="..."> whose status is one of
// listening, thinking, speaking, paused, completed, interrupted, failed, false_alarm, no_speech:
// the end-to-end test reads them.

import { VoxdClient } from './voxd.js';

const $ = (id) => document.getElementById(id);
const ui = {
  start: $('start'),
  connection: $('connection'),
  speaker: $('speaker'),
  micLevel: $('mic-level'),
  notice: $('notice'),
  turns: $('turns'),
  empty: $('empty'),
  textForm: $('text-form'),
  textInput: $('text-input'),
  send: $('send'),
  cancel: $('cancel'),
  settingsForm: $('settings-form'),
  settingsStatus: $('settings-status'),
  events: $('events'),
  template: $('turn-template'),
};

const SETTINGS_KEY = 'voxd-demo-settings';
const SETTINGS = ['instructions', 'voice', 'greeting'];
const MAX_EVENTS = 300;

const params = new URLSearchParams(location.search);
const token = params.get('token');
if (token) {
  // Keep the token out of the address bar, bookmarks and screenshots once it is read.
  params.delete('token');
  const rest = params.toString();
  history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : '') + location.hash);
}

/** One client for the page's life: its AudioContext and speaker serve every session. */
let client = null;
let running = false;
/** The turns shown, by turn id. */
const turns = new Map();

// ----- notices and status ---------------------------------------------------------------------

function notify(message, kind = 'error') {
  ui.notice.textContent = message;
  ui.notice.dataset.kind = kind;
  ui.notice.hidden = false;
}

function clearNotice() {
  ui.notice.hidden = true;
  ui.notice.textContent = '';
}

const CONNECTION_TEXT = {
  idle: 'Not connected',
  connecting: 'Connecting…',
  open: 'Connected',
  resuming: 'Reconnecting…',
  closed: 'Disconnected',
};

function showConnection(c) {
  ui.connection.dataset.state = c.state;
  ui.connection.textContent = CONNECTION_TEXT[c.state] || c.state;
  if (c.state === 'open' && c.resumed) {
    // Back in the same session after a dropped connection: nothing of the answer is lost.
    ui.connection.dataset.resumes = String(Number(ui.connection.dataset.resumes || 0) + 1);
  }
  const open = c.state === 'open';
  ui.textInput.disabled = !open;
  ui.send.disabled = !open;
  ui.cancel.disabled = !open;
  if (c.state === 'closed') {
    if (c.error && c.error.code === 'resume_failed') {
      notify(`${c.error.message} Press Start to begin a new one.`);
    } else if (c.error) {
      notify(`Could not connect: ${c.error.message}`);
    } else if (running && c.code !== 1000) {
      const why = c.reason ? `: ${c.reason}` : '';
      notify(`The connection closed (code ${c.code}${why}).`);
    }
    setRunning(false);
  }
}

function setRunning(on) {
  running = on;
  ui.start.textContent = on ? 'Stop' : 'Start talking';
  ui.start.setAttribute('aria-pressed', String(on));
  if (!on) ui.micLevel.value = 0;
}

function showSpeaker(s) {
  ui.speaker.dataset.state = s.state;
  ui.speaker.dataset.playedMs = String(Math.round(s.playedMs));
  ui.speaker.dataset.droppedMs = String(Math.round(s.droppedMs));
  const buffered = s.bufferedMs > 0 ? ` (${Math.round(s.bufferedMs)} ms buffered)` : '';
  ui.speaker.textContent = `Speaker: ${s.state}${buffered}`;
}

// ----- turns ----------------------------------------------------------------------------------

function turn(id) {
  let t = turns.get(id);
  if (t) return t;
  const li = ui.template.content.firstElementChild.cloneNode(true);
  li.dataset.turn = String(id);
  t = {
    li,
    user: li.querySelector('.user'),
    userText: li.querySelector('.user-text'),
    tools: li.querySelector('.tools'),
    bot: li.querySelector('.bot'),
    botText: li.querySelector('.bot-text'),
    heard: li.querySelector('.heard'),
    timing: li.querySelector('.timing'),
    figures: li.querySelector('.figures'),
    waterfall: li.querySelector('.waterfall'),
  };
  turns.set(id, t);
  ui.empty.hidden = true;
  ui.turns.append(li);
  li.scrollIntoView({ block: 'nearest' });
  return t;
}

function setStatus(t, status) {
  t.li.dataset.status = status;
}

function userText(t, text, final) {
  t.user.hidden = false;
  t.userText.textContent = text || (final ? '(nothing heard)' : '…');
  t.userText.dataset.final = String(final);
}

function botText(t, text) {
  t.bot.hidden = false;
  t.botText.textContent = t.botText.textContent ? `${t.botText.textContent} ${text}` : text;
  t.li.scrollIntoView({ block: 'nearest' });
}

function tool(t, text) {
  t.tools.hidden = false;
  const li = document.createElement('li');
  li.textContent = text;
  t.tools.append(li);
}

const ms = (v) => (v == null ? '–' : `${Math.round(v)} ms`);

/** The waterfall of `timings`, from the end of the user's speech to the first audio sent. */
function waterfall(t, e) {
  const tm = e.timings || {};
  const start = tm.speech_end;
  const stages = [
    ['asr', 'transcript', tm.speech_end, tm.asr_done],
    ['llm', 'first token', tm.asr_done, tm.llm_first_token],
    ['tts', 'first audio', tm.llm_first_token, tm.tts_first_audio],
    ['send', 'sent', tm.tts_first_audio, tm.first_audio_sent],
  ].filter(([, , from, to]) => from != null && to != null && start != null);
  const end = tm.first_audio_sent != null ? tm.first_audio_sent : tm.done;
  const span = Math.max(1, (end != null && start != null ? end : 0) - (start || 0));
  t.waterfall.replaceChildren();
  for (const [cls, label, from, to] of stages) {
    const name = document.createElement('span');
    name.className = 'label';
    name.textContent = `${label} ${ms(to - from)}`;
    const track = document.createElement('span');
    track.className = 'track';
    const seg = document.createElement('span');
    seg.className = `seg ${cls}`;
    seg.dataset.stage = cls;
    seg.style.left = `${(100 * (from - start)) / span}%`;
    seg.style.width = `${(100 * (to - from)) / span}%`;
    track.append(seg);
    t.waterfall.append(name, track);
  }
  t.waterfall.setAttribute(
    'aria-label',
    stages.map(([, label, from, to]) => `${label} after ${ms(to - from)}`).join(', '),
  );
}

function done(e) {
  const t = turn(e.turn_id);
  const status = e.reason === 'no_speech' ? 'no_speech' : e.status;
  setStatus(t, status);
  t.timing.hidden = false;
  t.li.dataset.ttftMs = e.ttft_ms == null ? '' : String(e.ttft_ms);
  const audio = e.audio_ms ? `, ${(e.audio_ms / 1000).toFixed(1)} s of audio` : '';
  t.figures.textContent =
    `${status.replace('_', ' ')} · time to first audio ${ms(e.ttft_ms)} · ` +
    `total ${ms(e.total_ms)}${audio}`;
  waterfall(t, e);
}

/** The latest turn that spoke but got no answer: a barge-in candidate that may be a false alarm. */
function lastCandidate() {
  const all = [...turns.values()];
  for (let i = all.length - 1; i >= 0; i--) {
    if (all[i].li.dataset.status === 'listening' || all[i].li.dataset.status === 'thinking') {
      return all[i];
    }
  }
  return null;
}

function logEvent(e) {
  const li = document.createElement('li');
  li.dataset.type = e.type;
  li.textContent = JSON.stringify(e);
  ui.events.append(li);
  while (ui.events.childElementCount > MAX_EVENTS) ui.events.firstElementChild.remove();
}

function wire(c) {
  c.on('connection', showConnection);
  c.on('speaker', showSpeaker);
  c.on('microphone', (m) => {
    if (m.level != null) ui.micLevel.value = Math.min(1, m.level * 4);
  });
  c.on('*', logEvent);
  c.on('ready', (e) => {
    // Turn ids count from 1 in every session: a new session starts a new list.
    turns.clear();
    const li = document.createElement('li');
    li.className = 'session-mark';
    li.textContent = `Session ${e.session_id.slice(0, 8)} · answers at ${e.output_sample_rate} Hz`;
    ui.turns.append(li);
  });
  c.on('speech_started', (e) => setStatus(turn(e.turn_id), 'listening'));
  c.on('speech_stopped', (e) => {
    const t = turn(e.turn_id);
    setStatus(t, 'thinking');
    if (t.user.hidden) userText(t, '', false);
  });
  c.on('transcript', (e) => {
    const t = turn(e.turn_id);
    userText(t, e.text, e.final);
    if (e.final && t.li.dataset.status === 'listening') setStatus(t, 'thinking');
  });
  c.on('response_text', (e) => botText(turn(e.turn_id), e.text));
  c.on('audio_start', (e) => setStatus(turn(e.turn_id), 'speaking'));
  c.on('tool_call', (e) => {
    const args = typeof e.arguments === 'string' ? e.arguments : JSON.stringify(e.arguments);
    tool(turn(e.turn_id), `→ ${e.name}(${args})${e.runs === 'client' ? ' (runs here)' : ''}`);
    if (e.runs === 'client') {
      // The page declares no tools of its own; answer so the model is not kept waiting.
      c.toolResult(e.call_id, { error: 'the demo page has no client-side tools' });
    }
  });
  c.on('tool_result', (e) => {
    const result = typeof e.result === 'string' ? e.result : JSON.stringify(e.result);
    tool(turn(e.turn_id), `← ${result} (${ms(e.elapsed_ms)})`);
  });
  c.on('playback_paused', (e) => setStatus(turn(e.turn_id), 'paused'));
  c.on('playback_resumed', (e) => {
    setStatus(turn(e.turn_id), 'speaking');
    const candidate = lastCandidate();
    if (candidate && candidate !== turns.get(e.turn_id)) setStatus(candidate, 'false_alarm');
  });
  c.on('interrupted', (e) => {
    const t = turn(e.turn_id);
    setStatus(t, 'interrupted');
    t.heard.hidden = false;
    t.heard.dataset.playedMs = String(e.played_ms);
    t.heard.textContent = e.heard_text
      ? `Interrupted. You heard: “${e.heard_text}”`
      : 'Interrupted before any of it was heard.';
  });
  c.on('response_done', done);
  c.on('session_updated', (e) => {
    const voice = e.voice ? `voice ${e.voice}` : "the server's voice";
    ui.settingsStatus.textContent = `Applied: ${voice}, instructions of ${e.instructions.length} characters.`;
  });
  c.on('error', (e) => {
    if (e.turn_id != null) tool(turn(e.turn_id), `error ${e.code}: ${e.message}`);
    notify(`${e.code}: ${e.message}`);
  });
  c.on('shutdown', () => notify('The server is shutting down; this session will end.', 'info'));
}

// ----- settings -------------------------------------------------------------------------------

function loadSettings() {
  try {
    return JSON.parse(localStorage.getItem(SETTINGS_KEY)) || {};
  } catch {
    return {};
  }
}

function settingsFromForm() {
  const s = {};
  for (const name of SETTINGS) {
    const v = ui.settingsForm.elements[name].value.trim();
    if (v) s[name] = v;
  }
  return s;
}

function applySettings() {
  const s = settingsFromForm();
  try {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(s));
  } catch {
    // private mode: settings last for this page only
  }
  if (client && client.state === 'open' && Object.keys(s).length > 0) {
    client.update(s);
    ui.settingsStatus.textContent = 'Sent…';
  } else {
    ui.settingsStatus.textContent = 'Saved; sent when the session starts.';
  }
}

// ----- start and stop -------------------------------------------------------------------------

async function start() {
  clearNotice();
  setRunning(true);
  if (!client) {
    client = new VoxdClient({ token });
    wire(client);
  }
  // Audio first, inside the click: browsers start an AudioContext only from a user gesture.
  client.audio().catch(() => {});
  try {
    await client.connect();
  } catch {
    return; // the 'connection' handler has shown why
  }
  const s = settingsFromForm();
  if (Object.keys(s).length > 0) client.update(s);
  try {
    await client.startMicrophone();
  } catch (err) {
    notify(`${err.message} You can still type.`);
  }
  if (client.audioBlocked) {
    notify('Sound is blocked until you click or press a key on the page.', 'info');
    const unblock = () => {
      client.resumeAudio().then(() => {
        if (!client.audioBlocked) clearNotice();
      });
    };
    addEventListener('pointerdown', unblock, { once: true });
    addEventListener('keydown', unblock, { once: true });
  }
}

function stop() {
  if (client) client.close();
  setRunning(false);
}

ui.start.addEventListener('click', () => (running ? stop() : start()));
ui.textForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = ui.textInput.value.trim();
  if (text && client && client.text(text)) ui.textInput.value = '';
});
ui.cancel.addEventListener('click', () => client && client.cancel());
ui.settingsForm.addEventListener('submit', (e) => {
  e.preventDefault();
  applySettings();
});

const saved = loadSettings();
for (const name of SETTINGS) {
  if (saved[name]) ui.settingsForm.elements[name].value = saved[name];
}

if (params.get('autostart') === '1') start();
