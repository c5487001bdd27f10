/**
 * The QMP vocabulary Ferry speaks: command names with their arguments and return values, and the events
 * Ferry listens for, as TypeScript types. Names and shapes follow the QAPI schema of QEMU 10.0 (checked
 * with `query-qmp-schema` on qemu-system-x86_64 10.0.2). Status and state strings that QEMU versions
 * disagree on are typed as plain `string` (an open set): Ferry must pass them through verbatim, not
 * reject what a newer QEMU says. Lists of the values known today are exported for documentation and tests.
 */

// ---------------------------------------------------------------------------------------------------------
// Open sets of strings (known values in QEMU 10.0; other versions may add or drop some)

export const RUN_STATES = [
  'debug',
  'inmigrate',
  'internal-error',
  'io-error',
  'paused',
  'postmigrate',
  'prelaunch',
  'finish-migrate',
  'restore-vm',
  'running',
  'save-vm',
  'shutdown',
  'suspended',
  'watchdog',
  'guest-panicked',
  'colo',
] as const;
/** `query-status`.status: one of RUN_STATES today, but kept open. */
export type RunState = string;

export const MIGRATION_STATUSES = [
  'none',
  'setup',
  'cancelling',
  'cancelled',
  'active',
  'postcopy-active',
  'postcopy-paused',
  'postcopy-recover-setup',
  'postcopy-recover',
  'completed',
  'failed',
  'colo',
  'pre-switchover',
  'device',
  'wait-unplug',
] as const;
/** `query-migrate`.status and the MIGRATION event: one of MIGRATION_STATUSES today, but kept open. */
export type MigrationStatus = string;

export const MIGRATION_CAPABILITIES = [
  'xbzrle',
  'rdma-pin-all',
  'auto-converge',
  'zero-blocks',
  'events',
  'postcopy-ram',
  'x-colo',
  'release-ram',
  'return-path',
  'pause-before-switchover',
  'multifd',
  'dirty-bitmaps',
  'postcopy-blocktime',
  'late-block-activate',
  'x-ignore-shared',
  'validate-uuid',
  'background-snapshot',
  'zero-copy-send',
  'postcopy-preempt',
  'switchover-ack',
  'dirty-limit',
  'mapped-ram',
] as const;
/** A migration capability name; the `string & {}` keeps completion for known names while staying open. */
export type MigrationCapabilityName = (typeof MIGRATION_CAPABILITIES)[number] | (string & {});

export const BLOCK_JOB_STATUSES = [
  'undefined',
  'created',
  'running',
  'paused',
  'ready',
  'standby',
  'waiting',
  'pending',
  'aborting',
  'concluded',
  'null',
] as const;
export type JobStatus = string;

// ---------------------------------------------------------------------------------------------------------
// Shared structures

/** SocketAddress (flat union): migration channels, the `nbd` block driver's `server`. */
export type SocketAddress =
  | {
      type: 'inet';
      host: string;
      port: string;
      numeric?: boolean;
      to?: number;
      ipv4?: boolean;
      ipv6?: boolean;
      'keep-alive'?: boolean;
      mptcp?: boolean;
    }
  | { type: 'unix'; path: string; abstract?: boolean; tight?: boolean }
  | { type: 'vsock'; cid: string; port: string }
  | { type: 'fd'; str: string };

/** SocketAddressLegacy (nested `data`): only `nbd-server-start` uses this older form. */
export type SocketAddressLegacy =
  | {
      type: 'inet';
      data: { host: string; port: string; numeric?: boolean; to?: number; ipv4?: boolean; ipv6?: boolean };
    }
  | { type: 'unix'; data: { path: string; abstract?: boolean; tight?: boolean } }
  | { type: 'vsock'; data: { cid: string; port: string } }
  | { type: 'fd'; data: { str: string } };

export type MigrationAddress =
  | ({ transport: 'socket' } & SocketAddress)
  | { transport: 'exec'; args: string[] }
  | { transport: 'rdma'; host: string; port: string }
  | { transport: 'file'; filename: string; offset: number };

