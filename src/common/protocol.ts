/**
 * The controller ↔ agent contract (HTTPS with mutual TLS, JSON bodies). Versioned: every request carries
 * `x-ferry-protocol: <AGENT_PROTOCOL>`; an agent answers a request of another version with
 * FERRY_E_AGENT_PROTOCOL (HTTP 400). Errors travel as `{ error: { code, message, details? } }`.
 *
 * Agent routes (all under /agent/v1):
 *   GET    /inventory                  → HostInventory
 *   GET    /vms                        → VmStatus[]
 *   POST   /vms            {spec, readiness?, readyTimeoutMs?} → VmStatus (creates disks, starts QEMU; readiness
 *                                   `require` (default): waits for the guest to answer, else fails; `wait`: waits,
 *                                   then answers with ready=false; `skip`: answers once QEMU runs)
 *   GET    /vms/:name                  → VmStatus
 *   POST   /vms/:name/stop {timeoutMs?, force?} → VmStatus (ACPI power-down, then quit)
 *   POST   /vms/:name/start            → VmStatus
 *   POST   /vms/:name/pause | /resume  → VmStatus
 *   DELETE /vms/:name                  → {deleted: true}  (stops QEMU, removes the VM's files)
 *   POST   /vms/:name/guest {command}  → the guest tool's JSON reply (over the virtio-serial channel)
 *   GET    /vms/:name/console          → text/plain: the tail of the VM's serial log
 *   Migrations (src/agent/migrations.ts; bodies and views in src/migration/types.ts; :id is the controller's job id):
 *   POST   /migrations/:id/prepare  PrepareRequest {spec, listenAddress?, tls?, storage, capabilities?, tlsPeer?}
 *                                   → 201 PrepareResponse {id, uri, nbd, tlsHostname}      (destination)
 *   POST   /migrations/:id/perform  PerformRequest {vm, uri, nbd?, tls?, tlsHostname?, storage, capabilities?,
 *                                   bandwidthBytesPerSec?, downtimeLimitMs?, stallTimeoutMs?, postcopy?}
 *                                   → 202 AgentMigrationView (runs in the background)       (source)
 *   GET    /migrations/:id          → AgentMigrationView (also after an agent restart)
 *   GET    /migrations/:id/events   → text/event-stream of `migration` events (the view) until it ends
 *   POST   /migrations/:id/cancel   → AgentMigrationView   POST /migrations/:id/postcopy → AgentMigrationView
 *   POST   /migrations/:id/tune {downtimeLimitMs?, bandwidthBytesPerSec?} → AgentMigrationView
 *   POST   /migrations/:id/finish  {success} → AgentMigrationView (destination; idempotent)
 *   POST   /migrations/:id/confirm {success} → AgentMigrationView (source; idempotent)
 *   Cold (the controller streams each file from the source's GET to the destination's PUT):
 *   POST   /migrations/:id/cold/prepare {spec, start?} → 201 view   (destination lays out the VM; start=false
 *                                   keeps a VM that was stopped stopped)
 *   POST   /migrations/:id/cold/perform {vm, mode: shutdown|save} → ColdManifest {files: [{name, bytes, sha256}]}
 *   GET    /migrations/:id/files/:name → octet-stream + x-ferry-sha256   (source)
 *   PUT    /migrations/:id/files/:name  octet-stream + x-ferry-sha256 → {name, bytes, sha256} (destination;
 *                                   a mismatch is FERRY_E_VERIFY_FAILED and replaces nothing)
 *
 * Controller routes used by agents (HTTPS, server certificate from the cluster CA):
 *   POST /api/v1/join {token, name, agentUrl} → JoinResponse   (one-time join token; from agentUrl's own
 *                                   address; reserved or existing names refused)
 */

export const AGENT_PROTOCOL = 1;
export const PROTOCOL_HEADER = 'x-ferry-protocol';

export const VM_STATES = ['running', 'paused', 'stopped', 'migrating'] as const;
export type VmState = (typeof VM_STATES)[number];

export const HOST_STATES = ['ready', 'unreachable', 'maintenance'] as const;
export type HostState = (typeof HOST_STATES)[number];

export interface HostInventory {
  name: string;
  protocol: number;
  cpu: { model: string; vendor: string; flags: string[]; cores: number };
  memoryBytes: number;
  /** Memory not yet promised to VMs on this host (total less the VMs' memory and a reserve). */
  freeMemoryBytes: number;
  accel: 'kvm' | 'tcg';
  qemu: { version: string; machineTypes: string[] };
  /** Address that QEMU migration streams and NBD exports of this host listen on. */
  migrationAddress: string;
  agentVersion: string;
}

export interface VmStatus {
  name: string;
  state: VmState;
  /** QEMU's own run state string, verbatim (`running`, `paused`, `inmigrate`, `postmigrate`, ...). */
  qemuStatus: string | null;
  pid: number | null;
  bootId: string | null;
  /**
   * The guest answered during this boot (ferry-guest's READY, or qemu-guest-agent's ping): `running` says
   * only that QEMU runs it. Optional: agents from before it do not send it.
   */
  ready?: boolean;
  spec: import('./spec.ts').VmSpec;
  startedAt: string | null;
}

export interface JoinRequest {
  token: string;
  name: string;
  /** https://ADDR:PORT where the agent will listen (mTLS). */
  agentUrl: string;
}

export interface JoinResponse {
  caCertPem: string;
  certPem: string;
  keyPem: string;
  /** The controller's URL as seen from the agent. */
  serverUrl: string;
  /**
   * `sha256:HEX` of the public key (SPKI) of the controller's client certificate. The agent stores it with
   * its identity and serves only a caller presenting that key: the CA signs other hosts' certificates too,
   * and a CN can be asked for at join.
   */
  controllerPin: string;
}
