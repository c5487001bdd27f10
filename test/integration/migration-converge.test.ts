/**
 * Convergence acceptance ("migrations that converge") in a real two-host lab, through the real CLI: a guest
 * that keeps dirtying memory moves with `--postcopy always`; a guest that dirties faster than the link moves
 * with `--postcopy auto` only because the policy's ladder raises the downtime limit and then switches to
 * post-copy; and the same overload with `--postcopy never` ends honestly at its deadline, the VM untouched on
 * the source. One VM is booted once; the guest's own pattern check (`dirty verify`) and its boot id tell
 * whether the guest that arrived is the guest that left, with every write.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { MigrationJson } from '../../src/common/migration.ts';
import { PACKAGE_ROOT } from '../../src/common/paths.ts';
import { labDown, readLabState, type LabState } from '../../src/lab/index.ts';

const FERRY = join(PACKAGE_ROOT, 'bin', 'ferry.js');
const VM = 'c1';
/**
 * The overload: a small region rewritten far faster than the link sends it. Small, so that a pre-copy pass
 * (the whole region: every page of it is dirty again by the end of the pass) is short and the default
 * ladder (4 passes a step) climbs within seconds; larger than what the link moves within the downtime
 * budget (8 MiB/s × 300 ms = 2.4 MiB), so pre-copy alone never converges.
 */
const DIRTY_MIB = 6;
const DIRTY_RATE = 48;
const SLOW_LINK = 8;

