/**
 * The benchmark scenarios, as data: the guest each one runs, what it does inside the guest before the
 * first migration, and the migration variants it compares against its baseline. The runner (runner.ts)
 * interprets them; nothing here talks to a lab.
 */
import { FerryError } from '../common/errors.ts';
import type { MigrateRequest as PolicyBody } from '../common/policy.ts';
import { RAW_UNCAPPED, type RawQmpSettings } from './raw-qmp.ts';

/** The policy part of `POST /api/v1/vms/:name/migrate` (the runner adds `to`). */
export type MigrateRequest = Omit<PolicyBody, 'to'>;

export interface BenchVariant {
  /** Short id, used in JSON and file names: `[a-z0-9-]+`. */
  name: string;
  /** Column heading for humans. */
  label: string;
  body: MigrateRequest;
  /**
   * Set for a baseline that is not Ferry: the same guest image migrated between the same lab hosts by hand
   * with Ferry's QMP client (raw-qmp.ts), with these QEMU parameters; `body` is then unused.
   */
  raw?: RawQmpSettings;
  /**
   * Set for the libvirt baseline (`ferry bench --with libvirt`): the same guest image as a libvirt domain on
   * the same lab hosts, moved with `virsh migrate --live` and libvirt's defaults (libvirt.ts); `body` unused.
   */
  libvirt?: true;
  /**
   * Set for a variant that is not to finish (pre-copy alone on a guest that dirties faster than its link):
   * a run is ok when its deadline (`body.deadline`) aborted it and the guest kept its memory on its source.
   */
  unfinished?: true;
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
  /** More of the VM's creation body (a local disk: `{ disk: '256M' }`). */
  vm?: { disk?: string };
  /** After setup and after each hop, `disk sum DEVICE MIB` in the guest: each hop brings the same bytes. */
  diskCheck?: { device: string; mib: number };
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

/** IDLE_FILLED with `mib` MiB: one unpaced pass marks every page, then 16 MiB stay in use at 1 MiB/s. */
const filled = (mib: number): SetupStep[] => [
  { guest: `dirty start --mib ${mib} --rate 0` },
  { waitPasses: 1 },
  { guest: 'dirty start --mib 16 --rate 1' },
];

const PLAIN: BenchVariant = { name: 'plain', label: 'plain TCP', body: { tls: false } };

/** Raw QMP, no control plane, plain TCP: QEMU's defaults, the cap lifted, and the cap lifted + 20 ms. */
const RAW_DEFAULTS: BenchVariant = { name: 'raw-defaults', label: 'raw QMP, QEMU defaults', body: {}, raw: {} };
const RAW_UNCAPPED_VARIANT: BenchVariant = {
  name: 'raw-uncapped',
  label: 'raw QMP, cap lifted',
  body: {},
  raw: { maxBandwidth: RAW_UNCAPPED },
};
const RAW_FAST: BenchVariant = {
  name: 'raw-fast',
  label: 'raw QMP, cap lifted + 20 ms',
  body: {},
  raw: { maxBandwidth: RAW_UNCAPPED, downtimeLimitMs: 20 },
};

/** What `--with` takes: the other tools a run compares Ferry with. */
export const WITH_TOOLS = ['libvirt'] as const;
export type WithTool = (typeof WITH_TOOLS)[number];

/** `--with libvirt[,…]`: the tools named, each once; anything else is bad usage. */
export function parseWith(value: string | undefined): WithTool[] {
  if (value === undefined) return [];
  const names = value.split(',').map((s) => s.trim());
  for (const n of names) {
    if (!(WITH_TOOLS as readonly string[]).includes(n)) {
      throw new FerryError('FERRY_E_USAGE', `Bad --with ${JSON.stringify(value)}: one of ${WITH_TOOLS.join(', ')}.`);
    }
  }
  return [...new Set(names)] as WithTool[];
}

/** libvirt 9.0 as its users run it: `virsh migrate --live`, plain TCP, libvirt's and QEMU's defaults. */
export const LIBVIRT_VARIANT: BenchVariant = {
  name: 'libvirt',
  label: 'libvirt, virsh migrate --live',
  body: {},
  libvirt: true,
};

export const SCENARIOS: readonly BenchScenario[] = [
  {
    name: 'baselines',
    title: 'Ferry against raw QMP, 160 MiB filled',
    measures:
      'The idle 160 MiB guest moved by Ferry (plain TCP, and its defaults with TLS) and, in the same lab, the ' +
      "same guest image moved by hand with Ferry's QMP client and no control plane (QEMU defaults; cap " +
      'lifted; cap lifted + 20 ms downtime limit). Baseline: raw QMP with the cap lifted + 20 ms.',
    memory: '256M',
    setup: IDLE_FILLED,
    baseline: RAW_FAST.name,
    variants: [
      RAW_FAST,
      RAW_DEFAULTS,
      RAW_UNCAPPED_VARIANT,
      { name: 'ferry-plain', label: 'Ferry, plain TCP', body: { tls: false } },
      FERRY_DEFAULTS,
    ],
  },
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
      'The idle 160 MiB guest with the migration stream in TLS (x509, cluster CA; the default) in one stream, ' +
      "against Ferry's defaults (TLS, multifd channels chosen by the hosts' cores: 2 here), 4 channels, and plain " +
      'TCP (`--no-tls`): what encryption costs when one stream is CPU-bound, and how much several streams win back.',
    memory: '256M',
    setup: IDLE_FILLED,
    baseline: 'tls',
    variants: [
      { name: 'tls', label: 'TLS, one stream', body: { multifd: 0 } },
      { name: 'defaults', label: "Ferry defaults (TLS, multifd by the hosts' cores)", body: {} },
      PLAIN,
      { name: 'tls-multifd4', label: 'TLS, multifd 4', body: { multifd: 4 } },
    ],
  },
  {
    name: 'eta',
    title: 'ETA on a limited link, 64 MiB dirtied at 5 MiB/s',
    measures:
      'A 256 MiB guest rewriting 64 MiB at 5 MiB/s, sent over a link held to 20 or 30 MiB/s: long enough for ' +
      "Ferry's ETA at 10, 25 and 50 % to be checked against the transfer's real end (the |ETA error| rows).",
    memory: '256M',
    setup: [{ guest: 'dirty start --mib 64 --rate 5' }],
    baseline: 'bw20',
    variants: [
      { name: 'bw20', label: '--bandwidth 20M', body: { bandwidth: '20M' } },
      { name: 'bw30', label: '--bandwidth 30M', body: { bandwidth: '30M' } },
    ],
  },
  {
    name: 'limited',
    title: 'a guest dirtying faster than its link: 64 MiB at 30 MiB/s over 20 MiB/s',
    measures:
      'A 256 MiB guest rewriting 64 MiB at 30 MiB/s, sent over a link held to 20 MiB/s: pre-copy alone never ' +
      'converges (the downtime limit raised to the 300 ms budget is not enough; its runs end at a 60 s deadline, ' +
      'the guest left running on its source). QEMU throttling the guest (`--auto-converge`) and post-copy once ' +
      'the budget is reached (`--postcopy auto`) finish within the budget.',
    memory: '256M',
    setup: [{ guest: 'dirty start --mib 64 --rate 30' }],
    baseline: 'autoconverge',
    variants: [
      { name: 'autoconverge', label: '--auto-converge', body: { bandwidth: '20M', autoConverge: true, deadline: '150s' } },
      { name: 'postcopy', label: '--postcopy auto', body: { bandwidth: '20M', postcopy: 'auto', deadline: '150s' } },
      { name: 'precopy', label: 'pre-copy only (60 s deadline)', body: { bandwidth: '20M', deadline: '60s' }, unfinished: true },
    ],
  },
  {
    name: 'large',
    title: 'a 1 GiB guest, 768 MiB filled',
    measures:
      "A 1 GiB guest with 768 MiB of its memory filled and (almost) idle: Ferry's defaults (TLS, multifd by the " +
      "hosts' cores) against one TLS stream and plain TCP, where the copy itself is most of the time.",
    memory: '1G',
    setup: filled(768),
    baseline: FERRY_DEFAULTS.name,
    variants: [FERRY_DEFAULTS, { name: 'tls-one', label: 'TLS, one stream', body: { multifd: 0 } }, PLAIN],
  },
  {
    name: 'features',
    title: 'busy guest, 64 MiB dirtied at 50 MiB/s: xbzrle, auto-converge, post-copy',
    measures:
      "The busy guest of `dirty` with QEMU's techniques for it: delta-compressed re-sent pages (`--xbzrle`), " +
      'throttling (`--auto-converge`), and post-copy after the first pass (`--postcopy always`), against ' +
      "Ferry's defaults.",
    memory: '256M',
    setup: [{ guest: 'dirty start --mib 64 --rate 50' }],
    baseline: FERRY_DEFAULTS.name,
    variants: [
      FERRY_DEFAULTS,
      { name: 'xbzrle', label: '--xbzrle', body: { xbzrle: true } },
      { name: 'autoconverge', label: '--auto-converge', body: { autoConverge: true } },
      { name: 'postcopy', label: '--postcopy always', body: { postcopy: 'always' } },
    ],
  },
  {
    name: 'storage',
    title: 'live with storage copy: a 256 MiB local disk, 160 MiB written',
    measures:
      'A 256 MiB guest with a 256 MiB local disk (160 MiB of it written) and 160 MiB of memory filled: the disk ' +
      "mirrored over NBD before the memory moves; each hop's disk checksum is compared with the one before.",
    memory: '256M',
    vm: { disk: '256M' },
    setup: [{ guest: 'disk fill /dev/vda 160 7' }, ...IDLE_FILLED],
    diskCheck: { device: '/dev/vda', mib: 160 },
    baseline: FERRY_DEFAULTS.name,
    variants: [FERRY_DEFAULTS, PLAIN],
  },
];

