/**
 * The lab's processes: one controller in the root namespace on the management bridge's .1 address, one
 * agent per host inside its namespace, all detached (own session, logs in the lab's directory), recorded
 * in `lab.json` (pids, addresses, namespaces, subnet index). `labUp` is idempotent (a healthy lab is
 * reported as is, a broken one rebuilt), `labDown` removes every process, network object and file of the
 * lab even when `lab.json` is missing, and `labStatus` tells which process is alive. The network itself
 * is net.ts.
 */
import { spawn, execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { request } from 'node:https';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError, toFerryError } from '../common/errors.ts';
import { checkControllerIdentity } from '../common/identity.ts';
import { validateName } from '../common/units.ts';
import { PACKAGE_ROOT } from '../common/paths.ts';
import { configPath, removeContext, writeContext } from '../client/config.ts';
import {
  DEFAULT_LAB,
  HOST_VM_BRIDGE,
  checkLabPrerequisites,
  createLabNetwork,
  destroyLabNetwork,
  findLabIndex,
  findLabObjects,
  hostIndex,
  cutTraffic as cutTrafficOnPorts,
  killPids,
  namespacePids,
  validateHostCount,
  validateLabName,
  type HostRef,
  type LabNetwork,
  type TrafficKind,
} from './net.ts';

export {
  DEFAULT_LAB,
  execInHost,
  restoreTraffic,
  trafficCut,
  type TrafficKind,
  labHostNamespace,
  linkDown,
  linkUp,
  isLinkUp,
  type HostRef,
  type LabNetwork,
} from './net.ts';

export const LAB_STATE_VERSION = 1;
export const SERVER_PORT = 7440;
export const AGENT_PORT = 7443;
export const DEFAULT_HOSTS = 3;
const FERRY_BIN = join(PACKAGE_ROOT, 'bin', 'ferry.js');

export interface LabServer {
  pid: number;
  /** https://<gateway>:7440 */
  url: string;
  listen: string;
  dataDir: string;
  log: string;
  caFingerprint: string;
  caCertPem: string;
  adminToken: string;
}

export interface LabHost {
  /** `h1`, `h2` …: the agent's host name in the cluster. */
  name: string;
  namespace: string;
  address: string;
  migrationAddress: string;
  vmBridge: string;
  listen: string;
  url: string;
  pid: number;
  dataDir: string;
  log: string;
  /**
   * More flags of this host's agent (kept across restarts): a migration network and port range, a config
   * file, an older protocol (`--protocol`) for rolling-upgrade tests. With `--config` or `--migration-cidr`
   * the lab gives no `--migration-address`: the agent picks its own.
   */
  agentArgs?: string[];
}

export interface LabState {
  version: typeof LAB_STATE_VERSION;
  name: string;
  dir: string;
  createdAt: string;
  network: LabNetwork;
  server: LabServer;
  hosts: LabHost[];
  /** The CLI config written by `up` (null when not asked to write one). */
  configPath: string | null;
  /** Extra environment of the controller (kept here so that a restarted controller gets it too). */
  serverEnv?: Record<string, string>;
  /** Extra arguments of `ferry server` (e.g. `--ha --id c1`), kept across restarts too. */
  serverArgs?: string[];
}

export interface LabOptions {
  name?: string;
  /** Directory holding the labs' directories; default `$FERRY_LAB_DIR` or /var/lib/ferry/labs. */
  dataRoot?: string;
}

export interface LabUpOptions extends LabOptions {
  hosts?: number;
  /** Write the CLI config so that `ferry host list` just works (default true). */
  writeConfig?: boolean;
  /** How long to wait for the controller and every agent to be ready (default 90 s). */
  timeoutMs?: number;
  /** Progress lines for humans (stderr in the CLI). */
  log?: (line: string) => void;
  /** Extra environment of the controller, e.g. a test's FERRY_TEST_HOLD_DIR; kept across its restarts. */
  serverEnv?: Record<string, string>;
  /** Extra arguments of `ferry server` (e.g. `--ha --id c1`); kept across its restarts. */
  serverArgs?: string[];
}

