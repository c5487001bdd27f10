/**
 * The lab's network on one machine: hosts as network namespaces, a management/migration bridge and a VM
 * "switch" bridge in the root namespace, one veth pair per host to each, and a `br-vm` bridge inside each
 * host for its guests' taps. Everything goes through iproute2 (`ip`, `-j` where state is read), never a
 * shell. Every object carries the lab's name so that `destroyLabNetwork` finds exactly its own objects by
 * name, even after a half-failed run, and two labs can coexist.
 *
 * Names (lab `<l>`, host N):
 *   root namespace:  fm-<l> (management bridge, .1)   fv-<l> (VM switch, .1)
 *                    fm-<l>-hN / fv-<l>-hN (host ends of the veth pairs)
 *   namespace:       ferry-hN (lab `lab`) or ferry-<l>-hN, holding eth0 (.1N), br-vm, vm-uplink (in br-vm)
 *   addresses:       management 10.231.<k>.0/24, VM LAN 10.232.<k>.0/24, k free on the machine
 *
 * Nothing forwards lab traffic off the machine: no NAT, no default route in the namespaces, no sysctl
 * changed; the bridges are plain L2 segments.
 */
import { execFile } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../common/errors.ts';

export const DEFAULT_LAB = 'lab';
export const LAB_NAME_RE = /^[a-z0-9]{1,8}$/;
/** Interface names are at most 15 bytes: `fm-` + 8 + `-h` + 2 digits. */
export const MAX_HOSTS = 32;
export const HOST_VM_BRIDGE = 'br-vm';
export const HOST_MGMT_IF = 'eth0';
export const HOST_VM_UPLINK = 'vm-uplink';
const LINK_ALIAS_PREFIX = 'ferry-lab:';
const NET_LOCK = '/run/ferry/lab-net.lock';

/** A host of a lab: its number (1, 2 …) or its name (`h1`, `h2` …). */
export type HostRef = number | string;

export interface LabHostNet {
  /** `h1`, `h2` …: also the agent's host name. */
  name: string;
  index: number;
  namespace: string;
  /** Management/migration address inside the namespace (on eth0). */
  address: string;
  /** Root-namespace end of the management veth: `linkDown` cuts it. */
  mgmtVeth: string;
  /** Root-namespace end of the VM LAN veth. */
  vmVeth: string;
  /** Bridge inside the namespace that the agent adds its guests' taps to. */
  vmBridge: string;
}

