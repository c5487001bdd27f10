/**
 * The one error registry. Every error Ferry reports carries a stable `FERRY_E_*` code, an HTTP status,
 * a CLI exit code (2 = bad usage or input, 1 = a failed operation), a `retryable` flag, and its cause.
 * docs/errors.md documents every code; errors.test.ts keeps the two in sync.
 */

export interface ErrorDef {
  readonly status: number;
  /** CLI exit code: 2 for the user's mistake, 1 for an operation that failed. */
  readonly exit: 1 | 2;
  readonly retryable: boolean;
  /** Default message; the thrower may give a more precise one. Says what to do about it. */
  readonly message: string;
}

const def = (status: number, exit: 1 | 2, retryable: boolean, message: string): ErrorDef => ({
  status,
  exit,
  retryable,
  message,
});

export const ERRORS = {
  // --- usage and input (exit 2) ---
  FERRY_E_USAGE: def(400, 2, false, 'Bad usage: see `ferry --help`.'),
  FERRY_E_BAD_INPUT: def(400, 2, false, 'The input is not valid.'),
  FERRY_E_BAD_NAME: def(400, 2, false, 'Names must match [a-z0-9][a-z0-9-]{0,62}.'),
  FERRY_E_BAD_SIZE: def(400, 2, false, 'Sizes are a positive number with an optional unit: 256M, 1G, 512K.'),
  FERRY_E_BAD_DURATION: def(400, 2, false, 'Durations are a number with a unit: 300ms, 10s, 5m.'),
  FERRY_E_UNIT_REQUIRED: def(400, 2, false, 'A bare number is ambiguous here: give a unit (durations 300ms, 10s, 5m; sizes 256M, 1G; rates 100M per second).'),
  FERRY_E_BAD_MANIFEST: def(400, 2, false, 'The VM file (`vm create -f`) is not a YAML mapping of the fields of `vm create` (its keys are the flags in camelCase, `network` for --net).'),
  FERRY_E_BAD_SPEC: def(400, 2, false, 'The VM spec is not valid.'),
  FERRY_E_BAD_IMAGE: def(400, 2, false, 'Images are `tiny` or an absolute directory holding vmlinuz and initramfs.gz.'),
  FERRY_E_BAD_IMAGE_FORMAT: def(400, 2, false, 'Disk images are qcow2 or raw, as `qemu-img info` says (never the file name), without a backing file of their own.'),
  FERRY_E_BAD_BOOT: def(400, 2, false, 'The kernel or initrd to boot is not a readable file at that absolute path (on the server and every host).'),
  FERRY_E_BAD_CMDLINE: def(400, 2, false, 'A kernel command line (--append) takes letters, digits, spaces and . _ = , : / + @ - only: no quotes, no ; $ or backslash.'),
  FERRY_E_BAD_IP: def(400, 2, false, 'The address asked for (--ip A.B.C.D/LEN) is not a usable host address of the VM network.'),
  FERRY_E_IP_TAKEN: def(409, 2, false, 'The address asked for (--ip) belongs to another VM: choose another or let Ferry pick one.'),
  FERRY_E_USER_DATA_TOO_LARGE: def(413, 2, false, 'A cloud-init user-data file takes at most 1 MiB: make it smaller (fetch large payloads from inside the guest).'),
  FERRY_E_BAD_SSH_KEY: def(400, 2, false, 'An SSH key (--ssh-key FILE) holds public keys, one per line: ssh-ed25519 AAAA... comment.'),
  FERRY_E_BODY_TOO_LARGE: def(413, 2, false, 'The request body is larger than the API accepts (4 MiB).'),
  FERRY_E_MEDIA_TYPE: def(415, 2, false, 'The API takes JSON bodies: send them as application/json.'),
  FERRY_E_HEADERS_TOO_LARGE: def(431, 2, false, 'The request headers are larger than the API accepts.'),
  FERRY_E_REQUEST_TIMEOUT: def(408, 2, false, 'The request did not arrive in time: send it again.'),
  FERRY_E_UNAUTHORIZED: def(401, 2, false, 'Missing or wrong token: use the token `ferry server` printed or `ferry lab up` wrote.'),
  FERRY_E_NOT_FOUND: def(404, 2, false, 'No such object.'),
  FERRY_E_VM_NOT_FOUND: def(404, 2, false, 'No VM of that name: see `ferry vm list`.'),
  FERRY_E_HOST_NOT_FOUND: def(404, 2, false, 'No host of that name: see `ferry host list`.'),
  FERRY_E_MIGRATION_NOT_FOUND: def(404, 2, false, 'No migration with that id: see `ferry migration list`.'),
  FERRY_E_NETWORK_NOT_FOUND: def(404, 2, false, 'No VM network of that name: the server has only those given with `ferry server --vm-network`.'),
  FERRY_E_IMAGE_NOT_FOUND: def(404, 2, false, 'No image of that name: see `ferry image list`.'),
  FERRY_E_IMAGE_EXISTS: def(409, 2, false, 'An image of that name exists already: delete it first or choose another name.'),
  FERRY_E_IMAGE_IN_USE: def(409, 2, false, 'The image is the base of VMs: delete those VMs first.'),
  FERRY_E_VM_EXISTS: def(409, 2, false, 'A VM of that name exists already: choose another name or delete it.'),
  FERRY_E_VM_STATE: def(409, 2, false, 'The VM is not in a state that allows this.'),
  FERRY_E_MIGRATION_ACTIVE: def(409, 2, false, 'The VM has a migration in progress: wait for it or cancel it.'),
  FERRY_E_NO_CAPACITY: def(409, 2, false, 'No host can take this VM (memory, vCPUs, maintenance): see `why`.'),
  FERRY_E_MEMORY_TOO_LARGE: def(400, 2, false, 'The memory asked for is more than the host has.'),
  FERRY_E_JOIN_TOKEN: def(401, 2, false, 'The join token is unknown or was used already: get a new one.'),
  FERRY_E_FORBIDDEN: def(403, 2, false, 'The client certificate is not allowed here: agents take orders from the controller only.'),
  FERRY_E_HOST_NAME_RESERVED: def(403, 2, false, "That host name is reserved for the controller's own certificates (ferry-controller, ferry-server): choose another."),
  FERRY_E_CERT_EXPIRED: def(401, 1, false, "The agent's certificate has expired (its agent was offline past its validity), so it cannot renew it: re-join the host with a new join token (`ferry agent --join-token T`, docs/deploy.md)."),
  FERRY_E_CERT_REFUSED: def(403, 1, false, 'The controller refused to renew this certificate: not from the cluster CA, not the named host\'s, or not signed by its key.'),
  FERRY_E_HOST_EXISTS: def(409, 2, false, 'A host of that name has joined already, and a join cannot take it over: choose another name.'),
  FERRY_E_BAD_STORE: def(400, 2, false, 'The store (--store) is a SQLite file (PATH or sqlite:PATH) or a PostgreSQL URL (postgres://USER@HOST:PORT/DB).'),
  FERRY_E_JOIN_ADDRESS: def(403, 2, false, "The join did not come from agentUrl's address: join from the agent's own address, which its certificate will carry."),
  FERRY_E_CONFIG_FILE: def(400, 2, false, 'The config file (`ferry server|agent --config FILE`) is unreadable, not YAML, or not a mapping of keys to values.'),
  FERRY_E_CONFIG_KEY: def(400, 2, false, 'A key of the config file is unknown or its value is wrong: the message names the key (keys: the flags in camelCase; see docs/deploy.md).'),
  FERRY_E_READ_ONLY: def(403, 2, false, 'The token is read-only: it may read everything (GET, /metrics) but change nothing; use an admin token (`ferry token create --role admin`).'),
  FERRY_E_TOKEN_NOT_FOUND: def(404, 2, false, 'No API token with that id: see `ferry token list`.'),
  FERRY_E_CONTEXT_NOT_FOUND: def(404, 2, false, 'No CLI context of that name: see `ferry context list` (`ferry lab up --name X` adds one).'),
  FERRY_E_TLS_FILE: def(400, 2, false, 'The server certificate or key (`ferry server --tls-cert FILE --tls-key FILE`) is unreadable or not PEM: give both, a certificate chain (leaf first) and its private key.'),
  FERRY_E_TLS_KEY_MISMATCH: def(400, 2, false, 'The key (--tls-key) is not the private key of the certificate (--tls-cert): give the key the certificate was issued for.'),
  FERRY_E_TLS_CERT_EXPIRED: def(400, 2, false, 'The server certificate (--tls-cert) has expired or is not valid yet: renew it (or check the clock).'),
  FERRY_E_TLS_CERT_USAGE: def(400, 2, false, 'The server certificate (--tls-cert) must allow serverAuth and not clientAuth (extended key usage), so that no cluster member certificate can pass for it: issue a server-only certificate.'),

  // --- environment (exit 1) ---
  FERRY_E_NOT_ROOT: def(500, 1, false, 'This needs root (network namespaces, taps): run as root.'),
  FERRY_E_MISSING_TOOL: def(500, 1, false, 'A required program is missing: run `npm run setup`.'),
  FERRY_E_IMAGE_MISSING: def(500, 1, false, 'The guest image is missing: run `ferry image build tiny`.'),
  FERRY_E_IMAGE_BUILD: def(500, 1, false, 'Building the image failed at the step named: its log (build.log next to the image) says why.'),
  FERRY_E_KERNEL_MISSING: def(500, 1, false, 'The guest kernel is missing: run `npm run setup`.'),
  FERRY_E_LAB: def(500, 1, false, 'The lab could not be set up.'),
  FERRY_E_CONFIG: def(500, 1, false, 'No cluster configured: run `ferry lab up` or pass --server and --token.'),
  FERRY_E_STORE_UNAVAILABLE: def(503, 1, true, 'The store (PostgreSQL) could not be reached or opened: check the URL, that the server runs and that the role may connect.'),
  FERRY_E_NO_MIGRATION_ADDRESS: def(500, 2, false, 'No address of this host is inside the migration network (--migration-cidr): give the host an address there, or fix the CIDR.'),
  FERRY_E_CERT: def(500, 1, false, 'A certificate or key (`--cert`/`--key`, or the agent\'s renewal) is unreadable, does not match, or does not chain to the cluster CA.'),

  // --- QEMU and QMP (exit 1) ---
  FERRY_E_QMP_CONNECT: def(502, 1, true, 'Could not connect to the QMP socket.'),
  FERRY_E_QMP_PROTOCOL: def(502, 1, false, 'QEMU sent something that is not QMP.'),
  FERRY_E_QMP_TIMEOUT: def(504, 1, true, 'QEMU did not answer in time.'),
  FERRY_E_QMP_CLOSED: def(502, 1, false, 'The QMP connection closed (QEMU exited?).'),
  FERRY_E_QMP_COMMAND: def(502, 1, false, 'QEMU refused the command.'),
  FERRY_E_ABORTED: def(499, 1, false, 'The operation was aborted.'),
  FERRY_E_QEMU_START: def(500, 1, false, 'QEMU failed to start: see the VM serial log and stderr.'),
  FERRY_E_GUEST_TIMEOUT: def(504, 1, true, 'The guest did not report ready in time.'),
  FERRY_E_GUEST_COMMAND: def(502, 1, false, 'The guest tool refused or failed the command.'),
  FERRY_E_LIBVIRT_SETUP: def(500, 1, false, '`ferry bench --with libvirt` could not install or start libvirt (apt, libvirtd, virsh): the message says which step; nothing was installed when it would have changed QEMU.'),
  FERRY_E_ACCEL: def(500, 1, false, 'No usable accelerator.'),
  FERRY_E_PROBE_UNAVAILABLE: def(500, 1, false, 'The ICMP guest-downtime probe could not start (iputils ping missing or not permitted): the migration runs, guestDowntimeMs stays null. Install iputils-ping (scripts/setup.sh does).'),

  // --- cluster (exit 1) ---
  FERRY_E_AGENT_UNREACHABLE: def(503, 1, true, 'The host agent did not answer.'),
  FERRY_E_NO_LEADER: def(503, 1, true, 'None of the controllers sharing the store leads right now (an election takes a few seconds): retry.'),
  FERRY_E_STALE_TERM: def(409, 1, false, 'The agent has taken orders from a newer leader: this controller was deposed and gives none (see docs/ha.md). Talk to the current leader.'),
  FERRY_E_AGENT_PROTOCOL: def(502, 1, false, 'The agent and the controller speak protocol versions too far apart (each side serves its current and previous version): upgrade the older of the two. `ferry host list` shows such a host as incompatible.'),
  FERRY_E_SERVER_UNREACHABLE: def(503, 1, true, 'The Ferry server did not answer: is it running?'),
  FERRY_E_TLS: def(495, 1, false, 'TLS handshake failed (certificate not signed by the cluster CA?).'),
  FERRY_E_REDIRECT: def(502, 1, false, 'A controller redirected the CLI where it does not send the token (not https, a host outside the context that is not a controller of this cluster, or too many hops): list every controller in the context (docs/ha.md).'),
  FERRY_E_PORT_RANGE_EXHAUSTED: def(503, 1, true, 'Every port of the destination host\'s migration port range (--migration-ports) is in use: let running migrations end, or widen the range.'),

  // --- migration (exit 1) ---
  FERRY_E_MIGRATION_FAILED: def(500, 1, false, 'The migration failed; the VM runs on the source.'),
  FERRY_E_MIGRATION_CANCELLED: def(409, 1, false, 'The migration was cancelled; the VM runs on the source.'),
  FERRY_E_MIGRATION_NOT_RUNNING: def(409, 2, false, 'The migration is not transferring (queued, preparing, past the switch, or ended): set, postcopy and complete act only on a running live migration.'),
  FERRY_E_POSTCOPY_NOT_ALLOWED: def(409, 2, false, "The migration's policy does not allow post-copy (--postcopy never): migrate with --postcopy auto to allow it."),
  FERRY_E_MIGRATION_FINISHED: def(409, 1, false, 'The migration has ended already (completed, failed or cancelled): there is nothing to cancel; see `ferry migration show ID`.'),
  FERRY_E_MIGRATION_STALLED: def(504, 1, false, 'The migration made no progress (link down?) and was aborted.'),
  FERRY_E_MIGRATION_TIMEOUT: def(504, 1, false, 'The migration did not finish within its deadline.'),
  FERRY_E_DESTINATION_LOST: def(502, 1, false, 'The destination QEMU or agent went away during the migration.'),
  FERRY_E_SOURCE_LOST: def(502, 1, false, 'The source QEMU or agent went away during the migration.'),
  FERRY_E_POSTCOPY_LOST: def(502, 1, false, "The destination died during post-copy: the guest's memory was split between two hosts and is lost (post-copy is used only when asked for)."),
  FERRY_E_POSTCOPY_PAUSED: def(503, 1, true, 'Post-copy paused: the stream between the hosts broke; Ferry recovers it when both hosts answer again.'),
  FERRY_E_RECEIPT_REQUIRED: def(409, 1, false, 'The source QEMU completed the migration: it resumes only once the destination signed that it discarded its copy.'),
  FERRY_E_RECEIPT_INVALID: def(409, 1, false, 'The discard receipt does not prove that the destination discarded its copy: the source is not resumed.'),
  FERRY_E_IMAGE_CHECKSUM: def(502, 1, false, "The image a host received does not match the store's sha256: the host kept nothing. Check the stored copy (`sha256sum`) and import it again if it changed."),
  FERRY_E_IMAGE_NOT_ON_HOST: def(409, 1, true, "The host has no copy of the VM's base image (its cache was emptied?): the controller fetches it before a create or a migration; try again."),
  FERRY_E_VERIFY_FAILED: def(500, 1, false, 'Verification on the destination failed (checksum or guest check).'),
  FERRY_E_SHARED_MISSING: def(409, 1, false, 'A shared disk is not at its path on the destination: mount the shared storage there (the same path on every host), or choose another host.'),
  FERRY_E_SHARED_DIFFERS: def(409, 1, true, "The destination sees another file at a shared disk's path (size or sha256 of its first MiB differ from the source's): mount the same storage. A guest rewriting that MiB meanwhile: retry."),
  FERRY_E_CPU_INCOMPATIBLE: def(409, 2, false, 'The destination CPU or QEMU cannot run this VM.'),
  FERRY_E_MACHINE_TYPE: def(409, 2, false, "The destination's QEMU has no machine type of the VM's: choose another host (`ferry host show H` lists its machine types) or upgrade its QEMU."),
  FERRY_E_CPU_MODEL: def(409, 2, false, "The destination's QEMU cannot give the VM's CPU model (unknown, not usable there, or with fewer features): choose another host."),
  FERRY_E_NOT_CONVERGING: def(409, 1, false, "The VM dirties memory faster than its share of the link carries and its policy allows no post-copy or cold move: mark it `--evacuation postcopy-ok` or `cold-ok`."),
  FERRY_E_QEMU_CAPABILITY: def(409, 2, false, "The destination's QEMU lacks a migration capability the migration would use (post-copy, multifd, …): choose another host or leave that option out."),
  FERRY_E_CONTROLLER_RESTARTED: def(500, 1, false, 'The controller restarted during the job; it was recovered.'),

  FERRY_E_INTERNAL: def(500, 1, false, 'An internal error: please report it with the log.'),
} as const satisfies Record<string, ErrorDef>;

