/**
 * Every route of the agent, as data: name, method, path, the TypeBox schemas of its params, body and
 * answer (protocol.ts, agent-migration.ts), its success status, the controller's default timeout, and
 * whether it streams. Three things are made from this table and nothing else:
 *
 * - the agent's fastify routes, validated against the schemas (src/agent/routes.ts `mountAgentRoutes`);
 * - the controller's typed client, `client.call('prepare', { params: { id }, body })` answering the route's
 *   response type (src/controller/agent-client.ts);
 * - the fake agent of the unit tests (src/testing/fake-agent.ts), held to the real one by one contract
 *   suite (src/testing/agent-contract.case.ts).
 *
 * Adding a route: one entry here (schemas in protocol.ts or agent-migration.ts), one handler in the agent's
 * handler map (the compiler asks for it), one in the fake agent; the client method exists already.
 *
 * `stream`: `text` answers text/plain (the console, the metrics); `download` answers application/octet-stream with the
 * file's sha256 in SHA256_HEADER; `upload` takes an octet-stream body (headers checked by `headers`);
 * `events` answers text/event-stream, one `migration` event per change of the view (not used by the
 * controller, which polls). For streams `timeoutMs` bounds the wait for headers and each idle gap, not the
 * whole transfer.
 */
import Type, { type Static, type TSchema } from 'typebox';
import {
  AgentMigrationView,
  ColdFile,
  ColdManifest,
  ColdPerformRequest,
  ColdPrepareRequest,
  MIGRATION_ID_RE,
  OutcomeRequest,
  PerformRequest,
  PostcopyResumeRequest,
  PrepareRequest,
  PrepareResponse,
  RecoverResponse,
  TuneRequest,
} from './agent-migration.ts';
import type { ErrorCode } from './errors.ts';
import {
  AGENT_PROTOCOL,
  AGENT_PROTOCOL_MIN,
  AgentCertificate,
  AgentVersion,
  CachedImage,
  CreateVmRequest,
  Deleted,
  DirtyRate,
  GuestRequest,
  HostInventory,
  SharedDiskFingerprint,
  ImageReceived,
  StopVmRequest,
  VmStatus,
} from './protocol.ts';
import { SHA256_PATTERN } from './spec.ts';
import { NAME_RE } from './units.ts';

export const AGENT_BASE = '/agent/v1';
/** The sha256 (hex) of a cold-migration file, on the source's download and the destination's upload. */
export const SHA256_HEADER = 'x-ferry-sha256';

/**
 * The leader's term on every call of a controller that shares its store with others (docs/ha.md). An agent
 * refuses a term older than the newest it has seen (FERRY_E_STALE_TERM); no header counts as term 0, what
 * a controller alone on its store sends.
 */
export const TERM_HEADER = 'x-ferry-term';

export type RouteMethod = 'GET' | 'POST' | 'PUT' | 'DELETE';
export type RouteStream = 'text' | 'download' | 'upload' | 'events';

export interface RouteSpec {
  readonly method: RouteMethod;
  /** Under AGENT_BASE, fastify style (`/vms/:name`). */
  readonly path: string;
  readonly summary: string;
  readonly params?: TSchema;
  readonly body?: TSchema;
  /** Request headers the route needs (upload: the sha256). */
  readonly headers?: TSchema;
  /** The answer of a success; for `download` nothing (bytes), for `events` each event's data. */
  readonly response: TSchema;
  /** The usual success status (an idempotent replay may answer 200 instead). */
  readonly status: 200 | 201 | 202;
  /** The controller's whole-call deadline by default; a function of the body where the body sets it. */
  readonly timeoutMs: number | ((body: never) => number);
  readonly stream?: RouteStream;
  /** What an id or name this agent does not know answers (404), for routes that look one up. */
  readonly unknown?: ErrorCode;
  /** The protocol version that added the route (absent: every version in the range has it). */
  readonly since?: number;
}

const route = <const R extends RouteSpec>(r: R): R => r;