export interface LabUpResult extends LabState {
  /** true when a healthy lab of that name was there already and is reported as is. */
  reused: boolean;
}

// ---------------------------------------------------------------------------------------------------
// files

export function labsRoot(dataRoot?: string): string {
  return resolve(dataRoot ?? process.env.FERRY_LAB_DIR ?? '/var/lib/ferry/labs');
}

export function labDir(opts: LabOptions = {}): string {
  return join(labsRoot(opts.dataRoot), validateLabName(opts.name ?? DEFAULT_LAB));
}

/** The CLI's config file (`$FERRY_CONFIG` or ~/.config/ferry/config.json). */
export function cliConfigPath(): string {
  return configPath();
}

function writeFileAtomic(file: string, text: string, mode = 0o600): void {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, text, { mode });
  renameSync(tmp, file);
}

export function readLabState(opts: LabOptions = {}): LabState | null {
  const file = join(labDir(opts), 'lab.json');
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    return null;
  }
  const s = raw as Partial<LabState>;
  if (
    s.version !== LAB_STATE_VERSION ||
    typeof s.name !== 'string' ||
    !s.network ||
    !s.server ||
    !Array.isArray(s.hosts)
  ) {
    return null;
  }
  return s as LabState;
}

function writeLabState(state: LabState): void {
  writeFileAtomic(join(state.dir, 'lab.json'), JSON.stringify(state, null, 2) + '\n');
}

// ---------------------------------------------------------------------------------------------------
// processes

/** Alive and not a zombie: a lab process we started and killed stays a zombie until we reap it. */
export function processAlive(pid: number | null | undefined): boolean {
  if (typeof pid !== 'number' || pid <= 0) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return false;
  }
}

function cmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

/** The pid still runs the lab process we recorded (pids get reused). */
function isOurProcess(pid: number, dataDir: string): boolean {
  if (!processAlive(pid)) return false;
  const argv = cmdline(pid);
  const i = argv.indexOf('--data');
  return i >= 0 && argv[i + 1] === dataDir;
}

interface Started {
  pid: number;
  /** The first JSON line the process printed. */
  line: Record<string, unknown>;
}

/**
 * Starts argv in its own session with stdout/stderr appended to `log`, and waits for the first JSON
 * object line it prints on stdout (the "I am listening" line of `ferry server` / `ferry agent --json`).
 */
async function startDetached(argv: string[], log: string, timeoutMs: number, what: string, env: NodeJS.ProcessEnv = process.env): Promise<Started> {
  mkdirSync(dirname(log), { recursive: true, mode: 0o700 });
  const offset = existsSync(log) ? statSync(log).size : 0;
  const fd = openSync(log, 'a', 0o600);
  let exited: string | null = null;
  let pid: number | undefined;
  try {
    const child = spawn(argv[0]!, argv.slice(1), {
      detached: true,
      stdio: ['ignore', fd, fd],
      env,
    });
    child.on('error', (err) => (exited = err.message));
    child.on('exit', (code, signal) => (exited = signal ? `killed by ${signal}` : `exit ${code}`));
    child.unref();
    pid = child.pid;
  } finally {
    closeSync(fd);
  }
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = readFileSync(log, 'utf8').slice(offset);
    for (const l of text.split('\n')) {
      if (!l.startsWith('{')) continue;
      try {
        const line = JSON.parse(l) as unknown;
        // The process's logs share the file and are JSON lines too (a level and a msg): not the one awaited.
        if (typeof line === 'object' && line !== null && !('error' in line) && !('level' in line && 'msg' in line)) {
          return { pid: pid!, line: line as Record<string, unknown> };
        }
      } catch {
        /* a partial line: read again */
      }
    }
    if (exited !== null || pid === undefined || Date.now() > deadline) {
      if (pid !== undefined && exited === null) await killPids([pid]);
      const tail = text.split('\n').slice(-15).join('\n').trim();
      throw new FerryError(
        'FERRY_E_LAB',
        `${what} did not start (${exited ?? 'timed out'}); see ${log}:\n${tail}`,
        {
          details: { log },
        },
      );
    }
    await sleep(100);
  }
}

