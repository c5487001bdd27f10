/**
 * What the REST API answers, as TypeBox schemas. Each has an `$id`: app.ts registers them once and the
 * OpenAPI document publishes them under `components.schemas`, which the routes reference (`ref`). The JSON
 * the controller builds is typed in src/common/ (api.ts, migration.ts, …); the compiler holds those types and
 * these schemas to each other (`Same` below, and a handler's answer must fit its route's response schema),
 * and responses.test.ts checks real answers against the published document.
 */
import Type, { type Static, type TSchema, type TUnsafe } from 'typebox';
import type { DrainJson, DrainPlanJson, HostJson, HostSummaryJson, PlacementJson, RebalanceJson, VmJson } from '../../common/api.ts';
import { ErrorEnvelope } from '../../common/protocol.ts';
import { AgentCertificate, AgentVersion, HOST_STATES, HostInventory, JoinResponse, RenewResponse, VM_STATES } from '../../common/protocol.ts';
import { GUEST_PROBES, MigrationPrediction, MigrationProgress, type MigrationJson, type MigrationPlanJson } from '../../common/migration.ts';
import { POSTCOPY_MODES, STORAGE_MODES } from '../../common/policy.ts';
import { MIGRATION_MODES, MIGRATION_STATES, PHASES } from '../../common/states.ts';
import { VmSpec } from '../../common/spec.ts';
import type { ImageJson } from '../images.ts';
import type { Judgement } from '../scheduler.ts';

const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);
const Time = Type.String({ description: 'ISO 8601 time' });
const CodeMessage = Type.Object({ code: Type.String(), message: Type.String() });

/** The envelope of every 4xx and 5xx answer: `{error:{code,message,details?}}`, codes in docs/errors.md. */
export const ApiError = Type.Object(ErrorEnvelope.properties, {
  $id: 'Error',
  description:
    'Every failure: a stable FERRY_E_* code (docs/errors.md), a message that says what to do, and details when there are any.',
});

export const Health = Type.Object(
  {
    ok: Type.Boolean(),
    version: Type.String(),
    caFingerprint: Type.String({ description: "SHA-256 fingerprint of the cluster CA's certificate" }),
  },
  { $id: 'Health' },
);

export const ApiToken = Type.Object(
  { id: Type.String(), role: Type.Enum(['admin', 'read-only']), createdAt: Time },
  { $id: 'ApiToken', description: 'An API token without its secret' },
);
export const ApiTokenCreated = Type.Object(
  { id: Type.String(), role: Type.Enum(['admin', 'read-only']), createdAt: Time, token: Type.String({ description: 'the secret, shown this once' }) },
  { $id: 'ApiTokenCreated' },
);

export const JoinToken = Type.Object({ token: Type.String(), expiresAt: Time }, { $id: 'JoinToken' });

export const Joined = Type.Object(JoinResponse.properties, {
  $id: 'Joined',
  description: "The agent's certificate, the cluster CA and the controller's pin",
});

export const Renewed = Type.Object(RenewResponse.properties, {
  $id: 'Renewed',
  description: "The agent's new certificate (for the key it sent) and the cluster CA",
});

export const Host = Type.Object(
  {
    name: Type.String(),
    url: Type.String({ description: "the agent's https://IP:PORT" }),
    state: Type.Enum(HOST_STATES),
    maintenance: Type.Boolean(),
    inventory: Nullable(HostInventory),
    agent: Nullable(AgentVersion),
    certificate: Nullable(AgentCertificate),
    error: Nullable(CodeMessage),
    freeMemoryBytes: Type.Number({
      description: 'what the scheduler would still give, after the VMs the store knows',
    }),
    vms: Type.Array(Type.String()),
    lastSeenAt: Nullable(Time),
    joinedAt: Time,
  },
  { $id: 'Host' },
);

/** What a list shows of an inventory: HostInventory's own fields, picked (common/api.ts HostInventorySummary). */
const InventorySummary = Type.Object({
  protocol: HostInventory.properties.protocol,
  cpu: Type.Pick(HostInventory.properties.cpu, ['model', 'vendor', 'cores']),
  memoryBytes: HostInventory.properties.memoryBytes,
  accel: HostInventory.properties.accel,
  qemu: Type.Pick(HostInventory.properties.qemu, ['version']),
  agentVersion: HostInventory.properties.agentVersion,
});