export type ErrorCode = keyof typeof ERRORS;

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERRORS, code);
}

export class FerryError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly exit: 1 | 2;
  readonly retryable: boolean;
  readonly details: Record<string, unknown> | undefined;

  constructor(
    code: ErrorCode,
    message?: string,
    opts: { cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    const d = ERRORS[code];
    super(message ?? d.message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'FerryError';
    this.code = code;
    this.status = d.status;
    this.exit = d.exit;
    this.retryable = d.retryable;
    this.details = opts.details;
  }

  toJSON(): { code: ErrorCode; message: string; details?: Record<string, unknown> } {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }
}

/** Wraps anything thrown into a FerryError, keeping the original as cause. */
export function toFerryError(err: unknown, fallback: ErrorCode = 'FERRY_E_INTERNAL'): FerryError {
  if (err instanceof FerryError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new FerryError(fallback, message, { cause: err });
}

/** Rebuilds a FerryError from its JSON form (as sent by the API or an agent). */
export function fromErrorJSON(body: unknown, fallback: ErrorCode = 'FERRY_E_INTERNAL'): FerryError {
  const b = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>;
  const inner = (typeof b.error === 'object' && b.error !== null ? b.error : b) as Record<string, unknown>;
  const code = isErrorCode(inner.code) ? inner.code : fallback;
  const message = typeof inner.message === 'string' ? inner.message : undefined;
  const details =
    typeof inner.details === 'object' && inner.details !== null
      ? (inner.details as Record<string, unknown>)
      : undefined;
  return new FerryError(code, message, details === undefined ? {} : { details });
}

export function assertNever(x: never, what = 'value'): never {
  throw new FerryError('FERRY_E_INTERNAL', `unexpected ${what}: ${JSON.stringify(x)}`);
}
