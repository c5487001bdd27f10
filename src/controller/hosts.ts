/**
 * The host registry: joins (a one-time token buys an agent certificate and a row in `hosts`),
 * heartbeats (every ~2 s each agent's inventory, VM list and version, 64 hosts at a time; 3 misses →
 * `unreachable`, asked then less and less often, up to every 3 intervals; an agent
 * speaking a protocol outside the range → `incompatible` with its error, an answer → `ready`, each
 * transition published), and reconciliation of the `vms` table from what agents report.
 */
import type { HostInventorySummary, HostJson, HostSummaryJson } from '../common/api.ts';
import { isIP } from 'node:net';
import { FerryError } from '../common/errors.ts';
import { silentLogger, type Log } from '../common/log.ts';
import { validateHostName } from '../common/identity.ts';
import type { AgentCertificate, AgentVersion, HostInventory, HostState, JoinRequest, JoinResponse, RenewRequest, RenewResponse, VmStatus } from '../common/protocol.ts';
import { parseVmSpec } from '../common/spec.ts';
import type { AgentPool } from './agent-client.ts';
import type { ClusterCa } from './ca.ts';
import type { EventBus } from './events.ts';
import type { VmGuard } from './guard.ts';
import { freeMemoryOf, NO_LOAD, type HostLoad, type HostView, type VmLoad } from './scheduler.ts';
import { nowIso, type HostsTable, type Store, type VmsTable } from './store/db.ts';
import { consumeJoinToken } from './tokens.ts';
import { renewAgentCert } from './renewal.ts';
import { hasActiveJob } from './migrations/jobs.ts';
import { VmRows } from './store/vms.ts';
import { dialectSql, NO_LIMIT } from './store/sync.ts';
import { PendingCalls } from './migrations/pending.ts';


/** Heartbeats in flight at once in a round (enough that a round of 1,000 answering hosts fits in an interval). */
const HEARTBEAT_CONCURRENCY = 64;

export interface HostRegistryOptions {
  store: Store;
  events: EventBus;
  pool: AgentPool;
  guard: VmGuard;
  ca: ClusterCa;
  intervalMs?: number;
  /** Heartbeats missed in a row before a host is declared unreachable. */
  missesToUnreachable?: number;
  log?: Log;
  /** Lifetime of agent certificates, issued at join and renewal (`ferry server --agent-cert-days`). */
  agentCertMs?: number;
}

/** A page of the host list by name (the API's `?limit=N&after=NAME`). */
export interface HostPage {
  limit?: number;
  after?: string;
}

/** An inventory as stored (`text`), parsed, and reduced to what a list shows. */
interface ParsedInventory {
  text: string;
  inventory: HostInventory;
  summary: HostInventorySummary;
}

function summarize(inv: HostInventory): HostInventorySummary {
  return {
    protocol: inv.protocol,
    cpu: { model: inv.cpu.model, vendor: inv.cpu.vendor, cores: inv.cpu.cores },
    memoryBytes: inv.memoryBytes,
    accel: inv.accel,
    qemu: { version: inv.qemu.version },
    agentVersion: inv.agentVersion,
  };
}

/**
 * A host's JSON text with `inventoryText` (JSON already, or null) in place of its inventory, in HostJson's
 * own order of fields: what JSON.stringify(host) gives when inventoryText is JSON.stringify(host.inventory).
 */
function hostJsonText(host: HostJson, inventoryText: string | null): string {
  const { name, url, state, maintenance, inventory: _parsed, ...rest } = host;
  const head = JSON.stringify({ name, url, state, maintenance });
  return `${head.slice(0, -1)},"inventory":${inventoryText ?? 'null'},${JSON.stringify(rest).slice(1)}`;
}

export function hostState(row: Pick<HostsTable, 'state' | 'maintenance'>): HostState {
  if (row.state === 'unreachable') return 'unreachable';
  if (row.state === 'incompatible') return 'incompatible';
  return row.maintenance ? 'maintenance' : 'ready';
}

/**
 * Memory and vCPUs of the VMs the store places on hosts (or on a range of host names), as the scheduler
 * wants them. The store reads the two numbers out of each spec (its JSON functions): parsing 10,000 specs in
 * JavaScript for each host list was most of what a list cost.
 */
