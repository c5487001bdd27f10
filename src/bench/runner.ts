/**
 * Runs benchmark scenarios for real: per scenario its own 2-host lab (unique name, torn down in `finally`,
 * and on SIGINT/SIGTERM), one tiny-guest VM, then rounds of live migrations hopping h1 ⇄ h2 with the
 * variants interleaved run by run (A B, B A, A B …) so that the machine's noise hits each alike. After
 * every hop the guest checks its own memory pattern. Speed is only ever measured here, never asserted in tests.
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { cpus, release } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError, toFerryError } from '../common/errors.ts';
import { migrationFigures, phaseDurations, type MigrationJson } from '../common/migration.ts';
import type { HostJson } from '../common/api.ts';
import { ApiClient, enc } from '../client/api.ts';
import { labDown, labUp } from '../lab/index.ts';
import { isFinal } from '../common/states.ts';
import {
  BENCH_RESULT_VERSION,
  fmtMs,
  summarize,
  thinSamples,
  type BenchResult,
  type BenchRun,
  type MachineInfo,
  type RemainingSample,
  type ScenarioResult,
} from './report.ts';
import type { BenchScenario, BenchVariant } from './scenarios.ts';
import { RawQmpGuest, type RawFigures, type RawHost } from './raw-qmp.ts';
import { LibvirtBaseline, ensureLibvirt } from './libvirt.ts';
import { etaErrors, type EtaSample } from './eta.ts';
import type { VmJson } from '../common/api.ts';
import type { Accel } from '../qemu/argv.ts';
import { join } from 'node:path';

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
  /**
   * What is done to the machine itself (installing libvirt's packages): said even where `log` is quiet
   * (`--json`), because it changes the system. Default: `log`.
   */
  notice?: (line: string) => void;
}

