/**
 * The migration orchestrator: drives one job through the five phases across two agents, persisting the
 * phase before each step that cannot be undone, applying the policy's escalations while QEMU copies, and
 * recovering every unfinished job when the controller starts again.
 *
 * Who is the truth: until the destination runs the guest (pre-copy completed, or post-copy started) the
 * source is, and any failure resumes the source and discards the destination; from then on the destination
 * is, and the job is rolled forward. That rule is what keeps a VM running on exactly one host.
 *
 * ```mermaid
 * sequenceDiagram
 *   participant C as controller
 *   participant S as source agent
 *   participant D as destination agent
 *   C->>S: begin (GET vm: spec, state)
 *   C->>D: prepare (QEMU -incoming defer, NBD exports) → uri
 *   C->>S: perform (caps, params, mirror, migrate)
 *   loop until QEMU completes
 *     C->>S: progress → policy → tune | postcopy | cancel
 *   end
 *   C->>D: finish(success) — the guest runs here
 *   C->>S: confirm(success) — the source QEMU quits
 * ```
 */
import { assertNever, FerryError, isErrorCode, toFerryError, type ErrorCode } from '../../common/errors.ts';
import type { GuestProbe, MigrationJson, MigrationPlanJson, MigrationPrediction } from '../../common/migration.ts';
import type { HostInventory, VmStatus } from '../../common/protocol.ts';
import type { VmSpec } from '../../common/spec.ts';
import { formatBytes, parseDuration, validateName } from '../../common/units.ts';
import { IcmpProbe } from '../../guest/icmp-probe.ts';
import { probeAddress, probeKindFor, type DowntimeProbe, type ProbeReport } from '../../guest/probe.ts';
import { UdpProbe } from '../../guest/udp-probe.ts';
import { autoMultifd, parseBandwidth, resolvePolicy, type MigrateRequest, type MigrationPolicy } from '../../common/policy.ts';
import { nextEscalation } from './escalation.ts';
import { Wakeup } from '../../common/wakeup.ts';
import { canTransition, isFinal, type MigrationState } from '../../common/states.ts';
import type { DiscardReceipt } from '../../common/agent-migration.ts';
import type { AgentMigrationView, StorageCopy } from '../../common/agent-migration.ts';
import type { AgentClient, AgentPool } from '../agent-client.ts';
import type { EventBus } from '../events.ts';
import { hostViews, vmLoads } from '../hosts.ts';
import { moveRequest, placeVm } from '../scheduler.ts';
import type { HostsTable, Store } from '../store/db.ts';
import type { ImageService } from '../images.ts';
import { JobStore } from './jobs.ts';
import { silentLogger, type Log } from '../../common/log.ts';
import { migrationLog } from '../log.ts';
import { transferCold } from './cold.ts';
import { sharedDisksForPrepare } from './shared-disks.ts';
import { holdAt, type HoldPoint } from './holds.ts';
import { PendingCalls } from './pending.ts';
import { VmRows } from '../store/vms.ts';
import { decide, type SideFacts } from './truth.ts';
import { decideQueue, DEFAULT_LIMITS, type QueueJob, type QueueLimits } from './queue.ts';
import { HISTORY, linkBandwidth, predictMigration } from '../fleet/predict.ts';
import { DEFAULT_LINK_BYTES_PER_SEC } from '../fleet/planner.ts';

/** A VM's row as a migration reads it. */
interface VmRow {
  name: string;
  host: string;
  state: string;
  spec: string;
}
type Placement = ReturnType<typeof placeVm>;


export interface OrchestratorOptions {
  store: Store;
  /** With controllers sharing the store: the term this one leads in; job transitions hold only in it. */
  term?: () => number | undefined;
  events: EventBus;
  pool: AgentPool;
  log?: Log;
  /** Told of every change of a job (the metrics observe finished ones). */
  onJob?: (type: string, job: MigrationJson) => void;
  /** How often the source's progress is read (ms). */
  pollMs?: number;
  /** Turn off the guest downtime probe (e.g. when the controller cannot reach the VM network). */
  probe?: boolean;
  /** Test-only: measure every VM with this probe, not the one its spec calls for (probe.ts). */
  probeKind?: GuestProbe;
  /** Test-only hold points (holds.ts); undefined in production. */
  holdDir?: string;
  /** The image store: a destination fetches the VM's base images from it before prepare. */
  images?: ImageService;
  /** The queue's limits (queue.ts); DEFAULT_LIMITS unless `ferry server` was told otherwise. */
  limits?: QueueLimits;
}

/** A source agent that does not answer for this long during a transfer is given up on. */
const SOURCE_SILENCE_MS = 20_000;
/** …but after this long the destination is asked whether it already holds the complete guest. */
const DESTINATION_CHECK_AFTER_MS = 1500;
/** How long the loop waits for the destination's answer to "run the guest" before it goes on reading the source. */
const RUN_ANSWER_WAIT_MS = 500;
/** How long a stalled post-copy waits for the destination to answer again before it gives up on it. */
const POSTCOPY_RECOVER_MS = 10 * 60_000;
/** After a post-copy recovery, how long the stream may stay still before the stall rule looks again. */
const POSTCOPY_RESUME_GRACE_MS = 10_000;
/** How often owed agent calls (pending.ts) are tried. */
const SWEEP_MS = 2000;
/**
 * Near the switch-over the source is read this often instead of every pollMs: the guest is paused (or about
 * to be) and every millisecond until finish runs it on the destination is downtime the guest sees.
 */
const NEAR_END_POLL_MS = 15;

/** QEMU is about to stop the guest or has stopped it: its ETA is within two polls, or it copies device state. */
export function nearSwitchover(v: Pick<AgentMigrationView, 'qemuStatus' | 'progress'>, pollMs: number): boolean {
  if (v.qemuStatus === 'device' || v.qemuStatus === 'pre-switchover') return true;
  const eta = v.progress?.etaMs;
  return v.qemuStatus === 'active' && eta !== null && eta !== undefined && eta <= 2 * pollMs;
}
/**
 * Failures after which nobody knows yet how things stand (an agent went silent, the controller restarted):
 * the migration goes on if it still runs. Any other failure means "stop": roll back if the truth allows it.
 */
