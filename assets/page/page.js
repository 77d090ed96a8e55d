// The page: who is logged in now (kept current by /api/v1/stream) or at an
// earlier instant, and (in views.js) the incident, app, user and peak-hour
// views. Plain DOM, no framework and no network but whosin itself. Data is
// only ever set as text, never as HTML. Every view has a URL:
//   /?view=incident&at=2026-11-21T10:42:00Z&app=Sales&user=LAB\anna&host=node1
// Without `view`, the "who is in" view (at `at`, when given). `at` may also
// be Unix milliseconds (what a Grafana data link gives).
'use strict';

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = 'whosin-token';
const VIEWS = ['now', 'incident', 'apps', 'user', 'peaks'];

const page = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  view: 'now',
  at: null,             // ISO time shown, or null for now (live)
  app: null,            // app filter (id or name), or null
  user: null,           // user filter (DIRECTORY\userid), or null
  host: null,           // host filter, or null
  before: '15m', after: '5m', days: '7',
  sessions: [],         // the rows of the "who is in" view, from /api/v1/sessions
  hosts: new Map(),     // host -> {sessions, users, connections}, live
  peaks: new Map(),     // host -> today's peak sessions
  sort: { key: 'since', dir: -1 },
  filter: '',
  source: null,
  refreshTimer: null,
  csv: {},              // table name -> () => rows (first row the header)
  loaders: {},          // view name -> async () => void (views.js)
};

class Unauthorized extends Error {}

async function api(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined && v !== '') q.set(k, v);
  const url = path + (q.toString() ? '?' + q : '');
  const headers = page.token ? { Authorization: 'Bearer ' + page.token } : {};
  const r = await fetch(url, { headers, cache: 'no-store' });
  if (r.status === 401) throw new Unauthorized();
  if (!r.ok) {
    let why = '';
    try { why = (await r.json()).error || ''; } catch { /* not JSON */ }
    throw new Error(path + ' answered ' + r.status + (why ? ': ' + why : ''));
  }
  return r.json();
}

// ---- formatting -----------------------------------------------------------

