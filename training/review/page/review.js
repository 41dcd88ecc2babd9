// The review page: one page of the queue at a time (the server filters, sorts and pages),
// each record the 28x28 input the model saw, scaled up with nearest neighbour; decisions by
// mouse or keyboard, sent with the session's CSRF token.

const $ = (id) => document.getElementById(id);
const SIDE = 28;
const DEFAULT_REASON = { approved: 'looks like its label', rejected: 'does not look like its label' };

const view = {
  csrf: '',
  records: [],
  cursors: [null],   // the cursor of each page shown so far: Previous goes back one
  next: null,
  total: 0,
  unreadable: 0,
};

function query(cursor) {
  const params = new URLSearchParams();
  for (const [name, value] of new FormData($('filters'))) {
    if (String(value).trim() !== '') params.set(name, String(value).trim());
  }
  if (cursor) params.set('cursor', cursor);
  return params;
}

async function api(path, options = {}) {
  const init = { credentials: 'same-origin', headers: { Accept: 'application/json' }, ...options };
  if (options.body !== undefined) {
    init.method = 'POST';
    init.headers = { ...init.headers, 'Content-Type': 'application/json', 'X-CSRF-Token': view.csrf };
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch(path, init);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body.error ? body.error.message : `the server answered ${response.status}`;
    throw new Error(response.status === 401 || response.status === 403 ? `Not allowed: ${message}` : message);
  }
  return body;
}

function say(text) { $('status').textContent = text; }
function fail(error) { $('error').textContent = String(error.message || error); }

function reading(record) {
  return record.predicted === null ? 'no reading' : `read as ${record.predicted}`;
}

function draw(canvas, base64) {
  const pixels = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const context = canvas.getContext('2d');
  const image = context.createImageData(SIDE, SIDE);
  for (let i = 0; i < SIDE * SIDE; i += 1) {
    image.data.set([pixels[i], pixels[i], pixels[i], 255], i * 4);  // white ink on black, as the model saw it
  }
  context.putImageData(image, 0, 0);
}

function showState(tile, record) {
  tile.classList.toggle('approved', record.state === 'approved');
  tile.classList.toggle('rejected', record.state === 'rejected');
  tile.classList.toggle('decided', record.state !== 'pending');
  tile.dataset.state = record.state;
  const meta = tile.querySelector('.meta');
  meta.replaceChildren();
  const state = document.createElement('span');
  state.className = `state-${record.state}`;
  state.textContent = record.state;
  meta.append(state, ` · ${record.client || 'no client'} · ${record.day || 'no day'}`);
}

function tileFor(record) {
  const tile = $('tile-template').content.firstElementChild.cloneNode(true);
  tile.dataset.id = record.id;
  tile.dataset.testid = 'tile';
  const what = `labelled ${record.label}, ${reading(record)}`;
  const box = tile.querySelector('.select');
  box.dataset.testid = 'select';
  box.setAttribute('aria-label', `Select ${record.id.slice(0, 8)}: ${what}`);
  const canvas = tile.querySelector('canvas');
  canvas.setAttribute('aria-label', `Digit ${record.id.slice(0, 8)}, ${what}`);
  draw(canvas, record.pixels);
  tile.querySelector('.caption').textContent = `label ${record.label} · ${record.predicted === null ? 'no reading' : `read ${record.predicted}`}`;
  tile.querySelector('.why').textContent = record.reasons.length
    ? `suspicion ${record.score.toFixed(2)}: ${record.reasons.join('; ')}` : 'nothing suspicious';
  for (const [cls, label] of [['approve', 'Approve'], ['reject', 'Reject'], ['show-history', 'History']]) {
    const button = tile.querySelector(`.${cls}`);
    button.dataset.testid = cls;
    button.setAttribute('aria-label', `${label} ${record.id.slice(0, 8)}`);
  }
  showState(tile, record);
  return tile;
}

function tiles() { return [...$('tiles').children]; }
function selected() { return tiles().filter((t) => t.querySelector('.select').checked); }
function recordOf(tile) { return view.records.find((r) => r.id === tile.dataset.id); }

function showCounts(c) {
  $('counts').textContent = `${c.pending} pending, ${c.approved} approved, ${c.rejected} rejected`
    + (view.unreadable ? `, ${view.unreadable} unreadable (python -m training.feedback show ID says why)` : '');
}