const RECOVERABLE: ReadonlySet<string> = new Set([
  'FERRY_E_SOURCE_LOST',
  'FERRY_E_DESTINATION_LOST',
  'FERRY_E_AGENT_UNREACHABLE',
  'FERRY_E_CONTROLLER_RESTARTED',
  'FERRY_E_QMP_TIMEOUT',
]);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class MigrationOrchestrator {
  readonly jobs: JobStore;
  private readonly running = new Map<string, Promise<void>>();
  private readonly pollMs: number;
  private readonly log: Log;
  private lastProgressEvent = new Map<string, number>();
  private closed = false;
  private readonly pending: PendingCalls;
  private readonly vms: VmRows;
  private sweeper: NodeJS.Timeout | undefined;
  private sweeping = false;
  /** Probes that run now: a controller that closes ends their children (ping) too. */
  private readonly probes = new Set<DowntimeProbe>();
  readonly limits: QueueLimits;
  private pumpScheduled = false;

  constructor(private readonly o: OrchestratorOptions) {
    this.pollMs = o.pollMs ?? 100;
    this.limits = o.limits ?? DEFAULT_LIMITS;
    this.log = o.log ?? silentLogger();
    this.pending = new PendingCalls(o.store.sql);
    this.vms = new VmRows(o.store.sql);
    this.jobs = new JobStore(o.store.sql, (type, job) => {
      if (type === 'migration.progress') {
        // Progress is stored every poll, but published at most once a second.
        const last = this.lastProgressEvent.get(job.id) ?? 0;
        if (Date.now() - last < 1000) return;
        this.lastProgressEvent.set(job.id, Date.now());
      }
      this.logJob(type, job);
      // A job that ended frees its hosts and its share of their links: the queue decides again.
      // One that starts sending gets the share of the links as they are now.
      if (isFinal(job.state) || type === 'migration.transferring') this.schedulePump();
      o.onJob?.(type, job);
      o.events.publish(type, job.id, { vm: job.vm, state: job.state, phase: job.phase, source: job.source, destination: job.destination, progress: job.progress, error: job.error });
    }, o.term);
  }

  /**
   * Requests a migration: validates, places, persists a queued job; the queue (queue.ts) starts it in the
   * background at once or when the limits allow.
   */
  async migrate(vmName: string, req: MigrateRequest): Promise<MigrationJson> {
    const { vm, spec, policy } = this.check(vmName, req);
    const { sql } = this.o.store;
    const job = sql.transaction(() => {
      const placement = this.place(vm, spec, policy, req.to);
      const chosen = req.multifd === undefined ? this.withAutoMultifd(policy, vm.host, placement.host) : policy;
      const created = this.jobs.create({ vm: vmName, source: vm.host, destination: placement.host, mode: chosen.mode, policy: chosen, why: placement.why, priority: req.priority ?? 0 });
      if (!this.vms.update(vmName, { state: 'migrating' }, vm.state)) throw new FerryError('FERRY_E_VM_STATE', `VM ${vmName} changed state meanwhile: try again.`);
      return created;
    })();
    this.o.events.publish('vm.state', vmName, { state: 'migrating', migration: job.id });
    this.pump();
    // The prediction it starts with, kept in its record beside what happens: measured alongside the start
    // (QEMU's page-sampling dirty rate does not touch the migration's dirty bitmap), never delaying it.
    void this.predictFor(vm, spec, policy, job.destination)
      .then((prediction) => this.jobs.setPrediction(job.id, prediction))
      .catch((err: unknown) => this.jlog(job.id).warn(`prediction: ${String(err)}`));
    return this.jobs.mustGet(job.id);
  }

  /**
   * `ferry vm migrate --dry-run`: the same checks and placement as a migration, then the prediction;
   * nothing is created, nothing changes (the agent only measures the dirty rate).
   */
  async predict(vmName: string, req: MigrateRequest): Promise<MigrationPlanJson> {
    const { vm, spec, policy } = this.check(vmName, req);
    const placement = this.place(vm, spec, policy, req.to);
    const prediction = await this.predictFor(vm, spec, policy, placement.host);
    return { vm: vmName, source: vm.host, destination: placement.host, mode: policy.mode, why: placement.why, prediction };
  }

  private async predictFor(vm: VmRow, spec: VmSpec, policy: MigrationPolicy, destination: string): Promise<MigrationPrediction> {
    const copied = storageFor(policy, spec) === 'copy' ? spec.disks.filter((d) => !d.shared).reduce((n, d) => n + d.sizeBytes, 0) : 0;
    let dirty: number | null = null;
    if (policy.mode === 'live' && vm.state === 'running') {
      dirty = await this.host(vm.host)
        .client.call('dirtyRate', { params: { name: vm.name } })
        .then((r) => r.dirtyRateBytesPerSec, () => null);
    }
    return predictMigration({
      mode: policy.mode,
      bytes: spec.memoryBytes + copied,
      dirtyBytesPerSec: dirty,
      bandwidth: linkBandwidth(this.jobs.completedBetween(vm.host, destination, HISTORY), this.limits.linkCapacityBytesPerSec, DEFAULT_LINK_BYTES_PER_SEC),
      capBytesPerSec: policy.bandwidthBytesPerSec,
      maxDowntimeMs: policy.maxDowntimeMs,
      initialDowntimeMs: policy.initialDowntimeMs,
      deadlineMs: policy.deadlineMs,
    });
  }

  /** Refuses a bad request before anything is created: the VM untouched, no job. */
  private check(vmName: string, req: MigrateRequest): { vm: VmRow; spec: VmSpec; policy: MigrationPolicy } {
    validateName(vmName, 'VM name');
    const policy = resolvePolicy(req);
    if (req.to !== undefined) validateName(req.to, 'host name');
    const { sql } = this.o.store;
    const vm = sql.prepare('SELECT name, host, state, spec FROM vms WHERE name = ?').get(vmName) as VmRow | undefined;
    if (!vm) throw new FerryError('FERRY_E_VM_NOT_FOUND', `No VM named ${JSON.stringify(vmName)}: see \`ferry vm list\`.`);
    const active = this.jobs.activeFor(vmName);
    if (active) throw new FerryError('FERRY_E_MIGRATION_ACTIVE', `VM ${vmName} is already being migrated (${active.id}).`, { details: { migration: active.id } });
    const okStates = policy.mode === 'live' ? ['running', 'paused'] : ['running', 'paused', 'stopped'];
    if (!okStates.includes(vm.state)) {
      throw new FerryError('FERRY_E_VM_STATE', `VM ${vmName} is ${vm.state}: a ${policy.mode} migration needs it ${okStates.join(' or ')}${policy.mode === 'live' ? ' (a stopped VM moves with --mode cold)' : ''}.`);
    }
    if (req.to === vm.host) throw new FerryError('FERRY_E_BAD_INPUT', `VM ${vmName} is already on ${vm.host}.`);
    const spec = JSON.parse(vm.spec) as VmSpec;
    // Refused here, not in the background run: a bad request must leave no job and the VM untouched.
    storageFor(policy, spec);
    return { vm, spec, policy };
  }

  /** The policy with multifd channels chosen by the two hosts' cores (autoMultifd), for a request that did not say. */
  private withAutoMultifd(policy: MigrationPolicy, source: string, destination: string): MigrationPolicy {
    const a = this.host(source).inventory;
    const b = this.host(destination).inventory;
    const cores = a === null || b === null ? null : Math.min(a.cpu.cores, b.cpu.cores);
    const knows = (i: HostInventory | null): boolean => i?.qemu.migrationCapabilities?.includes('multifd') === true;
    return { ...policy, multifd: autoMultifd(policy, cores, knows(a) && knows(b)) };
  }

  /** The destination: `to` if given and it takes the VM, else the scheduler's choice, with why. */
  private place(vm: VmRow, spec: VmSpec, policy: MigrationPolicy, to: string | undefined): Placement {
    const all = hostViews(this.o.store);
    const others = all.filter((h) => h.name !== vm.host);
    if (to !== undefined && !all.some((h) => h.name === to)) {
      throw new FerryError('FERRY_E_HOST_NOT_FOUND', `No host named ${JSON.stringify(to)}: see \`ferry host list\`.`);
    }
    const source = all.find((h) => h.name === vm.host)?.inventory;
    return placeVm(moveRequest(spec, source, policy, to), others, vmLoads(this.o.store));
  }

  /**
   * Cancels a job. A queued one ends `cancelled` at once: nothing was asked of any agent, nothing is held on
   * any host. A started one is asked to stop; it ends `cancelled` once the source runs alone.
   */
  cancel(id: string): MigrationJson {
    const job = this.jobs.mustGet(id);
    if (job.state !== 'queued' || this.running.has(id)) return this.jobs.requestCancel(id);
    const ended = this.jobs.transition(id, 'queued', 'cancelled', {
      error: { code: 'FERRY_E_MIGRATION_CANCELLED', message: 'Cancelled by the user while queued; it never started.' },
      totalMs: Date.now() - Date.parse(job.startedAt),
      queue: null,
    });
    // The VM was marked migrating when the job was queued: back to what its host says it is (asked in the
    // background: the cancel itself needs no agent).
    void Promise.resolve()
      .then(() => this.host(job.source).client.call('getVm', { params: { name: job.vm } }))
      .catch(() => null)
      .then((status) => {
        if (!this.closed && this.jobs.activeFor(job.vm) === null) this.setVm(job.vm, { state: status?.state ?? 'running' });
      });
    return ended;
  }

  /** Decides again soon (once, however many jobs ended meanwhile). */
  private schedulePump(): void {
    if (this.pumpScheduled || this.closed) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      if (!this.closed) this.pump();
    });
  }

  /**
   * The queue, applied: starts the queued jobs the limits allow now (queue.ts decides), records for each
   * job that waits its place and reason, and gives every started job its share of its links.
   */
  private pump(): void {
    if (this.closed) return;
    const active = this.jobs.listActive();
    const d = decideQueue(active.map((j) => this.queueJob(j)), this.limits);
    const now = new Date().toISOString();
    for (const w of d.waiting) {
      const j = active.find((a) => a.id === w.id)!;
      if (j.queue?.position === w.position && j.queue.reason === w.reason) continue;
      this.jobs.update(w.id, { queue: { position: w.position, reason: w.reason, since: j.queue?.since ?? now } });
    }
    for (const id of d.start) {
      const bw = d.bandwidth.get(id) ?? 0;
      this.jobs.update(id, { queue: null, tuning: { bandwidthBytesPerSec: bw, downtimeLimitMs: null } });
      this.spawn(id, () => this.run(id));
    }
    for (const j of active) {
      const bw = d.bandwidth.get(j.id);
      if (bw === undefined || d.start.includes(j.id) || j.state !== 'transferring' || j.mode !== 'live') continue;
      if (j.tuning !== null && j.tuning.bandwidthBytesPerSec === bw) continue;
      void this.applyBandwidth(j, bw, 'share', `link share: max-bandwidth ${bw === 0 ? 'unlimited' : `${formatBytes(bw)}/s`}`).catch((e: unknown) =>
        this.jlog(j.id).warn(`re-sharing the link: ${String(e)}`),
      );
    }
  }

  /** A job as the queue sees it: started unless it is queued and not being started right now. */
  private queueJob(j: MigrationJson): QueueJob {
    return {
      id: j.id,
      source: j.source,
      destination: j.destination,
      started: j.state !== 'queued' || this.running.has(j.id),
      priority: j.priority,
      requestedAt: j.startedAt,
      bandwidthBytesPerSec: j.policy.bandwidthBytesPerSec,
    };
  }

  /** The max-bandwidth a started job should run with now: its share of its links, or its own lower cap. */
  private bandwidthFor(id: string, policy: MigrationPolicy): number {
    const d = decideQueue(
      this.jobs.listActive().map((j) => (j.id === id ? { ...this.queueJob(j), bandwidthBytesPerSec: policy.bandwidthBytesPerSec } : this.queueJob(j))),
      this.limits,
    );
    return d.bandwidth.get(id) ?? policy.bandwidthBytesPerSec;
  }

  /** Tells the source QEMU a new max-bandwidth, then records it (the agent answers what it runs with now). */
  private async applyBandwidth(job: MigrationJson, bw: number, action: 'share' | 'set', detail: string, downtimeLimitMs?: number): Promise<MigrationJson> {
    const v = await this.host(job.source).client.call('tune', { params: { id: job.id }, body: { bandwidthBytesPerSec: bw, ...(downtimeLimitMs === undefined ? {} : { downtimeLimitMs }) } });
    this.jobs.update(job.id, { tuning: { bandwidthBytesPerSec: v.bandwidthBytesPerSec ?? bw, downtimeLimitMs: v.downtimeLimitMs } });
    return this.jobs.addAction(job.id, { at: new Date().toISOString(), action, detail, bandwidthBytesPerSec: bw, ...(downtimeLimitMs === undefined ? {} : { maxDowntimeMs: downtimeLimitMs }) });
  }

  // --- steering a running job (what virsh migrate-setspeed, migrate-setmaxdowntime and migrate-postcopy do)

  /** The job, if it is transferring (pre-copy): what steering acts on. Refused with a stable code otherwise. */
  private steerable(id: string, what: string): MigrationJson {
    const job = this.jobs.mustGet(id);
    if (job.state !== 'transferring' || job.mode !== 'live') {
      throw new FerryError('FERRY_E_MIGRATION_NOT_RUNNING', `Migration ${id} is ${job.state}${job.mode === 'cold' ? ' (cold)' : ''}: ${what} acts only on a live migration that is transferring.`, {
        details: { state: job.state, mode: job.mode },
      });
    }
    return job;
  }

  /**
   * `ferry migration set`: a new bandwidth cap (the job then runs with the smaller of it and its link
   * share) and/or a new downtime budget, which QEMU's downtime limit is set to at once (the ladder goes on
   * from there). Checked before anything changes.
   */
  async steer(id: string, req: { bandwidth?: string | number; maxDowntime?: string | number }): Promise<MigrationJson> {
    if (req.bandwidth === undefined && req.maxDowntime === undefined) {
      throw new FerryError('FERRY_E_BAD_INPUT', 'Nothing to set: give a bandwidth and/or a max downtime.');
    }
    const bandwidth = req.bandwidth === undefined ? undefined : parseBandwidth(req.bandwidth);
    const maxDowntimeMs = req.maxDowntime === undefined ? undefined : parseDuration(req.maxDowntime, 'max downtime');
    if (maxDowntimeMs !== undefined && maxDowntimeMs < 1) throw new FerryError('FERRY_E_BAD_INPUT', 'The max downtime must be at least 1ms.');
    const job = this.steerable(id, 'set');
    const policy: MigrationPolicy = {
      ...job.policy,
      ...(bandwidth === undefined ? {} : { bandwidthBytesPerSec: bandwidth }),
      ...(maxDowntimeMs === undefined ? {} : { maxDowntimeMs }),
    };
    const bw = this.bandwidthFor(id, policy);
    const detail = [
      bandwidth === undefined ? null : `bandwidth ${bandwidth === 0 ? 'unlimited' : `${formatBytes(bandwidth)}/s`} (runs with ${bw === 0 ? 'unlimited' : `${formatBytes(bw)}/s`})`,
      maxDowntimeMs === undefined ? null : `max downtime ${maxDowntimeMs} ms`,
    ].filter((x) => x !== null).join(', ');
    // Stored first, so that a re-share of the links meanwhile (pump) already uses the new cap; put back
    // if the source refuses, so that a refusal changes nothing.
    this.jobs.update(id, { policy });
    let out: MigrationJson;
    try {
      out = await this.applyBandwidth(job, bw, 'set', detail, maxDowntimeMs);
    } catch (err) {
      this.jobs.update(id, { policy: job.policy });
      throw err;
    }
    this.o.events.publish('migration.steered', id, { vm: job.vm, action: 'set', detail });
    return out;
  }

  /** `ferry migration postcopy`: switch now, when the job's policy allows post-copy. */
  async postcopy(id: string): Promise<MigrationJson> {
    const job = this.jobs.mustGet(id);
    if (job.policy.postcopy === 'never') {
      throw new FerryError('FERRY_E_POSTCOPY_NOT_ALLOWED', `Migration ${id} was started with --postcopy never: its VM may not run on a host that does not hold all its memory yet (migrate with --postcopy auto to allow it).`);
    }
    this.steerable(id, 'postcopy');
    const at = new Date().toISOString();
    await this.host(job.source).client.call('postcopy', { params: { id } });
    this.o.events.publish('migration.steered', id, { vm: job.vm, action: 'postcopy' });
    return this.jobs.addAction(id, { at, action: 'postcopy', detail: 'switch to post-copy now (asked by the user)' });
  }

  /** `ferry migration complete`: pause the guest on the source so that what is left is sent; the pause is its downtime. */
  async complete(id: string): Promise<MigrationJson> {
    const job = this.steerable(id, 'complete');
    const at = new Date().toISOString();
    await this.host(job.source).client.call('complete', { params: { id } });
    this.o.events.publish('migration.steered', id, { vm: job.vm, action: 'complete' });
    return this.jobs.addAction(id, { at, action: 'complete', detail: 'guest paused on the source to finish (asked by the user)' });
  }

  /** Settles every job a previous controller left unfinished, and starts carrying out owed agent calls. */
  recover(): void {
    for (const job of this.jobs.listActive()) {
      // A queued job asked nothing of any agent yet: it stays queued and starts when the limits allow.
      if (this.running.has(job.id) || job.state === 'queued') continue;
      this.jlog(job.id).warn(`recovering from state ${job.state}/${job.phase}`);
      this.spawn(job.id, () => this.resume(job));
    }
    this.sweeper ??= setInterval(() => {
      if (this.sweeping || this.closed) return;
      this.sweeping = true;
      void this.sweep()
        .catch((err: unknown) => this.log.warn({ err }, `pending calls: ${String(err)}`))
        .finally(() => (this.sweeping = false));
    }, SWEEP_MS);
    this.pump();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.sweeper);
    await Promise.all([...this.probes].map((p) => p.stop().catch(() => null)));
  }

  /** The logger of one migration: its id, VM, hosts, mode, state and phase on each line. */
  private jlog(id: string): Log {
    const job = this.jobs.get(id);
    return job === null ? this.log.child({ migration: id }) : migrationLog(this.log, job);
  }

  /** One line per change of a job (progress samples excepted), with its figures once it ended. */
  private logJob(type: string, job: MigrationJson): void {
    if (type === 'migration.progress') return;
    const l = migrationLog(this.log, job);
    if (!isFinal(job.state)) {
      if (type === 'migration.escalation') l.info({ escalation: job.escalations.at(-1)?.step }, `escalation ${job.escalations.at(-1)?.step.kind ?? ''}`);
      else l.info(`${type}: ${job.state}/${job.phase}`);
      return;
    }
    const figures = {
      totalMs: job.totalMs,
      downtimeMs: job.downtimeMs,
      guestDowntimeMs: job.guestDowntimeMs,
      transferredBytes: job.transferredBytes,
      iterations: job.iterations,
      ...(job.error === null ? {} : { code: job.error.code }),
    };
    if (job.state === 'completed') l.info(figures, `migration completed in ${job.totalMs ?? '?'} ms`);
    else l.warn(figures, `migration ${job.state}${job.error === null ? '' : `: ${job.error.code}: ${job.error.message}`}`);
  }

  // ---------------------------------------------------------------------------------------------

  private spawn(id: string, fn: () => Promise<void>): void {
    const p = fn()
      .catch((err: unknown) => this.jlog(id).error({ err }, `migration run failed: ${String(err)}`))
      .finally(() => {
        this.running.delete(id);
        this.lastProgressEvent.delete(id);
      });
    this.running.set(id, p);
  }

  private hold(id: string, point: HoldPoint): Promise<void> {
    return holdAt(this.o.holdDir, id, point, () => this.closed);
  }

  private host(name: string): { client: AgentClient; inventory: HostInventory | null } {
    const h = this.o.store.sql.prepare('SELECT * FROM hosts WHERE name = ?').get(name) as HostsTable | undefined;
    if (!h) throw new FerryError('FERRY_E_HOST_NOT_FOUND', `Host ${name} is not registered.`);
    return { client: this.o.pool.client(h.name, h.url), inventory: h.inventory ? (JSON.parse(h.inventory) as HostInventory) : null };
  }

  private setVm(name: string, patch: { host?: string; state: string; bootId?: string | null }): void {
    // A boot id the destination could not read yet keeps the one the VM had: it is the same guest.
    this.vms.update(name, { state: patch.state, ...(patch.host === undefined ? {} : { host: patch.host }), ...(patch.bootId ? { bootId: patch.bootId } : {}) });
    this.o.events.publish('vm.state', name, { state: patch.state, ...(patch.host ? { host: patch.host } : {}) });
  }

  /**
   * Starts probing the guest from here — the controller's side of the VM network — with the probe its spec
   * calls for, at the address the controller reserved for it. A VM without an address, or a probe that
   * cannot start, is not a reason to stop a migration: its guest downtime stays unknown (null).
   */
  private async startProbe(job: MigrationJson): Promise<DowntimeProbe | null> {
    if (this.o.probe === false) return null;
    const row = this.o.store.sql.prepare('SELECT ip, spec FROM vms WHERE name = ?').get(job.vm) as { ip: string | null; spec: string } | undefined;
    if (!row) return null;
    const spec = JSON.parse(row.spec) as VmSpec;
    const ip = probeAddress(row.ip, spec);
    if (ip === null) return null;
    const kind = this.o.probeKind ?? probeKindFor(spec);
    // ping exits by itself after the migration's deadline and a margin for finish and confirm.
    const p = kind === 'udp' ? new UdpProbe({ ip }) : new IcmpProbe({ ip, maxDurationMs: job.policy.deadlineMs + 5 * 60_000 });
    try {
      await p.start();
      this.probes.add(p);
      return p;
    } catch (err) {
      this.log.warn({ vm: job.vm, migration: job.id }, `no ${kind} guest probe for ${job.vm}: ${String(err)}`);
      return null;
    }
  }

  private async stopProbe(p: DowntimeProbe | null): Promise<ProbeReport | null> {
    if (p === null) return null;
    try {
      return await p.stop();
    } finally {
      this.probes.delete(p);
    }
  }

  /**
   * The destination gets the store images the VM's overlays sit on before prepare (only the overlay moves
   * with the VM); the job records for each whether it was there or fetched first.
   */
  private async baseImages(id: string, host: string, dst: AgentClient, spec: VmSpec): Promise<void> {
    if (this.o.images === undefined) return;
    const images = await this.o.images.ensureFor(host, dst, spec);
    if (images.length > 0) this.jobs.update(id, { images });
  }

  /** The live flow from a fresh job. */
  private async run(id: string): Promise<void> {
    let job = this.jobs.mustGet(id);
    if (job.mode === 'cold') return this.runCold(id);
    let probe: DowntimeProbe | null = null;
    try {
      const src = this.host(job.source);
      const dst = this.host(job.destination);
      // begin: the source describes the VM as it runs now.
      job = this.jobs.transition(id, 'queued', 'preparing', { phase: 'begin' });
      const status = await src.client.call('getVm', { params: { name: job.vm } });
      if (status.state !== 'running' && status.state !== 'paused') {
        throw new FerryError('FERRY_E_VM_STATE', `VM ${job.vm} is ${status.state} on ${job.source}.`);
      }
      const storage = storageFor(job.policy, status.spec);
      const capabilities = capabilitiesFor(job.policy);
      // prepare: from here on the destination may hold a QEMU and disks that a failure must remove.
      this.jobs.update(id, { phase: 'prepare', memoryBytes: status.spec.memoryBytes });
      await this.baseImages(id, job.destination, dst.client, status.spec);
      const listenAddress = dst.inventory?.migrationAddress;
      if (!listenAddress) throw new FerryError('FERRY_E_AGENT_UNREACHABLE', `Host ${job.destination} has not reported its migration address yet.`);
      const prep = await dst.client.call(
        'prepare',
        // tlsPeer: the destination admits only the source host's certificate (src/agent/migration/tls.ts).
        { params: { id }, body: { spec: status.spec, listenAddress, tls: job.policy.tls, storage, capabilities, tlsPeer: job.source, ...(await sharedDisksForPrepare(src.client, status.spec)) } },
        { timeoutMs: 90_000 },
      );
      this.jobs.update(id, { prepared: prep });
      await this.hold(id, 'prepare');
      // perform: QEMU starts sending.
      job = this.jobs.transition(id, 'preparing', 'transferring', { phase: 'perform' });
      probe = await this.startProbe(job);
      await src.client.call(
        'perform',
        { params: { id }, body: {
          vm: job.vm,
          uri: prep.uri,
          nbd: prep.nbd,
          tls: job.policy.tls,
          // The host the controller chose, not a name the destination reported (src/agent/migration/tls.ts).
          tlsHostname: job.destination,
          storage,
          capabilities,
          // The queue's share of the links (or the request's lower cap), decided when it started.
          bandwidthBytesPerSec: job.tuning?.bandwidthBytesPerSec ?? job.policy.bandwidthBytesPerSec,
          downtimeLimitMs: job.policy.initialDowntimeMs,
          destination: job.destination,
        } },
        { timeoutMs: 60_000 },
      );
      await this.monitorAndFinish(id, probe);
      probe = null;
    } catch (err) {
      await this.settle(id, err, probe);
    }
  }

  /** Follows the source until QEMU completes, then finish + confirm. Used fresh and after a restart. */
  private async monitorAndFinish(id: string, probe: DowntimeProbe | null): Promise<void> {
    const view = await this.monitor(id);
    const job = this.jobs.mustGet(id);
    if (job.state !== 'switching') this.jobs.transition(id, job.state, 'switching', { phase: 'finish', qemuStatus: view.qemuStatus, waiting: null });
    await this.hold(id, 'switchover');
    await this.rollForward(id, view, probe);
  }

  private async monitor(id: string): Promise<AgentMigrationView> {
    const job0 = this.jobs.mustGet(id);
    const src = this.host(job0.source);
    const dst = this.host(job0.destination);
    // The source's events wake the loop the moment its stage changes (QEMU completed: the guest is paused on
    // both hosts until finish), rather than at the next poll; the poll stays, for figures and as the fallback.
    const wake = new Wakeup();
    const watching = new AbortController();
    void this.watchStages(src.client, id, job0.policy.deadlineMs + 60_000, watching.signal, wake);
    try {
      return await this.follow(id, src, dst, job0, wake);
    } finally {
      watching.abort();
      wake.fire();
    }
  }

  /** Follows the source's stream of views; each change of stage fires `wake`. Ends quietly on any error. */
  private async watchStages(client: AgentClient, id: string, timeoutMs: number, signal: AbortSignal, wake: Wakeup): Promise<void> {
    let stage: string | null = null;
    try {
      for await (const v of client.watch('events', { params: { id } }, { signal, timeoutMs })) {
        if (v.stage !== stage) {
          stage = v.stage;
          wake.fire();
        }
      }
    } catch (err) {
      if (!signal.aborted) this.jlog(id).debug(`events of the source: ${String(err)}`);
    }
  }

  private async follow(id: string, src: { client: AgentClient }, dst: { client: AgentClient }, job0: MigrationJson, wake: Wakeup): Promise<AgentMigrationView> {
    const t0 = Date.now();
    let lastOk = Date.now();
    let lastTransferred = -1;
    let lastProgressAt = Date.now();
    let lastPass = -1;
    const remainingByPass: number[] = [];
    let lastEscalationPass = 0;
    let cancelSent = false;
    // Post-copy: the destination QEMU waits paused (-S) until told to run the guest, which must be at once.
    let destinationRuns = false;
    let recovered = false;
    // The call that makes the destination run it goes on beside this loop, which keeps reading the source. Until
    // it answers, the stall rule waits: the switch-over to post-copy may be sending the device state over a cut
    // link, and breaking that stream (migrate-pause) loses what TCP would still deliver; only a destination that
    // runs the guest can be recovered. Its call is bounded (30 s); after it, the rule applies.
    let running: Promise<void> | null = null;
    let runsAsked = 0; // a recovery asks anew: an answer to an earlier ask does not count
    for (;;) {
      if (this.closed) throw new FerryError('FERRY_E_CONTROLLER_RESTARTED', 'The controller is shutting down.');
      let v: AgentMigrationView;
      try {
        v = await src.client.call('migration', { params: { id } });
        lastOk = Date.now();
      } catch (err) {
        const silentMs = Date.now() - lastOk;
        // A source agent that died just before its QEMU completed leaves the guest paused on both hosts:
        // ask the destination early whether it holds the whole guest, and if so settle now (forward).
        const destinationHasIt =
          silentMs > DESTINATION_CHECK_AFTER_MS &&
          (await dst.client.call('migration', { params: { id } }, { timeoutMs: 3000 }).then(
            (d) => d.qemuStatus === 'completed' && d.runState !== null,
            () => false,
          ));
        if (silentMs > SOURCE_SILENCE_MS || destinationHasIt) {
          throw new FerryError('FERRY_E_SOURCE_LOST', `The source agent ${job0.source} stopped answering during the transfer.`, { cause: err });
        }
        await sleep(this.pollMs);
        continue;
      }
      let job = this.jobs.mustGet(id);
      // Read each time: `ferry migration set` may have changed the budget.
      const policy = job.policy;
      if (v.postcopyStarted && job.state === 'transferring') job = this.jobs.transition(id, 'transferring', 'postcopy', { qemuStatus: v.qemuStatus });
      if (v.postcopyStarted && !destinationRuns && running === null) {
        const runs = (d: AgentMigrationView): boolean => d.stage === 'postcopy' || d.stage === 'finished';
        const finish = () => dst.client.call('finish', { params: { id }, body: { success: true } }, { timeoutMs: 30_000 }).then(runs);
        // After a recovery, ask first: a finish on a destination that already runs the guest waits there for
        // the last page. The first time, finish at once (the guest is paused on both hosts until it runs).
        const ask = ++runsAsked;
        running = (recovered ? dst.client.call('migration', { params: { id } }, { timeoutMs: 10_000 }).then((d) => runs(d) || finish()) : finish())
          .catch((e: unknown) => (this.jlog(id).warn(`post-copy run on ${job0.destination}: ${String(e)}`), false))
          .then((ok) => {
            if (ask === runsAsked) destinationRuns = ok;
            running = null;
            lastProgressAt = Date.now(); // the stall clock starts from the answer
          });
        // Most answers come in a few milliseconds: wait that long, so that the usual case reads as before.
        await Promise.race([running, sleep(RUN_ANSWER_WAIT_MS)]);
      }
      this.jobs.update(id, {
        qemuStatus: v.qemuStatus,
        progress: v.progress,
        transferredBytes: v.transferredBytes,
        iterations: v.iterations,
        tuning: { bandwidthBytesPerSec: v.bandwidthBytesPerSec ?? job.tuning?.bandwidthBytesPerSec ?? null, downtimeLimitMs: v.downtimeLimitMs },
      });
      if (v.stage === 'completed') {
        // The stream completed, so the destination is reachable: let its run call answer before finish is asked.
        if (running !== null) await running;
        return v;
      }
      if (v.stage === 'failed' || v.stage === 'cancelled' || v.stage === 'resumed') {
        const code: ErrorCode = v.stage === 'cancelled' && !v.error ? 'FERRY_E_MIGRATION_CANCELLED' : isErrorCode(v.error?.code) ? v.error.code : 'FERRY_E_MIGRATION_FAILED';
        throw new FerryError(code, v.error?.message ?? `The source reports the migration ${v.stage}.`);
      }
      if (this.jobs.cancelRequested(id) && !cancelSent && job.state === 'transferring') {
        cancelSent = true;
        await src.client.call('cancel', { params: { id } }).catch(() => {});
        throw new FerryError('FERRY_E_MIGRATION_CANCELLED', 'Cancelled by the user; the VM keeps running on the source.');
      }
      // The policy: watch convergence and escalate.
      // Disk mirror bytes count as progress too: a mirror that stops moving is a stall like any other.
      const transferred = (v.transferredBytes ?? 0) + (v.mirror?.transferredBytes ?? 0);
      if (transferred !== lastTransferred) {
        lastTransferred = transferred;
        lastProgressAt = Date.now();
      }
      const pass = v.iterations ?? 0;
      if (pass !== lastPass) {
        lastPass = pass;
        remainingByPass.push(v.remainingBytes ?? 0);
      }
      const paused = v.qemuStatus === 'postcopy-paused';
      const step = nextEscalation(
        {
          elapsedMs: Date.now() - t0,
          passes: pass,
          remainingBytes: v.remainingBytes ?? 0,
          remainingByPass,
          msSinceProgress: running !== null ? 0 : paused ? Number.POSITIVE_INFINITY : Date.now() - lastProgressAt,
          downtimeLimitMs: v.downtimeLimitMs ?? policy.initialDowntimeMs,
          postcopyActive: v.postcopyStarted,
          lastEscalationPass,
        },
        policy,
      );
      if (step) {
        this.jobs.addEscalation(id, { at: new Date().toISOString(), step });
        lastEscalationPass = pass;
        if (step.kind === 'downtime-limit') {
          await src.client.call('tune', { params: { id }, body: { downtimeLimitMs: step.toMs } }).catch((e: unknown) => this.jlog(id).warn(`tune: ${String(e)}`));
        } else if (step.kind === 'postcopy') {
          // A refusal here (pre-copy completed meanwhile, QEMU not in a state to switch) is not a failed
          // migration: the next poll says how it really stands, and the deadline still bounds it.
          await src.client.call('postcopy', { params: { id } }).catch((e: unknown) => this.jlog(id).warn(`postcopy: ${String(e)}`));
        } else if (step.kind === 'postcopy-recover') {
          await this.recoverPostcopy(id);
          // The resumed stream first exchanges the received-page bitmaps before bytes move again: a stall
          // timeout shorter than that handshake (a loaded host) must not break every recovery in turn.
          lastProgressAt = Date.now() + Math.max(0, POSTCOPY_RESUME_GRACE_MS - policy.stallTimeoutMs);
          destinationRuns = false; // ask again: a restarted destination must run
          runsAsked++;
          recovered = true;
        } else {
          await src.client.call('cancel', { params: { id } }).catch(() => {});
          throw new FerryError(step.code, step.reason);
        }
      }
      await wake.sleep(nearSwitchover(v, this.pollMs) ? NEAR_END_POLL_MS : this.pollMs);
    }
  }

  /**
   * Post-copy lost its stream (a cut link leaves QEMU `postcopy-active` with nothing moving, or it paused by
   * itself). Cancelling would lose the guest, so reconnect: pause the source, wait for the destination to
   * answer (bounded), `migrate-recover` there, resume the source towards it (src/agent/migration/postcopy.ts).
   */
  private async recoverPostcopy(id: string): Promise<void> {
    const job = this.jobs.mustGet(id);
    const src = this.host(job.source).client;
    const dst = this.host(job.destination).client;
    this.jlog(id).warn('post-copy stalled; recovering');
    this.o.events.publish('migration.recovering', id, { vm: job.vm, source: job.source, destination: job.destination });
    const deadline = Date.now() + POSTCOPY_RECOVER_MS;
    for (let attempt = 0; ; attempt++) {
      if (this.closed) throw new FerryError('FERRY_E_CONTROLLER_RESTARTED', 'The controller is shutting down.');
      try {
        if (attempt > 0) {
          // The last try's resume may have gone through after its answer was lost: do not break a stream that moves.
          const v = await src.call('migration', { params: { id } }, { timeoutMs: 10_000 });
          if (v.qemuStatus === 'postcopy-active' || v.stage === 'completed') return;
        }
        // Each try breaks what hangs first — the stream over the cut link, or the last try's stuck handshake —
        // so that both sides start it from `postcopy-paused`.
        await src.call('postcopyPause', { params: { id } }, { timeoutMs: 20_000 }).catch((e: unknown) => this.jlog(id).warn(`postcopy-pause: ${String(e)}`));
        const { uri } = await dst.call('recover', { params: { id } }, { timeoutMs: 20_000 });
        await src.call('postcopyResume', { params: { id }, body: { uri } }, { timeoutMs: 20_000 });
        this.jlog(id).info(`post-copy resumed towards ${uri}`);
        return;
      } catch (err) {
        const fe = toFerryError(err);
        if (fe.code === 'FERRY_E_POSTCOPY_LOST') throw fe;
        if (Date.now() > deadline) {
          throw new FerryError('FERRY_E_DESTINATION_LOST', `Post-copy could not be recovered within ${POSTCOPY_RECOVER_MS / 1000} s: ${fe.message}`, { cause: err });
        }
        this.jlog(id).warn({ code: fe.code, attempt: attempt + 1 }, `post-copy recovery, try ${attempt + 1}: ${fe.message}`);
        await sleep(Math.min(5000, 500 * (attempt + 1)));
      }
    }
  }

  /**
   * The destination takes over (finish), then the source lets go (confirm). Idempotent on both agents. A
   * finish that fails throws (the caller settles by the truth rule); a confirm that fails is owed
   * (persisted and retried), since the guest already runs on the destination.
   */
  private async rollForward(id: string, view: AgentMigrationView | null, probe: DowntimeProbe | null): Promise<void> {
    let job = this.jobs.mustGet(id);
    const src = this.host(job.source);
    const dst = this.host(job.destination);
    let report: ProbeReport | null = null;
    try {
      const finish = () => retry(() => dst.client.call('finish', { params: { id }, body: { success: true } }, { timeoutMs: 60_000 }), 3);
      let d = await finish();
      // The source completed while the destination only now started running the guest: the second finish
      // waits there for the last pages.
      if (d.stage === 'postcopy' && job.state === 'switching') d = await finish();
      if (d.stage === 'postcopy') {
        // Post-copy: the guest runs on the destination and still pulls pages from the source; follow the
        // source until the stream completed, then come back here.
        if (job.state !== 'postcopy') job = this.jobs.transition(id, job.state, 'postcopy', { waiting: null });
        return await this.monitorAndFinish(id, probe);
      }
      if (job.state !== 'switching') job = this.jobs.transition(id, job.state, 'switching', { phase: 'finish', waiting: null });
      // From here on the destination is the truth (its guest runs: finish let it).
      this.setVm(job.vm, { host: job.destination, state: 'running' });
      const switchedAt = Date.now();
      await this.hold(id, 'finish');
      this.jobs.update(id, { phase: 'confirm' });
      // The destination reads the guest's boot id while the source lets go: asked side by side.
      const status = dst.client.call('getVm', { params: { name: job.vm } }).catch(() => null);
      await retry(() => src.client.call('confirm', { params: { id }, body: { success: true } }, { timeoutMs: 60_000 }), 3).catch((err: unknown) => {
        // The guest runs on the destination; the source QEMU is paused (post-migrate) and can never resume
        // without a discard receipt, which a destination that ran the guest never gives. Owe the confirm.
        this.jlog(id).warn(`confirm on ${job.source} failed, owed: ${String(err)}`);
        this.pending.add(id, job.source, 'confirm', { success: true }, String(err));
        this.o.events.publish('migration.confirm_failed', id, { host: job.source, error: String(err) });
      });
      const seen = await status;
      this.setVm(job.vm, { host: job.destination, state: seen?.state ?? 'running', bootId: seen?.bootId ?? null });
      const endedAt = Date.now();
      await this.hold(id, 'confirm');
      const final = view ?? (await src.client.call('migration', { params: { id } }).catch(() => null));
      // Probe a little past the switch so the guest's first replies from the destination are seen; this wait
      // is not part of the migration's end-to-end time.
      if (probe) await sleep(Math.max(0, 300 - (Date.now() - switchedAt)));
      report = await this.stopProbe(probe);
      probe = null;
      this.jobs.transition(id, 'switching', 'completed', {
        totalMs: endedAt - Date.parse(job.startedAt),
        finishedAt: new Date(endedAt).toISOString(),
        qemuTotalMs: final?.totalMs ?? null,
        // Cold: the guest is paused from the save to the restore; QEMU's figure covers only the save.
        downtimeMs: job.mode === 'cold' ? coldPauseMs(this.jobs.mustGet(id), switchedAt) : (pausedByUserMs(this.jobs.mustGet(id), switchedAt) ?? final?.downtimeMs ?? null),
        guestDowntimeMs: report ? report.longestGapMs : null,
        guestDowntimeProbe: report ? report.probe : null,
        transferredBytes: final?.transferredBytes ?? job.transferredBytes,
        iterations: final?.iterations ?? job.iterations,
        memoryBytes: final?.memoryBytes ?? job.memoryBytes,
        waiting: null,
        error: null,
      });
    } finally {
      await this.stopProbe(probe);
    }
  }

  /** What each agent says about the migration now; an agent that does not answer is `reachable: false`. */
  private async facts(job: MigrationJson): Promise<{ source: SideFacts; destination: SideFacts }> {
    const ask = async (host: string): Promise<SideFacts> => {
      try {
        const view = await this.host(host).client.call('migration', { params: { id: job.id } }, { timeoutMs: 8_000 });
        return { reachable: true, view };
      } catch (err) {
        if (err instanceof FerryError && err.code === 'FERRY_E_MIGRATION_NOT_FOUND') return { reachable: true, view: null };
        return { reachable: false, view: null };
      }
    };
    const [source, destination] = await Promise.all([ask(job.source), job.state === 'queued' ? Promise.resolve({ reachable: true, view: null }) : ask(job.destination)]);
    return { source, destination };
  }

  /**
   * Ends a job that left the straight path (a failure, a cancel, a fault, a restart) the way the truth rule
   * (truth.ts) says, asking both agents again until it can: forward, back, on with the migration, or parked
   * in an `awaiting_*` state while an agent that matters does not answer.
   */
  private async settle(id: string, err: unknown, probe: DowntimeProbe | null): Promise<void> {
    await this.stopProbe(probe).catch(() => null);
    let fe = toFerryError(err, 'FERRY_E_MIGRATION_FAILED');
    for (let attempt = 0; ; attempt++) {
      // A controller shutting down leaves the job as it stands: the next start recovers it.
      if (this.closed) return;
      let job = this.jobs.mustGet(id);
      if (isFinal(job.state)) return;
      const intent = this.jobs.cancelRequested(id) || !RECOVERABLE.has(fe.code) ? 'abort' : 'recover';
      const facts = await this.facts(job);
      const verdict = decide({ state: job.state, source: facts.source, destination: facts.destination, intent });
      this.jlog(id).warn({ code: fe.code, verdict: verdict.kind }, `${fe.code} in ${job.state}/${job.phase}: ${verdict.kind} (${verdict.why})`);
      try {
        switch (verdict.kind) {
          case 'back':
            return await this.rollBack(id, fe, verdict.receiptNeeded, facts);
          case 'lost': {
            this.jobs.transition(id, job.state, 'failed', {
              error: { code: 'FERRY_E_POSTCOPY_LOST', message: `${verdict.why}: the guest is lost (${fe.message})` },
              totalMs: Date.now() - Date.parse(job.startedAt),
              waiting: null,
            });
            this.setVm(job.vm, { state: 'stopped' });
            return;
          }
          case 'forward':
            return await this.rollForward(id, facts.source.view, null);
          case 'continue': {
            const back = facts.source.view?.postcopyStarted ? 'postcopy' : 'transferring';
            if (job.state !== back) job = this.jobs.transition(id, job.state, back, { waiting: null });
            return await this.monitorAndFinish(id, null);
          }
          case 'wait': {
            const role = verdict.state === 'awaiting_destination' ? 'destination' : 'source';
            const host = role === 'destination' ? job.destination : job.source;
            const waiting = { host, role, since: job.waiting?.since ?? new Date().toISOString(), attempts: attempt + 1, why: verdict.why } as const;
            if (job.state !== verdict.state) {
              this.jobs.transition(id, job.state, verdict.state, { waiting });
              this.o.events.publish('migration.waiting', id, { vm: job.vm, ...waiting });
            } else this.jobs.update(id, { waiting });
            await sleep(Math.min(15_000, 1000 * 2 ** Math.min(attempt, 4)));
            continue;
          }
          default:
            return assertNever(verdict);
        }
      } catch (e) {
        // The verdict could not be carried out (an agent went away again): ask again.
        fe = toFerryError(e, 'FERRY_E_MIGRATION_FAILED');
        if (!RECOVERABLE.has(fe.code) && !this.jobs.cancelRequested(id)) fe = new FerryError('FERRY_E_DESTINATION_LOST', fe.message, { cause: e });
        await sleep(Math.min(15_000, 1000 * 2 ** Math.min(attempt, 4)));
      }
    }
  }

  /**
   * The source stays the truth: stop its migration, discard the destination (its signed receipt is what lets
   * a source whose QEMU completed resume), resume the source. A call whose agent does not answer is owed.
   */
  private async rollBack(id: string, fe: FerryError, receiptNeeded: boolean, facts: { source: SideFacts; destination: SideFacts }): Promise<void> {
    const job = this.jobs.mustGet(id);
    const src = this.host(job.source).client;
    const dst = this.host(job.destination).client;
    const started = job.state !== 'queued';
    if (started && facts.source.reachable) await src.call('cancel', { params: { id } }).catch(() => {});
    let receipt: DiscardReceipt | null = facts.destination.view?.receipt ?? null;
    if (started && receipt === null && (facts.destination.view !== null || !facts.destination.reachable)) {
      try {
        const d = await dst.call('finish', { params: { id }, body: { success: false } }, { timeoutMs: 30_000 });
        receipt = d.receipt ?? null;
      } catch (err) {
        const e = toFerryError(err);
        if (receiptNeeded) throw e; // the source cannot resume without it: settle asks again
        // The destination waits paused (-S) and never runs the guest on its own: discard it when it answers.
        if (e.code !== 'FERRY_E_MIGRATION_NOT_FOUND') this.pending.add(id, job.destination, 'discard', { success: false }, e.message);
      }
    }
    let status: VmStatus | null = null;
    if (started && facts.source.view !== null) {
      const body = { success: false, ...(receipt === null ? {} : { receipt }) };
      try {
        await retry(() => src.call('confirm', { params: { id }, body }, { timeoutMs: 30_000 }), 2);
      } catch (err) {
        const e = toFerryError(err);
        if (e.code === 'FERRY_E_AGENT_UNREACHABLE') this.pending.add(id, job.source, 'resume', body, e.message);
        else this.jlog(id).warn({ code: e.code }, `resuming the source failed: ${e.message}`);
      }
    }
    if (facts.source.reachable) status = await src.call('getVm', { params: { name: job.vm } }).catch(() => null);
    this.setVm(job.vm, { host: job.source, state: status?.state ?? 'paused' });
    const to: MigrationState = fe.code === 'FERRY_E_MIGRATION_CANCELLED' && canTransition(job.state, 'cancelled') ? 'cancelled' : 'failed';
    this.jobs.transition(id, job.state, to, { error: { code: fe.code, message: fe.message }, totalMs: Date.now() - Date.parse(job.startedAt), waiting: null });
  }

  /** Carries out the agent calls that finished jobs still owe, each when its backoff expired. */
  private async sweep(): Promise<void> {
    for (const c of this.pending.due()) {
      if (this.closed) return;
      const job = this.jobs.get(c.migration);
      if (job === null) {
        this.pending.done(c);
        continue;
      }
      try {
        const route = c.action === 'discard' ? 'finish' : 'confirm';
        await this.host(c.host).client.call(route, { params: { id: c.migration }, body: c.body }, { timeoutMs: 30_000 });
        this.pending.done(c);
        this.jlog(c.migration).info({ host: c.host, action: c.action }, `owed ${c.action} on ${c.host} done`);
        this.o.events.publish('migration.pending_done', c.migration, { host: c.host, action: c.action });
        if (c.action === 'resume') {
          const st = await this.host(c.host).client.call('getVm', { params: { name: job.vm } }).catch(() => null);
          if (st) this.setVm(job.vm, { state: st.state });
        }
      } catch (err) {
        const fe = toFerryError(err);
        if (fe.code === 'FERRY_E_MIGRATION_NOT_FOUND') this.pending.done(c);
        else this.pending.retryLater(c, fe.message);
      }
    }
  }

  /** After a controller restart: every unfinished job is settled by the truth rule, from what agents say now. */
  private async resume(job: MigrationJson): Promise<void> {
    const restarted = new FerryError('FERRY_E_CONTROLLER_RESTARTED', `The controller restarted while the job was ${job.state}.`);
    await this.settle(job.id, restarted, null);
  }

  /** Cold: stop or save, stream the files with checksums, start on the destination, then remove the source copy. */
  private async runCold(id: string): Promise<void> {
    // The probe sees the whole outage of a cold move (the guest is paused from save to restore).
    let probe: DowntimeProbe | null = null;
    try {
      const job = this.jobs.mustGet(id);
      const src = this.host(job.source).client;
      const dst = this.host(job.destination).client;
      probe = await this.startProbe(job);
      const manifest = await transferCold(
        { jobs: this.jobs, src, dst, baseImages: (spec) => this.baseImages(id, job.destination, dst, spec) },
        id,
      );
      this.jobs.transition(id, 'transferring', 'switching', { phase: 'finish', qemuStatus: manifest.mode === 'save' ? 'completed' : null });
      await this.rollForward(id, null, probe);
      probe = null;
    } catch (err) {
      await this.settle(id, err, probe);
    }
  }
}