const NameParams = Type.Object({ name: Type.String({ pattern: NAME_RE.source }) });
const IdParams = Type.Object({ id: Type.String({ pattern: MIGRATION_ID_RE.source }) });
/** A cold file: a disk id (`vda`) or `state`; checked again against the migration's own manifest. */
const FileParams = Type.Object({
  id: Type.String({ pattern: MIGRATION_ID_RE.source }),
  name: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$' }),
});
const ImageParams = Type.Object({ sha256: Type.String({ pattern: SHA256_PATTERN }) });
const Sha256Headers = Type.Object({ [SHA256_HEADER]: Type.String({ pattern: '^[0-9a-fA-F]{64}$' }) });

export const DEFAULT_TIMEOUT_MS = 10_000;
/** Creating or starting a VM waits for the guest to boot. */
export const CREATE_TIMEOUT_MS = 120_000;
/** How long a stop waits for the guest by default (the agent's own default, host.ts). */
export const STOP_WAIT_MS = 30_000;
const STREAM_TIMEOUT_MS = 300_000;

export const AGENT_ROUTES = {
  // --- the host and its VMs (src/agent/server.ts)
  version: route({
    method: 'GET',
    path: '/version',
    summary: 'Which Ferry the agent runs and the protocol versions it serves',
    response: AgentVersion,
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
  }),
  certificate: route({
    method: 'GET',
    path: '/certificate',
    summary: "The agent certificate's validity and when the agent renews it",
    response: AgentCertificate,
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
    since: 3,
  }),
  inventory: route({
    method: 'GET',
    path: '/inventory',
    summary: "The host's facts",
    response: HostInventory,
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
  }),
  listVms: route({
    method: 'GET',
    path: '/vms',
    summary: "The host's VMs",
    response: Type.Array(VmStatus),
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
  }),
  createVm: route({
    method: 'POST',
    path: '/vms',
    summary: 'Create the disks, start QEMU, and (as readiness asks) wait for the guest to answer',
    body: CreateVmRequest,
    response: VmStatus,
    status: 201,
    timeoutMs: (b: CreateVmRequest) => CREATE_TIMEOUT_MS + (b.readyTimeoutMs ?? 0),
  }),
  getVm: route({
    method: 'GET',
    path: '/vms/:name',
    summary: 'One VM',
    params: NameParams,
    response: VmStatus,
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
    unknown: 'FERRY_E_VM_NOT_FOUND',
  }),
  dirtyRate: route({
    method: 'GET',
    path: '/vms/:name/dirty-rate',
    summary: "How fast the guest dirties its memory, measured now by QEMU over one second (calc-dirty-rate)",
    params: NameParams,
    response: DirtyRate,
    status: 200,
    timeoutMs: 15_000,
    unknown: 'FERRY_E_VM_NOT_FOUND',
  }),
  sharedDisks: route({
    method: 'GET',
    path: '/vms/:name/shared-disks',
    summary:
      "The VM's shared disks as this host sees them: size and sha256 of the first MiB (a migration's source)",
    params: NameParams,
    response: Type.Array(SharedDiskFingerprint),
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
    unknown: 'FERRY_E_VM_NOT_FOUND',
  }),
  stopVm: route({
    method: 'POST',
    path: '/vms/:name/stop',
    summary: 'ACPI power-down, then quit',
    params: NameParams,
    body: StopVmRequest,
    response: VmStatus,
    status: 200,
    timeoutMs: (b: StopVmRequest) => (b.timeoutMs ?? STOP_WAIT_MS) + DEFAULT_TIMEOUT_MS,
    unknown: 'FERRY_E_VM_NOT_FOUND',
  }),
  startVm: route({
    method: 'POST',
    path: '/vms/:name/start',
    summary: 'Start a stopped VM',
    params: NameParams,
    response: VmStatus,
    status: 200,
    timeoutMs: CREATE_TIMEOUT_MS,
    unknown: 'FERRY_E_VM_NOT_FOUND',
  }),
  pauseVm: route({
    method: 'POST',
    path: '/vms/:name/pause',
    summary: 'Pause the guest',
    params: NameParams,
    response: VmStatus,
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
    unknown: 'FERRY_E_VM_NOT_FOUND',
  }),
  resumeVm: route({
    method: 'POST',
    path: '/vms/:name/resume',
    summary: 'Resume the guest',
    params: NameParams,
    response: VmStatus,
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
    unknown: 'FERRY_E_VM_NOT_FOUND',
  }),
  deleteVm: route({
    method: 'DELETE',
    path: '/vms/:name',
    summary: "Stop QEMU, remove the VM's files",
    params: NameParams,
    response: Deleted,
    status: 200,
    timeoutMs: 60_000,
    unknown: 'FERRY_E_VM_NOT_FOUND',
  }),
  guest: route({
    method: 'POST',
    path: '/vms/:name/guest',
    summary: 'One command for the guest tool; its JSON reply (over the virtio-serial channel)',
    params: NameParams,
    body: GuestRequest,
    response: Type.Unknown(),
    status: 200,
    timeoutMs: 30_000,
    unknown: 'FERRY_E_VM_NOT_FOUND',
  }),
  console: route({
    method: 'GET',
    path: '/vms/:name/console',
    summary: "The tail of the VM's serial log",
    params: NameParams,
    response: Type.String(),
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
    stream: 'text',
    unknown: 'FERRY_E_VM_NOT_FOUND',
  }),
  metrics: route({
    method: 'GET',
    path: '/metrics',
    summary: "The agent's Prometheus metrics: QEMU processes, each VM's state, migration phase durations, the process",
    response: Type.String(),
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
    stream: 'text',
  }),

  // --- the host's cache of base images (src/agent/images.ts), filled by the controller before first use
  listImages: route({
    method: 'GET',
    path: '/images',
    summary: 'The base images this host has, by sha256',
    response: Type.Array(CachedImage),
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
  }),
  putImage: route({
    method: 'PUT',
    path: '/images/:sha256',
    summary:
      'One base image, checked against :sha256 as it is written (a mismatch keeps nothing); present already: the body is dropped',
    params: ImageParams,
    response: ImageReceived,
    status: 200,
    timeoutMs: STREAM_TIMEOUT_MS,
    stream: 'upload',
  }),

  // --- migrations (src/agent/migration/routes.ts); :id is the controller's job id
  prepare: route({
    method: 'POST',
    path: '/migrations/:id/prepare',
    summary: 'Destination: QEMU -incoming defer, capabilities, TLS, NBD exports, migrate-incoming',
    params: IdParams,
    body: PrepareRequest,
    response: PrepareResponse,
    status: 201,
    timeoutMs: 90_000,
  }),
  perform: route({
    method: 'POST',
    path: '/migrations/:id/perform',
    summary: 'Source: parameters, disk mirrors, migrate; runs in the background',
    params: IdParams,
    body: PerformRequest,
    response: AgentMigrationView,
    status: 202,
    timeoutMs: 60_000,
  }),
  migration: route({
    method: 'GET',
    path: '/migrations/:id',
    summary: "This agent's view of a migration (also after an agent restart)",
    params: IdParams,
    response: AgentMigrationView,
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
    unknown: 'FERRY_E_MIGRATION_NOT_FOUND',
  }),
  events: route({
    method: 'GET',
    path: '/migrations/:id/events',
    summary: 'The view, as server-sent events, until the migration ends here',
    params: IdParams,
    response: AgentMigrationView,
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
    stream: 'events',
    unknown: 'FERRY_E_MIGRATION_NOT_FOUND',
  }),
  cancel: route({
    method: 'POST',
    path: '/migrations/:id/cancel',
    summary: 'Source: migrate_cancel',
    params: IdParams,
    response: AgentMigrationView,
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
    unknown: 'FERRY_E_MIGRATION_NOT_FOUND',
  }),
  postcopy: route({
    method: 'POST',
    path: '/migrations/:id/postcopy',
    summary: 'Source: switch to post-copy',
    params: IdParams,
    response: AgentMigrationView,
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
    unknown: 'FERRY_E_MIGRATION_NOT_FOUND',
  }),
  postcopyPause: route({
    method: 'POST',
    path: '/migrations/:id/postcopy-pause',
    summary: 'Source: pause a post-copy whose stream broke',
    params: IdParams,
    response: AgentMigrationView,
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
    unknown: 'FERRY_E_MIGRATION_NOT_FOUND',
  }),
  postcopyResume: route({
    method: 'POST',
    path: '/migrations/:id/postcopy-resume',
    summary: "Source: resume a paused post-copy towards the destination's recover address",
    params: IdParams,
    body: PostcopyResumeRequest,
    response: AgentMigrationView,
    status: 200,
    timeoutMs: 20_000,
    unknown: 'FERRY_E_MIGRATION_NOT_FOUND',
  }),
  recover: route({
    method: 'POST',
    path: '/migrations/:id/recover',
    summary: 'Destination: migrate-recover; where it listens',
    params: IdParams,
    response: RecoverResponse,
    status: 200,
    timeoutMs: 20_000,
    unknown: 'FERRY_E_MIGRATION_NOT_FOUND',
  }),
  tune: route({
    method: 'POST',
    path: '/migrations/:id/tune',
    summary: 'Source: escalations (downtime limit, bandwidth) while it runs',
    params: IdParams,
    body: TuneRequest,
    response: AgentMigrationView,
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
    unknown: 'FERRY_E_MIGRATION_NOT_FOUND',
  }),
  complete: route({
    method: 'POST',
    path: '/migrations/:id/complete',
    summary: 'Source: pause the guest (`stop`) so that what is left is sent; it resumes on the destination',
    params: IdParams,
    response: AgentMigrationView,
    status: 200,
    timeoutMs: DEFAULT_TIMEOUT_MS,
    unknown: 'FERRY_E_MIGRATION_NOT_FOUND',
  }),
  finish: route({
    method: 'POST',
    path: '/migrations/:id/finish',
    summary: 'Destination: run the guest (success) or discard it with a signed receipt; idempotent',
    params: IdParams,
    body: OutcomeRequest,
    response: AgentMigrationView,
    status: 200,
    timeoutMs: 30_000,
    unknown: 'FERRY_E_MIGRATION_NOT_FOUND',
  }),
  confirm: route({
    method: 'POST',
    path: '/migrations/:id/confirm',
    summary:
      'Source: quit and remove (success) or resume (failure; after completed only with the receipt); idempotent',
    params: IdParams,
    body: OutcomeRequest,
    response: AgentMigrationView,
    status: 200,
    timeoutMs: 30_000,
    unknown: 'FERRY_E_MIGRATION_NOT_FOUND',
  }),

  // --- cold migration: the controller streams each file from the source's download to the destination's upload
  coldPrepare: route({
    method: 'POST',
    path: '/migrations/:id/cold/prepare',
    summary: 'Destination: lay out the VM and wait for its files',
    params: IdParams,
    body: ColdPrepareRequest,
    response: AgentMigrationView,
    status: 201,
    timeoutMs: 90_000,
  }),
  coldPerform: route({
    method: 'POST',
    path: '/migrations/:id/cold/perform',
    summary: 'Source: stop, or pause and save the state; the files to move with their sha256',
    params: IdParams,
    body: ColdPerformRequest,
    response: ColdManifest,
    status: 200,
    timeoutMs: 300_000,
  }),
  coldDownload: route({
    method: 'GET',
    path: '/migrations/:id/files/:name',
    summary: 'Source: one file of the manifest, its sha256 in x-ferry-sha256',
    params: FileParams,
    response: Type.Unknown(),
    status: 200,
    timeoutMs: STREAM_TIMEOUT_MS,
    stream: 'download',
    unknown: 'FERRY_E_MIGRATION_NOT_FOUND',
  }),
  coldUpload: route({
    method: 'PUT',
    path: '/migrations/:id/files/:name',
    summary:
      'Destination: one file, checked against x-ferry-sha256 as it arrives (a mismatch replaces nothing)',
    params: FileParams,
    headers: Sha256Headers,
    response: ColdFile,
    status: 200,
    timeoutMs: STREAM_TIMEOUT_MS,
    stream: 'upload',
    unknown: 'FERRY_E_MIGRATION_NOT_FOUND',
  }),
} as const satisfies Record<string, RouteSpec>;