function runFerry(args: string[], timeoutMs = 120_000): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    execFile(
      process.execPath,
      [FERRY_BIN, ...args],
      { timeout: timeoutMs, env: process.env },
      (err, stdout, stderr) => {
        if (err) {
          reject(
            new FerryError(
              'FERRY_E_LAB',
              `ferry ${args.join(' ')}: ${String(stderr).trim() || err.message}`,
              { cause: err },
            ),
          );
        } else resolvePromise(String(stdout));
      },
    );
  });
}

function lastJson(text: string): Record<string, unknown> {
  const t = text.trim();
  try {
    return JSON.parse(t) as Record<string, unknown>;
  } catch {
    const line = t
      .split('\n')
      .reverse()
      .find((l) => l.startsWith('{'));
    if (line === undefined) throw new FerryError('FERRY_E_LAB', `expected JSON, got: ${t.slice(0, 200)}`);
    return JSON.parse(line) as Record<string, unknown>;
  }
}

/** The CA certificate in the controller's data dir whose fingerprint is the one the server printed. */
function findCaCert(dataDir: string, fingerprint: string): string {
  const norm = (f: string): string =>
    f
      .replaceAll(':', '')
      .toLowerCase()
      .replace(/^sha256/, '');
  const want = norm(fingerprint);
  const walk = (dir: string, depth: number): string | null => {
    let entries: string[];
    try {
      entries = readdirSync(dir);
    } catch {
      return null;
    }
    for (const e of entries) {
      const p = join(dir, e);
      if (/\.(crt|pem)$/.test(e)) {
        try {
          const pem = readFileSync(p, 'utf8');
          if (norm(new X509Certificate(pem).fingerprint256) === want) return pem;
        } catch {
          /* not a certificate */
        }
      } else if (depth > 0 && statSync(p, { throwIfNoEntry: false })?.isDirectory()) {
        const r = walk(p, depth - 1);
        if (r !== null) return r;
      }
    }
    return null;
  };
  const pem = walk(dataDir, 2);
  if (pem === null)
    throw new FerryError('FERRY_E_LAB', `No CA certificate with fingerprint ${fingerprint} in ${dataDir}.`);
  return pem;
}

// ---------------------------------------------------------------------------------------------------
// the controller's view

export interface ApiHost {
  name: string;
  state: string;
  [k: string]: unknown;
}

/** GET <url><path> with the admin token, the cluster CA pinned. */
export function labApi(state: Pick<LabState, 'server'>, path: string, timeoutMs = 5000): Promise<unknown> {
  const url = new URL(path, state.server.url);
  return new Promise((resolvePromise, reject) => {
    const req = request(url, {
      method: 'GET',
      ca: state.server.caCertPem,
      checkServerIdentity: checkControllerIdentity,
      agent: false,
      timeout: timeoutMs,
      headers: { authorization: `Bearer ${state.server.adminToken}`, accept: 'application/json' },
    });
    req.on('timeout', () =>
      req.destroy(new FerryError('FERRY_E_SERVER_UNREACHABLE', `No answer from ${url.origin}.`)),
    );
    req.on('error', (err) =>
      reject(
        err instanceof FerryError
          ? err
          : new FerryError('FERRY_E_SERVER_UNREACHABLE', err.message, { cause: err }),
      ),
    );
    req.on('response', (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => {
        const text = Buffer.concat(parts).toString('utf8');
        let body: unknown;
        try {
          body = JSON.parse(text);
        } catch {
          body = text;
        }
        if ((res.statusCode ?? 0) >= 300) {
          reject(new FerryError('FERRY_E_LAB', `GET ${path}: HTTP ${res.statusCode}: ${text.slice(0, 200)}`));
        } else resolvePromise(body);
      });
    });
    req.end();
  });
}

