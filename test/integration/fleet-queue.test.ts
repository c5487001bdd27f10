/**
 * The migration queue and steering (issue #13, parts 1 and 2) in a real three-host lab, through the real
 * CLI, with the server's default limits (2 out and 2 in per host, 5 in the cluster):
 * - five migrations off h1 requested at once: two run, three wait `queued` with the reason, in line; the
 *   last in line (a lower priority) is cancelled and never starts — its QEMU stays on h1, untouched, and
 *   nothing appears on any other host; the other four complete, never more than two at a time;
 * - `ferry migration set` lowers the bandwidth of a running migration (the job's rate samples fall) and
 *   raises its downtime limit, `ferry migration complete` pauses the guest to finish it (the pause is its
 *   downtime), and the refusals (no unit, not running, post-copy not allowed) change nothing;
 * - `ferry migration postcopy` switches a migration that cannot converge (a guest dirtying faster than the
 *   link), and it completes with the guest verified (boot id, `dirty verify`).
 * Acts through the CLI; reads the jobs through the API (a CLI call takes seconds on a loaded machine, too
 * slow to follow a rate second by second), and the five requests go in at once through it.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { MigrationJson } from '../../src/common/migration.ts';
import { join } from 'node:path';
import { ApiClient } from '../../src/client/api.ts';
import { loadConfig } from '../../src/client/config.ts';
import { readLabState } from '../../src/lab/index.ts';
import { LabHarness, waitFor, type VmView } from './helpers.ts';

const h = new LabHarness('fq');
const measured: string[] = [];
const VMS = ['q1', 'q2', 'q3', 'q4', 'q5'];
const HOSTS = ['h1', 'h2', 'h3'];
const MiB = 2 ** 20;
/** A region rewritten far faster than a 4 MiB/s link sends it (as in migration-converge.test.ts). */
const DIRTY = ['dirty', 'start', '--mib', '12', '--rate', '64'];

let api: ApiClient;
const migrate = (vm: string, ...args: string[]): Promise<MigrationJson> => h.ferryJson<MigrationJson>(['vm', 'migrate', vm, ...args]);
const show = (id: string): Promise<MigrationJson> => api.get<MigrationJson>(`/api/v1/migrations/${id}`);
const vmOf = (vm: string): Promise<VmView> => api.get<VmView>(`/api/v1/vms/${vm}`);
/** Follows a job to its end through the API. */
const final = (id: string, timeoutMs: number): Promise<MigrationJson> =>
  waitFor(`migration ${id} to end`, async () => {
    const m = await show(id);
    return ['completed', 'failed', 'cancelled'].includes(m.state) ? m : null;
  }, timeoutMs, 300);
const started = (m: MigrationJson): number => Date.parse(m.timeline.find((t) => t.state === 'preparing')!.at);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Every QEMU of `vm` on every host: where it really runs, read from /proc. */
const qemus = (vm: string): Record<string, number[]> => Object.fromEntries(HOSTS.map((host) => [host, h.qemuPids(host, vm)]));

/** Waits until the job transfers and has reported a rate; answers the job. */
const transferring = (id: string, what: string): Promise<MigrationJson> =>
  waitFor(`${what}: transferring with a rate`, async () => {
    const m = await show(id);
    assert.ok(!['completed', 'failed', 'cancelled'].includes(m.state), `${what} ended early: ${JSON.stringify(m.error)}`);
    return m.state === 'transferring' && (m.progress?.rateBytesPerSec ?? 0) > 0 ? m : null;
  }, 60_000, 200);

/** The mean of the job's rate over a few samples, as `ferry migration show` reports it. */
async function rate(id: string, samples = 4): Promise<number> {
  let sum = 0;
  for (let i = 0; i < samples; i++) {
    sum += (await show(id)).progress?.rateBytesPerSec ?? 0;
    await sleep(250);
  }
  return sum / samples;
}

/** The guest that arrived on `host` is the one that left (boot id), with every write (`dirty verify`). */
async function assertGuestOn(vm: string, host: string, bootId: string): Promise<void> {
  const v = await vmOf(vm);
  assert.equal(v.host, host);
  assert.equal(v.state, 'running');
  assert.equal(v.bootId, bootId, `${vm}: the guest rebooted`);
  const info = await h.guest<{ bootId: string }>(vm, 'info');
  assert.equal(info.bootId, bootId);
  const verify = await h.guest<{ ok: boolean }>(vm, 'dirty', 'verify');
  assert.equal(verify.ok, true, `${vm}: dirty verify ${JSON.stringify(verify)}`);
  await waitFor(`${vm}: one QEMU, on ${host}`, () => HOSTS.every((x) => h.qemuPids(x, vm).length === (x === host ? 1 : 0)), 20_000);
}

