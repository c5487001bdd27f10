/**
 * Runs the fault matrix (faults.ts) in one lab with one VM reused across cells: each cell migrates the VM
 * away from wherever it runs now, puts its fault in at its point, lifts it, waits for the job to be final
 * and checks every invariant on the hosts (invariants.ts), then migrates once more without a fault. A cell
 * that broke the VM (lost, twice, a job that never ends) gets a fresh VM for the next cell, so one failure
 * does not hide the others. `reliabilityReport` turns the outcomes into docs/reliability.md.
 */
import { execFileSync } from 'node:child_process';
import { qemuBinary } from '../qemu/accel.ts';
import { restoreTraffic } from '../lab/index.ts';
import { FINAL_STATES, pidGone, waitUntil, type TestCluster, type VmJson } from './cluster.ts';
import { MATRIX, OMITTED, PointMissed, armHold, cellName, inject, migrateArgs, reachPoint, releaseHold, type Cell } from './faults.ts';
import { RunningWatch, VIOLATION_KINDS, checkInvariants, tapsOn, checkMigratesAgain, type Violation, type ViolationKind } from './invariants.ts';
import type { MigrationJson } from '../common/migration.ts';

/** A job that is not final this long after its fault was lifted fails the cell. */
export const FINAL_WITHIN_MS = 120_000;
export const VM_MEMORY = '128M';
/** The guest's dirtier: what `dirty verify` checks after every cell. */
export const DIRTY = ['--mib', '32', '--rate', '5'] as const;

export interface CellOutcome {
  cell: string;
  point: Cell['point'];
  fault: Cell['fault'];
  rep: number;
  vm: string;
  source: string;
  destination: string;
  /** The job's end (null when it never became final). */
  state: string | null;
  phase: string | null;
  errorCode: string | null;
  /** Where the guest runs at the end (null: nowhere, or on several hosts). */
  endedOn: string | null;
  durationMs: number;
  violations: Violation[];
  notes: string[];
  /** The point was not reached (the job ended before it): the cell says nothing about the fault. */
  missed: string | null;
}

export interface VmUnderTest {
  name: string;
  bootId: string;
  serial: number;
}

export async function createVm(cluster: TestCluster, serial: number, host = 'h1'): Promise<VmUnderTest> {
  const name = `f${serial}`;
  const v = await cluster.ferryJson<VmJson>(['vm', 'create', name, '--memory', VM_MEMORY, '--host', host]);
  if (v.state !== 'running' || !v.bootId) throw new Error(`vm create ${name}: ${JSON.stringify(v)}`);
  await cluster.guest(name, 'dirty', 'start', ...DIRTY);
  return { name, bootId: v.bootId, serial };
}

/**
 * After a cell that broke its VM: kill what is left of it (its QEMUs, found in /proc under this lab's
 * host dirs — processes of the lab we started), forget it best-effort, and boot a fresh one.
 */
