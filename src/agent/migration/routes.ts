/**
 * The agent's migration routes (under /agent/v1/migrations, behind the same mTLS, CN and protocol gates as
 * the rest of the agent): the agent's half of each phase — prepare (destination), perform (source, runs in
 * the background), finish (destination), confirm (source) — plus progress, cancel, post-copy and tuning.
 * Which VM a migration acts on comes from the agent's own record of it, never again from the caller, so a
 * retried or late call cannot hit another VM.
 *
 * The migration engine, agent side: one file per concern in this folder, named after the phase or the thing
 * it owns.
 *
 * ```mermaid
 * sequenceDiagram
 *   participant C as controller
 *   participant S as source agent
 *   participant D as destination agent
 *   C->>S: begin (GET /vms/:name: spec; GET /vms/:name/shared-disks when it has shared disks)
 *   C->>D: prepare: shared disks checked, QEMU -S -incoming defer, capabilities, TLS creds, NBD exports, migrate-incoming
 *   D-->>C: {uri, nbd, tlsHostname}
 *   C->>S: perform: capabilities, parameters, mirrors until READY, migrate (background)
 *   loop every ~150 ms
 *     S->>S: query-migrate → progress model, stall watchdog
 *     C->>S: GET /migrations/:id (escalate: tune, postcopy, cancel)
 *   end
 *   C->>D: finish {success}: cont, nbd-server-stop, announce-self | kill + remove + signed discard receipt
 *   C->>S: confirm {success}: quit + remove | cont (after completed: only with the receipt)
 * ```
 *
 * - prepare.ts (destination), perform.ts (source), finish.ts (destination), confirm.ts (source)
 * - postcopy.ts: recovery of a post-copy whose stream broke (destination half; the source half is in perform.ts)
 * - receipt.ts: the destination's signed discard receipt, which a source that completed needs to resume
 * - capabilities.ts: which switches each side sets; storage.ts: NBD exports and disk mirrors
 * - tls.ts: QEMU x509 credentials from the agent's identity
 * - cold.ts: stop/save, checksummed disk streams, start on the destination
 * - record.ts: the agent's per-migration record (survives agent restarts)
 * The routes are entries of the table in src/common/agent-routes.ts (params, bodies and answers validated
 * against its schemas before a handler here runs); the shapes are in src/common/agent-migration.ts; the
 * progress model src/common/progress.ts; the job states, policy and truth rule live with the controller
 * (src/common/states.ts, src/controller/migrations/).
 */
import type { MigrationPorts } from './ports.ts';
import type { FastifyInstance } from 'fastify';
import { Readable } from 'node:stream';
import { SHA256_HEADER } from '../../common/agent-routes.ts';
import { FerryError } from '../../common/errors.ts';
import { AGENT_PROTOCOL, PROTOCOL_HEADER } from '../../common/protocol.ts';
import { parseVmSpec, type VmSpec } from '../../common/spec.ts';
import { validateName } from '../../common/units.ts';
import type { Accel } from '../../qemu/argv.ts';
import { mountAgentRoutes, type AgentHandlers, type MigrationRouteName } from '../http.ts';
import { openColdFile, performCold, prepareCold, receiveColdFile } from './cold.ts';
import { confirm } from './confirm.ts';
import { finish } from './finish.ts';
import { sourceVmOf, startPerform, waitForLingeringMigration, type SourceMigration } from './perform.ts';
import { recoverIncoming } from './postcopy.ts';
import { prepare } from './prepare.ts';
import { loadRecord, validateMigrationId } from './record.ts';
import { checkSharedDisks } from '../shared-disks.ts';
import type { TlsIdentity } from './tls.ts';
import { FINAL_AGENT_STAGES, type AgentMigrationView, type PerformRequest, type PrepareRequest, type TuneRequest } from '../../common/agent-migration.ts';
import type { LocalVm } from '../vm.ts';
import { silentLogger, type Log } from '../../common/log.ts';
import { phaseLog, timedPhase } from '../log.ts';
import type { AgentMetrics } from '../metrics.ts';