/** The hosts as the controller sees them (`GET /api/v1/hosts`). */
export async function labApiHosts(state: Pick<LabState, 'server'>, timeoutMs = 5000): Promise<ApiHost[]> {
  const body = await labApi(state, '/api/v1/hosts', timeoutMs);
  const list = Array.isArray(body) ? body : (body as { hosts?: unknown }).hosts;
  if (!Array.isArray(list)) throw new FerryError('FERRY_E_LAB', 'GET /api/v1/hosts did not return a list.');
  return list.filter((h): h is ApiHost => typeof (h as ApiHost)?.name === 'string');
}

/** `ready`, and its first heartbeat came in (the inventory the scheduler needs), when the API shows it. */
/** Ready, with an inventory, and (given `heardSince`) heard by a heartbeat that began after that time. */
function hostReady(h: ApiHost | undefined, heardSince?: number): boolean {
  return (
    h !== undefined &&
    h.state === 'ready' &&
    (!('inventory' in h) || (h.inventory !== null && h.inventory !== undefined)) &&
    (heardSince === undefined || (typeof h.lastSeenAt === 'string' && Date.parse(h.lastSeenAt) > heardSince))
  );
}

/**
 * Waits for the hosts to be ready. After an agent restart the host is still `ready` from before it (a quick
 * restart misses no heartbeat), so the restart passes `heardSince`: a heartbeat that answered afterwards,
 * one that saw the new agent (its version, its inventory).
 */
async function waitHostsReady(state: LabState, names: string[], timeoutMs: number, heardSince?: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    try {
      const hosts = await labApiHosts(state);
      const notReady = names.filter((n) => !hostReady(hosts.find((h) => h.name === n), heardSince));
      if (notReady.length === 0) return;
      last = `not ready: ${notReady.map((n) => `${n}=${hosts.find((h) => h.name === n)?.state ?? 'absent'}`).join(', ')}`;
    } catch (err) {
      last = toFerryError(err).message;
    }
    if (Date.now() > deadline)
      throw new FerryError('FERRY_E_LAB', `Lab ${state.name}: hosts not ready in time (${last}).`);
    await sleep(250);
  }
}

// ---------------------------------------------------------------------------------------------------
// starting the parts

function serverArgv(state: LabState, listen: string, extra: string[]): string[] {
  return [
      process.execPath,
      FERRY_BIN,
      'server',
      '--data',
      state.server.dataDir,
      '--listen',
      listen,
      '--vm-network',
      `vm0=${state.network.vmCidr}`,
      // The root namespace's address on the VM LAN is never handed to a guest.
      '--vm-gateway',
      state.network.vmGateway,
      // Its stdout goes to server.log: the admin token is read from the data dir's 0600 file instead.
      '--no-show-token',
      '--json',
      ...extra,
  ];
}

async function startServer(state: LabState, timeoutMs: number): Promise<void> {
  const s = state.server;
  const started = await startDetached(
    serverArgv(state, s.listen, state.serverArgs ?? []),
    s.log,
    timeoutMs,
    'the controller',
    { ...process.env, ...state.serverEnv },
  );
  s.pid = started.pid;
  if (typeof started.line.url === 'string') s.url = started.line.url;
  if (typeof started.line.caFingerprint === 'string') s.caFingerprint = started.line.caFingerprint;
  // The admin token is in the data dir (--no-show-token keeps it out of the log); a server that printed it is believed too.
  if (typeof started.line.adminToken === 'string' && started.line.adminToken !== '')
    s.adminToken = started.line.adminToken;
  if (s.adminToken === '') {
    try {
      s.adminToken = readFileSync(join(s.dataDir, 'admin-token'), 'utf8').trim();
    } catch (err) {
      throw new FerryError(
        'FERRY_E_LAB',
        `The controller printed no admin token and ${s.dataDir}/admin-token is unreadable.`,
        { cause: err },
      );
    }
  }
  s.caCertPem = findCaCert(s.dataDir, s.caFingerprint);
}