export interface LabNetwork {
  name: string;
  /** The subnet index k of 10.231.k.0/24 and 10.232.k.0/24. */
  index: number;
  mgmtCidr: string;
  vmCidr: string;
  mgmtBridge: string;
  vmSwitch: string;
  /** The root namespace's address on the management bridge (the controller listens there). */
  gateway: string;
  /** The root namespace's address on the VM LAN (probes reach guests from it). */
  vmGateway: string;
  hosts: LabHostNet[];
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function validateLabName(name: unknown): string {
  if (typeof name !== 'string' || !LAB_NAME_RE.test(name)) {
    throw new FerryError('FERRY_E_BAD_NAME', `Bad lab name ${JSON.stringify(name)}: use 1 to 8 of [a-z0-9].`);
  }
  return name;
}

export function validateHostCount(hosts: unknown): number {
  if (typeof hosts !== 'number' || !Number.isInteger(hosts) || hosts < 1 || hosts > MAX_HOSTS) {
    throw new FerryError('FERRY_E_BAD_INPUT', `Bad host count ${String(hosts)}: use 1 to ${MAX_HOSTS}.`);
  }
  return hosts;
}

export function hostIndex(host: HostRef): number {
  const n = typeof host === 'number' ? host : /^h([1-9][0-9]?)$/.exec(host)?.[1];
  const i = Number(n);
  if (!Number.isInteger(i) || i < 1 || i > MAX_HOSTS) {
    throw new FerryError(
      'FERRY_E_HOST_NOT_FOUND',
      `No lab host ${JSON.stringify(host)}: use h1 … h${MAX_HOSTS}.`,
    );
  }
  return i;
}

/** The namespace of a lab host: `ferry-h1` for the default lab, `ferry-<lab>-h1` for the others. */
export function labHostNamespace(lab: string, host: HostRef): string {
  validateLabName(lab);
  const i = hostIndex(host);
  return lab === DEFAULT_LAB ? `ferry-h${i}` : `ferry-${lab}-h${i}`;
}

function namespacePattern(lab: string): RegExp {
  return lab === DEFAULT_LAB ? /^ferry-h([0-9]{1,2})$/ : new RegExp(`^ferry-${lab}-h([0-9]{1,2})$`);
}

function linkPattern(lab: string): RegExp {
  return new RegExp(`^f[mv]-${lab}(-h[0-9]{1,2})?$`);
}

/** The lab's addresses and names for subnet index k: a pure function of its inputs. */
export function labNetworkPlan(lab: string, index: number, hosts: number): LabNetwork {
  validateLabName(lab);
  validateHostCount(hosts);
  if (!Number.isInteger(index) || index < 0 || index > 255) {
    throw new FerryError('FERRY_E_INTERNAL', `bad subnet index ${index}`);
  }
  return {
    name: lab,
    index,
    mgmtCidr: `10.231.${index}.0/24`,
    vmCidr: `10.232.${index}.0/24`,
    mgmtBridge: `fm-${lab}`,
    vmSwitch: `fv-${lab}`,
    gateway: `10.231.${index}.1`,
    vmGateway: `10.232.${index}.1`,
    hosts: Array.from({ length: hosts }, (_, j) => {
      const i = j + 1;
      return {
        name: `h${i}`,
        index: i,
        namespace: labHostNamespace(lab, i),
        address: `10.231.${index}.${10 + i}`,
        mgmtVeth: `fm-${lab}-h${i}`,
        vmVeth: `fv-${lab}-h${i}`,
        vmBridge: HOST_VM_BRIDGE,
      };
    }),
  };
}

// ---------------------------------------------------------------------------------------------------
// iproute2

function run(file: string, args: string[], timeoutMs = 30_000): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && typeof err.code === 'string') {
        if (err.code === 'ENOENT') {
          reject(
            new FerryError('FERRY_E_MISSING_TOOL', `\`${file}\` was not found: install iproute2.`, {
              cause: err,
            }),
          );
        } else
          reject(new FerryError('FERRY_E_LAB', `${file} ${args.join(' ')}: ${err.message}`, { cause: err }));
        return;
      }
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** Runs `ip …` and fails with FERRY_E_LAB on a non-zero exit. */
async function ip(...args: string[]): Promise<string> {
  const r = await run('ip', args);
  if (r.code !== 0) {
    throw new FerryError('FERRY_E_LAB', `ip ${args.join(' ')}: ${r.stderr.trim() || `exit ${r.code}`}`, {
      details: { argv: ['ip', ...args], stderr: r.stderr.trim() },
    });
  }
  return r.stdout;
}

/** Runs `ip -j …` and parses its output; an empty output (some `ip` commands print nothing) is []. */
async function ipJson<T>(...args: string[]): Promise<T[]> {
  const out = (await ip('-j', ...args)).trim();
  if (out === '') return [];
  const parsed = JSON.parse(out) as unknown;
  return Array.isArray(parsed) ? (parsed as T[]) : [];
}

interface IpLink {
  ifname: string;
  ifalias?: string;
  operstate?: string;
  flags?: string[];
  master?: string;
  linkinfo?: { info_kind?: string };
}
interface IpAddr {
  ifname: string;
  addr_info?: { family: string; local: string; prefixlen: number }[];
}
interface IpRoute {
  dst: string;
}

/** Root and iproute2 are needed; checked before anything is changed. */
export async function checkLabPrerequisites(): Promise<void> {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new FerryError(
      'FERRY_E_NOT_ROOT',
      'The lab needs root (network namespaces, bridges, veths): run `ferry lab` as root.',
    );
  }
  const r = await run('ip', ['-V']);
  if (r.code !== 0) throw new FerryError('FERRY_E_MISSING_TOOL', '`ip -V` failed: install iproute2.');
}

// ---------------------------------------------------------------------------------------------------
// finding a lab's objects

export interface LabObjects {
  namespaces: string[];
  links: string[];
}

export async function listNamespaces(): Promise<string[]> {
  return (await ipJson<{ name: string }>('netns', 'list')).map((n) => n.name);
}

