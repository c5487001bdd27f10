/**
 * Ping-pong (issue #7): 20 live migrations back and forth between two hosts while the guest dirties memory,
 * each checked from inside the guest (`dirty verify`, same boot id) and on the hosts (exactly one QEMU of the
 * VM, running, found through /proc and asked over its observer QMP monitor). What a long day of rebalancing
 * does to one VM, in a few minutes.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { MigrationJson } from '../../src/common/migration.ts';
import { TestCluster, waitUntil } from '../../src/testing/cluster.ts';
import { qemuStatuses } from '../../src/testing/invariants.ts';

const VM = 'p1';
const ROUNDS = 20;
const cluster = new TestCluster('pp');
const measured: string[] = [];

describe('ping-pong: 20 live migrations with the dirtier running', { timeout: 20 * 60_000 }, () => {
  let bootId = '';

  before(async () => {
    await cluster.up(2);
    const v = await cluster.ferryJson<{ bootId: string | null; host: string }>(['vm', 'create', VM, '--memory', '128M', '--host', 'h1']);
    assert.ok(v.bootId, 'the tiny guest reports its boot id');
    bootId = v.bootId;
    await cluster.guest(VM, 'dirty', 'start', '--mib', '32', '--rate', '5');
  });

  after(async () => {
    try {
      await cluster.down();
    } finally {
      if (measured.length) console.log(`# measured:\n${measured.map((l) => `#   ${l}`).join('\n')}`);
    }
  });

  it(`${ROUNDS} migrations h1⇄h2: memory verified and boot id unchanged after each, one QEMU at the end`, async () => {
    for (let i = 1; i <= ROUNDS; i++) {
      const from = (await cluster.vmShow(VM)).host;
      const to = from === 'h1' ? 'h2' : 'h1';
      // Odd rounds with TLS (the default), even ones without: both paths stay honest.
      const m = await cluster.ferryJson<MigrationJson>(['vm', 'migrate', VM, '--to', to, '--wait', ...(i % 2 === 0 ? ['--no-tls'] : [])], [0, 1]);
      assert.equal(m.state, 'completed', `round ${i} ${from}→${to}: ${m.state} ${JSON.stringify(m.error)}`);
      const v = await cluster.vmShow(VM);
      assert.equal(v.host, to, `round ${i}: vm show host`);
      assert.equal(v.bootId, bootId, `round ${i}: the guest rebooted (store)`);
      const info = await cluster.guest<{ bootId: string }>(VM, 'info');
      assert.equal(info.bootId, bootId, `round ${i}: the guest rebooted`);
      const verify = await cluster.guest<{ ok: boolean }>(VM, 'dirty', 'verify');
      assert.equal(verify.ok, true, `round ${i}: dirty verify ${JSON.stringify(verify)}`);
      measured.push(`round ${i} ${from}→${to}${i % 2 === 0 ? ' no TLS' : ' TLS'}: total ${m.totalMs} ms, QEMU downtime ${m.downtimeMs} ms, guest gap ${m.guestDowntimeMs} ms`);
    }
    // The last source's QEMU quits during confirm; it may still be on its way out.
    const st = await waitUntil(
      'exactly one QEMU of the VM, running',
      async () => {
        const s = await qemuStatuses(cluster, VM);
        return s.length === 1 && s[0]!.running ? s : null;
      },
      15_000,
    );
    assert.equal(st[0]!.host, (await cluster.vmShow(VM)).host);
  });
});
