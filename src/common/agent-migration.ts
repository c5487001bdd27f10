/**
 * What crosses the wire between the controller's orchestrator and an agent's migration routes
 * (src/agent/migration/routes.ts): request bodies, responses, and the agent's view of one migration, each a
 * TypeBox schema with its type derived from it; the routes that carry them are in agent-routes.ts. The agent
 * keeps its side of a migration in a small versioned record file, so these types are also on disk.
 */
import Type, { type Static, type TSchema } from 'typebox';
import { SharedDiskFingerprint } from './protocol.ts';
import { VmSpec } from './spec.ts';
import { MigrationProgress } from './migration.ts';
import { Prediction } from './progress.ts';
import { NAME_RE } from './units.ts';

const Name = Type.String({ pattern: NAME_RE.source });
const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);

/** The QEMU migration switches a migration asks for; both sides set those that must match. */
export const MigrationCapabilities = Type.Object({
  /** `postcopy-ram`: allows switching to post-copy later (needs userfaultfd on the destination: root). */
  postcopy: Type.Boolean(),
  /** multifd channels; 0 = one stream. */
  multifd: Type.Integer({ minimum: 0, maximum: 16 }),
  /** XOR-delta compression of re-sent pages. */
  xbzrle: Type.Boolean(),
  /** Throttle the guest's vCPUs when it dirties faster than we send (source only). */
  autoConverge: Type.Boolean(),
});
export type MigrationCapabilities = Static<typeof MigrationCapabilities>;

/** Where the destination exports the disks of a storage migration over NBD. */
export const NbdTarget = Type.Object({
  host: Type.String(),
  port: Type.Integer({ minimum: 1, maximum: 65535 }),
  /** Disk id → NBD export name. */
  exports: Type.Record(Type.String(), Type.String()),
});
export type NbdTarget = Static<typeof NbdTarget>;

/**
 * The destination's signed word that it destroyed its copy of a guest (src/agent/migration/receipt.ts
 * signs and checks it): the only thing that lets a source whose QEMU completed resume its own copy.
 */
export const DiscardReceipt = Type.Object({
  version: Type.Literal(1),
  migration: Type.String(),
  vm: Type.String(),
  /** The destination host: the CN of the certificate that signed. */
  host: Type.String(),
  at: Type.String(),
  /** base64 signature over `payload()`; empty when the destination has no cluster identity (tests). */
  signature: Type.String(),
  certPem: Type.String(),
});
export type DiscardReceipt = Static<typeof DiscardReceipt>;

export const StorageCopy = Type.Enum(['shared', 'copy']);
export type StorageCopy = Static<typeof StorageCopy>;

/** Migration ids are opaque to agents but end up in file names: keep them tame. */
export const MIGRATION_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/** POST /agent/v1/migrations/:id/prepare (destination). */
export const PrepareRequest = Type.Object({
  spec: VmSpec,
  /** This host's migration address (IPv4/IPv6 literal or host name) that QEMU and NBD listen on. */
  listenAddress: Type.String({ minLength: 1, maxLength: 253 }),
  /** TLS with the agent's cluster identity (default true); false = plain TCP, only when asked for. */
  tls: Type.Optional(Type.Boolean()),
  storage: StorageCopy,
  capabilities: Type.Optional(Type.Partial(MigrationCapabilities)),
  /**
   * The source's host name: with TLS, the destination admits only its certificate (QEMU `tls-authz`, see
   * tls.ts). Absent (an older controller): any certificate of the cluster CA, as before.
   */
  tlsPeer: Type.Optional(Name),
  /**
   * The shared disks as the source sees them: the destination refuses, before it starts anything, a path
   * it does not see or a file that differs. Absent (an older controller): only their presence is checked.
   */
  sharedDisks: Type.Optional(Type.Array(SharedDiskFingerprint, { maxItems: 8 })),
});
export type PrepareRequest = Static<typeof PrepareRequest>;

export const PrepareResponse = Type.Object({
  id: Type.String(),
  /** Give this to perform: `tcp:HOST:PORT`. */
  uri: Type.String(),
  /** With copied storage: where the source mirrors the disks. */
  nbd: Nullable(NbdTarget),
  /** The name the destination's certificate is checked against (its migration address); null without TLS. */
  tlsHostname: Nullable(Type.String()),
});
export type PrepareResponse = Static<typeof PrepareResponse>;

