// Settings: built-in defaults, then config.json next to index.html, then the page's
// query string (?api=https://digitdraw.example.com), in rising priority.
//
// apiBase     where the prediction service lives; '' means the origin that served this page.
// strokeWidth pen width as a fraction of the pad's side (?stroke=0.09). MNIST's
//             strokes are about 2.7 px of a 20 px digit; at 0.09 a digit drawn over 55-85% of
//             the pad comes out at 2.1-3.3 px after the service scales it.
// throttleMs  least time between live predictions while a stroke is drawn.
// timeoutMs   how long to wait for an answer before calling the server unreachable.

const DEFAULTS = { apiBase: '', strokeWidth: 0.09, throttleMs: 120, timeoutMs: 10000 };

export async function loadConfig() {
  const config = { ...DEFAULTS };
  try {
    const response = await fetch('config.json', { cache: 'no-cache' });
    if (response.ok) Object.assign(config, await response.json());
  } catch {
    // No config.json (or not JSON): the defaults serve the page's own origin.
  }

  const query = new URLSearchParams(window.location.search);
  if (query.has('api')) config.apiBase = query.get('api');
  if (query.has('stroke')) config.strokeWidth = Number(query.get('stroke'));

  config.apiBase = String(config.apiBase || '').replace(/\/+$/, '');
  if (config.apiBase && !/^https?:\/\//.test(config.apiBase)) {
    throw new Error(`The API address "${config.apiBase}" is not an http(s) URL; ` +
                    'use ?api=https://host[:port] or set apiBase in config.json.');
  }
  if (!(config.strokeWidth > 0 && config.strokeWidth < 0.5)) config.strokeWidth = DEFAULTS.strokeWidth;
  return config;
}
