// dashboard.test.mjs — the dashboard in a real browser (headless Chromium
// driven by playwright-core) against a running `esim-mdm demo
// --keep-running` (tests/dashboard/run.sh starts it): log-in, every page,
// a campaign created from the form (warnings shown first), watched to
// "verified", paused and resumed; a failed device's diagnosis; a read-only
// key that sees but cannot act; the session cookie's flags and the
// security headers. Screenshots (1280x800) of each page go to $DASH_SHOTS.
//
// env: DASH_URL (http://127.0.0.1:PORT), DASH_ADMIN_KEY, DASH_READ_KEY
// (optional: a read-only key), DASH_SHOTS (a directory), CHROMIUM.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const url = process.env.DASH_URL;
const adminKey = process.env.DASH_ADMIN_KEY;
const readKey = process.env.DASH_READ_KEY || '';
const shots = process.env.DASH_SHOTS;
assert.ok(url && adminKey && shots, 'DASH_URL, DASH_ADMIN_KEY and DASH_SHOTS are required');
mkdirSync(shots, { recursive: true });

const profile = mkdtempSync(join(tmpdir(), 'esim-dash-chromium-'));
// A fresh profile (--user-data-dir) for every run.
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1280, height: 800 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let failed = false;
const step = (what) => console.log(`dashboard test: ${what}`);

// A page with no session: the profile's cookies are cleared first.
async function newPage() {
  await context.clearCookies();
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
  page.on('pageerror', (e) => problems.push(String(e)));
  return { page, problems };
}

async function login(page, key) {
  await page.goto(`${url}/dashboard/login`);
  await page.fill('#key', key);
  await Promise.all([page.waitForURL(`${url}/dashboard/`), page.click('button[type=submit]')]);
  assert.ok(!page.url().includes(key), 'the key never appears in a URL');
}

const shot = (page, name) => page.screenshot({ path: join(shots, `${name}.png`) });