export interface MigrationChannel {
  'channel-type': 'main' | 'cpr';
  addr: MigrationAddress;
}

export interface QemuVersionTriple {
  major: number;
  minor: number;
  micro: number;
}

export interface VersionInfo {
  qemu: QemuVersionTriple;
  package: string;
}

export interface StatusInfo {
  running: boolean;
  status: RunState;
}

export interface CpuInfoFast {
  'cpu-index': number;
  'qom-path': string;
  'thread-id': number;
  props?: {
    'node-id'?: number;
    'drawer-id'?: number;
    'book-id'?: number;
    'socket-id'?: number;
    'die-id'?: number;
    'cluster-id'?: number;
    'module-id'?: number;
    'core-id'?: number;
    'thread-id'?: number;
  };
  /** QEMU's target name, e.g. `x86_64`. */
  target: string;
}

export interface MachineInfo {
  name: string;
  alias?: string;
  'is-default'?: boolean;
  'cpu-max': number;
  'hotpluggable-cpus': boolean;
  'numa-mem-supported': boolean;
  deprecated: boolean;
  'default-cpu-type'?: string;
  'default-ram-id'?: string;
  acpi: boolean;
  'compat-props'?: { 'qom-type': string; property: string; value: string }[];
}

export interface CpuDefinitionInfo {
  name: string;
  'migration-safe'?: boolean;
  static: boolean;
  /** Features the host/accelerator cannot provide; empty means the model is usable here. */
  'unavailable-features'?: string[];
  typename: string;
  'alias-of'?: string;
  deprecated: boolean;
}

export interface MigrationRamStats {
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  normal: number;
  'normal-bytes': number;
  'dirty-pages-rate': number;
  mbps: number;
  'dirty-sync-count': number;
  'postcopy-requests': number;
  'page-size': number;
  'multifd-bytes': number;
  'pages-per-second': number;
  'precopy-bytes': number;
  'downtime-bytes': number;
  'postcopy-bytes': number;
  'dirty-sync-missed-zero-copy': number;
  /** Only in older QEMU (deprecated, always 0, later removed). */
  skipped?: number;
}

export interface MigrationDiskStats {
  transferred: number;
  remaining: number;
  total: number;
}

export interface XbzrleCacheStats {
  'cache-size': number;
  bytes: number;
  pages: number;
  'cache-miss': number;
  'cache-miss-rate': number;
  'encoding-rate': number;
  overflow: number;
}

/** `query-migrate`: which fields are present depends on the status (e.g. `ram` only once active). */
export interface MigrationInfo {
  status?: MigrationStatus;
  ram?: MigrationRamStats;
  /** Block migration statistics: only QEMU before 9.1 (block migration was removed then). */
  disk?: MigrationDiskStats;
  vfio?: { transferred: number };
  'xbzrle-cache'?: XbzrleCacheStats;
  /** Milliseconds since the migration started (or its total, once finished). */
  'total-time'?: number;
  'expected-downtime'?: number;
  /** Milliseconds the guest was stopped at switchover (once completed). */
  downtime?: number;
  'setup-time'?: number;
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
  'blocked-reasons'?: string[];
  'postcopy-blocktime'?: number;
  'postcopy-vcpu-blocktime'?: number[];
  'socket-address'?: SocketAddress[];
  'dirty-limit-throttle-time-per-round'?: number;
  'dirty-limit-ring-full-time'?: number;
}

export interface MigrationCapabilityStatus {
  capability: MigrationCapabilityName;
  state: boolean;
}

