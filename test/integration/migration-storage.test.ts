/**
 * Storage and cold migration acceptance (issue #4) in a real two-host lab, through the real CLI: a VM with
 * a local qcow2 disk that the guest wrote moves live (disk mirrored over NBD, TLS on, then off) and cold
 * (state saved to a file, files streamed with sha256), and the guest's own checksum of its disk, its boot
 * id and its dirtied memory must come through every hop; a write made on a destination must survive the
 * next hop; bad requests must be refused with exit 2 and a stable code, changing nothing. One VM is booted
 * once and reused by every case, in order.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import type { MigrationJson } from '../../src/common/migration.ts';
import { readLabState } from '../../src/lab/index.ts';
import { FINAL_STATES, LabHarness, otherHost, waitFor, type VmView } from './helpers.ts';

const VM = 'd1';
const DISK_MIB = 16;
const SEED = 7;
const SEED_AFTER = 11;

const h = new LabHarness('s');
const measured: string[] = [];

const guest = <T>(...cmd: string[]): Promise<T> => h.guest<T>(VM, ...cmd);
const diskSum = async (): Promise<string> => {
  const r = await guest<{ ok: boolean; sum: string }>('disk', 'sum', '/dev/vda', String(DISK_MIB));
  assert.equal(r.ok, true, `disk sum: ${JSON.stringify(r)}`);
  return r.sum;
};
const diskFill = async (seed: number): Promise<string> => {
  const r = await guest<{ ok: boolean; sum: string }>('disk', 'fill', '/dev/vda', String(DISK_MIB), String(seed));
  assert.equal(r.ok, true, `disk fill: ${JSON.stringify(r)}`);
  return r.sum;
};

function figures(what: string, m: MigrationJson, wallMs: number): void {
  const mib = (n: number | null | undefined): number => Math.round((n ?? 0) / 2 ** 20);
  measured.push(
    `${what}: total ${m.totalMs} ms (CLI ${wallMs} ms), QEMU downtime ${m.downtimeMs ?? '-'} ms, guest gap ${m.guestDowntimeMs ?? '-'} ms, ${mib(m.transferredBytes)} MiB sent` +
      (m.progress?.disk ? `, disk ${mib(m.progress.disk.transferredBytes)}/${mib(m.progress.disk.totalBytes)} MiB` : ''),
  );
}

/** `vm migrate … --wait --json`, timed; the document is the job at its end. */
async function migrate(to: string, extra: string[] = []): Promise<{ m: MigrationJson; wallMs: number }> {
  const t0 = Date.now();
  const m = await h.ferryJson<MigrationJson>(['vm', 'migrate', VM, '--to', to, '--wait', ...extra], [0, 1]);
  return { m, wallMs: Date.now() - t0 };
}

/** After a completed hop: the same guest runs on `to` alone, memory and disk intact, nothing left on `from`. */
async function assertMoved(from: string, to: string, bootId: string, sum: string, what: string): Promise<void> {
  const v = await h.vmShow(VM);
  assert.equal(v.host, to, `${what}: vm show host`);
  assert.equal(v.state, 'running', `${what}: vm show state`);
  assert.equal(v.bootId, bootId, `${what}: the same guest, not a reboot`);
  const info = await guest<{ bootId: string }>('info');
  assert.equal(info.bootId, bootId, `${what}: guest info boot id`);
  assert.equal(await diskSum(), sum, `${what}: the guest's disk checksum`);
  const verify = await guest<{ ok: boolean }>('dirty', 'verify');
  assert.equal(verify.ok, true, `${what}: dirty verify ${JSON.stringify(verify)}`);
  await waitFor(
    `${what}: source QEMU, qcow2 and run dir on ${from} gone`,
    () => h.qemuPids(from, VM).length === 0 && !h.runDirExists(from, VM),
    10_000,
  );
  assert.equal(h.qemuPids(to, VM).length, 1, `${what}: one QEMU on ${to}`);
}

