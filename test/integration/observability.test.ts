/**
 * Logs and metrics of a real lab (issue #10): after one live migration the controller's /metrics has
 * observations in the migration histograms and a completed count, each agent's metrics answer through the
 * controller, `promtool check metrics` accepts every text (when promtool is installed), no log file of the
 * lab holds the admin token or any token-shaped string, and every log line about the migration is JSON
 * with its id.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { after, before, describe, it } from 'node:test';
import type { MigrationJson } from '../../src/common/migration.ts';
import { TestCluster } from '../../src/testing/cluster.ts';

const VM = 'o1';
const cluster = new TestCluster('obs');
let migration: MigrationJson;

/** GET `path` from the lab's controller as text (the CLI has no command for raw /metrics). */
function getText(path: string): Promise<{ status: number; body: string }> {
  const s = cluster.current.server;
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, s.url), { ca: s.caCertPem, headers: { authorization: `Bearer ${s.adminToken}` }, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const value = (text: string, series: string): number => {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  assert.ok(line, `${series} in the metrics`);
  return Number(line.split(' ').at(-1));
};

const hasPromtool = spawnSync('promtool', ['--version']).status === 0;
function promtoolCheck(text: string, what: string): void {
  if (!hasPromtool) return;
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  assert.equal(r.status, 0, `promtool check metrics of ${what}: ${r.stdout}${r.stderr}`);
}

describe('observability: JSON logs without secrets, Prometheus metrics', { timeout: 10 * 60_000 }, () => {
  before(async () => {
    await cluster.up(2);
    await cluster.ferryJson(['vm', 'create', VM, '--memory', '64M', '--host', 'h1']);
    migration = await cluster.ferryJson<MigrationJson>(['vm', 'migrate', VM, '--to', 'h2', '--wait'], [0, 1]);
    assert.equal(migration.state, 'completed', JSON.stringify(migration.error));
  });

  after(async () => {
    await cluster.down();
  });

  it("the controller's histograms have observations and the outcome counter counted the migration", async () => {
    const { status, body } = await getText('/metrics');
    assert.equal(status, 200);
    assert.ok(value(body, 'ferry_migration_duration_seconds_count{mode="live"}') >= 1);
    assert.ok(value(body, 'ferry_migration_downtime_seconds_count{mode="live"}') >= 1);
    // Observed exactly when the migration reports a guest downtime (null when the probe saw fewer than two replies).
    const guestObserved = body.includes('ferry_migration_guest_downtime_seconds_count{mode="live"}') ? value(body, 'ferry_migration_guest_downtime_seconds_count{mode="live"}') : 0;
    assert.equal(guestObserved, migration.guestDowntimeMs === null ? 0 : 1, `guest downtime ${migration.guestDowntimeMs} (${migration.guestDowntimeProbe}) vs ${guestObserved} observations`);
    console.log(`# observability: guest downtime ${migration.guestDowntimeMs} ms by ${migration.guestDowntimeProbe}`);
    assert.ok(value(body, 'ferry_migrations_total{result="completed",code="none"}') >= 1);
    assert.ok(value(body, 'ferry_migration_transferred_bytes_total') > 0);
    assert.match(body, /^ferry_api_request_duration_seconds_count\{method="POST",route="\/api\/v1\/vms\/:name\/migrate",status="202"\} 1$/m);
    assert.match(body, /^ferry_build_info\{component="controller",/m);
    promtoolCheck(body, 'the controller');
  });

  it("each agent's metrics answer through the controller, with the phases it ran", async () => {
    const h1 = await getText('/metrics/hosts/h1');
    const h2 = await getText('/metrics/hosts/h2');
    assert.equal(h1.status, 200, h1.body);
    assert.equal(h2.status, 200, h2.body);
    assert.equal(value(h1.body, 'ferry_agent_qemu_processes'), 0, 'the source QEMU quit');
    assert.equal(value(h2.body, 'ferry_agent_qemu_processes'), 1);
    assert.equal(value(h2.body, `ferry_agent_vm_state{vm="${VM}",state="running",qemu_status="running"}`), 1);
    assert.ok(value(h1.body, 'ferry_agent_migration_phase_duration_seconds_count{phase="perform",result="ok"}') >= 1);
    assert.ok(value(h1.body, 'ferry_agent_migration_phase_duration_seconds_count{phase="confirm",result="ok"}') >= 1);
    assert.ok(value(h2.body, 'ferry_agent_migration_phase_duration_seconds_count{phase="prepare",result="ok"}') >= 1);
    assert.ok(value(h2.body, 'ferry_agent_migration_phase_duration_seconds_count{phase="finish",result="ok"}') >= 1);
    promtoolCheck(h1.body, 'the agent of h1');
    promtoolCheck(h2.body, 'the agent of h2');
    assert.equal((await getText('/metrics/hosts/nohost')).status, 404);
    if (!hasPromtool) console.log('# promtool not installed: `promtool check metrics` skipped');
  });

  it('no log of the lab holds a token; every line about the migration is JSON with its id', () => {
    const s = cluster.current;
    const files = [s.server.log, ...s.hosts.map((h) => h.log)];
    const texts = files.map((f) => readFileSync(f, 'utf8'));
    for (const [i, text] of texts.entries()) {
      assert.ok(!text.includes(s.server.adminToken), `the admin token in ${files[i]}`);
      // Admin and join tokens are `<16 hex>.<43 base64url>` (tokens.ts).
      assert.doesNotMatch(text, /[a-z0-9]{16}\.[A-Za-z0-9_-]{43}/, `a token-shaped string in ${files[i]}`);
    }
    // Join tokens are one-time and the lab does not keep them: the shape check above is what finds them.
    const grep = spawnSync('grep', ['-rlF', s.server.adminToken, s.dir, '--include=*.log'], { encoding: 'utf8' });
    assert.equal(grep.stdout.trim(), '', 'no .log file under the lab dir has the admin token');

    const id = migration.id;
    const phases = new Map<string, Set<string>>();
    for (const [i, text] of texts.entries()) {
      const about = text.split('\n').filter((l) => l.includes(id));
      for (const l of about) {
        let j: Record<string, unknown>;
        try {
          j = JSON.parse(l) as Record<string, unknown>;
        } catch {
          assert.fail(`not a JSON line in ${files[i]}: ${l}`);
        }
        assert.equal(j.migration, id, `a line about ${id} without its id: ${l}`);
        assert.equal(typeof j.level, 'string');
        if (typeof j.phase === 'string') (phases.get(files[i]!) ?? phases.set(files[i]!, new Set()).get(files[i]!)!).add(j.phase);
      }
      if (i > 0) assert.ok(about.length > 0, `${files[i]} logs the migration`);
    }
    const [srv, h1, h2] = files.map((f) => phases.get(f!) ?? new Set<string>());
    assert.ok(srv!.has('confirm') || srv!.has('perform'), `controller phases: ${[...srv!]}`);
    for (const p of ['setup', 'transfer', 'perform', 'confirm']) assert.ok(h1!.has(p), `h1 logs ${p}: ${[...h1!]}`);
    for (const p of ['prepare', 'finish']) assert.ok(h2!.has(p), `h2 logs ${p}: ${[...h2!]}`);
    // Durations: each phase's end line carries one.
    const ends = texts[1]!.split('\n').filter((l) => l.includes(id) && l.includes('"durationMs"'));
    assert.ok(ends.length >= 3, `h1's phase lines with durations: ${ends.length}`);
  });
});
