/**
 * The fault injector: named points of a live migration reached deterministically, faults injected there,
 * and lifted after a hold. Points are reached either by watching the job (pre-copy: `transferring` with
 * bytes moving under a low `--bandwidth`; post-copy: `--postcopy always` and state `postcopy`) or by the
 * controller's test-only hold points (src/controller/migrations/holds.ts: `prepare`, `switchover`,
 * `finish`, `confirm`), where the controller waits while the fault goes in and is then let go with the
 * fault still active. Nothing sleeps to "hit" a point; holds are durations by nature, or wait for what the
 * controller says (a host `unreachable`).
 *
 * The matrix is data: points × faults, with the cells that make sense; `OMITTED` says why the others are
 * not there.
 */
import { existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { MigrationJson } from '../common/migration.ts';
import { cutTraffic, labRestartAgent, labRestartServer, restoreTraffic } from '../lab/index.ts';
import { goPath, holdPath, isHoldPoint, reachedPath } from '../controller/migrations/holds.ts';
import { FINAL_STATES, StopWaiting, pidGone, waitUntil, type TestCluster } from './cluster.ts';

export const POINTS = ['precopy', 'postcopy', 'prepare', 'switchover', 'finish', 'confirm'] as const;
export type Point = (typeof POINTS)[number];

export const FAULTS = [
  'kill-dst-qemu',
  'kill-dst-agent',
  'kill-src-agent',
  'stop-dst-agent-short',
  'stop-dst-agent-long',
  'cut-migration',
  'cut-dst-management',
  'kill-controller',
] as const;
export type Fault = (typeof FAULTS)[number];

/** Where the VM must end: determined by the point, or either host (the outcome depends on timing). */
export type Expect = 'source' | 'destination' | 'either';

export interface Cell {
  point: Point;
  fault: Fault;
  expect: Expect;
}

export const cellName = (c: Pick<Cell, 'point' | 'fault'>): string => `${c.point}×${c.fault}`;

/**
 * Before the stream (prepare) the source is the truth; after finish the destination runs the guest and
 * the source let go of it; in post-copy the destination runs it. In pre-copy and at switchover the end
 * depends on when the fault lands (the stream may complete first).
 */
const EXPECT: Record<Point, Expect> = {
  precopy: 'either',
  postcopy: 'destination',
  prepare: 'source',
  switchover: 'either',
  finish: 'destination',
  confirm: 'destination',
};

/**
 * Where a fault at a point does not decide the end: with the destination QEMU and the stream intact, a
 * migration held at prepare goes on once released and may well complete before the agent is back (the
 * destination then holds the guest, waiting paused until its agent answers).
 */
const EXPECT_AT: Partial<Record<Fault, Partial<Record<Point, Expect>>>> = {
  'kill-dst-agent': { prepare: 'either' },
  'stop-dst-agent-short': { prepare: 'either' },
  'stop-dst-agent-long': { prepare: 'either' },
  'cut-dst-management': { prepare: 'either' },
};

/** Cells left out of the matrix, and why (everything not listed here is in it). */
export const OMITTED: Partial<Record<Fault, Partial<Record<Point, string>>>> = {
  'kill-dst-qemu': {
    postcopy: 'in post-copy the destination QEMU is the only copy of the running guest: killing it is a host crash, which no migration can survive',
    finish: 'the destination runs the guest alone (the source completed): killing its QEMU is a crash of a running VM, not a migration fault',
    confirm: 'as at finish: the guest runs only there',
  },
  'stop-dst-agent-short': {
    postcopy: 'a 2 s stop of an agent that post-copy does not need (QEMU streams by itself) is the same case as pre-copy',
    prepare: 'prepare already answered; a 2 s stop before perform is covered by the long stop and the kill',
    confirm: 'confirm talks to the source only; a short stop of the destination there changes nothing',
  },
  'stop-dst-agent-long': {
    postcopy: 'covered by kill-dst-agent at postcopy (the agent is away either way while QEMU streams)',
    prepare: 'covered by kill-dst-agent at prepare',
    confirm: 'confirm talks to the source only; the destination agent being away there is the finish case',
  },
  'cut-migration': {
    switchover: 'the stream is over (the source completed): there is no migration traffic left to cut',
    finish: 'the stream is over: no migration traffic left to cut',
    confirm: 'the stream is over: no migration traffic left to cut',
  },
};

export const MATRIX: readonly Cell[] = FAULTS.flatMap((fault) =>
  POINTS.filter((point) => OMITTED[fault]?.[point] === undefined).map((point) => ({ point, fault, expect: EXPECT_AT[fault]?.[point] ?? EXPECT[point] })),
);

/** How long each fault stays before it is lifted. */
export const HOLD_MS = {
  short: 2_000,
  /** A cut migration link must outlast the stall watchdog (10 s by default) to be seen as one. */
  cut: 12_000,
  /** Waiting for the controller to call a host unreachable is bounded by this. */
  unreachable: 45_000,
} as const;

export interface CaseContext {
  cluster: TestCluster;
  vm: string;
  source: string;
  destination: string;
  log: (line: string) => void;
}

// ---------------------------------------------------------------------------------------------------
// points

/** Arms the hold at `point` (before the migration starts) when the point is a hold point. */
export function armHold(cluster: TestCluster, point: Point): void {
  for (const f of readdirSync(cluster.holdDir)) rmSync(join(cluster.holdDir, f), { force: true });
  // The controller itself stops at its hold points (holds.ts); the other points are seen in the job's figures.
  if (isHoldPoint(point)) writeFileSync(holdPath(cluster.holdDir, point), '');
}

/** Lets every held job go on, and holds no more. */
export function releaseHold(cluster: TestCluster, point: Point, job: string): void {
  if (!isHoldPoint(point)) return;
  writeFileSync(goPath(cluster.holdDir, job, point), '');
  rmSync(holdPath(cluster.holdDir, point), { force: true });
}

/** Options of the migration a point needs. */
export function migrateArgs(point: Point): string[] {
  switch (point) {
    case 'precopy':
      // Below the link, above nothing: the first pass of ~32 MiB dirtied lasts a few seconds.
      return ['--bandwidth', '8M', '--postcopy', 'never'];
    case 'postcopy':
      return ['--bandwidth', '8M', '--postcopy', 'always'];
    default:
      return ['--postcopy', 'never'];
  }
}

/** The job ended (or moved past the point) before the point was seen: the cell says nothing about its fault. */
export class PointMissed extends StopWaiting {}

/** Waits until the job stands at `point`; throws PointMissed when it ended (or moved past) first. */
export async function reachPoint(cluster: TestCluster, point: Point, job: string, timeoutMs = 90_000): Promise<MigrationJson> {
  if (isHoldPoint(point)) {
    const reached = reachedPath(cluster.holdDir, job, point);
    return waitUntil(
      `job ${job} held at ${point}`,
      async () => {
        if (existsSync(reached)) return cluster.migration(job);
        const m = await cluster.migration(job);
        if (FINAL_STATES.includes(m.state)) throw new PointMissed(`job ${job} ended ${m.state} (${m.error?.code ?? 'no error'}) before ${point}`);
        return null;
      },
      timeoutMs,
      50,
    );
  }
  return waitUntil(
    `job ${job} at ${point}`,
    async () => {
      const m = await cluster.migration(job);
      if (FINAL_STATES.includes(m.state) || m.state === 'switching') {
        throw new PointMissed(`job ${job} reached ${m.state} (${m.error ? `${m.error.code}: ${m.error.message}` : 'no error'}) before ${point} was seen`);
      }
      if (point === 'precopy') return m.state === 'transferring' && (m.transferredBytes ?? 0) > 4 << 20 ? m : null;
      return m.state === 'postcopy' ? m : null;
    },
    timeoutMs,
    50,
  );
}

// ---------------------------------------------------------------------------------------------------
// faults

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* gone already: the fault happened by itself */
  }
}

