/**
 * Runs benchmark scenarios for real: per scenario its own 2-host lab (unique name, torn down in `finally`,
 * and on SIGINT/SIGTERM), one tiny-guest VM, then rounds of live migrations hopping h1 ⇄ h2 with the
 * variants interleaved run by run (A B, B A, A B …) so that the machine's noise hits each alike. After
 * every hop the guest checks its own memory pattern. Speed is only ever measured here, never asserted in tests.
 */
import { randomBytes } from 'node:crypto';
import { cpus, release } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError, toFerryError } from '../common/errors.ts';
import { migrationFigures, type MigrationJson } from '../common/migration.ts';
import type { HostJson } from '../common/api.ts';
import { ApiClient, enc } from '../client/api.ts';
import { labDown, labUp } from '../lab/index.ts';
import { isFinal } from '../common/states.ts';
import {
  BENCH_RESULT_VERSION,
  fmtMs,
  summarize,
  type BenchResult,
  type BenchRun,
  type MachineInfo,
  type ScenarioResult,
} from './report.ts';
import type { BenchScenario, BenchVariant } from './scenarios.ts';

const VM = 'bench1';
export const MAX_RUNS = 50;

export interface RunBenchOptions {
  /** Migrations per variant and scenario (default 3). */
  runs?: number;
  /** Progress lines for humans. */
  log?: (line: string) => void;
  /** Labs' root directory (default: the lab's own default). */
  dataRoot?: string;
  /** A migration still running after this is cancelled and counted as failed (default 3 min). */
  migrationTimeoutMs?: number;
  /** Pause between migrations, so that the guest's dirtying and the hosts settle (default 1 s). */
  settleMs?: number;
}

interface GuestReply {
  ok?: boolean;
  bootId?: string;
  dirty?: { running?: boolean; passes?: number };
  error?: string;
  badPages?: number;
  firstBadPage?: number;
}

export function validateRuns(runs: unknown): number {
  const n = typeof runs === 'string' && /^\d+$/.test(runs) ? Number(runs) : runs;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_RUNS) {
    throw new FerryError(
      'FERRY_E_USAGE',
      `Bad --runs ${JSON.stringify(runs)}: a whole number from 1 to ${MAX_RUNS}.`,
    );
  }
  return n;
}

function errJson(err: unknown): { code: string; message: string } {
  const fe = toFerryError(err);
  return { code: fe.code, message: fe.message };
}

/** Runs every scenario given, one after the other, each in its own lab. */
export async function runBench(
  scenarios: readonly BenchScenario[],
  opts: RunBenchOptions = {},
): Promise<BenchResult> {
  const runs = validateRuns(opts.runs ?? 3);
  const startedAt = new Date().toISOString();
  const machine: MachineInfo = {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model.trim() ?? 'unknown',
    kernel: release(),
    node: process.version,
    qemu: null,
    accel: null,
  };
  const results: ScenarioResult[] = [];
  for (const s of scenarios) {
    const r = await runScenario(s, { ...opts, runs }, machine);
    results.push(r);
    // Interrupted: the signal handler is removing the lab and will exit; no new lab may start meanwhile.
    if (r.error?.code === 'FERRY_E_ABORTED') break;
  }
  return {
    version: BENCH_RESULT_VERSION,
    startedAt,
    finishedAt: new Date().toISOString(),
    runsPerVariant: runs,
    machine,
    scenarios: results,
    ok: results.every((r) => r.error === null && r.variants.every((v) => v.allOk)),
  };
}

/**
 * One scenario in a fresh lab. Never throws for what happens inside the lab: a failure stops the scenario
 * and is recorded in its result (with the runs done so far), so that the other scenarios still run.
 * `machine` is filled in from the first lab's inventory when it still lacks the QEMU version.
 */