export function vmLoads(store: Store, hosts?: { first: string; last: string }): VmLoad[] {
  const d = dialectSql(store.sql.dialect);
  const cols = `host, state, ${d.jsonNumber('spec', 'memoryBytes')} AS "memoryBytes", ${d.jsonNumber('spec', 'vcpus')} AS vcpus`;
  const rows = (
    hosts === undefined
      ? store.sql.prepare(`SELECT ${cols} FROM vms`).all()
      : store.sql.prepare(`SELECT ${cols} FROM vms WHERE host BETWEEN ? AND ?`).all(hosts.first, hosts.last)
  ) as { host: string; state: string; memoryBytes: number | null; vcpus: number | null }[];
  return rows.map((r) => ({ host: r.host, memoryBytes: r.memoryBytes ?? 0, vcpus: r.vcpus ?? 0, pending: r.state === 'creating' }));
}

export function hostViews(store: Store): HostView[] {
  const rows = store.sql.prepare('SELECT * FROM hosts ORDER BY name').all() as HostsTable[];
  return rows.map((r) => ({
    name: r.name,
    state: hostState(r),
    maintenance: r.maintenance === 1,
    inventory: r.inventory === null ? null : (JSON.parse(r.inventory) as HostInventory),
  }));
}

/** `https://IP:PORT` only: the agent's certificate carries that IP, and nothing else reaches a SAN. */
function parseAgentUrl(text: string): { url: string; ip: string } {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new FerryError('FERRY_E_BAD_INPUT', `Bad agentUrl ${JSON.stringify(text)}: use https://ADDRESS:PORT.`);
  }
  const ip = u.hostname.replace(/^\[|\]$/g, '');
  // Port 0 would mean "not listening yet": nothing could ever reach it.
  if (u.protocol !== 'https:' || !/^(\d{1,3}\.){3}\d{1,3}$|:/.test(ip) || u.pathname !== '/' || u.port === '' || u.port === '0') {
    throw new FerryError('FERRY_E_BAD_INPUT', `Bad agentUrl ${JSON.stringify(text)}: use https://IP:PORT (an IP address, not a name).`);
  }
  return { url: `https://${u.host}`, ip };
}

/** One spelling per address: IPv4-mapped IPv6 (`::ffff:10.0.0.2`, what a dual-stack socket reports) as IPv4. */
export function canonicalIp(addr: string): string {
  const a = addr.replace(/^\[|\]$/g, '').toLowerCase();
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/.exec(a);
  if (mapped) return mapped[1]!;
  // The URL parser writes IPv6 in its one compressed form.
  return isIP(a) === 6 ? new URL(`http://[${a}]/`).hostname.replace(/^\[|\]$/g, '') : a;
}

/** How many ranges of host names the VM loads are kept for at once (pages of a list, single hosts). */
const VMS_CACHE_PAGES = 256;

export class HostRegistry {
  private readonly o: Required<Omit<HostRegistryOptions, 'agentCertMs'>> & Pick<HostRegistryOptions, 'agentCertMs'>;
  private readonly misses = new Map<string, number>();
  private readonly inFlight = new Map<string, Promise<void>>();
  private readonly inventories = new Map<string, ParsedInventory>();
  /** VM loads and names per range of host names, while the VMs' generation is the same (vmsOf). Shared: read-only. */
  private vmsCache: { generation: number; pages: Map<string, { loads: Map<string, HostLoad>; names: Map<string, string[]> }> } = { generation: -1, pages: new Map() };
  /** Hosts that missed heartbeats: the earliest time (Date.now()) a round asks them again. */
  private readonly notBefore = new Map<string, number>();
  /** The VMs each host last reported running (a foreign copy is removed only while its owner runs it). */
  private readonly lastRunning = new Map<string, Set<string>>();
  private readonly resolving = new Set<string>();
  private readonly flagged = new Set<string>();
  /** Each host's last answer to GET /version, and the protocol error of an incompatible one. */
  private readonly versions = new Map<string, AgentVersion>();
  /** Each host's certificate validity, from agents whose version has the route (protocol 3). */
  private readonly certificates = new Map<string, AgentCertificate>();
  private readonly errors = new Map<string, { code: string; message: string }>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = true;

