/**
 * Host drain in a real two-host lab, through the real CLI: `ferry host drain h1 --wait` puts h1 in
 * maintenance and moves every VM to h2 — a running one live (same boot, memory pattern intact), a stopped
 * one cold (its disk bytes intact, still stopped) — after which nothing can be placed on h1 until
 * `ferry host undrain h1`.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { DrainJson } from '../../src/common/api.ts';
import { readLabState } from '../../src/lab/index.ts';
import { LabHarness, type VmView } from './helpers.ts';

const h = new LabHarness('d');
const { lab, dataRoot } = h;

describe('host drain in a two-host lab', { timeout: 600_000 }, () => {
  let bootId = '';
  let diskSum = '';

  before(async () => {
    const up = await h.ferry(['lab', 'up', '--hosts', '2', '--name', lab, '--json'], 180_000);
    h.state = readLabState({ name: lab, dataRoot });
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
    const live = await h.ferryJson<VmView>(['vm', 'create', 'busy', '--memory', '192M', '--host', 'h1']);
    assert.ok(live.bootId);
    bootId = live.bootId;
    await h.guest('busy', ...'dirty start --mib 32 --rate 20'.split(' '));
    await h.ferryJson<VmView>(['vm', 'create', 'idle', '--memory', '128M', '--host', 'h1', '--disk', '32M']);
    diskSum = (await h.guest<{ sum: string }>('idle', ...'disk fill /dev/vda 8 11'.split(' '))).sum;
    const stopped = await h.ferryJson<VmView>(['vm', 'stop', 'idle', '--force']);
    assert.equal(stopped.state, 'stopped');
  });

  after(() => h.down());

  it('moves every VM off the host, keeps each as it was, and keeps the host empty until undrain', async () => {
    const d = await h.ferryJson<DrainJson>(['host', 'drain', 'h1', '--wait']);
    assert.equal(d.state, 'drained', JSON.stringify(d.items));
    assert.deepEqual(
      d.items.map((i) => [i.vm, i.status, i.destination]),
      [
        ['busy', 'moved', 'h2'],
        ['idle', 'moved', 'h2'],
      ],
    );

    const busy = await h.vmShow('busy');
    assert.equal(busy.host, 'h2');
    assert.equal(busy.state, 'running');
    assert.equal((await h.guest<{ bootId: string }>('busy', 'info')).bootId, bootId, 'moved live: the same boot');
    assert.equal((await h.guest<{ ok: boolean }>('busy', 'dirty', 'verify')).ok, true, 'memory pattern intact');

    const idle = await h.vmShow('idle');
    assert.equal(idle.host, 'h2');
    assert.equal(idle.state, 'stopped', 'a stopped VM is moved, not started');
    assert.equal(h.qemuPids('h1', 'busy').length + h.qemuPids('h1', 'idle').length, 0, 'no QEMU left on h1');
    assert.equal(h.runDirExists('h1', 'idle'), false, 'the source copy of the disk is gone');
    await h.ferryJson<VmView>(['vm', 'start', 'idle']);
    assert.equal((await h.guest<{ sum: string }>('idle', ...'disk sum /dev/vda 8'.split(' '))).sum, diskSum, 'the disk bytes moved intact');

    const hosts = await h.ferryJson<{ name: string; state: string }[]>(['host', 'list']);
    assert.equal(hosts.find((x) => x.name === 'h1')?.state, 'maintenance');
    const refused = await h.ferry(['vm', 'create', 'late', '--memory', '128M', '--host', 'h1', '--json']);
    assert.equal(refused.code, 2);
    assert.equal((JSON.parse(refused.stdout) as { error: { code: string } }).error.code, 'FERRY_E_NO_CAPACITY');

    await h.ferryJson(['host', 'undrain', 'h1']);
    const back = await h.ferryJson<{ name: string; state: string }[]>(['host', 'list']);
    assert.equal(back.find((x) => x.name === 'h1')?.state, 'ready');
  });
});