/** POST /agent/v1/migrations/:id/perform (source); returns at once, the transfer runs in the background. */
export const PerformRequest = Type.Object({
  vm: Name,
  uri: Type.String({ minLength: 1, maxLength: 300 }),
  nbd: Type.Optional(Nullable(NbdTarget)),
  tls: Type.Optional(Type.Boolean()),
  /**
   * The name the destination's certificate must carry: the controller sends the destination's host name
   * (agent certificates carry it as a DNS SAN). Defaults to the host of `uri`.
   */
  tlsHostname: Type.Optional(Nullable(Type.String({ pattern: '^[A-Za-z0-9.:-]{1,253}$' }))),
  storage: StorageCopy,
  capabilities: Type.Optional(Type.Partial(MigrationCapabilities)),
  /** Bytes per second; 0 or absent = no limit (QEMU's 128 MiB/s default cap is lifted). */
  bandwidthBytesPerSec: Type.Optional(Type.Number({ minimum: 0 })),
  /**
   * QEMU's downtime-limit at the start; the controller's policy raises it later (POST …/tune). Stalls and
   * the switch to post-copy are the policy's too (a protocol-1 controller's `stallTimeoutMs` and `postcopy`
   * are ignored: objects are open).
   */
  downtimeLimitMs: Type.Optional(Type.Number({ minimum: 1 })),
  /** The destination host's name: only its signed discard receipt lets this source resume after completing. */
  destination: Type.Optional(Nullable(Name)),
});
export type PerformRequest = Static<typeof PerformRequest>;

/** POST …/finish and …/confirm. */
export const OutcomeRequest = Type.Object({
  success: Type.Boolean(),
  /** confirm(false) on a source whose QEMU completed (or began post-copy): the destination's discard receipt. */
  receipt: Type.Optional(DiscardReceipt),
});
export type OutcomeRequest = Static<typeof OutcomeRequest>;

/** POST …/postcopy-resume (source): the address the destination's `migrate-recover` listens on. */
export const PostcopyResumeRequest = Type.Object({ uri: Type.String({ minLength: 1, maxLength: 300 }) });
export type PostcopyResumeRequest = Static<typeof PostcopyResumeRequest>;

/** POST …/recover (destination): where its `migrate-recover` listens. */
export const RecoverResponse = Type.Object({ uri: Type.String() });
export type RecoverResponse = Static<typeof RecoverResponse>;

/** POST …/tune: escalations applied by the controller's policy while a migration runs. */
export const TuneRequest = Type.Object({
  downtimeLimitMs: Type.Optional(Type.Number({ minimum: 1 })),
  bandwidthBytesPerSec: Type.Optional(Type.Number({ minimum: 0 })),
});
export type TuneRequest = Static<typeof TuneRequest>;

/**
 * The agent's own stage of a migration. Destination: prepared → (postcopy: the guest runs here while its
 * pages arrive) → finished, or → discarded. Source: mirroring → transferring → (postcopy) → completed →
 * confirmed, or failed | cancelled → resumed (after completed: only against a discard receipt).
 */
export const AGENT_STAGES = [
  'preparing',
  'prepared',
  'mirroring',
  'transferring',
  'postcopy',
  'completed',
  'failed',
  'cancelled',
  'finished',
  'discarded',
  'confirmed',
  'resumed',
] as const;
export type AgentStage = (typeof AGENT_STAGES)[number];

export const FINAL_AGENT_STAGES: readonly AgentStage[] = ['finished', 'discarded', 'confirmed', 'resumed'];

export const Role = Type.Enum(['source', 'destination']);
export type Role = Static<typeof Role>;

const NullableNumber = Nullable(Type.Number());

