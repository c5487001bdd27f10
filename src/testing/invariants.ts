/**
 * Ferry's promise checked on the hosts, not in the store: after a fault, the guest runs (unpaused) on
 * exactly one host, it is the same guest (boot id) with its memory (and disk) intact, the job is final and
 * says why it failed, nothing is left on the other host, the store agrees, and the VM migrates again.
 *
 * Three independent witnesses count the running copies, because each one alone can be fooled:
 *  - /proc: every QEMU process of the VM on every lab host (an agent that lost track of one still shows);
 *  - QMP: `query-status` on each QEMU's observer monitor (`qmp-observe.sock`; the agent holds the main one),
 *    which tells a running guest from a paused or incoming one;
 *  - the guest itself: `info` broadcast on the VM LAN, counting the answers that carry its boot id (two
 *    copies have the same IP and MAC, and both answer).
 * A `RunningWatch` samples QMP during the whole case, so a guest that ran twice for a moment is caught too.
 */
import { createSocket } from 'node:dgram';
import { setTimeout as sleep } from 'node:timers/promises';
import type { MigrationJson } from '../common/migration.ts';
import { GUEST_UDP_PORT } from '../guest/client.ts';
import { execInHost } from '../lab/index.ts';
import { QmpClient } from '../qemu/qmp.ts';
import { runFiles } from '../qemu/process.ts';
import { FINAL_STATES, waitUntil, type TestCluster, type VmJson } from './cluster.ts';

/** The kinds of broken promise the report counts. */
export const VIOLATION_KINDS = ['lost', 'twice', 'corrupt', 'leftover', 'job', 'store', 'remigrate'] as const;
export type ViolationKind = (typeof VIOLATION_KINDS)[number];

export interface Violation {
  kind: ViolationKind;
  message: string;
}

export interface QemuStatus {
  host: string;
  pid: number;
  incoming: boolean;
  /** QEMU's run state verbatim (`running`, `paused`, `inmigrate`, `postmigrate` …), or why it is unknown. */
  status: string;
  running: boolean;
}

/** `query-status` of one QEMU through its observer monitor. */
export async function queryStatus(cluster: TestCluster, host: string, vm: string, pid: number, incoming: boolean): Promise<QemuStatus> {
  const sock = runFiles(cluster.runDir(host, vm)).observeSocket;
  let qmp: QmpClient | null = null;
  try {
    qmp = await QmpClient.connect(sock, { timeoutMs: 2000 });
    const st = await qmp.execute('query-status', undefined, { timeoutMs: 2000 });
    return { host, pid, incoming, status: st.status, running: st.running };
  } catch (err) {
    return { host, pid, incoming, status: `unknown (${(err as Error).message})`, running: false };
  } finally {
    await qmp?.close().catch(() => undefined);
  }
}

/** Every QEMU of the VM in the lab with its run state. */
export async function qemuStatuses(cluster: TestCluster, vm: string): Promise<QemuStatus[]> {
  return Promise.all(cluster.qemus(vm).map((q) => queryStatus(cluster, q.host, vm, q.pid, q.incoming)));
}

/**
 * Broadcasts `info` on the VM LAN from the root namespace's address there and counts the answers from
 * `ip` per round (one datagram each, tagged, so a late answer to an earlier round is not counted twice).
 * A running copy may miss one datagram, never answer one twice: the largest count of the rounds is the
 * number of copies that answer. Returns the boot ids seen in that round.
 */
export async function broadcastInfo(vmGateway: string, ip: string, rounds = 3, waitMs = 500): Promise<string[]> {
  const sock = createSocket('udp4');
  const byTag = new Map<number, string[]>();
  sock.on('message', (msg, rinfo) => {
    if (rinfo.address !== ip) return;
    try {
      const r = JSON.parse(msg.toString('utf8')) as { tag?: number; bootId?: string };
      if (typeof r.tag === 'number' && byTag.has(r.tag)) byTag.get(r.tag)!.push(r.bootId ?? '?');
    } catch {
      /* not an answer of ferry-guest */
    }
  });
  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.bind({ address: vmGateway, port: 0 }, () => resolve());
  });
  try {
    sock.setBroadcast(true);
    const base = Math.floor(Math.random() * 1e9);
    for (let i = 0; i < rounds; i++) {
      const tag = base + i;
      byTag.set(tag, []);
      await new Promise<void>((resolve, reject) =>
        sock.send(`#${tag} info`, GUEST_UDP_PORT, '255.255.255.255', (err) => (err ? reject(err) : resolve())),
      );
      await sleep(waitMs);
    }
  } finally {
    sock.close();
  }
  return [...byTag.values()].reduce((a, b) => (b.length > a.length ? b : a), []);
}

