// Talking to the prediction service (see the service's /openapi.json).
// Every failure becomes an ApiError whose `kind` the page turns into a message.

// What a failure was, from the server's error code where it sent one.
const KIND_OF_CODE = {
  empty_canvas: 'empty_canvas',
  model_not_ready: 'model_not_ready',
  store_unavailable: 'unavailable',
  rate_limited: 'rate_limited',
  feedback_disabled: 'disabled',
};
// Worth asking again later: the server is starting, busy, or out of reach for now.
const RETRYABLE = new Set(['unreachable', 'timeout', 'model_not_ready', 'unavailable', 'rate_limited']);

export class ApiError extends Error {
  /**
   * @param {string} kind 'empty_canvas' | 'model_not_ready' | 'unavailable' | 'rate_limited' |
   *   'disabled' | 'unreachable' | 'timeout' | 'rejected'
   * @param {string} message what went wrong, from the server when it said
   * @param {number} status HTTP status, 0 when there was no answer
   * @param {string} code the server's error code, '' when it sent none
   * @param {number} retryAfterMs how long the server asked us to wait (Retry-After), 0 if it did not
   */
  constructor(kind, message, status = 0, code = '', retryAfterMs = 0) {
    super(message);
    this.name = 'ApiError';
    this.kind = kind;
    this.status = status;
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }

  /** Whether the same request may succeed later (as opposed to a request the server refuses). */
  get retryable() {
    return RETRYABLE.has(this.kind);
  }
}

export class Api {
  constructor(base, timeoutMs = 10000) {
    this.base = base;
    this.timeoutMs = timeoutMs;
  }

  url(path) {
    return `${this.base}${path}`;
  }

  /**
   * POST a PNG data URL to /predict. Resolves to {digit, confidence, probabilities,
   * model_version, preview}; rejects with an ApiError, or with the AbortError of `signal`
   * when the caller cancelled it.
   */
  async predict(image, signal) {
    return this.request('/predict', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ image, preview: true }),
    }, signal);
  }

  /** GET /readyz: {status, model_version, mode, feedback} once a model is loaded (else 503). */
  async ready(signal) {
    return this.request('/readyz', { cache: 'no-store' }, signal);
  }

  /** POST a correction to /feedback. Resolves to {id, status: 'stored' | 'duplicate'}. */
  async feedback(record, signal) {
    return this.request('/feedback', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(record),
    }, signal);
  }

  async request(path, init, signal) {
    // One controller aborts the fetch for either reason: the caller's signal, or our timeout.
    // (Plain code rather than AbortSignal.any/timeout, which older Safari lacks.)
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.timeoutMs);
    const forward = () => controller.abort();
    signal?.addEventListener('abort', forward, { once: true });
    try {
      let response;
      try {
        response = await fetch(this.url(path), { ...init, signal: controller.signal });
      } catch (err) {
        throw this.failure(err, signal, timedOut);
      }
      let body = null;
      try {
        body = await response.json();
      } catch (err) {
        if (controller.signal.aborted) throw this.failure(err, signal, timedOut);
        // Not JSON: a proxy's error page, say. The status still tells what happened.
      }
      if (response.ok && body) return body;
      throw errorFromResponse(response, body?.error);
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', forward);
    }
  }

  failure(err, signal, timedOut) {
    if (signal?.aborted) return err;
    if (timedOut) {
      return new ApiError('timeout', `The server at ${this.where()} did not answer within ` +
                          `${Math.round(this.timeoutMs / 1000)} s.`);
    }
    return new ApiError('unreachable', `Cannot reach the server at ${this.where()}.`);
  }

  where() {
    return this.base || window.location.origin;
  }
}

function errorFromResponse(response, error) {
  const status = response.status;
  const code = typeof error?.code === 'string' ? error.code : '';
  const message = error?.message || `The server answered HTTP ${status}.`;
  const retryAfterMs = parseRetryAfter(response.headers.get('Retry-After'));
  return new ApiError(KIND_OF_CODE[code] ?? kindOfStatus(status, code), message, status, code, retryAfterMs);
}

function kindOfStatus(status, code) {
  if (status === 422) return 'empty_canvas';
  if (status === 503) return 'model_not_ready';
  if (status === 429) return 'rate_limited';
  // A gateway in front of a stopped or scaling server answers 502/504 without our JSON.
  if (!code && (status === 502 || status === 504)) return 'unreachable';
  return 'rejected';
}

/** Retry-After as milliseconds from now: a number of seconds, or an HTTP date. */
function parseRetryAfter(value) {
  if (!value) return 0;
  const ms = /^\s*\d+\s*$/.test(value) ? 1000 * Number(value) : Date.parse(value) - Date.now();
  return Number.isFinite(ms) ? Math.max(0, ms) : 0;
}