  constructor(opts: HostRegistryOptions) {
    this.o = { intervalMs: 2000, missesToUnreachable: 3, log: silentLogger(), ...opts };
  }

  /**
   * Registers a new host with a one-time token and issues its certificate. `peerAddress` is the source
   * address of the join's TCP connection: the certificate's IP must be one the controller saw, not one
   * the body claims, or a token would buy a certificate for any address. A reserved name or the name of
   * a host that joined already is refused (a join is no takeover), and so is a mismatched address; none
   * of these use up the token.
   */
  async join(req: JoinRequest, serverUrl: string, peerAddress: string | undefined): Promise<JoinResponse> {
    const name = validateHostName(req.name);
    const { url, ip } = parseAgentUrl(req.agentUrl);
    const { store } = this.o;
    // The token first (a dry run uses nothing up), so that without one nobody learns which names exist.
    consumeJoinToken(store, req.token, name, { dryRun: true });
    const taken = (): boolean => store.sql.prepare('SELECT 1 FROM hosts WHERE name = ?').get(name) !== undefined;
    if (taken()) {
      throw new FerryError('FERRY_E_HOST_EXISTS', `A host named ${JSON.stringify(name)} has joined already: a join cannot take it over; choose another name.`);
    }
    const seen = peerAddress === undefined ? undefined : canonicalIp(peerAddress);
    if (seen === undefined || seen !== canonicalIp(ip)) {
      throw new FerryError(
        'FERRY_E_JOIN_ADDRESS',
        `The join came from ${seen ?? 'an unknown address'}, but agentUrl says ${ip}: join from the agent's own address (its certificate carries the address the controller sees).`,
        { details: { peerAddress: seen ?? null, agentAddress: ip } },
      );
    }
    // Everything was checked without side effects; now issue, then use the token and register in one
    // transaction, so a failure in between neither burns the token nor leaves a host without a certificate.
    const cert = await this.o.ca.issueAgentCert(name, [ip], this.o.agentCertMs === undefined ? {} : { lifetimeMs: this.o.agentCertMs });
    store.sql.transaction(() => {
      // Again inside the transaction: two joins of one name with two tokens must not both win.
      if (taken()) throw new FerryError('FERRY_E_HOST_EXISTS', `A host named ${JSON.stringify(name)} has joined already.`);
      consumeJoinToken(store, req.token, name);
      store.sql
        .prepare(`INSERT INTO hosts (name, url, state, maintenance, inventory, last_seen_at, joined_at) VALUES (?, ?, 'ready', 0, NULL, NULL, ?)`)
        .run(name, url, nowIso());
    })();
    this.misses.set(name, 0);
    this.o.events.publish('host.joined', name, { url });
    this.o.log.info({ host: name, url }, `host ${name} joined from ${url}`);
    return { caCertPem: this.o.ca.caCertPem, certPem: cert.certPem, keyPem: cert.keyPem, serverUrl, controllerPin: this.o.ca.controllerPin };
  }

  /** A joined agent's new certificate for its new key (src/controller/renewal.ts says what is refused). */
  renew(req: RenewRequest): Promise<RenewResponse> {
    const { store, ca, events, log, agentCertMs } = this.o;
    return renewAgentCert({ store, ca, events, log, ...(agentCertMs === undefined ? {} : { lifetimeMs: agentCertMs }) }, req);
  }

  /** By name; a page when `limit` is given (names after `after`). */
  list(page: HostPage = {}): HostJson[] {
    const { rows, loads, names } = this.page(page);
    return rows.map((r) => this.toJson(r, loads.get(r.name) ?? NO_LOAD, names.get(r.name) ?? []));
  }

  /**
   * The same list as the JSON text the API answers, each inventory spliced in as the store holds it: the
   * heartbeat wrote it with JSON.stringify, so it is already the text JSON.stringify of the parsed
   * inventory would give, and serialising 100 inventories again was most of the cost of a page.
   */
  listText(page: HostPage = {}): string {
    const { rows, loads, names } = this.page(page);
    return `[${rows.map((r) => hostJsonText(this.toJson(r, loads.get(r.name) ?? NO_LOAD, names.get(r.name) ?? []), r.inventory)).join(',')}]`;
  }