/** Samples the run state of every QEMU of a VM while a case runs: the most copies ever running at once. */
export class RunningWatch {
  maxRunning = 0;
  /** The first sample that saw more than one copy running. */
  twice: QemuStatus[] | null = null;
  private stopped = false;
  private loop: Promise<void> | null = null;

  constructor(
    private readonly cluster: TestCluster,
    private readonly vm: string,
    private readonly everyMs = 400,
  ) {}

  start(): this {
    this.loop = (async () => {
      while (!this.stopped) {
        const st = await qemuStatuses(this.cluster, this.vm).catch(() => []);
        const running = st.filter((s) => s.running);
        if (running.length > this.maxRunning) this.maxRunning = running.length;
        if (running.length > 1 && this.twice === null) this.twice = st;
        await sleep(this.everyMs);
      }
    })();
    return this;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }
}

export interface Expectation {
  /** Where the VM must end; null when either host is a legitimate outcome. */
  host: string | null;
}

export interface InvariantInput {
  cluster: TestCluster;
  /** Names the case in every message. */
  cell: string;
  vm: string;
  bootId: string;
  source: string;
  destination: string;
  job: MigrationJson | null;
  expect: Expectation;
  /** Disk checksums taken before the case, when the VM has a disk: device → {mib, sum}. */
  disks?: Record<string, { mib: number; sum: string }>;
  watch?: RunningWatch;
  /** Taps on each host before the case (host → names). */
  tapsBefore?: Record<string, string[]>;
  /** How long the world may take to settle (cleanups in the background) before a check counts. */
  settleMs?: number;
}

export interface InvariantResult {
  violations: Violation[];
  /** The host the guest runs on at the end (null when it runs nowhere, or on several). */
  host: string | null;
  statuses: QemuStatus[];
}

/** The tap interfaces in a lab host's namespace. */
export async function tapsOn(cluster: TestCluster, host: string): Promise<string[]> {
  const links = await execInHost(cluster.lab, host, ['ip', '-j', '-d', 'link', 'show']);
  if (links.code !== 0) return [];
  return (JSON.parse(links.stdout || '[]') as { ifname: string; linkinfo?: { info_kind?: string } }[])
    .filter((l) => l.linkinfo?.info_kind === 'tun')
    .map((l) => l.ifname);
}

/**
 * Leftovers of the VM on a host it must not be on: QEMU, run dir, taps (not there before the case: an
 * earlier case's leftover is that case's finding), QEMU listeners (NBD exports, `migrate-incoming`).
 */
async function leftoversOn(cluster: TestCluster, host: string, vm: string, tapsBefore: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  const q = cluster.qemus(vm).filter((x) => x.host === host);
  if (q.length > 0) out.push(`QEMU ${q.map((x) => x.pid).join(',')}`);
  if (cluster.runDirExists(host, vm)) out.push(`run dir ${cluster.runDir(host, vm)}`);
  const taps = (await tapsOn(cluster, host)).filter((t) => !tapsBefore.includes(t));
  if (taps.length > 0) out.push(`tap ${taps.join(',')}`);
  // An NBD export or a `migrate-incoming` listener is a TCP listener of a QEMU on that host.
  const ss = await execInHost(cluster.lab, host, ['ss', '-Htlnp']);
  if (ss.code === 0) {
    const qemuListeners = ss.stdout.split('\n').filter((l) => /qemu-system/.test(l));
    if (qemuListeners.length > 0) out.push(`listener ${qemuListeners.map((l) => l.trim().split(/\s+/)[3]).join(',')}`);
  }
  return out;
}