/** Arguments of `migrate-set-parameters` and the result of `query-migrate-parameters`. */
export interface MigrationParameters {
  'announce-initial'?: number;
  'announce-max'?: number;
  'announce-rounds'?: number;
  'announce-step'?: number;
  'throttle-trigger-threshold'?: number;
  'cpu-throttle-initial'?: number;
  'cpu-throttle-increment'?: number;
  'cpu-throttle-tailslow'?: boolean;
  /** On set, `null` or `""` clears it; on query, a string. */
  'tls-creds'?: string | null;
  'tls-hostname'?: string | null;
  'tls-authz'?: string | null;
  /** Bytes per second. */
  'max-bandwidth'?: number;
  'avail-switchover-bandwidth'?: number;
  /** Milliseconds. */
  'downtime-limit'?: number;
  'x-checkpoint-delay'?: number;
  'multifd-channels'?: number;
  'xbzrle-cache-size'?: number;
  'max-postcopy-bandwidth'?: number;
  'max-cpu-throttle'?: number;
  'multifd-compression'?: 'none' | 'zlib' | 'zstd' | (string & {});
  'multifd-zlib-level'?: number;
  'multifd-qatzip-level'?: number;
  'multifd-zstd-level'?: number;
  'block-bitmap-mapping'?: {
    'node-name': string;
    alias: string;
    bitmaps: { name: string; alias: string; transform?: { persistent?: boolean } }[];
  }[];
  'x-vcpu-dirty-limit-period'?: number;
  'vcpu-dirty-limit'?: number;
  mode?: 'normal' | 'cpr-reboot' | 'cpr-transfer' | (string & {});
  'zero-page-detection'?: 'none' | 'legacy' | 'multifd' | (string & {});
  'direct-io'?: boolean;
}

export type DirtyRateMeasureMode = 'page-sampling' | 'dirty-ring' | 'dirty-bitmap';
export type TimeUnit = 'second' | 'millisecond';

export interface DirtyRateInfo {
  /** MiB per second, once measured. */
  'dirty-rate'?: number;
  status: 'unstarted' | 'measuring' | 'measured' | (string & {});
  'start-time': number;
  'calc-time': number;
  'calc-time-unit': TimeUnit;
  'sample-pages': number;
  mode: DirtyRateMeasureMode;
  'vcpu-dirty-rate'?: { id: number; 'dirty-rate': number }[];
}

export type BlockdevOnError = 'report' | 'ignore' | 'enospc' | 'stop' | 'auto';

interface BlockdevOptionsBase {
  'node-name'?: string;
  discard?: 'ignore' | 'unmap';
  cache?: { direct?: boolean; 'no-flush'?: boolean };
  active?: boolean;
  'read-only'?: boolean;
  'auto-read-only'?: boolean;
  'force-share'?: boolean;
  'detect-zeroes'?: 'off' | 'on' | 'unmap';
}

/** A child node given inline or by node name. */
export type BlockdevRef = BlockdevOptions | string;

export interface BlockdevOptionsFile extends BlockdevOptionsBase {
  driver: 'file';
  filename: string;
  locking?: 'auto' | 'on' | 'off';
  aio?: 'threads' | 'native' | 'io_uring';
}

export interface BlockdevOptionsQcow2 extends BlockdevOptionsBase {
  driver: 'qcow2';
  file: BlockdevRef;
  backing?: BlockdevRef | null;
  'lazy-refcounts'?: boolean;
  'cache-size'?: number;
}

export interface BlockdevOptionsRaw extends BlockdevOptionsBase {
  driver: 'raw';
  file: BlockdevRef;
  offset?: number;
  size?: number;
}

export interface BlockdevOptionsNbd extends BlockdevOptionsBase {
  driver: 'nbd';
  server: SocketAddress;
  export?: string;
  'tls-creds'?: string;
  'tls-hostname'?: string;
  'reconnect-delay'?: number;
  'open-timeout'?: number;
}

/** Any other driver: QEMU validates it. */
export interface BlockdevOptionsOther extends BlockdevOptionsBase {
  driver: string;
  [option: string]: unknown;
}

export type BlockdevOptions =
  BlockdevOptionsFile | BlockdevOptionsQcow2 | BlockdevOptionsRaw | BlockdevOptionsNbd | BlockdevOptionsOther;