export async function runScenario(
  s: BenchScenario,
  opts: RunBenchOptions,
  machine?: MachineInfo,
): Promise<ScenarioResult> {
  const runs = validateRuns(opts.runs ?? 3);
  const log = opts.log ?? (() => undefined);
  const lab = `b${randomBytes(3).toString('hex')}`;
  const labOpts = opts.dataRoot === undefined ? { name: lab } : { name: lab, dataRoot: opts.dataRoot };
  const startedAt = new Date().toISOString();
  const done: BenchRun[] = [];
  let error: { code: string; message: string } | null = null;
  let client: ApiClient | null = null;

  // An interrupted benchmark must not leave namespaces and QEMU processes behind. The main flow may be
  // stuck in a long await (lab up, a migration), so the handler removes the lab itself and exits.
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    interrupted = true;
    log(`${sig}: removing lab ${lab}`);
    void labDown(labOpts)
      .catch(() => undefined)
      .finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    log(`${s.name}: lab ${lab} (2 hosts)`);
    const state = await labUp({ ...labOpts, hosts: 2, writeConfig: false });
    client = new ApiClient({
      server: state.server.url,
      token: state.server.adminToken,
      caCertPem: state.server.caCertPem,
    });
    const c = client;
    const [h1, h2] = [state.hosts[0]!.name, state.hosts[1]!.name];
    if (machine && machine.qemu === null) {
      const inv = (await c.get<HostJson[]>('/api/v1/hosts')).find((h) => h.inventory)?.inventory;
      machine.qemu = inv?.qemu.version ?? null;
      machine.accel = inv?.accel ?? null;
    }

    log(`${s.name}: VM ${VM}, ${s.memory}, on ${h1}`);
    await c.post('/api/v1/vms', { name: VM, memory: s.memory, host: h1 });
    const guest = (command: string) => guestCommand(c, command);
    const setup = async (): Promise<void> => {
      for (const step of s.setup) {
        if ('guest' in step) {
          const r = await guest(step.guest);
          if (r.ok !== true)
            throw new FerryError(
              'FERRY_E_GUEST_COMMAND',
              `The guest refused \`${step.guest}\`: ${JSON.stringify(r)}`,
            );
        } else {
          await waitPasses(c, step.waitPasses);
        }
      }
    };
    await setup();
    const bootId = (await guest('info')).bootId ?? null;
    let at = h1;
    for (let round = 1; round <= runs; round++) {
      // Every other round in reverse (A B, B A, …): with two variants and hops alternating h1⇄h2, a fixed
      // order would tie each variant to one direction and one position after the other.
      const order = round % 2 === 1 ? s.variants : [...s.variants].reverse();
      for (const v of order) {
        await sleep(opts.settleMs ?? 1000);
        if (interrupted) throw new FerryError('FERRY_E_ABORTED', 'Interrupted.');
        const to = at === h1 ? h2 : h1;
        const run = await migrateOnce(c, v, round, at, to, bootId, opts.migrationTimeoutMs ?? 180_000);
        if (interrupted) throw new FerryError('FERRY_E_ABORTED', 'Interrupted.');
        done.push(run);
        log(
          `${s.name}: round ${round}/${runs} ${v.name.padEnd(14)} ${at}→${to} ${run.state}` +
            (run.totalMs === null ? '' : ` ${fmtMs(run.totalMs)}`) +
            (run.qemuTotalMs === null
              ? ''
              : ` (QEMU ${fmtMs(run.qemuTotalMs)}, ${run.iterations ?? '?'} passes)`) +
            (run.escalations > 0 ? `, ${run.escalations} escalation(s)` : '') +
            (run.downtimeMs === null ? '' : `, downtime ${fmtMs(run.downtimeMs)}`) +
            (run.state === 'completed'
              ? run.verified
                ? ', memory verified'
                : ', MEMORY CHECK FAILED'
              : '') +
            (run.error ? ` (${run.error.code}: ${run.error.message})` : ''),
        );
        if (run.state === 'completed') at = to;
        // A broken pattern would fail every later check too: start the guest's work afresh.
        if (!run.ok && run.state === 'completed') await setup();
      }
    }
  } catch (err) {
    error = errJson(err);
    log(`${s.name}: stopped: ${error.code}: ${error.message}`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await client?.close().catch(() => undefined);
    if (!interrupted) {
      log(`${s.name}: removing lab ${lab}`);
      await labDown(labOpts).catch((err: unknown) =>
        log(`${s.name}: lab down failed: ${errJson(err).message}`),
      );
    }
  }
  return {
    name: s.name,
    title: s.title,
    measures: s.measures,
    memory: s.memory,
    setup: s.setup,
    baseline: s.baseline,
    lab,
    startedAt,
    finishedAt: new Date().toISOString(),
    variants: summarize(s, done),
    runs: done,
    error,
  };
}

