/**
 * The controller ↔ agent wire types (HTTPS with mutual TLS, JSON bodies), each declared once as a TypeBox
 * schema with its type derived (`Static<>`): the agent validates what it receives against them and the
 * controller checks what it gets back. Field names are the contract: add fields, never rename them.
 *
 * The routes themselves — method, path, these schemas as params, body and response, success status,
 * timeout, streaming — are data in src/common/agent-routes.ts: the agent's fastify routes, the controller's
 * typed client and the fake agent of the unit tests are all made from that one table.
 *
 * Versioned: every request carries `x-ferry-protocol: <AGENT_PROTOCOL>` and every answer the agent's own
 * current version. An agent accepts requests of its current and previous version
 * ([AGENT_PROTOCOL_MIN, AGENT_PROTOCOL]) and answers any other with FERRY_E_AGENT_PROTOCOL (HTTP 400) naming
 * both versions; the controller then shows the host as `incompatible` with that error. Errors travel as
 * `{ error: { code, message, details? } }`.
 *
 * Protocol 2 added GET /agent/v1/version and the version header on answers. Protocol 3 (this one) added
 * GET /agent/v1/certificate (the agent certificate's validity, for `ferry host list`). Each route of the
 * table says since which version it exists (`since`, agent-routes.ts): an agent mounts only the routes of
 * the version it speaks, and the controller sends each agent the newest version both speak and never calls
 * a route the agent's version lacks. So a cluster keeps working while one agent is a version behind
 * (upgrade the agents first, then the controller).
 *
 * Controller routes used by agents (HTTPS, server certificate from the cluster CA):
 *   POST /api/v1/join {token, name, agentUrl} → JoinResponse   (one-time join token; from agentUrl's own
 *                                   address; reserved or existing names refused)
 *   POST /api/v1/renew RenewRequest → RenewResponse   (a joined agent's new certificate for a new key, asked
 *                                   for with its current certificate and a signature by its current key;
 *                                   src/agent/renewal.ts, src/controller/renewal.ts)
 */
import Type, { type Static } from 'typebox';
import { SHA256_PATTERN, VmSpec } from './spec.ts';
import { NAME_RE } from './units.ts';

/** This side's protocol version; what every request and answer carries in PROTOCOL_HEADER. */
export const AGENT_PROTOCOL = 3;
/** The oldest protocol an agent still serves (the previous one). 0 is never valid. */
export const AGENT_PROTOCOL_MIN = 2;
export const PROTOCOL_HEADER = 'x-ferry-protocol';

export const VM_STATES = ['running', 'paused', 'stopped', 'migrating'] as const;
export type VmState = (typeof VM_STATES)[number];

/** `incompatible`: the agent answers, but speaks a protocol outside the controller's range. */
export const HOST_STATES = ['ready', 'unreachable', 'incompatible', 'maintenance'] as const;
export type HostState = (typeof HOST_STATES)[number];

const Name = Type.String({ pattern: NAME_RE.source });

export const HostInventory = Type.Object({
  name: Type.String(),
  /** The agent's current protocol version. */
  protocol: Type.Integer({ minimum: 1 }),
  cpu: Type.Object({
    model: Type.String(),
    vendor: Type.String(),
    flags: Type.Array(Type.String()),
    cores: Type.Integer({ minimum: 0 }),
  }),
  memoryBytes: Type.Number({ minimum: 0 }),
  /** Memory not yet promised to VMs on this host (total less the VMs' memory and a reserve). */
  freeMemoryBytes: Type.Number(),
  accel: Type.Enum(['kvm', 'tcg']),
  qemu: Type.Object({
    version: Type.String(),
    machineTypes: Type.Array(Type.String()),
    /**
     * The rest is what a probe QEMU (`-machine none`, TCG) answered at agent start: `query-cpu-definitions`,
     * `query-cpu-model-expansion` (full) of the CPU models asked about, and the migration capabilities it
     * knows. Optional: agents from before it do not send them, and the scheduler then checks the machine type only.
     */
    cpuDefinitions: Type.Optional(
      Type.Array(Type.Object({ name: Type.String(), usable: Type.Boolean(), unavailableFeatures: Type.Array(Type.String()) })),
    ),
    cpuExpansions: Type.Optional(Type.Record(Type.String(), Type.Array(Type.String()))),
    migrationCapabilities: Type.Optional(Type.Array(Type.String())),
  }),
  /** Address that QEMU migration streams and NBD exports of this host listen on. */
  migrationAddress: Type.String(),
  agentVersion: Type.String(),
});
export type HostInventory = Static<typeof HostInventory>;