/** A refused request: exit 2, the expected code, no job created, the VM untouched. */
async function assertRefused(args: string[], code: string, host: string, bootId: string): Promise<void> {
  const before = await h.ferryJson<MigrationJson[]>(['migration', 'list', '--vm', VM]);
  const r = await h.ferryRaw(['vm', 'migrate', VM, ...args]);
  assert.equal(r.code, 2, `migrate ${args.join(' ')}: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
  const doc = JSON.parse(r.stdout) as { error?: { code: string; message: string } };
  assert.equal(doc.error?.code, code, `migrate ${args.join(' ')}: ${r.stdout}`);
  measured.push(`refused ${args.join(' ')}: ${doc.error?.code}: ${doc.error?.message}`);
  const afterList = await h.ferryJson<MigrationJson[]>(['migration', 'list', '--vm', VM]);
  assert.equal(afterList.length, before.length, `migrate ${args.join(' ')}: no job created`);
  const v = await h.vmShow(VM);
  assert.deepEqual([v.host, v.state, v.bootId], [host, 'running', bootId], `migrate ${args.join(' ')}: VM untouched`);
  assert.equal(h.qemuPids(otherHost(host), VM).length, 0, `migrate ${args.join(' ')}: nothing started elsewhere`);
}

describe('storage and cold migration in a two-host lab', { timeout: 600_000 }, () => {
  let bootId = '';
  let sum = '';

  before(async () => {
    const up = await h.ferry(['lab', 'up', '--hosts', '2', '--name', h.lab, '--json'], 180_000);
    h.state = readLabState({ name: h.lab, dataRoot: h.dataRoot });
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
    assert.ok(h.state);
    const v = await h.ferryJson<VmView>(['vm', 'create', VM, '--memory', '256M', '--host', 'h1', '--disk', '64M']);
    assert.equal(v.host, 'h1');
    assert.equal(v.state, 'running');
    assert.ok(v.bootId, 'the tiny guest reports its boot id');
    bootId = v.bootId;
    sum = await diskFill(SEED);
    assert.match(sum, /^[0-9a-f]+$/);
    // Below what the lab link sustains, so every live hop converges; the memory check runs after each hop.
    await guest(...'dirty start --mib 64 --rate 20'.split(' '));
  });

  after(() => h.down(measured));

  it('live h1→h2 with TLS copies the local disk over NBD: same boot, disk sum and memory intact, source removed', async () => {
    const { m, wallMs } = await migrate('h2');
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    assert.equal(m.mode, 'live');
    assert.equal(m.policy.tls, true);
    assert.equal(m.error, null);
    const disk = m.progress?.disk;
    assert.ok(disk, `the job reports the disk copy: ${JSON.stringify(m.progress)}`);
    assert.equal(disk.totalBytes, 64 * 2 ** 20, 'the whole 64 MiB disk is mirrored');
    assert.equal(disk.ready, true);
    figures('live h1→h2 TLS, 64 MiB disk', m, wallMs);
    await assertMoved('h1', 'h2', bootId, sum, 'live h1→h2');
  });

  it('live h2→h1 with --no-tls: completed, disk sum matches', async () => {
    const { m, wallMs } = await migrate('h1', ['--no-tls']);
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    assert.equal(m.policy.tls, false);
    assert.ok(m.progress?.disk, 'the job reports the disk copy');
    figures('live h2→h1 no TLS, 64 MiB disk', m, wallMs);
    await assertMoved('h2', 'h1', bootId, sum, 'live h2→h1');
  });

  it('cold h1→h2 of the running VM: state saved and restored (same boot), disk intact, source removed only after', async () => {
    // Watch both hosts while it runs: the source copy may disappear only once the destination runs the VM.
    let watching = true;
    let early = '';
    const watcher = (async () => {
      while (watching) {
        if (!h.runDirExists('h1', VM) && h.qemuPids('h2', VM).length === 0 && !early) {
          early = 'the source run dir was gone while no QEMU ran on the destination';
        }
        await sleep(25);
      }
    })();
    let res: { m: MigrationJson; wallMs: number };
    try {
      res = await migrate('h2', ['--mode', 'cold']);
    } finally {
      watching = false;
      await watcher;
    }
    const { m, wallMs } = res;
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    assert.equal(m.mode, 'cold');
    assert.equal(early, '');
    assert.equal(typeof m.guestDowntimeMs, 'number', `guestDowntimeMs present: ${JSON.stringify(m)}`);
    assert.ok(m.guestDowntimeMs! > 0 && m.guestDowntimeMs! < 60_000, `guest gap plausible: ${m.guestDowntimeMs}`);
    // The saved state and the disk both crossed: more than the disk alone.
    assert.ok((m.transferredBytes ?? 0) > 0, 'bytes were streamed');
    figures('cold h1→h2, 64 MiB disk + saved state', m, wallMs);
    await assertMoved('h1', 'h2', bootId, sum, 'cold h1→h2');
  });

  it('a write made after a live hop lands on the destination disk and survives a cold hop', async () => {
    const live = await migrate('h1');
    assert.equal(live.m.state, 'completed', JSON.stringify(live.m.error));
    figures('live h2→h1 TLS (before the new write)', live.m, live.wallMs);
    const newSum = await diskFill(SEED_AFTER);
    assert.notEqual(newSum, sum, 'another seed, another checksum');
    sum = newSum;
    assert.equal(await diskSum(), sum, 'read back on h1 before the hop');
    const { m, wallMs } = await migrate('h2', ['--mode', 'cold']);
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    figures('cold h1→h2 after the new write', m, wallMs);
    await assertMoved('h1', 'h2', bootId, sum, 'cold h1→h2 after the write');
  });

  it('bad input for migrate: exit 2, a stable code, nothing changed', async () => {
    const host = (await h.vmShow(VM)).host;
    assert.equal(host, 'h2');
    await assertRefused(['--to', host], 'FERRY_E_BAD_INPUT', host, bootId);
    await assertRefused(['--to', 'nope'], 'FERRY_E_HOST_NOT_FOUND', host, bootId);
    await assertRefused(['--to', 'h1', '--mode', 'warp'], 'FERRY_E_BAD_INPUT', host, bootId);
    await assertRefused(['--to', 'h1', '--storage', 'shared'], 'FERRY_E_BAD_INPUT', host, bootId);

    // A second migration of a VM that is being migrated.
    const first = await h.ferryJson<MigrationJson>(['vm', 'migrate', VM, '--to', 'h1', '--bandwidth', '5M']);
    try {
      const r = await h.ferryRaw(['vm', 'migrate', VM, '--to', 'h1']);
      assert.equal(r.code, 2, `second migrate: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
      const doc = JSON.parse(r.stdout) as { error?: { code: string } };
      assert.equal(doc.error?.code, 'FERRY_E_MIGRATION_ACTIVE', r.stdout);
      const list = await h.ferryJson<MigrationJson[]>(['migration', 'list', '--vm', VM]);
      assert.equal(list.filter((x) => !FINAL_STATES.includes(x.state)).length, 1, 'one active job only');
    } finally {
      await h.ferryJson<MigrationJson>(['migration', 'cancel', first.id], [0, 2]);
    }
    const end = await h.waitFinal(first.id, 60_000);
    assert.equal(end.state, 'cancelled', JSON.stringify(end.error));
    measured.push(`cancel of the slow hop: ${end.state} after ${end.totalMs} ms`);
    const v = await waitFor(
      'vm show running on h2 after the cancel',
      async () => {
        const cur = await h.vmShow(VM);
        return cur.state === 'running' && cur.host === 'h2' ? cur : null;
      },
      15_000,
    );
    assert.equal(v.bootId, bootId);
    await waitFor('h1 cleaned after the cancel', () => h.qemuPids('h1', VM).length === 0 && !h.runDirExists('h1', VM), 20_000);
    assert.equal(await diskSum(), sum, 'the disk is intact after the cancelled copy');
    const verify = await guest<{ ok: boolean }>('dirty', 'verify');
    assert.equal(verify.ok, true, JSON.stringify(verify));
  });
});