export type AgentRoutes = typeof AGENT_ROUTES;
export type RouteName = keyof AgentRoutes;
export const ROUTE_NAMES = Object.keys(AGENT_ROUTES) as RouteName[];

type Def<N extends RouteName> = AgentRoutes[N];
export type ParamsOf<N extends RouteName> =
  Def<N> extends { params: infer S extends TSchema } ? Static<S> : undefined;
export type BodyOf<N extends RouteName> =
  Def<N> extends { body: infer S extends TSchema } ? Static<S> : undefined;
export type HeadersOf<N extends RouteName> =
  Def<N> extends { headers: infer S extends TSchema } ? Static<S> : undefined;
export type ResponseOf<N extends RouteName> = Static<Def<N>['response']>;
export type StreamOf<N extends RouteName> =
  Def<N> extends { stream: infer S extends RouteStream } ? S : undefined;

/** The routes by how they carry their answer. */
export type RoutesStreaming<S extends RouteStream | undefined> = {
  [N in RouteName]: StreamOf<N> extends S ? N : never;
}[RouteName];

/** The full path of a route (fastify style), `/agent/v1/vms/:name`. */
export function routePath(name: RouteName): string {
  return `${AGENT_BASE}${AGENT_ROUTES[name].path}`;
}

/** The path of one call: each `:param` replaced by its value, encoded. */
export function fillPath(name: RouteName, params: Record<string, string> | undefined): string {
  return routePath(name).replace(/:([A-Za-z][A-Za-z0-9]*)/g, (_m, key: string) => {
    const v = params?.[key];
    if (v === undefined) throw new TypeError(`route ${name}: no value for :${key}`);
    return encodeURIComponent(v);
  });
}