async function joinToken(state: LabState): Promise<string> {
  const i = (state.serverArgs ?? []).indexOf('--store');
  const store = i >= 0 ? ['--store', state.serverArgs![i + 1]!] : [];
  const out = (await runFerry(['server', 'join-token', '--data', state.server.dataDir, ...store, '--json'])).trim();
  // commander may hand `--json` to the parent `server` command; then the token comes as a bare line.
  const token = out.startsWith('{') ? lastJson(out).token : out.split('\n').pop()?.trim();
  if (typeof token !== 'string' || !/^[A-Za-z0-9._~+/=-]{16,}$/.test(token)) {
    throw new FerryError('FERRY_E_LAB', `\`ferry server join-token\` printed no token: ${out.slice(0, 200)}`);
  }
  return token;
}

async function startAgent(
  state: LabState,
  h: LabHost,
  token: string | null,
  timeoutMs: number,
): Promise<void> {
  const argv = [
    'ip',
    'netns',
    'exec',
    h.namespace,
    process.execPath,
    FERRY_BIN,
    'agent',
    '--server',
    state.server.url,
    // The first start joins with a one-time token, pinning the CA the controller printed.
    ...(token === null ? [] : ['--join-token', token, '--ca-hash', state.server.caFingerprint]),
    '--name',
    h.name,
    '--listen',
    h.listen,
    '--data',
    h.dataDir,
    ...(h.agentArgs?.some((a) => a === '--config' || a === '--migration-cidr') ? [] : ['--migration-address', h.migrationAddress]),
    '--vm-bridge',
    h.vmBridge,
    ...(h.agentArgs ?? []),
    '--json',
  ];
  // `ip netns exec` execs the command, so the pid is the agent's own.
  const started = await startDetached(argv, h.log, timeoutMs, `the agent of ${h.name}`);
  h.pid = started.pid;
  if (typeof started.line.url === 'string') h.url = started.line.url;
}

function planState(name: string, dir: string, net: LabNetwork): LabState {
  const listen = `${net.gateway}:${SERVER_PORT}`;
  return {
    version: LAB_STATE_VERSION,
    name,
    dir,
    createdAt: new Date().toISOString(),
    network: net,
    server: {
      pid: 0,
      url: `https://${listen}`,
      listen,
      dataDir: join(dir, 'server'),
      log: join(dir, 'server.log'),
      caFingerprint: '',
      caCertPem: '',
      adminToken: '',
    },
    hosts: net.hosts.map((h) => ({
      name: h.name,
      namespace: h.namespace,
      address: h.address,
      migrationAddress: h.address,
      vmBridge: HOST_VM_BRIDGE,
      listen: `${h.address}:${AGENT_PORT}`,
      url: `https://${h.address}:${AGENT_PORT}`,
      pid: 0,
      dataDir: join(dir, 'hosts', h.name),
      log: join(dir, `${h.name}.log`),
    })),
    configPath: null,
  };
}

/** The lab's CLI context, named as the lab and made current; other contexts of the file stay. */
function writeCliConfig(state: LabState): string {
  return writeContext(state.name, {
    server: state.server.url,
    token: state.server.adminToken,
    caCertPem: state.server.caCertPem,
  });
}

// ---------------------------------------------------------------------------------------------------
// status

export interface LabProcessStatus {
  pid: number;
  alive: boolean;
}

export interface LabStatus {
  name: string;
  dir: string;
  /** A lab.json exists. */
  exists: boolean;
  /** Every process alive, every network object present, every host `ready`. */
  healthy: boolean;
  network: { index: number | null; namespaces: string[]; links: string[]; complete: boolean };
  server: (LabProcessStatus & { url: string }) | null;
  hosts: (LabProcessStatus & {
    name: string;
    namespace: string;
    address: string;
    url: string;
    state: string | null;
  })[];
  /** Why the lab is not healthy, for humans. */
  problems: string[];
}

