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
 *   C->>S: begin (GET /vms/:name: spec)
 *   C->>D: prepare: QEMU -S -incoming defer, capabilities, TLS creds, NBD exports, migrate-incoming
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
 * The wire contract is src/common/agent-migration.ts; the progress model src/common/progress.ts; the job
 * states, policy and truth rule live with the controller (src/common/states.ts, src/controller/migrations/).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { FerryError } from '../../common/errors.ts';
import { parseVmSpec, type VmSpec } from '../../common/spec.ts';
import { validateName } from '../../common/units.ts';
import type { Accel } from '../../qemu/argv.ts';
import { Readable } from 'node:stream';
import { openColdFile, performCold, prepareCold, receiveColdFile, SHA256_HEADER } from './cold.ts';
import { confirm } from './confirm.ts';
import { finish } from './finish.ts';
import { sourceVmOf, startPerform, type SourceMigration } from './perform.ts';
import { recoverIncoming } from './postcopy.ts';
import { prepare } from './prepare.ts';
import { loadRecord, validateMigrationId } from './record.ts';
import type { TlsIdentity } from './tls.ts';
import {
  FINAL_AGENT_STAGES,
  type AgentMigrationView,
  type PerformRequest,
  type PrepareRequest,
  type TuneRequest,
} from '../../common/agent-migration.ts';
import type { LocalVm } from '../vm.ts';

/** What the routes need of the agent's host (AgentHost implements it). */
export interface MigrationHost {
  /** This host's cluster name (what its discard receipts say). */
  readonly name: string;
  readonly dataDir: string;
  readonly accel: Accel;
  readonly migrationAddress: string;
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
}

const BASE = '/agent/v1/migrations';

function body(req: FastifyRequest): Record<string, unknown> {
  const b = req.body;
  if (b === undefined || b === null || b === '') return {};
  if (typeof b !== 'object' || Array.isArray(b)) throw new FerryError('FERRY_E_BAD_INPUT', 'The request body must be a JSON object.');
  return b as Record<string, unknown>;
}

function idParam(req: FastifyRequest): string {
  return validateMigrationId((req.params as { id?: unknown }).id);
}

function optNumber(b: Record<string, unknown>, key: string, min: number): number | undefined {
  const v = b[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min) throw new FerryError('FERRY_E_BAD_INPUT', `${key} must be a number ≥ ${min}.`);
  return v;
}

