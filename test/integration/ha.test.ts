/**
 * Two controllers on one store, one leading (docs/ha.md): the leader is SIGKILLed while a live migration
 * transfers; the standby takes the lease within 10 s, announces its term to the agents and recovers the job
 * by the restart rules; the guest then runs on exactly one host (both hosts' QEMUs checked) with its memory
 * verified from inside; the old leader, restarted, only follows, and an agent refuses its stale term. A CLI
 * whose context lists the dead leader first goes on to the standby; one pointed at the old leader alone,
 * now a follower, has its writes redirected to the leader.
 *
 * The two controllers share the lab's data dir (its CA and controller key, which agents pin) and one real
 * PostgreSQL server (Debian's, started for the test on 127.0.0.1: `--store postgres://…`), as controllers on
 * two machines would share theirs.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { writeContext } from '../../src/client/config.ts';
import type { MigrationJson } from '../../src/common/migration.ts';
import { toFerryError } from '../../src/common/errors.ts';
import { AgentPool } from '../../src/controller/agent-client.ts';
import { loadOrCreateCa } from '../../src/controller/ca.ts';
import { labRestartServer, labStartController } from '../../src/lab/index.ts';
import { pidGone, TestCluster, waitUntil } from '../../src/testing/cluster.ts';
import { migrateArgs, reachPoint } from '../../src/testing/faults.ts';
import { checkInvariants } from '../../src/testing/invariants.ts';
import { createVm, type VmUnderTest } from '../../src/testing/matrix.ts';
import { startPostgres, type PostgresServer } from '../../src/testing/postgres.ts';

const cluster = new TestCluster('ha');
let standby: { pid: number; url: string; log: string } | undefined;
let vm: VmUnderTest;
let pg: PostgresServer | undefined;

/** The terms a controller's log says it won (`leading in term N`), from byte `from` on. */
function termsWon(log: string, from = 0): number[] {
  if (!existsSync(log)) return [];
  const out: number[] = [];
  for (const line of readFileSync(log, 'utf8').slice(from).split('\n')) {
    if (!line.includes('leading in term')) continue;
    try {
      const term = (JSON.parse(line) as { term?: unknown }).term;
      if (typeof term === 'number') out.push(term);
    } catch {
      /* a partial line */
    }
  }
  return out;
}

/** A write sent to `base` with the admin token: status and Location, no redirect followed. */
function post(base: string, path: string): Promise<{ status: number; location: string | undefined }> {
  const s = cluster.current.server;
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, base), {
      method: 'POST',
      ca: s.caCertPem,
      headers: { authorization: `Bearer ${s.adminToken}`, 'content-type': 'application/json' },
      agent: false,
    }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, location: res.headers.location }));
    });
    req.on('error', reject);
    req.end('{}');
  });
}