export async function labStatus(opts: LabOptions = {}): Promise<LabStatus> {
  const name = validateLabName(opts.name ?? DEFAULT_LAB);
  await checkLabPrerequisites();
  const dir = labDir({ ...opts, name });
  const state = readLabState({ ...opts, name });
  const objects = await findLabObjects(name);
  const index = await findLabIndex(name);
  const problems: string[] = [];
  if (state === null) {
    const leftovers = objects.namespaces.length + objects.links.length > 0;
    if (leftovers)
      problems.push(`no lab.json but network objects are left: run \`ferry lab down --name ${name}\``);
    return {
      name,
      dir,
      exists: false,
      healthy: false,
      network: { index, ...objects, complete: false },
      server: null,
      hosts: [],
      problems: leftovers ? problems : ['not up'],
    };
  }
  const wantNs = state.hosts.map((h) => h.namespace);
  const missingNs = wantNs.filter((n) => !objects.namespaces.includes(n));
  const complete =
    missingNs.length === 0 &&
    objects.links.length === 2 + 2 * state.hosts.length &&
    index === state.network.index;
  if (!complete)
    problems.push(`network incomplete${missingNs.length ? ` (missing ${missingNs.join(', ')})` : ''}`);
  const serverAlive = isOurProcess(state.server.pid, state.server.dataDir);
  if (!serverAlive) problems.push(`controller (pid ${state.server.pid}) is not running`);
  let apiHosts: ApiHost[] | null = null;
  if (serverAlive) {
    try {
      apiHosts = await labApiHosts(state, 3000);
    } catch (err) {
      problems.push(`controller does not answer: ${toFerryError(err).message}`);
    }
  }
  const hosts = state.hosts.map((h) => {
    const alive = isOurProcess(h.pid, h.dataDir);
    if (!alive) problems.push(`agent ${h.name} (pid ${h.pid}) is not running`);
    const st = apiHosts?.find((a) => a.name === h.name)?.state ?? null;
    if (apiHosts !== null && st !== 'ready')
      problems.push(`host ${h.name} is ${st ?? 'unknown to the controller'}`);
    return {
      name: h.name,
      namespace: h.namespace,
      address: h.address,
      url: h.url,
      pid: h.pid,
      alive,
      state: st,
    };
  });
  return {
    name,
    dir,
    exists: true,
    healthy: problems.length === 0,
    network: { index, ...objects, complete },
    server: { pid: state.server.pid, alive: serverAlive, url: state.server.url },
    hosts,
    problems,
  };
}

// ---------------------------------------------------------------------------------------------------
// up, down, restarts

/**
 * Builds the lab (network, controller, join tokens, agents), waits until every host is `ready`, writes
 * lab.json and the CLI config. A healthy lab of that name is reported as is; a broken one is rebuilt.
 */
export async function labUp(opts: LabUpOptions = {}): Promise<LabUpResult> {
  const name = validateLabName(opts.name ?? DEFAULT_LAB);
  const hosts = validateHostCount(opts.hosts ?? DEFAULT_HOSTS);
  const timeoutMs = opts.timeoutMs ?? 90_000;
  const log = opts.log ?? (() => undefined);
  await checkLabPrerequisites();
  const dir = labDir({ ...opts, name });

  const existing = readLabState({ ...opts, name });
  if (existing !== null) {
    const st = await labStatus({ ...opts, name });
    if (st.healthy) {
      if (existing.hosts.length !== hosts) {
        throw new FerryError(
          'FERRY_E_USAGE',
          `Lab ${name} is up with ${existing.hosts.length} hosts, not ${hosts}: run \`ferry lab down --name ${name}\` first.`,
        );
      }
      if (opts.writeConfig !== false) existing.configPath = writeCliConfig(existing);
      return { ...existing, reused: true };
    }
    log(`lab ${name} is broken (${st.problems.join('; ')}): rebuilding it`);
  }
  await labDown({ ...opts, name });

  mkdirSync(dir, { recursive: true, mode: 0o700 });
  let state: LabState | null = null;
  try {
    log(`network: ${hosts} host namespaces, bridges`);
    const net = await createLabNetwork({ name, hosts });
    state = planState(name, dir, net);
    if (opts.serverEnv !== undefined) state.serverEnv = opts.serverEnv;
    if (opts.serverArgs !== undefined) state.serverArgs = opts.serverArgs;
    writeLabState(state);
    log(`controller on ${state.server.listen}`);
    await startServer(state, timeoutMs);
    writeLabState(state);
    const tokens = await Promise.all(state.hosts.map(() => joinToken(state!)));
    log(`agents: ${state.hosts.map((h) => `${h.name} ${h.address}`).join(', ')}`);
    await Promise.all(state.hosts.map((h, i) => startAgent(state!, h, tokens[i]!, timeoutMs)));
    writeLabState(state);
    await waitHostsReady(
      state,
      state.hosts.map((h) => h.name),
      timeoutMs,
    );
    if (opts.writeConfig !== false) state.configPath = writeCliConfig(state);
    writeLabState(state);
    return { ...state, reused: false };
  } catch (err) {
    if (state !== null) writeLabState(state);
    // Keep the logs for the post-mortem: they are what the error message points to.
    await labDown({ ...opts, name, keepLogs: true }).catch(() => undefined);
    throw toFerryError(err, 'FERRY_E_LAB');
  }
}

