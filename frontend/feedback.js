// "Wrong? Tap the right digit": a person corrects (or confirms) what the model read, and the
// correction goes to the service's POST /feedback as training data. One correction per
// drawing: after one is sent the control waits for the drawing to change.

import { readJSON, writeJSON } from './storage.js';

const CLIENT_ID_KEY = 'digitdraw.clientId';
// Strokes beyond these are not worth their bytes: the image is the record, strokes a bonus.
export const MAX_STROKES = 64;
export const MAX_POINTS = 2000;

/** An anonymous random id for this browser, made once and kept in localStorage. */
export function clientId() {
  let id = readJSON(CLIENT_ID_KEY, null);
  if (typeof id !== 'string' || !id) {
    id = randomUUID();
    writeJSON(CLIENT_ID_KEY, id);
  }
  return id;
}

// crypto.randomUUID exists only in secure contexts (https, localhost); a page served over
// plain http elsewhere gets the same kind of id from getRandomValues.
function randomUUID() {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Strokes in pad coordinates rounded to 3 decimals, or undefined when over the limits. */
export function feedbackStrokes(strokes) {
  const points = strokes.reduce((n, s) => n + s.length, 0);
  if (strokes.length === 0 || strokes.length > MAX_STROKES || points > MAX_POINTS) return undefined;
  const round = (v) => Math.round(v * 1000) / 1000;
  return strokes.map((stroke) => stroke.map(([x, y]) => [round(x), round(y)]));
}

const STATUS = {
  sending: 'Sending…',
  sent: 'Thanks — sent',
  queued: 'Saved; will send when the server is back',
};

export class Feedback {
  /**
   * @param {object} ui root (hidden while the service takes no corrections), offer (the
   *   Wrong?/Right row), wrong, right, choices (holding one button per digit, data-digit),
   *   status.
   * @param {import('./outbox.js').Outbox} outbox where corrections are sent.
   */
  constructor(ui, outbox) {
    this.ui = ui;
    this.outbox = outbox;
    this.digitButtons = [...ui.choices.querySelectorAll('button[data-digit]')];
    this.answer = null;   // {image, predicted, modelVersion, strokes} of the answer shown
    this.done = false;    // a correction of this drawing was sent or kept
    this.pendingKey = ''; // the outbox key of this drawing's kept correction
    this.drawing = 0;     // counts drawing changes, so a late outcome is not shown on a new one

    ui.wrong.addEventListener('click', () => (this.isOpen ? this.close() : this.open()));
    ui.right.addEventListener('click', () => this.send(this.answer?.predicted));
    for (const button of this.digitButtons) {
      button.addEventListener('click', () => this.send(Number(button.dataset.digit)));
    }
    this.render();
  }

  /** Whether the service takes corrections (the control is shown). */
  get accepted() {
    return !this.ui.root.hidden;
  }

  get isOpen() {
    return !this.ui.choices.hidden;
  }

  /** Show or hide the whole control: whether the service takes corrections. */
  accept(accepted) {
    this.ui.root.hidden = !accepted;
    if (!accepted) this.close();
  }

  /** An answer is shown for the drawing as it is: offer to correct it. */
  offer(answer) {
    this.answer = answer;
    this.render();
  }

  /** No answer is shown (an error, or nothing drawn): nothing to correct. */
  withdraw() {
    this.answer = null;
    this.close();
    this.render();
  }

  /** The drawing changed (a stroke, undo, clear): a new correction may be made. */
  drawingChanged() {
    this.drawing += 1;
    this.done = false;
    this.pendingKey = '';
    this.answer = null;
    this.close();
    this.setStatus('');
    this.render();
  }

  /** A kept correction reached the service. */
  delivered(key) {
    if (key && key === this.pendingKey) this.setStatus(STATUS.sent);
  }

  /** Keys for the open control: 0-9 pick that digit, Escape closes. Returns whether it took the key. */
  handleKey(e) {
    if (!this.isOpen || e.ctrlKey || e.metaKey || e.altKey) return false;
    if (e.key === 'Escape') {
      e.preventDefault();
      this.close();
      return true;
    }
    if (/^[0-9]$/.test(e.key)) {
      e.preventDefault();
      this.send(Number(e.key));
      return true;
    }
    return false;
  }

  open() {
    if (!this.answer || this.done) return;
    this.ui.choices.hidden = false;
    this.ui.wrong.setAttribute('aria-expanded', 'true');
    for (const button of this.digitButtons) {
      button.classList.toggle('shown', Number(button.dataset.digit) === this.answer.predicted);
    }
    // Into the digits, at the first that is not the one the model read.
    const first = this.digitButtons.find((b) => Number(b.dataset.digit) !== this.answer.predicted);
    first.focus({ preventScroll: true });
    this.ui.choices.scrollIntoView({ block: 'nearest' });
  }

  close() {
    // Focus in the digits would fall to the page's start: back to the button that opened them.
    const hadFocus = this.ui.choices.contains(document.activeElement);
    this.ui.choices.hidden = true;
    this.ui.wrong.setAttribute('aria-expanded', 'false');
    if (hadFocus) this.ui.wrong.focus({ preventScroll: true });
  }

  async send(label) {
    const answer = this.answer;
    if (!answer || this.done || !Number.isInteger(label)) return;
    const drawing = this.drawing;
    const record = {
      image: answer.image,
      label,
      predicted: answer.predicted,
      model_version: answer.modelVersion,
      client_id: clientId(),
    };
    const strokes = feedbackStrokes(answer.strokes);
    if (strokes) record.strokes = strokes;

    this.done = true;
    // The buttons are about to be disabled or hidden; the outcome is where to look next.
    if (this.ui.root.contains(document.activeElement)) this.ui.status.focus({ preventScroll: true });
    this.close();
    this.setStatus(STATUS.sending);
    this.render();
    const result = await this.outbox.submit(record);
    if (drawing !== this.drawing) return;
    if (result.outcome === 'sent') {
      this.setStatus(STATUS.sent);
    } else if (result.outcome === 'queued') {
      this.pendingKey = result.key;
      this.setStatus(STATUS.queued);
    } else if (result.outcome === 'disabled') {
      this.setStatus('');
      this.accept(false);
    } else {
      this.done = false; // refused, not kept: the person may try another answer
      this.setStatus(`Not sent: ${result.error.message}`);
    }
    this.render();
  }

  setStatus(text) {
    this.ui.status.textContent = text;
  }

  render() {
    const offered = this.answer !== null;
    this.ui.offer.classList.toggle('offered', offered);
    this.ui.wrong.disabled = this.ui.right.disabled = !offered || this.done;
  }
}