interface GuestReply {
  ok?: boolean;
  bootId?: string;
  dirty?: { running?: boolean; passes?: number };
  error?: string;
  badPages?: number;
  firstBadPage?: number;
  /** `disk sum`: the checksum of the disk's first MiBs. */
  sum?: string;
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
    libvirt: null,
  };
  // Before any lab: a machine where libvirt cannot be installed fails here, not after minutes of runs.
  if (scenarios.some((s) => s.variants.some((v) => v.libvirt === true))) {
    machine.libvirt = await ensureLibvirt(opts.notice ?? opts.log ?? (() => undefined));
  }
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
  let raw: RawQmpGuest | null = null;
  let rawHosts: RawHost[] = [];
  let libvirt: LibvirtBaseline | null = null;

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
      servers: [state.server.url],
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
    await c.post('/api/v1/vms', { name: VM, memory: s.memory, host: h1, ...s.vm });
    const guest = (command: string) => guestCommand(c, command);
    // The disk's checksum after setup: each hop must bring the same bytes along (storage copy).
    let diskSum: string | null = null;
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
      if (s.diskCheck !== undefined) {
        const r = await guest(`disk sum ${s.diskCheck.device} ${s.diskCheck.mib}`);
        if (r.ok !== true || typeof r.sum !== 'string') throw new FerryError('FERRY_E_GUEST_COMMAND', `The guest could not sum its disk: ${JSON.stringify(r)}`);
        diskSum = r.sum;
      }
    };
    await setup();
    const bootId = (await guest('info')).bootId ?? null;
    let at = h1;

    // What the other tools' guests copy from Ferry's: its spec, the hosts' accelerator, the VM LAN's prefix.
    const guestFacts = async () => {
      const vm = await c.get<VmJson>(`/api/v1/vms/${VM}`);
      const inv = (await c.get<HostJson[]>('/api/v1/hosts')).find((h) => h.inventory)?.inventory;
      return { vm, accel: (inv?.accel ?? 'tcg') as Accel, lan: state.network.vmCidr.split('.').slice(0, 3).join('.') };
    };

    // Raw-QMP baselines: a second guest of the same image beside Ferry's, on the same two hosts.
    let rawBootId: string | null = null;
    let rawSetup = async (): Promise<void> => undefined;
    if (s.variants.some((v) => v.raw !== undefined)) {
      const { vm, accel, lan } = await guestFacts();
      rawHosts = state.hosts.slice(0, 2).map((h) => ({ name: h.name, namespace: h.namespace, address: h.address }));
      const rg = new RawQmpGuest({
        dir: join(state.dir, 'raw-qmp'),
        ferrySpec: vm.spec,
        accel,
        ipCidr: `${lan}.250/24`,
        network: vm.spec.nics[0]?.network ?? 'vm0',
      });
      raw = rg;
      await rg.prepareHosts(state.hosts.slice(0, 2));
      log(`${s.name}: raw QMP guest on ${h1}`);
      await rg.boot(rawHosts[0]!);
      rawSetup = () => guestSetup(s, (line) => rg.command(line), 'raw guest');
      await rawSetup();
      rawBootId = ((await rg.command('info')) as GuestReply).bootId ?? null;
    }

    // The libvirt baseline: a third guest of the same image, a libvirt domain, on the same two hosts.
    let lvGuest: OtherGuest | null = null;
    if (s.variants.some((v) => v.libvirt === true)) {
      const { vm, accel, lan } = await guestFacts();
      const lv = new LibvirtBaseline({
        dir: join(state.dir, 'libvirt'),
        ferrySpec: vm.spec,
        accel,
        ipCidr: `${lan}.251/24`,
      });
      libvirt = lv;
      log(`${s.name}: libvirtd on ${h1} and ${h2}, libvirt guest on ${h1}`);
      await lv.start(
        state.hosts.slice(0, 2).map((h) => ({ name: h.name, namespace: h.namespace, address: h.address, vmBridge: h.vmBridge })),
      );
      await lv.boot(h1);
      const g: OtherGuest = {
        host: () => lv.host,
        command: (line) => lv.command(line),
        migrate: (to) => lv.migrate(to),
        setup: () => guestSetup(s, (line) => lv.command(line), 'libvirt guest'),
        bootId: null,
      };
      await g.setup();
      g.bootId = ((await lv.command('info')) as GuestReply).bootId ?? null;
      lvGuest = g;
    }
    const rawGuest: OtherGuest | null =
      raw === null
        ? null
        : {
            host: () => raw!.host,
            command: (line) => raw!.command(line),
            migrate: (to, v) => raw!.migrate(rawHosts.find((h) => h.name === to)!, v.raw ?? {}),
            setup: rawSetup,
            bootId: rawBootId,
          };
    for (let round = 1; round <= runs; round++) {
      // Every other round in reverse (A B, B A, …): with two variants and hops alternating h1⇄h2, a fixed
      // order would tie each variant to one direction and one position after the other.
      const order = round % 2 === 1 ? s.variants : [...s.variants].reverse();
      for (const v of order) {
        await sleep(opts.settleMs ?? 1000);
        if (interrupted) throw new FerryError('FERRY_E_ABORTED', 'Interrupted.');
        const other = v.libvirt === true ? lvGuest : v.raw === undefined ? null : rawGuest;
        const from = other === null ? at : other.host()!;
        const to = from === h1 ? h2 : h1;
        const run =
          other === null
            ? await migrateOnce(c, v, round, at, to, bootId, opts.migrationTimeoutMs ?? 180_000, s.diskCheck === undefined ? null : { ...s.diskCheck, sum: diskSum })
            : await otherMigrateOnce(other, v, round, from, to);
        if (interrupted) throw new FerryError('FERRY_E_ABORTED', 'Interrupted.');
        done.push(run);
        log(
          `${s.name}: round ${round}/${runs} ${v.name.padEnd(14)} ${from}→${to} ${run.state}` +
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
        if (other === null && run.state === 'completed') at = to;
        // A broken pattern would fail every later check too: start the guest's work afresh.
        if (!run.ok && (run.state === 'completed' || v.unfinished === true)) await (other === null ? setup() : other.setup());
      }
    }
  } catch (err) {
    error = errJson(err);
    log(`${s.name}: stopped: ${error.code}: ${error.message}`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await client?.close().catch(() => undefined);
    await raw?.close(rawHosts).catch(() => undefined);
    await libvirt?.close().catch((err: unknown) => log(`${s.name}: libvirt teardown failed: ${errJson(err).message}`));
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

/** How often the bench reads a running migration: the resolution of its ETA check. */
const ETA_POLL_MS = 50;

/** A baseline guest that is not Ferry's VM (raw QMP, libvirt): where it runs, its tool, one hop. */
interface OtherGuest {
  host(): string | null;
  command(line: string): Promise<GuestReply>;
  /** One hop with the variant's settings. */
  migrate(to: string, v: BenchVariant): Promise<RawFigures>;
  /** The scenario's setup steps, run on this guest. */
  setup(): Promise<void>;
  bootId: string | null;
}

/** A scenario's setup steps through one guest's own channel (the baselines' guests, not Ferry's VM). */
async function guestSetup(
  s: BenchScenario,
  command: (line: string) => Promise<GuestReply>,
  what: string,
): Promise<void> {
  for (const step of s.setup) {
    if ('guest' in step) {
      const r = await command(step.guest);
      if (r.ok !== true) throw new FerryError('FERRY_E_GUEST_COMMAND', `The ${what} refused \`${step.guest}\`: ${JSON.stringify(r)}`);
    } else {
      const deadline = Date.now() + 60_000;
      while (((await command('info')).dirty?.passes ?? 0) < step.waitPasses) {
        if (Date.now() > deadline) throw new FerryError('FERRY_E_GUEST_TIMEOUT', `The ${what} did not fill its memory.`);
        await sleep(200);
      }
    }
  }
}

/** One hop of a baseline guest, verified from inside it like Ferry's. */
async function otherMigrateOnce(g: OtherGuest, v: BenchVariant, round: number, from: string, to: string): Promise<BenchRun> {
  const run = emptyRun(v, round, from, to);
  try {
    Object.assign(run, await g.migrate(to, v));
    run.state = 'completed';
    const verify = await g.command('dirty verify');
    run.verified = verify.ok === true;
    if (!run.verified)
      run.error = { code: 'FERRY_E_VERIFY_FAILED', message: `dirty verify: ${JSON.stringify(verify)}` };
    run.bootIdKept = g.bootId !== null && (await g.command('info')).bootId === g.bootId;
  } catch (err) {
    run.error = errJson(err);
  }
  run.ok = run.verified && run.bootIdKept;
  return run;
}

/** A run before anything is known of it: failed until it is shown to have worked. */
function emptyRun(v: BenchVariant, round: number, from: string, to: string): BenchRun {
  return {
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
    eta: null,
    phases: null,
    remaining: null,
    error: null,
  };
}

async function migrateOnce(
  c: ApiClient,
  v: BenchVariant,
  round: number,
  from: string,
  to: string,
  bootId: string | null,
  timeoutMs: number,
  disk: { device: string; mib: number; sum: string | null } | null,
): Promise<BenchRun> {
  const run = emptyRun(v, round, from, to);
  let m: MigrationJson;
  // Ferry's ETA as the CLI shows it, with when it was read: judged against the transfer's real end.
  const etaSamples: EtaSample[] = [];
  let transferEndMs: number | null = null;
  const remaining: RemainingSample[] = [];
  const asked = performance.now();
  try {
    m = await c.post<MigrationJson>(`/api/v1/vms/${VM}/migrate`, { ...v.body, to });
    run.migration = m.id;
    const deadline = Date.now() + timeoutMs;
    while (!isFinal(m.state)) {
      const now = performance.now();
      if (m.progress !== null) remaining.push({ tMs: Math.round(now - asked), bytes: m.progress.remainingBytes });
      if (m.state === 'transferring' && m.progress !== null) {
        etaSamples.push({ atMs: now, percent: m.progress.percent, etaMs: m.progress.etaMs });
      } else if (transferEndMs === null && etaSamples.length > 0 && m.state !== 'transferring') {
        transferEndMs = now;
      }
      if (Date.now() > deadline) {
        await c.post(`/api/v1/migrations/${enc(m.id)}/cancel`, {}).catch(() => undefined);
        throw new FerryError(
          'FERRY_E_MIGRATION_TIMEOUT',
          `Still ${m.state} after ${fmtMs(timeoutMs)}: cancelled.`,
        );
      }
      await sleep(ETA_POLL_MS);
      m = await c.get<MigrationJson>(`/api/v1/migrations/${enc(m.id)}`);
    }
  } catch (err) {
    run.error = errJson(err);
    return run;
  }
  transferEndMs ??= performance.now();
  if (m.state === 'completed') remaining.push({ tMs: Math.round(performance.now() - asked), bytes: 0 });
  run.remaining = thinSamples(remaining);
  run.eta = etaErrors(etaSamples, transferEndMs);
  run.phases = Object.fromEntries(phaseDurations(m).map((p) => [p.phase, p.ms]));
  run.state = m.state;
  Object.assign(run, migrationFigures(m));
  run.escalations = m.escalations.length;
  run.error = m.error;
  // A variant that is not to finish ran as it should when its deadline ended it and the guest, still on
  // its source, kept its memory; any other end is a failed run.
  const asExpected = v.unfinished === true ? m.state === 'failed' && m.error?.code === 'FERRY_E_MIGRATION_TIMEOUT' : m.state === 'completed';
  if (!asExpected) return run;
  try {
    const verify = await guestCommand(c, 'dirty verify');
    run.verified = verify.ok === true;
    if (!run.verified)
      run.error = { code: 'FERRY_E_VERIFY_FAILED', message: `dirty verify: ${JSON.stringify(verify)}` };
    if (run.verified && disk !== null) {
      const sum = await guestCommand(c, `disk sum ${disk.device} ${disk.mib}`);
      run.verified = sum.ok === true && sum.sum === disk.sum;
      if (!run.verified) run.error = { code: 'FERRY_E_VERIFY_FAILED', message: `disk sum: ${JSON.stringify(sum)}, before: ${disk.sum}` };
    }
    const info = await guestCommand(c, 'info');
    run.bootIdKept = bootId !== null && info.bootId === bootId;
  } catch (err) {
    run.error = errJson(err);
  }
  run.ok = run.verified && run.bootIdKept;
  return run;
}
