// DigitDraw's page: wires the pad to the prediction service and shows what the model read.
//
// Live prediction: while a stroke is drawn, at most one request is in flight and a new one
// starts no sooner than throttleMs after the last; on pointer-up, Predict, or Undo a request
// starts at once and cancels the one in flight. Every request carries a sequence number and
// only the newest one's answer is shown, so a late answer never overwrites a newer one.
//
// The page wakes the service as it opens (wake.js), learns from it whether it takes
// corrections, and offers "Wrong?" under each answer (feedback.js, outbox.js).

import { Api, ApiError } from './api.js';
import { loadConfig } from './config.js';
import { Feedback } from './feedback.js';
import { Outbox } from './outbox.js';
import { Pad } from './pad.js';
import { wakeService } from './wake.js';

// A prediction with no answer after this long, while the service has not yet said it is
// ready, is most likely waiting for a cold start: say so rather than look broken.
const WAKING_NOTICE_MS = 1500;

const $ = (id) => document.getElementById(id);
const ui = {
  pad: $('pad'),
  predict: $('predict'),
  undo: $('undo'),
  clear: $('clear'),
  result: document.querySelector('.result'),
  prediction: $('prediction'),
  confidence: $('confidence'),
  error: $('error'),
  bars: [...$('probabilities').children],
  preview: $('preview'),
  modelVersion: $('model-version'),
  waking: $('waking'),
};

let config;
let api;
try {
  config = await loadConfig();
  api = new Api(config.apiBase, config.timeoutMs);
} catch (err) {
  showError(err.message);
}

const pad = new Pad(ui.pad, { widthFraction: config?.strokeWidth ?? 0.09, onStroke });
const outbox = new Outbox((record) => api.feedback(record), { onDelivered: (key) => feedback.delivered(key) });
const feedback = new Feedback({
  root: $('feedback'),
  offer: $('feedback-offer'),
  wrong: $('wrong'),
  right: $('right'),
  choices: $('choices'),
  status: $('feedback-status'),
}, outbox);
let service = { ready: false }; // wakeService's state

let seq = 0;            // number of the newest request; answers to older ones are dropped
let inflight = null;    // {seq, controller} of the request in flight
let lastSentAt = 0;     // when the last request started (performance.now())
let liveTimer = 0;      // a throttled live request waiting to start
let liveWanted = false; // the drawing changed while a live request was in flight
let drawing = false;    // a stroke is being drawn

function onStroke(phase) {
  if (phase === 'start') feedback.drawingChanged();
  drawing = phase !== 'end';
  if (phase === 'end') predictNow();
  else predictLive();
  updateBusy();
}

// aria-busy says the answer is about to change: while a stroke is drawn, a request is in
// flight or one is waiting for its turn. Tests wait for it to settle, too.
function updateBusy() {
  const busy = drawing || inflight !== null || liveTimer !== 0;
  ui.result.setAttribute('aria-busy', String(busy));
}

// A throttled prediction while drawing: never more than one in flight.
function predictLive() {
  if (!api) return;
  if (inflight) {
    liveWanted = true;
    return;
  }
  const wait = config.throttleMs - (performance.now() - lastSentAt);
  if (wait <= 0) {
    send();
  } else if (!liveTimer) {
    liveTimer = setTimeout(() => {
      liveTimer = 0;
      predictLive();
      updateBusy();
    }, wait);
  }
}

// A prediction now, for the drawing as it is; whatever was in flight is out of date.
function predictNow() {
  if (!api) return;
  cancelPending();
  send();
}

function cancelPending() {
  clearTimeout(liveTimer);
  liveTimer = 0;
  liveWanted = false;
  inflight?.controller.abort();
  inflight = null;
  seq += 1;
  updateBusy();
}

async function send() {
  const mine = ++seq;
  const controller = new AbortController();
  inflight?.controller.abort();
  inflight = { seq: mine, controller };
  lastSentAt = performance.now();
  updateBusy();
  // What this prediction reads is what a correction of its answer is about.
  const strokes = pad.strokes.map((stroke) => stroke.slice());
  const waking = setTimeout(() => {
    if (inflight?.seq === mine && !service.ready) ui.waking.textContent = 'Waking up the server…';
  }, WAKING_NOTICE_MS);
  try {
    const image = await pad.toDataURL();
    const answer = await api.predict(image, controller.signal);
    if (mine === seq) await showAnswer(answer, mine, { image, strokes });
    if (feedback.accepted) outbox.flush(); // the service answers again: send what waited for it
  } catch (err) {
    if (mine === seq && !controller.signal.aborted) showFailure(err);
  } finally {
    clearTimeout(waking);
    if (inflight?.seq === mine) {
      inflight = null;
      if (liveWanted) {
        liveWanted = false;
        predictLive();
      }
      updateBusy();
    }
  }
}

