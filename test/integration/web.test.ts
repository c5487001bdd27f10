/**
 * The web console in a real browser (Debian's chromium, driven by playwright-core) against a real two-host
 * lab: a wrong token is refused; signed in, the cluster shows both hosts and the VM; a migration started from
 * the migrate dialog is followed live to confirm with points on its charts; a slow one is cancelled from the
 * page and the VM stays where it was (its QEMU processes on both hosts say so, not only the page); a host is
 * drained from its page, plan first. Screenshots of the cluster and of a live migration go to
 * $FERRY_SCREENSHOTS (default: a temporary folder); `npm run screenshots` writes them to docs/screenshots.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { readLabState } from '../../src/lab/index.ts';
import { LabHarness, waitFor, type VmView } from './helpers.ts';

const h = new LabHarness('w');
const { lab, dataRoot } = h;
const VM = 'web1';
const shots = resolve(process.env.FERRY_SCREENSHOTS ?? mkdtempSync(join(tmpdir(), 'ferry-screenshots-')));
const profile = mkdtempSync(join(tmpdir(), 'ferry-chromium-'));
const measured: string[] = [];

describe('the web console in a browser against a two-host lab', { timeout: 420_000 }, () => {
  let ctx: BrowserContext | undefined;
  let page: Page;
  let url = '';
  let token = '';
  const outside: string[] = [];

  /** A chart's number of points (the figure's data-points). */
  const points = (title: string) => page.locator(`figure.chart[aria-label="${title}"]`).getAttribute('data-points').then(Number);

  before(async () => {
    const up = await h.ferry(['lab', 'up', '--hosts', '2', '--name', lab, '--json'], 180_000);
    const state = readLabState({ name: lab, dataRoot });
    h.state = state;
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
    assert.ok(state, 'the lab wrote its state');
    ({ url, adminToken: token } = state.server);
    await h.ferryJson<VmView>(['vm', 'create', VM, '--memory', '256M', '--host', 'h1']);
    // A guest that writes memory: the migrations take long enough to be watched, and the slow one never converges.
    await h.guest(VM, ...'dirty start --mib 16 --rate 8'.split(' '));
    ctx = await chromium.launchPersistentContext(profile, {
      executablePath: '/usr/bin/chromium',
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      // The controller's certificate is signed by the lab's own CA.
      ignoreHTTPSErrors: true,
      viewport: { width: 1280, height: 800 },
    });
    page = ctx.pages()[0] ?? (await ctx.newPage());
    page.setDefaultTimeout(60_000);
    page.on('request', (r) => {
      if (!r.url().startsWith(url) && !r.url().startsWith('data:')) outside.push(r.url());
    });
  });

  after(async () => {
    try {
      await ctx?.close();
    } finally {
      rmSync(profile, { recursive: true, force: true });
      measured.push(`screenshots in ${shots}`);
      await h.down(measured);
    }
  });

  it('refuses a wrong token with a clear message, and keeps the token out of the URL', async () => {
    await page.goto(`${url}/`);
    await page.getByLabel('API token').fill('0123456789abcdef.wrong');
    await page.getByRole('button', { name: 'Sign in' }).click();
    const alert = page.getByRole('alert');
    await alert.waitFor();
    assert.match(await alert.innerText(), /refused this token \(FERRY_E_UNAUTHORIZED\)/);
    assert.equal(await page.locator('[data-host]').count(), 0, 'nothing of the cluster is shown');
    assert.ok(!page.url().includes('wrong'));
  });

  it('signs in and shows both hosts, their capacity, and the VM', async () => {
    await page.getByLabel('API token').fill(token);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('[data-host="h1"]').getByRole('link', { name: VM }).waitFor();
    await page.locator('[data-host="h2"]').waitFor();
    assert.equal(await page.locator('article.host').count(), 2);
    const mem = page.locator('[data-host="h1"]').getByRole('meter', { name: 'Memory' });
    assert.match(String(await mem.getAttribute('aria-valuetext')), /^256 MiB allocated/);
    assert.match(await page.locator('[data-host="h1"]').innerText(), /QEMU\s+10\./);
    assert.ok(!page.url().includes(token), 'the token is never in a URL');
    await page.locator('.live.on').waitFor();
    mkdirSync(shots, { recursive: true });
    await page.screenshot({ path: join(shots, 'console-cluster.png') });
  });

  it('migrates the VM from the dialog and follows it live to confirm, with points on the charts', async () => {
    await page.goto(`${url}/#/vms/${VM}`);
    await page.getByRole('button', { name: 'Migrate…' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.locator('label[data-host="h2"] .fits').waitFor();
    assert.match(await dialog.locator('label[data-host="h1"]').innerText(), /does not fit: the VM runs here/);
    assert.equal(await dialog.locator('label[data-host="h1"] input').isDisabled(), true);
    await dialog.locator('label[data-host="h2"] input').check();
    await dialog.getByLabel('Bandwidth (per second, 0 = no limit)').fill('24M');
    await dialog.getByRole('button', { name: 'Start migration' }).click();
    await page.waitForURL(/#\/migrations\/m-/);
    const id = decodeURIComponent(page.url().split('#/migrations/')[1]!);
    await page.locator('.step.current[data-phase="perform"]').waitFor();
    await page.locator(`section[data-migration="${id}"][data-state="completed"]`).waitFor({ timeout: 180_000 });
    assert.equal(await page.locator('.step.done').count(), 5, 'every phase done, confirm included');
    assert.ok((await points('Remaining')) >= 2, `points on the remaining-memory chart: ${await points('Remaining')}`);
    assert.ok((await points('Transfer and dirty rate')) >= 2);
    assert.equal(await page.getByRole('progressbar').getAttribute('aria-valuenow'), '100');
    assert.match(await page.locator('dd[data-field="eta"]').innerText(), /^done in /);
    assert.equal((await h.vmShow(VM)).host, 'h2', 'the VM really moved');
    measured.push(`dialog migration ${id}: ${await points('Remaining')} chart points`);
  });

  it('cancels a slow migration from the page: the VM stays on its host, nothing is left on the other', async () => {
    const before = await h.vmShow(VM);
    assert.equal(before.host, 'h2');
    await page.goto(`${url}/#/vms/${VM}`);
    await page.getByRole('button', { name: 'Migrate…' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.locator('label[data-host="h1"] .fits').waitFor();
    await dialog.locator('label[data-host="h1"] input').check();
    // Slower than the guest dirties memory: it cannot converge, so it is still running when cancelled.
    await dialog.getByLabel('Bandwidth (per second, 0 = no limit)').fill('4M');
    await dialog.getByRole('button', { name: 'Start migration' }).click();
    await page.waitForURL(/#\/migrations\/m-/);
    const id = decodeURIComponent(page.url().split('#/migrations/')[1]!);
    await page.locator('.step.current[data-phase="perform"]').waitFor();
    await waitFor('points on the charts', async () => ((await points('Remaining')) >= 2 ? true : null), 60_000, 250);
    assert.equal(h.qemuPids('h1', VM, { incoming: true }).length, 1, 'the destination QEMU runs, waiting');
    await page.screenshot({ path: join(shots, 'console-migration-live.png') });
    await page.getByRole('button', { name: 'Cancel migration' }).click();
    await page.locator(`section[data-migration="${id}"][data-state="cancelled"]`).waitFor({ timeout: 60_000 });
    const after = await h.vmShow(VM);
    assert.deepEqual([after.host, after.state, after.bootId], ['h2', 'running', before.bootId], 'same host, same boot');
    assert.equal(h.qemuPids('h2', VM).length, 1, "the source's QEMU still runs");
    await waitFor('no QEMU of the VM left on h1', () => (h.qemuPids('h1', VM).length === 0 ? true : null), 30_000);
    assert.equal((await h.guest<{ ok: boolean }>(VM, 'dirty', 'verify')).ok, true, 'memory intact');
  });

  it('drains a host from its page: the plan first, then each VM moved', async () => {
    await page.goto(`${url}/#/hosts/h2`);
    await page.getByRole('button', { name: 'Plan a drain…' }).click();
    const row = page.locator(`[data-plan-vm="${VM}"]`);
    await row.waitFor();
    assert.match(await row.innerText(), new RegExp(`^${VM}\\s+h1\\s+live\\s.*\\bfits\\b`, 's'), "VM, destination, strategy, then why it fits");
    assert.match(await page.locator('#plan-title').innerText(), /every VM has a destination/);
    assert.equal((await h.ferryJson<{ maintenance: boolean }>(['host', 'show', 'h2'])).maintenance, false, 'a plan changes nothing');
    await page.getByRole('button', { name: 'Start drain' }).click();
    await page.locator('[data-drain-state="drained"]').waitFor({ timeout: 180_000 });
    assert.equal(await page.locator(`[data-drain-vm="${VM}"]`).getAttribute('data-status'), 'moved');
    assert.match(await page.locator(`[data-drain-vm="${VM}"]`).innerText(), /h1/);
    assert.equal((await h.vmShow(VM)).host, 'h1');
    await page.getByRole('button', { name: 'Undrain' }).click();
    await waitFor('h2 out of maintenance', async () => ((await h.ferryJson<{ maintenance: boolean }>(['host', 'show', 'h2'])).maintenance ? null : true), 30_000);
  });

  it('fits a narrow window, and fetched nothing from outside the controller', async () => {
    await page.setViewportSize({ width: 390, height: 800 });
    await page.goto(`${url}/#/cluster`);
    await page.locator('[data-host="h1"]').waitFor();
    const [scroll, width] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    assert.ok(scroll <= width, `no sideways scrolling at 390 px: ${scroll} > ${width}`);
    assert.deepEqual(outside, []);
  });
});
