// What the page checks (check.mjs, views.mjs) share: Debian's Chromium, a
// watch on each page for script errors and for requests that leave whosin,
// and the verdict as the exit code that tests/page.rs and page_views.rs read.
import { chromium } from 'playwright-core';

export const TIMEOUT = 20000;

export function launch(extraArgs = []) {
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', ...extraArgs],
  });
}

// Collects `page`'s script errors and its requests to anything but `base`
// into `seen` (blob: URLs are the page's own downloads).
export function watch(page, base, seen) {
  page.on('pageerror', (e) => seen.errors.push(String(e)));
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith(base) && !u.startsWith('blob:')) seen.external.push(u);
  });
}

// Runs `checks`, then fails on what the watched pages collected, closes the
// browser and exits 0 (every check passed) or 1 (what differed is printed).
export async function verdict(browser, name, seen, checks) {
  let failed = false;
  try {
    await checks();
    if (seen.errors.length) throw new Error('script errors: ' + seen.errors.join('; '));
    if (seen.external.length) throw new Error('requests outside whosin: ' + seen.external.join(', '));
    console.log(`${name} checks passed`);
  } catch (e) {
    failed = true;
    console.error(String(e && e.stack || e));
  } finally {
    await browser.close();
  }
  process.exit(failed ? 1 : 0);
}