describe('two controllers, one leader', { timeout: 6 * 60_000 }, () => {
  before(async () => {
    pg = await startPostgres();
    await cluster.up(2, { serverArgs: ['--ha', '--id', 'c1', '--store', pg.url] });
    vm = await createVm(cluster, 1);
    standby = await labStartController(cluster.lab, { id: 'c2', args: ['--ha', '--store', pg.url], dataRoot: cluster.dataRoot, env: { FERRY_TEST_HOLD_DIR: cluster.holdDir } });
  });

  after(async () => {
    try {
      await cluster.down(); // stops the standby too: it runs with the lab's --data
    } finally {
      if (standby !== undefined && !pidGone(standby.pid)) process.kill(standby.pid, 'SIGKILL');
      await pg?.stop();
    }
  });

  it('the leader dies mid-transfer: the standby takes over, the job ends, the VM runs once, the old term is refused', async () => {
    assert.ok(standby);
    const first = cluster.current.server;
    assert.deepEqual(termsWon(first.log), [1], 'c1 leads the new store in term 1');
    assert.deepEqual(termsWon(standby.log), [], 'c2 follows');
    const redirected = await post(standby.url, `/api/v1/vms/${vm.name}/migrate`);
    assert.equal(redirected.status, 307, 'a follower redirects writes');
    assert.equal(redirected.location, `${first.url}/api/v1/vms/${vm.name}/migrate`);

    const started = await cluster.ferryJson<MigrationJson>(['vm', 'migrate', vm.name, '--to', 'h2', ...migrateArgs('precopy')]);
    await reachPoint(cluster, 'precopy', started.id);
    const killedAt = Date.now();
    process.kill(first.pid, 'SIGKILL');
    const [term] = await waitUntil('c2 to lead', () => (termsWon(standby!.log).length > 0 ? termsWon(standby!.log) : null), 15_000, 50);
    const takeoverMs = Date.now() - killedAt;
    console.log(`# takeover ${takeoverMs} ms after SIGKILL, term ${term}`);
    assert.ok(takeoverMs < 10_000, `the standby leads within 10 s (${takeoverMs} ms)`);
    assert.equal(term, 2);

    // A context that names both controllers, the dead one first: the CLI goes on to the next.
    const oldUrl = first.url;
    writeContext(cluster.lab, { server: oldUrl, servers: [oldUrl, standby.url], token: first.adminToken, caCertPem: first.caCertPem }, cluster.configFile);
    const hosts = await cluster.ferryJson<{ name: string }[]>(['host', 'list']);
    assert.deepEqual(hosts.map((h) => h.name).sort(), ['h1', 'h2'], 'the CLI reached the new leader past the dead one');
    first.url = standby.url; // the test's own reads (waitFinal) go to the leader
    const job = await cluster.waitFinal(started.id, 120_000);
    console.log(`# job ${job.id} ${job.state}${job.error ? ` ${job.error.code}` : ''}, timeline ${job.timeline?.map((t) => t.state).join(' → ') ?? ''}`);
    const inv = await checkInvariants({ cluster, cell: 'ha', vm: vm.name, bootId: vm.bootId, source: 'h1', destination: 'h2', job, expect: { host: null } });
    assert.deepEqual(inv.violations.map((v) => v.message), [], 'the guest runs on exactly one host, same boot, memory verified');

    // The old leader comes back: a follower now, and an order of its term is refused by the agents.
    const logFrom = statSync(first.log).size;
    const restarted = await labRestartServer(cluster.lab, { dataRoot: cluster.dataRoot });
    const back = await post(restarted.server.url, `/api/v1/vms/${vm.name}/migrate`);
    assert.equal(back.status, 307, 'the old leader, restarted, does not lead');
    assert.equal(back.location, `${standby.url}/api/v1/vms/${vm.name}/migrate`);
    // A CLI pointed at the old leader only, now a follower: its write is redirected to the leader and done there.
    writeContext(cluster.lab, { server: restarted.server.url, token: first.adminToken, caCertPem: first.caCertPem }, cluster.configFile);
    const created = await cluster.ferryJson<{ id: string; role: string }>(['token', 'create', '--role', 'read-only']);
    assert.equal(created.role, 'read-only');
    const tokens = await cluster.ferryJson<{ id: string }[]>(['token', 'list']);
    assert.ok(tokens.some((t) => t.id === created.id), 'the write went through the follower to the leader');
    const { ca } = await loadOrCreateCa(join(restarted.server.dataDir, 'pki'));
    const h1 = restarted.hosts.find((h) => h.name === 'h1')!;
    const stale = new AgentPool({ caCertPem: ca.caCertPem, ...ca.controllerClient }, () => 1);
    const current = new AgentPool({ caCertPem: ca.caCertPem, ...ca.controllerClient }, () => term);
    try {
      const refused = await stale.client('h1', h1.url).call('listVms').then(() => null, (err: unknown) => toFerryError(err));
      assert.equal(refused?.code, 'FERRY_E_STALE_TERM', 'an agent refuses term 1 once it has seen term 2');
      assert.deepEqual(refused?.details, { newestTerm: term, requestTerm: 1 });
      assert.ok(Array.isArray(await current.client('h1', h1.url).call('listVms')), 'the current term is served');
    } finally {
      await stale.close();
      await current.close();
    }
    assert.deepEqual(termsWon(restarted.server.log, logFrom), [], 'the restarted controller never led again');
  });
});
