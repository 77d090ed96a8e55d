// Drives the page's incident, app, user and peak-hour views in a real
// headless Chromium for tests/page_views.rs, over HTTPS: Chromium trusts the
// test certificate by its public key (--ignore-certificate-errors-spki-list
// accepts only that key, for any other certificate it still fails).
//
//   node views.mjs '{"url":..., "cert": PEM, "token":..., "at": ISO, "at_ms": N, "who_at": [...], ...}'
//
// Exits 0 when every check passed, else prints what differed and exits 1.
import { TIMEOUT, launch, verdict, watch } from './harness.mjs';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const want = JSON.parse(process.argv[2]);
const spki = crypto.createHash('sha256')
  .update(new crypto.X509Certificate(want.cert).publicKey.export({ type: 'spki', format: 'der' }))
  .digest('base64');

const sorted = (a) => JSON.stringify([...a].sort());
const ch_how = (changes) => changes.find((c) => c[3] === 'closed the hub')[5];
function check(cond, what) { if (!cond) throw new Error(what); }

async function texts(page, selector) {
  return page.$$eval(selector, (els) => els.map((e) => e.textContent.trim()));
}
async function waitTexts(page, selector, expected, what) {
  try {
    await page.waitForFunction(([sel, exp]) => JSON.stringify([...document.querySelectorAll(sel)].map((e) => e.textContent.trim()).sort()) === exp,
      [selector, sorted(expected)], { timeout: TIMEOUT });
  } catch {
    throw new Error(`${what}: ${selector} shows ${sorted(await texts(page, selector))}, expected ${sorted(expected)}`);
  }
}
async function currentView(page, view) {
  await page.waitForSelector(`nav.views a[data-view=${view}][aria-current=page]`, { timeout: TIMEOUT });
  await page.waitForSelector(`#view-${view}:not([hidden])`, { timeout: TIMEOUT });
}
async function csv(page, name) {
  const [download] = await Promise.all([page.waitForEvent('download', { timeout: TIMEOUT }), page.click(`#view-${await page.evaluate(() => page.view)} button[data-csv=${name}]`)]);
  const file = path.join(want.downloads, download.suggestedFilename());
  await download.saveAs(file);
  check(download.suggestedFilename().startsWith('whosin-' + name), `the ${name} CSV is named ${download.suggestedFilename()}`);
  return fs.readFileSync(file, 'utf8').trimEnd().split('\r\n').map((l) => l.split(','));
}

