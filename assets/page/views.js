// The views beside "who is in" (page.js): the incident view (who was in at an
// instant, per node and app, and what opened and closed around it), apps, a
// user's history and the peak hours. Each registers its loader and its CSV
// tables with page.js, whose helpers (api, el, selfLink, ...) it uses.
'use strict';

const WEEKDAYS = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'];
// Most rows one timeline draws; the CSV of the table below it has them all.
const MAX_LANES = 200;

const views = { incident: null, apps: null, user: null, peaks: null };

function fmtTime(iso) { return iso ? since(iso) : ''; }
function endText(reason) {
  return { stopped: 'signed out', expired: 'expired (idle)', reconciled: 'ended by the proxy (reconciled)', evicted: 'evicted (too many tracked)' }[reason] || reason || 'still in';
}
function closeText(reason) { return { closed: 'closed', session_ended: 'its session ended' }[reason] || reason || 'still open'; }
// A stable colour per app, so one app is one colour across the timeline.
function appHue(id) {
  let h = 0;
  for (const c of id || '') h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return h % 360;
}
function appMatches(a, q) {
  if (!a || !q) return false;
  const l = q.toLowerCase();
  return a.id.toLowerCase() === l || (a.name || '').toLowerCase() === l;
}
function tableRows(selector, items, make, emptyText) {
  fillRows(document.querySelector(selector + ' tbody'), items, make, emptyText, false);
}
function row(cells) {
  const tr = el('tr');
  for (const c of cells) {
    const td = el('td');
    if (c instanceof Node) td.append(c); else td.textContent = c === null || c === undefined ? '' : String(c);
    if (!(c instanceof Node)) td.title = td.textContent;
    tr.append(td);
  }
  return tr;
}

// ---- the timeline ---------------------------------------------------------------

// Tick steps for the time axis, in minutes.
const TICKS = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880];

// Draws lanes of bars over [from, to] (ms) into `box`; `lanes` are
// {label: Node, bars: [{start, end, cls, title, hue}]}, `marker` an instant.
function drawTimeline(box, from, to, lanes, marker, more) {
  const span = Math.max(1, to - from);
  const x = (t) => Math.min(100, Math.max(0, ((t - from) / span) * 100));
  const axis = el('div', null, { class: 'tl-axis' });
  const stepMin = TICKS.find((m) => span / (m * 6e4) <= 8) || 2880;
  const step = stepMin * 6e4;
  const offset = new Date(from).getTimezoneOffset() * 6e4;
  for (let t = Math.ceil((from - offset) / step) * step + offset; t <= to; t += step) {
    const d = new Date(t);
    const label = stepMin >= 1440 ? d.toLocaleDateString() : pad(d.getHours()) + ':' + pad(d.getMinutes());
    axis.append(el('span', label, { style: 'left:' + x(t).toFixed(2) + '%' }));
  }
  const head = el('div', null, { class: 'tl-row tl-head' });
  head.append(el('div', null, { class: 'tl-label' }), axis);
  const out = [head];
  for (const lane of lanes.slice(0, MAX_LANES)) {
    const r = el('div', null, { class: 'tl-row' });
    const label = el('div', null, { class: 'tl-label' });
    label.append(lane.label);
    const track = el('div', null, { class: 'tl-track' });
    if (marker !== null) track.append(el('span', null, { class: 'tl-marker', style: 'left:' + x(marker).toFixed(2) + '%' }));
    for (const b of lane.bars) {
      const left = x(b.start), right = x(b.end);
      // A bar stays at least 3 pixels wide and inside its track, so a
      // session of seconds at the window's edge still shows.
      const bar = el('span', null, { class: 'bar ' + b.cls, title: b.title,
        style: 'left:min(' + left.toFixed(2) + '%, calc(100% - 3px));width:max(3px,' + (right - left).toFixed(2) + '%)' + (b.hue !== undefined ? ';--hue:' + b.hue : '') });
      track.append(bar);
    }
    r.append(label, track);
    out.push(r);
  }
  if (lanes.length > MAX_LANES || more) {
    out.push(el('p', (lanes.length > MAX_LANES ? (lanes.length - MAX_LANES) + ' more not drawn. ' : '') + (more || '') + ' The table below lists everything.', { class: 'small pad' }));
  }
  if (lanes.length === 0) out.push(el('p', 'Nothing opened or closed in this window.', { class: 'small pad' }));
  box.replaceChildren(...out);
}