export const HostSummary = Type.Object(
  { ...Host.properties, inventory: Nullable(InventorySummary) },
  {
    $id: 'HostSummary',
    description: 'A host as a list shows it (`?view=summary`): every field of Host, the inventory without CPU flags, machine types, CPU definitions and expansions, or migration capabilities (GET /hosts/{name} has them)',
  },
);

/** An entry of GET /hosts: a Host, or with `view=summary` a HostSummary. */
export const HostListEntry = Type.Union([ref(Host), ref(HostSummary)], { $id: 'HostListEntry' });

const DrainPlanEntry = Type.Object({
  vm: Type.String(),
  destination: Nullable(Type.String()),
  reason: Type.String(),
  predictedMs: Nullable(Type.Number()),
  strategy: Type.String({ description: 'live | postcopy | cold | none' }),
  bytes: Type.Number(),
  dirtyBytesPerSec: Nullable(Type.Number()),
  code: Nullable(Type.String()),
});

export const DrainPlan = Type.Object(
  {
    host: Type.String(),
    deadlineMs: Type.Number(),
    feasible: Type.Boolean(),
    predictedMs: Nullable(Type.Number()),
    plan: Type.Array(DrainPlanEntry),
  },
  { $id: 'DrainPlan', description: 'What a drain would do (dry run): each VM, its destination and why, its predicted end and strategy' },
);

const DrainItem = Type.Object({
  vm: Type.String(),
  status: Type.Enum(['pending', 'migrating', 'moved', 'failed', 'skipped', 'unmovable']),
  strategy: Type.Optional(Type.String()),
  migration: Nullable(Type.String()),
  destination: Nullable(Type.String()),
  error: Nullable(CodeMessage),
});

export const Drain = Type.Object(
  {
    host: Type.String(),
    state: Type.Enum(['draining', 'drained', 'incomplete']),
    startedAt: Time,
    finishedAt: Nullable(Time),
    deadlineMs: Type.Number(),
    items: Type.Array(DrainItem),
    feasible: Type.Optional(Type.Boolean()),
    predictedMs: Type.Optional(Nullable(Type.Number())),
    plan: Type.Optional(Type.Array(DrainPlanEntry)),
  },
  { $id: 'Drain' },
);

/** GET /hosts/:name/drain: the last drain, or `state: none` when the host was never drained. */
export const DrainStatus = Type.Union(
  [
    Drain,
    Type.Object({
      host: Type.String(),
      state: Type.Literal('none'),
      items: Type.Array(DrainItem, { maxItems: 0 }),
    }),
  ],
  {
    $id: 'DrainStatus',
  },
);

/** POST /hosts/:name/drain: the drain started (with its plan), or with `dryRun` the plan alone. */
export const DrainAnswer = Type.Union([ref(Drain), ref(DrainPlan)], { $id: 'DrainAnswer' });

/** GET /vms/:name/placements: every host with the scheduler's verdict for this VM. */
export const Placements = Type.Array(
  Type.Object({ host: Type.String(), fits: Type.Boolean(), reason: Type.String() }),
  { $id: 'Placements' },
);

export const Rebalance = Type.Object(
  {
    dryRun: Type.Boolean(),
    threshold: Type.Number({ description: 'the spread of memory use (max − min, a fraction) it stops at' }),
    spreadBefore: Type.Number(),
    spreadAfter: Type.Number({ description: 'predicted, once every move is done' }),
    moves: Type.Array(
      Type.Object({
        vm: Type.String(),
        from: Type.String(),
        to: Type.String(),
        mode: Type.Enum(['live', 'cold']),
        costBytes: Type.Number({ description: 'bytes the move is predicted to send' }),
        reason: Type.String(),
        migration: Nullable(Type.String()),
        error: Nullable(CodeMessage),
      }),
    ),
  },
  { $id: 'Rebalance', description: 'The moves that even out memory use, cheapest first, each with its reason; started unless a dry run' },
);

export const Undrained = Type.Object(
  { host: Type.String(), maintenance: Type.Literal(false) },
  { $id: 'Undrained' },
);

const VmProperties = {
  name: Type.String(),
  host: Type.String(),
  state: Type.Enum([...VM_STATES, 'creating', 'deleting']),
  spec: VmSpec,
  bootId: Nullable(Type.String()),
  ready: Type.Boolean({
    description: 'the guest answered during this boot; `running` says only that QEMU runs it',
  }),
  ip: Nullable(Type.String()),
  createdAt: Time,
  updatedAt: Time,
};

