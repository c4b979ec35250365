// The keyledger web console in a real browser: Debian's Chromium, headless, driven
// by playwright-core (no browser download). Started by `cargo test --test console`
// with a running server; run by hand with
//
//   KEYLEDGER_URL=http://127.0.0.1:8080 KEYLEDGER_TOKEN=$(keyledger token ...) \
//   KEYLEDGER_OTHER_TOKEN=$(keyledger token --tenant evil-corp --subject mallory) node e2e.mjs
//
// KEYLEDGER_OTHER_TOKEN plays a link sent by someone else: a token for another
// tenant, which the console must not switch to without asking.
//
// Every step checks what the page shows and then what the API says. Screenshots
// of each screen go to KEYLEDGER_SCREENSHOTS (default: docs/screenshots).

import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const BASE = (process.env.KEYLEDGER_URL ?? '').replace(/\/$/, '');
const TOKEN = process.env.KEYLEDGER_TOKEN ?? '';
const OTHER_TOKEN = process.env.KEYLEDGER_OTHER_TOKEN ?? '';
const CHROMIUM = process.env.KEYLEDGER_CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = process.env.KEYLEDGER_SCREENSHOTS ?? path.resolve(here, '../../docs/screenshots');
assert.ok(BASE && TOKEN && OTHER_TOKEN, 'set KEYLEDGER_URL, KEYLEDGER_TOKEN and KEYLEDGER_OTHER_TOKEN');

// axe-core (pinned in package.json) checks each screen for accessibility problems.
const AXE_SOURCE = await readFile(path.join(here, 'node_modules/axe-core/axe.min.js'), 'utf8');

const KEY_PATTERN = /^kl_(live|test)_[0-9A-Za-z]{46}$/;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const step = (text) => console.log(`e2e: ${text}`);

// ---------------------------------------------------------------- the API, directly

