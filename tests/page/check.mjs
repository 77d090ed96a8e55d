// Drives the live page in a real headless Chromium for tests/page.rs, which
// starts whosin, sends the first traffic and passes what the page must show:
//
//   node check.mjs '{"url":..., "udp":"127.0.0.1:PORT", "token":..., "now":[[user,host],...],
//                    "past_at": ISO, "past":[[user,host],...], "screenshot": PATH}'
//
// Exits 0 when every check passed, else prints what differed and exits 1.
import { TIMEOUT, launch, verdict, watch } from './harness.mjs';
import dgram from 'node:dgram';

const want = JSON.parse(process.argv[2]);
const [udpHost, udpPort] = want.udp.split(/:(?=\d+$)/);

function send(line) {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    s.send(Buffer.from(line), Number(udpPort), udpHost, (e) => { s.close(); e ? reject(e) : resolve(); });
  });
}

const rows = (page) => page.$$eval('#who tbody tr', (trs) => trs.map((tr) => [tr.dataset.user, tr.dataset.host]));
const key = (pairs) => JSON.stringify([...pairs].map((p) => p.join('@')).sort());

async function rowsBecome(page, pairs, what) {
  const expected = key(pairs);
  try {
    await page.waitForFunction((exp) => {
      const got = [...document.querySelectorAll('#who tbody tr')].map((tr) => tr.dataset.user + '@' + tr.dataset.host).sort();
      return JSON.stringify(got) === exp;
    }, expected, { timeout: TIMEOUT });
  } catch {
    throw new Error(`${what}: the table shows ${key(await rows(page))}, expected ${expected}`);
  }
}

// The browser's local time, as a datetime-local input takes it.
function localInput(iso) {
  const d = new Date(iso);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

const browser = await launch();
const seen = { errors: [], external: [] };
await verdict(browser, 'page', seen, async () => {
  // waitForFunction compiles its predicate in the page, which the page's
  // Content-Security-Policy forbids; views.mjs checks the page under it.
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 }, bypassCSP: true });
  watch(page, want.url, seen);
  await page.goto(want.url);

  // The token is asked for once, then kept for the session.
  if (want.token) {
    await page.waitForSelector('#token-dialog[open]', { timeout: TIMEOUT });
    await page.fill('#token', 'wrong');
    await page.press('#token', 'Enter');
    await page.waitForFunction(() => document.querySelector('#token-error').textContent.includes('refused'), null, { timeout: TIMEOUT });
    await page.fill('#token', want.token);
    await page.press('#token', 'Enter');
  }

  // Who is in, per host; the blacklisted account never shows.
  await rowsBecome(page, want.now, 'at first');
  // Apps by the name the Qlik repository gives, the id on hover.
  if (want.app) {
    const app = await page.$eval('#who tbody tr[data-user="LAB\\\\anna"] [data-app]',
      (s) => ({ text: s.textContent, title: s.getAttribute('title') }));
    if (app.text !== want.app.name || !app.title.startsWith(want.app.id)) {
      throw new Error(`anna's app shows ${JSON.stringify(app)}, expected ${JSON.stringify(want.app)}`);
    }
    await page.waitForFunction((name) => [...document.querySelectorAll('#ticker li')]
      .some((li) => li.textContent.includes('opened ' + name)), want.app.name, { timeout: TIMEOUT });
  }
  // The ticker begins with the latest events, from before the page opened.
  await page.waitForFunction(() => [...document.querySelectorAll('#ticker li')].some((li) => li.textContent.includes('LAB\\carl signed in') || li.textContent.includes('CORP\\carl signed in')), null, { timeout: TIMEOUT });
  await page.waitForFunction(() => document.querySelector('#status').textContent === 'live', null, { timeout: TIMEOUT });
  const cards = await page.$$eval('#hosts .host', (hs) => Object.fromEntries(hs.map((h) => [h.dataset.host,
    Number(h.querySelector('[data-count=sessions]').textContent)])));
  const perHost = {};
  for (const [, h] of want.now) perHost[h] = (perHost[h] || 0) + 1;
  if (JSON.stringify(Object.entries(cards).sort()) !== JSON.stringify(Object.entries(perHost).sort())) {
    throw new Error(`host cards show ${JSON.stringify(cards)}, expected ${JSON.stringify(perHost)}`);
  }

  // A new login appears without a reload; so does its event in the ticker.
  await page.evaluate(() => { window.__notReloaded = true; });
  await send(`/qseow-proxy-session/;sense-node2;Start session;LAB;erin;AppAccess;/hub/;Start session for user 'LAB\\erin'`);
  await rowsBecome(page, [...want.now, ['LAB\\erin', 'sense-node2']], 'after a new login');
  await page.waitForFunction(() => [...document.querySelectorAll('#ticker li')].some((li) => li.textContent.includes('LAB\\erin signed in')), null, { timeout: TIMEOUT });
  if (!(await page.evaluate(() => window.__notReloaded === true))) throw new Error('the page reloaded');
  await send(`/qseow-proxy-session/;sense-node1;Start session;INTERNAL;sa_repository;AppAccess;/hub/;Start`);

  // Filter as you type.
  await page.fill('#filter', 'carl');
  await rowsBecome(page, want.now.filter(([u]) => u.toLowerCase().includes('carl')), 'filtered on carl');
  await page.fill('#filter', '');

  // Sorting by user, with the keyboard.
  await page.focus('#who th[data-key=user] button');
  await page.keyboard.press('Enter');
  const sorted = (await rows(page)).map(([u]) => u);
  const expectSorted = [...sorted].sort((a, b) => a.toLowerCase().localeCompare(b.toLowerCase()));
  if (JSON.stringify(sorted) !== JSON.stringify(expectSorted)) throw new Error(`sorted by user: ${sorted}`);

  // The screenshot for the README, while everyone is in.
  if (want.screenshot) await page.screenshot({ path: want.screenshot });

  // Who was in at an earlier instant.
  await page.fill('#at', localInput(want.past_at));
  await page.click('#show-at');
  await rowsBecome(page, want.past, 'at ' + want.past_at);
  const banner = await page.textContent('#banner');
  if (!banner.includes('Showing who was in at')) throw new Error(`banner: ${banner}`);

  // And back to now, with the login that came meanwhile; still no service account.
  await page.click('#live');
  await rowsBecome(page, [...want.now, ['LAB\\erin', 'sense-node2']], 'back to live');
  const all = await page.content();
  if (all.includes('sa_repository') || all.includes('INTERNAL\\')) throw new Error('a blacklisted account is shown');
});