export const Vm = Type.Object(VmProperties, { $id: 'Vm' });

const Judgement = Type.Object({
  host: Type.String(),
  accepted: Type.Boolean(),
  reason: Type.String(),
  freeMemoryBytes: Type.Optional(Type.Number()),
});

export const VmCreated = Type.Object(
  {
    ...VmProperties,
    placement: Type.Array(Judgement, { description: "the scheduler's verdict on each host" }),
  },
  { $id: 'VmCreated' },
);

export const Deleted = Type.Object({ deleted: Type.Literal(true), name: Type.String() }, { $id: 'Deleted' });

export const GuestReply = Type.Object(
  { reply: Type.Unknown({ description: "the guest tool's JSON reply, as it sent it" }) },
  { $id: 'GuestReply' },
);

export const Image = Type.Object(
  {
    name: Type.String(),
    format: Type.Enum(['qcow2', 'raw']),
    virtualSizeBytes: Type.Number(),
    fileBytes: Type.Number(),
    sha256: Type.String(),
    path: Type.String(),
    createdAt: Time,
    usedBy: Type.Array(Type.String(), { description: 'VMs whose disk is an overlay on it' }),
    hosts: Type.Optional(
      Type.Array(Type.String(), {
        description: 'hosts that hold a copy in their cache (as their agents answer)',
      }),
    ),
  },
  { $id: 'Image' },
);

const Policy = Type.Object({
  mode: Type.Enum(MIGRATION_MODES),
  storage: Type.Enum(STORAGE_MODES),
  postcopy: Type.Enum(POSTCOPY_MODES),
  maxDowntimeMs: Type.Number(),
  initialDowntimeMs: Type.Number(),
  bandwidthBytesPerSec: Type.Number(),
  tls: Type.Boolean(),
  autoConverge: Type.Boolean(),
  xbzrle: Type.Boolean(),
  multifd: Type.Integer(),
  stallTimeoutMs: Type.Number(),
  deadlineMs: Type.Number(),
  passesPerStep: Type.Number(),
});

const Escalation = Type.Union([
  Type.Object({
    kind: Type.Literal('downtime-limit'),
    fromMs: Type.Number(),
    toMs: Type.Number(),
    reason: Type.String(),
  }),
  Type.Object({ kind: Type.Literal('postcopy'), reason: Type.String() }),
  Type.Object({ kind: Type.Literal('postcopy-recover'), reason: Type.String() }),
  Type.Object({
    kind: Type.Literal('abort'),
    code: Type.Enum(['FERRY_E_MIGRATION_TIMEOUT', 'FERRY_E_MIGRATION_STALLED']),
    reason: Type.String(),
  }),
]);

