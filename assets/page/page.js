// The live page: who is logged in now (kept current by /api/v1/stream) or at
// an earlier instant (/api/v1/sessions?at=). Plain DOM, no framework and no
// network but whosin itself. Data is only ever set as text, never as HTML.
'use strict';

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = 'whosin-token';

const page = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  at: null,             // ISO time shown, or null for now (live)
  sessions: [],         // the rows, from /api/v1/sessions
  hosts: new Map(),     // host -> {sessions, users, connections}
  peaks: new Map(),     // host -> today's peak sessions
  sort: { key: 'since', dir: -1 },
  filter: '',
  source: null,
  refreshTimer: null,
};

class Unauthorized extends Error {}

async function api(path) {
  const headers = page.token ? { Authorization: 'Bearer ' + page.token } : {};
  const r = await fetch(path, { headers, cache: 'no-store' });
  if (r.status === 401) throw new Unauthorized();
  if (!r.ok) throw new Error(path + ' answered ' + r.status);
  return r.json();
}

// ---- formatting -----------------------------------------------------------

const pad = (n) => String(n).padStart(2, '0');
function clock(d) { return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()); }
function since(iso) {
  const d = new Date(iso);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return (sameDay ? '' : d.toLocaleDateString() + ' ') + clock(d);
}
function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h > 0 ? h + 'h ' + pad(m) + 'm' : m + 'm ' + pad(s % 60) + 's';
}
function appsText(apps) { return apps.map((a) => a.name || a.id).join(', '); }
const EVENT_TEXT = {
  session_start: 'signed in', session_stop: 'signed out',
  connection_open: 'opened', connection_close: 'closed',
};

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

// ---- hosts ----------------------------------------------------------------

function hostCounts() {
  if (page.at === null) return page.hosts;
  // At an earlier instant the counts come from the sessions shown.
  const m = new Map();
  for (const s of page.sessions) {
    const h = m.get(s.host) || { sessions: 0, users: new Set(), connections: 0 };
    h.sessions += 1; h.users.add(s.user.toLowerCase()); h.connections += s.connections;
    m.set(s.host, h);
  }
  for (const [k, h] of m) m.set(k, { sessions: h.sessions, users: h.users.size, connections: h.connections });
  return m;
}

function renderHosts() {
  const box = $('#hosts');
  const counts = hostCounts();
  const names = [...new Set([...counts.keys(), ...(page.at === null ? page.peaks.keys() : [])])].sort();
  const cards = [];
  for (const name of names) {
    const c = counts.get(name) || { sessions: 0, users: 0, connections: 0 };
    const peak = Math.max(page.peaks.get(name) || 0, page.at === null ? c.sessions : 0);
    const card = el('article', null, { class: 'host', 'data-host': name });
    card.append(el('h3', name, { title: name }));
    const dl = el('dl');
    const item = (label, value, key) => {
      dl.append(el('dt', label));
      dl.append(el('dd', String(value), { 'data-count': key }));
    };
    item('sessions', c.sessions, 'sessions');
    item('users', c.users, 'users');
    item('connections', c.connections, 'connections');
    item(page.at === null ? 'peak today' : 'peak', page.at === null ? peak : '–', 'peak');
    card.append(dl);
    cards.push(card);
  }
  box.replaceChildren(...cards);
}

// ---- the table ------------------------------------------------------------

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

function renderTable() {
  const now = page.at === null ? Date.now() : new Date(page.at).getTime();
  const f = page.filter.trim().toLowerCase();
  let rows = page.sessions;
  if (f) {
    rows = rows.filter((s) => [s.user, s.host, appsText(s.apps), s.browser || '', s.os || '']
      .some((v) => v.toLowerCase().includes(f)));
  }
  const { key, dir } = page.sort;
  rows = [...rows].sort((a, b) => {
    const x = sortValue(a, key, now), y = sortValue(b, key, now);
    return (x < y ? -1 : x > y ? 1 : 0) * dir || a.user.localeCompare(b.user);
  });
  const trs = rows.map((s) => {
    const tr = el('tr', null, { 'data-user': s.user, 'data-host': s.host });
    tr.append(el('td', s.user, { title: s.user }));
    tr.append(el('td', s.host, { title: s.host }));
    tr.append(el('td', since(s.started_at), { title: s.started_at }));
    tr.append(el('td', duration(now - new Date(s.started_at).getTime())));
    // Each app by its name (from the Qlik repository), its id on hover.
    const apps = el('td');
    s.apps.forEach((a, i) => {
      if (i > 0) apps.append(', ');
      const hover = a.id + (a.stream ? ' (stream ' + a.stream + ')' : '');
      apps.append(el('span', a.name || a.id, { title: hover, 'data-app': a.id }));
    });
    tr.append(apps);
    tr.append(el('td', s.browser || ''));
    tr.append(el('td', s.os || ''));
    return tr;
  });
  $('#who tbody').replaceChildren(...trs);
  $('#empty').hidden = trs.length > 0;
  for (const th of document.querySelectorAll('#who th')) {
    th.setAttribute('aria-sort', th.dataset.key === key ? (dir > 0 ? 'ascending' : 'descending') : 'none');
  }
  const total = page.sessions.length;
  $('#who-caption').textContent = (page.at === null ? 'Who is in now' : 'Who was in at ' + new Date(page.at).toLocaleString())
    + ': ' + total + (total === 1 ? ' session' : ' sessions') + (f ? ', ' + rows.length + ' shown' : '');
}