async function waitGone(pid: number): Promise<void> {
  await waitUntil(`process ${pid} gone`, () => pidGone(pid), 10_000, 20);
}

async function waitHostState(cluster: TestCluster, host: string, want: string, timeoutMs: number): Promise<boolean> {
  try {
    await waitUntil(`${host} ${want}`, async () => (await cluster.hostStates())[host] === want, timeoutMs, 250);
    return true;
  } catch {
    return false;
  }
}

/** A fault put in: `lift` takes it away (restart, SIGCONT, restore), `notes` says what happened. */
export interface Injected {
  lift: () => Promise<void>;
  notes: string[];
}

/**
 * Injects `fault`; returns how to lift it. The lift waits out the hold first (a duration, or until the
 * controller declared the host unreachable), so the caller can release a held controller in between.
 */
export async function inject(ctx: CaseContext, fault: Fault): Promise<Injected> {
  const { cluster, vm, source, destination } = ctx;
  const notes: string[] = [];
  const lab = cluster.lab;
  const opts = { dataRoot: cluster.dataRoot, timeoutMs: 90_000 };
  switch (fault) {
    case 'kill-dst-qemu': {
      const q = cluster.qemus(vm).filter((x) => x.host === destination);
      if (q.length === 0) notes.push('no destination QEMU to kill (already gone)');
      for (const x of q) signal(x.pid, 'SIGKILL');
      return { lift: async () => undefined, notes };
    }
    case 'kill-dst-agent':
    case 'kill-src-agent': {
      const host = fault === 'kill-dst-agent' ? destination : source;
      const pid = cluster.hostPid(host);
      signal(pid, 'SIGKILL');
      await waitGone(pid);
      return {
        lift: async () => {
          await sleep(HOLD_MS.short);
          cluster.state = await labRestartAgent(cluster.current, host, opts);
        },
        notes,
      };
    }
    case 'stop-dst-agent-short':
    case 'stop-dst-agent-long': {
      const pid = cluster.hostPid(destination);
      signal(pid, 'SIGSTOP');
      return {
        lift: async () => {
          try {
            if (fault === 'stop-dst-agent-short') await sleep(HOLD_MS.short);
            else if (!(await waitHostState(cluster, destination, 'unreachable', HOLD_MS.unreachable))) {
              notes.push(`the controller never called ${destination} unreachable within ${HOLD_MS.unreachable} ms`);
            }
          } finally {
            signal(pid, 'SIGCONT');
          }
        },
        notes,
      };
    }
    case 'cut-migration':
      await cutTraffic(lab, destination, 'migration');
      return {
        lift: async () => {
          try {
            await sleep(HOLD_MS.cut);
          } finally {
            await restoreTraffic(lab, destination);
          }
        },
        notes,
      };
    case 'cut-dst-management':
      await cutTraffic(lab, destination, 'management');
      return {
        lift: async () => {
          try {
            if (!(await waitHostState(cluster, destination, 'unreachable', HOLD_MS.unreachable))) {
              notes.push(`the controller never called ${destination} unreachable within ${HOLD_MS.unreachable} ms`);
            }
          } finally {
            await restoreTraffic(lab, destination);
          }
        },
        notes,
      };
    case 'kill-controller': {
      const pid = cluster.serverPid();
      signal(pid, 'SIGKILL');
      await waitGone(pid);
      return {
        lift: async () => {
          await sleep(HOLD_MS.short);
          cluster.state = await labRestartServer(cluster.current, opts);
        },
        notes,
      };
    }
  }
}