export const Migration = Type.Object(
  {
    id: Type.String(),
    vm: Type.String(),
    source: Type.String(),
    destination: Type.String(),
    mode: Type.Enum(MIGRATION_MODES),
    state: Type.Enum(MIGRATION_STATES),
    phase: Type.Enum(PHASES),
    qemuStatus: Nullable(Type.String({ description: "QEMU's own migration status, verbatim" })),
    policy: Policy,
    /** The prediction made when it was requested (null while it is made, or when none could be): compare with what happened. */
    prediction: Nullable(MigrationPrediction),
    startedAt: Time,
    finishedAt: Nullable(Time),
    totalMs: Nullable(Type.Number({ description: 'end to end, from the request to the end of confirm' })),
    qemuTotalMs: Nullable(Type.Number()),
    downtimeMs: Nullable(Type.Number()),
    guestDowntimeMs: Nullable(
      Type.Number({
        description: 'the longest gap in probe replies from the guest, seen from the VM network',
      }),
    ),
    guestDowntimeProbe: Nullable(
      Type.Enum(GUEST_PROBES, {
        description:
          'which probe measured guestDowntimeMs: udp (the tiny guest) or icmp (any guest with an address)',
      }),
    ),
    memoryBytes: Nullable(Type.Number()),
    transferredBytes: Nullable(Type.Number()),
    iterations: Nullable(Type.Number()),
    escalations: Type.Array(Type.Object({ at: Time, step: Escalation })),
    progress: Nullable(MigrationProgress),
    why: Nullable(
      Type.Array(Judgement, {
        description: "the scheduler's verdict on each host, when it chose the destination",
      }),
    ),
    error: Nullable(CodeMessage),
    timeline: Type.Array(
      Type.Object({ at: Time, state: Type.Enum(MIGRATION_STATES), phase: Type.Enum(PHASES) }),
    ),
    waiting: Nullable(
      Type.Object({
        host: Type.String(),
        role: Type.Enum(['source', 'destination']),
        since: Time,
        attempts: Type.Number(),
        why: Type.String(),
      }),
    ),
    pending: Type.Array(
      Type.Object({
        host: Type.String(),
        action: Type.String(),
        attempts: Type.Number(),
        nextAt: Time,
        lastError: Nullable(Type.String()),
      }),
    ),
    images: Type.Array(
      Type.Object({
        name: Type.String(),
        sha256: Type.String(),
        action: Type.Enum(['present', 'fetched']),
        bytes: Type.Number(),
      }),
      {
        description:
          'the store images the disks sit on, and whether the destination had them or fetched them first',
      },
    ),
    priority: Type.Integer({ description: 'higher starts first in the queue (default 0)' }),
    queue: Nullable(
      Type.Object(
        { position: Type.Integer(), reason: Type.String(), since: Time },
        { description: 'while queued: its place (1 = next) and the limit it waits for' },
      ),
    ),
    actions: Type.Array(
      Type.Object({
        at: Time,
        action: Type.Enum(['set', 'postcopy', 'complete', 'share']),
        detail: Type.String(),
        bandwidthBytesPerSec: Type.Optional(Type.Number()),
        maxDowntimeMs: Type.Optional(Type.Number()),
      }),
      { description: "steering applied to the running job: the user's, and the queue's re-share of a link" },
    ),
    tuning: Nullable(
      Type.Object(
        { bandwidthBytesPerSec: Nullable(Type.Number()), downtimeLimitMs: Nullable(Type.Number()) },
        { description: 'what QEMU runs it with now: max-bandwidth (0 = unlimited) and the downtime limit' },
      ),
    ),
  },
  { $id: 'Migration' },
);

/** GET /api/v1/limits: the queue's limits (src/controller/migrations/queue.ts). */
/** `POST /api/v1/vms/{name}/migrate/prediction` (`ferry vm migrate --dry-run`): where it would go, and the prediction. */
export const MigrationPlan = Type.Object(
  {
    vm: Type.String(),
    source: Type.String(),
    destination: Type.String(),
    mode: Type.Enum(MIGRATION_MODES),
    why: Nullable(Type.Array(Judgement, { description: "the scheduler's verdict on each host, when it chose the destination" })),
    prediction: MigrationPrediction,
  },
  { $id: 'MigrationPlan' },
);

export const Limits = Type.Object(
  {
    maxOutbound: Type.Integer({ description: 'started migrations leaving one host' }),
    maxInbound: Type.Integer({ description: 'started migrations arriving at one host' }),
    maxConcurrent: Type.Integer({ description: 'started migrations in the cluster' }),
    linkCapacityBytesPerSec: Type.Number({ description: "each host's migration link, bytes per second; 0 = not limited" }),
    minShareBytesPerSec: Type.Number({ description: 'no migration gets less of a link than this: one more waits' }),
    queued: Type.Integer({ description: 'migrations waiting now' }),
    running: Type.Integer({ description: 'migrations started and not ended' }),
  },
  { $id: 'Limits' },
);

/** GET /api/v1/version. */
export const ServerVersion = Type.Object(
  {
    version: Type.String({ description: "the server's Ferry version" }),
    apiVersion: Type.String({ description: 'the version of this API (its OpenAPI document)' }),
    agentProtocol: Type.Object(
      { current: Type.Integer(), min: Type.Integer() },
      {
        description:
          'the controller↔agent protocol versions the server speaks (an agent outside them is incompatible)',
      },
    ),
  },
  { $id: 'ServerVersion' },
);

/** GET /api/v1/openapi.json: this document (described by the OpenAPI specification itself). */
export const OpenApiDocument = Type.Object(
  {
    openapi: Type.String(),
    info: Type.Object({ title: Type.String(), version: Type.String() }, { additionalProperties: true }),
    paths: Type.Record(Type.String(), Type.Unknown()),
  },
  // The rest is OpenAPI's own (components, servers, tags, …), as the specification says.
  { $id: 'OpenApiDocument', additionalProperties: true },
);