  /** The same list, each inventory reduced to what a list shows (HostSummaryJson). */
  summaries(page: HostPage = {}): HostSummaryJson[] {
    const { rows, loads, names } = this.page(page);
    return rows.map((r) => ({ ...this.toJson(r, loads.get(r.name) ?? NO_LOAD, names.get(r.name) ?? []), inventory: this.parsed(r)?.summary ?? null }));
  }

  /**
   * The rows of a page, and the load and VM names of its hosts: one read of the VMs for the whole page, not
   * one per host (at 1,000 hosts and 10,000 VMs the per-host reads made the list take seconds, BENCHMARKS.md).
   * A page is a range of names, so only the VMs of that range are read.
   */
  private page(page: HostPage): { rows: HostsTable[]; loads: Map<string, HostLoad>; names: Map<string, string[]> } {
    const rows = this.o.store.sql
      .prepare('SELECT * FROM hosts WHERE name > ? ORDER BY name LIMIT ?')
      .all(page.after ?? '', page.limit ?? NO_LIMIT) as HostsTable[];
    if (rows.length === 0) return { rows, loads: new Map(), names: new Map() };
    return { rows, ...this.vmsOf({ first: rows[0]!.name, last: rows.at(-1)!.name }) };
  }

  get(name: string): HostJson {
    const row = this.row(name);
    if (!row) throw new FerryError('FERRY_E_HOST_NOT_FOUND', `No host named ${JSON.stringify(name)}: see \`ferry host list\`.`);
    const { loads, names } = this.vmsOf({ first: row.name, last: row.name });
    return this.toJson(row, loads.get(row.name) ?? NO_LOAD, names.get(row.name) ?? []);
  }

  /**
   * The load and the VM names (sorted) of each host in a range of host names: one row per host, summed by
   * SQLite from the index vms_host_load (store/migrations.ts), which holds each VM's memory and vCPUs.
   */
  private vmsOf(range: { first: string; last: string }): { loads: Map<string, HostLoad>; names: Map<string, string[]> } {
    // The answer is kept while the VMs' generation stays the same: the database raises it on every change of a
    // VM's name, host, state or spec, by whichever controller (store/migrations.ts, version 12). One read of one
    // row; the heartbeats' writes to the hosts table leave it alone.
    const generation = this.vmsGeneration();
    const key = `${range.first} ${range.last}`;
    if (generation !== this.vmsCache.generation) this.vmsCache = { generation, pages: new Map() };
    const known = this.vmsCache.pages.get(key);
    if (known !== undefined) return known;
    const answer = this.readVmsOf(range);
    if (this.vmsCache.pages.size < VMS_CACHE_PAGES) this.vmsCache.pages.set(key, answer);
    return answer;
  }

  private vmsGeneration(): number {
    const row = this.o.store.sql.prepare("SELECT n FROM store_generation WHERE name = 'vms'").get() as { n: number | string };
    return Number(row.n);
  }

  private readVmsOf(range: { first: string; last: string }): { loads: Map<string, HostLoad>; names: Map<string, string[]> } {
    const { sql } = this.o.store;
    const d = dialectSql(sql.dialect);
    const memory = d.jsonNumber('spec', 'memoryBytes');
    const rows = sql
      .prepare(
        `SELECT host, ${d.groupConcat('name', ' ')} AS names,
           SUM(${memory}) AS "memoryBytes", SUM(${d.jsonNumber('spec', 'vcpus')}) AS vcpus,
           SUM(CASE WHEN state = 'creating' THEN ${memory} ELSE 0 END) AS "pendingBytes"
         FROM vms WHERE host BETWEEN ? AND ? GROUP BY host`,
      )
      .all(range.first, range.last) as { host: string; names: string; memoryBytes: number | null; vcpus: number | null; pendingBytes: number | null }[];
    const names = new Map<string, string[]>();
    const loads = new Map<string, HostLoad>();
    for (const r of rows) {
      // Names never hold a space (NAME_RE, common/units.ts): the separator is unambiguous. Sorted here, not
      // by the aggregate's ORDER BY: that sort went through a temporary B-tree, and cost a host page more
      // than all the rest of its query; NAME_RE's ASCII sorts the same in JavaScript as in SQLite.
      names.set(r.host, r.names.split(' ').sort());
      loads.set(r.host, { memoryBytes: r.memoryBytes ?? 0, vcpus: r.vcpus ?? 0, pendingBytes: r.pendingBytes ?? 0 });
    }
    return { loads, names };
  }

