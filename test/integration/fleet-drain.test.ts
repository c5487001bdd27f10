/**
 * A drain with a deadline in a real three-host lab: h3's agent hides the VMs' machine type (the test-only
 * FERRY_TEST_HIDE_MACHINE_TYPES), so the scheduler refuses it, naming the type. h1 holds four VMs: two
 * quiet ones, one dirtying memory faster than the drain's 8 MiB/s per migration (it allows a cold move),
 * and a stopped one. `--dry-run` answers the plan and leaves everything as it was; the drain then moves
 * every VM within the deadline, which the hosts' QEMUs confirm.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { DrainJson, DrainPlanJson } from '../../src/common/api.ts';
import { readLabState } from '../../src/lab/index.ts';
import { LabHarness, type VmView } from './helpers.ts';

const h = new LabHarness('fd');
const { lab, dataRoot } = h;
const VMS = ['busy', 'quiet1', 'quiet2', 'off'];

/**
 * The guest's boot id. Three VMs share the host with one that dirties memory as fast as it can, under TCG on
 * two cores beside other tests: a guest may miss one 10 s answer window (FERRY_E_GUEST_TIMEOUT), so ask again.
 */
async function bootIdOf(vm: string): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    const r = await h.ferryRaw(['vm', 'guest', vm, '--', 'info']);
    if (r.code === 0) return (JSON.parse(r.stdout) as { bootId: string }).bootId;
    assert.ok(attempt < 4 && r.stdout.includes('FERRY_E_GUEST_TIMEOUT'), `ferry vm guest ${vm} -- info exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  }
}

describe('fleet drain with a deadline in a three-host lab', { timeout: 900_000 }, () => {
  before(async () => {
    h.env.FERRY_TEST_HIDE_MACHINE_TYPES = 'h3=pc-q35-10.0+q35';
    const up = await h.ferry(['lab', 'up', '--hosts', '3', '--name', lab, '--json'], 420_000);
    h.state = readLabState({ name: lab, dataRoot });
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
    await h.ferryJson<VmView>(['vm', 'create', 'busy', '--memory', '128M', '--host', 'h1', '--evacuation', 'cold-ok']);
    // 48 MiB rewritten at 40 MiB/s: QEMU's sampled dirty rate counts each page once a second, so a region
    // smaller than the rate (16 MiB was) measured ~6 MiB/s on a loaded host, under the 8 MiB/s share.
    await h.guest('busy', ...'dirty start --mib 48 --rate 40'.split(' '));
    await h.ferryJson<VmView>(['vm', 'create', 'quiet1', '--memory', '128M', '--host', 'h1']);
    await h.ferryJson<VmView>(['vm', 'create', 'quiet2', '--memory', '128M', '--host', 'h1']);
    await h.ferryJson<VmView>(['vm', 'create', 'off', '--memory', '128M', '--host', 'h1']);
    assert.equal((await h.ferryJson<VmView>(['vm', 'stop', 'off', '--force'])).state, 'stopped');
  });

  after(() => h.down());

  it('refuses a host whose QEMU lacks the machine type, naming it', async () => {
    const r = await h.ferry(['vm', 'migrate', 'quiet1', '--to', 'h3', '--json']);
    assert.equal(r.code, 2, r.stdout + r.stderr);
    const err = (JSON.parse(r.stdout) as { error: { code: string; message: string } }).error;
    assert.equal(err.code, 'FERRY_E_MACHINE_TYPE');
    assert.match(err.message, /pc-q35-10\.0/);
    assert.equal((await h.vmShow('quiet1')).host, 'h1', 'the VM stayed where it was');
  });

  it('plans first: --dry-run answers the plan and changes nothing', async () => {
    const p = await h.ferryJson<DrainPlanJson>(['host', 'drain', 'h1', '--deadline', '2m', '--bandwidth', '8M', '--dry-run']);
    assert.equal(p.host, 'h1');
    assert.equal(p.deadlineMs, 120_000);
    assert.equal(p.feasible, true, JSON.stringify(p.plan));
    const byVm = new Map(p.plan.map((i) => [i.vm, i]));
    assert.deepEqual([...byVm.keys()].sort(), [...VMS].sort());
    for (const i of p.plan) {
      assert.equal(i.destination, 'h2', `${i.vm}: ${i.reason}`);
      assert.equal(typeof i.predictedMs, 'number');
    }
    assert.equal(byVm.get('off')?.strategy, 'cold');
    assert.equal(byVm.get('quiet1')?.strategy, 'live');
    assert.notEqual(byVm.get('busy')?.strategy, 'live', `the fast dirtier climbs the ladder: ${byVm.get('busy')?.reason}`);
    assert.equal(p.plan[0]?.vm, 'busy', 'the biggest risk first');

    const hosts = await h.ferryJson<{ name: string; state: string }[]>(['host', 'list']);
    assert.equal(hosts.find((x) => x.name === 'h1')?.state, 'ready', 'no maintenance after a dry run');
    for (const vm of VMS) assert.equal((await h.vmShow(vm)).host, 'h1');
    assert.equal((await h.ferryJson<unknown[]>(['migration', 'list'])).length, 0, 'no migration started');
  });

  it('moves every VM within the deadline, as the hosts\' QEMUs show', async () => {
    const bootIds = new Map<string, string>();
    for (const vm of ['busy', 'quiet1', 'quiet2']) bootIds.set(vm, await bootIdOf(vm));
    const d = await h.ferryJson<DrainJson>(['host', 'drain', 'h1', '--deadline', '2m', '--bandwidth', '8M', '--wait'], [0, 1]);
    assert.equal(d.state, 'drained', JSON.stringify(d.items));
    assert.ok(d.plan && d.plan.length === 4, 'the drain carries its plan');
    assert.ok(Date.parse(d.finishedAt!) - Date.parse(d.startedAt) <= d.deadlineMs, 'within the deadline');
    for (const i of d.items) assert.deepEqual([i.vm, i.status, i.destination], [i.vm, 'moved', 'h2']);
    for (const vm of ['busy', 'quiet1', 'quiet2']) {
      assert.equal(h.qemuPids('h1', vm).length, 0, `${vm}: no QEMU left on h1`);
      assert.equal(h.qemuPids('h2', vm).length, 1, `${vm}: its QEMU runs on h2`);
      const v = await h.vmShow(vm);
      assert.equal(v.state, 'running');
      if (d.items.find((i) => i.vm === vm)?.strategy !== 'cold') {
        assert.equal(await bootIdOf(vm), bootIds.get(vm), `${vm}: moved live, the same boot`);
      }
    }
    if (d.items.find((i) => i.vm === 'busy')?.strategy !== 'cold') {
      assert.equal((await h.guest<{ ok: boolean }>('busy', 'dirty', 'verify')).ok, true, 'the fast dirtier lost no write');
    }
    assert.equal(h.qemuPids('h1', 'off').length + h.qemuPids('h2', 'off').length, 0, 'the stopped VM moved and stays stopped');
    assert.equal((await h.vmShow('off')).host, 'h2');
    assert.equal(h.qemuPids('h3', 'busy').length, 0, 'nothing went to the host that lacks the machine type');
  });
});
