/**
 * Migration policy: what the user asked for (CLI flags or the API body), checked and completed with Ferry's
 * defaults — the one place those defaults live. The client checks a request with it before it calls the
 * server; the controller resolves it again (it never trusts the client) and applies the escalation ladder
 * (src/controller/migrations/escalation.ts).
 */
import Type, { type Static } from 'typebox';
import { FerryError } from './errors.ts';
import { NAME_RE, parseDuration, parseSize } from './units.ts';
import { MIGRATION_MODES, type MigrationMode } from './states.ts';

export const STORAGE_MODES = ['auto', 'shared', 'copy'] as const;
export type StorageMode = (typeof STORAGE_MODES)[number];
export const POSTCOPY_MODES = ['never', 'auto', 'always'] as const;
export type PostcopyMode = (typeof POSTCOPY_MODES)[number];

export interface MigrationPolicy {
  mode: MigrationMode;
  storage: StorageMode;
  postcopy: PostcopyMode;
  /** The VM's downtime budget: the most the guest may be paused at switch-over. */
  maxDowntimeMs: number;
  /** The downtime limit QEMU starts with (escalated up to maxDowntimeMs). */
  initialDowntimeMs: number;
  /** Bytes per second; 0 = no limit (QEMU's own 128 MiB/s default cap is lifted). */
  bandwidthBytesPerSec: number;
  tls: boolean;
  autoConverge: boolean;
  xbzrle: boolean;
  /** Number of multifd channels; 0 = off. */
  multifd: number;
  /** No progress in transferred bytes for this long → abort (a cut link leaves QEMU `active` forever). */
  stallTimeoutMs: number;
  /** The whole migration must end within this; past it → abort. */
  deadlineMs: number;
  /** Passes without convergence before the next escalation step. */
  passesPerStep: number;
}

export const DEFAULT_POLICY: MigrationPolicy = {
  mode: 'live',
  storage: 'auto',
  postcopy: 'never',
  maxDowntimeMs: 300,
  initialDowntimeMs: 30,
  bandwidthBytesPerSec: 0,
  tls: true,
  autoConverge: false,
  xbzrle: false,
  multifd: 0,
  stallTimeoutMs: 10_000,
  deadlineMs: 10 * 60_000,
  passesPerStep: 4,
};

const Duration = Type.Union([Type.String({ pattern: '^\\s*\\d+(\\.\\d+)?\\s*(ms|s|m|h)?\\s*$', maxLength: 32 }), Type.Number({ minimum: 0 })]);

/**
 * The body of `POST /api/v1/vms/:name/migrate`, declared once: the API validates it, the CLI and the
 * benchmarks build it, the orchestrator takes it.
 */
export const MigrateBody = Type.Object(
  {
    to: Type.Optional(Type.String({ pattern: NAME_RE.source, description: 'destination host; default: the scheduler chooses' })),
    mode: Type.Optional(Type.Enum(MIGRATION_MODES)),
    storage: Type.Optional(Type.Enum(STORAGE_MODES)),
    postcopy: Type.Optional(Type.Enum(POSTCOPY_MODES)),
    maxDowntime: Type.Optional(Duration),
    bandwidth: Type.Optional(Type.Union([Type.String({ maxLength: 32 }), Type.Number({ minimum: 0 })], { description: 'MiB/s, or a size per second (100M); 0 = no limit' })),
    tls: Type.Optional(Type.Boolean()),
    autoConverge: Type.Optional(Type.Boolean()),
    xbzrle: Type.Optional(Type.Boolean()),
    multifd: Type.Optional(Type.Integer({ minimum: 0, maximum: 16 })),
    stallTimeout: Type.Optional(Duration),
    deadline: Type.Optional(Duration),
    priority: Type.Optional(Type.Integer({ minimum: -1000, maximum: 1000, description: 'higher starts first when migrations wait in the queue; default 0' })),
  },
  { additionalProperties: false },
);
export type MigrateRequest = Static<typeof MigrateBody>;

/** The body of `POST /api/v1/migrations/:id/set`: steering a running migration (at least one of them). */
export const SteerBody = Type.Object(
  {
    bandwidth: Type.Optional(MigrateBody.properties.bandwidth),
    maxDowntime: Type.Optional(Duration),
  },
  { additionalProperties: false },
);
export type SteerRequest = Static<typeof SteerBody>;

/** What a user may say (CLI flags / API body), each optional, as strings or numbers. */
export interface PolicyInput {
  mode?: string;
  storage?: string;
  postcopy?: string;
  maxDowntime?: string | number;
  bandwidth?: string | number;
  tls?: boolean;
  autoConverge?: boolean;
  xbzrle?: boolean;
  multifd?: number;
  stallTimeout?: string | number;
  deadline?: string | number;
}