async function showAnswer(answer, mine, drawn) {
  ui.error.textContent = '';
  ui.waking.textContent = '';
  ui.prediction.textContent = String(answer.digit);
  ui.confidence.textContent = percent(answer.confidence);
  ui.confidence.dataset.value = String(answer.confidence);
  const best = answer.digit;
  ui.bars.forEach((bar, digit) => setBar(bar, answer.probabilities[digit], digit === best));
  if (answer.model_version) ui.modelVersion.textContent = answer.model_version;
  feedback.offer({ ...drawn, predicted: answer.digit, modelVersion: answer.model_version });
  if (answer.preview) await drawPreview(answer.preview, mine);
}

function showFailure(err) {
  resetAnswer();
  if (!(err instanceof ApiError)) {
    showError(`Something went wrong in the page: ${err.message}`);
    return;
  }
  showError(messageFor(err));
}

function messageFor(err) {
  switch (err.kind) {
    case 'empty_canvas':
      return 'The pad is empty: draw a digit first, then it will be read.';
    case 'model_not_ready':
      return 'The model is still loading (the server may be waking up). Try again in a few seconds.';
    case 'unreachable':
      return `${err.message} Check your connection, or that the DigitDraw service is running, and try again.`;
    case 'timeout':
      return `${err.message} It may be busy or starting up: try again in a moment.`;
    default:
      return `The server could not read the drawing: ${err.message}`;
  }
}

function showError(message) {
  ui.error.textContent = message;
}

function resetAnswer() {
  ui.waking.textContent = '';
  feedback.withdraw();
  ui.prediction.textContent = '';
  ui.confidence.textContent = '';
  delete ui.confidence.dataset.value;
  ui.bars.forEach((bar) => setBar(bar, 0, false, true));
  const ctx = ui.preview.getContext('2d');
  ctx.clearRect(0, 0, ui.preview.width, ui.preview.height);
}

function setBar(bar, p, best, blank = false) {
  bar.dataset.p = String(p);
  bar.classList.toggle('best', best);
  // CSSOM writes are allowed under a strict style-src; style attributes are not.
  bar.querySelector('.fill').style.setProperty('--p', String(p));
  bar.querySelector('.p').textContent = blank ? '–' : percent(p);
}

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

// The preview arrives as a data: URL. A strict CSP (img-src 'self') forbids loading it into
// an <img>, but decoding the bytes ourselves is not a fetch, so draw it onto a canvas.
async function drawPreview(dataUrl, mine) {
  try {
    const base64 = dataUrl.slice(dataUrl.indexOf(',') + 1);
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
    if (mine !== seq) return;
    const ctx = ui.preview.getContext('2d');
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, ui.preview.width, ui.preview.height);
    ctx.drawImage(bitmap, 0, 0, ui.preview.width, ui.preview.height);
    bitmap.close();
  } catch {
    // A broken preview is not worth an error message: the prediction is shown.
  }
}

function clearAll() {
  drawing = false;
  feedback.drawingChanged();
  cancelPending();
  pad.clear();
  resetAnswer();
  ui.error.textContent = '';
}

function undo() {
  if (!pad.undo()) return;
  feedback.drawingChanged();
  drawing = false;
  if (pad.isEmpty) clearAll();
  else predictNow();
}

function showVersion(version) {
  // A prediction's answer may have named the version already; a failed wake-up does not undo it.
  if (ui.modelVersion.textContent === 'loading…' || ui.modelVersion.textContent === 'unknown') {
    ui.modelVersion.textContent = version;
  }
}

function wake() {
  if (!api) return;
  service = wakeService(api, {
    onReady(answer) {
      showVersion(answer.model_version ?? 'unknown');
      feedback.accept(answer.feedback === true);
      if (feedback.accepted) outbox.flush(); // what a visit before this one could not send
    },
    onNotReady() {
      showVersion('unknown');
    },
  });
}

ui.predict.addEventListener('click', predictNow);
ui.clear.addEventListener('click', clearAll);
ui.undo.addEventListener('click', undo);
window.addEventListener('keydown', (e) => {
  if (feedback.handleKey(e)) return;
  if ((e.ctrlKey || e.metaKey) && !e.altKey && !e.shiftKey && e.key.toLowerCase() === 'z') {
    e.preventDefault();
    undo();
  } else if (e.key === 'Escape') {
    e.preventDefault();
    clearAll();
  }
});

resetAnswer();
updateBusy();
wake();
