// Waking the service as the page opens. It scales to zero when nobody uses it, and the first
// request starts it: asking at once lets it start while the person draws, rather than
// after the first stroke. The answer also says which model serves and whether the service
// takes corrections.

const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 10000;

/**
 * GET /readyz now, and again with backoff while the service is starting (503) or cannot be
 * reached. Calls onReady({model_version, mode, feedback}) once it is ready, and
 * onNotReady(error) after each failed try. Returns {ready}, true once it answered 200.
 */
export function wakeService(api, { onReady, onNotReady }) {
  const state = { ready: false };
  let delay = FIRST_RETRY_MS;
  const attempt = async () => {
    try {
      const answer = await api.ready();
      state.ready = true;
      onReady(answer);
    } catch (err) {
      onNotReady(err);
      if (err.retryable) {
        setTimeout(attempt, delay);
        delay = Math.min(2 * delay, MAX_RETRY_MS);
      }
    }
  };
  attempt();
  return state;
}