async function api(method, urlPath, body, { auth = true, token = TOKEN } = {}) {
  const headers = {};
  if (auth) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(`${BASE}${urlPath}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function getKey(id) {
  return api('GET', `/v1/keys/${id}`);
}

async function verifyCode(key) {
  const r = await api('POST', '/v1/keys/verify', { key }, { auth: false });
  assert.equal(r.status, 200);
  return r.body.code;
}

async function createViaApi(body, token = TOKEN) {
  const r = await api('POST', '/v1/keys', body, { token });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body;
}

/** Waits until `check()` is truthy (usage counts are written behind). */
async function eventually(what, check, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

// ---------------------------------------------------------------- seed data

step('seeding keys through the API');
const billing = await createViaApi({
  name: 'billing-service', description: 'Charges customers every night', environment: 'live',
  permissions: ['invoices:read', 'invoices:write'], metadata: { team: 'payments' },
});
const ci = await createViaApi({ name: 'ci-runner', environment: 'test', permissions: ['builds:*'] });
const legacy = await createViaApi({ name: 'legacy-import', permissions: ['orders:read'] });
assert.equal((await api('POST', `/v1/keys/${legacy.id}/deactivate`, { reason: 'replaced by billing-service' })).status, 200);
const sandbox = await createViaApi({
  name: 'partner-sandbox', environment: 'test', permissions: ['orders:read'],
  expires_at: new Date(Date.now() + 1500).toISOString(),
});
const reporting = await createViaApi({ name: 'reporting', description: 'Monthly revenue report', permissions: ['reports:read'] });
// A key in the other tenant: what a switched console would show.
const bait = await createViaApi({ name: 'evil-corp-bait', permissions: ['orders:read'] }, OTHER_TOKEN);
// A key reported leaked: the default policy deactivates it; reactivated, it
// stays marked.
const leaked = await createViaApi({ name: 'pasted-in-a-gist', permissions: ['orders:read'] });
assert.equal((await api('POST', '/v1/leaks/report', { keys: [leaked.key], url: 'https://gist.example/1' }, { auth: false })).status, 202);
await eventually('the leak to be acted on', async () => {
  const k = (await getKey(leaked.id)).body;
  return k.status === 'inactive' && k.leaked_at;
});
assert.equal((await api('POST', `/v1/keys/${leaked.id}/reactivate`, {})).status, 200);
for (let i = 0; i < 3; i++) assert.equal(await verifyCode(billing.key), 'VALID');
assert.equal(await verifyCode(ci.key), 'VALID');
await eventually('usage to be flushed', async () => (await getKey(billing.id)).body.usage_count === 3
  && (await getKey(ci.id)).body.usage_count === 1);
await eventually('the sandbox key to expire', async () => (await getKey(sandbox.id)).body.status === 'expired');

// ---------------------------------------------------------------- the browser

await mkdir(SHOTS, { recursive: true });
const userDataDir = await mkdtemp(path.join(tmpdir(), 'keyledger-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: CHROMIUM,
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
  viewport: { width: 1280, height: 800 },
  deviceScaleFactor: 1,
  locale: 'en-GB',
  timezoneId: 'UTC',
});
context.setDefaultTimeout(10_000);
await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: BASE });

const problems = [];
const requests = [];
function watch(page) {
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    const text = message.text();
    // A refused request is logged by Chromium itself; the page shows it in words.
    if (message.type() === 'error' && !text.startsWith('Failed to load resource')) problems.push(`console: ${text}`);
  });
  page.on('request', (request) => requests.push({ url: request.url(), headers: request.headers() }));
  return page;
}

const page = watch(context.pages()[0] ?? await context.newPage());
const main = page.locator('main');
const ready = (screen) => page.locator(`main[data-ready="${screen}"]`).waitFor();
const shot = async (name, options = {}) => {
  await page.evaluate(() => document.fonts.ready);
  // The last action's notice fades after a few seconds; a screenshot shows the screen.
  await page.evaluate(() => document.querySelector('#toast').classList.remove('visible'));
  await page.screenshot({ path: path.join(SHOTS, name), animations: 'disabled', ...options });
  step(`screenshot ${name}`);
};
const keyRow = (id) => page.locator(`tr[data-key-id="${id}"]`);
const statusOf = async (id) => (await keyRow(id).locator('.badge[class*="badge-status-"]').textContent()).trim();
const pageRowIds = () => page.locator('tbody tr[data-key-id]').evaluateAll((rows) => rows.map((r) => r.dataset.keyId));
/** Waits for focus to satisfy `check` (run in the page); a failure names what has focus. */
async function focusLands(what, check) {
  try {
    await page.waitForFunction(check, undefined, { timeout: 5_000 });
  } catch {
    const at = await page.evaluate(() => document.activeElement?.outerHTML.slice(0, 200));
    assert.fail(`focus never reached ${what}; it is on ${at}`);
  }
}
/** The value (<dd>) of the fact labelled exactly `label` on a key page. */
const factValue = (label) => main.locator('.fact')
  .filter({ has: page.locator('dt').getByText(label, { exact: true }) }).locator('dd');
/** Waits for a row's status badge to read `status`. */
const rowStatus = (id, status) => keyRow(id).locator(`.badge-status-${status}`).waitFor();
/** Opens a row's Actions menu and picks an item. */
async function pick(id, name, item) {
  await keyRow(id).getByRole('button', { name: `Actions for ${name}` }).click();
  await page.getByRole('menuitem', { name: item }).click();
}
const noHorizontalScroll = async (what) => {
  // Measured once the layout settles: rows arrive after the screen is ready,
  // and a resize applies its media queries over a frame or two.
  let seen;
  for (let i = 0; i < 20; i++) {
    seen = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth, width: window.innerWidth,
    }));
    if (seen.scroll <= seen.width) return;
    await sleep(100);
  }
  assert.fail(`${what}: the page is ${seen.scroll}px wide in a ${seen.width}px window`);
};

/**
 * Runs axe-core on the screen as it is now (open dialogs and menus included) and
 * records every violation of impact `serious` or `critical`; the run fails at
 * its end if there is any. The console's Content-Security-Policy forbids inline
 * scripts, so axe is not added as a <script>: `evaluate` runs it through
 * DevTools, which the policy does not govern.
 */
const a11yFindings = [];
const a11yScreens = [];
async function a11y(screen, on = page) {
  // The last action's notice fades out; a half-faded toast is not a screen state.
  await on.evaluate(() => document.querySelector('#toast')?.classList.remove('visible'));
  await on.waitForFunction(() => getComputedStyle(document.querySelector('#toast')).opacity === '0');
  if (!(await on.evaluate(() => typeof window.axe === 'object'))) await on.evaluate(`${AXE_SOURCE}\n;void 0`);
  const { violations } = await on.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  a11yScreens.push(screen);
  for (const v of violations) {
    const serious = v.impact === 'serious' || v.impact === 'critical';
    const where = v.nodes.slice(0, 5).map((n) => `    ${n.target.join(' ')}: ${n.failureSummary?.replace(/\s+/g, ' ')}`).join('\n');
    const text = `${screen}: ${v.impact} ${v.id} (${v.help}), ${v.nodes.length} element(s)\n${where}`;
    if (serious) a11yFindings.push(text);
    console.log(`e2e: axe ${serious ? 'VIOLATION' : 'note'}: ${text}`);
  }
  step(`axe: ${screen}: ${violations.length ? violations.map((v) => `${v.id} (${v.impact})`).join(', ') : 'no violation'}`);
}

const switchDialog = page.locator('#switch-dialog');
const storedToken = () => page.evaluate(() => sessionStorage.getItem('keyledger.token'));
/** Waits for the question of a `#token=` link; checks what it names and where focus is. */
async function linkQuestion(...named) {
  await switchDialog.waitFor({ state: 'visible' });
  const text = await switchDialog.innerText();
  for (const pattern of named) assert.match(text, pattern);
  await focusLands('the safe answer', () => document.activeElement?.id === 'switch-keep');
  return text;
}

let failed = false;
try {
  step('a sign-in link asks first, also when no one is signed in');
  await page.goto(`${BASE}/#token=${TOKEN}`);
  await linkQuestion(/Sign in with the token of this link\?/, /acme/, /alice/, /You are not signed in/);
  await a11y('the question of a sign-in link');
  assert.equal(page.url(), `${BASE}/`, 'the fragment with the token is gone from the address at once');
  assert.equal(await storedToken(), null, 'nothing is signed in before the answer');
  await switchDialog.getByRole('button', { name: 'Cancel' }).click();
  await switchDialog.waitFor({ state: 'hidden' });
  assert.equal(await storedToken(), null, 'Cancel keeps the tab signed out');
  await page.getByLabel('Management token', { exact: true }).waitFor();
  assert.equal(page.url(), `${BASE}/`);
  await a11y('sign-in');

  step('opening the console with the token in the fragment, and saying yes');
  await page.goto(`${BASE}/#token=${TOKEN}`);
  await linkQuestion(/acme/, /alice/);
  await switchDialog.getByRole('button', { name: 'Sign in' }).click();
  await switchDialog.waitFor({ state: 'hidden' });
  await ready('keys');
  assert.equal(page.url(), `${BASE}/#/keys`, 'the fragment with the token is gone from the address');
  assert.equal(await storedToken(), TOKEN);
  const identity = await page.locator('#identity').textContent();
  assert.match(identity, /alice in acme/);

  step('the key list matches the API');
  const listed = (await api('GET', '/v1/keys')).body.keys;
  assert.deepEqual(await pageRowIds(), listed.map((k) => k.id), 'the same keys, newest first');
  const billingRow = keyRow(billing.id);
  assert.equal(await billingRow.locator('a').first().textContent(), 'billing-service');
  assert.equal(await billingRow.locator('[data-label="Prefix"]').innerText(), billing.prefix);
  assert.equal(await billingRow.locator('[data-label="Environment"] .badge').textContent(), 'live');
  assert.equal(await billingRow.locator('[data-label="Uses"] .num').textContent(), '3');
  assert.notEqual((await billingRow.locator('[data-label="Last used"]').innerText()).trim(), 'never');
  assert.equal(await statusOf(billing.id), 'active');
  assert.equal(await statusOf(legacy.id), 'inactive');
  assert.equal(await statusOf(sandbox.id), 'expired');
  assert.equal((await keyRow(reporting.id).locator('[data-label="Last used"]').innerText()).trim(), 'never');
  const marked = await page.locator('tbody tr[data-key-id]:has(.badge-leaked)').evaluateAll(
    (rows) => rows.map((r) => r.dataset.keyId));
  assert.deepEqual(marked, listed.filter((k) => k.leaked_at).map((k) => k.id), 'leaked marks match the API');
  assert.deepEqual(marked, [leaked.id]);
  assert.equal(await keyRow(leaked.id).locator('.badge-leaked').textContent(), 'leaked');
  assert.equal(await statusOf(leaked.id), 'active', 'reactivated, and still marked');
  await page.waitForFunction((n) => document.querySelectorAll('tbody tr[data-key-id] svg.sparkline').length === n, listed.length);
  const keyTable = await page.locator('main .table-wrap').evaluate((w) => ({ content: w.scrollWidth, box: w.clientWidth }));
  assert.ok(keyTable.content <= keyTable.box, `the key list fits its box at 1280 px (${keyTable.content} in ${keyTable.box})`);
  await shot('keys.png');
  await a11y('key list');

  step('filters: status and environment, the same answer as the API');
  await page.getByLabel('Status').selectOption('inactive');
  await page.locator('tbody tr[data-key-id]').first().waitFor();
  await page.waitForFunction(() => document.querySelectorAll('tbody tr[data-key-id]').length === 1);
  assert.deepEqual(await pageRowIds(), (await api('GET', '/v1/keys?status=inactive')).body.keys.map((k) => k.id));
  assert.deepEqual(await pageRowIds(), [legacy.id]);
  assert.match(page.url(), /#\/keys\?status=inactive$/, 'the filter is in the address');
  await page.getByLabel('Status').selectOption('');
  await page.getByLabel('Environment').selectOption('test');
  await page.waitForFunction(() => document.querySelectorAll('tbody tr[data-key-id]').length === 2);
  assert.deepEqual(await pageRowIds(), (await api('GET', '/v1/keys?environment=test')).body.keys.map((k) => k.id));
  await page.getByLabel('Environment').selectOption('');
  await page.waitForFunction((n) => document.querySelectorAll('tbody tr[data-key-id]').length === n, listed.length);

  step('the create dialog: keyboard, Escape, focus');
  const createButton = page.getByRole('button', { name: 'Create key' });
  await createButton.focus();
  await page.keyboard.press('Enter');
  const createDialog = page.locator('#create-dialog');
  await createDialog.waitFor({ state: 'visible' });
  assert.equal(await page.evaluate(() => document.activeElement.id), 'create-name', 'focus starts in the name field');
  await page.keyboard.press('Escape');
  await createDialog.waitFor({ state: 'hidden' });
  assert.equal(await page.evaluate(() => document.activeElement.id), 'create-open', 'focus returns to the button');

  step('an API error is shown in words in the dialog');
  await createButton.click();
  await createDialog.getByLabel('Name', { exact: true }).fill('console-e2e');
  await page.getByLabel('Description (optional)').fill('Made by the browser test; deleted at its end');
  await page.getByLabel('Test').check();
  await page.getByLabel('Permissions (optional)').fill('Bad Permission!');
  await createDialog.getByRole('button', { name: 'Create key' }).click();
  const createError = page.locator('#create-error');
  await createError.waitFor({ state: 'visible' });
  const errorText = await createError.innerText();
  assert.match(errorText, /did not accept/);
  assert.match(errorText, /permissions/);
  assert.match(errorText, /validation_failed, HTTP 422/);
  assert.equal(await page.getByLabel('Permissions (optional)').getAttribute('aria-invalid'), 'true');
  await a11y('create dialog, with an error');
  assert.equal((await api('GET', '/v1/keys')).body.keys.length, listed.length, 'nothing was created');

  step('create: the raw key is shown once');
  await page.getByLabel('Permissions (optional)').fill('orders:read, orders:write');
  await createDialog.getByRole('button', { name: 'Create key' }).click();
  const secretDialog = page.locator('#secret-dialog');
  await secretDialog.waitFor({ state: 'visible' });
  assert.match(await secretDialog.innerText(), /you will not see it again/);
  const raw = await page.locator('#secret-value').inputValue();
  assert.match(raw, KEY_PATTERN);
  assert.ok(raw.startsWith('kl_test_'), 'a test key');
  await shot('create-key.png');
  await a11y('the raw key, shown once');

  step('copy puts the raw key on the clipboard');
  await secretDialog.getByRole('button', { name: 'Copy' }).click();
  await page.locator('#secret-copied', { hasText: 'Copied' }).waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), raw);

  step('the API has the key the page created');
  const created = (await api('GET', '/v1/keys')).body.keys.find((k) => k.name === 'console-e2e');
  assert.ok(created, 'the key is listed by the API');
  const id = created.id;
  assert.equal(created.status, 'active');
  assert.equal(created.environment, 'test');
  assert.equal(created.description, 'Made by the browser test; deleted at its end');
  assert.deepEqual(created.permissions, ['orders:read', 'orders:write']);
  assert.ok(raw.startsWith(created.prefix), 'the display prefix is the start of the raw key');
  assert.equal(await verifyCode(raw), 'VALID');

  await secretDialog.getByRole('button', { name: 'Done' }).click();
  await secretDialog.waitFor({ state: 'hidden' });
  await rowStatus(id, 'active');
  assert.equal((await pageRowIds())[0], id, 'the new key is first');
  assert.equal(await page.locator('#secret-value').inputValue(), '', 'the dialog forgot the key');
  assert.ok(!(await page.content()).includes(raw), 'the raw key is nowhere on the page');
  assert.ok(!(await page.evaluate((k) => JSON.stringify({ ...sessionStorage, ...localStorage }).includes(k), raw)));

  step('deactivate, with a reason, after a confirmation');
  await pick(id, 'console-e2e', 'Deactivate');
  const confirmDialog = page.locator('#confirm-dialog');
  await confirmDialog.waitFor({ state: 'visible' });
  assert.match(await confirmDialog.locator('h2').innerText(), /Deactivate “console-e2e”\?/);
  await a11y('confirmation dialog');
  await page.getByLabel('Reason').fill('checked by the browser test');
  await confirmDialog.getByRole('button', { name: 'Deactivate' }).click();
  await confirmDialog.waitFor({ state: 'hidden' });
  await rowStatus(id, 'inactive');
  assert.equal((await getKey(id)).body.status, 'inactive');
  assert.equal(await verifyCode(raw), 'DISABLED');

  step('reactivate, by keyboard only');
  await keyRow(id).getByRole('button', { name: 'Actions for console-e2e' }).focus();
  await page.keyboard.press('Enter');
  await page.getByRole('menuitem', { name: 'Reactivate' }).waitFor();
  // The popover's toggle event, which moves focus, comes a task after the menu shows.
  await focusLands('the first menu item', () => document.activeElement?.textContent === 'Reactivate');
  await a11y('actions menu');
  await page.keyboard.press('Enter');
  await confirmDialog.waitFor({ state: 'visible' });
  await page.keyboard.press('Enter');
  await confirmDialog.waitFor({ state: 'hidden' });
  await rowStatus(id, 'active');
  assert.equal((await getKey(id)).body.status, 'active');
  assert.equal(await verifyCode(raw), 'VALID');
  // Focus stays on the key whose row was rebuilt.
  await page.waitForFunction(() => document.activeElement?.getAttribute('aria-label') === 'Actions for console-e2e');

  step('the key page shows the key and its full history');
  await keyRow(id).getByRole('link', { name: 'console-e2e' }).click();
  await ready('key');
  await page.locator('main h1', { hasText: 'console-e2e' }).waitFor();
  assert.equal(await main.locator('.fact', { hasText: 'Prefix' }).locator('dd').innerText(), created.prefix);
  await eventually('the key page to count the verifications', async () => {
    await page.reload();
    await ready('key');
    return (await main.locator('.fact', { hasText: 'Uses' }).locator('dd').innerText()) === '2';
  });
  const apiHistory = (await api('GET', `/v1/keys/${id}/events`)).body.events;
  const pageTypes = await main.locator('.event-type').allInnerTexts();
  assert.deepEqual(pageTypes, apiHistory.map((e) => e.type), 'the page shows every event of the API');
  const lifecycle = pageTypes.filter((t) => t !== 'KeyUsageRecorded');
  assert.deepEqual(lifecycle, ['KeyCreated', 'KeyDeactivated', 'KeyReactivated']);
  assert.match(await main.innerText(), /Deactivated: “checked by the browser test”/);
  await shot('key-detail.png', { fullPage: true });
  await a11y('key page');
  assert.equal(await factValue('Rate limits').innerText(), 'none');
  assert.equal(await factValue('Credits remaining').innerText(), 'no limit');
  assert.equal(await main.locator('#credits-form').count(), 0, 'no balance to change on a key without credits');

  step('a leaked key page says when it was reported, and its history shows the report');
  await page.evaluate((keyId) => { window.location.hash = `#/keys/${encodeURIComponent(keyId)}`; }, leaked.id);
  await page.locator('main h1', { hasText: 'pasted-in-a-gist' }).waitFor();
  await ready('key');
  const leakNotice = main.locator('.notice-leaked');
  assert.equal(await leakNotice.count(), 1);
  assert.equal(await leakNotice.locator('time').getAttribute('datetime'), (await getKey(leaked.id)).body.leaked_at);
  assert.match(await leakNotice.innerText(), /Reported leaked/);
  const leakedTypes = await main.locator('.event-type').allInnerTexts();
  assert.deepEqual(leakedTypes, ['KeyCreated', 'KeyLeakReported', 'KeyDeactivated', 'KeyReactivated']);
  assert.match(await main.locator('tr', { hasText: 'KeyLeakReported' }).innerText(),
    /Reported leaked by public at https:\/\/gist\.example\/1/);
  await shot('key-leaked.png');
  await a11y('leaked key page');

  step('create a key with an owner, a rate limit and credits through the console');
  await page.getByRole('link', { name: 'Keys', exact: true }).click();
  await ready('keys');
  await createButton.click();
  await createDialog.waitFor({ state: 'visible' });
  await createDialog.getByLabel('Name', { exact: true }).fill('metered-e2e');
  await createDialog.locator('summary', { hasText: 'Owner, rate limits and credits' }).click();
  await createDialog.getByLabel('Owner (optional)').fill('cus_e2e');
  await createDialog.getByRole('button', { name: 'Add a rate limit' }).click();
  await focusLands('the new rate limit', () => document.activeElement?.labels?.[0]?.textContent === 'Rate limit 1: Name');
  const limitField = (part) => createDialog.getByLabel(`Rate limit 1: ${part}`, { exact: true });
  await limitField('Name').fill('Not A Name');
  await limitField('Limit').fill('100');
  await limitField('Per').fill('1');
  await limitField('Unit').selectOption({ label: 'seconds' });
  await createDialog.getByLabel('Limit the key with credits').check();
  await createDialog.getByLabel('Credits remaining').fill('1000');
  await createDialog.getByLabel('Refill', { exact: true }).selectOption('daily');
  await createDialog.getByLabel('Refill amount').fill('500');
  await createDialog.getByRole('button', { name: 'Create key' }).click();
  await createError.waitFor({ state: 'visible' });
  assert.match(await createError.innerText(), /ratelimits\[0\]\.name[\s\S]*validation_failed, HTTP 422/);
  assert.equal(await limitField('Name').getAttribute('aria-invalid'), 'true', 'the server\'s error points at the field');
  await focusLands('the rate limit name', () => document.activeElement?.labels?.[0]?.textContent === 'Rate limit 1: Name');
  assert.ok(!(await api('GET', '/v1/keys')).body.keys.some((k) => k.name === 'metered-e2e'), 'nothing was created');
  await limitField('Name').fill('requests');
  await createDialog.getByRole('button', { name: 'Create key' }).click();
  await secretDialog.waitFor({ state: 'visible' });
  const meteredRaw = await page.locator('#secret-value').inputValue();
  assert.match(meteredRaw, KEY_PATTERN);
  await secretDialog.getByRole('button', { name: 'Done' }).click();
  await secretDialog.waitFor({ state: 'hidden' });
  const metered = (await api('GET', '/v1/keys')).body.keys.find((k) => k.name === 'metered-e2e');
  assert.ok(metered, 'the API lists the key the console created');
  assert.equal(metered.owner, 'cus_e2e');
  assert.deepEqual(metered.ratelimits, [{ name: 'requests', limit: 100, window_ms: 1000 }]);
  assert.deepEqual(metered.credits, { remaining: 1000, refill: { amount: 500, interval: 'daily' } });

  step('the key page shows the owner, the rate limit and the credits');
  await keyRow(metered.id).getByRole('link', { name: 'metered-e2e' }).click();
  await ready('key');
  await page.locator('main h1', { hasText: 'metered-e2e' }).waitFor();
  assert.equal(await factValue('Owner').innerText(), 'cus_e2e');
  assert.deepEqual(await main.locator('.ratelimits li').allInnerTexts(), ['requests: 100 per 1 s']);
  assert.equal(await factValue('Credits remaining').innerText(), '1,000');
  assert.equal(await factValue('Refill').innerText(), 'to 500 every day (00:00 UTC)');
  assert.ok(!(await page.content()).includes(meteredRaw), 'the raw key is nowhere on the page');
  assert.equal(await main.locator('.description').count(), 0, 'a key without a description shows none');
  assert.deepEqual(await main.evaluate((m) => [...m.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE)
    .map((n) => n.textContent.trim()).filter(Boolean)), [], 'no stray text (such as "null") on the page');

  step('credits: a refused amount is explained; an increment shows the new balance');
  const creditsForm = main.locator('#credits-form');
  const creditsAmount = creditsForm.getByLabel('Amount', { exact: true });
  assert.equal(await creditsForm.getByLabel('Change', { exact: true }).inputValue(), 'increment');
  await creditsAmount.fill('0');
  await creditsForm.getByRole('button', { name: 'Change credits' }).click();
  const creditsError = creditsForm.locator('.dialog-error');
  await creditsError.waitFor({ state: 'visible' });
  assert.match(await creditsError.innerText(), /validation_failed, HTTP 422/);
  assert.equal(await creditsAmount.getAttribute('aria-invalid'), 'true');
  assert.equal((await getKey(metered.id)).body.credits.remaining, 1000, 'nothing was changed');
  await creditsAmount.fill('250');
  await creditsForm.getByLabel('Reason (optional, kept in the audit log)').fill('top-up by the browser test');
  await creditsForm.getByRole('button', { name: 'Change credits' }).click();
  await factValue('Credits remaining').filter({ hasText: '1,250' }).waitFor();
  assert.equal((await getKey(metered.id)).body.credits.remaining, 1250);
  await focusLands('the amount field again', () => document.activeElement?.id === 'credits-amount');
  assert.match(await main.innerText(), /Credits increased by 250: “top-up by the browser test” \(balance 1,250\)/);
  await creditsForm.getByLabel('Change', { exact: true }).selectOption('decrement');
  await creditsForm.getByLabel('Amount', { exact: true }).fill('50');
  await creditsForm.getByRole('button', { name: 'Change credits' }).click();
  await factValue('Credits remaining').filter({ hasText: '1,200' }).waitFor();
  assert.equal((await getKey(metered.id)).body.credits.remaining, 1200);

  step('edit the rate limit (PATCH): the page and the API agree, the balance stays');
  const creditEvents = async () => (await api('GET', `/v1/keys/${metered.id}/events`)).body.events
    .filter((e) => e.type === 'KeyCreditsChanged').length;
  const creditEventsBefore = await creditEvents();
  const editButton = main.getByRole('button', { name: 'Edit usage limits' });
  await editButton.click();
  const limitsDialog = page.locator('#limits-dialog');
  await limitsDialog.waitFor({ state: 'visible' });
  const editField = (label) => limitsDialog.getByLabel(label, { exact: true });
  assert.equal(await editField('Owner (optional)').inputValue(), 'cus_e2e');
  assert.equal(await editField('Rate limit 1: Name').inputValue(), 'requests');
  assert.equal(await editField('Rate limit 1: Limit').inputValue(), '100');
  assert.equal(await editField('Rate limit 1: Per').inputValue(), '1');
  assert.equal(await editField('Rate limit 1: Unit').inputValue(), '1000');
  assert.ok(await limitsDialog.getByLabel('Limit the key with credits').isChecked());
  assert.equal(await editField('Credits remaining').inputValue(), '1200');
  await editField('Rate limit 1: Limit').fill('20');
  await editField('Rate limit 1: Unit').selectOption({ label: 'minutes' });
  await limitsDialog.getByRole('button', { name: 'Add a rate limit' }).click();
  await editField('Rate limit 2: Name').fill('daily');
  await editField('Rate limit 2: Limit').fill('10000');
  await editField('Rate limit 2: Unit').selectOption({ label: 'days' });
  await limitsDialog.getByRole('button', { name: 'Save limits' }).click();
  await limitsDialog.waitFor({ state: 'hidden' });
  await main.locator('.ratelimits li', { hasText: 'requests: 20 per 1 min' }).waitFor();
  assert.deepEqual(await main.locator('.ratelimits li').allInnerTexts(), ['requests: 20 per 1 min', 'daily: 10,000 per 1 d']);
  const edited = (await getKey(metered.id)).body;
  assert.deepEqual(edited.ratelimits, [
    { name: 'requests', limit: 20, window_ms: 60_000 }, { name: 'daily', limit: 10_000, window_ms: 86_400_000 }]);
  assert.equal(edited.owner, 'cus_e2e');
  assert.equal(edited.credits.remaining, 1200, 'editing the rate limits left the balance alone');
  assert.equal(await creditEvents(), creditEventsBefore, 'and wrote no credit change');
  assert.equal(await factValue('Credits remaining').innerText(), '1,200');
  assert.match(await main.innerText(), /Changed rate limits to requests: 20 per 1 min, daily: 10,000 per 1 d/);
  await shot('key-usage-limits.png', { fullPage: true });
  await a11y('key page with usage limits');

  step('remove a rate limit, by keyboard');
  await editButton.click();
  await limitsDialog.waitFor({ state: 'visible' });
  await limitsDialog.getByRole('button', { name: 'Remove rate limit 2' }).focus();
  await a11y('usage limits dialog');
  await page.keyboard.press('Enter');
  await focusLands('the remaining rate limit', () => document.activeElement?.labels?.[0]?.textContent === 'Rate limit 1: Name');
  assert.equal(await limitsDialog.locator('.ratelimit-row').count(), 1);
  await limitsDialog.getByRole('button', { name: 'Save limits' }).click();
  await limitsDialog.waitFor({ state: 'hidden' });
  await page.waitForFunction(() => document.querySelectorAll('main .ratelimits li').length === 1);
  assert.deepEqual(await main.locator('.ratelimits li').allInnerTexts(), ['requests: 20 per 1 min']);
  assert.deepEqual((await getKey(metered.id)).body.ratelimits, [{ name: 'requests', limit: 20, window_ms: 60_000 }]);

  step('rotate from a key page: the new key is shown once, the old one expires');
  await page.goto(`${BASE}/#/keys/${reporting.id}`);
  await ready('key');
  await main.getByRole('button', { name: 'Rotate' }).click();
  await confirmDialog.waitFor({ state: 'visible' });
  await page.getByLabel('The old key keeps working for').selectOption('0');
  await confirmDialog.getByRole('button', { name: 'Rotate' }).click();
  await secretDialog.waitFor({ state: 'visible' });
  assert.match(await secretDialog.locator('h2').innerText(), /Key rotated/);
  const rotatedRaw = await page.locator('#secret-value').inputValue();
  assert.match(rotatedRaw, KEY_PATTERN);
  await secretDialog.getByRole('button', { name: 'Done' }).click();
  await main.locator('.fact', { hasText: 'Replaced by' }).waitFor();
  const old = (await getKey(reporting.id)).body;
  assert.ok(old.rotated_to, 'the API names the successor');
  assert.equal(await main.locator('.fact', { hasText: 'Replaced by' }).locator('a').innerText(), old.rotated_to);
  assert.equal((await getKey(old.rotated_to)).body.rotated_from, reporting.id);
  assert.equal(await verifyCode(rotatedRaw), 'VALID');
  assert.equal(await verifyCode(reporting.key), 'EXPIRED');
  await eventually('the new key\'s use to be flushed', async () => (await getKey(old.rotated_to)).body.usage_count === 1);

  step('delete, after a confirmation that starts on Cancel');
  await page.getByRole('link', { name: 'Keys', exact: true }).click();
  await ready('keys');
  await rowStatus(id, 'active');
  await pick(id, 'console-e2e', 'Delete');
  await confirmDialog.waitFor({ state: 'visible' });
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Cancel', 'the safe choice has focus');
  assert.match(await confirmDialog.innerText(), /cannot be undone/);
  await confirmDialog.getByRole('button', { name: 'Delete key' }).click();
  await confirmDialog.waitFor({ state: 'hidden' });
  await keyRow(id).waitFor({ state: 'detached' });
  const gone = await getKey(id);
  assert.equal(gone.status, 404);
  assert.equal(gone.body.error.code, 'key_not_found');
  assert.equal(await verifyCode(raw), 'NOT_FOUND');
  assert.ok(!(await api('GET', '/v1/keys')).body.keys.some((k) => k.id === id));

  step('a deleted key keeps its history');
  await page.goto(`${BASE}/#/keys/${id}`);
  await ready('key');
  assert.match(await main.innerText(), /This key was deleted/);
  assert.ok((await main.locator('.event-type').allInnerTexts()).includes('KeyDeleted'));

  step('the audit log, with filters, matches the API');
  await page.getByRole('link', { name: 'Audit log', exact: true }).click();
  await ready('audit');
  // The expiry sweeper appends a KeyExpiryNoticed when the rotated key's grace
  // ends, which can fall between the page's read and ours: read both again
  // until they saw the same log, and fail with the difference if they never do.
  for (let attempt = 1; ; attempt += 1) {
    const all = (await api('GET', '/v1/audit?order=desc&limit=100')).body.events.map((e) => e.type);
    const shown = await main.locator('.event-type').allInnerTexts();
    if (attempt === 5) assert.deepEqual(shown, all, 'newest first');
    if (JSON.stringify(shown) === JSON.stringify(all)) break;
    await sleep(500);
    await page.reload();
    await ready('audit');
  }
  await shot('audit-log.png');
  await a11y('audit log');
  await page.getByLabel('Key ID').fill(id);
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await page.waitForFunction(() => location.hash.includes('key_id='));
  await page.waitForFunction((n) => document.querySelectorAll('main .event-type').length === n,
    (await api('GET', `/v1/audit?key_id=${id}`)).body.events.length);
  const forKey = (await api('GET', `/v1/audit?key_id=${id}&order=desc`)).body.events;
  assert.deepEqual(await main.locator('.event-type').allInnerTexts(), forKey.map((e) => e.type));
  assert.deepEqual(forKey.map((e) => e.type).filter((t) => t !== 'KeyUsageRecorded'),
    ['KeyDeleted', 'KeyReactivated', 'KeyDeactivated', 'KeyCreated']);
  await page.getByLabel('Key ID').fill('');
  await page.getByLabel('Event type').selectOption('KeyDeactivated');
  await page.getByLabel('Order').selectOption('asc');
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await page.waitForFunction(() => location.hash.includes('type=KeyDeactivated'));
  const deactivations = (await api('GET', '/v1/audit?type=KeyDeactivated')).body.events;
  await page.waitForFunction((n) => document.querySelectorAll('main .event-type').length === n, deactivations.length);
  const keyLinks = main.locator('td[data-label="Key"] a');
  assert.deepEqual(await keyLinks.evaluateAll((links) => links.map((a) => a.dataset.keyId)), deactivations.map((e) => e.key_id));
  assert.deepEqual(await keyLinks.allInnerTexts(), ['legacy-import', 'pasted-in-a-gist', 'console-e2e'], 'keys by name, deleted ones too');
  assert.deepEqual(deactivations.map((e) => e.key_id), [legacy.id, leaked.id, id]);
  await page.getByLabel('Actor').fill('nobody');
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await main.getByText('No event matches these filters.').waitFor();
  await a11y('audit log, filtered');

  step('edit a key: the dialog opens by keyboard, Escape closes it, focus returns to Edit');
  const editable = await createViaApi({
    name: 'edit-me', description: 'Before the edit', permissions: ['orders:read'], metadata: { team: 'ops' },
    expires_at: new Date(Date.now() + 30 * 86_400_000).toISOString(),
  });
  await page.goto(`${BASE}/#/keys/${editable.id}`);
  await ready('key');
  const editOpen = main.getByRole('button', { name: 'Edit', exact: true });
  const editDialog = page.locator('#edit-dialog');
  const keyField = (label) => editDialog.getByLabel(label, { exact: label === 'Name' });
  await editOpen.focus();
  await page.keyboard.press('Enter');
  await editDialog.waitFor({ state: 'visible' });
  await focusLands('the name field', () => document.activeElement?.id === 'edit-name');
  assert.equal(await keyField('Name').inputValue(), 'edit-me');
  assert.equal(await keyField('Description').inputValue(), 'Before the edit');
  assert.equal(await keyField('Permissions').inputValue(), 'orders:read');
  // The browser runs in UTC: its local time is the API's.
  assert.equal(await keyField('Expires').inputValue(), editable.expires_at.slice(0, 16));
  assert.deepEqual(JSON.parse(await keyField('Metadata').inputValue()), { team: 'ops' });
  await page.keyboard.press('Escape');
  await editDialog.waitFor({ state: 'hidden' });
  await focusLands('the Edit button', () => document.activeElement?.id === 'edit-key');

  step('edit: an API error is shown in words in the dialog, and nothing changes');
  const eventsOf = async (keyId) => (await api('GET', `/v1/keys/${keyId}/events`)).body.events;
  const editEventsBefore = (await eventsOf(editable.id)).length;
  await editOpen.click();
  await keyField('Name').fill('n'.repeat(101));
  await editDialog.getByRole('button', { name: 'Save changes' }).click();
  const editError = page.locator('#edit-error');
  await editError.waitFor({ state: 'visible' });
  const editErrorText = await editError.innerText();
  assert.match(editErrorText, /did not accept/);
  assert.match(editErrorText, /name/);
  assert.match(editErrorText, /at most 100 characters/);
  assert.match(editErrorText, /validation_failed, HTTP 422/);
  assert.equal(await keyField('Name').getAttribute('aria-invalid'), 'true', "the server's error points at the field");
  await focusLands('the name field', () => document.activeElement?.id === 'edit-name');
  await keyField('Name').fill('edited-e2e');
  await keyField('Metadata').fill('{"team": ');
  await editDialog.getByRole('button', { name: 'Save changes' }).click();
  await editError.filter({ hasText: 'metadata: not JSON' }).waitFor();
  assert.equal(await keyField('Metadata').getAttribute('aria-invalid'), 'true');
  assert.equal(await keyField('Name').getAttribute('aria-invalid'), null);
  assert.match(await editError.innerText(), /cannot be sent as it is/, 'the console\'s own check, not the server\'s');
  assert.equal((await getKey(editable.id)).body.name, 'edit-me', 'nothing was changed');
  assert.equal((await eventsOf(editable.id)).length, editEventsBefore, 'and nothing recorded');
  await editDialog.getByRole('button', { name: 'Cancel' }).click();
  await editDialog.waitFor({ state: 'hidden' });
  assert.equal((await eventsOf(editable.id)).length, editEventsBefore, 'Cancel sends nothing');

  step('edit every field (PATCH): the page and GET /v1/keys/{id} agree');
  await editOpen.click();
  await editDialog.waitFor({ state: 'visible' });
  assert.equal(await keyField('Name').inputValue(), 'edit-me', 'a cancelled edit is forgotten');
  assert.equal(await page.locator('#edit-error').isVisible(), false);
  const newExpiry = new Date(Date.now() + 10 * 86_400_000);
  newExpiry.setUTCSeconds(0, 0);
  await keyField('Name').fill('edited-e2e');
  await keyField('Description').fill('After the edit');
  await keyField('Permissions').fill('orders:read, orders:write');
  await keyField('Expires').fill(newExpiry.toISOString().slice(0, 16));
  await keyField('Metadata').fill('{"team": "platform", "tier": 2}');
  await a11y('edit dialog');
  await shot('key-edit.png');
  await editDialog.getByRole('button', { name: 'Save changes' }).click();
  await editDialog.waitFor({ state: 'hidden' });
  await page.locator('main h1', { hasText: 'edited-e2e' }).waitFor();
  await focusLands('the Edit button', () => document.activeElement?.id === 'edit-key');
  const afterEdit = (await getKey(editable.id)).body;
  assert.equal(afterEdit.name, 'edited-e2e');
  assert.equal(afterEdit.description, 'After the edit');
  assert.deepEqual(afterEdit.permissions, ['orders:read', 'orders:write']);
  assert.equal(Date.parse(afterEdit.expires_at), newExpiry.getTime());
  assert.deepEqual(afterEdit.metadata, { team: 'platform', tier: 2 });
  assert.equal(await main.locator('.description').innerText(), afterEdit.description);
  assert.deepEqual(await factValue('Permissions').locator('li').allInnerTexts(), afterEdit.permissions);
  assert.equal(Date.parse(await factValue('Expires').locator('time').getAttribute('datetime')), newExpiry.getTime());
  assert.deepEqual(JSON.parse(await factValue('Metadata').innerText()), afterEdit.metadata);
  assert.deepEqual(await main.locator('.event-type').allInnerTexts(), (await eventsOf(editable.id)).map((e) => e.type),
    'the history shows the edit as the API records it');

  step('edit: emptied fields clear the description, the expiry and the metadata (null)');
  await editOpen.click();
  await editDialog.waitFor({ state: 'visible' });
  await keyField('Description').fill('');
  await editDialog.getByRole('button', { name: 'No expiry' }).click();
  assert.equal(await keyField('Expires').inputValue(), '');
  await focusLands('the expiry field', () => document.activeElement?.id === 'edit-expires');
  await keyField('Metadata').fill('');
  await editDialog.getByRole('button', { name: 'Save changes' }).click();
  await editDialog.waitFor({ state: 'hidden' });
  await factValue('Expires').filter({ hasText: 'never' }).waitFor();
  const cleared = (await getKey(editable.id)).body;
  assert.equal(cleared.description, null);
  assert.equal(cleared.expires_at, null);
  assert.equal(cleared.metadata, null);
  assert.equal(cleared.name, 'edited-e2e', 'what was not touched stays');
  assert.deepEqual(cleared.permissions, ['orders:read', 'orders:write']);
  assert.equal(await main.locator('.description').count(), 0);
  assert.equal(await factValue('Metadata').count(), 0);
  await editOpen.click();
  await editDialog.getByRole('button', { name: 'Save changes' }).click();
  await editDialog.waitFor({ state: 'hidden' });
  await page.locator('#toast', { hasText: 'Nothing was changed.' }).waitFor();
  assert.deepEqual(await main.locator('.event-type').allInnerTexts(), (await eventsOf(editable.id)).map((e) => e.type),
    'saving without a change records nothing');

  step('hygiene: four lists, each what GET /v1/keys answers for its filters');
  const soon = await createViaApi({ name: 'expiring-soon', expires_at: new Date(Date.now() + 3 * 86_400_000).toISOString() });
  const unused = await createViaApi({ name: 'never-used-e2e', description: 'Made to be deleted from the hygiene page' });
  /** Every id of a filtered key list, following its cursors. */
  const listIds = async (query) => {
    const ids = [];
    let cursor = null;
    do {
      const r = await api('GET', `/v1/keys?limit=100&${query}${cursor ? `&cursor=${cursor}` : ''}`);
      assert.equal(r.status, 200, `GET /v1/keys?${query}: ${JSON.stringify(r.body)}`);
      ids.push(...r.body.keys.map((k) => k.id));
      cursor = r.body.next_cursor;
    } while (cursor);
    return ids;
  };
  const hygieneList = (section) => main.locator(`section[data-section="${section}"]`);
  const hygieneIds = (section) => hygieneList(section).locator('tbody tr[data-key-id]')
    .evaluateAll((rows) => rows.map((r) => r.dataset.keyId));
  const hygieneQueries = {
    idle: 'status=active&unused_for=30d',
    'never-used': 'status=active&never_used=true',
    expiring: 'status=active&expires_within=14d',
    'no-expiry': 'status=active&no_expiry=true',
  };
  const checkHygiene = async () => {
    const found = {};
    for (const [section, query] of Object.entries(hygieneQueries)) {
      found[section] = await listIds(query);
      assert.deepEqual(await hygieneIds(section), found[section], `${section}: the page lists what GET /v1/keys?${query} answers`);
      assert.equal((await hygieneList(section).locator('h2 .count-badge').textContent()).replace(/\D/g, ''), String(found[section].length));
    }
    return found;
  };
  await page.getByRole('link', { name: 'Hygiene', exact: true }).click();
  await ready('hygiene');
  const found = await checkHygiene();
  // Every key here is minutes old: none idle for 30 days.
  assert.deepEqual(found.idle, []);
  assert.equal(await hygieneList('idle').locator('p.empty').innerText(), 'No idle key.');
  assert.ok(found['never-used'].includes(unused.id) && found['never-used'].includes(soon.id));
  assert.ok(!found['never-used'].includes(billing.id), 'billing-service was used');
  assert.ok(found.expiring.includes(soon.id) && !found.expiring.includes(billing.id));
  assert.ok(found['no-expiry'].includes(billing.id) && found['no-expiry'].includes(ci.id) && !found['no-expiry'].includes(soon.id));
  assert.ok(!found['no-expiry'].includes(legacy.id), 'inactive keys are not listed');
  const soonRow = hygieneList('expiring').locator(`tr[data-key-id="${soon.id}"]`);
  assert.equal(Date.parse(await soonRow.locator('[data-label="Expires"] time').getAttribute('datetime')), Date.parse(soon.expires_at));
  assert.equal((await hygieneList('never-used').locator(`tr[data-key-id="${unused.id}"] [data-label="Last used"]`).innerText()).trim(), 'never');
  assert.equal(await soonRow.getByRole('button', { name: 'Rotate expiring-soon' }).count(), 1, 'an expiring key offers a rotation');
  await page.getByLabel('Not used for').selectOption('60');
  await page.waitForFunction(() => location.hash === '#/hygiene?idle=60');
  await hygieneList('idle').getByText('not used for 60 days').waitFor();
  assert.deepEqual(await hygieneIds('idle'), await listIds('status=active&unused_for=60d'));

  step('hygiene: set an expiry on a key without one, through the edit dialog');
  const ciRow = hygieneList('no-expiry').locator(`tr[data-key-id="${ci.id}"]`);
  await ciRow.getByRole('button', { name: 'Set an expiry for ci-runner' }).click();
  await editDialog.waitFor({ state: 'visible' });
  await focusLands('the expiry field', () => document.activeElement?.id === 'edit-expires');
  const ciExpiry = new Date(Date.now() + 60 * 86_400_000);
  ciExpiry.setUTCSeconds(0, 0);
  await keyField('Expires').fill(ciExpiry.toISOString().slice(0, 16));
  await editDialog.getByRole('button', { name: 'Save changes' }).click();
  await editDialog.waitFor({ state: 'hidden' });
  await ciRow.waitFor({ state: 'detached' });
  assert.equal(Date.parse((await getKey(ci.id)).body.expires_at), ciExpiry.getTime());
  await focusLands('the list heading', () => document.activeElement?.id === 'hygiene-no-expiry-title');
  await checkHygiene();

  step('hygiene: delete a key never used, after the usual confirmation');
  const unusedRow = hygieneList('never-used').locator(`tr[data-key-id="${unused.id}"]`);
  await unusedRow.getByRole('button', { name: 'Delete never-used-e2e' }).click();
  await confirmDialog.waitFor({ state: 'visible' });
  assert.match(await confirmDialog.innerText(), /cannot be undone/);
  await confirmDialog.getByRole('button', { name: 'Delete key' }).click();
  await confirmDialog.waitFor({ state: 'hidden' });
  await unusedRow.waitFor({ state: 'detached' });
  assert.equal((await getKey(unused.id)).status, 404);
  await checkHygiene();
  await a11y('hygiene');
  await shot('hygiene.png', { fullPage: true });

  step('usage: a key verified with several outcomes; the chart\'s table matches the API for each range');
  const OUTCOME_IDS = ['valid', 'disabled', 'expired', 'wrong_environment', 'insufficient_permissions',
    'rate_limited', 'usage_exceeded', 'ip_not_allowed'];
  const sums = (buckets) => Object.fromEntries(['total', ...OUTCOME_IDS]
    .map((o) => [o, buckets.reduce((n, b) => n + (b[o] ?? 0), 0)]));
  const used = await createViaApi({ name: 'usage-e2e', permissions: ['orders:read'] });
  const verifyWith = async (body) => (await api('POST', '/v1/keys/verify', body, { auth: false })).body.code;
  for (let i = 0; i < 3; i++) assert.equal(await verifyCode(used.key), 'VALID');
  assert.equal(await verifyWith({ key: used.key, environment: 'test' }), 'WRONG_ENVIRONMENT');
  assert.equal(await verifyWith({ key: used.key, permissions: ['orders:write'] }), 'INSUFFICIENT_PERMISSIONS');
  assert.equal((await api('POST', `/v1/keys/${used.id}/deactivate`, {})).status, 200);
  assert.equal(await verifyCode(used.key), 'DISABLED');
  const usedCounts = { total: 6, valid: 3, disabled: 1, expired: 0, wrong_environment: 1, insufficient_permissions: 1,
    rate_limited: 0, usage_exceeded: 0, ip_not_allowed: 0 };
  await eventually('the verifications to be counted', async () => {
    const r = await api('GET', `/v1/keys/${used.id}/usage?granularity=minute`);
    return r.status === 200 && JSON.stringify(sums(r.body.buckets)) === JSON.stringify(usedCounts);
  }, 20_000);
  /** A chart's table, read from the page: a row per bucket and the totals. */
  const chartTable = (figure) => figure.evaluate((f) => {
    const cells = (row) => Object.fromEntries([...row.querySelectorAll('td')]
      .map((td) => [td.dataset.outcome, Number(td.textContent.replace(/\D/g, ''))]));
    return {
      rows: [...f.querySelectorAll('tbody tr')].map((tr) => ({ start: tr.dataset.start, ...cells(tr) })),
      all: cells(f.querySelector('tfoot tr')),
    };
  });
  const asRows = (buckets) => buckets.map((b) => ({ start: b.start, ...Object.fromEntries(['total', ...OUTCOME_IDS].map((o) => [o, b[o]])) }));
  /** Picks `range` and checks the chart's table against the API's answer for the same span. */
  async function checkChart(box, range, granularity, path) {
    await main.getByLabel('Range', { exact: true }).selectOption(range);
    const figure = page.locator(`#${box} figure.usage-chart[data-granularity="${granularity}"]`);
    await figure.waitFor();
    const since = await figure.getAttribute('data-since');
    const until = await figure.getAttribute('data-until');
    const answer = await api('GET', `${path}?granularity=${granularity}&since=${encodeURIComponent(since)}&until=${encodeURIComponent(until)}`);
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    const table = await chartTable(figure);
    assert.ok(table.rows.length > 0, 'a row per bucket');
    assert.deepEqual(table.rows, asRows(answer.body.buckets), `${granularity}: the table is the API's buckets`);
    assert.deepEqual(table.all, sums(answer.body.buckets), `${granularity}: and its totals`);
    const chart = figure.locator('svg.chart');
    assert.equal(await chart.getAttribute('role'), 'img');
    return { figure, chart, answer: answer.body, label: await chart.getAttribute('aria-label') };
  }
  await page.goto(`${BASE}/#/keys/${used.id}`);
  await ready('key');
  const keyPath = `/v1/keys/${used.id}/usage`;
  for (const [range, granularity] of [['2d', 'hour'], ['30d', 'day'], ['1h', 'minute']]) {
    const { figure, chart, answer, label } = await checkChart('key-usage', range, granularity, keyPath);
    assert.deepEqual(sums(answer.buckets), usedCounts, `${granularity}: every verification is in the range`);
    assert.match(label, /6 verifications: 3 valid, 1 disabled, 1 wrong environment, 1 insufficient permissions\./);
    const legend = await figure.locator('.legend li').evaluateAll((items) => Object.fromEntries(items.map((li) =>
      [li.dataset.outcome, Number(li.querySelector('.num').textContent.replace(/\D/g, ''))])));
    assert.deepEqual(legend, Object.fromEntries(OUTCOME_IDS.map((o) => [o, usedCounts[o]])), 'the legend counts each outcome');
    const drawn = await chart.locator('rect.seg').evaluateAll((rects) => [...new Set(rects.map((r) => r.classList[1].slice(4)))].sort());
    assert.deepEqual(drawn, ['disabled', 'insufficient_permissions', 'valid', 'wrong_environment'], 'a segment per outcome seen');
  }
  assert.match(page.url(), /#\/keys\/key_[0-9a-f]+\?range=1h$/, 'the range is in the address');
  // The history says in words what each flush counted, refusals by outcome.
  const flushed = (await main.locator('tr', { hasText: 'KeyUsageRecorded' }).allInnerTexts()).join('\n');
  assert.match(flushed, /refused: .*disabled 1/, flushed);
  assert.match(flushed, /wrong environment 1/, flushed);
  // Each outcome's colour stands out from the chart's background (3:1 for graphics).
  const ratios = await page.locator('#key-usage .legend .swatch').evaluateAll((swatches) => {
    const lum = (css) => {
      const [r, g, b] = css.match(/\d+(\.\d+)?/g).slice(0, 3).map(Number).map((c) => {
        const v = c / 255;
        return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
      });
      return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const background = lum(getComputedStyle(document.querySelector('#key-usage figure')).backgroundColor);
    return swatches.map((s) => {
      const l = lum(getComputedStyle(s).backgroundColor);
      return [s.parentElement.dataset.outcome, (Math.max(l, background) + 0.05) / (Math.min(l, background) + 0.05)];
    });
  });
  assert.equal(ratios.length, OUTCOME_IDS.length);
  for (const [outcome, ratio] of ratios) assert.ok(ratio >= 3, `${outcome}: contrast ${ratio.toFixed(2)} against the chart`);
  await shot('key-usage.png');
  await main.locator('#key-usage summary', { hasText: 'The numbers, as a table' }).click();
  await a11y('key page with its usage table open');

  step('overview: the tenant\'s totals per outcome and the keys verified most, as the API says');
  await page.getByRole('link', { name: 'Overview', exact: true }).click();
  await ready('overview');
  for (const [range, granularity] of [['30d', 'day'], ['2d', 'hour']]) {
    const { answer } = await checkChart('overview-usage', range, granularity, '/v1/usage');
    const totals = sums(answer.buckets);
    const stats = await main.locator('.stats .stat').evaluateAll((items) => Object.fromEntries(items.map((s) =>
      [s.dataset.outcome, Number(s.querySelector('dd').textContent.replace(/\D/g, ''))])));
    assert.deepEqual(stats, totals, `${granularity}: a total per outcome`);
    assert.ok(totals.valid >= 3 + 3 + 1 && totals.disabled >= 1 && totals.wrong_environment >= 1, JSON.stringify(totals));
    const top = await main.locator('.data-top tbody tr').evaluateAll((rows) => rows.map((r) => ({
      key_id: r.dataset.keyId, name: r.querySelector('th a').textContent,
      total: Number(r.querySelector('[data-label="Verifications"]').textContent.replace(/\D/g, '')),
      valid: Number(r.querySelector('[data-label="Valid"]').textContent.replace(/\D/g, '')),
    })));
    // A deleted key has no name any more.
    assert.deepEqual(top, answer.top_keys.map(({ key_id, name, total, valid }) => ({ key_id, name: name ?? 'deleted key', total, valid })),
      `${granularity}: the top keys are the API's`);
    assert.deepEqual(top.find((k) => k.key_id === used.id), { key_id: used.id, name: 'usage-e2e', total: 6, valid: 3 });
    assert.ok(top.length <= 10);
  }
  assert.match(page.url(), /#\/overview$/, 'the default range leaves the address plain');
  await a11y('overview');
  await shot('overview.png', { fullPage: true });
  await main.locator(`.data-top tr[data-key-id="${used.id}"] a`).click();
  await ready('key');
  await page.locator('main h1', { hasText: 'usage-e2e' }).waitFor();

  step('the key list: a 14-day trend per key, as the API counts it');
  await page.getByRole('link', { name: 'Keys', exact: true }).click();
  await ready('keys');
  const trendRows = await pageRowIds();
  assert.ok(trendRows.length <= 50, 'a short list: every row has its trend');
  await page.waitForFunction((n) => document.querySelectorAll('tbody tr[data-key-id] svg.sparkline').length === n, trendRows.length);
  for (const keyId of trendRows) {
    const spark = keyRow(keyId).locator('svg.sparkline');
    const since = await spark.getAttribute('data-since');
    const until = await spark.getAttribute('data-until');
    const answer = (await api('GET', `/v1/keys/${keyId}/usage?granularity=day&since=${encodeURIComponent(since)}&until=${encodeURIComponent(until)}`)).body;
    assert.equal(await spark.getAttribute('data-totals'), answer.buckets.map((b) => b.total).join(','), `the trend of ${keyId}`);
    assert.equal(await spark.getAttribute('role'), 'img');
  }
  assert.match(await keyRow(used.id).locator('svg.sparkline').getAttribute('aria-label'), /^6 verifications in the last 14 days, most on /);
  assert.equal(await keyRow(soon.id).locator('svg.sparkline').getAttribute('aria-label'), 'No verification in the last 14 days');
  await a11y('key list with trends');

  step('400 px wide: cards, nothing wider than the window');
  await page.setViewportSize({ width: 400, height: 860 });
  await page.goto(`${BASE}/#/keys`);
  await ready('keys');
  await noHorizontalScroll('key list');
  const card = await keyRow(billing.id).boundingBox();
  assert.ok(card.width <= 400 - 2 * 14, `a row is a card inside the window (${card.width}px)`);
  await shot('keys-narrow.png');
  await a11y('key list, 400 px');
  await page.getByRole('button', { name: 'Create key' }).click();
  const dialogBox = await createDialog.boundingBox();
  assert.ok(dialogBox.x >= 0 && dialogBox.x + dialogBox.width <= 400, 'the dialog fits');
  await a11y('create dialog, 400 px');
  await page.keyboard.press('Escape');
  await page.goto(`${BASE}/#/keys/${billing.id}`);
  await ready('key');
  await noHorizontalScroll('key page');
  await page.goto(`${BASE}/#/keys/${metered.id}`);
  await ready('key');
  await noHorizontalScroll('key page with usage limits');
  await a11y('key page, 400 px');
  await main.getByRole('button', { name: 'Edit usage limits' }).click();
  await page.locator('#limits-dialog').waitFor({ state: 'visible' });
  const limitsBox = await page.locator('#limits-dialog').boundingBox();
  assert.ok(limitsBox.x >= 0 && limitsBox.x + limitsBox.width <= 400, 'the limits dialog fits');
  await page.keyboard.press('Escape');
  await page.goto(`${BASE}/#/audit`);
  await ready('audit');
  await noHorizontalScroll('audit log');
  await a11y('audit log, 400 px');
  await page.goto(`${BASE}/#/keys/${editable.id}`);
  await ready('key');
  await main.getByRole('button', { name: 'Edit', exact: true }).click();
  await editDialog.waitFor({ state: 'visible' });
  const editBox = await editDialog.boundingBox();
  assert.ok(editBox.x >= 0 && editBox.x + editBox.width <= 400, 'the edit dialog fits');
  await a11y('edit dialog, 400 px');
  await page.keyboard.press('Escape');
  await page.goto(`${BASE}/#/keys/${used.id}?range=1h`);
  await ready('key');
  await main.locator('#key-usage svg.chart').waitFor();
  await noHorizontalScroll('key page with its usage chart');
  const chartBox = await main.locator('#key-usage svg.chart').boundingBox();
  assert.ok(chartBox.x >= 0 && chartBox.x + chartBox.width <= 400, `the chart is drawn inside the window (${chartBox.width}px)`);
  await a11y('key usage, 400 px');
  await page.goto(`${BASE}/#/overview`);
  await ready('overview');
  await main.locator('#overview-usage svg.chart').waitFor();
  await noHorizontalScroll('overview');
  await a11y('overview, 400 px');
  await shot('overview-narrow.png', { fullPage: true });
  await page.goto(`${BASE}/#/hygiene`);
  await ready('hygiene');
  await noHorizontalScroll('hygiene');
  await a11y('hygiene, 400 px');
  await page.setViewportSize({ width: 1280, height: 800 });

  step("a link with another tenant's token: declining keeps the session and its keys");
  // A fresh load of the page (a link followed from elsewhere), in a tab signed in to acme.
  await page.goto(`${BASE}/console#token=${OTHER_TOKEN}`);
  await linkQuestion(/Switch to the token of this link\?/, /evil-corp/, /mallory/,
    /You are signed in as alice in acme/, /another tenant/);
  assert.equal(page.url(), `${BASE}/console`, 'the token is out of the address before any answer');
  assert.equal(await storedToken(), TOKEN, 'the session is untouched while the question is open');
  await keyRow(billing.id).waitFor();
  await switchDialog.getByRole('button', { name: 'Keep current session' }).click();
  await switchDialog.waitFor({ state: 'hidden' });
  assert.equal(await storedToken(), TOKEN);
  assert.match(await page.locator('#identity').textContent(), /alice in acme/);
  await keyRow(billing.id).waitFor();
  assert.equal(await keyRow(bait.id).count(), 0, "the other tenant's keys are not shown");
  assert.ok(!page.url().includes('token'), page.url());

  step('a link followed inside the console asks too; Escape declines');
  await page.evaluate((t) => { location.hash = `token=${t}`; }, OTHER_TOKEN);
  await linkQuestion(/evil-corp/);
  assert.ok(!page.url().includes('token'), page.url());
  await page.keyboard.press('Escape');
  await switchDialog.waitFor({ state: 'hidden' });
  assert.equal(await storedToken(), TOKEN);
  assert.match(await page.locator('#identity').textContent(), /alice in acme/);
  await keyRow(billing.id).waitFor();

  step("accepting switches to the link's tenant");
  await page.goto(`${BASE}/console#token=${OTHER_TOKEN}`);
  await linkQuestion(/evil-corp/, /mallory/);
  await switchDialog.getByRole('button', { name: 'Switch' }).click();
  await switchDialog.waitFor({ state: 'hidden' });
  await page.locator('#identity', { hasText: 'mallory in evil-corp' }).waitFor();
  await keyRow(bait.id).waitFor();
  assert.equal(await keyRow(billing.id).count(), 0, "acme's keys are gone from the screen");
  assert.equal(await storedToken(), OTHER_TOKEN);

  step('the same token again changes nothing and asks nothing');
  await page.goto(`${BASE}/#token=${OTHER_TOKEN}`);
  await page.waitForFunction(() => !location.hash.includes('token'));
  await page.locator('#identity', { hasText: 'mallory in evil-corp' }).waitFor();
  assert.equal(await switchDialog.isVisible(), false);

  step('and back to acme, through the same question');
  await page.goto(`${BASE}/#token=${TOKEN}`);
  await linkQuestion(/acme/, /You are signed in as mallory in evil-corp/);
  await switchDialog.getByRole('button', { name: 'Switch' }).click();
  await page.locator('#identity', { hasText: 'alice in acme' }).waitFor();
  await keyRow(billing.id).waitFor();
  assert.equal(await storedToken(), TOKEN);

  step('a refused token is explained, and another one can be pasted');
  const other = watch(await context.newPage());
  await other.goto(`${BASE}/#token=not.a.token`);
  const otherQuestion = other.locator('#switch-dialog');
  await otherQuestion.waitFor({ state: 'visible' });
  assert.match(await otherQuestion.innerText(), /cannot read/);
  await otherQuestion.getByRole('button', { name: 'Sign in' }).click();
  const alert = other.locator('.alert');
  await alert.waitFor();
  const alertText = await alert.innerText();
  assert.match(alertText, /did not accept the management token/);
  assert.match(alertText, /unauthorized, HTTP 401/);
  await other.getByText('The keys could not be loaded').waitFor();
  await a11y('a refused token', other);
  await alert.getByRole('button', { name: 'Use another token' }).click();
  await other.getByLabel('Management token', { exact: true }).fill(TOKEN);
  await other.getByRole('button', { name: 'Open the console' }).click();
  await other.locator('main[data-ready="keys"]').waitFor();
  await other.getByRole('button', { name: 'Sign out' }).click();
  await other.getByLabel('Management token', { exact: true }).waitFor();
  assert.equal(await other.evaluate(() => sessionStorage.getItem('keyledger.token')), null);
  await other.close();

  step('webhooks: add an endpoint, see its secret once, see a failed delivery, retry it');
  await page.goto(`${BASE}/#/webhooks`);
  await ready('webhooks');
  // Port 9 refuses connections: every attempt fails at once.
  await page.locator('#webhook-url').fill('http://127.0.0.1:9/hook');
  await page.locator('#webhook-description').fill('browser test');
  await page.locator('input[name="events"][value="key.created"]').check();
  await page.getByRole('button', { name: 'Add endpoint' }).click();
  const secret = page.locator('#webhook-secret-value');
  await secret.waitFor();
  await a11y('webhooks, with a new signing secret');
  assert.match(await secret.inputValue(), /^whsec_[A-Za-z0-9+/=]{40,}$/);
  const hooks = (await api('GET', '/v1/webhooks')).body.webhooks;
  assert.equal(hooks.length, 1);
  assert.deepEqual(hooks[0].events, ['key.created']);
  assert.equal(hooks[0].description, 'browser test');
  const hookId = hooks[0].id;
  await page.locator(`tr[data-webhook-id="${hookId}"]`).waitFor();
  const watched = await createViaApi({ name: 'webhook-watched' });
  await eventually('a failed attempt', async () =>
    (await api('GET', `/v1/webhooks/${hookId}/deliveries`)).body.deliveries[0]?.status === 'failed');
  await page.locator(`tr[data-webhook-id="${hookId}"] a`).click();
  await ready('webhook');
  const row = page.locator('#deliveries tbody tr').first();
  await row.waitFor();
  assert.match(await row.innerText(), /key\.created/);
  assert.match(await row.innerText(), new RegExp(watched.id));
  assert.match(await row.innerText(), /failed/);
  const before = (await api('GET', `/v1/webhooks/${hookId}/deliveries`)).body.deliveries[0].attempts;
  await row.getByRole('button', { name: /^Retry message msg_/ }).click();
  await page.locator('#toast', { hasText: 'Retry requested' }).waitFor();
  await eventually('the retry is attempted', async () =>
    (await api('GET', `/v1/webhooks/${hookId}/deliveries`)).body.deliveries[0].attempts > before);
  await shot('webhooks.png');
  await a11y('webhook endpoint');
  await noHorizontalScroll('the endpoint page');

  step('the token only ever travelled in the Authorization header');
  assert.ok(requests.length > 10);
  for (const { url, headers } of requests) {
    assert.ok(!url.includes(TOKEN) && !url.includes('token='), `a request URL carries the token: ${url}`);
    if (new URL(url).pathname.startsWith('/v1/')) assert.match(headers.authorization ?? '', /^Bearer /, url);
    assert.equal(new URL(url).origin, BASE, `only this origin is contacted: ${url}`);
  }
  assert.deepEqual(problems, [], 'no script error and no Content-Security-Policy violation');
  assert.deepEqual(a11yFindings, [], `axe found serious or critical problems:\n${a11yFindings.join('\n')}`);
  step('all checks passed');
} catch (error) {
  failed = true;
  const where = path.join(tmpdir(), `keyledger-console-failure-${Date.now()}.png`);
  await page.screenshot({ path: where, fullPage: true }).catch(() => {});
  console.error(`e2e: FAILED: ${error.stack ?? error}`);
  console.error(`e2e: the page at ${page.url()} (screenshot ${where}):\n${await main.innerText().catch(() => '?')}`);
  if (problems.length) console.error(`e2e: browser problems:\n${problems.join('\n')}`);
} finally {
  await context.close();
  await rm(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