/** Every schema above, registered with fastify (app.ts) and published under its `$id`. */
export const RESPONSE_SCHEMAS = [
  ApiError,
  Health,
  JoinToken,
  ApiToken,
  ApiTokenCreated,
  Joined,
  Renewed,
  Host,
  HostSummary,
  HostListEntry,
  Drain,
  DrainPlan,
  DrainAnswer,
  DrainStatus,
  Placements,
  Undrained,
  Rebalance,
  Vm,
  VmCreated,
  Deleted,
  GuestReply,
  Image,
  Migration,
  MigrationPlan,
  Limits,
  OpenApiDocument,
  ServerVersion,
];

/**
 * A reference to a registered schema, typed as the schema: a route's handler must answer what it says, and
 * the document shows one `$ref` to `components.schemas` instead of a copy.
 */
export function ref<T extends TSchema>(schema: T, description?: string): TUnsafe<Static<T>> {
  // TypeBox keeps `$id` in the schema but not in its type.
  const id = (schema as { $id?: unknown }).$id;
  if (typeof id !== 'string')
    throw new Error('ref() takes a schema with an $id, registered in RESPONSE_SCHEMAS');
  return Type.Unsafe<Static<T>>({ $ref: `${id}#`, ...(description === undefined ? {} : { description }) });
}

// The schemas and the controller's types say the same, in both directions: a field added to one side only
// does not compile.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const _same: [
  Same<Static<typeof Host>, HostJson>,
  Same<Static<typeof HostSummary>, HostSummaryJson>,
  Same<Static<typeof Drain>, DrainJson>,
  Same<Static<typeof DrainPlan>, DrainPlanJson>,
  Same<Static<typeof Placements>, PlacementJson[]>,
  Same<Static<typeof Vm>, VmJson>,
  Same<Static<typeof VmCreated>, VmJson & { placement: Judgement[] }>,
  Same<Static<typeof Image>, ImageJson>,
  Same<Static<typeof Migration>, MigrationJson>,
  Same<Static<typeof MigrationPlan>, MigrationPlanJson>,
  Same<Static<typeof Rebalance>, RebalanceJson>,
] = [true, true, true, true, true, true, true, true, true, true, true];

/** What each error status means on Ferry's API, in general; a route may say more precisely which codes it answers. */
const FAILURES = {
  400: 'Bad input: FERRY_E_BAD_INPUT (schema), FERRY_E_BAD_NAME, or a more precise FERRY_E_BAD_* code',
  401: 'Missing or wrong bearer token: FERRY_E_UNAUTHORIZED',
  403: 'Refused: FERRY_E_READ_ONLY when a read-only token asks for a change',
  404: 'No such object',
  409: 'Conflicts with the state of the object',
  413: 'Body over 4 MiB: FERRY_E_BODY_TOO_LARGE (or user-data over 1 MiB: FERRY_E_USER_DATA_TOO_LARGE)',
  415: 'Body not application/json: FERRY_E_MEDIA_TYPE',
  '5xx':
    'An internal error, or a host agent, QEMU or the guest that failed or did not answer (FERRY_E_AGENT_UNREACHABLE, FERRY_E_QMP_*, …)',
} as const;
type Failure = Exclude<keyof typeof FAILURES, '5xx'>;

/**
 * The error answers of a route, each the shared envelope: 400 and 5xx always, 401 unless the route is
 * public, 413 and 415 when it reads a body (fastify reads
 * one on POST and DELETE, schema or not), and the statuses given, described as given.
 */
export function failures(
  specific: Partial<Record<Failure, string>>,
  opts: { public?: boolean; body?: boolean } = {},
): Record<string, TUnsafe<Static<typeof ApiError>>> {
  const statuses = new Set<Failure | '5xx'>([
    400,
    ...(opts.public ? [] : [401 as const]),
    ...(opts.body ? [413 as const, 415 as const] : []),
    // Every route that reads a body changes state: a read-only token gets 403 there.
    ...(opts.body && !opts.public ? [403 as const] : []),
  ]);
  for (const s of Object.keys(specific)) statuses.add(Number(s) as Failure);
  statuses.add('5xx');
  const out: Record<string, TUnsafe<Static<typeof ApiError>>> = {};
  for (const s of [...statuses].sort((a, b) => String(a).localeCompare(String(b)))) {
    out[String(s)] = ref(ApiError, (s !== '5xx' && specific[s]) || FAILURES[s]);
  }
  return out;
}