function vmIp(v: VmJson): string | null {
  const ip = v.ip ?? v.spec?.nics?.find((n) => n.ip)?.ip ?? null;
  return ip ? ip.split('/')[0]! : null;
}

/**
 * Checks every invariant once the job is final (waiting up to `settleMs` for background cleanup to end
 * before a check counts). Returns every violation found, each naming the cell; does not throw for them.
 */
export async function checkInvariants(input: InvariantInput): Promise<InvariantResult> {
  const { cluster, cell, vm, bootId, job } = input;
  const settleMs = input.settleMs ?? 30_000;
  const v: Violation[] = [];
  const add = (kind: ViolationKind, message: string): void => {
    v.push({ kind, message: `[${cell}] ${message}` });
  };

  // The job: final, and a failure says what and where.
  if (job === null) add('job', 'the job never became final');
  else {
    if (!FINAL_STATES.includes(job.state)) add('job', `job ${job.id} is ${job.state}/${job.phase}, not final`);
    if (job.state === 'failed' || job.state === 'cancelled') {
      if (!/^FERRY_E_[A-Z_]+$/.test(job.error?.code ?? '')) add('job', `job ${job.id} ${job.state} without an error code: ${JSON.stringify(job.error)}`);
      if (!job.phase) add('job', `job ${job.id} ${job.state} without its phase`);
    }
  }

  // Exactly one running copy: wait a while for it (an agent restarting resumes its VM), then judge.
  let statuses: QemuStatus[] = [];
  try {
    statuses = await waitUntil(
      'one running QEMU and nothing else',
      async () => {
        const st = await qemuStatuses(cluster, vm);
        return st.length === 1 && st[0]!.running ? st : null;
      },
      settleMs,
      500,
    );
  } catch {
    statuses = await qemuStatuses(cluster, vm);
  }
  const running = statuses.filter((s) => s.running);
  const describe = (s: QemuStatus[]): string => s.map((x) => `${x.host}:${x.pid}=${x.status}${x.incoming ? ' (started with -incoming)' : ''}`).join(', ') || 'none';
  if (running.length === 0) add('lost', `the guest runs on no host (QEMUs: ${describe(statuses)})`);
  if (running.length > 1) add('twice', `the guest runs on ${running.length} hosts: ${describe(running)}`);
  if (input.watch?.twice) add('twice', `for a moment the guest ran on ${input.watch.maxRunning} hosts at once: ${describe(input.watch.twice)}`);
  const host = running.length === 1 ? running[0]!.host : null;
  if (host !== null && input.expect.host !== null && host !== input.expect.host) {
    add('job', `the guest ends on ${host}, expected ${input.expect.host}`);
  }
  if (host !== null && job !== null && FINAL_STATES.includes(job.state)) {
    const want = job.state === 'completed' ? job.destination : job.source;
    if (host !== want) add('job', `job ${job.id} is ${job.state} but the guest runs on ${host}, not ${want}`);
  }

  // The store agrees with the hosts.
  let show: VmJson | null = null;
  try {
    show = await waitUntil(
      'vm show to agree',
      async () => {
        const s = await cluster.vmShow(vm);
        return s.state === 'running' && (host === null || s.host === host) ? s : null;
      },
      host === null ? 1000 : 15_000,
      500,
    );
  } catch {
    show = await cluster.vmShow(vm).catch(() => null);
    add('store', `vm show says ${show ? `${show.state} on ${show.host}` : 'nothing'}; the hosts say ${host ?? 'no single host'}`);
  }
  if (show?.bootId && show.bootId !== bootId) add('store', `vm show has boot id ${show.bootId}, expected ${bootId}`);

  // The guest itself: how many answer on the LAN, with which boot id.
  const ip = show ? vmIp(show) : null;
  if (ip === null) add('store', 'the VM has no IP: cannot count the guests answering on the LAN');
  else {
    const answers = await broadcastInfo(cluster.current.network.vmGateway, ip);
    const same = answers.filter((b) => b === bootId).length;
    const other = answers.filter((b) => b !== bootId);
    if (same === 0 && running.length > 0) add('lost', `no guest with boot id ${bootId} answers on the LAN (answers: ${JSON.stringify(answers)})`);
    if (same > 1) add('twice', `${same} guests with boot id ${bootId} answer a broadcast`);
    if (other.length > 0) add('corrupt', `a guest with another boot id answers at ${ip}: ${other.join(', ')} (it rebooted)`);
  }

  // Same guest, memory and disk intact.
  if (host !== null) {
    try {
      const info = await cluster.guest<{ bootId: string }>(vm, 'info');
      if (info.bootId !== bootId) add('corrupt', `the guest's boot id is ${info.bootId}, was ${bootId} (it rebooted)`);
      const verify = await cluster.guest<{ ok: boolean }>(vm, 'dirty', 'verify');
      if (!verify.ok) add('corrupt', `dirty verify failed: ${JSON.stringify(verify)}`);
      for (const [dev, want] of Object.entries(input.disks ?? {})) {
        const sum = await cluster.guest<{ ok: boolean; sum: string }>(vm, 'disk', 'sum', dev, String(want.mib));
        if (sum.sum !== want.sum) add('corrupt', `disk ${dev}: sum ${sum.sum}, was ${want.sum}`);
      }
    } catch (err) {
      add('corrupt', `the guest does not answer its commands: ${(err as Error).message}`);
    }
  }

  // Nothing left on the other host(s).
  const elsewhere = cluster.current.hosts.map((h) => h.name).filter((n) => n !== host);
  for (const other of elsewhere) {
    if (host === null && other !== input.source && other !== input.destination) continue;
    try {
      await waitUntil(`nothing left on ${other}`, async () => (await leftoversOn(cluster, other, vm, input.tapsBefore?.[other] ?? [])).length === 0, settleMs, 1000);
    } catch {
      if (host !== null) add('leftover', `left on ${other}: ${(await leftoversOn(cluster, other, vm, input.tapsBefore?.[other] ?? [])).join('; ')}`);
    }
  }
  return { violations: v, host, statuses };
}