/** GET /agent/v1/version: which Ferry the agent runs and the protocol versions it serves. */
export const AgentVersion = Type.Object({
  agentVersion: Type.String(),
  protocol: Type.Object({ current: Type.Integer({ minimum: 1 }), min: Type.Integer({ minimum: 1 }) }),
});
export type AgentVersion = Static<typeof AgentVersion>;

/** GET /agent/v1/certificate (protocol 3): the agent certificate's validity and when it renews it. */
export const AgentCertificate = Type.Object({
  notBefore: Type.String(),
  notAfter: Type.String(),
  /** When the agent asks the controller for a new one (2/3 of the lifetime). */
  renewAfter: Type.String(),
  /** The last renewal by this agent process, or null. */
  renewedAt: Type.Union([Type.String(), Type.Null()]),
});
export type AgentCertificate = Static<typeof AgentCertificate>;

export const VmStatus = Type.Object({
  name: Type.String(),
  state: Type.Enum(VM_STATES),
  /** QEMU's own run state string, verbatim (`running`, `paused`, `inmigrate`, `postmigrate`, ...). */
  qemuStatus: Type.Union([Type.String(), Type.Null()]),
  pid: Type.Union([Type.Integer(), Type.Null()]),
  bootId: Type.Union([Type.String(), Type.Null()]),
  /**
   * The guest answered during this boot (ferry-guest's READY, or qemu-guest-agent's ping): `running` says
   * only that QEMU runs it. Optional: agents from before it do not send it.
   */
  ready: Type.Optional(Type.Boolean()),
  spec: VmSpec,
  startedAt: Type.Union([Type.String(), Type.Null()]),
});
export type VmStatus = Static<typeof VmStatus>;

/** POST /agent/v1/vms */
/**
 * `readiness`: `require` (the default): wait for the guest to answer, else fail; `wait`: wait up to
 * `readyTimeoutMs`, then answer with ready=false; `skip`: answer once QEMU runs the guest.
 */
export const READINESS = ['require', 'wait', 'skip'] as const;
export type Readiness = (typeof READINESS)[number];
export const CreateVmRequest = Type.Object({
  spec: VmSpec,
  readiness: Type.Optional(Type.Enum(READINESS)),
  readyTimeoutMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 3_600_000 })),
});
export type CreateVmRequest = Static<typeof CreateVmRequest>;

/** POST /agent/v1/vms/:name/stop: ACPI power-down, waiting up to timeoutMs, then quit (force: at once). */
export const StopVmRequest = Type.Object({
  timeoutMs: Type.Optional(Type.Number({ minimum: 0 })),
  force: Type.Optional(Type.Boolean()),
});
export type StopVmRequest = Static<typeof StopVmRequest>;

/** POST /agent/v1/vms/:name/guest: one line for the guest tool (over the virtio-serial channel). */
export const GuestRequest = Type.Object({
  command: Type.String({ minLength: 1, maxLength: 4096, pattern: '^[^\\n]*\\S[^\\n]*$' }),
});
export type GuestRequest = Static<typeof GuestRequest>;

/**
 * A shared disk as one host sees it (GET /vms/:name/shared-disks on the source, then in prepare to the
 * destination): its size and the sha256 of its first MiB (src/agent/shared-disks.ts).
 */
export const SharedDiskFingerprint = Type.Object({
  id: Type.String({ pattern: '^vd[a-z]$' }),
  path: Type.String({ pattern: '^/[A-Za-z0-9._/-]+$' }),
  sizeBytes: Type.Integer({ minimum: 0 }),
  headSha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
});
export type SharedDiskFingerprint = Static<typeof SharedDiskFingerprint>;

/**
 * GET /vms/:name/dirty-rate: how fast the guest dirties its memory now, as QEMU measures it
 * (`calc-dirty-rate`, page sampling over `calcTimeMs`); what a drain plans with before it moves the VM.
 */