/** The lab's namespaces and root-namespace links, found by their names (not from any state file). */
export async function findLabObjects(lab: string): Promise<LabObjects> {
  validateLabName(lab);
  const nsRe = namespacePattern(lab);
  const linkRe = linkPattern(lab);
  const namespaces = (await listNamespaces()).filter((n) => nsRe.test(n)).sort();
  const links = (await ipJson<IpLink>('link', 'show'))
    .map((l) => l.ifname)
    .filter((n) => linkRe.test(n))
    .sort();
  return { namespaces, links };
}

/** The subnet index of an existing lab, read from its management bridge's address; null if none. */
export async function findLabIndex(lab: string): Promise<number | null> {
  validateLabName(lab);
  const addrs = await ipJson<IpAddr>('-4', 'addr', 'show').catch(() => [] as IpAddr[]);
  for (const a of addrs) {
    if (a.ifname !== `fm-${lab}`) continue;
    for (const i of a.addr_info ?? []) {
      const m = /^10\.231\.(\d+)\.1$/.exec(i.local);
      if (m) return Number(m[1]);
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------------------------
// choosing a free subnet

function ipv4ToInt(a: string): number | null {
  const p = a.split('.').map(Number);
  if (p.length !== 4 || p.some((x) => !Number.isInteger(x) || x < 0 || x > 255)) return null;
  return ((p[0]! << 24) >>> 0) + (p[1]! << 16) + (p[2]! << 8) + p[3]!;
}

/** [first, last] of a CIDR (or a bare address = /32). */
function cidrRange(cidr: string): [number, number] | null {
  const [addr, lenText] = cidr.split('/');
  const base = ipv4ToInt(addr ?? '');
  const len = lenText === undefined ? 32 : Number(lenText);
  if (base === null || !Number.isInteger(len) || len < 0 || len > 32) return null;
  const size = 2 ** (32 - len);
  const first = Math.floor(base / size) * size;
  return [first, first + size - 1];
}

function overlaps(a: [number, number], b: [number, number]): boolean {
  return a[0] <= b[1] && b[0] <= a[1];
}

/** Every IPv4 prefix in use in the root namespace: addresses with their prefix, and routes. */
async function prefixesInUse(): Promise<[number, number][]> {
  const out: [number, number][] = [];
  for (const a of await ipJson<IpAddr>('-4', 'addr', 'show')) {
    for (const i of a.addr_info ?? []) {
      const r = cidrRange(`${i.local}/${i.prefixlen}`);
      if (r) out.push(r);
    }
  }
  for (const rt of await ipJson<IpRoute>('-4', 'route', 'show', 'table', 'all')) {
    // The default route covers everything by definition; it is not a collision.
    if (rt.dst === 'default' || rt.dst === '0.0.0.0/0') continue;
    const r = cidrRange(rt.dst);
    if (r) out.push(r);
  }
  return out;
}

export async function chooseSubnetIndex(exclude: ReadonlySet<number> = new Set()): Promise<number> {
  const used = await prefixesInUse();
  for (let k = 1; k <= 254; k++) {
    if (exclude.has(k)) continue;
    const mgmt = cidrRange(`10.231.${k}.0/24`)!;
    const vm = cidrRange(`10.232.${k}.0/24`)!;
    if (!used.some((u) => overlaps(u, mgmt) || overlaps(u, vm))) return k;
  }
  throw new FerryError('FERRY_E_LAB', 'No free subnet pair 10.231.k.0/24 + 10.232.k.0/24 on this machine.');
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Serialises subnet choice between concurrent `lab up`s (two test labs at once): between reading the
 * addresses in use and putting ours on the bridge nobody else may choose. A lock left by a dead process
 * is taken over.
 */
async function withNetLock<T>(fn: () => Promise<T>): Promise<T> {
  mkdirSync('/run/ferry', { recursive: true, mode: 0o700 });
  const deadline = Date.now() + 20_000;
  let fd: number | undefined;
  while (fd === undefined) {
    try {
      fd = openSync(NET_LOCK, 'wx', 0o600);
      writeSync(fd, String(process.pid));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      let owner = NaN;
      try {
        owner = Number(readFileSync(NET_LOCK, 'utf8'));
      } catch {
        continue;
      }
      if (Number.isInteger(owner) && owner > 0 && !pidAlive(owner)) {
        try {
          unlinkSync(NET_LOCK);
        } catch {
          /* someone else took it over first */
        }
        continue;
      }
      if (Date.now() > deadline) throw new FerryError('FERRY_E_LAB', `Timed out waiting for ${NET_LOCK}.`);
      await sleep(50);
    }
  }
  try {
    return await fn();
  } finally {
    closeSync(fd);
    try {
      unlinkSync(NET_LOCK);
    } catch {
      /* already gone */
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// building and tearing down

async function addBridge(name: string, alias: string, cidr: string): Promise<void> {
  await ip('link', 'add', name, 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0');
  await ip('link', 'set', name, 'alias', alias);
  await ip('addr', 'add', cidr, 'dev', name);
  await ip('link', 'set', name, 'up');
}

async function addHost(net: LabNetwork, h: LabHostNet): Promise<void> {
  const alias = `${LINK_ALIAS_PREFIX}${net.name}`;
  const ns = h.namespace;
  await ip('netns', 'add', ns);
  await ip('-n', ns, 'link', 'set', 'lo', 'up');
  // Management/migration link: the peer is created directly inside the namespace as eth0.
  await ip('link', 'add', h.mgmtVeth, 'type', 'veth', 'peer', 'name', HOST_MGMT_IF, 'netns', ns);
  await ip('link', 'set', h.mgmtVeth, 'alias', alias);
  await ip('link', 'set', h.mgmtVeth, 'master', net.mgmtBridge, 'up');
  await ip('-n', ns, 'addr', 'add', `${h.address}/24`, 'dev', HOST_MGMT_IF);
  await ip('-n', ns, 'link', 'set', HOST_MGMT_IF, 'up');
  // VM LAN: br-vm inside the host, joined to the root switch, so all hosts share one L2 segment.
  await ip('-n', ns, 'link', 'add', HOST_VM_BRIDGE, 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0');
  await ip('-n', ns, 'link', 'set', HOST_VM_BRIDGE, 'up');
  await ip('link', 'add', h.vmVeth, 'type', 'veth', 'peer', 'name', HOST_VM_UPLINK, 'netns', ns);
  await ip('link', 'set', h.vmVeth, 'alias', alias);
  await ip('link', 'set', h.vmVeth, 'master', net.vmSwitch, 'up');
  await ip('-n', ns, 'link', 'set', HOST_VM_UPLINK, 'master', HOST_VM_BRIDGE, 'up');
}

/**
 * Builds the lab's network. Fails with FERRY_E_LAB if objects of this lab exist already (destroy them
 * first); on any failure, what was built is removed again.
 */
export async function createLabNetwork(opts: { name: string; hosts: number }): Promise<LabNetwork> {
  const name = validateLabName(opts.name);
  validateHostCount(opts.hosts);
  await checkLabPrerequisites();
  const existing = await findLabObjects(name);
  if (existing.namespaces.length > 0 || existing.links.length > 0) {
    throw new FerryError(
      'FERRY_E_LAB',
      `Lab ${name} has network objects already: run \`ferry lab down --name ${name}\`.`,
      {
        details: { ...existing },
      },
    );
  }
  try {
    const net = await withNetLock(async () => {
      const k = await chooseSubnetIndex();
      const plan = labNetworkPlan(name, k, opts.hosts);
      const alias = `${LINK_ALIAS_PREFIX}${name}`;
      await addBridge(plan.mgmtBridge, alias, `${plan.gateway}/24`);
      await addBridge(plan.vmSwitch, alias, `${plan.vmGateway}/24`);
      return plan;
    });
    for (const h of net.hosts) await addHost(net, h);
    return net;
  } catch (err) {
    await destroyLabNetwork(name).catch(() => undefined);
    throw err;
  }
}

/** PIDs of the processes inside a namespace (agents, their QEMUs, test helpers). */
export async function namespacePids(ns: string): Promise<number[]> {
  const r = await run('ip', ['netns', 'pids', ns]);
  if (r.code !== 0) return [];
  return r.stdout
    .split(/\s+/)
    .filter((s) => /^\d+$/.test(s))
    .map(Number)
    .filter((p) => p !== process.pid);
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves when every pid is gone (or was never ours to see). */
export async function killPids(pids: readonly number[], graceMs = 3000): Promise<void> {
  const live = pids.filter(pidAlive);
  for (const p of live) {
    try {
      process.kill(p, 'SIGTERM');
    } catch {
      /* gone meanwhile */
    }
  }
  const deadline = Date.now() + graceMs;
  while (live.some(pidAlive) && Date.now() < deadline) await sleep(50);
  for (const p of live.filter(pidAlive)) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* gone meanwhile */
    }
  }
  // A killed child of ours stays a zombie (and "alive" to kill 0) until reaped; don't wait forever for it.
  const hard = Date.now() + 3000;
  while (live.some((p) => pidAlive(p) && !isZombie(p)) && Date.now() < hard) await sleep(50);
}

function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

async function delLink(name: string): Promise<void> {
  const r = await run('ip', ['link', 'del', name]);
  if (r.code !== 0 && !/Cannot find device|does not exist/i.test(r.stderr)) {
    throw new FerryError('FERRY_E_LAB', `ip link del ${name}: ${r.stderr.trim()}`);
  }
}

async function delNamespace(ns: string): Promise<void> {
  const r = await run('ip', ['netns', 'del', ns]);
  if (r.code !== 0 && !/No such file|Cannot remove namespace file/i.test(r.stderr)) {
    throw new FerryError('FERRY_E_LAB', `ip netns del ${ns}: ${r.stderr.trim()}`);
  }
}

/**
 * Removes every namespace (and the processes inside), bridge and veth of the lab, found by name.
 * Idempotent; works on a half-built lab. Returns what it removed.
 */
export async function destroyLabNetwork(lab: string): Promise<LabObjects> {
  validateLabName(lab);
  await checkLabPrerequisites();
  const found = await findLabObjects(lab);
  for (const ns of found.namespaces) await killPids(await namespacePids(ns));
  // Host ends first (deleting one end of a veth deletes its peer), then the bridges, then the namespaces
  // (which takes the taps and br-vm with them).
  const links = [...found.links].sort((a, b) => b.length - a.length);
  for (const l of links) await delLink(l);
  for (const ns of found.namespaces) await delNamespace(ns);
  // Namespace teardown in the kernel is asynchronous; wait until nothing of ours is listed any more.
  const deadline = Date.now() + 10_000;
  for (;;) {
    const left = await findLabObjects(lab);
    if (left.namespaces.length === 0 && left.links.length === 0) break;
    if (Date.now() > deadline) {
      throw new FerryError(
        'FERRY_E_LAB',
        `Lab ${lab}: could not remove ${[...left.namespaces, ...left.links].join(', ')}.`,
      );
    }
    for (const l of left.links) await delLink(l);
    for (const ns of left.namespaces) await delNamespace(ns);
    await sleep(100);
  }
  return found;
}

// ---------------------------------------------------------------------------------------------------
// helpers for tests and the migration engine

async function setMgmtLink(lab: string, host: HostRef, state: 'up' | 'down'): Promise<void> {
  validateLabName(lab);
  const dev = `fm-${lab}-h${hostIndex(host)}`;
  await ip('link', 'set', dev, state);
}

/** Cuts a host's management/migration link (its root-side veth end goes down; eth0 loses carrier). */
export function linkDown(lab: string, host: HostRef): Promise<void> {
  return setMgmtLink(lab, host, 'down');
}

/** Restores a link cut by `linkDown`. */
export function linkUp(lab: string, host: HostRef): Promise<void> {
  return setMgmtLink(lab, host, 'up');
}

/** Is the host's management link up (root side administratively up)? */
export async function isLinkUp(lab: string, host: HostRef): Promise<boolean> {
  validateLabName(lab);
  const dev = `fm-${lab}-h${hostIndex(host)}`;
  const [l] = await ipJson<IpLink>('link', 'show', 'dev', dev);
  return (l?.flags ?? []).includes('UP');
}

/**
 * Runs argv inside a lab host's namespace (`ip netns exec`, no shell). A non-zero exit is returned, not
 * thrown: tests ask "does this ping fail?".
 */
export async function execInHost(
  lab: string,
  host: HostRef,
  argv: readonly string[],
  opts: { timeoutMs?: number } = {},
): Promise<ExecResult> {
  if (argv.length === 0) throw new FerryError('FERRY_E_USAGE', 'execInHost needs a command.');
  const ns = labHostNamespace(lab, host);
  return run('ip', ['netns', 'exec', ns, ...argv], opts.timeoutMs ?? 30_000);
}

// ---------------------------------------------------------------------------------------------------
// cutting one kind of traffic (fault tests)

/**
 * What a host's one link carries, told apart by TCP port: `management` is the controller↔agent API (the
 * agent's fixed port, and the controller's for calls the agent makes), `migration` is everything else on
 * TCP — QEMU's migration stream and NBD exports, whose ports QEMU and the agent choose.
 */
export type TrafficKind = 'migration' | 'management';

/** The nftables table of a cut: one per namespace, so restoring deletes exactly what a cut added. */
const CUT_TABLE = 'ferry_fault';

async function nftInHost(lab: string, host: HostRef, args: string[]): Promise<ExecResult> {
  const ns = labHostNamespace(lab, host);
  const r = await run('ip', ['netns', 'exec', ns, 'nft', ...args]);
  if (r.code !== 0 && /exec of "nft" failed/.test(r.stderr)) {
    throw new FerryError('FERRY_E_MISSING_TOOL', '`nft` was not found: install nftables (scripts/setup.sh does).');
  }
  return r;
}

/**
 * Drops one kind of TCP traffic on a host's management/migration link (eth0 inside its namespace), in both
 * directions, silently (no reset): to both ends it looks like a cable pulled for that traffic only, so TCP
 * retransmits and no one is told. `managementPorts` are the ports of the controller↔agent API. Undo with
 * `restoreTraffic` (in a `finally`).
 */
export async function cutTraffic(
  lab: string,
  host: HostRef,
  kind: TrafficKind,
  managementPorts: readonly number[],
): Promise<void> {
  if (managementPorts.length === 0 || managementPorts.some((p) => !Number.isInteger(p) || p < 1 || p > 65535)) {
    throw new FerryError('FERRY_E_BAD_INPUT', `Bad management ports ${JSON.stringify(managementPorts)}.`);
  }
  const set = `{ ${managementPorts.join(', ')} }`;
  const must = async (args: string[]): Promise<void> => {
    const r = await nftInHost(lab, host, args);
    if (r.code !== 0) throw new FerryError('FERRY_E_LAB', `nft ${args.join(' ')}: ${r.stderr.trim() || `exit ${r.code}`}`);
  };
  await restoreTraffic(lab, host);
  try {
    await must(['add', 'table', 'inet', CUT_TABLE]);
    for (const [chain, hook, dev] of [
      ['in', 'input', 'iifname'],
      ['out', 'output', 'oifname'],
    ] as const) {
      await must(['add', 'chain', 'inet', CUT_TABLE, chain, `{ type filter hook ${hook} priority 0; policy accept; }`]);
      const rule =
        kind === 'management'
          ? [
              [dev, HOST_MGMT_IF, 'tcp', 'dport', set, 'drop'],
              [dev, HOST_MGMT_IF, 'tcp', 'sport', set, 'drop'],
            ]
          : [[dev, HOST_MGMT_IF, 'tcp', 'dport', '!=', set, 'tcp', 'sport', '!=', set, 'drop']];
      for (const r of rule) await must(['add', 'rule', 'inet', CUT_TABLE, chain, ...r]);
    }
  } catch (err) {
    await restoreTraffic(lab, host).catch(() => undefined);
    throw err;
  }
}

/** Removes a cut made by `cutTraffic`; a no-op when there is none (or the namespace is gone). */
export async function restoreTraffic(lab: string, host: HostRef): Promise<void> {
  const r = await nftInHost(lab, host, ['delete', 'table', 'inet', CUT_TABLE]);
  if (r.code !== 0 && !/No such file or directory|does not exist|Cannot open network namespace/i.test(r.stderr)) {
    throw new FerryError('FERRY_E_LAB', `nft delete table inet ${CUT_TABLE}: ${r.stderr.trim()}`);
  }
}

/** Which cut is in place on a host, if any (read back from nftables, not remembered). */
export async function trafficCut(lab: string, host: HostRef): Promise<TrafficKind | null> {
  const r = await nftInHost(lab, host, ['list', 'table', 'inet', CUT_TABLE]);
  if (r.code !== 0) return null;
  return /dport != /.test(r.stdout) ? 'migration' : 'management';
}