  row(name: string): HostsTable | undefined {
    return this.o.store.sql.prepare('SELECT * FROM hosts WHERE name = ?').get(name) as HostsTable | undefined;
  }

  /**
   * A host's inventory as the store holds it, parsed (and summarised) once per text it had: an inventory is
   * kilobytes and changes seldom, and a host list parsed a hundred of them per request. A heartbeat that
   * brings another inventory writes another text, which is parsed anew. Read-only: answers share it.
   */
  private parsed(r: HostsTable): ParsedInventory | null {
    if (r.inventory === null) return null;
    const known = this.inventories.get(r.name);
    if (known?.text === r.inventory) return known;
    const inventory = JSON.parse(r.inventory) as HostInventory;
    const entry = { text: r.inventory, inventory, summary: summarize(inventory) };
    this.inventories.set(r.name, entry);
    return entry;
  }

  /** `load`: what the VMs on this host take; `vms`: their names. */
  private toJson(r: HostsTable, load: HostLoad, vms: string[]): HostJson {
    const view: HostView = {
      name: r.name,
      state: hostState(r),
      maintenance: r.maintenance === 1,
      inventory: this.parsed(r)?.inventory ?? null,
    };
    return {
      name: r.name,
      url: r.url,
      state: view.state,
      maintenance: view.maintenance,
      inventory: view.inventory,
      agent: this.versions.get(r.name) ?? null,
      certificate: this.certificates.get(r.name) ?? null,
      error: view.state === 'incompatible' ? (this.errors.get(r.name) ?? null) : null,
      freeMemoryBytes: freeMemoryOf(view, load),
      vms,
      lastSeenAt: r.last_seen_at,
      joinedAt: r.joined_at,
    };
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    const tick = (): void => {
      if (this.stopped) return;
      void this.pollAll().finally(() => {
        if (!this.stopped) this.timer = setTimeout(tick, this.o.intervalMs);
      });
    };
    this.timer = setTimeout(tick, 0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await Promise.allSettled([...this.inFlight.values()]);
  }

  /**
   * One heartbeat round over every host due (each host at most one heartbeat at a time), at most
   * HEARTBEAT_CONCURRENCY at once: a fleet of 1,000 hosts is not 3,000 connections opened in one tick of
   * the event loop, which the API's requests would wait behind. A host declared unreachable is due less
   * and less often (`backoffMs`); `poll(name)` asks it at once all the same.
   */
  async pollAll(): Promise<void> {
    const now = Date.now();
    const names = (this.o.store.sql.prepare('SELECT name FROM hosts').all() as { name: string }[])
      .map((r) => r.name)
      .filter((n) => (this.notBefore.get(n) ?? 0) <= now);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < names.length) await this.poll(names[next++]!).catch(() => undefined);
    };
    await Promise.all(Array.from({ length: Math.min(HEARTBEAT_CONCURRENCY, names.length) }, worker));
  }

  /**
   * How long a round leaves alone a host that missed `misses` heartbeats in a row: nothing while it may
   * still be a blip (before it is declared unreachable), then twice as long after each further miss, up to
   * three intervals (6 s by default): an agent that comes back is seen within that (a restarted agent is
   * waited for by a recovering migration), and 1,000 hosts that are gone cost a connection attempt each
   * per three intervals, not per interval.
   */
  private backoffMs(misses: number): number {
    const over = misses - this.o.missesToUnreachable;
    if (over < 0) return 0;
    return Math.min(this.o.intervalMs * 2 ** over, this.o.intervalMs * 3);
  }

  poll(name: string): Promise<void> {
    const running = this.inFlight.get(name);
    if (running) return running;
    const p = this.heartbeat(name).finally(() => this.inFlight.delete(name));
    this.inFlight.set(name, p);
    return p;
  }

  private async heartbeat(name: string): Promise<void> {
    const { store, events, pool } = this.o;
    const row = this.row(name);
    if (!row) return;
    const client = pool.client(name, row.url);
    const fetchedAt = performance.now();
    let inventory: HostInventory;
    let vms: VmStatus[];
    let version: AgentVersion;
    try {
      const timeout = { timeoutMs: Math.max(1000, Math.min(5000, this.o.intervalMs * 1.5)) };
      [inventory, vms, version] = await Promise.all([
        client.call('inventory', {}, timeout),
        client.call('listVms', {}, timeout),
        client.call('version', {}, timeout),
      ]);
    } catch (err) {
      // An agent that answers in a protocol outside the range is not unreachable: it says so at once.
      if (err instanceof FerryError && err.code === 'FERRY_E_AGENT_PROTOCOL') return this.incompatible(name, err);
      const n = (this.misses.get(name) ?? 0) + 1;
      this.misses.set(name, n);
      this.notBefore.set(name, Date.now() + this.backoffMs(n));
      if (n >= this.o.missesToUnreachable) {
        const res = store.sql.prepare("UPDATE hosts SET state = 'unreachable' WHERE name = ? AND state != 'unreachable'").run(name);
        if (res.changes === 1) {
          const message = err instanceof Error ? err.message : String(err);
          const code = err instanceof FerryError ? err.code : 'FERRY_E_AGENT_UNREACHABLE';
          events.publish('host.unreachable', name, { misses: n, error: { code, message } });
          this.o.log.warn({ host: name, misses: n }, `host ${name} unreachable after ${n} missed heartbeats: ${message}`);
        }
      }
      return;
    }
    this.misses.set(name, 0);
    this.notBefore.delete(name);
    this.versions.set(name, version);
    // A route of protocol 3: an agent a version behind (a rolling upgrade) is simply not asked.
    if (client.supports('certificate')) {
      const cert = await client.call('certificate', {}).catch(() => undefined);
      if (cert !== undefined) this.certificates.set(name, cert);
    } else this.certificates.delete(name);
    this.errors.delete(name);
    const wasReady = row.state === 'ready' && row.inventory !== null;
    store.sql
      .prepare("UPDATE hosts SET state = 'ready', inventory = ?, last_seen_at = ? WHERE name = ?")
      .run(JSON.stringify(inventory), nowIso(), name);
    if (!wasReady) {
      events.publish('host.ready', name, { previous: row.inventory === null ? 'joined' : row.state });
      this.o.log.info({ host: name }, `host ${name} ready`);
    }
    this.reconcile(name, vms, fetchedAt);
  }

  /** The agent answered with FERRY_E_AGENT_PROTOCOL: the host is `incompatible` (never scheduled) until it speaks ours. */
  private incompatible(name: string, err: FerryError): void {
    this.misses.set(name, 0);
    this.notBefore.delete(name);
    const error = { code: err.code, message: err.message };
    this.errors.set(name, error);
    const res = this.o.store.sql.prepare("UPDATE hosts SET state = 'incompatible' WHERE name = ? AND state != 'incompatible'").run(name);
    if (res.changes === 1) {
      this.o.events.publish('host.incompatible', name, { error });
      this.o.log.warn({ host: name, code: err.code }, `host ${name} incompatible: ${err.message}`);
    }
  }

  /**
   * Brings the store in line with one agent's report. Rows with an operation in flight (or changed
   * after the report was fetched), rows being created, and rows with an active migration are left alone:
   * their owners write them. A row left `migrating` without an active job (a job that ended without
   * putting it back) follows the agent again. A copy reported by a host that does not own the VM is
   * resolved by `foreignCopy`.
   */
  reconcile(host: string, reported: readonly VmStatus[], fetchedAt: number): void {
    const { store, events, guard } = this.o;
    const rows = new VmRows(store.sql);
    const seen = new Set<string>();
    const now = nowIso();
    this.lastRunning.set(host, new Set(reported.filter((r) => r.state === 'running').map((r) => r.name)));
    const migrating = (row: VmsTable): boolean => row.state === 'migrating' && hasActiveJob(store.sql, row.name);
    for (const r of reported) {
      seen.add(r.name);
      if (guard.skip(r.name, fetchedAt)) continue;
      const row = rows.get(r.name);
      if (!row) {
        let spec;
        try {
          spec = parseVmSpec(r.spec);
        } catch (err) {
          this.o.log.warn({ host, vm: r.name }, `host ${host} reports VM ${r.name} with a spec Ferry cannot read, not adopted: ${String(err)}`);
          continue;
        }
        const ip = spec.nics.find((n) => n.ip !== undefined)?.ip?.split('/')[0] ?? null;
        rows.adopt({ name: r.name, host, state: r.state, spec, bootId: r.bootId, ip, createdAt: r.startedAt ?? now });
        events.publish('vm.adopted', r.name, { host, state: r.state, bootId: r.bootId });
        continue;
      }
      if (row.host !== host) {
        this.foreignCopy(host, row, r);
        continue;
      }
      if (row.state === 'creating' || row.state === 'deleting' || migrating(row)) continue;
      const readyChanged = r.ready !== undefined && r.ready !== (row.ready === 1);
      if (row.state !== r.state || row.boot_id !== r.bootId || readyChanged) {
        rows.update(r.name, { state: r.state, bootId: r.bootId, ...(r.ready === undefined ? {} : { ready: r.ready }) }, row.state);
        events.publish('vm.state', r.name, { host, from: row.state, to: r.state, bootId: r.bootId, reason: 'reported by agent' });
      }
    }
    const mine = rows.onHost(host);
    for (const row of mine) {
      if (seen.has(row.name) || guard.skip(row.name, fetchedAt)) continue;
      if (row.state === 'creating' || row.state === 'deleting' || migrating(row) || row.state === 'stopped') continue;
      rows.update(row.name, { state: 'stopped' }, row.state);
      events.publish('vm.state', row.name, { host, from: row.state, to: 'stopped', bootId: row.boot_id, reason: 'agent no longer reports it' });
    }
  }

  /**
   * A host reports a VM that the store places elsewhere: a copy nobody owns (a destination left behind by
   * a migration whose controller died, an agent that re-attached a VM that moved). A copy that an active
   * migration or an owed call (pending.ts) accounts for is left to them. Otherwise the copy is flagged; a
   * running one is paused, for the VM must run on its owner only; a paused one is removed once the owner
   * reports the VM running, so that the last copy of a guest is never the one deleted.
   */
  private foreignCopy(host: string, row: VmsTable, r: VmStatus): void {
    const { store, events, pool } = this.o;
    if (hasActiveJob(store.sql, row.name) || new PendingCalls(store.sql).owedTo(host, row.name)) return;
    const key = `${host}/${row.name}`;
    if (this.resolving.has(key)) return;
    const ownerRuns = this.lastRunning.get(row.host)?.has(row.name) === true;
    const action = r.state === 'running' ? 'pause' : ownerRuns ? 'remove' : 'keep';
    const flag = `${key}:${r.state}:${action}`;
    if (!this.flagged.has(flag)) {
      this.flagged.add(flag);
      events.publish('vm.foreign_copy', row.name, { host, owner: row.host, state: r.state, action });
      this.o.log.warn({ host, vm: row.name, owner: row.host, action }, `host ${host} runs a copy of VM ${row.name} (${r.state}) that ${row.host} owns: ${action}`);
    }
    if (action === 'keep') return;
    const h = this.row(host);
    if (!h) return;
    const client = pool.client(host, h.url);
    this.resolving.add(key);
    void (action === 'pause' ? client.call('pauseVm', { params: { name: row.name } }) : client.call('deleteVm', { params: { name: row.name } }))
      .catch((err: unknown) => this.o.log.warn({ host, vm: row.name, action }, `host ${host}: could not ${action} the foreign copy of ${row.name}: ${String(err)}`))
      .finally(() => this.resolving.delete(key));
  }
}