const pad = (n) => String(n).padStart(2, '0');
function clock(d) { return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()); }
function since(iso) {
  const d = new Date(iso);
  const sameDay = d.toDateString() === new Date().toDateString();
  return (sameDay ? '' : d.toLocaleDateString() + ' ') + clock(d);
}
function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d > 0) return d + 'd ' + h + 'h';
  return h > 0 ? h + 'h ' + pad(m) + 'm' : m + 'm ' + pad(s % 60) + 's';
}
function appName(a) { return a ? (a.name || a.id) : ''; }
function appsText(apps) { return apps.map(appName).join(', '); }
const EVENT_TEXT = {
  session_start: 'signed in', session_stop: 'signed out',
  connection_open: 'opened', connection_close: 'closed',
};
// Durations as the page's selects write them (5m, 1h).
function ms(text) {
  const m = /^(\d+)(s|m|h|d)$/.exec(text);
  return m ? Number(m[1]) * { s: 1e3, m: 6e4, h: 36e5, d: 864e5 }[m[2]] : 0;
}
// A `?at=` value: RFC 3339, or Unix milliseconds from a Grafana data link.
function parseAt(v) {
  if (!v) return null;
  const d = /^\d{10,}$/.test(v) ? new Date(Number(v)) : new Date(v);
  return isNaN(d.getTime()) ? null : d.toISOString();
}
// The browser's local time, as a datetime-local input takes it.
function localInput(iso) {
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

// A link to the page itself with some of its state changed; followed
// without a reload (see the click handler below), so Ctrl-click opens a tab.
function selfLink(text, changes, attrs) {
  const a = el('a', text, attrs);
  a.href = urlFor({ ...state(), ...changes });
  a.dataset.nav = JSON.stringify(changes);
  return a;
}
function userLink(user) { return selfLink(user, { view: 'user', user }, { class: 'user-link', title: 'History of ' + user }); }

// ---- the URL ----------------------------------------------------------------

function state() {
  return { view: page.view, at: page.at, app: page.app, user: page.user, host: page.host,
    before: page.before, after: page.after, days: page.days };
}
function urlFor(s) {
  const q = new URLSearchParams();
  if (s.view && s.view !== 'now') q.set('view', s.view);
  if (s.at) q.set('at', s.at);
  for (const k of ['app', 'user', 'host']) if (s[k]) q.set(k, s[k]);
  if (s.view === 'incident') {
    if (s.before !== '15m') q.set('before', s.before);
    if (s.after !== '5m') q.set('after', s.after);
  }
  if (s.view === 'user' && s.days !== '7') q.set('days', s.days);
  const text = q.toString();
  return location.pathname + (text ? '?' + text : '');
}
function readUrl() {
  const q = new URLSearchParams(location.search);
  page.at = parseAt(q.get('at'));
  page.app = q.get('app') || null;
  page.user = q.get('user') || null;
  page.host = q.get('host') || null;
  page.before = q.get('before') || '15m';
  page.after = q.get('after') || '5m';
  page.days = q.get('days') || '7';
  const v = q.get('view');
  page.view = VIEWS.includes(v) ? v : 'now';
}
// Changes the state, writes the URL (a new history entry) and shows it.
function go(changes) {
  Object.assign(page, changes);
  if (!VIEWS.includes(page.view)) page.view = 'now';
  history.pushState(null, '', urlFor(state()));
  show();
}
window.addEventListener('popstate', () => { readUrl(); show(); });
document.addEventListener('click', (e) => {
  const a = e.target.closest('a[data-nav]');
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  go(JSON.parse(a.dataset.nav));
});
for (const a of document.querySelectorAll('nav.views a')) {
  a.addEventListener('click', (e) => {
    if (e.ctrlKey || e.metaKey || e.shiftKey) return;
    e.preventDefault();
    go({ view: a.dataset.view });
  });
}

// ---- long tables --------------------------------------------------------------

// A table shows its first rows and more on demand (the button, or scrolling
// to it): with thousands of sessions, building every row at once would take
// seconds on a modest laptop, while the filter and the CSV reach them all.
const ROWS_AT_ONCE = 200;
page.tables = new Map();  // tbody -> {items, make, empty, limit}
const moreSeen = new IntersectionObserver((entries) => {
  for (const e of entries) if (e.isIntersecting) e.target.click();
}, { rootMargin: '400px' });

// Fills `tbody` with make(item) for the first rows of `items`; `keep` keeps
// how many were shown (a live refresh), else it starts again at the top.
function fillRows(tbody, items, make, empty, keep) {
  const before = page.tables.get(tbody);
  const limit = keep && before ? before.limit : ROWS_AT_ONCE;
  page.tables.set(tbody, { items, make, empty, limit });
  drawRows(tbody);
}
function drawRows(tbody) {
  const t = page.tables.get(tbody);
  const trs = t.items.slice(0, t.limit).map(t.make);
  if (trs.length === 0 && t.empty) {
    const tr = el('tr', null, { class: 'none' });
    tr.append(el('td', t.empty, { colspan: String(columns(tbody)) }));
    trs.push(tr);
  }
  tbody.replaceChildren(...trs);
  moreRow(tbody, t);
}
const columns = (tbody) => tbody.closest('table').querySelectorAll('thead th').length;
// The "show more" row; it appends the next rows without redrawing the others.
function moreRow(tbody, t) {
  if (t.items.length <= t.limit) return;
  const tr = el('tr', null, { class: 'more' });
  const td = el('td', null, { colspan: String(columns(tbody)) });
  const rest = t.items.length - t.limit;
  const b = el('button', 'Show ' + Math.min(rest, ROWS_AT_ONCE) + ' more (' + rest + ' not shown; the CSV has all)', { type: 'button' });
  b.addEventListener('click', () => {
    moreSeen.unobserve(b);
    if (page.tables.get(tbody) !== t) return;
    const from = t.limit;
    t.limit += ROWS_AT_ONCE;
    tr.replaceWith(...t.items.slice(from, t.limit).map(t.make));
    moreRow(tbody, t);
  });
  td.append(b);
  tr.append(td);
  tbody.append(tr);
  moreSeen.observe(b);
}

// ---- CSV --------------------------------------------------------------------

function csvField(v) {
  const s = v === null || v === undefined ? '' : String(v);
  return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}
function csvText(rows) { return rows.map((r) => r.map(csvField).join(',')).join('\r\n') + '\r\n'; }
function download(name) {
  const rows = page.csv[name] ? page.csv[name]() : [];
  const blob = new Blob([csvText(rows)], { type: 'text/csv;charset=utf-8' });
  const a = el('a', null, { download: 'whosin-' + name + '-' + (page.at || new Date().toISOString()).replace(/[:.]/g, '-') + '.csv' });
  a.href = URL.createObjectURL(blob);
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}
for (const b of document.querySelectorAll('button.csv')) b.addEventListener('click', () => download(b.dataset.csv));

// ---- hosts ----------------------------------------------------------------

// Counts per host of a list of sessions (an earlier instant, or a filter).
function countHosts(sessions) {
  const m = new Map();
  for (const s of sessions) {
    const h = m.get(s.host) || { sessions: 0, users: new Set(), connections: 0 };
    h.sessions += 1; h.users.add(s.user.toLowerCase()); h.connections += s.connections;
    m.set(s.host, h);
  }
  for (const [k, h] of m) m.set(k, { sessions: h.sessions, users: h.users.size, connections: h.connections });
  return m;
}
const filtered = () => page.app !== null || page.user !== null || page.host !== null;

function hostCards(box, counts, peaks) {
  const names = [...new Set([...counts.keys(), ...(peaks ? peaks.keys() : [])])].sort();
  const cards = names.map((name) => {
    const c = counts.get(name) || { sessions: 0, users: 0, connections: 0 };
    const card = el('article', null, { class: 'host' + (page.host === name ? ' chosen' : ''), 'data-host': name });
    card.append(el('h3', null, { title: name }));
    card.firstChild.append(selfLink(name, { host: page.host === name ? null : name }, { title: 'Only ' + name }));
    const dl = el('dl');
    const item = (label, value, key) => { dl.append(el('dt', label)); dl.append(el('dd', String(value), { 'data-count': key })); };
    item('sessions', c.sessions, 'sessions');
    item('users', c.users, 'users');
    item('connections', c.connections, 'connections');
    if (peaks) item('peak today', Math.max(peaks.get(name) || 0, c.sessions), 'peak');
    card.append(dl);
    return card;
  });
  box.replaceChildren(...cards);
}

function renderHosts() {
  const live = page.at === null && !filtered();
  hostCards($('#hosts'), live ? page.hosts : countHosts(page.sessions), live ? page.peaks : null);
}

// ---- the "who is in" table ------------------------------------------------

function sortValue(s, key, now) {
  switch (key) {
    case 'user': return s.user.toLowerCase();
    case 'host': return s.host.toLowerCase();
    case 'since': return s.started_at;
    case 'duration': return now - new Date(s.started_at).getTime();
    case 'apps': return appsText(s.apps).toLowerCase();
    case 'browser': return (s.browser || '').toLowerCase();
    case 'os': return (s.os || '').toLowerCase();
    default: return '';
  }
}

function typed(rows) {
  const f = page.filter.trim().toLowerCase();
  if (!f) return rows;
  return rows.filter((s) => [s.user, s.host, appsText(s.apps), s.browser || '', s.os || '']
    .some((v) => v.toLowerCase().includes(f)));
}

function appSpans(td, apps) {
  apps.forEach((a, i) => {
    if (i > 0) td.append(', ');
    const hover = a.id + (a.stream ? ' (stream ' + a.stream + ')' : '');
    td.append(selfLink(appName(a), { app: a.id }, { title: hover, 'data-app': a.id }));
  });
}

function shownSessions() {
  const now = page.at === null ? Date.now() : new Date(page.at).getTime();
  const { key, dir } = page.sort;
  return typed(page.sessions).sort((a, b) => {
    const x = sortValue(a, key, now), y = sortValue(b, key, now);
    return (x < y ? -1 : x > y ? 1 : 0) * dir || a.user.localeCompare(b.user);
  });
}

function renderTable(keep) {
  const now = page.at === null ? Date.now() : new Date(page.at).getTime();
  const rows = shownSessions();
  fillRows($('#who tbody'), rows, (s) => {
    const tr = el('tr', null, { 'data-user': s.user, 'data-host': s.host });
    const user = el('td', null, { title: s.user });
    user.append(userLink(s.user));
    tr.append(user);
    tr.append(el('td', s.host, { title: s.host }));
    tr.append(el('td', since(s.started_at), { title: s.started_at }));
    tr.append(el('td', duration(now - new Date(s.started_at).getTime())));
    // Each app by its name (from the Qlik repository), its id on hover.
    const apps = el('td');
    appSpans(apps, s.apps);
    tr.append(apps);
    tr.append(el('td', s.browser || '', { title: s.browser || '' }));
    tr.append(el('td', s.os || '', { title: s.os || '' }));
    return tr;
  }, null, keep);
  $('#empty').hidden = rows.length > 0;
  const { key, dir } = page.sort;
  for (const th of document.querySelectorAll('#who th')) {
    th.setAttribute('aria-sort', th.dataset.key === key ? (dir > 0 ? 'ascending' : 'descending') : 'none');
  }
  const total = page.sessions.length;
  $('#who-caption').textContent = (page.at === null ? 'Who is in now' : 'Who was in at ' + new Date(page.at).toLocaleString())
    + ': ' + total + (total === 1 ? ' session' : ' sessions') + (page.filter.trim() ? ', ' + rows.length + ' shown' : '');
}
// Sessions of /api/v1/sessions, and apps of /api/v1/apps, as CSV rows.
function sessionsCsv(list) {
  return [['user', 'host', 'started_at', 'apps', 'app_ids', 'connections', 'browser', 'os'],
    ...list.map((s) => [s.user, s.host, s.started_at, appsText(s.apps), s.apps.map((a) => a.id).join(' '),
      s.connections, s.browser || '', s.os || ''])];
}
function appsCsv(list) {
  return [['app', 'app_id', 'stream', 'connections', 'users'],
    ...list.map((a) => [appName(a), a.id, a.stream || '', a.connections, a.users.join(' ')])];
}
page.csv.who = () => sessionsCsv(shownSessions());

function sessionParams(at) { return { at, host: page.host, user: page.user, app: page.app }; }

async function loadSessions(keep) {
  const answer = await api('/api/v1/sessions', sessionParams(page.at));
  page.sessions = answer.sessions;
  renderHosts();
  renderTable(keep);
}

function scheduleRefresh() {
  if (page.at !== null || page.view !== 'now' || page.refreshTimer) return;
  page.refreshTimer = setTimeout(() => {
    page.refreshTimer = null;
    loadSessions(true).catch(showError);
  }, 300);
}

// ---- today's peaks and the charts -------------------------------------------

async function loadPeaks() {
  const now = new Date();
  const midnight = new Date(now.getFullYear(), now.getMonth(), now.getDate());
  const names = new Set([...page.hosts.keys(), ...page.sessions.map((s) => s.host)]);
  for (const host of names) {
    const c = await api('/api/v1/concurrency', { from: midnight.toISOString(), to: now.toISOString(), step: '5m', host });
    page.peaks.set(host, c.peak ? c.peak.sessions : 0);
  }
  renderHosts();
}

// Draws a concurrency answer's sessions into an SVG of viewBox 300×100.
function drawCurve(svg, c) {
  const pts = c.points;
  const max = Math.max(1, ...pts.map((p) => p.sessions));
  const t0 = new Date(c.from).getTime(), t1 = new Date(c.to).getTime();
  const x = (t) => ((new Date(t).getTime() - t0) / Math.max(1, t1 - t0)) * 300;
  const y = (v) => 98 - (v / max) * 94;
  const ns = 'http://www.w3.org/2000/svg';
  const line = document.createElementNS(ns, 'polyline');
  line.setAttribute('points', pts.map((p) => x(p.t).toFixed(1) + ',' + y(p.sessions).toFixed(1)).join(' '));
  const peak = document.createElementNS(ns, 'line');
  peak.setAttribute('class', 'peak');
  peak.setAttribute('x1', '0'); peak.setAttribute('x2', '300');
  peak.setAttribute('y1', y(max).toFixed(1)); peak.setAttribute('y2', y(max).toFixed(1));
  svg.replaceChildren(peak, line);
}
function peakText(c) {
  return c.peak && c.peak.sessions > 0
    ? 'Peak ' + c.peak.sessions + ' sessions, ' + c.peak.users + ' users at ' + clock(new Date(c.peak.t))
    : 'No sessions';
}

async function loadChart() {
  const to = new Date();
  const from = new Date(to.getTime() - 6 * 3600 * 1000);
  const c = await api('/api/v1/concurrency', { from: from.toISOString(), to: to.toISOString(), step: '5m', host: page.host, app: page.app });
  drawCurve($('#chart'), c);
  $('#chart-peak').textContent = peakText(c);
}

// ---- live updates -----------------------------------------------------------

function addTicker(ev) {
  const li = el('li', null, { 'data-seq': String(ev.seq) });
  li.append(el('time', clock(new Date(ev.time)), { datetime: ev.time }));
  const what = EVENT_TEXT[ev.event] || ev.event;
  const app = ev.app_name ? ' ' + ev.app_name : ev.app_id ? ' ' + ev.app_id.slice(0, 8) + '…' : '';
  const full = [ev.app_name, ev.app_id].filter(Boolean).join(' ');
  li.append(el('span', ev.user + ' ' + what + app + ' on ' + ev.host, { title: ev.user + ' ' + what + ' ' + full + ' on ' + ev.host }));
  const list = $('#ticker');
  list.prepend(li);
  while (list.children.length > 30) list.lastElementChild.remove();
}

function setStatus(text, cls) {
  const s = $('#status');
  s.textContent = text;
  s.className = 'status ' + (cls || '');
}

function connect() {
  if (page.source) page.source.close();
  // The last events fill the ticker; on a reconnect the browser resumes
  // after the last event it saw (Last-Event-ID), which takes precedence.
  const q = '?recent=30' + (page.token ? '&access_token=' + encodeURIComponent(page.token) : '');
  const source = new EventSource('/api/v1/stream' + q);
  page.source = source;
  source.onopen = () => setStatus('live', 'live');
  // EventSource reconnects by itself, resuming after the last event id.
  source.onerror = () => setStatus('reconnecting…', 'down');
  source.addEventListener('state', (m) => {
    const s = JSON.parse(m.data);
    page.hosts.set(s.host, { sessions: s.sessions, users: s.users, connections: s.connections });
    if (s.sessions > (page.peaks.get(s.host) || 0)) page.peaks.set(s.host, s.sessions);
    if (page.at === null && page.view === 'now' && !filtered()) renderHosts();
    scheduleRefresh();
  });
  source.addEventListener('event', (m) => {
    addTicker(JSON.parse(m.data));
    scheduleRefresh();
  });
}

// ---- errors and the token -----------------------------------------------------

function showError(e) {
  if (e instanceof Unauthorized) return askToken();
  setStatus('error: ' + e.message, 'down');
}

function askToken(wrong) {
  if (page.source) { page.source.close(); page.source = null; }
  const d = $('#token-dialog');
  $('#token-error').textContent = wrong ? 'That token was refused.' : '\u00a0';
  if (!d.open) d.showModal();
  $('#token').focus();
}

$('#token-form').addEventListener('submit', () => {
  page.token = $('#token').value.trim();
  sessionStorage.setItem(TOKEN_KEY, page.token);
  start(true);
});

// ---- showing a view -----------------------------------------------------------

function renderChrome() {
  for (const a of document.querySelectorAll('nav.views a')) {
    if (a.dataset.view === page.view) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
    a.href = urlFor({ ...state(), view: a.dataset.view });
  }
  for (const v of document.querySelectorAll('.view')) v.hidden = v.dataset.view !== page.view;
  // The filter box is for the "who is in" table.
  $('#filter').closest('label').hidden = page.view !== 'now';
  $('#at').value = page.at ? localInput(page.at) : '';
  const chips = [];
  for (const [k, label] of [['app', 'App'], ['user', 'User'], ['host', 'Host']]) {
    if (page[k] === null) continue;
    const chip = el('span', null, { class: 'chip', 'data-filter': k });
    chip.append(el('span', label + ': ' + (k === 'app' ? appLabel(page.app) : page[k])));
    const x = el('button', '×', { type: 'button', 'aria-label': 'Clear the ' + label.toLowerCase() + ' filter', title: 'Clear' });
    x.addEventListener('click', () => go({ [k]: null }));
    chip.append(x);
    chips.push(chip);
  }
  $('#chips').replaceChildren(...chips);
  const banner = $('#banner');
  banner.textContent = page.at
    ? 'Showing ' + (page.view === 'now' ? 'who was in at ' : '') + new Date(page.at).toLocaleString() + '. Press "Now (live)" to go back.'
    : '\u00a0';
  if (page.at && page.view === 'now') {
    banner.append(' ', selfLink('What opened and closed around then?', { view: 'incident' }, { id: 'to-incident' }));
  }
}
// An app filter by its name when a loaded answer knows it.
page.appNames = new Map();
function appLabel(q) { return page.appNames.get(q) || q; }
function learnApps(apps) { for (const a of apps) if (a && a.name) page.appNames.set(a.id, a.name); }

async function show() {
  renderChrome();
  try {
    if (page.view === 'now') {
      await loadSessions();
      learnApps(page.sessions.flatMap((s) => s.apps));
      renderChrome();
      loadChart().catch(showError);
      if (page.at === null && !filtered()) loadPeaks().catch(showError);
    } else {
      await page.loaders[page.view]();
      renderChrome();
    }
  } catch (e) {
    showError(e);
  }
}

// ---- controls ---------------------------------------------------------------

$('#filter').addEventListener('input', (e) => { page.filter = e.target.value; renderTable(); });
document.addEventListener('keydown', (e) => {
  if (e.key === '/' && !['INPUT', 'SELECT'].includes(document.activeElement.tagName)) { e.preventDefault(); $('#filter').focus(); }
});
for (const th of document.querySelectorAll('#who th')) {
  th.querySelector('button').addEventListener('click', () => {
    const key = th.dataset.key;
    page.sort = { key, dir: page.sort.key === key ? -page.sort.dir : (key === 'since' || key === 'duration' ? -1 : 1) };
    renderTable();
  });
}
$('#at-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const v = $('#at').value;
  if (!v) return;
  go({ at: new Date(v).toISOString() });
});
$('#live').addEventListener('click', () => go({ at: null }));

// ---- start ------------------------------------------------------------------

async function start(afterToken) {
  readUrl();
  try {
    // The first answer tells whether a token is needed.
    await api('/api/v1/sessions', { host: '-' });
  } catch (e) {
    if (e instanceof Unauthorized) return askToken(afterToken);
    return showError(e);
  }
  connect();
  show();
}

setInterval(() => { if (page.at === null && page.view === 'now') renderTable(true); }, 10000);
setInterval(() => { if (page.view === 'now') { loadChart().catch(showError); if (page.at === null && !filtered()) loadPeaks().catch(showError); } }, 60000);
// After views.js (also deferred) has registered its views.
document.addEventListener('DOMContentLoaded', () => start(false));