function render(page) {
  const hadFocus = $('tiles').contains(document.activeElement);
  view.records = page.records;
  view.next = page.next;
  view.total = page.total;
  $('tiles').replaceChildren(...page.records.map(tileFor));
  const first = view.cursors.length - 1;
  const shown = page.records.length;
  $('position').textContent = shown
    ? `page ${first + 1}: ${shown} of ${page.total} matching` : `no records match (${page.total})`;
  $('previous').disabled = view.cursors.length < 2;
  $('next').disabled = !page.next;
  view.unreadable = page.unreadable;
  showCounts(page.counts);
  const day = $('filter-day');
  const chosen = day.value;
  day.replaceChildren(new Option('any', ''), ...page.days.map((d) => new Option(d, d)));
  day.value = page.days.includes(chosen) ? chosen : '';
  if (hadFocus && tiles().length) tiles()[0].querySelector('.select').focus();
}

async function load(cursor) {
  $('error').textContent = '';
  try {
    render(await api(`/api/records?${query(cursor)}`));
  } catch (error) {
    fail(error);
  }
}

async function loadSuspects() {
  try {
    const suspects = await api('/api/suspects');
    for (const [kind, list] of [['client', $('suspect-clients')], ['network', $('suspect-networks')]]) {
      list.replaceChildren(...suspects[kind].map((s) => suspectFor(kind, s)));
      if (!suspects[kind].length) {
        const none = document.createElement('li');
        none.textContent = 'none suspicious';
        list.append(none);
      }
    }
  } catch (error) {
    fail(error);
  }
}

function suspectFor(kind, suspect) {
  const item = $('suspect-template').content.firstElementChild.cloneNode(true);
  item.dataset.key = suspect.key;
  item.dataset.testid = `suspect-${kind}`;
  item.querySelector('code').textContent = suspect.key;
  item.querySelector('.suspect-score').textContent =
    `${suspect.score.toFixed(2)} · ${suspect.pending} of ${suspect.records} pending`;
  item.querySelector('.suspect-why').textContent = suspect.reasons.join('; ');
  const show = item.querySelector('.suspect-show');
  show.setAttribute('aria-label', `Show the records of ${kind} ${suspect.key}`);
  show.addEventListener('click', () => {
    const form = $('filters');
    form.elements.client.value = kind === 'client' ? suspect.key : '';
    form.elements.network.value = kind === 'network' ? suspect.key : '';
    form.elements.state.value = 'all';
    restart();
  });
  const reject = item.querySelector('.suspect-reject');
  reject.dataset.testid = 'suspect-reject';
  reject.setAttribute('aria-label', `Reject all pending of ${kind} ${suspect.key}`);
  reject.disabled = suspect.pending === 0;
  reject.addEventListener('click', async () => {
    if (!window.confirm(`Reject all ${suspect.pending} pending records of ${kind} ${suspect.key}?`)) return;
    await decide({ [kind]: suspect.key }, 'rejected');
  });
  return item;
}

// Decide: {ids} or {client} or {network}; the tiles on the page take their new state.
// Decisions go one after another, in the order they were asked for.
let decided = Promise.resolve();
function decide(which, state) {
  const reason = $('reason').value.trim() || DEFAULT_REASON[state];
  const next = decided.then(() => send(which, state, reason));
  decided = next.catch(() => null);
  return next;
}

async function send(which, state, reason) {
  $('error').textContent = '';
  try {
    const result = await api('/api/decisions', { body: { ...which, state, reason } });
    for (const { id } of result.decided) {
      const record = view.records.find((r) => r.id === id);
      const tile = tiles().find((t) => t.dataset.id === id);
      if (record && tile) {
        record.state = state;
        showState(tile, record);
        tile.querySelector('.select').checked = false;
        tile.classList.remove('selected');
      }
    }
    showCounts(result.counts);
    const unchanged = result.unchanged.length ? `; ${result.unchanged.length} already ${state}` : '';
    say(`${state === 'approved' ? 'Approved' : 'Rejected'} ${result.decided.length} record`
        + `${result.decided.length === 1 ? '' : 's'}${unchanged}.`);
    loadSuspects();
    return result;
  } catch (error) {
    fail(error);
    return null;
  }
}

// The selection, else the tile in focus.
function targets() {
  const chosen = selected();
  if (chosen.length) return chosen;
  const focused = document.activeElement && document.activeElement.closest('.tile');
  return focused ? [focused] : [];
}

async function decideTiles(list, state) {
  const ids = list.map((t) => t.dataset.id);
  if (!ids.length) {
    say('Select digits first (Space, or their checkboxes), or move to one with the arrow keys.');
    return null;
  }
  return decide({ ids }, state);
}

async function decidePage(state) {
  const result = await decideTiles(tiles(), state);
  if (result && view.next) await nextPage();
  return result;
}

