// Corrections on their way to the service. One the service cannot take now (it is starting,
// its store is unreachable, it asks us to slow down, or it cannot be reached) is kept in
// localStorage and sent later: on the next page load, after a later request succeeds, and on
// a timer that backs off. Nothing a person corrected is lost unless more than LIMIT pile up.

import { readJSON, writeJSON } from './storage.js';

const KEY = 'digitdraw.feedback.outbox';
export const LIMIT = 50; // the oldest are dropped beyond this: a few hundred kB of storage
const FIRST_RETRY_MS = 2000;
const MAX_RETRY_MS = 5 * 60 * 1000;

export class Outbox {
  /**
   * @param {(record: object) => Promise<object>} deliver sends one record; rejects with an
   *   ApiError (api.js) whose `retryable` says whether to keep it for later.
   * @param {object} opts onDelivered(key): a kept record reached the service.
   */
  constructor(deliver, { onDelivered = () => {} } = {}) {
    this.deliver = deliver;
    this.onDelivered = onDelivered;
    this.notBefore = 0;     // Date.now() before which the server asked not to be called
    this.retryMs = FIRST_RETRY_MS;
    this.timer = 0;
    this.flushing = null;   // the flush in progress
  }

  /** How many records wait to be sent. */
  get size() {
    return this.entries().length;
  }

  /**
   * Send `record` now, or keep it when the service cannot take it now. Resolves to
   * {outcome: 'sent'} ({answer} the service's), {outcome: 'queued', key},
   * {outcome: 'failed', error} (the service refused it: not kept), or
   * {outcome: 'disabled', error} (the service takes no corrections: not kept).
   */
  async submit(record) {
    if (Date.now() < this.notBefore) {
      const key = this.keep(record);
      this.retryIn(this.notBefore - Date.now());
      return { outcome: 'queued', key };
    }
    try {
      const answer = await this.deliver(record);
      this.succeeded();
      this.flush();
      return { outcome: 'sent', answer };
    } catch (err) {
      if (err.retryable) {
        const key = this.keep(record);
        this.failed(err);
        return { outcome: 'queued', key };
      }
      return { outcome: err.kind === 'disabled' ? 'disabled' : 'failed', error: err };
    }
  }

  /** Send what is kept, oldest first; not before the time the server asked us to wait for. */
  flush() {
    if (this.flushing || this.size === 0) return this.flushing;
    const wait = this.notBefore - Date.now();
    if (wait > 0) {
      this.retryIn(wait);
      return null;
    }
    clearTimeout(this.timer);
    this.timer = 0;
    this.flushing = this.sendKept().finally(() => { this.flushing = null; });
    return this.flushing;
  }

  async sendKept() {
    for (const entry of this.entries()) {
      try {
        await this.deliver(entry.record);
      } catch (err) {
        if (err.retryable) {
          this.failed(err);
          return;
        }
        if (err.kind === 'disabled') return; // kept for a service that takes them again
        console.warn(`A saved correction was refused by the server and dropped: ${err.message}`);
        this.remove(entry.key);
        continue;
      }
      this.remove(entry.key);
      this.succeeded();
      this.onDelivered(entry.key);
    }
  }

  entries() {
    const entries = readJSON(KEY, []);
    return Array.isArray(entries) ? entries.filter((e) => e && e.key && e.record) : [];
  }

  keep(record) {
    const key = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
    // Where the browser refuses storage they stay in memory, for as long as the page is open.
    writeJSON(KEY, [...this.entries(), { key, record }].slice(-LIMIT));
    return key;
  }

  remove(key) {
    // Read again: another tab of the page may have kept or sent some meanwhile.
    writeJSON(KEY, this.entries().filter((e) => e.key !== key));
  }

  succeeded() {
    this.retryMs = FIRST_RETRY_MS;
  }

  // Try again after the server's Retry-After, or the backoff if that is longer.
  failed(err) {
    if (err.retryAfterMs) this.notBefore = Date.now() + err.retryAfterMs;
    this.retryIn(Math.max(this.retryMs, err.retryAfterMs || 0));
    this.retryMs = Math.min(2 * this.retryMs, MAX_RETRY_MS);
  }

  retryIn(ms) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = 0;
      this.flush();
    }, ms);
  }
}