export interface BlockJobInfo {
  /** `mirror`, `commit`, `stream`, `backup`, ... */
  type: string;
  device: string;
  len: number;
  offset: number;
  busy: boolean;
  paused: boolean;
  speed: number;
  'io-status': 'ok' | 'failed' | 'nospace' | (string & {});
  ready: boolean;
  status: JobStatus;
  'auto-finalize': boolean;
  'auto-dismiss': boolean;
  error?: string;
  /** Mirror jobs only. */
  'actively-synced'?: boolean;
}

export interface ImageInfo {
  filename: string;
  format: string;
  'dirty-flag'?: boolean;
  'actual-size'?: number;
  'virtual-size': number;
  'cluster-size'?: number;
  encrypted?: boolean;
  compressed?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  snapshots?: {
    id: string;
    name: string;
    'vm-state-size': number;
    'date-sec': number;
    'date-nsec': number;
    'vm-clock-sec': number;
    'vm-clock-nsec': number;
    icount?: number;
  }[];
  'format-specific'?: { type: string; data: Record<string, unknown> };
  'backing-image'?: ImageInfo;
}

export interface BlockDeviceInfo {
  file: string;
  'node-name'?: string;
  ro: boolean;
  drv: string;
  backing_file?: string;
  backing_file_depth: number;
  active: boolean;
  encrypted: boolean;
  detect_zeroes: 'off' | 'on' | 'unmap';
  bps: number;
  bps_rd: number;
  bps_wr: number;
  iops: number;
  iops_rd: number;
  iops_wr: number;
  image: ImageInfo;
  group?: string;
  cache: { writeback: boolean; direct: boolean; 'no-flush': boolean };
  write_threshold: number;
  'dirty-bitmaps'?: {
    name?: string;
    count: number;
    granularity: number;
    recording: boolean;
    busy: boolean;
    persistent: boolean;
    inconsistent?: boolean;
  }[];
  /** Throttling limits (`bps_max`, `iops_size`, ...): present only when set. */
  [throttle: `${'bps' | 'iops'}${string}`]: number | undefined;
}

export interface BlockInfo {
  device: string;
  qdev?: string;
  type: string;
  removable: boolean;
  locked: boolean;
  inserted?: BlockDeviceInfo;
  tray_open?: boolean;
  'io-status'?: 'ok' | 'failed' | 'nospace' | (string & {});
}

export type BlockExportRemoveMode = 'safe' | 'hard';

export interface BlockExportOptionsNbd {
  type: 'nbd';
  id: string;
  'node-name': string;
  writable?: boolean;
  writethrough?: boolean;
  'fixed-iothread'?: boolean;
  iothread?: string;
  'allow-inactive'?: boolean;
  /** Export name the NBD client asks for (defaults to the node name). */
  name?: string;
  description?: string;
  bitmaps?: (string | { node: string; name: string })[];
  'allocation-depth'?: boolean;
}

export interface BlockExportOptionsOther {
  type: string;
  id: string;
  'node-name': string;
  [option: string]: unknown;
}

export interface ObjectOptionsTlsCredsX509 {
  'qom-type': 'tls-creds-x509';
  id: string;
  /** Directory with ca-cert.pem and {server,client}-{cert,key}.pem. */
  dir?: string;
  endpoint?: 'client' | 'server';
  'verify-peer'?: boolean;
  priority?: string;
  'sanity-check'?: boolean;
  passwordid?: string;
}

export interface ObjectOptionsOther {
  'qom-type': string;
  id: string;
  [property: string]: unknown;
}

export type ObjectOptions = ObjectOptionsTlsCredsX509 | ObjectOptionsOther;

// ---------------------------------------------------------------------------------------------------------
// Commands

type NoArgs = Record<string, never>;
type Empty = Record<string, never>;