const browser = await launch([`--ignore-certificate-errors-spki-list=${spki}`]);
const seen = { errors: [], external: [] };
await verdict(browser, 'view', seen, async () => {
  // waitForFunction compiles its predicate in the page, which the page's
  // Content-Security-Policy forbids: the checks run without it, and the
  // end of this script opens the views again under it.
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, timezoneId: 'Europe/Stockholm', acceptDownloads: true, bypassCSP: true });
  const page = await context.newPage();
  watch(page, want.url, seen);

  // The instant as Unix milliseconds (a Grafana data link), no view named:
  // who was in then, and a link to what opened and closed around it.
  await page.goto(want.url + '?at=' + want.at_ms);
  check(page.url().startsWith('https://'), 'not over HTTPS');
  await page.waitForSelector('#token-dialog[open]', { timeout: TIMEOUT });
  await page.fill('#token', want.token);
  await page.press('#token', 'Enter');
  await currentView(page, 'now');
  await waitTexts(page, '#who tbody tr td:first-child', want.who_at, 'who was in, from ?at=');
  await page.click('#to-incident');
  await currentView(page, 'incident');
  check(new URL(page.url()).searchParams.get('view') === 'incident', `the incident link: ${page.url()}`);
  // What the dashboards' data links open.
  await page.goto(want.url + '?view=incident&at=' + want.at_ms);
  await currentView(page, 'incident');

  // Who was in at the instant, the apps open then, per node.
  await waitTexts(page, '#incident-who tbody tr td:first-child', want.who_at, 'who was in at the instant');
  await waitTexts(page, '#incident-apps tbody tr td:first-child', want.apps_at.map((a) => a[0]), 'apps at the instant');
  const nodes = await page.$$eval('#incident-hosts .host', (hs) => Object.fromEntries(hs.map((h) => [h.dataset.host, Number(h.querySelector('[data-count=sessions]').textContent)])));
  check(JSON.stringify(nodes) === JSON.stringify({ 'sense-node1': 1, 'sense-node2': 2 }), `node cards at the instant: ${JSON.stringify(nodes)}`);
  // The timeline: a lane for each session that changed in the window, oldest change first, and the instant marked.
  const lanes = await texts(page, '#incident-timeline .tl-row:not(.tl-head) .tl-label a');
  check(JSON.stringify(lanes) === JSON.stringify(want.lanes), `timeline lanes ${JSON.stringify(lanes)}, expected ${JSON.stringify(want.lanes)}`);
  check(await page.$$eval('#incident-timeline .tl-marker', (m) => m.length) === want.lanes.length, 'the instant is not marked on every lane');
  check(await page.$$eval('#incident-timeline .c-bar:not(.hub)', (b) => b.map((x) => x.title).some((t) => t.startsWith('Sales dashboard: opened'))), 'no bar for anna\'s Sales connection');
  // Every change in the window, in order, at the browser's local time.
  const changes = await page.$$eval('#changes tbody tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  const expected = await page.evaluate((rows) => rows.map(([t, u, what, app]) => {
    const d = new Date(t); const p = (n) => String(n).padStart(2, '0');
    return [p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds()), u, what, app];
  }), want.changes);
  const got = changes.map((c) => [c[0], c[1], c[3], c[4]]);
  check(JSON.stringify(got) === JSON.stringify(expected), `changes ${JSON.stringify(got)}, expected ${JSON.stringify(expected)}`);
  check(changes.find((c) => c[3] === 'session ended')[5] === 'signed out', 'how anna\'s session ended');
  check(ch_how(changes) === 'its session ended', 'how anna\'s hub tab closed');

  // CSV of who was in, and of the changes (exact times, app ids).
  const who = await csv(page, 'incident-who');
  check(who[0].join(',') === 'user,host,started_at,apps,app_ids,connections,browser,os', `CSV header ${who[0]}`);
  check(sorted(who.slice(1).map((r) => r[0])) === sorted(want.who_at), `CSV rows ${JSON.stringify(who)}`);
  const ch = await csv(page, 'changes');
  check(ch.length === want.changes.length + 1 && ch[1][0] === want.changes[0][0], `changes CSV ${JSON.stringify(ch.slice(0, 2))}`);
  await page.screenshot({ path: want.shots.incident, fullPage: true });

  // The keyboard: to the apps view, at the same instant.
  await page.focus('#nav-apps');
  await page.keyboard.press('Enter');
  await currentView(page, 'apps');
  await waitTexts(page, '#apps tbody tr td:first-child', want.apps_at.map((a) => a[0]), 'the apps view at the instant');
  const conns = await page.$$eval('#apps tbody tr', (trs) => trs.map((tr) => [tr.children[0].textContent, Number(tr.children[2].textContent)]));
  check(conns.every(([name, n]) => want.apps_at.some((a) => a[0] === name && a[2] === n)), `app connections ${JSON.stringify(conns)}`);
  // One app filters everything: the who-is-in table at the instant shows only its user.
  await page.click('#apps a[data-app="' + want.apps_at[0][1] + '"]');
  await currentView(page, 'now');
  check(new URL(page.url()).searchParams.get('app') === want.apps_at[0][1], `the app is not in the URL: ${page.url()}`);
  await waitTexts(page, '#who tbody tr td:first-child', ['LAB\\anna'], 'who was in the app');
  await page.waitForSelector('#chips .chip[data-filter=app]', { timeout: TIMEOUT });
  check((await page.textContent('#chips .chip[data-filter=app]')).includes(want.apps_at[0][0]), 'the app chip does not name the app');
  // Every header of the table fits its column on a laptop screen.
  const cut = await page.$$eval('#who th', (ths) => ths.filter((th) => th.querySelector('button').getBoundingClientRect().right > th.getBoundingClientRect().right - 2).map((th) => th.textContent));
  check(cut.length === 0, `headers cut off: ${cut}`);

  // A user: their sessions and apps, here only those with the app filter.
  await page.click('#who tbody a.user-link');
  await currentView(page, 'user');
  check(new URL(page.url()).searchParams.get('user') === 'LAB\\anna', `user link: ${page.url()}`);
  await page.waitForFunction(() => document.querySelectorAll('#user-sessions tbody tr:not(.none)').length === 1, null, { timeout: TIMEOUT });
  // Clearing the app filter shows all of them up to the instant, newest first.
  await page.click('#chips .chip[data-filter=app] button');
  await page.waitForFunction(() => document.querySelectorAll('#user-sessions tbody tr:not(.none)').length === 2, null, { timeout: TIMEOUT });
  const how = await page.$$eval('#user-sessions tbody tr', (trs) => trs.map((tr) => [tr.children[0].textContent, tr.children[4].textContent, tr.children[5].textContent]));
  check(JSON.stringify(how) === JSON.stringify([['sense-node1', 'signed out', 'Sales dashboard'], ['sense-node2', 'signed out', '']]), `anna's sessions ${JSON.stringify(how)}`);
  check(await page.$$eval('#user-timeline .tl-row:not(.tl-head)', (r) => r.length) === 2, 'anna\'s timeline lanes');
  const us = await csv(page, 'user-sessions');
  check(us.length === 3 && us[1][4] === 'stopped' && us[1][6] === want.apps_at[0][1], `user CSV ${JSON.stringify(us)}`);
  // Back goes back to the view before.
  await page.goBack();
  await currentView(page, 'user');
  await page.goBack();
  await currentView(page, 'now');

  // A deep link to a user, without an instant: up to now.
  await page.goto(want.url + '?view=user&user=' + encodeURIComponent('LAB\\anna') + '&days=7');
  await currentView(page, 'user');
  await page.waitForFunction(() => document.querySelectorAll('#user-sessions tbody tr:not(.none)').length === 3, null, { timeout: TIMEOUT });
  const latest = await page.$$eval('#user-sessions tbody tr:first-child td', (tds) => tds.map((td) => td.textContent));
  check(latest[0] === 'sense-node2' && latest[4] === 'expired (idle)', `anna's latest session ${JSON.stringify(latest)}`);

  // Peak hours: a week ago six were in at once, in that weekday's hour here (Stockholm).
  await page.goto(want.url + '?view=peaks');
  await currentView(page, 'peaks');
  await page.waitForSelector('#heatmap-table td[data-peak]', { timeout: TIMEOUT });
  const cell = await page.evaluate((iso) => {
    const d = new Date(iso);
    const wd = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'][(d.getDay() + 6) % 7];
    return { wd, hour: d.getHours(), peak: document.querySelector(`#heatmap-table tr[data-weekday=${wd}] td[data-hour="${d.getHours()}"]`).dataset.peak };
  }, want.peak_hour);
  check(Number(cell.peak) === want.peak, `heatmap ${cell.wd} ${cell.hour}:00 shows ${cell.peak}, expected ${want.peak}`);
  const top = await page.$$eval('#heatmap-table td[data-peak]', (tds) => Math.max(...tds.map((t) => Number(t.dataset.peak))));
  check(top === want.peak, `the busiest cell is ${top}`);
  await waitTexts(page, '#limits tbody tr td:first-child', [want.limit_user], 'users at the session limit');
  check((await page.textContent('#day-peak')).startsWith('Peak '), 'the day curve has no peak');
  const heat = await csv(page, 'heatmap');
  check(heat.some((r) => r[0] === cell.wd && Number(r[1]) === cell.hour && Number(r[2]) === want.peak), 'the heatmap CSV lacks the peak');
  check(heat.length === 7 * 24 + 1, `heatmap CSV has ${heat.length} lines`);
  await page.screenshot({ path: want.shots.peaks, fullPage: true });
  // A cell opens that hour in the incident view: the six were in.
  await page.click(`#heatmap-table tr[data-weekday=${cell.wd}] td[data-hour="${cell.hour}"] a`);
  await currentView(page, 'incident');
  await page.waitForFunction((n) => document.querySelectorAll('#incident-who tbody tr:not(.none)').length === n, want.peak, { timeout: TIMEOUT });

  // A long table: the first 200 rows, more on demand, and all of them in the CSV.
  await page.goto(want.url + '?view=incident&before=3h&at=' + want.bulk_at);
  await currentView(page, 'incident');
  await page.waitForSelector('#changes tbody tr.more button', { timeout: TIMEOUT });
  const drawn = () => page.$$eval('#changes tbody tr:not(.more)', (trs) => trs.length);
  check(await drawn() === 200, `the changes table drew ${await drawn()} rows at first`);
  check((await page.textContent('#changes tbody tr.more')).includes(`${want.bulk_changes - 200} not shown`), 'the more row says how many are left');
  await page.focus('#changes tbody tr.more button');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelectorAll('#changes tbody tr:not(.more)').length === 400, null, { timeout: TIMEOUT });
  const long = await csv(page, 'changes');
  check(long.length === want.bulk_changes + 1, `the changes CSV has ${long.length - 1} rows, expected ${want.bulk_changes}`);

  // Under the page's Content-Security-Policy: every view draws, a CSV
  // downloads, and nothing is refused (a refusal is logged, not thrown).
  const strict = await browser.newContext({ viewport: { width: 1280, height: 860 }, acceptDownloads: true });
  const sp = await strict.newPage();
  const refused = [];
  sp.on('console', (m) => { if (/Content.Security.Policy/i.test(m.text())) refused.push(m.text()); });
  watch(sp, want.url, seen);
  await sp.goto(want.url + '?view=peaks');
  await sp.waitForSelector('#token-dialog[open]', { timeout: TIMEOUT });
  await sp.fill('#token', want.token);
  await sp.press('#token', 'Enter');
  await sp.waitForSelector('#heatmap-table td a', { timeout: TIMEOUT });
  await sp.click('#nav-incident');
  await sp.waitForSelector('#view-incident:not([hidden]) #incident-who tbody tr', { timeout: TIMEOUT });
  await sp.goto(want.url + '?view=incident&at=' + want.at_ms);
  await sp.waitForSelector('#incident-timeline .tl-row:not(.tl-head) .bar', { timeout: TIMEOUT });
  const [dl] = await Promise.all([sp.waitForEvent('download', { timeout: TIMEOUT }), sp.click('button[data-csv=changes]')]);
  check(fs.readFileSync(await dl.path(), 'utf8').startsWith('time,user,host,what'), 'the CSV under the policy');
  check(refused.length === 0, 'refused by the Content-Security-Policy: ' + refused.join('; '));
  await strict.close();
});