async function nextPage() {
  if (!view.next) return;
  view.cursors.push(view.next);
  await load(view.next);
}

async function previousPage() {
  if (view.cursors.length < 2) return;
  view.cursors.pop();
  await load(view.cursors[view.cursors.length - 1]);
}

function restart() {
  view.cursors = [null];
  load(null);
}

async function showHistory(tile) {
  try {
    const record = await api(`/api/records/${tile.dataset.id}`);
    const facts = $('history-record');
    facts.replaceChildren();
    for (const [name, value] of [['id', record.id], ['label', record.label], ['reading', reading(record)],
      ['state', record.state], ['client', record.client || '-'], ['network', record.network || '-'],
      ['sent', record.created_at || '-'], ['model', record.model_version || '-']]) {
      const dt = document.createElement('dt');
      const dd = document.createElement('dd');
      dt.textContent = name;
      dd.textContent = String(value);
      facts.append(dt, dd);
    }
    const list = $('history-list');
    list.replaceChildren(...record.history.map((d) => {
      const li = document.createElement('li');
      li.textContent = `${d.decision} by ${d.by || '?'} at ${d.at || '?'}: ${d.reason || '-'}${d.unreadable ? ` (unreadable: ${d.unreadable})` : ''}`;
      return li;
    }));
    if (!record.history.length) {
      const li = document.createElement('li');
      li.textContent = 'no decision yet (pending)';
      list.append(li);
    }
    $('history').showModal();
  } catch (error) {
    fail(error);
  }
}

// The grid's columns, for the up and down arrows.
function columns() {
  const all = tiles();
  if (all.length < 2) return 1;
  const top = all[0].offsetTop;
  const n = all.findIndex((t) => t.offsetTop !== top);
  return n === -1 ? all.length : n;
}

function move(from, step) {
  const all = tiles();
  const to = all[Math.min(all.length - 1, Math.max(0, all.indexOf(from) + step))];
  if (to) to.querySelector('.select').focus();
}

const MOVES = { ArrowLeft: () => -1, ArrowRight: () => 1, ArrowUp: () => -columns(), ArrowDown: () => columns() };

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || $('history').open) return;
  const target = event.target;
  const typing = target.matches('input:not([type=checkbox]), select, textarea');
  if (typing) return;
  const tile = target.closest && target.closest('.tile');
  if (tile && MOVES[event.key]) {
    event.preventDefault();
    move(tile, MOVES[event.key]());
    return;
  }
  // Shift, not the letter's case, chooses the whole page: Caps Lock must not approve a page.
  const key = event.key.toLowerCase();
  const actions = event.shiftKey ? {
    a: () => decidePage('approved'),
    r: () => decidePage('rejected'),
  } : {
    a: () => decideTiles(targets(), 'approved'),
    r: () => decideTiles(targets(), 'rejected'),
    h: () => tile && showHistory(tile),
    n: nextPage,
    p: previousPage,
  };
  if (actions[key]) {
    event.preventDefault();
    actions[key]();
  }
}

async function start() {
  $('filters').querySelectorAll('select.digits').forEach((select) => {
    for (let d = 0; d < 10; d += 1) select.append(new Option(String(d), String(d)));
  });
  $('filters').addEventListener('submit', (event) => { event.preventDefault(); restart(); });
  $('approve-selected').addEventListener('click', () => decideTiles(selected(), 'approved'));
  $('reject-selected').addEventListener('click', () => decideTiles(selected(), 'rejected'));
  $('approve-page').addEventListener('click', () => decidePage('approved'));
  $('reject-page').addEventListener('click', () => decidePage('rejected'));
  $('next').addEventListener('click', nextPage);
  $('previous').addEventListener('click', previousPage);
  $('tiles').addEventListener('change', (event) => {
    const tile = event.target.closest('.tile');
    if (tile) tile.classList.toggle('selected', event.target.checked);
  });
  $('tiles').addEventListener('click', (event) => {
    const button = event.target.closest('button');
    const tile = event.target.closest('.tile');
    if (!button || !tile) return;
    if (button.classList.contains('approve')) decideTiles([tile], 'approved');
    else if (button.classList.contains('reject')) decideTiles([tile], 'rejected');
    else if (button.classList.contains('show-history')) showHistory(tile);
  });
  document.addEventListener('keydown', onKey);
  try {
    const session = await api('/api/session');
    view.csrf = session.csrf;
    $('reviewer').textContent = session.reviewer;
    $('store').textContent = session.store;
  } catch (error) {
    fail(error);
    return;
  }
  await Promise.all([load(null), loadSuspects()]);
  document.body.dataset.ready = 'true';
}

start();
