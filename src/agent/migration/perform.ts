/**
 * perform: the source side of a live migration. Sets capabilities and parameters, mirrors disks first when
 * storage is copied, starts `migrate`, and watches it to its end — polling `query-migrate` (and the
 * MIGRATION events) into the progress model. Whether the stream stalled, when to switch to post-copy and
 * what downtime to allow are the controller's policy (src/controller/migrations/escalation.ts); cancel,
 * post-copy and retuning act on the running job when it says so. Whatever happens before switch-over, the
 * guest keeps running here.
 */
import { join } from 'node:path';
import { FerryError, toFerryError, type ErrorCode } from '../../common/errors.ts';
import { DEFAULT_POLICY } from '../../common/policy.ts';
import type { QmpClient } from '../../qemu/qmp.ts';
import type { LocalVm } from '../vm.ts';
import type { Log } from '../../common/log.ts';
import type { AgentPhase, PhaseObserver } from '../log.ts';
import {
  capabilityList,
  negotiateCapabilities,
  sourceParameters,
  validateCapabilities,
  type MigrationCapabilities,
} from './capabilities.ts';
import { ProgressModel, sampleFromQueryMigrate, toMigrationProgress, type MigrationSample, type MirrorProgress } from '../../common/progress.ts';
import { saveRecord, type MigrationRecord } from './record.ts';
import { abortMirrors, completeMirrors, mirrorProgress, startMirrors, type NbdTarget } from './storage.ts';
import { addTlsCreds, writeQemuTlsDir, type TlsIdentity } from './tls.ts';
import { emptyView, type AgentMigrationView, type AgentStage, type PerformRequest, type StorageCopy } from '../../common/agent-migration.ts';
import { Wakeup } from '../../common/wakeup.ts';

/** What perform needs of the VM it moves (LocalVm provides it). */
export interface SourceVm {
  readonly name: string;
  readonly runDir: string;
  readonly memoryBytes: number;
  /** Ids of the disks that are copied (not on shared storage). */
  readonly localDiskIds: readonly string[];
  /** Of those, the overlays on a base image: only their top layer is copied. */
  readonly overlayDiskIds?: readonly string[];
  readonly qmp: QmpClient;
}

export interface PerformOptions {
  id: string;
  agentDir: string;
  vm: SourceVm;
  request: PerformRequest;
  identity: TlsIdentity | null;
  pollMs?: number;
  /**
   * The record of a migration this agent started before it restarted: QEMU kept migrating without us;
   * watch it again (and finish the mirrors) instead of starting anew.
   */
  resume?: MigrationRecord;
  /** This migration's logger (agent/log.ts phaseLog); each stage is logged with its duration. */
  log?: Log;
  observe?: PhaseObserver;
}

/** The phase of the migration each source stage is, in the log and the metrics. */
const STAGE_PHASE: Partial<Record<AgentStage, AgentPhase>> = { mirroring: 'mirror', transferring: 'transfer', postcopy: 'postcopy' };

/** The controller's policy owns the downtime limit; this is what an agent uses when a caller sends none. */
const DEFAULT_DOWNTIME_LIMIT_MS = DEFAULT_POLICY.initialDowntimeMs;
/** How long a new migration waits for QEMU to finish cancelling the one before (a cut link ends in seconds). */
const CANCELLING_WAIT_MS = 20_000;
/** How long a post-copy pause waits for QEMU to say `postcopy-paused`. */
const POSTCOPY_PAUSED_WITHIN_MS = 5_000;
/** QEMU refuses a downtime-limit above 2000 s (MAX_MIGRATE_DOWNTIME_SECONDS). */
const QEMU_MAX_DOWNTIME_LIMIT_MS = 2_000_000;

/** QEMU's error-desc when the other end vanished (process killed, host down, connection reset). */
const PEER_GONE =
  /broken pipe|connection reset|connection refused|unable to write|unable to read|channel error|end of file|eof|closed|non-properly terminated|premature/i;
/** A refused peer (wrong CA, wrong name): only a handshake failure, not a TLS stream cut by a dying peer. */
const TLS_ERROR = /certificate|x509|handshake|verif/i;

