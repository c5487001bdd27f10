/**
 * The truth rule (issue #7), as a tester reproduced its violations, in a real two-host lab through the real
 * CLI. Each case checks what runs on the hosts — QEMU processes from /proc, and guests that answer a UDP
 * broadcast on the VM LAN (two copies of one guest answer twice) — not what the store says.
 *  1. split brain: the destination agent SIGKILLed mid-transfer; its QEMU survives and the stream completes.
 *     Before the fix the source resumed and the destination ran the guest by itself: two copies for good.
 *     Now the job waits (`awaiting_destination`), nothing runs twice, and the restarted agent rolls it forward.
 *  2. the source agent SIGKILLed as its QEMU completes: the destination holds the guest, the job rolls
 *     forward, the source copy is removed once its agent is back (an owed confirm), no guest time is lost.
 *  3. post-copy with the destination's link cut for 10 s once it runs the guest: not aborted, recovered, the
 *     guest verified.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import type { MigrationJson } from '../../src/common/migration.ts';
import { GUEST_UDP_PORT } from '../../src/guest/client.ts';
import { join } from 'node:path';
import { labRestartAgent, linkDown, linkUp, processAlive, readLabState } from '../../src/lab/index.ts';
import { QmpClient } from '../../src/qemu/qmp.ts';
import { LabHarness, otherHost as other, waitFor, type VmView } from './helpers.ts';

const VM = 't1';
const h = new LabHarness('t');
const measured: string[] = [];

/** How many running copies of the guest answer one broadcast `info` (the most over `tries` rounds). */
async function copiesAnswering(tries = 3): Promise<{ copies: number; bootIds: string[] }> {
  const cidr = h.state!.network.vmCidr; // 10.232.k.0/24
  const bcast = cidr.replace(/\.0\/24$/, '.255');
  const sock = createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, () => r()));
  sock.setBroadcast(true);
  const replies = new Map<number, string[]>();
  sock.on('message', (msg) => {
    const m = /^\{"tag":(\d+),(.*)$/.exec(msg.toString('utf8').trim());
    if (!m) return;
    const boot = /"bootId":"([0-9a-f-]+)"/.exec(m[2]!)?.[1] ?? '?';
    replies.get(Number(m[1]))?.push(boot);
  });
  try {
    let best: string[] = [];
    for (let i = 0; i < tries; i++) {
      const tag = 1000 + i;
      replies.set(tag, []);
      sock.send(`#${tag} info`, GUEST_UDP_PORT, bcast);
      await new Promise((r) => setTimeout(r, 400));
      const got = replies.get(tag)!;
      if (got.length > best.length) best = got;
    }
    return { copies: best.length, bootIds: best };
  } finally {
    sock.close();
  }
}

async function migrationOf(id: string): Promise<MigrationJson> {
  return h.migrationShow(id);
}

/** After a case: the guest runs on `host` alone — one QEMU, one answer, same boot, memory intact. */
async function assertRunsOnlyOn(host: string, bootId: string, what: string): Promise<void> {
  const v = await waitFor(
    `${what}: vm show running on ${host}`,
    async () => {
      const cur = await h.vmShow(VM);
      return cur.state === 'running' && cur.host === host ? cur : null;
    },
    60_000,
  );
  assert.equal(v.bootId, bootId, `${what}: the same guest`);
  await waitFor(`${what}: no QEMU left on ${other(host)}`, () => h.qemuPids(other(host), VM).length === 0 && !h.runDirExists(other(host), VM), 60_000);
  assert.equal(h.qemuPids(host, VM).length, 1, `${what}: one QEMU on ${host}`);
  const seen = await copiesAnswering();
  assert.equal(seen.copies, 1, `${what}: exactly one copy answers on the VM LAN (${JSON.stringify(seen)})`);
  assert.deepEqual(seen.bootIds, [bootId]);
  const verify = await h.guest<{ ok: boolean }>(VM, 'dirty', 'verify');
  assert.equal(verify.ok, true, `${what}: memory intact ${JSON.stringify(verify)}`);
}

/** The VM's QEMU on `host` runs the guest (`query-status` on its observer monitor; the agent holds the main one). */
async function destinationRuns(host: string): Promise<boolean> {
  const qmp = await QmpClient.connect(join(h.hostDir(host), 'vms', VM, 'qmp-observe.sock'), { timeoutMs: 2000 }).catch(() => null);
  if (qmp === null) return false;
  try {
    return (await qmp.execute('query-status')).running;
  } catch {
    return false;
  } finally {
    await qmp.close();
  }
}

function agentPid(host: string): number {
  const st = readLabState({ name: h.lab, dataRoot: h.dataRoot })!;
  return st.hosts.find((x) => x.name === host)!.pid;
}