try {
  // ---- log-in, headers, cookie --------------------------------------------------------------
  const { page, problems } = await newPage();
  step('log-in page and security headers');
  const r = await page.goto(`${url}/`);
  assert.equal(new URL(page.url()).pathname, '/dashboard/login', 'not logged in: / leads to the log-in form');
  const headers = r.headers();
  assert.match(headers['content-security-policy'], /script-src 'self'/);
  assert.doesNotMatch(headers['content-security-policy'], /unsafe-inline/);
  assert.match(headers['content-security-policy'], /frame-ancestors 'none'/);
  assert.equal(headers['x-frame-options'], 'DENY');
  await shot(page, 'login');

  await page.fill('#key', 'not-a-key-of-this-service');
  await page.click('button[type=submit]');
  await page.waitForSelector('.error');
  assert.match(await page.textContent('.error'), /not an API key/);

  step('log in as admin');
  await login(page, adminKey);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === 'esim_session');
  assert.ok(session, 'a session cookie');
  assert.equal(session.httpOnly, true);
  assert.equal(session.secure, true);
  assert.equal(session.sameSite, 'Strict');
  assert.ok(session.expires > Date.now() / 1000 && session.expires < Date.now() / 1000 + 9 * 3600, 'the cookie expires');
  // Without the CSRF token an action is refused, even with the cookie.
  const forged = await page.evaluate(async () => (await fetch('/v1/campaigns/x/pause', { method: 'POST' })).status);
  assert.equal(forged, 401, 'an action without the CSRF token is refused');
  problems.length = 0; // the two 401s above were asked for

  // ---- fleet ------------------------------------------------------------------------------------
  step('fleet page');
  await page.goto(`${url}/dashboard/#/fleet`);
  await page.waitForSelector('#fleet-cards .card');
  await page.waitForSelector('#devices tr a');
  const rows = await page.locator('#devices tr').count();
  assert.ok(rows >= 20, `the fleet lists the devices (${rows})`);
  const firstUdid = (await page.locator('#devices tr a').first().textContent()).trim();
  await shot(page, 'fleet');
  await page.fill('#search', firstUdid.slice(-8).toLowerCase());
  await page.click('form.toolbar button[type=submit]');
  await page.waitForFunction(() => document.querySelectorAll('#devices tr a').length === 1);
  assert.equal((await page.locator('#devices tr a').first().textContent()).trim(), firstUdid);

  // ---- campaigns and the demo's campaign --------------------------------------------------------
  step('campaigns page');
  await page.goto(`${url}/dashboard/#/campaigns`);
  await page.waitForSelector('#campaigns tr[data-id]');
  await shot(page, 'campaigns');
  const demoId = await page.locator('#campaigns tr[data-id]').first().getAttribute('data-id');

  // ---- create a campaign from the form -----------------------------------------------------------
  step('new campaign: warnings first, then create');
  await page.goto(`${url}/dashboard/#/new`);
  await page.waitForSelector('#new-campaign');
  await page.fill('#f-name', 'browser test: verify the fleet');
  await page.uncheck('#f-step_profile');
  await page.uncheck('#f-step_refresh');
  await page.fill('#f-pushes_per_second', '2');
  assert.equal(await page.isDisabled('#create'), true, 'nothing can be sent before the check');
  const before = (await page.evaluate(async () => (await (await fetch('/v1/campaigns')).json()).campaigns.length));
  await page.click('#check');
  await page.waitForSelector('#preview[data-checked="1"]');
  assert.match(await page.textContent('#preview'), /20 devices/);
  const after = (await page.evaluate(async () => (await (await fetch('/v1/campaigns')).json()).campaigns.length));
  assert.equal(after, before, 'checking the warnings creates nothing');
  await shot(page, 'new-campaign');
  await page.click('#create');
  await page.waitForURL(/#\/campaign\//);
  const newId = decodeURIComponent(page.url().split('#/campaign/')[1]);

  step('pause and resume, then watch it reach verified');
  await page.waitForSelector('#campaign-state[data-state="running"]');
  await page.click('#pause');
  await page.waitForSelector('#campaign-state[data-state="paused"]');
  await page.click('#resume');
  await page.waitForSelector('#campaign-state[data-state="running"], #campaign-state[data-state="finished"]');
  // 19 of the 20 devices have an eSIM (seed 4 makes one without); one of
  // them answers "busy" once and is retried a minute later: the others
  // are verified by then.
  await page.waitForFunction(() => Number(document.querySelector('#campaign-cards')?.dataset.verified) >= 18, null, { timeout: 60000 });
  const counts = await page.evaluate(async (id) => (await (await fetch(`/v1/campaigns/${id}?limit=0`)).json()).counts, newId);
  assert.ok(counts.verified >= 18, `the campaign verified the devices (${JSON.stringify(counts)})`);
  await page.waitForSelector('#chart svg rect.s-verified');
  await shot(page, 'campaign');

  // ---- a failed device's diagnosis -------------------------------------------------------------------
  step('a failed device and its diagnosis');
  await page.goto(`${url}/dashboard/#/campaign/${encodeURIComponent(demoId)}?state=failed`);
  await page.waitForSelector('#campaign-devices tr[data-state="failed"] a');
  await page.click('#campaign-devices tr[data-state="failed"] a');
  await page.waitForSelector('#conclusion');
  const kind = await page.getAttribute('#conclusion', 'data-kind');
  assert.ok(!['verified', 'done', 'in_progress'].includes(kind), `a failed device is diagnosed as such (${kind})`);
  assert.match(await page.textContent('#conclusion'), /Next:/);
  await page.waitForSelector('#commands tr[data-state="error"] .chain li');
  await shot(page, 'device-failed');

  step('a verified device with its eSIM subscriptions');
  await page.goto(`${url}/dashboard/#/device/${encodeURIComponent(firstUdid)}`);
  await page.waitForSelector('#subscriptions table');
  await page.waitForSelector('#conclusion');
  await shot(page, 'device');
  assert.deepEqual(problems, [], 'no errors in the browser console');
  await page.close();

  // ---- a read-only key -------------------------------------------------------------------------------
  if (readKey) {
    step('read-only key: sees, cannot act');
    const ro = await newPage();
    await login(ro.page, readKey);
    await ro.page.goto(`${url}/dashboard/#/campaign/${encodeURIComponent(demoId)}`);
    await ro.page.waitForSelector('#campaign-state[data-state]');
    await ro.page.waitForSelector('#actions .muted');
    assert.equal(await ro.page.locator('#actions button').count(), 0, 'no action buttons for a read-only key');
    assert.equal(await ro.page.locator('a[data-nav="new"]').isVisible(), false, 'no "New campaign" for a read-only key');
    const status = await ro.page.evaluate(async (id) => {
      const s = await (await fetch('/dashboard/session')).json();
      const r = await fetch(`/v1/campaigns/${id}/pause`, { method: 'POST', headers: { 'X-CSRF-Token': s.csrf } });
      return r.status;
    }, newId);
    assert.equal(status, 403, 'the server refuses an action by a read-only key');
    await shot(ro.page, 'campaign-read-only');
    await ro.page.close();
  } else {
    step('no read-only key given: that part is skipped');
  }
  step('all good');
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
