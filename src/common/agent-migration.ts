/**
 * What crosses the wire between the controller's orchestrator and an agent's migration routes
 * (src/agent/migrations.ts): request bodies, responses, and the agent's view of one migration. The agent
 * keeps its side of a migration in a small versioned record file, so these types are also on disk.
 */
import type { VmSpec } from './spec.ts';
import type { MigrationProgress } from './migration.ts';
import type { Prediction } from './progress.ts';

/** The QEMU migration switches a migration asks for; both sides set those that must match. */
export interface MigrationCapabilities {
  /** `postcopy-ram`: allows switching to post-copy later (needs userfaultfd on the destination: root). */
  postcopy: boolean;
  /** multifd channels; 0 = one stream. */
  multifd: number;
  /** XOR-delta compression of re-sent pages. */
  xbzrle: boolean;
  /** Throttle the guest's vCPUs when it dirties faster than we send (source only). */
  autoConverge: boolean;
}

/** Where the destination exports the disks of a storage migration over NBD. */
export interface NbdTarget {
  host: string;
  port: number;
  /** Disk id → NBD export name. */
  exports: Record<string, string>;
}

/**
 * The destination's signed word that it destroyed its copy of a guest (src/agent/migration/receipt.ts
 * signs and checks it): the only thing that lets a source whose QEMU completed resume its own copy.
 */
export interface DiscardReceipt {
  version: 1;
  migration: string;
  vm: string;
  /** The destination host: the CN of the certificate that signed. */
  host: string;
  at: string;
  /** base64 signature over `payload()`; empty when the destination has no cluster identity (tests). */
  signature: string;
  certPem: string;
}

export type StorageCopy = 'shared' | 'copy';

/** Migration ids are opaque to agents but end up in file names: keep them tame. */
export const MIGRATION_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/** POST /agent/v1/migrations/:id/prepare (destination). */
export interface PrepareRequest {
  spec: VmSpec;
  /** This host's migration address (IPv4/IPv6 literal or host name) that QEMU and NBD listen on. */
  listenAddress: string;
  /** TLS with the agent's cluster identity (default true); false = plain TCP, only when asked for. */
  tls?: boolean;
  storage: StorageCopy;
  capabilities?: Partial<MigrationCapabilities>;
  /**
   * The source's host name: with TLS, the destination admits only its certificate (QEMU `tls-authz`, see
   * tls.ts). Absent (an older controller): any certificate of the cluster CA, as before.
   */
  tlsPeer?: string;
}

export interface PrepareResponse {
  id: string;
  /** Give this to perform: `tcp:HOST:PORT`. */
  uri: string;
  /** With copied storage: where the source mirrors the disks. */
  nbd: NbdTarget | null;
  /** The name the destination's certificate is checked against (its migration address); null without TLS. */
  tlsHostname: string | null;
}

/** POST /agent/v1/migrations/:id/perform (source); returns at once, the transfer runs in the background. */
export interface PerformRequest {
  vm: string;
  uri: string;
  nbd?: NbdTarget | null;
  tls?: boolean;
  /**
   * The name the destination's certificate must carry: the controller sends the destination's host name
   * (agent certificates carry it as a DNS SAN). Defaults to the host of `uri`.
   */
  tlsHostname?: string | null;
  storage: StorageCopy;
  capabilities?: Partial<MigrationCapabilities>;
  /** Bytes per second; 0 or absent = no limit (QEMU's 128 MiB/s default cap is lifted). */
  bandwidthBytesPerSec?: number;
  /** QEMU's downtime-limit at the start (the policy may raise it later). Default 300 ms. */
  downtimeLimitMs?: number;
  /** No transferred byte for this long while active → migrate_cancel and FERRY_E_MIGRATION_STALLED. */
  stallTimeoutMs?: number;
  /** `always`: switch to post-copy once the first pass is done; otherwise only on POST …/postcopy. */
  postcopy?: 'never' | 'auto' | 'always';
  /** The destination host's name: only its signed discard receipt lets this source resume after completing. */
  destination?: string | null;
}

/** POST …/finish and …/confirm. */
export interface OutcomeRequest {
  success: boolean;
  /** confirm(false) on a source whose QEMU completed (or began post-copy): the destination's discard receipt. */
  receipt?: DiscardReceipt;
}

/** POST …/postcopy-resume (source): the address the destination's `migrate-recover` listens on. */
export interface PostcopyResumeRequest {
  uri: string;
}

/** POST …/tune: escalations applied by the controller's policy while a migration runs. */
export interface TuneRequest {
  downtimeLimitMs?: number;
  bandwidthBytesPerSec?: number;
}

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

export type Role = 'source' | 'destination';

/** GET /agent/v1/migrations/:id */
export interface AgentMigrationView {
  protocol: 1;
  id: string;
  role: Role;
  vm: string;
  stage: AgentStage;
  /** QEMU's migration status, verbatim (`setup`, `active`, `postcopy-active`, `device`, `completed`, ...). */
  qemuStatus: string | null;
  /** QEMU's run state (`running`, `paused`, `inmigrate`, `postmigrate`, ...), when known. */
  runState: string | null;
  storage: StorageCopy;
  tls: boolean;
  uri: string | null;
  startedAt: string;
  updatedAt: string;
  finishedAt: string | null;
  /** QEMU's figures, verbatim units. */
  totalMs: number | null;
  downtimeMs: number | null;
  setupMs: number | null;
  expectedDowntimeMs: number | null;
  transferredBytes: number | null;
  remainingBytes: number | null;
  memoryBytes: number | null;
  iterations: number | null;
  dirtyRateBytesPerSec: number | null;
  mbps: number | null;
  downtimeLimitMs: number | null;
  bandwidthBytesPerSec: number | null;
  postcopyStarted: boolean;
  progress: MigrationProgress | null;
  prediction: Prediction | null;
  /** Disk mirror progress (copied storage). */
  mirror: { transferredBytes: number; totalBytes: number; ready: boolean } | null;
  error: { code: string; message: string } | null;
  /** Source: how many times a paused post-copy was recovered. */
  recoveries?: number;
  /** Destination, once discarded: its signed word, which the source needs to resume after completing. */
  receipt?: DiscardReceipt | null;
}

export type ColdMode = 'shutdown' | 'save';

export interface ColdFile {
  /** Disk id (`vda`) or `state` (the saved VM state). */
  name: string;
  bytes: number;
  sha256: string;
}

/** What cold perform hands the controller: the files to move, each with its checksum. */
export interface ColdManifest {
  id: string;
  vm: string;
  mode: ColdMode;
  files: ColdFile[];
}

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
