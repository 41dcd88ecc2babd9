// JSON values kept in this browser's localStorage, and in memory for this page where the
// browser refuses storage (blocked by the person's settings, or over its quota).

// Only values the browser would not store: what localStorage holds may be newer (another tab).
const memory = new Map();

function local() {
  try {
    return window.localStorage;
  } catch {
    return null; // reading localStorage itself throws where storage is blocked
  }
}

/** The value stored under `key`, or `fallback` when there is none or it is not JSON. */
export function readJSON(key, fallback) {
  let text = memory.get(key);
  if (text === undefined) {
    try {
      text = local()?.getItem(key);
    } catch {
      text = null;
    }
  }
  if (text === undefined || text === null) return fallback;
  try {
    return JSON.parse(text);
  } catch {
    return fallback;
  }
}

/** Store `value` under `key`; returns false when the browser kept it in memory only. */
export function writeJSON(key, value) {
  const text = JSON.stringify(value);
  try {
    const storage = local();
    if (storage) {
      storage.setItem(key, text);
      memory.delete(key);
      return true;
    }
  } catch {
    // Blocked or full: fall through and keep it for this page.
  }
  memory.set(key, text);
  return false;
}