export const DirtyRate = Type.Object({
  dirtyRateBytesPerSec: Type.Number({ minimum: 0 }),
  calcTimeMs: Type.Integer({ minimum: 0 }),
});
export type DirtyRate = Static<typeof DirtyRate>;

export const Deleted = Type.Object({ deleted: Type.Boolean() });
export type Deleted = Static<typeof Deleted>;

export const JoinRequest = Type.Object(
  {
    token: Type.String({ minLength: 1, maxLength: 256 }),
    name: Name,
    /** https://ADDR:PORT where the agent will listen (mTLS). */
    agentUrl: Type.String({
      minLength: 1,
      maxLength: 256,
      description: 'https://IP:PORT where the agent listens (mTLS)',
    }),
  },
  { additionalProperties: false },
);
export type JoinRequest = Static<typeof JoinRequest>;

export const JoinResponse = Type.Object({
  caCertPem: Type.String(),
  certPem: Type.String(),
  keyPem: Type.String(),
  /** The controller's URL as seen from the agent. */
  serverUrl: Type.String(),
  /**
   * `sha256:HEX` of the public key (SPKI) of the controller's client certificate. The agent stores it with
   * its identity and serves only a caller presenting that key: the CA signs other hosts' certificates too,
   * and a CN can be asked for at join.
   */
  controllerPin: Type.String({
    description:
      "sha256:HEX of the controller client certificate's public key; the agent accepts no other caller",
  }),
});
export type JoinResponse = Static<typeof JoinResponse>;

/**
 * A joined agent asks for a new certificate for a key pair it just made. The credential is its current
 * certificate and a signature by its current key over `renewalPayload` (src/common/identity.ts); a second
 * signature, by the new key, shows it holds that key too. An agent whose certificate has expired adds a
 * one-time join token: the operator's consent to re-join under the same name.
 */
export const RenewRequest = Type.Object(
  {
    name: Name,
    /** The certificate the agent serves now (PEM). */
    certPem: Type.String({ minLength: 1, maxLength: 16_384 }),
    /** The new public key, SPKI PEM. */
    publicKeyPem: Type.String({ minLength: 1, maxLength: 4096 }),
    /** When the agent signed (ISO 8601); the controller takes only a few minutes' skew. */
    signedAt: Type.String({ minLength: 1, maxLength: 64 }),
    /** base64 signature (SHA-256) of renewalPayload by the current certificate's key. */
    signature: Type.String({ minLength: 1, maxLength: 1024 }),
    /** base64 signature (SHA-256) of renewalPayload by the new key. */
    proof: Type.String({ minLength: 1, maxLength: 1024 }),
    /** Only for a certificate that has expired: a one-time join token (`ferry agent --join-token`). */
    joinToken: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  },
  { additionalProperties: false },
);
export type RenewRequest = Static<typeof RenewRequest>;

export const RenewResponse = Type.Object({
  /** The new certificate: same name and address, the new key, a new validity. */
  certPem: Type.String(),
  caCertPem: Type.String(),
});
export type RenewResponse = Static<typeof RenewResponse>;

/** Every failure, from the agent as from the controller's API. */
export const ErrorEnvelope = Type.Object({
  error: Type.Object({
    code: Type.String({ pattern: '^FERRY_E_[A-Z0-9_]+$' }),
    message: Type.String(),
    details: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  }),
});
export type ErrorEnvelope = Static<typeof ErrorEnvelope>;

/** A base image in a host's cache (src/agent/images.ts): named by its sha256, checked when it arrived. */
export const CachedImage = Type.Object({
  sha256: Type.String({ pattern: SHA256_PATTERN }),
  bytes: Type.Integer({ minimum: 0 }),
});
export type CachedImage = Static<typeof CachedImage>;

/** What a PUT of an image did: `fetched` it wrote the bytes sent, `present` it had them already (sent bytes dropped). */
export const ImageReceived = Type.Object({
  sha256: Type.String({ pattern: SHA256_PATTERN }),
  bytes: Type.Integer({ minimum: 0 }),
  action: Type.Union([Type.Literal('present'), Type.Literal('fetched')]),
});
export type ImageReceived = Static<typeof ImageReceived>;