/** The VM still migrates: one more quick migration (no fault) from wherever it is, which must complete. */
export async function checkMigratesAgain(cluster: TestCluster, cell: string, vm: string, bootId: string): Promise<{ violations: Violation[]; host: string | null }> {
  const v: Violation[] = [];
  const add = (message: string): void => {
    v.push({ kind: 'remigrate', message: `[${cell}] ${message}` });
  };
  try {
    await cluster.waitHostsReady(60_000);
    const before = await cluster.vmShow(vm);
    // A host that was just unreachable may be refused for a heartbeat or two after it is back.
    const m = await waitUntil(
      'the next migration to be accepted',
      () => cluster.ferryJson<{ state: string; destination: string; error: unknown }>(['vm', 'migrate', vm, '--wait', '--no-tls'], [0, 1]),
      30_000,
      2000,
    );
    if (m.state !== 'completed') {
      add(`the next migration from ${before.host} ended ${m.state}: ${JSON.stringify(m.error)}`);
      return { violations: v, host: before.host };
    }
    const after = await cluster.vmShow(vm);
    if (after.host !== m.destination || after.bootId !== bootId) add(`after the next migration vm show says ${after.host}/${after.bootId}`);
    const verify = await cluster.guest<{ ok: boolean }>(vm, 'dirty', 'verify');
    if (!verify.ok) add(`dirty verify after the next migration: ${JSON.stringify(verify)}`);
    const q = cluster.qemus(vm);
    if (q.length !== 1) {
      // The source's QEMU quits during confirm; give it the moment it needs.
      await waitUntil('one QEMU after the next migration', () => cluster.qemus(vm).length === 1, 10_000).catch(() =>
        add(`after the next migration QEMUs: ${cluster.qemus(vm).map((x) => `${x.host}:${x.pid}`).join(', ')}`),
      );
    }
    return { violations: v, host: after.host };
  } catch (err) {
    add(`the next migration could not run: ${(err as Error).message}`);
    return { violations: v, host: null };
  }
}