/** Whether an agent speaking `version` has route `name` (the table's `since`). */
export function routeIn(name: RouteName, version: number): boolean {
  const since: number | undefined = (AGENT_ROUTES[name] as RouteSpec).since;
  return since === undefined || since <= version;
}

/**
 * The version of a request to an agent whose current version is `peer` (null: not heard yet): the newest
 * both sides speak. Before the first answer, the oldest this side speaks, which every agent in range serves.
 */
export function requestProtocol(peer: number | null): number {
  if (peer === null) return AGENT_PROTOCOL_MIN;
  return Math.max(AGENT_PROTOCOL_MIN, Math.min(AGENT_PROTOCOL, peer));
}

/** The range an agent serves when it plays protocol `current` (a rolling upgrade's older agent): it and the one before. */
export function rangeOf(current: number): { current: number; min: number } {
  return { current, min: Math.max(1, current - 1) };
}

/** The version range this side speaks, for GET /version and the checks of PROTOCOL_HEADER. */
export const PROTOCOL_RANGE = { current: AGENT_PROTOCOL, min: AGENT_PROTOCOL_MIN } as const;

/** A PROTOCOL_HEADER value as a version, or null when absent or not a positive whole number. */
export function parseProtocol(raw: string | string[] | undefined): number | null {
  if (typeof raw !== 'string' || !/^[1-9][0-9]{0,5}$/.test(raw)) return null;
  return Number(raw);
}

/** Whether an agent serves a request of `version`: its current and its previous version. */
export function protocolAccepted(
  version: number | null,
  range: { current: number; min: number } = PROTOCOL_RANGE,
): version is number {
  return version !== null && version >= range.min && version <= range.current;
}

/**
 * Whether the controller takes an answer from an agent whose current version is `version`. The agent
 * checked the request's version already; a newer agent that served it answers in that version (a rolling
 * upgrade does the agents first), so only an agent older than the range — one that did not check — is refused.
 */
export function answerAccepted(version: number | null): version is number {
  return version !== null && version >= AGENT_PROTOCOL_MIN;
}

/** `protocol 2 (accepts 1–2)`, for messages. */
export function describeRange(r: { current: number; min: number } = PROTOCOL_RANGE): string {
  return r.min === r.current
    ? `protocol ${r.current}`
    : `protocol ${r.current} (accepts ${r.min}–${r.current})`;
}