/** What the routes need of the agent's host (AgentHost implements it). */
export interface MigrationHost {
  /** This host's cluster name (what its discard receipts say). */
  readonly name: string;
  readonly dataDir: string;
  readonly accel: Accel;
  readonly migrationAddress: string;
  /** Where streams and NBD exports listen: the configured range, or any free port. */
  readonly migrationPorts: MigrationPorts;
  admit(spec: VmSpec): Promise<void>;
  exclusive<T>(name: string, fn: (vm: LocalVm | undefined) => Promise<T>): Promise<T>;
  adopt(vm: LocalVm): void;
  forget(name: string): void;
  ensureTaps(spec: VmSpec): Promise<Record<string, string>>;
  releaseTaps(spec: VmSpec): Promise<void>;
}

export interface MigrationRoutesContext {
  app: FastifyInstance;
  host: MigrationHost;
  /** The agent's cluster identity; the migration stream's TLS is built from it. */
  tls: TlsIdentity | null;
  /** Where each phase is logged, with its duration (agent/log.ts); default: silent. */
  log?: Log;
  /** Told of each phase's duration (agent/metrics.ts). */
  metrics?: Pick<AgentMetrics, 'phaseDone'>;
}

/** The defaults of a prepare body, as prepare() takes it. */
function prepareRequest(b: PrepareRequest): PrepareRequest {
  return {
    spec: parseVmSpec(b.spec),
    listenAddress: b.listenAddress,
    tls: b.tls ?? true,
    storage: b.storage,
    capabilities: b.capabilities ?? {},
    ...(b.tlsPeer === undefined ? {} : { tlsPeer: validateName(b.tlsPeer, 'tlsPeer (source host name)') }),
    ...(b.sharedDisks === undefined ? {} : { sharedDisks: b.sharedDisks }),
  };
}

/** The defaults of a perform body, as perform runs it and its record keeps it. */
function performRequest(b: PerformRequest): PerformRequest {
  return {
    vm: validateName(b.vm, 'VM name'),
    uri: b.uri,
    nbd: b.nbd ?? null,
    tls: b.tls ?? true,
    tlsHostname: b.tlsHostname ?? null,
    storage: b.storage,
    capabilities: b.capabilities ?? {},
    bandwidthBytesPerSec: b.bandwidthBytesPerSec,
    downtimeLimitMs: b.downtimeLimitMs,
    destination: b.destination === undefined || b.destination === null ? null : validateName(b.destination, 'destination host'),
  };
}