export interface LabDownResult {
  name: string;
  killed: number[];
  namespaces: string[];
  links: string[];
  removedDir: boolean;
  removedConfig: string | null;
}

/** Pids in the root namespace that run this lab's controller, found from /proc (no state needed). */
function findRootLabProcesses(dir: string, index: number | null): number[] {
  const serverData = join(dir, 'server');
  const listenPrefix = index === null ? null : `10.231.${index}.1:`;
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const pid = Number(e);
    if (pid === process.pid) continue;
    const argv = cmdline(pid);
    if (!argv.includes('server')) continue;
    const data = argv[argv.indexOf('--data') + 1];
    const listen = argv[argv.indexOf('--listen') + 1];
    if (
      (argv.includes('--data') && data === serverData) ||
      (listenPrefix !== null && argv.includes('--listen') && listen?.startsWith(listenPrefix))
    ) {
      // Only processes in our own network namespace (the root one): the agents' are handled by netns.
      try {
        if (readlinkSync(`/proc/${pid}/ns/net`) !== readlinkSync('/proc/self/ns/net')) continue;
      } catch {
        continue;
      }
      out.push(pid);
    }
  }
  return out;
}

/**
 * Removes every process, namespace, bridge, veth, tap and file of the lab. Idempotent, and safe after a
 * half-failed `up`: objects are found by their names, processes from /proc and the namespaces.
 */
export async function labDown(opts: LabOptions & { keepLogs?: boolean } = {}): Promise<LabDownResult> {
  const name = validateLabName(opts.name ?? DEFAULT_LAB);
  await checkLabPrerequisites();
  const dir = labDir({ ...opts, name });
  const state = readLabState({ ...opts, name });
  const index = state?.network.index ?? (await findLabIndex(name));
  const pids = new Set<number>(findRootLabProcesses(dir, index));
  if (state !== null) {
    if (isOurProcess(state.server.pid, state.server.dataDir)) pids.add(state.server.pid);
    for (const h of state.hosts) if (isOurProcess(h.pid, h.dataDir)) pids.add(h.pid);
  }
  // The controller and agents first (so no agent restarts a VM meanwhile), then whatever else runs in the
  // namespaces (QEMU) goes with them in destroyLabNetwork.
  await killPids([...pids]);
  const objects = await findLabObjects(name);
  for (const ns of objects.namespaces) for (const p of await namespacePids(ns)) pids.add(p);
  const killed = [...pids];
  const removed = await destroyLabNetwork(name);
  let removedConfig: string | null = null;
  if (state !== null) {
    const cfg = cliConfigPath();
    try {
      // Only the lab's own context, and only while it still points at this lab.
      if (removeContext(state.name, state.server.url, cfg)) removedConfig = cfg;
    } catch {
      /* no config, or not ours */
    }
  }
  let removedDir = false;
  if (existsSync(dir)) {
    if (opts.keepLogs) {
      for (const e of readdirSync(dir))
        if (!e.endsWith('.log')) rmSync(join(dir, e), { recursive: true, force: true });
    } else {
      rmSync(dir, { recursive: true, force: true });
      removedDir = true;
    }
  }
  return { name, killed, namespaces: removed.namespaces, links: removed.links, removedDir, removedConfig };
}