/** The scenarios a `ferry bench [SCENARIO[,SCENARIO…]]` invocation runs: all of them, or those named. */
export function selectScenarios(name?: string): BenchScenario[] {
  if (name === undefined || name === 'all') return [...SCENARIOS];
  return name.split(',').map((n) => {
    const s = SCENARIOS.find((x) => x.name === n);
    if (s === undefined) {
      throw new FerryError(
        'FERRY_E_USAGE',
        `No benchmark scenario ${JSON.stringify(n)}: one of ${SCENARIOS.map((x) => x.name).join(', ')} (comma-separated), or all.`,
      );
    }
    return s;
  });
}

/**
 * The scenarios with the other tools of `--with` added: each joins the scenarios that compare Ferry with
 * other tools (those with raw-QMP variants), after the others. None of those selected is bad usage.
 */
export function withTools(scenarios: readonly BenchScenario[], tools: readonly WithTool[]): BenchScenario[] {
  if (tools.length === 0) return [...scenarios];
  const comparing = scenarios.filter((s) => s.variants.some((v) => v.raw !== undefined));
  if (comparing.length === 0) {
    throw new FerryError(
      'FERRY_E_USAGE',
      `--with ${tools.join(',')} joins the scenarios that compare Ferry with other tools (${SCENARIOS.filter((s) => s.variants.some((v) => v.raw !== undefined)).map((s) => s.name).join(', ')}): select one of them, or all.`,
    );
  }
  return scenarios.map((s) =>
    comparing.includes(s) && tools.includes('libvirt')
      ? {
          ...s,
          title: `${s.title}, and libvirt`,
          measures: `${s.measures} With --with libvirt also libvirt 9.0's \`virsh migrate --live\` (its defaults, plain TCP) on the same guest image, hosts and links.`,
          variants: [...s.variants, LIBVIRT_VARIANT],
        }
      : s,
  );
}