/** The migration routes' handlers, one per route of the table under /migrations. */
export function migrationHandlers(ctx: Omit<MigrationRoutesContext, 'app'>): Pick<AgentHandlers, MigrationRouteName> {
  const { host } = ctx;
  const jobs = new Map<string, SourceMigration>();
  // Every phase this agent runs is logged with the migration's id and its duration (agent/log.ts).
  const phases = { log: ctx.log ?? silentLogger(), ...(ctx.metrics === undefined ? {} : { observe: ctx.metrics.phaseDone }) };
  const timed = <T>(id: string, phase: Parameters<typeof timedPhase>[2], fields: Record<string, unknown>, fn: () => Promise<T>, outcome?: (r: T) => Record<string, unknown>): Promise<T> =>
    timedPhase(phases, id, phase, fields, fn, outcome);
  const performLog = (id: string, vm: string) => ({ log: phaseLog(phases.log, id, null, { vm, role: 'source' }), ...(phases.observe === undefined ? {} : { observe: phases.observe }) });
  const note = (id: string, what: string, fields: Record<string, unknown> = {}): void => phaseLog(phases.log, id, null, fields).info(what);
  // The table's pattern checked the id already; this is the check file names rely on, kept next to them.
  const idOf = (p: { id: string }): string => validateMigrationId(p.id);

  const record = async (id: string) => {
    const rec = await loadRecord(host.dataDir, id);
    if (rec === undefined) throw new FerryError('FERRY_E_MIGRATION_NOT_FOUND', `This agent knows no migration ${id}.`);
    return rec;
  };

  /** The live source job, re-created from its record after an agent restart while QEMU kept migrating. */
  const sourceJob = async (id: string): Promise<SourceMigration | undefined> => {
    const live = jobs.get(id);
    if (live !== undefined) return live;
    const rec = await loadRecord(host.dataDir, id);
    const st = rec?.view.stage;
    if (rec === undefined || rec.view.role !== 'source' || rec.performed === undefined) return undefined;
    if (st !== 'mirroring' && st !== 'transferring' && st !== 'postcopy') return undefined;
    return host.exclusive(rec.view.vm, async (vm) => {
      if (jobs.has(id)) return jobs.get(id);
      if (vm === undefined || vm.pid === null) return undefined;
      const job = startPerform({ id, agentDir: host.dataDir, vm: sourceVmOf(vm), request: rec.performed!, identity: ctx.tls, resume: rec, ...performLog(id, vm.name) });
      jobs.set(id, job);
      return job;
    });
  };

  /** The running source job, or FERRY_E_MIGRATION_NOT_FOUND (unknown here) / FERRY_E_VM_STATE (not running). */
  const runningJob = async (id: string, what: string): Promise<SourceMigration> => {
    const job = await sourceJob(id);
    if (job !== undefined) return job;
    await record(id);
    throw new FerryError('FERRY_E_VM_STATE', `Migration ${id} is not ${what} on this agent.`);
  };

  const view = async (id: string): Promise<AgentMigrationView> => {
    const job = await sourceJob(id);
    if (job !== undefined) return job.view();
    const rec = await record(id);
    const v = rec.view;
    if (v.role === 'destination' && !FINAL_AGENT_STAGES.includes(v.stage)) {
      // The destination's figures come from its QEMU, live.
      await host.exclusive(v.vm, async (vm) => {
        if (vm === undefined || vm.pid === null) {
          v.runState = null;
          return;
        }
        const [mig, st] = await Promise.all([vm.qmp.execute('query-migrate'), vm.qmp.execute('query-status')]);
        v.qemuStatus = mig.status ?? null;
        v.runState = st.status;
        if (mig['error-desc'] !== undefined) v.error = { code: 'FERRY_E_MIGRATION_FAILED', message: mig['error-desc'] };
      });
    }
    return v;
  };

  return {
    prepare: async ({ params, body }) => {
      const id = idOf(params);
      const request = prepareRequest(body);
      const spec = request.spec;
      return timed(id, 'prepare', { vm: spec.name, role: 'destination', storage: request.storage }, () => host.exclusive(spec.name, async (existing) => {
        const earlier = await loadRecord(host.dataDir, id);
        if (existing !== undefined && !(earlier?.view.role === 'destination' && earlier.view.vm === spec.name)) {
          throw new FerryError('FERRY_E_VM_EXISTS', `VM ${spec.name} exists on this host already.`);
        }
        if (earlier === undefined) {
          // Before anything is laid out or started: a path this host does not see, or another file there.
          await checkSharedDisks(spec, request.sharedDisks);
          await host.admit(spec);
        }
        const taps = await host.ensureTaps(spec);
        try {
          const p = await prepare({ id, agentDir: host.dataDir, accel: host.accel, request, identity: ctx.tls, taps, ports: host.migrationPorts });
          if (existing === undefined) host.adopt(p.vm);
          return p.response;
        } catch (err) {
          if (existing === undefined) await host.releaseTaps(spec).catch(() => undefined);
          throw err;
        }
      }), (r) => ({ uri: r.uri }));
    },

    perform: async ({ params, body, reply }) => {
      const id = idOf(params);
      const request = performRequest(body);
      const running = await sourceJob(id);
      if (running !== undefined) return running.view();
      const earlier = await loadRecord(host.dataDir, id);
      if (earlier !== undefined) {
        // Performed before and ended: the answer is what happened, not a second attempt under one id.
        void reply.status(200);
        return earlier.view;
      }
      const job = await host.exclusive(request.vm, async (vm) => {
        if (vm === undefined || vm.pid === null) throw new FerryError('FERRY_E_VM_NOT_FOUND', `No running VM ${request.vm} on this host.`);
        for (const j of jobs.values()) {
          const st = j.view().stage;
          if (j.view().vm === request.vm && (st === 'mirroring' || st === 'transferring' || st === 'postcopy')) {
            throw new FerryError('FERRY_E_MIGRATION_ACTIVE', `VM ${request.vm} is being migrated (${j.id}).`);
          }
        }
        await waitForLingeringMigration(vm.qmp);
        const j = startPerform({ id, agentDir: host.dataDir, vm: sourceVmOf(vm), request, identity: ctx.tls, ...performLog(id, request.vm) });
        jobs.set(id, j);
        return j;
      });
      return job.view();
    },

    migration: ({ params }) => view(idOf(params)),

    events: async ({ params, req, reply }) => {
      // Server-sent events: the view whenever it changes, until the agent's part of the migration ended.
      const id = idOf(params);
      await view(id);
      // Written raw, past fastify: the protocol header its onRequest hook set must be repeated here.
      reply.raw.writeHead(200, { [PROTOCOL_HEADER]: String(reply.getHeader(PROTOCOL_HEADER) ?? AGENT_PROTOCOL), 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
      let last = '';
      let closed = false;
      req.raw.on('close', () => (closed = true));
      while (!closed) {
        const v = await view(id).catch(() => null);
        if (v === null) break;
        const text = JSON.stringify(v);
        if (text !== last) reply.raw.write(`event: migration\ndata: ${text}\n\n`);
        last = text;
        const ended = FINAL_AGENT_STAGES.includes(v.stage) || v.stage === 'completed' || v.stage === 'failed' || v.stage === 'cancelled';
        if (ended) break;
        // A change of stage is sent at once (the controller hands over on `completed`), figures every 250 ms.
        const live = jobs.get(id);
        await (live !== undefined ? live.stageChange(v.stage, 250) : new Promise((r) => setTimeout(r, 250)));
      }
      reply.raw.end();
      return reply;
    },

    cancel: async ({ params }) => {
      const id = idOf(params);
      const job = await sourceJob(id);
      note(id, job === undefined ? 'cancel asked: nothing running here' : 'cancel asked', { role: 'source' });
      if (job !== undefined) return job.cancel();
      return (await record(id)).view;
    },

    postcopy: async ({ params }) => {
      const id = idOf(params);
      note(id, 'switch to post-copy asked', { role: 'source', phase: 'postcopy' });
      return (await runningJob(id, 'transferring')).startPostcopy();
    },

    postcopyPause: async ({ params }) => (await runningJob(idOf(params), 'in post-copy')).pausePostcopy(),

    postcopyResume: async ({ params, body }) => (await runningJob(idOf(params), 'in post-copy')).resumePostcopy(body.uri),

    recover: async ({ params }) => {
      const id = idOf(params);
      const rec = await record(id);
      return timed(id, 'recover', { vm: rec.view.vm, role: 'destination' }, () =>
        host.exclusive(rec.view.vm, (vm) => recoverIncoming({ id, agentDir: host.dataDir, vm, listenAddress: host.migrationAddress, ports: host.migrationPorts })),
      );
    },

    tune: async ({ params, body }) => {
      const id = idOf(params);
      const t: TuneRequest = {};
      if (body.downtimeLimitMs !== undefined) t.downtimeLimitMs = Math.round(body.downtimeLimitMs);
      if (body.bandwidthBytesPerSec !== undefined) t.bandwidthBytesPerSec = body.bandwidthBytesPerSec;
      note(id, 'tune', { role: 'source', ...t });
      return (await runningJob(id, 'transferring')).tune(t);
    },

    complete: async ({ params }) => {
      const id = idOf(params);
      note(id, 'complete asked: pausing the guest', { role: 'source' });
      return (await runningJob(id, 'transferring')).complete();
    },

    // --- cold migration: the controller streams each file from the source's download to the destination's upload.
    coldPrepare: async ({ params, body }) => {
      const id = idOf(params);
      const spec = parseVmSpec(body.spec);
      const start = body.start !== false;
      return timed(id, 'cold-prepare', { vm: spec.name, role: 'destination', start }, () => host.exclusive(spec.name, async (existing) => {
        const earlier = await loadRecord(host.dataDir, id);
        if (existing !== undefined && earlier === undefined) throw new FerryError('FERRY_E_VM_EXISTS', `VM ${spec.name} exists on this host already.`);
        if (earlier === undefined) {
          await checkSharedDisks(spec, body.sharedDisks);
          await host.admit(spec);
        }
        const taps = await host.ensureTaps(spec);
        const p = await prepareCold({ id, agentDir: host.dataDir, accel: host.accel, spec, taps, start });
        if (existing === undefined) host.adopt(p.vm);
        return p.view;
      }));
    },

    coldPerform: async ({ params, body }) => {
      const id = idOf(params);
      const name = validateName(body.vm, 'VM name');
      const mode = body.mode ?? 'shutdown';
      const timeoutMs = body.timeoutMs;
      return timed(id, 'cold-perform', { vm: name, role: 'source', mode }, () => host.exclusive(name, async (vm) => {
        if (vm === undefined) throw new FerryError('FERRY_E_VM_NOT_FOUND', `No VM ${name} on this host.`);
        return performCold({ id, agentDir: host.dataDir, vm, mode, ...(timeoutMs === undefined ? {} : { timeoutMs }) });
      }));
    },

    coldDownload: async ({ params }) => {
      const id = idOf(params);
      await record(id);
      const { stream, file } = await openColdFile(host.dataDir, id, params.name);
      // The bytes flow after this answer: the destination's upload times the copy.
      note(id, `cold download of ${params.name}`, { phase: 'cold-download', role: 'source', file: params.name, bytes: file.bytes });
      return { stream, sha256: file.sha256, bytes: file.bytes };
    },

    coldUpload: async ({ params, headers, body }) => {
      const id = idOf(params);
      if (!(body instanceof Readable)) throw new FerryError('FERRY_E_BAD_INPUT', 'Send the file as application/octet-stream.');
      await record(id);
      return timed(id, 'cold-upload', { role: 'destination', file: params.name }, () =>
        receiveColdFile({ agentDir: host.dataDir, id, name: params.name, sha256: headers[SHA256_HEADER].toLowerCase(), body }),
      );
    },

    finish: async ({ params, body }) => {
      const id = idOf(params);
      const ok = body.success;
      const rec = await record(id);
      return timed(id, 'finish', { vm: rec.view.vm, role: 'destination', success: ok }, () => host.exclusive(rec.view.vm, async (vm) => {
        const v = await finish({ id, agentDir: host.dataDir, success: ok, identity: ctx.tls, hostName: host.name, ...(vm === undefined ? {} : { vm }) });
        if (v.stage === 'discarded' && vm !== undefined) {
          host.forget(rec.view.vm);
          await host.releaseTaps(vm.spec).catch(() => undefined);
        }
        return v;
      }), (v) => ({ stage: v.stage }));
    },

    confirm: async ({ params, body }) => {
      const id = idOf(params);
      const ok = body.success;
      const receipt = body.receipt;
      const job = await sourceJob(id);
      if (job !== undefined) {
        const st = job.view().stage;
        if (ok && (st === 'mirroring' || st === 'transferring' || st === 'postcopy')) {
          throw new FerryError('FERRY_E_MIGRATION_ACTIVE', `Migration ${id} is still ${st}: confirm once it completed.`);
        }
        if (!ok) await job.cancel().catch(() => undefined);
      }
      const rec = await record(id);
      return timed(id, 'confirm', { vm: rec.view.vm, role: 'source', success: ok }, () => host.exclusive(rec.view.vm, async (vm) => {
        const v = await confirm({ id, agentDir: host.dataDir, success: ok, identity: ctx.tls, receipt, ...(vm === undefined ? {} : { vm }) });
        if (v.stage === 'confirmed' && vm !== undefined) {
          host.forget(rec.view.vm);
          await host.releaseTaps(vm.spec).catch(() => undefined);
        }
        jobs.delete(id);
        return v;
      }), (v) => ({ stage: v.stage }));
    },
  };
}

/** Mounts the migration routes; use as startAgent's `extend`, or call from buildAgentApp. */
export function registerMigrationRoutes(ctx: MigrationRoutesContext): void {
  mountAgentRoutes(ctx.app, migrationHandlers(ctx));
}

/** Wraps startAgent's `extend` so the migration routes are always mounted (after the given extension). */
export function withMigrationRoutes<C extends MigrationRoutesContext>(next?: (ctx: C) => void | Promise<void>): (ctx: C) => Promise<void> {
  return async (ctx) => {
    await next?.(ctx);
    registerMigrationRoutes(ctx);
  };
}