/** A guest tool command through the API, retried briefly: right after a hop the guest may still be finding its new host. */
async function guestCommand(c: ApiClient, command: string, attempts = 10): Promise<GuestReply> {
  for (let i = 1; ; i++) {
    try {
      const r = await c.post<{ reply: GuestReply | null }>(
        `/api/v1/vms/${VM}/guest`,
        { command },
        { timeoutMs: 30_000 },
      );
      return r.reply ?? {};
    } catch (err) {
      if (i >= attempts) throw err;
      await sleep(500);
    }
  }
}

async function waitPasses(c: ApiClient, passes: number, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await guestCommand(c, 'info');
    if ((info.dirty?.passes ?? 0) >= passes) return;
    if (Date.now() > deadline) {
      throw new FerryError(
        'FERRY_E_GUEST_TIMEOUT',
        `The guest's dirtier did not complete ${passes} pass(es) in ${fmtMs(timeoutMs)}: ${JSON.stringify(info.dirty)}`,
      );
    }
    await sleep(200);
  }
}

async function migrateOnce(
  c: ApiClient,
  v: BenchVariant,
  round: number,
  from: string,
  to: string,
  bootId: string | null,
  timeoutMs: number,
): Promise<BenchRun> {
  const run: BenchRun = {
    variant: v.name,
    round,
    from,
    to,
    migration: null,
    state: 'error',
    verified: false,
    bootIdKept: false,
    ok: false,
    totalMs: null,
    qemuTotalMs: null,
    downtimeMs: null,
    guestDowntimeMs: null,
    transferredBytes: null,
    iterations: null,
    escalations: 0,
    error: null,
  };
  let m: MigrationJson;
  try {
    m = await c.post<MigrationJson>(`/api/v1/vms/${VM}/migrate`, { ...v.body, to });
    run.migration = m.id;
    const deadline = Date.now() + timeoutMs;
    while (!isFinal(m.state)) {
      if (Date.now() > deadline) {
        await c.post(`/api/v1/migrations/${enc(m.id)}/cancel`, {}).catch(() => undefined);
        throw new FerryError(
          'FERRY_E_MIGRATION_TIMEOUT',
          `Still ${m.state} after ${fmtMs(timeoutMs)}: cancelled.`,
        );
      }
      await sleep(200);
      m = await c.get<MigrationJson>(`/api/v1/migrations/${enc(m.id)}`);
    }
  } catch (err) {
    run.error = errJson(err);
    return run;
  }
  run.state = m.state;
  Object.assign(run, migrationFigures(m));
  run.escalations = m.escalations.length;
  run.error = m.error;
  if (m.state !== 'completed') return run;
  try {
    const verify = await guestCommand(c, 'dirty verify');
    run.verified = verify.ok === true;
    if (!run.verified)
      run.error = { code: 'FERRY_E_VERIFY_FAILED', message: `dirty verify: ${JSON.stringify(verify)}` };
    const info = await guestCommand(c, 'info');
    run.bootIdKept = bootId !== null && info.bootId === bootId;
  } catch (err) {
    run.error = errJson(err);
  }
  run.ok = run.verified && run.bootIdKept;
  return run;
}
