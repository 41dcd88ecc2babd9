// Talking to the prediction service (see the service's /openapi.json).
// Every failure becomes an ApiError whose `kind` the page turns into a message.

export class ApiError extends Error {
  /**
   * @param {string} kind 'empty_canvas' | 'model_not_ready' | 'unreachable' | 'timeout' | 'rejected'
   * @param {string} message what went wrong, from the server when it said
   * @param {number} status HTTP status, 0 when there was no answer
   */
  constructor(kind, message, status = 0) {
    super(message);
    this.name = 'ApiError';
    this.kind = kind;
    this.status = status;
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

  /** GET /model: the loaded model's model.json. */
  async model(signal) {
    return this.request('/model', {}, signal);
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
      throw errorFromResponse(response.status, body?.error);
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

function errorFromResponse(status, error) {
  const code = error?.code;
  const message = error?.message || `The server answered HTTP ${status}.`;
  if (code === 'empty_canvas' || status === 422) return new ApiError('empty_canvas', message, status);
  if (code === 'model_not_ready' || status === 503) return new ApiError('model_not_ready', message, status);
  // A gateway in front of a stopped or scaling server answers 502/504 without our JSON.
  if (!code && (status === 502 || status === 504)) return new ApiError('unreachable', message, status);
  return new ApiError('rejected', message, status);
}
