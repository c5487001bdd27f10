/**
 * Guest downtime measured from the VM network's side, by either probe (src/guest/probe.ts), in a real
 * two-host lab through the real CLI. The tiny guest is measured over UDP by default; its kernel also answers
 * ICMP echo on the address /init gave it, so with the controller told to use ICMP for every VM (the test-only
 * FERRY_TEST_GUEST_PROBE in the environment the lab restarts its controller with) the same guest stands in for any
 * guest with an address. Each probe reports a positive gap no longer than the migration, and says which it
 * was; the ping child is gone after a completed migration, a cancel, and a controller killed mid-transfer.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import type { VmJson } from '../../src/common/api.ts';
import type { MigrationJson } from '../../src/common/migration.ts';
import { labRestartServer, readLabState } from '../../src/lab/index.ts';
import { FINAL_STATES, LabHarness, cmdline, isZombie, otherHost, waitFor } from './helpers.ts';

const VM = 'gp1';
const h = new LabHarness('gp');
const measured: string[] = [];
let ip = '';

/** ping processes probing the VM's address (the lab's subnet is unique on the machine, so they are ours). */
function pings(): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const argv = cmdline(e);
    if (argv[0]?.endsWith('ping') && argv.at(-1) === ip && !isZombie(e)) out.push(Number(e));
  }
  return out;
}

const host = async (): Promise<string> => (await h.ferryJson<VmJson>(['vm', 'show', VM])).host;

async function migrate(extra: string[] = []): Promise<MigrationJson> {
  const to = otherHost(await host());
  return h.ferryJson<MigrationJson>(['vm', 'migrate', VM, '--to', to, ...extra]);
}

/** A migration that cannot converge (the guest dirties faster than the link), waited for until it sends. */
async function startSlow(): Promise<MigrationJson> {
  const m = await migrate(['--bandwidth', '4M']);
  return waitFor(
    `migration ${m.id} to transfer`,
    async () => {
      const cur = await h.migrationShow(m.id);
      assert.ok(!FINAL_STATES.includes(cur.state), `ended early: ${JSON.stringify(cur)}`);
      return cur.state === 'transferring' && (cur.transferredBytes ?? 0) > 1 << 20 ? cur : null;
    },
    30_000,
    150,
  );
}

function assertMeasured(m: MigrationJson, probe: 'udp' | 'icmp'): void {
  assert.equal(m.state, 'completed', JSON.stringify(m.error));
  assert.equal(m.guestDowntimeProbe, probe);
  assert.equal(typeof m.guestDowntimeMs, 'number', JSON.stringify(m));
  assert.ok(m.guestDowntimeMs! > 0, `a switch-over the guest's clients notice: ${m.guestDowntimeMs} ms`);
  assert.ok(
    m.totalMs !== null && m.guestDowntimeMs! <= m.totalMs,
    `the gap ${m.guestDowntimeMs} ms within the migration's ${m.totalMs} ms`,
  );
  measured.push(
    `${probe}: ${m.source}→${m.destination} total ${m.totalMs} ms, QEMU downtime ${m.downtimeMs} ms, guest gap ${m.guestDowntimeMs} ms`,
  );
}

describe('guest downtime probes in a two-host lab', { timeout: 480_000 }, () => {
  before(async () => {
    const up = await h.ferry(['lab', 'up', '--hosts', '2', '--name', h.lab, '--json'], 180_000);
    h.state = readLabState({ name: h.lab, dataRoot: h.dataRoot });
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
    const v = await h.ferryJson<VmJson>(['vm', 'create', VM, '--memory', '128M', '--host', 'h1']);
    assert.ok(v.ip, 'the VM has an address on the VM network');
    ip = v.ip.split('/')[0]!;
    await h.guest(VM, ...'dirty start --mib 32 --rate 20'.split(' '));
  });

  after(async () => {
    delete process.env.FERRY_TEST_GUEST_PROBE;
    await h.down(measured);
  });

  it('the tiny guest is measured over UDP by default', async () => {
    assertMeasured(await migrate(['--wait']), 'udp');
  });

  it('measured with ICMP echo: a positive gap within the migration, shown by migration show; no ping left', async () => {
    // The lab starts its controller with this process's environment (and the lab's own serverEnv).
    process.env.FERRY_TEST_GUEST_PROBE = 'icmp';
    h.state = await labRestartServer(h.lab, { dataRoot: h.dataRoot });
    const m = await migrate(['--wait']);
    assertMeasured(m, 'icmp');
    const shown = await h.ferry(['migration', 'show', m.id]);
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, /\(seen from outside the guest, icmp probe\)/);
    await waitFor('no ping left after the migration', () => pings().length === 0, 5_000, 50);
  });

  it('a cancelled migration ends its ping', async () => {
    const m = await startSlow();
    assert.equal(pings().length, 1, 'one ping probes the guest while it migrates');
    await h.ferryJson<MigrationJson>(['migration', 'cancel', m.id]);
    const end = await h.waitFinal(m.id, 30_000);
    assert.equal(end.state, 'cancelled');
    await waitFor('no ping left after the cancel', () => pings().length === 0, 5_000, 50);
  });

  it('a controller killed mid-transfer takes its ping along', async () => {
    const m = await startSlow();
    const probing = pings();
    assert.equal(probing.length, 1);
    const pid = readLabState({ name: h.lab, dataRoot: h.dataRoot })!.server.pid;
    process.kill(pid, 'SIGKILL');
    // Orphans are reaped late here (PID 1): a zombie runs no probe.
    await waitFor('the ping died with the controller', () => pings().length === 0, 5_000, 50);
    h.state = await labRestartServer(h.lab, { dataRoot: h.dataRoot });
    await h.ferry(['migration', 'cancel', m.id]);
    const end = await h.waitFinal(m.id, 60_000);
    assert.ok(FINAL_STATES.includes(end.state));
    assert.equal(pings().length, 0);
  });
});