// The bars of a session and its connections, clipped to [from, to].
function sessionBars(s, conns, from, to) {
  const start = new Date(s.started_at).getTime();
  const end = s.ended_at ? new Date(s.ended_at).getTime() : to;
  const bars = [{ start: Math.max(start, from), end: Math.min(end, to), cls: 's-bar end-' + (s.end_reason || 'open'),
    title: s.user + ' on ' + s.host + ': signed in ' + fmtTime(s.started_at) + ', ' + (s.ended_at ? endText(s.end_reason) + ' ' + fmtTime(s.ended_at) : 'still in')
      + (s.browser ? ' · ' + s.browser : '') + (s.os ? ' · ' + s.os : '') }];
  for (const c of conns) {
    const o = new Date(c.opened_at).getTime(), e = c.closed_at ? new Date(c.closed_at).getTime() : to;
    bars.push({ start: Math.max(o, from), end: Math.min(e, to), cls: 'c-bar' + (c.app ? '' : ' hub'), hue: c.app ? appHue(c.app.id) : undefined,
      title: (c.app ? appName(c.app) : 'hub') + ': opened ' + fmtTime(c.opened_at) + ', ' + (c.closed_at ? closeText(c.close_reason) + ' ' + fmtTime(c.closed_at) : 'still open') });
  }
  return bars;
}
function connsBySession(tl) {
  const m = new Map();
  for (const c of tl.connections) {
    const k = c.session === null ? 'u:' + c.user.toLowerCase() + '@' + c.host : c.session;
    if (!m.has(k)) m.set(k, []);
    m.get(k).push(c);
  }
  return m;
}

// ---- incident -----------------------------------------------------------------

page.loaders.incident = async () => {
  const at = page.at || new Date().toISOString();
  const t = new Date(at).getTime();
  const from = t - ms(page.before), to = t + ms(page.after);
  $('#before').value = page.before;
  $('#after').value = page.after;
  const [who, apps, tl] = await Promise.all([
    api('/api/v1/sessions', sessionParams(at)),
    api('/api/v1/apps', { at, host: page.host }),
    api('/api/v1/timeline', { from: new Date(from).toISOString(), to: new Date(to).toISOString(), host: page.host, user: page.user, app: page.app }),
  ]);
  learnApps(apps.apps);
  let appRows = apps.apps;
  if (page.app) appRows = appRows.filter((a) => appMatches(a, page.app));
  if (page.user) appRows = appRows.filter((a) => a.users.some((u) => u.toLowerCase() === page.user.toLowerCase()));
  const inWindow = (iso) => iso && new Date(iso).getTime() >= from && new Date(iso).getTime() <= to;
  const changes = incidentChanges(tl, inWindow);
  views.incident = { who: who.sessions, apps: appRows, changes };

  $('#incident-title').textContent = (page.at ? 'At ' : 'Now, ') + new Date(at).toLocaleString() + ': '
    + who.sessions.length + ' sessions, ' + who.users + ' users, ' + appRows.length + ' apps open';
  hostCards($('#incident-hosts'), countHosts(who.sessions), null);
  tableRows('#incident-apps', appRows, (a) => row([
    selfLink(appName(a), { app: a.id, view: 'incident' }, { title: a.id, 'data-app': a.id }), a.stream || '', a.connections, a.users.length]), 'No app open.');
  tableRows('#incident-who', who.sessions, (s) => {
    const apps = el('span');
    appSpans(apps, s.apps);
    return row([userLink(s.user), s.host, since(s.started_at), apps]);
  }, 'Nobody was in.');
  $('#incident-who-caption').textContent = 'Who was in: ' + who.sessions.length;

  // Lanes: the sessions that, or whose app connections, opened or closed in the window.
  const by = connsBySession(tl);
  const lanes = [];
  for (const s of tl.sessions) {
    const conns = by.get(s.id) || [];
    const times = [s.started_at, s.ended_at, ...conns.flatMap((c) => [c.opened_at, c.closed_at])].filter(inWindow);
    if (times.length === 0) continue;
    const label = el('span');
    label.append(userLink(s.user), el('span', ' ' + s.host, { class: 'muted' }));
    lanes.push({ first: Math.min(...times.map((x) => new Date(x).getTime())), label, bars: sessionBars(s, conns, from, to) });
  }
  lanes.sort((a, b) => a.first - b.first);
  drawTimeline($('#incident-timeline'), from, to, lanes, t, tl.truncated ? 'The window holds more than the API gives at once; narrow it or filter.' : '');

  tableRows('#changes', changes, (c) => row([clock(new Date(c.time)), userLink(c.user), c.host, c.what, c.app, c.howText]), 'Nothing opened or closed in this window.');
  $('#changes-caption').textContent = 'Changes from ' + clock(new Date(from)) + ' to ' + clock(new Date(to)) + ': ' + changes.length;
};