function optBool(b: Record<string, unknown>, key: string): boolean | undefined {
  const v = b[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw new FerryError('FERRY_E_BAD_INPUT', `${key} must be true or false.`);
  return v;
}

function success(req: FastifyRequest): boolean {
  const s = optBool(body(req), 'success');
  if (s === undefined) throw new FerryError('FERRY_E_BAD_INPUT', 'success (true or false) is required.');
  return s;
}

function storageOf(b: Record<string, unknown>): 'shared' | 'copy' {
  const s = b.storage ?? 'shared';
  if (s !== 'shared' && s !== 'copy') throw new FerryError('FERRY_E_BAD_INPUT', 'storage must be shared or copy.');
  return s;
}

function parsePrepare(b: Record<string, unknown>, host: MigrationHost): PrepareRequest {
  return {
    spec: parseVmSpec(b.spec),
    listenAddress: typeof b.listenAddress === 'string' ? b.listenAddress : host.migrationAddress,
    tls: optBool(b, 'tls') ?? true,
    storage: storageOf(b),
    capabilities: (b.capabilities ?? {}) as PrepareRequest['capabilities'],
    ...(b.tlsPeer === undefined ? {} : { tlsPeer: validateName(b.tlsPeer, 'tlsPeer (source host name)') }),
  };
}

function parsePerform(b: Record<string, unknown>): PerformRequest {
  if (typeof b.uri !== 'string') throw new FerryError('FERRY_E_BAD_INPUT', 'uri (from prepare) is required.');
  const postcopy = b.postcopy ?? 'never';
  if (postcopy !== 'never' && postcopy !== 'auto' && postcopy !== 'always') {
    throw new FerryError('FERRY_E_BAD_INPUT', 'postcopy must be never, auto or always.');
  }
  const nbd = b.nbd as PerformRequest['nbd'];
  if (nbd !== undefined && nbd !== null) {
    const okExports = typeof nbd.exports === 'object' && nbd.exports !== null && Object.values(nbd.exports).every((v) => typeof v === 'string');
    if (typeof nbd.host !== 'string' || typeof nbd.port !== 'number' || !okExports) {
      throw new FerryError('FERRY_E_BAD_INPUT', 'nbd must be {host, port, exports} as prepare returned it.');
    }
  }
  const tlsHostname = b.tlsHostname;
  if (tlsHostname !== undefined && tlsHostname !== null && (typeof tlsHostname !== 'string' || !/^[A-Za-z0-9.:-]{1,253}$/.test(tlsHostname))) {
    throw new FerryError('FERRY_E_BAD_INPUT', 'tlsHostname must be a host name or address.');
  }
  return {
    vm: validateName(b.vm, 'VM name'),
    uri: b.uri,
    nbd: nbd ?? null,
    tls: optBool(b, 'tls') ?? true,
    tlsHostname: (tlsHostname as string | null | undefined) ?? null,
    storage: storageOf(b),
    capabilities: (b.capabilities ?? {}) as PerformRequest['capabilities'],
    bandwidthBytesPerSec: optNumber(b, 'bandwidthBytesPerSec', 0),
    downtimeLimitMs: optNumber(b, 'downtimeLimitMs', 1),
    stallTimeoutMs: optNumber(b, 'stallTimeoutMs', 100),
    postcopy,
    destination: b.destination === undefined || b.destination === null ? null : validateName(b.destination, 'destination host'),
  };
}

/** Mounts the migration routes; use as startAgent's `extend`, or call from buildAgentApp. */
export function registerMigrationRoutes(ctx: MigrationRoutesContext): void {
  const { host } = ctx;
  const jobs = new Map<string, SourceMigration>();
  // A route another extension declared already (a test's stand-in) is left to it.
  type Handler = (req: FastifyRequest, reply: FastifyReply) => unknown;
  const add = (method: 'GET' | 'POST' | 'PUT', url: string, handler: Handler): void => {
    if (!ctx.app.hasRoute({ method, url })) ctx.app.route({ method, url, handler });
  };
  const app = {
    get: (url: string, h: Handler) => add('GET', url, h),
    post: (url: string, h: Handler) => add('POST', url, h),
    put: (url: string, h: Handler) => add('PUT', url, h),
  };

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
      const job = startPerform({ id, agentDir: host.dataDir, vm: sourceVmOf(vm), request: rec.performed!, identity: ctx.tls, resume: rec });
      jobs.set(id, job);
      return job;
    });
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

  app.post(`${BASE}/:id/prepare`, async (req, reply) => {
    const id = idParam(req);
    const request = parsePrepare(body(req), host);
    const spec = request.spec;
    const res = await host.exclusive(spec.name, async (existing) => {
      const earlier = await loadRecord(host.dataDir, id);
      if (existing !== undefined && !(earlier?.view.role === 'destination' && earlier.view.vm === spec.name)) {
        throw new FerryError('FERRY_E_VM_EXISTS', `VM ${spec.name} exists on this host already.`);
      }
      if (earlier === undefined) await host.admit(spec);
      const taps = await host.ensureTaps(spec);
      try {
        const p = await prepare({ id, agentDir: host.dataDir, accel: host.accel, request, identity: ctx.tls, taps });
        if (existing === undefined) host.adopt(p.vm);
        return p.response;
      } catch (err) {
        if (existing === undefined) await host.releaseTaps(spec).catch(() => undefined);
        throw err;
      }
    });
    return reply.status(201).send(res);
  });

  app.post(`${BASE}/:id/perform`, async (req, reply) => {
    const id = idParam(req);
    const request = parsePerform(body(req));
    const running = await sourceJob(id);
    if (running !== undefined) return reply.status(202).send(running.view());
    const earlier = await loadRecord(host.dataDir, id);
    if (earlier !== undefined) {
      // Performed before and ended: the answer is what happened, not a second attempt under one id.
      return reply.status(200).send(earlier.view);
    }
    const job = await host.exclusive(request.vm, async (vm) => {
      if (vm === undefined || vm.pid === null) throw new FerryError('FERRY_E_VM_NOT_FOUND', `No running VM ${request.vm} on this host.`);
      for (const j of jobs.values()) {
        const st = j.view().stage;
        if (j.view().vm === request.vm && (st === 'mirroring' || st === 'transferring' || st === 'postcopy')) {
          throw new FerryError('FERRY_E_MIGRATION_ACTIVE', `VM ${request.vm} is being migrated (${j.id}).`);
        }
      }
      const j = startPerform({ id, agentDir: host.dataDir, vm: sourceVmOf(vm), request, identity: ctx.tls });
      jobs.set(id, j);
      return j;
    });
    return reply.status(202).send(job.view());
  });

  app.get(`${BASE}/:id`, (req) => view(idParam(req)));

  app.get(`${BASE}/:id/events`, async (req, reply) => {
    // Server-sent events: the view whenever it changes, until the agent's part of the migration ended.
    const id = idParam(req);
    await view(id);
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
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
      await new Promise((r) => setTimeout(r, 250));
    }
    reply.raw.end();
    return reply;
  });

  app.post(`${BASE}/:id/cancel`, async (req) => {
    const id = idParam(req);
    const job = await sourceJob(id);
    if (job !== undefined) return job.cancel();
    return (await record(id)).view;
  });

  app.post(`${BASE}/:id/postcopy`, async (req) => {
    const id = idParam(req);
    const job = await sourceJob(id);
    if (job === undefined) throw new FerryError('FERRY_E_VM_STATE', `Migration ${id} is not transferring on this agent.`);
    return job.startPostcopy();
  });

  app.post(`${BASE}/:id/postcopy-pause`, async (req) => {
    const id = idParam(req);
    const job = await sourceJob(id);
    if (job === undefined) throw new FerryError('FERRY_E_VM_STATE', `Migration ${id} is not in post-copy on this agent.`);
    return job.pausePostcopy();
  });

  app.post(`${BASE}/:id/postcopy-resume`, async (req) => {
    const id = idParam(req);
    const uri = body(req).uri;
    if (typeof uri !== 'string') throw new FerryError('FERRY_E_BAD_INPUT', 'uri (from the destination\'s recover) is required.');
    const job = await sourceJob(id);
    if (job === undefined) throw new FerryError('FERRY_E_VM_STATE', `Migration ${id} is not in post-copy on this agent.`);
    return job.resumePostcopy(uri);
  });

  app.post(`${BASE}/:id/recover`, async (req) => {
    const id = idParam(req);
    const rec = await record(id);
    return host.exclusive(rec.view.vm, (vm) => recoverIncoming({ id, agentDir: host.dataDir, vm, listenAddress: host.migrationAddress }));
  });

  app.post(`${BASE}/:id/tune`, async (req) => {
    const id = idParam(req);
    const b = body(req);
    const t: TuneRequest = {};
    const d = optNumber(b, 'downtimeLimitMs', 1);
    const bw = optNumber(b, 'bandwidthBytesPerSec', 0);
    if (d !== undefined) t.downtimeLimitMs = Math.round(d);
    if (bw !== undefined) t.bandwidthBytesPerSec = bw;
    const job = await sourceJob(id);
    if (job === undefined) throw new FerryError('FERRY_E_VM_STATE', `Migration ${id} is not transferring on this agent.`);
    return job.tune(t);
  });

  // --- cold migration: the controller streams each file from the source's GET to the destination's PUT.
  if (!ctx.app.hasContentTypeParser('application/octet-stream')) {
    // The body stays a stream: disks are far larger than any JSON limit and are hashed as they arrive.
    ctx.app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));
  }

  app.post(`${BASE}/:id/cold/prepare`, async (req, reply) => {
    const id = idParam(req);
    const b = body(req);
    const spec = parseVmSpec(b.spec);
    const start = b.start !== false;
    const v = await host.exclusive(spec.name, async (existing) => {
      const earlier = await loadRecord(host.dataDir, id);
      if (existing !== undefined && earlier === undefined) throw new FerryError('FERRY_E_VM_EXISTS', `VM ${spec.name} exists on this host already.`);
      if (earlier === undefined) await host.admit(spec);
      const taps = await host.ensureTaps(spec);
      const p = await prepareCold({ id, agentDir: host.dataDir, accel: host.accel, spec, taps, start });
      if (existing === undefined) host.adopt(p.vm);
      return p.view;
    });
    return reply.status(201).send(v);
  });

  app.post(`${BASE}/:id/cold/perform`, async (req) => {
    const id = idParam(req);
    const b = body(req);
    const name = validateName(b.vm, 'VM name');
    const mode = b.mode ?? 'shutdown';
    if (mode !== 'shutdown' && mode !== 'save') throw new FerryError('FERRY_E_BAD_INPUT', 'mode must be shutdown or save.');
    const timeoutMs = optNumber(b, 'timeoutMs', 0);
    return host.exclusive(name, async (vm) => {
      if (vm === undefined) throw new FerryError('FERRY_E_VM_NOT_FOUND', `No VM ${name} on this host.`);
      return performCold({ id, agentDir: host.dataDir, vm, mode, ...(timeoutMs === undefined ? {} : { timeoutMs }) });
    });
  });

  app.get(`${BASE}/:id/files/:name`, async (req, reply) => {
    const id = idParam(req);
    const { stream, file } = await openColdFile(host.dataDir, id, String((req.params as { name?: unknown }).name));
    return reply
      .header(SHA256_HEADER, file.sha256)
      .header('content-length', String(file.bytes))
      .type('application/octet-stream')
      .send(stream);
  });

  app.put(`${BASE}/:id/files/:name`, async (req) => {
    const id = idParam(req);
    const sha = req.headers[SHA256_HEADER];
    if (typeof sha !== 'string') throw new FerryError('FERRY_E_BAD_INPUT', `The ${SHA256_HEADER} header is required.`);
    if (!(req.body instanceof Readable)) throw new FerryError('FERRY_E_BAD_INPUT', 'Send the file as application/octet-stream.');
    return receiveColdFile({ agentDir: host.dataDir, id, name: String((req.params as { name?: unknown }).name), sha256: sha.toLowerCase(), body: req.body });
  });

  app.post(`${BASE}/:id/finish`, async (req) => {
    const id = idParam(req);
    const ok = success(req);
    const rec = await record(id);
    return host.exclusive(rec.view.vm, async (vm) => {
      const v = await finish({ id, agentDir: host.dataDir, success: ok, identity: ctx.tls, hostName: host.name, ...(vm === undefined ? {} : { vm }) });
      if (v.stage === 'discarded' && vm !== undefined) {
        host.forget(rec.view.vm);
        await host.releaseTaps(vm.spec).catch(() => undefined);
      }
      return v;
    });
  });

  app.post(`${BASE}/:id/confirm`, async (req) => {
    const id = idParam(req);
    const ok = success(req);
    const receipt = body(req).receipt;
    const job = await sourceJob(id);
    if (job !== undefined) {
      const st = job.view().stage;
      if (ok && (st === 'mirroring' || st === 'transferring' || st === 'postcopy')) {
        throw new FerryError('FERRY_E_MIGRATION_ACTIVE', `Migration ${id} is still ${st}: confirm once it completed.`);
      }
      if (!ok) await job.cancel().catch(() => undefined);
    }
    const rec = await record(id);
    return host.exclusive(rec.view.vm, async (vm) => {
      const v = await confirm({ id, agentDir: host.dataDir, success: ok, identity: ctx.tls, receipt, ...(vm === undefined ? {} : { vm }) });
      if (v.stage === 'confirmed' && vm !== undefined) {
        host.forget(rec.view.vm);
        await host.releaseTaps(vm.spec).catch(() => undefined);
      }
      jobs.delete(id);
      return v;
    });
  });
}

/** Wraps startAgent's `extend` so the migration routes are always mounted (after the given extension). */
export function withMigrationRoutes<C extends MigrationRoutesContext>(next?: (ctx: C) => void | Promise<void>): (ctx: C) => Promise<void> {
  return async (ctx) => {
    await next?.(ctx);
    registerMigrationRoutes(ctx);
  };
}