function render() { renderHosts(); renderTable(); }

async function loadSessions() {
  const q = page.at === null ? '' : '?at=' + encodeURIComponent(page.at);
  const answer = await api('/api/v1/sessions' + q);
  page.sessions = answer.sessions;
  render();
}

function scheduleRefresh() {
  if (page.at !== null || page.refreshTimer) return;
  page.refreshTimer = setTimeout(() => {
    page.refreshTimer = null;
    loadSessions().catch(showError);
  }, 300);
}

// ---- today's peaks and the chart -------------------------------------------

async function loadPeaks() {
  const now = new Date();
  const midnight = new Date(now.getFullYear(), now.getMonth(), now.getDate());
  const names = new Set([...page.hosts.keys(), ...page.sessions.map((s) => s.host)]);
  for (const host of names) {
    const c = await api('/api/v1/concurrency?from=' + encodeURIComponent(midnight.toISOString())
      + '&to=' + encodeURIComponent(now.toISOString()) + '&step=5m&host=' + encodeURIComponent(host));
    page.peaks.set(host, c.peak ? c.peak.sessions : 0);
  }
  renderHosts();
}

async function loadChart() {
  const to = new Date();
  const from = new Date(to.getTime() - 6 * 3600 * 1000);
  const c = await api('/api/v1/concurrency?from=' + encodeURIComponent(from.toISOString())
    + '&to=' + encodeURIComponent(to.toISOString()) + '&step=5m');
  const svg = $('#chart');
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
  $('#chart-peak').textContent = c.peak
    ? 'Peak ' + c.peak.sessions + ' sessions, ' + c.peak.users + ' users at ' + clock(new Date(c.peak.t))
    : 'No sessions';
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
  source.onopen = () => setStatus(page.at === null ? 'live' : 'live (showing the past)', 'live');
  // EventSource reconnects by itself, resuming after the last event id.
  source.onerror = () => setStatus('reconnecting…', 'down');
  source.addEventListener('state', (m) => {
    const s = JSON.parse(m.data);
    page.hosts.set(s.host, { sessions: s.sessions, users: s.users, connections: s.connections });
    if (s.sessions > (page.peaks.get(s.host) || 0)) page.peaks.set(s.host, s.sessions);
    if (page.at === null) renderHosts();
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

// ---- controls ---------------------------------------------------------------

$('#filter').addEventListener('input', (e) => { page.filter = e.target.value; renderTable(); });
document.addEventListener('keydown', (e) => {
  if (e.key === '/' && document.activeElement.tagName !== 'INPUT') { e.preventDefault(); $('#filter').focus(); }
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
  page.at = new Date(v).toISOString();
  $('#banner').textContent = 'Showing who was in at ' + new Date(page.at).toLocaleString() + '. Press "Now (live)" to go back.';
  loadSessions().catch(showError);
});
$('#live').addEventListener('click', () => {
  page.at = null;
  $('#at').value = '';
  $('#banner').textContent = '\u00a0';
  loadSessions().catch(showError);
});

// ---- start ------------------------------------------------------------------

async function start(afterToken) {
  try {
    await loadSessions();
  } catch (e) {
    if (e instanceof Unauthorized) return askToken(afterToken);
    return showError(e);
  }
  connect();
  loadPeaks().catch(showError);
  loadChart().catch(showError);
}

setInterval(() => { if (page.at === null) renderTable(); }, 10000);
setInterval(() => { loadChart().catch(showError); loadPeaks().catch(showError); }, 60000);
start(false);