function incidentChanges(tl, inWindow) {
  const out = [];
  for (const s of tl.sessions) {
    if (inWindow(s.started_at)) out.push({ time: s.started_at, user: s.user, host: s.host, what: 'signed in', app: '', how: s.reconciled ? 'reconciled' : '', howText: s.reconciled ? 'found by the proxy API' : '' });
    if (inWindow(s.ended_at)) out.push({ time: s.ended_at, user: s.user, host: s.host, what: 'session ended', app: '', how: s.end_reason, howText: endText(s.end_reason) });
  }
  for (const c of tl.connections) {
    if (inWindow(c.opened_at)) out.push({ time: c.opened_at, user: c.user, host: c.host, what: c.app ? 'opened app' : 'opened the hub', app: appName(c.app), app_id: c.app ? c.app.id : '', how: '', howText: '' });
    if (inWindow(c.closed_at)) out.push({ time: c.closed_at, user: c.user, host: c.host, what: c.app ? 'closed app' : 'closed the hub', app: appName(c.app), app_id: c.app ? c.app.id : '', how: c.close_reason, howText: closeText(c.close_reason) });
  }
  return out.sort((a, b) => (a.time < b.time ? -1 : a.time > b.time ? 1 : 0));
}

page.csv['incident-apps'] = () => appsCsv(views.incident ? views.incident.apps : []);
page.csv['incident-who'] = () => sessionsCsv(views.incident ? views.incident.who : []);
page.csv.changes = () => [['time', 'user', 'host', 'what', 'app', 'app_id', 'how'],
  ...(views.incident ? views.incident.changes : []).map((c) => [c.time, c.user, c.host, c.what, c.app, c.app_id || '', c.how || ''])];

$('#before').addEventListener('change', (e) => go({ before: e.target.value }));
$('#after').addEventListener('change', (e) => go({ after: e.target.value }));

// ---- apps ---------------------------------------------------------------------

page.loaders.apps = async () => {
  const a = await api('/api/v1/apps', { at: page.at, host: page.host });
  learnApps(a.apps);
  let apps = a.apps;
  if (page.app) apps = apps.filter((x) => appMatches(x, page.app));
  if (page.user) apps = apps.filter((x) => x.users.some((u) => u.toLowerCase() === page.user.toLowerCase()));
  views.apps = apps;
  $('#apps-title').textContent = (page.at ? 'Apps open at ' + new Date(page.at).toLocaleString() : 'Apps open now') + ': ' + apps.length;
  tableRows('#apps', apps, (x) => {
    const who = el('span');
    x.users.slice(0, 12).forEach((u, i) => { if (i > 0) who.append(', '); who.append(userLink(u)); });
    if (x.users.length > 12) who.append(' and ' + (x.users.length - 12) + ' more');
    return row([selfLink(appName(x), { app: x.id, view: 'now' }, { title: x.id, 'data-app': x.id }), x.stream || '', x.connections, x.users.length, who]);
  }, 'No app is open.');
};
page.csv.apps = () => appsCsv(views.apps || []);