/** Command name → its arguments and return value. `execute()` is typed from this map. */
export interface QmpCommands {
  qmp_capabilities: { args: { enable?: string[] }; ret: Empty };

  // --- the VM ---
  'query-status': { args: NoArgs; ret: StatusInfo };
  'query-version': { args: NoArgs; ret: VersionInfo };
  stop: { args: NoArgs; ret: Empty };
  cont: { args: NoArgs; ret: Empty };
  /** May close the socket before the reply arrives: `execute('quit')` resolves either way. */
  quit: { args: NoArgs; ret: Empty };
  system_powerdown: { args: NoArgs; ret: Empty };
  'query-cpus-fast': { args: NoArgs; ret: CpuInfoFast[] };
  'query-machines': { args: { 'compat-props'?: boolean }; ret: MachineInfo[] };
  'query-cpu-definitions': { args: NoArgs; ret: CpuDefinitionInfo[] };
  'query-kvm': { args: NoArgs; ret: { enabled: boolean; present: boolean } };
  'announce-self': {
    args: { initial: number; max: number; rounds: number; step: number; interfaces?: string[]; id?: string };
    ret: Empty;
  };
  'object-add': { args: ObjectOptions; ret: Empty };
  'object-del': { args: { id: string }; ret: Empty };
  'human-monitor-command': { args: { 'command-line': string; 'cpu-index'?: number }; ret: string };

  // --- migration ---
  migrate: {
    /** Exactly one of `uri` and `channels`. `resume` continues a paused post-copy migration. */
    args: { uri?: string; channels?: MigrationChannel[]; detach?: boolean; resume?: boolean };
    ret: Empty;
  };
  'migrate-incoming': {
    args: { uri?: string; channels?: MigrationChannel[]; 'exit-on-error'?: boolean };
    ret: Empty;
  };
  migrate_cancel: { args: NoArgs; ret: Empty };
  /** Continues from a pause state (`pre-switchover`, `device`) named in `state`. */
  'migrate-continue': { args: { state: MigrationStatus }; ret: Empty };
  'migrate-pause': { args: NoArgs; ret: Empty };
  'migrate-recover': { args: { uri: string }; ret: Empty };
  'migrate-start-postcopy': { args: NoArgs; ret: Empty };
  'query-migrate': { args: NoArgs; ret: MigrationInfo };
  /** Instances with yank functions (`{type: 'migration'}` while a migration's connection exists or is being made). */
  'query-yank': { args: NoArgs; ret: { type: string; id?: string }[] };
  /** Shuts down the channels of the instances at once (for migration: the main one and every multifd one). */
  yank: { args: { instances: ({ type: 'migration' } | { type: 'chardev'; id: string } | { type: 'block-node'; 'node-name': string })[] }; ret: Empty };
  'migrate-set-capabilities': { args: { capabilities: MigrationCapabilityStatus[] }; ret: Empty };
  'query-migrate-capabilities': { args: NoArgs; ret: MigrationCapabilityStatus[] };
  'migrate-set-parameters': { args: MigrationParameters; ret: Empty };
  'query-migrate-parameters': { args: NoArgs; ret: MigrationParameters };
  'calc-dirty-rate': {
    args: {
      'calc-time': number;
      'calc-time-unit'?: TimeUnit;
      'sample-pages'?: number;
      mode?: DirtyRateMeasureMode;
    };
    ret: Empty;
  };
  'query-dirty-rate': { args: { 'calc-time-unit'?: TimeUnit }; ret: DirtyRateInfo };