/** Maps QEMU's failure text to a Ferry code: who is to blame decides what the user should do. */
export function classifyFailure(errorDesc: string | null): ErrorCode {
  if (errorDesc === null) return 'FERRY_E_MIGRATION_FAILED';
  if (TLS_ERROR.test(errorDesc)) return 'FERRY_E_TLS';
  if (PEER_GONE.test(errorDesc)) return 'FERRY_E_DESTINATION_LOST';
  return 'FERRY_E_MIGRATION_FAILED';
}

/** Splits `tcp:HOST:PORT` (HOST may be `[v6]`). */
export function parseTcpUri(uri: string): { host: string; port: number } {
  const m = /^tcp:(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(uri);
  const port = m === null ? NaN : Number(m[2]);
  if (m === null || !(port > 0 && port < 65536)) {
    throw new FerryError('FERRY_E_BAD_INPUT', `Bad migration URI ${JSON.stringify(uri)}: expected tcp:HOST:PORT.`);
  }
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

const now = (): string => new Date().toISOString();

/** How long a cancel waits for QEMU before it shuts the migration's channels down itself. */
const CANCEL_YANK_AFTER_MS = 1000;
/** QEMU's refusal while a migration of this VM is in progress (capabilities, `migrate`). */
const IN_PROGRESS = /migration process in progress|duplicate yank instance/i;
/** How long perform waits for QEMU to drop a cancelled migration's connection attempt (the controller's call allows 60 s). */
const LINGERING_WAIT_MS = 40_000;

/** Shuts every channel of the VM's migration down at once (the main one and each multifd one), as a cut would. */
function yankMigration(qmp: QmpClient): Promise<unknown> {
  return qmp.execute('yank', { instances: [{ type: 'migration' }] });
}

/**
 * Waits, before a new migration starts, while QEMU still holds an earlier one's yank instance: a migration
 * cancelled while its connection was being made reads `cancelled` at once, but keeps the connection attempt
 * (and its `migration` yank instance) until the attempt fails — over a cut link, until a SYN retransmit is
 * answered or the kernel gives up (~2 min) — and `migrate` is refused meanwhile with "duplicate yank
 * instance" (docs/qemu.md); so do multifd channels of a migration that failed (a refused TLS handshake).
 * The earlier migration is over by QEMU's own status, so its channels are yanked first, once (which does
 * not always make QEMU let go at once); then this waits. Called before the source's job starts, so no stall clock runs meanwhile. A QEMU without
 * `query-yank` is not waited for. Still held after `waitMs`: FERRY_E_MIGRATION_ACTIVE, retryable.
 */
export async function waitForLingeringMigration(qmp: QmpClient, waitMs = LINGERING_WAIT_MS): Promise<void> {
  const until = Date.now() + waitMs;
  let yanked = false;
  for (;;) {
    let held: boolean;
    try {
      held = (await qmp.execute('query-yank')).some((i) => i.type === 'migration');
    } catch {
      return;
    }
    if (!held) return;
    const status = (await qmp.execute('query-migrate')).status ?? 'none';
    // A migration that really runs is the caller's to refuse (setup checks the status).
    if (!['none', 'cancelled', 'failed', 'completed'].includes(status)) return;
    if (!yanked && status !== 'none') {
      yanked = true;
      await yankMigration(qmp).catch(() => undefined);
      continue;
    }
    if (Date.now() >= until) {
      throw new FerryError('FERRY_E_MIGRATION_ACTIVE', `QEMU still holds the connection attempt of a cancelled migration of this VM (status ${status}); it lets go once that attempt fails, within about 2 minutes: try again then.`);
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/**
 * Runs `command`, and again while QEMU refuses it because a migration is in progress: here that is always
 * one that ended for Ferry and lingers in QEMU — cancelled while its connection was still being made, that
 * connection completing later and QEMU running the old migration's last steps — never one Ferry runs
 * (setup has checked). Bounded by CANCELLING_WAIT_MS; then QEMU's refusal stands.
 */
export async function whileOneLingers<T>(command: () => Promise<T>, waitMs = CANCELLING_WAIT_MS): Promise<T> {
  const until = Date.now() + waitMs;
  for (;;) {
    try {
      return await command();
    } catch (err) {
      const refused = err instanceof FerryError && err.code === 'FERRY_E_QMP_COMMAND' && IN_PROGRESS.test(err.message);
      if (!refused || Date.now() >= until) throw err;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}


/** A running source-side migration. Create with `startPerform`; read `view()`; `done` settles at the end. */
export class SourceMigration {
  readonly id: string;
  /** Settles when the job reached completed, failed or cancelled (never rejects). */
  readonly done: Promise<AgentMigrationView>;
  private readonly opts: PerformOptions;
  private readonly caps: MigrationCapabilities;
  private readonly storage: StorageCopy;
  private readonly model: ProgressModel;
  private readonly abort = new AbortController();
  private record: MigrationRecord;
  private cancelRequested = false;
  private mirrorsRunning = false;
  private lastSample: MigrationSample | null = null;
  private lastMirror: MirrorProgress | null = null;
  /** The phase running now and since when (performance.now()), for the log and the metrics. */
  private phase: AgentPhase = 'setup';
  private phaseSince = performance.now();
  private readonly startedAt = performance.now();
  /** Fired at each change of stage: the events routes wait on it (stageChange). */
  private readonly stageWake = new Wakeup();

  constructor(opts: PerformOptions) {
    this.opts = opts;
    this.id = opts.id;
    const r = opts.request;
    this.caps = validateCapabilities(r.capabilities ?? {});
    this.storage = r.storage;
    const tls = r.tls ?? true;
    if (tls && opts.identity === null) throw new FerryError('FERRY_E_TLS', 'TLS asked for, but this agent has no cluster identity.');
    if (this.caps.postcopy && this.storage === 'copy') {
      throw new FerryError('FERRY_E_BAD_INPUT', 'Post-copy with copied storage is not supported: the disks must be in sync before the switch.');
    }
    if (this.storage === 'copy' && opts.vm.localDiskIds.length > 0 && (r.nbd === undefined || r.nbd === null)) {
      throw new FerryError('FERRY_E_BAD_INPUT', 'Copied storage needs the destination NBD exports from prepare.');
    }
    parseTcpUri(r.uri);
    const view = emptyView({ id: opts.id, role: 'source', vm: opts.vm.name, stage: 'transferring', storage: this.storage, tls, uri: r.uri });
    view.downtimeLimitMs = r.downtimeLimitMs ?? DEFAULT_DOWNTIME_LIMIT_MS;
    view.bandwidthBytesPerSec = r.bandwidthBytesPerSec ?? 0;
    this.record = opts.resume ?? { version: 1, view, runDir: opts.vm.runDir, performed: r };
    if (opts.resume !== undefined) {
      view.startedAt = opts.resume.view.startedAt;
      this.mirrorsRunning = this.storage === 'copy' && opts.vm.localDiskIds.length > 0;
    }
    this.model = new ProgressModel({ downtimeLimitMs: view.downtimeLimitMs });
    opts.log?.info({ phase: this.phase, storage: this.storage, resumed: opts.resume !== undefined }, opts.resume === undefined ? 'perform started' : 'perform watched again after an agent restart');
    this.done = this.run().then(
      () => this.view(),
      () => this.view(),
    );
  }

  view(): AgentMigrationView {
    return structuredClone(this.record.view);
  }

  /**
   * Resolves once the stage is no longer `seen` (at once if it changed already), or after `maxMs`: what the
   * events route waits on, so that a watcher learns of the switch-over the moment QEMU reports it.
   */
  stageChange(seen: AgentStage, maxMs: number): Promise<void> {
    if (this.record.view.stage !== seen) return Promise.resolve();
    return this.stageWake.sleep(maxMs);
  }

  /** Stops the migration; the guest stays here. No effect once QEMU completed the switch-over. */
  async cancel(): Promise<AgentMigrationView> {
    const st = this.record.view.stage;
    if (st === 'postcopy') {
      throw new FerryError('FERRY_E_VM_STATE', 'Post-copy has started: the destination holds the guest now, it cannot be cancelled.');
    }
    if (st !== 'mirroring' && st !== 'transferring') return this.view();
    this.cancelRequested = true;
    this.abort.abort();
    const qmp = this.opts.vm.qmp;
    await qmp.execute('migrate_cancel').catch(() => undefined);
    // Over a cut link a multifd channel stays blocked in a send that TCP will not fail for minutes, and the
    // cancel waits for it: shut every channel of the migration down (`yank`), as the link would have.
    const ended = await Promise.race([this.done.then(() => true), new Promise<false>((r) => setTimeout(() => r(false), CANCEL_YANK_AFTER_MS))]);
    if (!ended) {
      this.opts.log?.warn(`migrate_cancel still waits after ${CANCEL_YANK_AFTER_MS} ms: yanking the migration's channels`);
      await yankMigration(qmp).catch((e: unknown) => this.opts.log?.warn(`yank: ${String(e)}`));
    }
    await this.done;
    return this.view();
  }

  /** Switches to post-copy now (needs `postcopy` among the capabilities on both sides). */
  async startPostcopy(): Promise<AgentMigrationView> {
    if (!this.caps.postcopy) {
      throw new FerryError('FERRY_E_VM_STATE', 'This migration was started without the post-copy capability.');
    }
    if (this.record.view.stage === 'postcopy') return this.view();
    if (this.record.view.stage !== 'transferring') {
      throw new FerryError('FERRY_E_VM_STATE', `Cannot switch to post-copy in stage ${this.record.view.stage}.`);
    }
    await this.opts.vm.qmp.execute('migrate-start-postcopy');
    this.record.view.postcopyStarted = true;
    return this.view();
  }

  /**
   * Post-copy recovery, source half: break the stream on purpose (`migrate-pause`) so that a connection
   * that hangs on a cut link stops pretending to be alive. The guest runs nowhere meanwhile; its pages
   * are split between the two hosts, so post-copy is never cancelled, only recovered. A recovery that hangs
   * in its handshake (`postcopy-recover`: connected, the stream never moving) is broken the same way, so
   * that the controller's next try starts from `postcopy-paused` (QEMU allows the pause in both states).
   * Answers once QEMU is paused (bounded: the next try asks again).
   */
  async pausePostcopy(): Promise<AgentMigrationView> {
    if (!this.record.view.postcopyStarted) throw new FerryError('FERRY_E_VM_STATE', 'Post-copy has not started: nothing to pause.');
    const qmp = this.opts.vm.qmp;
    let status = (await qmp.execute('query-migrate')).status ?? 'none';
    if (status === 'postcopy-active' || status === 'postcopy-recover') await qmp.execute('migrate-pause');
    for (const until = Date.now() + POSTCOPY_PAUSED_WITHIN_MS; status.startsWith('postcopy') && status !== 'postcopy-paused' && Date.now() < until; ) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      status = (await qmp.execute('query-migrate')).status ?? 'none';
    }
    return this.view();
  }

  /** Post-copy recovery, source half: reconnect to the destination's `migrate-recover` address and go on. */
  async resumePostcopy(uri: string): Promise<AgentMigrationView> {
    parseTcpUri(uri);
    const mig = await this.opts.vm.qmp.execute('query-migrate');
    if (mig.status !== 'postcopy-paused') {
      throw new FerryError('FERRY_E_VM_STATE', `Post-copy is ${mig.status ?? 'none'} here, not paused: nothing to resume.`);
    }
    await this.opts.vm.qmp.execute('migrate', { uri, resume: true });
    this.record.view.uri = uri;
    this.record.view.recoveries = (this.record.view.recoveries ?? 0) + 1;
    return this.view();
  }

  /**
   * Pauses the guest here so that pre-copy ends: nothing is dirtied any more, and the downtime limit is
   * lifted to QEMU's maximum so that the next check completes instead of running more passes. The guest
   * is paused from now on: that pause is the migration's downtime. It resumes where the migration ends
   * (finish on the destination, or confirm(false) here).
   */
  async complete(): Promise<AgentMigrationView> {
    if (this.record.view.stage !== 'transferring') {
      throw new FerryError('FERRY_E_VM_STATE', `Cannot complete in stage ${this.record.view.stage}.`);
    }
    await this.opts.vm.qmp.execute('stop');
    await this.opts.vm.qmp.execute('migrate-set-parameters', { 'downtime-limit': QEMU_MAX_DOWNTIME_LIMIT_MS });
    this.record.view.downtimeLimitMs = QEMU_MAX_DOWNTIME_LIMIT_MS;
    this.model.setDowntimeLimit(QEMU_MAX_DOWNTIME_LIMIT_MS);
    return this.view();
  }

  /** Applies an escalation: a new downtime limit or bandwidth, effective at once. */
  async tune(t: { downtimeLimitMs?: number; bandwidthBytesPerSec?: number }): Promise<AgentMigrationView> {
    const v = this.record.view;
    const p = sourceParameters(
      this.caps,
      {
        bandwidthBytesPerSec: t.bandwidthBytesPerSec ?? v.bandwidthBytesPerSec ?? 0,
        downtimeLimitMs: t.downtimeLimitMs ?? v.downtimeLimitMs ?? DEFAULT_DOWNTIME_LIMIT_MS,
      },
      null,
      this.opts.vm.memoryBytes,
    );
    await this.opts.vm.qmp.execute('migrate-set-parameters', {
      'max-bandwidth': p['max-bandwidth'] as number,
      'downtime-limit': p['downtime-limit'] as number,
    });
    v.downtimeLimitMs = p['downtime-limit'] as number;
    v.bandwidthBytesPerSec = t.bandwidthBytesPerSec ?? v.bandwidthBytesPerSec;
    this.model.setDowntimeLimit(v.downtimeLimitMs);
    return this.view();
  }

  private async setStage(stage: AgentStage): Promise<void> {
    const v = this.record.view;
    this.logStage(stage);
    v.stage = stage;
    v.updatedAt = now();
    if (stage === 'completed' || stage === 'failed' || stage === 'cancelled') v.finishedAt = v.updatedAt;
    await saveRecord(this.opts.agentDir, this.record).catch(() => undefined);
    this.stageWake.fire();
  }

  /** Logs the end of the phase that ran until `next`, and the end of perform when `next` is final. */
  private logStage(next: AgentStage): void {
    const log = this.opts.log;
    const now = performance.now();
    const ms = Math.round(now - this.phaseSince);
    const final = next === 'completed' || next === 'failed' || next === 'cancelled';
    const nextPhase = STAGE_PHASE[next] ?? this.phase;
    if (!final && nextPhase === this.phase) return;
    const result = next === 'failed' || next === 'cancelled' ? (this.record.view.error?.code ?? 'FERRY_E_MIGRATION_FAILED') : 'ok';
    log?.info({ phase: this.phase, durationMs: ms, next }, `${this.phase} done in ${ms} ms`);
    this.opts.observe?.(this.phase, result, ms);
    this.phase = nextPhase;
    this.phaseSince = now;
    if (!final) {
      log?.info({ phase: this.phase }, `${this.phase} started`);
      return;
    }
    const v = this.record.view;
    const total = Math.round(now - this.startedAt);
    const figures = { phase: 'perform', durationMs: total, qemuStatus: v.qemuStatus, downtimeMs: v.downtimeMs, transferredBytes: v.transferredBytes, iterations: v.iterations };
    if (result === 'ok') log?.info(figures, `perform ${next} in ${total} ms`);
    else log?.warn({ ...figures, code: result }, `perform ${next} after ${total} ms: ${v.error?.message ?? ''}`);
    this.opts.observe?.('perform', result, total);
  }

  private absorb(s: MigrationSample): void {
    this.lastSample = s;
    const pv = this.model.add(s);
    const v = this.record.view;
    v.qemuStatus = s.status;
    v.totalMs = s.totalTimeMs;
    v.downtimeMs = s.downtimeMs;
    v.setupMs = s.setupTimeMs;
    v.expectedDowntimeMs = s.expectedDowntimeMs;
    v.transferredBytes = s.transferredBytes;
    v.remainingBytes = pv.remainingBytes;
    v.memoryBytes = s.memoryBytes > 0 ? s.memoryBytes : v.memoryBytes;
    v.iterations = s.iterations;
    v.dirtyRateBytesPerSec = pv.dirtyRateBytesPerSec;
    v.mbps = s.mbps;
    v.progress = toMigrationProgress(pv);
    v.prediction = pv.prediction;
    v.mirror = s.mirror === null ? v.mirror : { transferredBytes: s.mirror.doneBytes, totalBytes: s.mirror.totalBytes, ready: s.mirror.ready };
    v.updatedAt = now();
  }

  private async fail(err: unknown): Promise<void> {
    const fe = toFerryError(err, 'FERRY_E_MIGRATION_FAILED');
    const cancelled = this.cancelRequested;
    const qmp = this.opts.vm.qmp;
    // Leave the source as it was: no mirror, no half-set migration, the guest running.
    if (this.mirrorsRunning) await abortMirrors(qmp, this.opts.vm.localDiskIds).catch(() => undefined);
    this.mirrorsRunning = false;
    const st = await qmp.execute('query-status').catch(() => null);
    // A QEMU that completed handed the guest over: only confirm, against a discard receipt, may resume it.
    const handedOver = (await qmp.execute('query-migrate').catch(() => null))?.status === 'completed';
    if (st !== null) {
      this.record.view.runState = st.status;
      if (!st.running && this.record.wasRunning === true && !this.record.view.postcopyStarted && !handedOver) {
        await qmp.execute('cont').catch(() => undefined);
        this.record.view.runState = (await qmp.execute('query-status').catch(() => st)).status;
      }
    }
    this.record.view.error = cancelled
      ? { code: 'FERRY_E_MIGRATION_CANCELLED', message: 'The migration was cancelled; the VM runs on the source.' }
      : { code: fe.code, message: fe.message };
    await this.setStage(cancelled ? 'cancelled' : 'failed');
  }

  private async run(): Promise<void> {
    try {
      if (this.opts.resume === undefined) await this.setup();
      await this.transfer();
    } catch (err) {
      await this.fail(err);
    }
  }

  private async setup(): Promise<void> {
    const { vm, request: r, identity } = this.opts;
    const qmp = vm.qmp;
    const v = this.record.view;
    const st = await qmp.execute('query-status');
    this.record.wasRunning = st.running;
    v.runState = st.status;
    // A migration failed or cancelled just before (the stall watchdog cancels over a cut link) may still be
    // `cancelling` in QEMU, which refuses new capabilities until it is over: wait for that, bounded.
    let mig = await qmp.execute('query-migrate');
    for (const until = Date.now() + CANCELLING_WAIT_MS; mig.status === 'cancelling' && Date.now() < until; ) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      mig = await qmp.execute('query-migrate');
    }
    if (mig.status === 'active' || mig.status === 'setup' || mig.status === 'postcopy-active' || mig.status === 'device' || mig.status === 'cancelling') {
      throw new FerryError('FERRY_E_MIGRATION_ACTIVE', `QEMU is already migrating this VM (status ${mig.status}).`);
    }
    const supported = (await qmp.execute('query-migrate-capabilities')).map((c) => c.capability);
    const caps = negotiateCapabilities(capabilityList(this.caps, 'source'), supported);
    await whileOneLingers(() => qmp.execute('migrate-set-capabilities', { capabilities: caps }));
    let tls: { credsId: string; hostname: string } | null = null;
    if (v.tls && identity !== null) {
      const dir = await writeQemuTlsDir(join(vm.runDir, 'migration-tls'), identity);
      const credsId = await addTlsCreds(qmp, 'client', dir);
      tls = { credsId, hostname: r.tlsHostname ?? parseTcpUri(r.uri).host };
    }
    const params = sourceParameters(
      this.caps,
      { bandwidthBytesPerSec: r.bandwidthBytesPerSec ?? 0, downtimeLimitMs: v.downtimeLimitMs ?? DEFAULT_DOWNTIME_LIMIT_MS },
      tls === null ? null : { credsId: tls.credsId, hostname: tls.hostname },
      vm.memoryBytes,
    );
    await qmp.execute('migrate-set-parameters', params);
    if (this.storage === 'copy' && vm.localDiskIds.length > 0) {
      await this.setStage('mirroring');
      this.mirrorsRunning = true;
      await startMirrors(qmp, vm.localDiskIds, {
        nbd: r.nbd as NbdTarget,
        tls,
        ...(vm.overlayDiskIds === undefined ? {} : { topOnly: vm.overlayDiskIds }),
        signal: this.abort.signal,
        pollMs: this.opts.pollMs ?? 150,
        onProgress: (p) => {
          this.lastMirror = p;
          this.absorb(sampleFromQueryMigrate({ status: 'none' }, performance.now(), p));
          v.qemuStatus = null;
        },
      });
      if (this.cancelRequested) throw new FerryError('FERRY_E_MIGRATION_CANCELLED');
    }
    await this.setStage('transferring');
  }

  private async transfer(): Promise<void> {
    const { vm, request: r } = this.opts;
    const qmp = vm.qmp;
    const pollMs = this.opts.pollMs ?? 150;
    // Events wake the poll loop early (MIGRATION status changes, MIGRATION_PASS), so ends are seen at once.
    const wake = new Wakeup();
    const events = qmp.events({ signal: this.abort.signal });
    const pump = (async () => {
      try {
        for await (const ev of events) {
          if (ev.event === 'MIGRATION' || ev.event === 'MIGRATION_PASS') wake.fire();
        }
      } catch {
        /* aborted or QMP closed: the poll loop notices */
      }
    })();
    try {
      if (this.opts.resume === undefined) await whileOneLingers(() => qmp.execute('migrate', { uri: r.uri }));
      for (;;) {
        const info = await qmp.execute('query-migrate');
        const mirror = this.mirrorsRunning ? await mirrorProgress(qmp, vm.localDiskIds).catch(() => this.lastMirror) : null;
        const s = sampleFromQueryMigrate(info, performance.now(), mirror);
        this.absorb(s);
        switch (s.status) {
          case 'completed':
            if (this.mirrorsRunning) {
              await completeMirrors(qmp, vm.localDiskIds);
              this.mirrorsRunning = false;
            }
            this.record.view.runState = (await qmp.execute('query-status')).status;
            await this.setStage('completed');
            return;
          case 'failed':
            throw new FerryError(classifyFailure(s.errorDesc), `QEMU: migration failed${s.errorDesc === null ? '' : `: ${s.errorDesc}`}.`);
          case 'cancelled':
            throw new FerryError('FERRY_E_MIGRATION_CANCELLED');
          case 'postcopy-active':
            if (this.record.view.stage !== 'postcopy') {
              this.record.view.postcopyStarted = true;
              await this.setStage('postcopy');
            }
            if (this.record.view.error?.code === 'FERRY_E_POSTCOPY_PAUSED') this.record.view.error = null;
            break;
          case 'none':
            if (this.opts.resume !== undefined) {
              throw new FerryError('FERRY_E_MIGRATION_FAILED', 'The agent restarted before the memory transfer began; start the migration again.');
            }
            break;
          case 'postcopy-paused':
            // Neither side runs the guest now; only migrate-recover on the destination and a resumed
            // migrate here can save it (docs/qemu.md). The controller drives that; say so in the view.
            this.record.view.postcopyStarted = true;
            this.record.view.error = {
              code: 'FERRY_E_POSTCOPY_PAUSED',
              message: 'Post-copy paused: the stream to the destination broke; the guest is frozen until it is recovered.',
            };
            break;
          default:
            break;
        }
        await wake.sleep(pollMs);
      }
    } finally {
      this.abort.abort();
      await pump;
    }
  }
}

/** Starts perform in the background; the returned job answers view(), cancel(), startPostcopy(), tune(). */
export function startPerform(opts: PerformOptions): SourceMigration {
  return new SourceMigration(opts);
}

/** The source view of a LocalVm: disks on shared storage are never mirrored. */
export function sourceVmOf(vm: LocalVm): SourceVm {
  return {
    name: vm.name,
    runDir: vm.runDir,
    memoryBytes: vm.spec.memoryBytes,
    localDiskIds: vm.spec.disks.filter((d) => !d.shared).map((d) => d.id),
    overlayDiskIds: vm.spec.disks.filter((d) => !d.shared && d.backing !== undefined).map((d) => d.id),
    get qmp() {
      return vm.qmp;
    },
  };
}