describe('the migration queue and steering in a three-host lab', { timeout: 600_000 }, () => {
  const boot = new Map<string, string>();

  before(async () => {
    const up = await h.ferry(['lab', 'up', '--hosts', '3', '--name', h.lab, '--json'], 180_000);
    h.state = readLabState({ name: h.lab, dataRoot: h.dataRoot });
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
    api = new ApiClient(loadConfig({}, join(h.root, 'config.json')));
    for (const vm of VMS) {
      await h.ferryJson<VmView>(['vm', 'create', vm, '--memory', '128M', '--host', 'h1']);
      // The boot id arrives with the guest's first report; under load that may follow the create's answer.
      const v = await waitFor(`${vm} reports its boot id`, async () => {
        const cur = await vmOf(vm);
        return cur.bootId ? cur : null;
      }, 30_000, 300);
      boot.set(vm, v.bootId!);
    }
  });

  after(async () => {
    await api?.close();
    await h.down(measured);
  });

  it('shows the limits it runs with', async () => {
    const l = await h.ferryJson<{ maxOutbound: number; maxInbound: number; maxConcurrent: number; linkCapacityBytesPerSec: number }>(['migration', 'limits']);
    assert.deepEqual([l.maxOutbound, l.maxInbound, l.maxConcurrent, l.linkCapacityBytesPerSec], [2, 2, 5, 1024 * MiB]);
  });

  it('five at once, 2 out per host: two run, three wait queued with the reason; a cancelled one never starts; the rest complete', async () => {
    // All five in one go; the first two are held to 2 MiB/s so that they still run while the others wait.
    const req = (vm: string, body: Record<string, unknown>) => api.post<MigrationJson>(`/api/v1/vms/${vm}/migrate`, body);
    const first = [await req('q1', { to: 'h2', bandwidth: '2M' }), await req('q2', { to: 'h3', bandwidth: '2M' })];
    const rest = [await req('q3', { to: 'h2' }), await req('q4', { to: 'h3' }), await req('q5', { to: 'h2', priority: -1 })];
    const before5 = qemus('q5');
    const cancelled = await h.ferryJson<MigrationJson>(['migration', 'cancel', rest[2]!.id]);
    assert.equal(cancelled.state, 'cancelled', 'a queued job is cancelled at once');
    for (const m of first) assert.notEqual(m.state, 'queued', `${m.vm} started at once`);
    for (const [i, m] of rest.entries()) {
      assert.equal(m.state, 'queued', `${m.vm} waits`);
      assert.equal(m.queue?.reason, 'outbound limit of h1 (2/2)');
      assert.equal(m.queue?.position, i + 1, `${m.vm}: its place in line (q5 has the lowest priority)`);
    }
    const list = await h.ferry(['migration', 'list']);
    assert.equal(list.code, 0, list.stderr);
    if ((await show(rest[1]!.id)).state === 'queued') assert.match(list.stdout, /queued.*outbound limit of h1 \(2\/2\)/);

    const done = await Promise.all([...first, rest[0]!, rest[1]!].map((m) => final(m.id, 180_000)));
    for (const m of done) {
      assert.equal(m.state, 'completed', `${m.vm}: ${JSON.stringify(m.error)}`);
      assert.equal(m.queue, null);
      measured.push(`${m.vm}: ${m.source}→${m.destination} started after ${started(m) - Date.parse(m.startedAt)} ms in line, total ${m.totalMs} ms`);
    }
    // Never more than two leaving h1 at a time: each later job started only once an earlier one had ended.
    for (const m of done) {
      const at = started(m);
      const overlapping = done.filter((o) => started(o) <= at && Date.parse(o.finishedAt!) > at);
      assert.ok(overlapping.length <= 2, `${overlapping.length} running at once when ${m.vm} started`);
    }
    for (const [vm, host] of [['q1', 'h2'], ['q2', 'h3'], ['q3', 'h2'], ['q4', 'h3']] as const) {
      assert.equal((await vmOf(vm)).host, host);
    }

    // The cancelled job never started: queued → cancelled, and q5's QEMU never moved nor was joined by another.
    const c = await show(rest[2]!.id);
    assert.deepEqual(c.timeline.map((t) => t.state), ['queued', 'cancelled']);
    assert.equal(c.error?.code, 'FERRY_E_MIGRATION_CANCELLED');
    assert.deepEqual(qemus('q5'), before5);
    assert.equal(before5.h1!.length, 1);
    assert.ok(!h.runDirExists('h2', 'q5') && !h.runDirExists('h3', 'q5'));
    const v5 = await vmOf('q5');
    assert.deepEqual([v5.host, v5.state, v5.bootId], ['h1', 'running', boot.get('q5')]);
  });

  it('set lowers the bandwidth (the rate follows) and raises the downtime limit; complete pauses the guest to finish', async () => {
    await h.guest('q5', ...DIRTY);
    const m0 = await migrate('q5', '--to', 'h2', '--bandwidth', '8M', '--max-downtime', '20ms');
    const id = m0.id;
    const m1 = await transferring(id, 'set');
    assert.equal(m1.tuning?.bandwidthBytesPerSec, 8 * MiB, 'its own cap, below its share of the links');
    const fast = await rate(id);
    const slowed = await h.ferryJson<MigrationJson>(['migration', 'set', id, '--bandwidth', '2M']);
    assert.equal(slowed.tuning?.bandwidthBytesPerSec, 2 * MiB);
    await sleep(1000);
    const slow = await rate(id);
    measured.push(`set --bandwidth 2M: rate ${(fast / MiB).toFixed(1)} → ${(slow / MiB).toFixed(1)} MiB/s`);
    assert.ok(slow < fast, `the rate follows the lower bandwidth: ${fast} → ${slow}`);

    // Refusals change nothing (2 MiB/s keeps it far from converging): a rate without its unit, a policy
    // without post-copy, a job that does not exist.
    const noUnit = await h.ferryRaw(['migration', 'set', id, '--bandwidth', '4']);
    assert.equal(noUnit.code, 2);
    assert.equal((JSON.parse(noUnit.stdout) as { error: { code: string } }).error.code, 'FERRY_E_UNIT_REQUIRED');
    const noPostcopy = await h.ferryRaw(['migration', 'postcopy', id]);
    assert.equal(noPostcopy.code, 2);
    assert.equal((JSON.parse(noPostcopy.stdout) as { error: { code: string } }).error.code, 'FERRY_E_POSTCOPY_NOT_ALLOWED');
    const nope = await h.ferryRaw(['migration', 'set', 'm-nope', '--bandwidth', '4M']);
    assert.equal((JSON.parse(nope.stdout) as { error: { code: string } }).error.code, 'FERRY_E_MIGRATION_NOT_FOUND');
    assert.equal((await show(id)).actions.length, 1, 'only the set before them');

    const limitBefore = (await show(id)).tuning?.downtimeLimitMs ?? 0;
    const raised = await h.ferryJson<MigrationJson>(['migration', 'set', id, '--max-downtime', '1s']);
    assert.equal(raised.tuning?.downtimeLimitMs, 1000);
    assert.ok(1000 > limitBefore, `raised from ${limitBefore} ms`);
    assert.equal(raised.policy.maxDowntimeMs, 1000);

    // 2 MiB/s × 1 s is still far less than the 12 MiB the guest keeps dirty: only a pause finishes it.
    const completing = await h.ferryJson<MigrationJson>(['migration', 'complete', id]);
    assert.deepEqual(completing.actions.map((a) => a.action), ['set', 'set', 'complete']);
    const m = await final(id, 120_000);
    measured.push(`complete: ${m.state}, downtime ${m.downtimeMs} ms, total ${m.totalMs} ms`);
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    assert.ok((m.downtimeMs ?? 0) > 0, `the pause is reported as its downtime: ${m.downtimeMs}`);
    await assertGuestOn('q5', 'h2', boot.get('q5')!);
    const late = await h.ferryRaw(['migration', 'set', id, '--bandwidth', '4M']);
    assert.equal(late.code, 2);
    assert.equal((JSON.parse(late.stdout) as { error: { code: string } }).error.code, 'FERRY_E_MIGRATION_NOT_RUNNING');
  });

  it('postcopy switches a migration that cannot converge, and the guest arrives whole', async () => {
    // The dirtier still runs in q5 (it moved with the guest). 4 MiB/s × 1 s never catches up with it, and
    // the ladder would need 20 passes of about 3 s to switch by itself: the switch seen here is the user's.
    const m0 = await migrate('q5', '--to', 'h3', '--postcopy', 'auto', '--bandwidth', '4M', '--max-downtime', '1s');
    await transferring(m0.id, 'postcopy');
    const asked = await h.ferryJson<MigrationJson>(['migration', 'postcopy', m0.id]);
    assert.equal(asked.actions.at(-1)?.action, 'postcopy');
    const m = await final(m0.id, 180_000);
    measured.push(`postcopy: ${m.state}, total ${m.totalMs} ms, downtime ${m.downtimeMs} ms, guest gap ${m.guestDowntimeMs} ms`);
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    assert.ok(m.timeline.some((t) => t.state === 'postcopy'), 'passed through postcopy');
    assert.ok(!m.escalations.some((e) => e.step.kind === 'postcopy'), 'the switch was the user\'s, not the ladder\'s');
    await assertGuestOn('q5', 'h3', boot.get('q5')!);
  });
});