  // --- block devices, jobs and exports ---
  'blockdev-add': { args: BlockdevOptions; ret: Empty };
  'blockdev-del': { args: { 'node-name': string }; ret: Empty };
  'blockdev-mirror': {
    args: {
      'job-id'?: string;
      device: string;
      target: string;
      replaces?: string;
      sync: 'top' | 'full' | 'none' | 'incremental' | 'bitmap';
      speed?: number;
      granularity?: number;
      'buf-size'?: number;
      'on-source-error'?: BlockdevOnError;
      'on-target-error'?: BlockdevOnError;
      'filter-node-name'?: string;
      'copy-mode'?: 'background' | 'write-blocking';
      'auto-finalize'?: boolean;
      'auto-dismiss'?: boolean;
    };
    ret: Empty;
  };
  /** On a mirror job that is ready, cancel finishes it cleanly (the target is a consistent copy). */
  'block-job-cancel': { args: { device: string; force?: boolean }; ret: Empty };
  'block-job-complete': { args: { device: string }; ret: Empty };
  'query-block-jobs': { args: NoArgs; ret: BlockJobInfo[] };
  'query-named-block-nodes': { args: { flat?: boolean }; ret: BlockDeviceInfo[] };
  'query-block': { args: NoArgs; ret: BlockInfo[] };
  'nbd-server-start': {
    args: {
      addr: SocketAddressLegacy;
      'tls-creds'?: string;
      'tls-authz'?: string;
      'max-connections'?: number;
      'handshake-max-seconds'?: number;
    };
    ret: Empty;
  };
  'nbd-server-add': {
    args: { device: string; name?: string; description?: string; writable?: boolean; bitmap?: string };
    ret: Empty;
  };
  'nbd-server-remove': { args: { name: string; mode?: BlockExportRemoveMode }; ret: Empty };
  'nbd-server-stop': { args: NoArgs; ret: Empty };
  'block-export-add': { args: BlockExportOptionsNbd | BlockExportOptionsOther; ret: Empty };
  'block-export-del': { args: { id: string; mode?: BlockExportRemoveMode }; ret: Empty };
}

export type QmpCommandName = keyof QmpCommands;
export type QmpArgs<K extends QmpCommandName> = QmpCommands[K]['args'];
export type QmpReturn<K extends QmpCommandName> = QmpCommands[K]['ret'];

// ---------------------------------------------------------------------------------------------------------
// Events

export type ShutdownCause =
  | 'none'
  | 'host-error'
  | 'host-qmp-quit'
  | 'host-qmp-system-reset'
  | 'host-signal'
  | 'host-ui'
  | 'guest-shutdown'
  | 'guest-reset'
  | 'guest-panic'
  | 'subsystem-reset'
  | 'snapshot-load'
  | (string & {});

interface BlockJobEventData {
  type: string;
  device: string;
  len: number;
  offset: number;
  speed: number;
}

/** Event name → its `data`. Events not listed here are still delivered, with `data: Record<string, unknown>`. */
export interface QmpEventMap {
  MIGRATION: { status: MigrationStatus };
  MIGRATION_PASS: { pass: number };
  STOP: Empty;
  RESUME: Empty;
  POWERDOWN: Empty;
  SHUTDOWN: { guest: boolean; reason: ShutdownCause };
  RESET: { guest: boolean; reason: ShutdownCause };
  BLOCK_JOB_READY: BlockJobEventData;
  BLOCK_JOB_COMPLETED: BlockJobEventData & { error?: string };
  BLOCK_JOB_CANCELLED: BlockJobEventData;
  BLOCK_JOB_ERROR: { device: string; operation: 'read' | 'write'; action: 'ignore' | 'report' | 'stop' };
  JOB_STATUS_CHANGE: { id: string; status: JobStatus };
}

export type QmpEventData<N extends string> = N extends keyof QmpEventMap
  ? QmpEventMap[N]
  : Record<string, unknown>;

export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

export interface QmpEvent<N extends string = string> {
  event: N;
  /** QEMU omits `data` for events without data; Ferry always gives an object. */
  data: QmpEventData<N>;
  timestamp: QmpTimestamp;
}

/** Narrows an event from `events()` to a typed one. */
export function isEvent<N extends keyof QmpEventMap>(ev: QmpEvent, name: N): ev is QmpEvent<N> & QmpEvent {
  return ev.event === name;
}
