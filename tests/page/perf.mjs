// Times the page with many open sessions, for scripts/perf-page (not a test):
//   node perf.mjs URL UDP_ADDR N
// Each figure is the median of 5 runs, from the action to the next frame
// after the DOM changed (so layout and paint are included).
import { chromium } from 'playwright-core';
import dgram from 'node:dgram';

const [url, udp, nText] = process.argv.slice(2);
const n = Number(nText);
const [udpHost, udpPort] = udp.split(/:(?=\d+$)/);
const send = (line) => new Promise((resolve, reject) => {
  const s = dgram.createSocket('udp4');
  s.send(Buffer.from(line), Number(udpPort), udpHost, (e) => { s.close(); e ? reject(e) : resolve(); });
});
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] });
const page = await browser.newPage({ viewport: { width: 1366, height: 768 }, bypassCSP: true });
const rows = () => page.evaluate(() => document.querySelectorAll('#who tbody tr[data-user]').length);
const results = [];
async function time(label, runs, action, done) {
  const xs = [];
  for (let i = 0; i < runs; i++) {
    const t0 = Date.now();
    await action(i);
    await page.waitForFunction(done, i, { timeout: 60000, polling: 'raf' });
    await page.evaluate(() => new Promise(requestAnimationFrame));
    xs.push(Date.now() - t0);
  }
  results.push([label, median(xs), Math.max(...xs)]);
}

await time('open the page: the table', 5, () => page.goto(url), (_) => document.querySelectorAll('#who tbody tr').length > 0 && document.querySelector('#status').textContent === 'live');
const shown = await rows();
await time('type in the filter (one keystroke)', 5, (i) => page.fill('#filter', 'user00' + i), (i) => [...document.querySelectorAll('#who tbody tr[data-user]')].every((tr) => tr.dataset.user.includes('user00' + i)));
await page.fill('#filter', '');
await time('sort by user (click a header)', 5, () => page.click('#who th[data-key=user] button'), () => true);
await time('a new login appears live', 5, (i) => send(`/qseow-proxy-session/;sense-node1;Start session;LAB;late${i};AppAccess;/hub/;Start session for user 'LAB\\late${i}'`),
  (i) => !!document.querySelector(`#who tbody tr[data-user="LAB\\\\late${i}"]`));
await time('the incident view (15 min before, 5 after)', 5, () => page.goto(url + '?view=incident'), () => document.querySelectorAll('#incident-who tbody tr').length > 1 && document.querySelectorAll('#changes tbody tr').length > 1);
const lanes = await page.evaluate(() => document.querySelectorAll('#incident-timeline .tl-row').length - 1);
const changes = await page.evaluate(() => document.querySelectorAll('#changes tbody tr').length);
await time('the apps view', 5, () => page.goto(url + '?view=apps'), () => document.querySelectorAll('#apps tbody tr').length > 1);
await time('a user\'s 7 days', 5, () => page.goto(url + '?view=user&user=LAB%5Cuser000001'), () => document.querySelectorAll('#user-sessions tbody tr:not(.none)').length === 1);
await time('the peak hours (4 weeks)', 5, () => page.goto(url + '?view=peaks'), () => document.querySelectorAll('#heatmap-table td a').length > 0);
// Scrolling the full table: frames that took longer than 50 ms.
await page.goto(url);
await page.waitForFunction(() => document.querySelectorAll('#who tbody tr').length > 0);
const long = await page.evaluate(async () => {
  let slow = 0, last = performance.now(), frames = 0;
  for (let y = 0; y < document.body.scrollHeight; y += 600) {
    window.scrollTo(0, y);
    await new Promise(requestAnimationFrame);
    const t = performance.now();
    if (t - last > 50) slow++;
    last = t; frames++;
  }
  return { slow, frames };
});
await browser.close();

console.log(`${n} sessions, ${shown} rows drawn at first; the incident view drew ${lanes} lanes and ${changes} changes`);
for (const [label, med, max] of results) console.log(`${label.padEnd(45)} median ${String(med).padStart(5)} ms   max ${String(max).padStart(5)} ms`);
console.log(`scrolling the whole table: ${long.slow} of ${long.frames} frames over 50 ms`);