// ---- one user -------------------------------------------------------------------

page.loaders.user = async () => {
  $('#user-input').value = page.user || '';
  $('#days').value = page.days;
  if (!page.user) {
    views.user = null;
    $('#user-title').textContent = 'Choose a user: click a name anywhere, or type DIRECTORY\\userid above.';
    $('#user-timeline').replaceChildren();
    tableRows('#user-sessions', [], null, 'No user chosen.');
    return;
  }
  const to = page.at ? new Date(page.at).getTime() : Date.now();
  const from = to - Number(page.days) * 864e5;
  const tl = await api('/api/v1/timeline', { from: new Date(from).toISOString(), to: new Date(to).toISOString(), user: page.user, host: page.host, app: page.app });
  learnApps(tl.connections.map((c) => c.app));
  const by = connsBySession(tl);
  views.user = { tl, by };
  const users = new Set(tl.sessions.map((s) => s.user));
  $('#user-title').textContent = [...users][0] !== undefined
    ? [...users].join(', ') + ': ' + tl.sessions.length + ' sessions in the last ' + page.days + (page.days === '1' ? ' day' : ' days')
    : page.user + ': no session in the last ' + page.days + (page.days === '1' ? ' day' : ' days');
  const lanes = tl.sessions.map((s) => {
    const label = el('span', s.host + ' ', { title: s.host });
    label.append(el('span', since(s.started_at), { class: 'muted' }));
    return { label, bars: sessionBars(s, by.get(s.id) || [], from, to) };
  });
  drawTimeline($('#user-timeline'), from, to, lanes, page.at ? to : null, '');
  tableRows('#user-sessions', [...tl.sessions].reverse(), (s) => {
    const apps = distinctApps(by.get(s.id) || []);
    const end = s.ended_at ? new Date(s.ended_at).getTime() : Date.now();
    return row([s.host, since(s.started_at), s.ended_at ? since(s.ended_at) : '', duration(end - new Date(s.started_at).getTime()),
      endText(s.end_reason), apps.map(appName).join(', '), s.browser || '', s.os || '']);
  }, 'No session in this period.');
  $('#user-caption').textContent = 'Sessions, newest first: ' + tl.sessions.length;
};
function distinctApps(conns) {
  const m = new Map();
  for (const c of conns) if (c.app && !m.has(c.app.id)) m.set(c.app.id, c.app);
  return [...m.values()];
}
page.csv['user-sessions'] = () => [['user', 'host', 'started_at', 'ended_at', 'end_reason', 'apps', 'app_ids', 'browser', 'os', 'virtual_proxy'],
  ...(views.user ? [...views.user.tl.sessions].reverse() : []).map((s) => {
    const apps = distinctApps(views.user.by.get(s.id) || []);
    return [s.user, s.host, s.started_at, s.ended_at || '', s.end_reason || '', apps.map(appName).join(', '), apps.map((a) => a.id).join(' '), s.browser || '', s.os || '', s.virtual_proxy || ''];
  })];

$('#user-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const u = $('#user-input').value.trim();
  go({ view: 'user', user: u || null, days: $('#days').value });
});
$('#days').addEventListener('change', (e) => { if (page.view === 'user') go({ days: e.target.value }); });

// ---- peak hours -----------------------------------------------------------------