/** GET /agent/v1/migrations/:id */
export const AgentMigrationView = Type.Object({
  protocol: Type.Literal(1),
  id: Type.String(),
  role: Role,
  vm: Type.String(),
  stage: Type.Enum(AGENT_STAGES),
  /** QEMU's migration status, verbatim (`setup`, `active`, `postcopy-active`, `device`, `completed`, ...). */
  qemuStatus: Nullable(Type.String()),
  /** QEMU's run state (`running`, `paused`, `inmigrate`, `postmigrate`, ...), when known. */
  runState: Nullable(Type.String()),
  storage: StorageCopy,
  tls: Type.Boolean(),
  uri: Nullable(Type.String()),
  startedAt: Type.String(),
  updatedAt: Type.String(),
  finishedAt: Nullable(Type.String()),
  /** QEMU's figures, verbatim units. */
  totalMs: NullableNumber,
  downtimeMs: NullableNumber,
  setupMs: NullableNumber,
  expectedDowntimeMs: NullableNumber,
  transferredBytes: NullableNumber,
  remainingBytes: NullableNumber,
  memoryBytes: NullableNumber,
  iterations: NullableNumber,
  dirtyRateBytesPerSec: NullableNumber,
  mbps: NullableNumber,
  downtimeLimitMs: NullableNumber,
  bandwidthBytesPerSec: NullableNumber,
  postcopyStarted: Type.Boolean(),
  progress: Nullable(MigrationProgress),
  prediction: Nullable(Prediction),
  /** Disk mirror progress (copied storage). */
  mirror: Nullable(
    Type.Object({ transferredBytes: Type.Number(), totalBytes: Type.Number(), ready: Type.Boolean() }),
  ),
  error: Nullable(Type.Object({ code: Type.String(), message: Type.String() })),
  /** Source: how many times a paused post-copy was recovered. */
  recoveries: Type.Optional(Type.Number()),
  /** Destination, once discarded: its signed word, which the source needs to resume after completing. */
  receipt: Type.Optional(Nullable(DiscardReceipt)),
});
export type AgentMigrationView = Static<typeof AgentMigrationView>;

export const ColdMode = Type.Enum(['shutdown', 'save']);
export type ColdMode = Static<typeof ColdMode>;

export const ColdFile = Type.Object({
  /** Disk id (`vda`) or `state` (the saved VM state). */
  name: Type.String(),
  bytes: Type.Number({ minimum: 0 }),
  sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
});
export type ColdFile = Static<typeof ColdFile>;

/** What cold perform hands the controller: the files to move, each with its checksum. */
export const ColdManifest = Type.Object({
  id: Type.String(),
  vm: Type.String(),
  mode: ColdMode,
  files: Type.Array(ColdFile),
});
export type ColdManifest = Static<typeof ColdManifest>;

/** POST …/cold/prepare (destination lays out the VM; start=false keeps a VM that was stopped stopped). */
export const ColdPrepareRequest = Type.Object({
  spec: VmSpec,
  start: Type.Optional(Type.Boolean()),
  /** As in PrepareRequest: the shared disks as the source sees them, checked before anything is laid out. */
  sharedDisks: Type.Optional(Type.Array(SharedDiskFingerprint, { maxItems: 8 })),
});
export type ColdPrepareRequest = Static<typeof ColdPrepareRequest>;

/** POST …/cold/perform (source): stop (shutdown) or pause and save (save), then offer the files. */
export const ColdPerformRequest = Type.Object({
  vm: Name,
  mode: Type.Optional(ColdMode),
  timeoutMs: Type.Optional(Type.Number({ minimum: 0 })),
});
export type ColdPerformRequest = Static<typeof ColdPerformRequest>;

/** A view with no figures yet, as an agent starts its side of a migration. */
export function emptyView(p: {
  id: string;
  role: 'source' | 'destination';
  vm: string;
  stage: AgentStage;
  storage: StorageCopy;
  tls: boolean;
  uri: string | null;
}): AgentMigrationView {
  const t = new Date().toISOString();
  return {
    protocol: 1,
    ...p,
    qemuStatus: null,
    runState: null,
    startedAt: t,
    updatedAt: t,
    finishedAt: null,
    totalMs: null,
    downtimeMs: null,
    setupMs: null,
    expectedDowntimeMs: null,
    transferredBytes: null,
    remainingBytes: null,
    memoryBytes: null,
    iterations: null,
    dirtyRateBytesPerSec: null,
    mbps: null,
    downtimeLimitMs: null,
    bandwidthBytesPerSec: null,
    postcopyStarted: false,
    progress: null,
    prediction: null,
    mirror: null,
    error: null,
  };
}