function oneOf<T extends string>(value: string | undefined, allowed: readonly T[], what: string, dflt: T): T {
  if (value === undefined) return dflt;
  if ((allowed as readonly string[]).includes(value)) return value as T;
  throw new FerryError('FERRY_E_BAD_INPUT', `Bad ${what} ${JSON.stringify(value)}: one of ${allowed.join(', ')}.`);
}

/** `--bandwidth`: `0` (no limit), a number of MiB/s, or a size per second such as `100M`. */
export function parseBandwidth(v: string | number): number {
  if (v === 0 || v === '0') return 0;
  if (typeof v === 'number') return Math.round(v * 1024 * 1024);
  const t = v.replace(/\/s$/i, '').replace(/ps$/i, '');
  if (/^\d+(\.\d+)?$/.test(t)) return Math.round(Number(t) * 1024 * 1024);
  return parseSize(t, 'bandwidth');
}

export function resolvePolicy(input: PolicyInput = {}): MigrationPolicy {
  const p: MigrationPolicy = { ...DEFAULT_POLICY };
  p.mode = oneOf(input.mode, MIGRATION_MODES, 'mode', p.mode);
  p.storage = oneOf(input.storage, STORAGE_MODES, 'storage', p.storage);
  p.postcopy = oneOf(input.postcopy, POSTCOPY_MODES, 'postcopy', p.postcopy);
  if (input.maxDowntime !== undefined) p.maxDowntimeMs = parseDuration(input.maxDowntime, 'max downtime');
  if (p.maxDowntimeMs < 1) throw new FerryError('FERRY_E_BAD_INPUT', 'The max downtime must be at least 1ms.');
  p.initialDowntimeMs = Math.min(p.maxDowntimeMs, Math.max(10, Math.round(p.maxDowntimeMs / 10)));
  if (input.bandwidth !== undefined) p.bandwidthBytesPerSec = parseBandwidth(input.bandwidth);
  if (input.tls !== undefined) p.tls = input.tls;
  if (input.autoConverge !== undefined) p.autoConverge = input.autoConverge;
  if (input.xbzrle !== undefined) p.xbzrle = input.xbzrle;
  if (input.multifd !== undefined) {
    if (!Number.isInteger(input.multifd) || input.multifd < 0 || input.multifd > 16) {
      throw new FerryError('FERRY_E_BAD_INPUT', 'multifd channels: a whole number from 0 (off) to 16.');
    }
    p.multifd = input.multifd;
  }
  if (input.stallTimeout !== undefined) p.stallTimeoutMs = parseDuration(input.stallTimeout, 'stall timeout');
  if (input.deadline !== undefined) p.deadlineMs = parseDuration(input.deadline, 'deadline');
  if (p.mode === 'cold' && p.postcopy === 'always') {
    throw new FerryError('FERRY_E_BAD_INPUT', 'Post-copy is a live migration technique: not with --mode cold.');
  }
  return p;
}

/** The most multifd channels Ferry picks by itself: on the machines measured, 4 gained nothing over 2. */
export const AUTO_MULTIFD_MAX = 4;

/**
 * The multifd channels for a migration whose request did not say: with TLS, one stream is bound by one
 * core's encryption, so as many channels as the smaller of the two hosts has cores (2 to AUTO_MULTIFD_MAX),
 * when both QEMUs know multifd. Plain TCP keeps one stream (it is not CPU-bound), and so does a policy that
 * may switch to post-copy or uses xbzrle (QEMU 10.0 refuses either with multifd), and so does a request with
 * its own bandwidth cap: QEMU 10.0 holds multifd to its cap only roughly, a few MiB/s over it per channel
 * (docs/qemu.md), which matters for a small cap and not for a link's share. `cores`: the smaller host's,
 * `bothSupport`: both QEMUs list the capability; null when not known (then one stream).
 */
export function autoMultifd(policy: MigrationPolicy, cores: number | null, bothSupport: boolean): number {
  if (!policy.tls || policy.mode !== 'live' || policy.postcopy !== 'never' || policy.xbzrle || !bothSupport) return 0;
  if (policy.bandwidthBytesPerSec !== 0) return 0;
  if (cores === null || cores < 2) return 0;
  return Math.min(AUTO_MULTIFD_MAX, cores);
}

/** One step of the escalation ladder (src/controller/migrations/escalation.ts), as a job records it. */
export type Escalation =
  | { kind: 'downtime-limit'; fromMs: number; toMs: number; reason: string }
  | { kind: 'postcopy'; reason: string }
  /** Post-copy stalled or paused: pause both sides, `migrate-recover` on the destination, resume. */
  | { kind: 'postcopy-recover'; reason: string }
  | { kind: 'abort'; code: 'FERRY_E_MIGRATION_TIMEOUT' | 'FERRY_E_MIGRATION_STALLED'; reason: string };