const lab = 'c' + randomBytes(2).toString('hex');
const root = mkdtempSync(join(tmpdir(), 'ferry-migration-converge-'));
const dataRoot = join(root, 'labs');
const env: NodeJS.ProcessEnv = {
  ...process.env,
  FERRY_LAB_DIR: dataRoot,
  FERRY_CONFIG: join(root, 'config.json'),
};
let state: LabState | null = null;
const measured: string[] = [];

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function ferry(args: string[], timeoutMs = 180_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [FERRY, ...args],
      { env, timeout: timeoutMs, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

/** Runs a `--json` command and parses its one document; `okCodes` are the exit codes the caller expects. */
async function ferryJson<T>(args: string[], okCodes: number[] = [0]): Promise<T> {
  // Everything after `--` belongs to the guest tool, so --json goes before it.
  const dd = args.indexOf('--');
  const r = await ferry(dd < 0 ? [...args, '--json'] : [...args.slice(0, dd), '--json', ...args.slice(dd)]);
  assert.ok(okCodes.includes(r.code), `ferry ${args.join(' ')} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

interface VmView {
  name: string;
  host: string;
  state: string;
  bootId: string | null;
}

const vmShow = (): Promise<VmView> => ferryJson<VmView>(['vm', 'show', VM]);
const guest = <T>(...cmd: string[]): Promise<T> => ferryJson<T>(['vm', 'guest', VM, '--', ...cmd]);
const other = (host: string): string => (host === 'h1' ? 'h2' : 'h1');

function hostDir(host: string): string {
  assert.ok(state);
  return join(state.dir, 'hosts', host);
}

function cmdline(pid: string): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

function isZombie(pid: string): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

/** QEMU processes of our VM on one lab host, found from /proc by the host's data dir in their argv. */
function qemuPids(host: string): number[] {
  const dir = hostDir(host) + '/';
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const argv = cmdline(e);
    if (!argv[0]?.includes('qemu-system')) continue;
    if (!argv.some((a) => a.includes(dir))) continue;
    if (!argv.some((a) => a === VM || a.startsWith(`${VM},`))) continue;
    if (isZombie(e)) continue;
    out.push(Number(e));
  }
  return out;
}

const runDirExists = (host: string): boolean => existsSync(join(hostDir(host), 'vms', VM));

async function waitFor<T>(
  what: string,
  fn: () => Promise<T | null | undefined | false> | T | null | undefined | false,
  timeoutMs: number,
  everyMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== null && v !== undefined && v !== false) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}${lastErr ? `: ${String(lastErr)}` : ''}`);
    await sleep(everyMs);
  }
}

/** Seconds from the job's start, for the measured lines. */
const since = (m: MigrationJson, at: string): string =>
  `${((Date.parse(at) - Date.parse(m.startedAt)) / 1000).toFixed(1)}s`;

function describeRun(what: string, m: MigrationJson): string {
  const steps = m.escalations
    .map((e) => {
      const s = e.step;
      const detail = s.kind === 'downtime-limit' ? ` ${s.fromMs}→${s.toMs}ms` : s.kind === 'abort' ? ` ${s.code}` : '';
      return `${s.kind}${detail} @${since(m, e.at)}`;
    })
    .join(', ');
  const pc = m.timeline.find((t) => t.state === 'postcopy');
  return (
    `${what}: ${m.state}${m.error ? ` ${m.error.code}` : ''}, total ${m.totalMs} ms, QEMU ${m.qemuTotalMs} ms, ` +
    `downtime ${m.downtimeMs} ms, guest gap ${m.guestDowntimeMs} ms, ${m.iterations} passes, ` +
    `${Math.round((m.transferredBytes ?? 0) / 2 ** 20)} MiB sent` +
    (pc ? `, post-copy @${since(m, pc.at)}` : '') +
    (steps ? `; escalations: ${steps}` : '')
  );
}

/** Migrates with --wait; a failed migration exits 1 and still prints the job. */
async function migrate(to: string, extra: string[], okCodes = [0]): Promise<MigrationJson> {
  return ferryJson<MigrationJson>(['vm', 'migrate', VM, '--to', to, '--wait', ...extra], okCodes);
}

/** The guest arrived whole on `host`, the other host holds nothing of it. */
async function assertRunsOn(host: string, bootId: string, what: string): Promise<void> {
  const v = await waitFor(
    `${what}: vm show running on ${host}`,
    async () => {
      const cur = await vmShow();
      return cur.state === 'running' && cur.host === host ? cur : null;
    },
    15_000,
  );
  assert.equal(v.bootId, bootId, `${what}: the guest rebooted`);
  const info = await guest<{ bootId: string }>('info');
  assert.equal(info.bootId, bootId, `${what}: guest info boot id`);
  const verify = await guest<{ ok: boolean }>('dirty', 'verify');
  assert.equal(verify.ok, true, `${what}: dirty verify ${JSON.stringify(verify)}`);
  const gone = other(host);
  await waitFor(
    `${what}: nothing left on ${gone}`,
    () => qemuPids(gone).length === 0 && !runDirExists(gone),
    20_000,
  );
  assert.equal(qemuPids(host).length, 1, `${what}: one QEMU on ${host}`);
}

describe('convergence and post-copy in a two-host lab', { timeout: 300_000 }, () => {
  let bootId = '';

  before(async () => {
    const up = await ferry(['lab', 'up', '--hosts', '2', '--name', lab, '--json'], 180_000);
    state = readLabState({ name: lab, dataRoot });
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
    assert.ok(state);
    const v = await ferryJson<VmView>(['vm', 'create', VM, '--memory', '256M', '--host', 'h1']);
    assert.equal(v.state, 'running');
    assert.ok(v.bootId, 'the tiny guest reports its boot id');
    bootId = v.bootId;
    await guest('dirty', 'start', '--mib', String(DIRTY_MIB), '--rate', String(DIRTY_RATE));
  });

  after(async () => {
    try {
      await labDown({ name: lab, dataRoot });
    } finally {
      rmSync(root, { recursive: true, force: true });
      if (measured.length) console.log(`# measured:\n${measured.map((l) => `#   ${l}`).join('\n')}`);
    }
  });

  it('--postcopy always: switches to post-copy after the first pass and completes, guest intact', async () => {
    const from = (await vmShow()).host;
    const to = other(from);
    // A link the guest outruns: pre-copy alone could not finish, so only post-copy can have ended it.
    const m = await migrate(to, ['--postcopy', 'always', '--bandwidth', '32']);
    measured.push(describeRun(`always ${from}→${to}`, m));
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    assert.equal(m.policy.postcopy, 'always');
    const states = m.timeline.map((t) => t.state);
    assert.ok(states.includes('postcopy'), `passed through postcopy: ${states.join(' → ')}`);
    assert.ok(states.indexOf('postcopy') < states.indexOf('completed'));
    assert.equal(typeof m.downtimeMs, 'number');
    await assertRunsOn(to, bootId, 'postcopy always');
  });

  it('--postcopy auto on an overloaded link: downtime limit raised, then post-copy, completes', async () => {
    const from = (await vmShow()).host;
    const to = other(from);
    const m = await migrate(to, ['--postcopy', 'auto', '--bandwidth', String(SLOW_LINK)]);
    measured.push(describeRun(`auto ${from}→${to}`, m));
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    const kinds = m.escalations.map((e) => e.step.kind);
    assert.ok(kinds.length >= 2, `escalations: ${JSON.stringify(m.escalations)}`);
    assert.equal(kinds[0], 'downtime-limit');
    assert.equal(kinds.at(-1), 'postcopy');
    assert.equal(kinds.filter((k) => k === 'postcopy').length, 1);
    assert.ok(!kinds.includes('abort'));
    // The ladder: each raise doubles the limit up to the budget, and post-copy comes only at the budget.
    let limit = m.policy.initialDowntimeMs;
    for (const e of m.escalations) {
      if (e.step.kind !== 'downtime-limit') continue;
      assert.equal(e.step.fromMs, limit);
      assert.equal(e.step.toMs, Math.min(m.policy.maxDowntimeMs, limit * 2));
      limit = e.step.toMs;
    }
    assert.equal(limit, m.policy.maxDowntimeMs, 'post-copy only once the downtime budget was reached');
    assert.ok(m.timeline.some((t) => t.state === 'postcopy'), 'passed through postcopy');
    assert.ok((m.totalMs ?? Infinity) < 60_000, `took ${m.totalMs} ms`);
    await assertRunsOn(to, bootId, 'postcopy auto');
  });

  it('--postcopy never on an overloaded link: the deadline fails it, the VM stays on the source', async () => {
    const from = (await vmShow()).host;
    const to = other(from);
    const m = await migrate(to, ['--postcopy', 'never', '--bandwidth', String(SLOW_LINK), '--deadline', '20s'], [1]);
    measured.push(describeRun(`never ${from}→${to}`, m));
    assert.equal(m.state, 'failed');
    assert.equal(m.error?.code, 'FERRY_E_MIGRATION_TIMEOUT', JSON.stringify(m.error));
    const kinds = m.escalations.map((e) => e.step.kind);
    assert.ok(kinds.includes('downtime-limit'), `escalations: ${JSON.stringify(m.escalations)}`);
    assert.ok(!kinds.includes('postcopy'));
    assert.equal(kinds.at(-1), 'abort');
    assert.ok(!m.timeline.some((t) => t.state === 'postcopy'));
    await assertRunsOn(from, bootId, 'deadline');
  });
});