async function replaceVm(cluster: TestCluster, old: VmUnderTest, log: (l: string) => void): Promise<VmUnderTest> {
  log(`replacing VM ${old.name}`);
  for (const q of cluster.qemus(old.name)) {
    try {
      process.kill(q.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  await waitUntil('old QEMUs gone', () => cluster.qemus(old.name).every((q) => pidGone(q.pid)), 10_000).catch(() => undefined);
  await cluster.ferry(['vm', 'delete', old.name, '--json'], 60_000);
  await cluster.waitHostsReady(90_000);
  return createVm(cluster, old.serial + 1);
}

/** Puts the lab back as a cell may have left it when it failed half-way: links, stopped agents. */
async function tidyLab(cluster: TestCluster): Promise<void> {
  const s = cluster.refresh();
  for (const h of s.hosts) {
    await restoreTraffic(cluster.lab, h.name).catch(() => undefined);
    try {
      process.kill(h.pid, 'SIGCONT');
    } catch {
      /* not running: the next waitHostsReady says so */
    }
  }
}

export interface RunCellOptions {
  cluster: TestCluster;
  vm: VmUnderTest;
  cell: Cell;
  rep: number;
  log: (line: string) => void;
  /** Check that the VM migrates again after the case (default true; a run whose next cell migrates it anyway may skip it). */
  remigrate?: boolean;
}

/** One cell, start to end. Never throws for a broken promise: it is in `violations`. */
export async function runCell(o: RunCellOptions): Promise<{ outcome: CellOutcome; vm: VmUnderTest }> {
  const { cluster, cell, rep, log } = o;
  let vm = o.vm;
  const name = cellName(cell);
  const t0 = Date.now();
  const violations: Violation[] = [];
  const notes: string[] = [];
  let missed: string | null = null;
  let job: MigrationJson | null = null;
  let jobId: string | null = null;
  await tidyLab(cluster);
  await cluster.waitHostsReady(90_000);
  const before = await cluster.vmShow(vm.name);
  const source = before.host;
  const destination = cluster.current.hosts.map((h) => h.name).find((h) => h !== source)!;
  const tapsBefore: Record<string, string[]> = {};
  for (const h of cluster.current.hosts) tapsBefore[h.name] = await tapsOn(cluster, h.name);
  const watch = new RunningWatch(cluster, vm.name).start();
  try {
    armHold(cluster, cell.point);
    const started = await cluster.ferryJson<MigrationJson>(['vm', 'migrate', vm.name, '--to', destination, ...migrateArgs(cell.point)]);
    jobId = started.id;
    try {
      await reachPoint(cluster, cell.point, started.id);
    } catch (err) {
      releaseHold(cluster, cell.point, started.id);
      if (!(err instanceof PointMissed)) throw err;
      missed = err.message;
    }
    if (missed === null) {
      log(`${name}: at ${cell.point}, injecting ${cell.fault} (${source}→${destination})`);
      const injected = await inject({ cluster, vm: vm.name, source, destination, log }, cell.fault);
      releaseHold(cluster, cell.point, started.id);
      try {
        await injected.lift();
      } finally {
        notes.push(...injected.notes);
      }
    }
    try {
      job = await cluster.waitFinal(started.id, FINAL_WITHIN_MS);
    } catch {
      const last = await cluster.migration(started.id).catch(() => null);
      violations.push({
        kind: 'job',
        message: `[${name}] job ${started.id} not final ${FINAL_WITHIN_MS / 1000} s after the fault was lifted: ${last ? `${last.state}/${last.phase} ${last.error?.code ?? ''}` : 'unknown'}`,
      });
      job = last;
    }
  } catch (err) {
    violations.push({ kind: 'job', message: `[${name}] the case could not run: ${(err as Error).message}` });
  } finally {
    if (jobId !== null) releaseHold(cluster, cell.point, jobId);
    await watch.stop();
  }
  await tidyLab(cluster);
  await cluster.waitHostsReady(90_000).catch((err: unknown) => violations.push({ kind: 'job', message: `[${name}] hosts not ready after the case: ${(err as Error).message}` }));
  const expectHost = cell.expect === 'source' && missed === null ? source : cell.expect === 'destination' && missed === null ? destination : null;
  const inv = await checkInvariants({
    cluster,
    cell: name,
    vm: vm.name,
    bootId: vm.bootId,
    source,
    destination,
    job: job !== null && FINAL_STATES.includes(job.state) ? job : null,
    expect: { host: expectHost },
    watch,
    tapsBefore,
  });
  // A job that is not final was reported above already; checkInvariants repeats it only for a null job.
  violations.push(...inv.violations.filter((v) => !(v.kind === 'job' && job !== null && !FINAL_STATES.includes(job.state) && /never became final/.test(v.message))));
  let broken = inv.host === null || violations.some((v) => v.kind === 'lost' || v.kind === 'twice' || (v.kind === 'job' && /not final/.test(v.message)));
  if (!broken && o.remigrate !== false) {
    const again = await checkMigratesAgain(cluster, name, vm.name, vm.bootId);
    violations.push(...again.violations);
    broken = again.host === null;
  }
  // A corrupt guest, or a copy of it left on the other host, would be every later cell's finding too.
  if (violations.some((v) => v.kind === 'corrupt' || (v.kind === 'leftover' && /QEMU|run dir/.test(v.message)))) broken = true;
  const outcome: CellOutcome = {
    cell: name,
    point: cell.point,
    fault: cell.fault,
    rep,
    vm: vm.name,
    source,
    destination,
    state: job && FINAL_STATES.includes(job.state) ? job.state : null,
    phase: job?.phase ?? null,
    errorCode: job?.error?.code ?? null,
    endedOn: inv.host,
    durationMs: Date.now() - t0,
    violations,
    notes,
    missed,
  };
  log(
    `${name}: ${outcome.state ?? 'not final'}${outcome.errorCode ? ` ${outcome.errorCode}` : ''} in ${outcome.phase}, on ${outcome.endedOn ?? 'no single host'}, ${Math.round(outcome.durationMs / 1000)} s${missed ? ` (point missed: ${missed})` : ''}${violations.length ? `\n  ${violations.map((v) => v.message).join('\n  ')}` : ''}`,
  );
  if (broken) {
    try {
      vm = await replaceVm(cluster, vm, log);
    } catch (err) {
      log(`${name}: could not replace the VM: ${(err as Error).message}`);
    }
  }
  return { outcome, vm };
}

export interface MatrixOptions {
  cluster: TestCluster;
  reps: number;
  cells?: readonly Cell[];
  log?: (line: string) => void;
  onCell?: (o: CellOutcome) => void;
}

/** Every cell `reps` times, in one lab that must be up (2 hosts). */
export async function runMatrix(o: MatrixOptions): Promise<CellOutcome[]> {
  const log = o.log ?? (() => undefined);
  const cells = o.cells ?? MATRIX;
  let vm = await createVm(o.cluster, 1);
  const out: CellOutcome[] = [];
  for (let rep = 1; rep <= o.reps; rep++) {
    for (const cell of cells) {
      const r = await runCell({ cluster: o.cluster, vm, cell, rep, log });
      vm = r.vm;
      out.push(r.outcome);
      o.onCell?.(r.outcome);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// the report

export function qemuVersion(): string {
  try {
    return execFileSync(qemuBinary(), ['--version'], { encoding: 'utf8' }).split('\n')[0]!.trim();
  } catch {
    return 'unknown';
  }
}

const KIND_LABEL: Record<ViolationKind, string> = {
  lost: 'VMs lost (running nowhere)',
  twice: 'VMs running twice',
  corrupt: 'VMs corrupt (memory, disk, or rebooted)',
  leftover: 'leftovers (QEMU, run dir, tap, listener on the other host)',
  job: 'jobs not final in time, wrong end, or no error code',
  store: 'store disagreeing with the hosts',
  remigrate: 'VMs that did not migrate again',
};

export function reliabilityReport(outcomes: readonly CellOutcome[], opts: { date?: Date; reps: number; totalMs: number; source?: string }): string {
  const date = (opts.date ?? new Date()).toISOString();
  const cells = [...new Set(outcomes.map((o) => o.cell))];
  const count = (k: ViolationKind): number => outcomes.filter((o) => o.violations.some((v) => v.kind === k)).length;
  const lines: string[] = [
    '# Reliability: the fault matrix',
    '',
    'Generated by `npm run test:faults -- --reps N` (src/testing/matrix-cli.ts): every cell of the fault matrix',
    '(src/testing/faults.ts) run in two-host labs, the invariants (src/testing/invariants.ts) checked on the',
    'hosts after each. Do not edit by hand.',
    '',
    `- date: ${date}`,
    `- run by: ${opts.source ?? 'npm run test:faults'}`,
    `- QEMU: ${qemuVersion()}`,
    `- cells × repetitions: ${cells.length} × ${opts.reps} = ${outcomes.length} cases, ${Math.round(opts.totalMs / 1000)} s in all`,
    `- cases with a broken invariant: ${outcomes.filter((o) => o.violations.length > 0).length}; points missed: ${outcomes.filter((o) => o.missed).length}`,
    '',
    '| broken promise | cases |',
    '| --- | --- |',
    ...VIOLATION_KINDS.map((k) => `| ${KIND_LABEL[k]} | ${count(k)} |`),
    '',
    '## Per cell',
    '',
    '| cell (point × fault) | runs | completed | failed (error codes) | not final | broken invariants | duration (median, max) |',
    '| --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const c of cells) {
    const os = outcomes.filter((o) => o.cell === c);
    const codes = [...new Set(os.filter((o) => o.state === 'failed' || o.state === 'cancelled').map((o) => `${o.errorCode ?? '?'}@${o.phase ?? '?'}`))];
    const ds = os.map((o) => o.durationMs).sort((a, b) => a - b);
    const kinds = [...new Set(os.flatMap((o) => o.violations.map((v) => v.kind)))];
    lines.push(
      `| ${c} | ${os.length} | ${os.filter((o) => o.state === 'completed').length} | ${os.filter((o) => o.state === 'failed' || o.state === 'cancelled').length}${codes.length ? ` (${codes.join(', ')})` : ''} | ${os.filter((o) => o.state === null).length} | ${kinds.length ? kinds.join(', ') : '—'}${os.some((o) => o.missed) ? ' (point missed)' : ''} | ${Math.round(ds[Math.floor(ds.length / 2)]! / 100) / 10} s, ${Math.round(ds[ds.length - 1]! / 100) / 10} s |`,
    );
  }
  const broken = outcomes.filter((o) => o.violations.length > 0 || o.missed);
  if (broken.length > 0) {
    lines.push('', '## What broke', '');
    for (const o of broken) {
      lines.push(`- ${o.cell} (rep ${o.rep}, ${o.source}→${o.destination}, job ${o.state ?? 'not final'}${o.errorCode ? ` ${o.errorCode}` : ''}):`);
      if (o.missed) lines.push(`  - point missed: ${o.missed}`);
      for (const v of o.violations) lines.push(`  - ${v.kind}: ${v.message.replace(/\|/g, '\\|')}`);
    }
  }
  lines.push('', '## Cells left out', '');
  for (const [fault, points] of Object.entries(OMITTED)) {
    for (const [point, why] of Object.entries(points ?? {})) lines.push(`- ${point}×${fault}: ${why}`);
  }
  return lines.join('\n') + '\n';
}