describe('the truth rule: never lost, never twice', { timeout: 900_000 }, () => {
  let bootId = '';

  before(async () => {
    const up = await h.ferry(['lab', 'up', '--hosts', '2', '--name', h.lab, '--json'], 180_000);
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
    h.state = readLabState({ name: h.lab, dataRoot: h.dataRoot });
    const v = await h.ferryJson<VmView>(['vm', 'create', VM, '--memory', '256M', '--host', 'h1']);
    bootId = v.bootId!;
    await h.guest(VM, ...'dirty start --mib 64 --rate 5'.split(' '));
  });

  after(async () => {
    await linkUp(h.lab, 'h1').catch(() => undefined);
    await linkUp(h.lab, 'h2').catch(() => undefined);
    await h.down(measured);
  });

  it('destination agent SIGKILLed mid-transfer: the job waits, nothing runs twice, the restarted agent rolls it forward', async () => {
    const src = (await h.vmShow(VM)).host;
    const dst = other(src);
    const m = await h.ferryJson<MigrationJson>(['vm', 'migrate', VM, '--to', dst, '--bandwidth', '8M']);
    await waitFor('pass 2', async () => ((await migrationOf(m.id)).iterations ?? 0) >= 2, 60_000, 100);
    const pid = agentPid(dst);
    process.kill(pid, 'SIGKILL');
    await waitFor('agent gone', () => !processAlive(pid), 5000, 50);
    // The stream completes without the agent; with no one to say which copy is the truth, the job waits.
    const parked = await waitFor(
      'awaiting_destination',
      async () => {
        const cur = await migrationOf(m.id);
        assert.ok(!['completed', 'failed', 'cancelled'].includes(cur.state), `ended without the destination: ${JSON.stringify(cur)}`);
        return cur.state === 'awaiting_destination' ? cur : null;
      },
      90_000,
      200,
    );
    assert.equal(parked.waiting?.host, dst);
    // Neither copy may run while nobody knows (before the fix: two answered, both for good).
    const meanwhile = await copiesAnswering();
    assert.ok(meanwhile.copies <= 1, `two copies run: ${JSON.stringify(meanwhile)}`);
    assert.equal(h.qemuPids(dst, VM).length, 1, 'the destination QEMU survived its agent');
    h.state = await labRestartAgent(h.lab, dst, { dataRoot: h.dataRoot });
    const end = await h.waitFinal(m.id, 120_000);
    assert.equal(end.state, 'completed', JSON.stringify(end));
    measured.push(`destination agent killed: ${end.state} after ${end.totalMs} ms (waited since ${parked.waiting?.since})`);
    await assertRunsOnlyOn(dst, bootId, 'destination agent killed');
  });

  it('source agent SIGKILLed as QEMU completes: forward to the destination, the source removed when its agent is back', async () => {
    const src = (await h.vmShow(VM)).host;
    const dst = other(src);
    const m = await h.ferryJson<MigrationJson>(['vm', 'migrate', VM, '--to', dst, '--bandwidth', '8M']);
    // Near the end of the stream (the guest dirties less than the link carries, so it converges).
    await waitFor('most of the memory sent', async () => ((await migrationOf(m.id)).progress?.percent ?? 0) >= 80, 90_000, 100);
    const pid = agentPid(src);
    process.kill(pid, 'SIGKILL');
    const end = await h.waitFinal(m.id, 120_000);
    assert.equal(end.state, 'completed', `the destination held the whole guest: ${JSON.stringify(end)}`);
    assert.ok(end.pending.some((p) => p.host === src && p.action === 'confirm'), `the source's confirm is owed: ${JSON.stringify(end.pending)}`);
    measured.push(`source agent killed: ${end.state} after ${end.totalMs} ms`);
    h.state = await labRestartAgent(h.lab, src, { dataRoot: h.dataRoot });
    await assertRunsOnlyOn(dst, bootId, 'source agent killed');
    await waitFor('the owed confirm done', async () => (await migrationOf(m.id)).pending.length === 0, 60_000, 500);
  });

  it('post-copy with the link cut for 10 s: recovered, not aborted; the guest survives', async () => {
    const src = (await h.vmShow(VM)).host;
    const dst = other(src);
    // --bandwidth caps post-copy too: below the guest's dirty rate, post-copy lasts long enough to be cut.
    const m = await h.ferryJson<MigrationJson>(['vm', 'migrate', VM, '--to', dst, '--postcopy', 'always', '--bandwidth', '4M', '--stall-timeout', '2s']);
    await waitFor(
      'post-copy',
      async () => {
        const cur = await migrationOf(m.id);
        assert.ok(!['completed', 'failed', 'cancelled'].includes(cur.state), `ended before post-copy was cut: ${JSON.stringify(cur)}`);
        return cur.state === 'postcopy';
      },
      90_000,
      100,
    );
    // Cut once the destination runs the guest: before that the switch-over is still sending the device state,
    // which Ferry leaves to TCP (only a running destination can be recovered), and there is nothing to recover.
    await waitFor('the destination runs the guest', () => destinationRuns(dst), 30_000, 50);
    await linkDown(h.lab, dst);
    try {
      await new Promise((r) => setTimeout(r, 10_000));
    } finally {
      await linkUp(h.lab, dst);
    }
    const end = await h.waitFinal(m.id, 180_000);
    assert.equal(end.state, 'completed', JSON.stringify(end));
    assert.ok(end.escalations.some((e) => e.step.kind === 'postcopy-recover'), `recovered, not carried by TCP retransmits: ${JSON.stringify(end.escalations)}`);
    const recoveries = end.escalations.filter((e) => e.step.kind === 'postcopy-recover').length;
    measured.push(`post-copy, link cut 10 s: ${end.state} after ${end.totalMs} ms, ${recoveries} recover${recoveries === 1 ? 'y' : 'ies'}`);
    await assertRunsOnlyOn(dst, bootId, 'post-copy link cut');
  });
});
