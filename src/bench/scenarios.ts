/**
 * The benchmark scenarios, as data: the guest each one runs, what it does inside the guest before the
 * first migration, and the migration variants it compares against its baseline. The runner (runner.ts)
 * interprets them; nothing here talks to a lab.
 */
import { FerryError } from '../common/errors.ts';
import type { MigrateRequest as PolicyBody } from '../common/policy.ts';

/** The policy part of `POST /api/v1/vms/:name/migrate` (the runner adds `to`). */
export type MigrateRequest = Omit<PolicyBody, 'to'>;

export interface BenchVariant {
  /** Short id, used in JSON and file names: `[a-z0-9-]+`. */
  name: string;
  /** Column heading for humans. */
  label: string;
  body: MigrateRequest;
}

/** Before the first migration: a guest tool command, or a wait until the memory dirtier has done N passes. */
export type SetupStep = { guest: string } | { waitPasses: number };

export interface BenchScenario {
  name: string;
  title: string;
  /** What the numbers of this scenario tell (BENCHMARKS.md and `ferry bench --help`). */
  measures: string;
  /** VM memory, as `ferry vm create --memory` takes it. */
  memory: string;
  /** Run once after boot; again after a failed verify, so that later runs start clean. */
  setup: SetupStep[];
  /** Name of the variant the others are divided by. */
  baseline: string;
  /** Run in this order within each round: baseline first. */
  variants: BenchVariant[];
}

// Ferry's policy starts QEMU's downtime limit at a tenth of the budget (30 ms for 300 ms) in every
// variant, so "QEMU defaults" here differs from Ferry's defaults in the bandwidth cap only. TLS stays on in
// both, as it is in a Ferry cluster.
const QEMU_DEFAULTS: BenchVariant = {
  name: 'qemu-defaults',
  label: 'QEMU defaults',
  body: { bandwidth: '128', maxDowntime: '300ms' },
};
const FERRY_DEFAULTS: BenchVariant = { name: 'ferry-defaults', label: 'Ferry defaults', body: {} };

/**
 * "160 MiB filled, then idle". The guest tool has no such command: its region starts zeroed (QEMU sends a
 * zero page as a few bytes, so a slow dirtier alone would leave it mostly empty), `--rate 0` means unpaced,
 * and a new `dirty start` zeroes its region again. So: one unpaced pass over 160 MiB marks every page, then
 * a restart on 16 MiB at 1 MiB/s frees the rest with its marks still in guest RAM (the kernel zeroes pages
 * on allocation, not on free). The guest keeps ~160 MiB of non-zero pages, and `dirty verify` after each hop
 * checks the 16 MiB still in use.
 */
const IDLE_FILLED: SetupStep[] = [
  { guest: 'dirty start --mib 160 --rate 0' },
  { waitPasses: 1 },
  { guest: 'dirty start --mib 16 --rate 1' },
];

export const SCENARIOS: readonly BenchScenario[] = [
  {
    name: 'idle',
    title: 'idle guest, 160 MiB filled',
    measures:
      'A 256 MiB guest with 160 MiB of its memory filled and (almost) idle: the cost of copying memory once. ' +
      "QEMU's own 128 MiB/s cap against Ferry's defaults (no cap).",
    memory: '256M',
    setup: IDLE_FILLED,
    baseline: QEMU_DEFAULTS.name,
    variants: [QEMU_DEFAULTS, FERRY_DEFAULTS],
  },
  {
    name: 'dirty',
    title: 'busy guest, 64 MiB dirtied at 50 MiB/s',
    measures:
      'A 256 MiB guest rewriting 64 MiB at 50 MiB/s during the migration: how many passes and bytes it takes ' +
      "to converge, and the pause at switch-over. QEMU's 128 MiB/s cap against Ferry's defaults.",
    memory: '256M',
    setup: [{ guest: 'dirty start --mib 64 --rate 50' }],
    baseline: QEMU_DEFAULTS.name,
    variants: [QEMU_DEFAULTS, FERRY_DEFAULTS],
  },
  {
    name: 'tls',
    title: 'TLS on the migration stream, 160 MiB filled',
    measures:
      'The idle 160 MiB guest, Ferry defaults, with the migration stream in TLS (x509, cluster CA; the default) ' +
      'against plain TCP (`--no-tls`): what encryption costs when one stream is CPU-bound.',
    memory: '256M',
    setup: IDLE_FILLED,
    baseline: 'tls',
    variants: [
      { name: 'tls', label: 'TLS (default)', body: {} },
      { name: 'plain', label: 'plain TCP', body: { tls: false } },
    ],
  },
];

/** The scenarios a `ferry bench [SCENARIO]` invocation runs: all of them, or the one named. */
export function selectScenarios(name?: string): BenchScenario[] {
  if (name === undefined || name === 'all') return [...SCENARIOS];
  const s = SCENARIOS.find((x) => x.name === name);
  if (s === undefined) {
    throw new FerryError(
      'FERRY_E_USAGE',
      `No benchmark scenario ${JSON.stringify(name)}: one of ${SCENARIOS.map((x) => x.name).join(', ')}, or all.`,
    );
  }
  return [s];
}