/**
 * After `ferry migration complete` the guest was paused from that moment to the switch-over: that pause is
 * its downtime (QEMU counts only its own final stop, which found the guest paused already).
 */
function pausedByUserMs(job: MigrationJson, runningAt: number): number | null {
  const c = job.actions.find((a) => a.action === 'complete');
  return c ? runningAt - Date.parse(c.at) : null;
}

/** The pause of a cold move as Ferry measured it: from entering perform (save) to the guest running again. */
function coldPauseMs(job: MigrationJson, runningAt: number): number | null {
  const perform = job.timeline.find((e) => e.phase === 'perform');
  return perform ? runningAt - Date.parse(perform.at) : null;
}

async function retry<T>(fn: () => Promise<T>, attempts: number): Promise<T> {
  let last: unknown;
  for (let i = 0; i < attempts; i++) {
    try {
      return await fn();
    } catch (err) {
      last = err;
      // An answer from the agent (not a transport failure) will not change on retry.
      if (err instanceof FerryError && err.code !== 'FERRY_E_AGENT_UNREACHABLE') throw err;
      await sleep(500 * (i + 1));
    }
  }
  throw last;
}

export function storageFor(policy: MigrationPolicy, spec: VmSpec): StorageCopy {
  const local = spec.disks.some((d) => !d.shared);
  if (policy.storage === 'shared') {
    if (local) throw new FerryError('FERRY_E_BAD_INPUT', `VM ${spec.name} has local disks: --storage shared would leave them behind (use copy or auto).`);
    return 'shared';
  }
  if (policy.storage === 'copy') return 'copy';
  return local ? 'copy' : 'shared';
}

export function capabilitiesFor(p: MigrationPolicy): { postcopy: boolean; multifd: number; xbzrle: boolean; autoConverge: boolean } {
  return { postcopy: p.postcopy !== 'never', multifd: p.multifd, xbzrle: p.xbzrle, autoConverge: p.autoConverge };
}