function requireState(lab: string | LabState, dataRoot?: string): LabState {
  if (typeof lab !== 'string') return readLabState({ name: lab.name, dataRoot: dirname(lab.dir) }) ?? lab;
  const s = readLabState({ name: lab, dataRoot });
  if (s === null)
    throw new FerryError('FERRY_E_LAB', `Lab ${lab} is not up: run \`ferry lab up --name ${lab}\`.`);
  return s;
}

/** Kills a host's agent (by pid) and starts it again with the same data dir (and `agentArgs`, when given); waits until it is ready. */
export async function labRestartAgent(
  lab: string | LabState,
  host: HostRef,
  opts: { dataRoot?: string; timeoutMs?: number; agentArgs?: string[] } = {},
): Promise<LabState> {
  const state = requireState(lab, opts.dataRoot);
  const i = hostIndex(host);
  const h = state.hosts.find((x) => x.name === `h${i}`);
  if (h === undefined) throw new FerryError('FERRY_E_HOST_NOT_FOUND', `Lab ${state.name} has no host h${i}.`);
  if (opts.agentArgs !== undefined) h.agentArgs = opts.agentArgs;
  if (isOurProcess(h.pid, h.dataDir)) await killPids([h.pid]);
  // The agent keeps its certificate in its data dir: no join token on a restart.
  await startAgent(state, h, null, opts.timeoutMs ?? 60_000);
  const started = Date.now();
  writeLabState(state);
  await waitHostsReady(state, [h.name], opts.timeoutMs ?? 60_000, started);
  return state;
}

/**
 * Starts one more controller over the lab's data dir (its CA and controller key, which agents pin, and its
 * store), on the management bridge at a free port: with `--ha` in both, a standby (docs/ha.md). `lab down`
 * stops it with the rest (it runs with the lab's `--data`).
 */
export async function labStartController(
  lab: string | LabState,
  opts: { id: string; args?: string[]; env?: Record<string, string>; dataRoot?: string; timeoutMs?: number },
): Promise<{ pid: number; url: string; log: string }> {
  const state = requireState(lab, opts.dataRoot);
  const log = join(state.dir, `server-${validateName(opts.id)}.log`);
  const address = state.server.listen.slice(0, state.server.listen.lastIndexOf(':'));
  const started = await startDetached(
    serverArgv(state, `${address}:0`, ['--id', opts.id, ...(opts.args ?? [])]),
    log,
    opts.timeoutMs ?? 60_000,
    `controller ${opts.id}`,
    { ...process.env, ...opts.env },
  );
  if (typeof started.line.url !== 'string') throw new FerryError('FERRY_E_LAB', `controller ${opts.id} printed no URL; see ${log}`);
  return { pid: started.pid, url: started.line.url, log };
}

/** Kills the controller (by pid) and starts it again with the same data dir; waits for every host. */
export async function labRestartServer(
  lab: string | LabState,
  opts: { dataRoot?: string; timeoutMs?: number } = {},
): Promise<LabState> {
  const state = requireState(lab, opts.dataRoot);
  if (isOurProcess(state.server.pid, state.server.dataDir)) await killPids([state.server.pid]);
  await startServer(state, opts.timeoutMs ?? 60_000);
  writeLabState(state);
  await waitHostsReady(
    state,
    state.hosts.map((h) => h.name),
    opts.timeoutMs ?? 60_000,
  );
  return state;
}

/**
 * Cuts only the migration traffic (QEMU's stream, NBD) or only the management traffic (controller↔agent
 * API) of a lab host, both directions; `restoreTraffic` undoes it. The two share one link in the lab.
 */
export function cutTraffic(lab: string, host: HostRef, kind: TrafficKind): Promise<void> {
  return cutTrafficOnPorts(lab, host, kind, [AGENT_PORT, SERVER_PORT]);
}