page.loaders.peaks = async () => {
  const now = new Date();
  const hour = new Date(now); hour.setMinutes(0, 0, 0);
  const from = new Date(hour.getTime() - 28 * 864e5);
  const midnight = new Date(now.getFullYear(), now.getMonth(), now.getDate());
  const [p, day, limits] = await Promise.all([
    api('/api/v1/peaks', { from: from.toISOString(), to: now.toISOString(), step: '1h', host: page.host }),
    api('/api/v1/concurrency', { from: midnight.toISOString(), to: now.toISOString(), step: '5m', host: page.host, app: page.app }),
    api('/api/v1/limits', { at: page.at }),
  ]);
  // Cells by the browser's weekday and hour: the highest peak of the four
  // weeks, the mean of the hourly peaks, and when the highest was.
  const cells = WEEKDAYS.map(() => Array.from({ length: 24 }, () => ({ max: 0, sum: 0, n: 0, when: null })));
  for (const b of p.buckets) {
    const d = new Date(b.t);
    const c = cells[(d.getDay() + 6) % 7][d.getHours()];
    c.sum += b.sessions; c.n += 1;
    // Buckets come oldest first: of equal peaks, the latest is kept.
    if (c.when === null || b.sessions >= c.max) { c.max = b.sessions; c.when = b.t; }
  }
  views.peaks = cells;
  const top = Math.max(1, ...cells.flat().map((c) => c.max));
  const table = el('table', null, { class: 'heat', id: 'heatmap-table' });
  const head = el('tr');
  head.append(el('th', '', { scope: 'col' }));
  for (let h = 0; h < 24; h++) head.append(el('th', pad(h), { scope: 'col', title: pad(h) + ':00–' + pad((h + 1) % 24) + ':00' }));
  const thead = el('thead'); thead.append(head);
  const tbody = el('tbody');
  cells.forEach((hours, wd) => {
    const tr = el('tr', null, { 'data-weekday': WEEKDAYS[wd] });
    tr.append(el('th', WEEKDAYS[wd], { scope: 'row' }));
    hours.forEach((c, h) => {
      const td = el('td', null, { 'data-hour': String(h), 'data-peak': String(c.max) });
      td.style.setProperty('--heat', (c.max / top).toFixed(3));
      if (c.max / top > 0.55) td.classList.add('hot');
      const title = WEEKDAYS[wd] + ' ' + pad(h) + ':00–' + pad((h + 1) % 24) + ':00: peak ' + c.max + ' sessions'
        + (c.when && c.max > 0 ? ' (' + new Date(c.when).toLocaleDateString() + ')' : '') + ', mean ' + (c.n ? (c.sum / c.n).toFixed(1) : '0');
      if (c.max > 0 && c.when) {
        // Opens the incident view over the busiest such hour.
        const mid = new Date(new Date(c.when).getTime() + 30 * 6e4).toISOString();
        td.append(selfLink(String(c.max), { view: 'incident', at: mid, before: '30m', after: '30m' }, { title }));
      } else {
        // Empty rather than a wall of zeros: the busy hours stand out.
        td.title = title;
      }
      tr.append(td);
    });
    tbody.append(tr);
  });
  table.append(thead, tbody);
  $('#heatmap').replaceChildren(table);
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || 'local time';
  $('#heatmap-note').textContent = 'Each cell: the most sessions at once in that hour on that weekday over the last 4 weeks ('
    + zone + '); darker is busier, the busiest ' + (top > 1 || cells.flat().some((c) => c.max) ? top : 0) + '. Click a cell to open that hour in the incident view.';
  drawCurve($('#day-chart'), day);
  $('#day-peak').textContent = peakText(day);
  views.limits = limits;
  $('#limits-caption').textContent = 'Users at or over ' + limits.per_user_limit + ' sessions (sessions.per_user_limit)' + (page.at ? ' at ' + new Date(page.at).toLocaleString() : ' now');
  tableRows('#limits', limits.users, (u) => row([userLink(u.user), u.sessions, u.hosts.join(', ')]), 'Nobody is at the limit.');
};
page.csv.heatmap = () => [['weekday', 'hour', 'peak_sessions', 'mean_peak', 'peak_on'],
  ...(views.peaks || []).flatMap((hours, wd) => hours.map((c, h) => [WEEKDAYS[wd], h, c.max, c.n ? (c.sum / c.n).toFixed(2) : '', c.when || '']))];
page.csv.limits = () => [['user', 'sessions', 'hosts'],
  ...((views.limits && views.limits.users) || []).map((u) => [u.user, u.sessions, u.hosts.join(' ')])];
