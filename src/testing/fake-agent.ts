/**
 * A fake host agent for the controller's unit tests, built from the route table like the real one: the same
 * HTTPS app with the same gates, validation and error envelope (src/agent/http.ts), the real host handlers
 * (src/agent/server.ts) over a scripted `FakeVmHost` instead of QEMU, and scripted migration handlers in
 * place of the agent-side phases. The compiler holds it to every route of the table, and the contract suite
 * (agent-contract.case.ts) holds it to what the real agent answers.
 *
 * Scripted: VMs live in `host.vms`; `host.failCreate` makes the next creates fail; a perform completes after
 * `completeAfterPolls` reads of the source's view; `onPerform` scripts a source's view as it starts;
 * `finishHeld` holds finishes back; `calls` lists every request (`METHOD /path`).
 */
import { createHash } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import {
  emptyView,
  type AgentMigrationView,
  type ColdFile,
  type DiscardReceipt,
} from '../common/agent-migration.ts';
import { PROTOCOL_RANGE, SHA256_HEADER } from '../common/agent-routes.ts';
import { FerryError, type ErrorCode } from '../common/errors.ts';
import {
  PROTOCOL_HEADER,
  type CachedImage,
  type HostInventory,
  type ImageReceived,
  type SharedDiskFingerprint,
  type DirtyRate,
  type VmStatus,
} from '../common/protocol.ts';
import { parseVmSpec, type VmSpec } from '../common/spec.ts';
import type { VmHost } from '../agent/host.ts';
import {
  agentFastify,
  mountAgentRoutes,
  type AgentHandlers,
  type MigrationRouteName,
} from '../agent/http.ts';
import type { AgentIdentity } from '../agent/identity.ts';
import { TermFence } from '../agent/term.ts';
import { hostHandlers } from '../agent/server.ts';
import { certificateView } from '../agent/renewal.ts';
import type { Controller } from '../controller/controller.ts';
import { createJoinToken } from '../controller/tokens.ts';

const MiB = 1024 * 1024;

/** A host of VMs held in a map: what the agent's host routes need, without QEMU. */
export class FakeVmHost implements VmHost {
  readonly vms = new Map<string, VmStatus>();
  /** While set, creates fail with this error (after validation, as QEMU failing to start would). */
  failCreate: { code: ErrorCode; message: string } | null = null;
  private boots = 0;

  constructor(
    readonly name = 'h1',
    readonly inventoryFacts: Partial<HostInventory> = {},
  ) {}

  async inventory(): Promise<HostInventory> {
    return {
      name: this.name,
      protocol: PROTOCOL_RANGE.current,
      cpu: { model: 'qemu64', vendor: 'x', flags: [], cores: 2 },
      memoryBytes: 2048 * MiB,
      freeMemoryBytes: 1500 * MiB,
      accel: 'tcg',
      qemu: { version: '10.0.2', machineTypes: ['pc-q35-10.0'] },
      migrationAddress: '127.0.0.1',
      agentVersion: 'fake',
      ...this.inventoryFacts,
    };
  }

  async list(): Promise<VmStatus[]> {
    return [...this.vms.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Base images by sha256, kept in memory; checked as the real cache checks them. */
  readonly images = new Map<string, Buffer>();

  async listImages(): Promise<CachedImage[]> {
    return [...this.images]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([sha, b]) => ({ sha256: sha, bytes: b.length }));
  }

  async receiveImage(sha: string, body: Readable): Promise<ImageReceived> {
    const parts: Buffer[] = [];
    for await (const chunk of body) parts.push(chunk as Buffer);
    const had = this.images.get(sha);
    if (had !== undefined) return { sha256: sha, bytes: had.length, action: 'present' };
    const b = Buffer.concat(parts);
    if (sha256(b) !== sha)
      throw new FerryError(
        'FERRY_E_IMAGE_CHECKSUM',
        `Image ${sha}: ${b.length} bytes arrived with sha256 ${sha256(b)}; nothing was kept.`,
      );
    this.images.set(sha, b);
    return { sha256: sha, bytes: b.length, action: 'fetched' };
  }

  private vm(name: string): VmStatus {
    const vm = this.vms.get(name);
    if (vm === undefined) throw new FerryError('FERRY_E_VM_NOT_FOUND', `No VM ${name} on host ${this.name}.`);
    return vm;
  }

  async get(name: string): Promise<VmStatus> {
    return structuredClone(this.vm(name));
  }

  /** Puts a VM on the host as if it ran there (`state` running unless said otherwise). */
  put(spec: VmSpec, state: VmStatus['state'] = 'running'): VmStatus {
    const running = state === 'running' || state === 'paused';
    const st: VmStatus = {
      name: spec.name,
      state,
      qemuStatus: running ? state : null,
      pid: running ? 1000 + this.vms.size : null,
      bootId: running ? `boot-${spec.name}` : null,
      spec,
      startedAt: running ? new Date().toISOString() : null,
    };
    this.vms.set(spec.name, st);
    return st;
  }

  async create(spec: VmSpec): Promise<VmStatus> {
    if (this.vms.has(spec.name))
      throw new FerryError('FERRY_E_VM_EXISTS', `VM ${spec.name} exists already on host ${this.name}.`);
    if (this.failCreate) throw new FerryError(this.failCreate.code, this.failCreate.message);
    return structuredClone(this.put(spec));
  }

  async stop(name: string): Promise<VmStatus> {
    return structuredClone(
      Object.assign(this.vm(name), {
        state: 'stopped',
        qemuStatus: null,
        pid: null,
        bootId: null,
        startedAt: null,
      }),
    );
  }

  async start(name: string): Promise<VmStatus> {
    const vm = this.vm(name);
    if (vm.state !== 'stopped')
      throw new FerryError('FERRY_E_VM_STATE', `VM ${name} is ${vm.state}, not stopped.`);
    this.boots += 1;
    return structuredClone(
      Object.assign(vm, {
        state: 'running',
        qemuStatus: 'running',
        pid: 2000 + this.boots,
        bootId: `boot-${this.boots + 1}`,
        startedAt: new Date().toISOString(),
      }),
    );
  }

  async pause(name: string): Promise<VmStatus> {
    const vm = this.vm(name);
    if (vm.state === 'stopped') throw new FerryError('FERRY_E_VM_STATE', `VM ${name} is stopped.`);
    return structuredClone(Object.assign(vm, { state: 'paused', qemuStatus: 'paused' }));
  }

  async resume(name: string): Promise<VmStatus> {
    const vm = this.vm(name);
    if (vm.state === 'stopped') throw new FerryError('FERRY_E_VM_STATE', `VM ${name} is stopped.`);
    return structuredClone(Object.assign(vm, { state: 'running', qemuStatus: 'running' }));
  }

  async destroy(name: string): Promise<void> {
    this.vm(name);
    this.vms.delete(name);
  }

  async guest(name: string, command: string): Promise<unknown> {
    const vm = this.vm(name);
    if (vm.state !== 'running')
      throw new FerryError('FERRY_E_VM_STATE', `VM ${name} is ${vm.state}: its guest does not answer.`);
    return { ok: true, echo: command };
  }

  async console(name: string): Promise<string> {
    this.vm(name);
    return 'Linux version 6.1\nferry-guest ready\n';
  }

  /** What a host that sees every shared disk answers: each at its spec size, an all-zero first MiB. */
  async sharedDisks(name: string): Promise<SharedDiskFingerprint[]> {
    const zeros = createHash('sha256')
      .update(Buffer.alloc(1024 * 1024))
      .digest('hex');
    return this.vm(name)
      .spec.disks.filter((d) => d.shared && d.path !== undefined)
      .map((d) => ({ id: d.id, path: d.path!, sizeBytes: d.sizeBytes, headSha256: zeros }));
  }

  /** A guest that dirties nothing. */
  async dirtyRate(name: string): Promise<DirtyRate> {
    this.vm(name);
    return { dirtyRateBytesPerSec: 0, calcTimeMs: 1000 };
  }

  async close(): Promise<void> {}
}

/** One migration as the fake agent keeps it: the view, and the files of a cold one. */
interface FakeMigration {
  view: AgentMigrationView;
  files: Map<string, Buffer>;
  polls: number;
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const now = (): string => new Date().toISOString();

/** Scripted migration handlers over the fake host: each phase moves the view (and the VM) at once. */
export function fakeMigrationHandlers(agent: FakeAgent): Pick<AgentHandlers, MigrationRouteName> {
  const { host, migrations } = agent;
  const known = (id: string): FakeMigration => {
    const m = migrations.get(id);
    if (m === undefined)
      throw new FerryError('FERRY_E_MIGRATION_NOT_FOUND', `This agent knows no migration ${id}.`);
    return m;
  };
  const as = (id: string, role: 'source' | 'destination'): FakeMigration => {
    const m = known(id);
    if (m.view.role !== role)
      throw new FerryError(
        'FERRY_E_MIGRATION_NOT_FOUND',
        `This agent is not the ${role} of migration ${id}.`,
      );
    return m;
  };
  const stage = (m: FakeMigration, s: AgentMigrationView['stage']): AgentMigrationView => {
    m.view.stage = s;
    m.view.updatedAt = now();
    if (s === 'finished' || s === 'discarded' || s === 'confirmed' || s === 'resumed')
      m.view.finishedAt = m.view.updatedAt;
    return structuredClone(m.view);
  };
  const running = (id: string, what: string): FakeMigration => {
    const m = known(id);
    const st = m.view.stage;
    if (m.view.role !== 'source' || (st !== 'transferring' && st !== 'postcopy'))
      throw new FerryError('FERRY_E_VM_STATE', `Migration ${id} is not ${what} on this agent.`);
    return m;
  };
  const begin = (
    id: string,
    role: 'source' | 'destination',
    vm: string,
    s: AgentMigrationView['stage'],
    tls: boolean,
  ): FakeMigration => {
    const m: FakeMigration = {
      view: emptyView({ id, role, vm, stage: s, storage: 'shared', tls, uri: null }),
      files: new Map(),
      polls: 0,
    };
    migrations.set(id, m);
    return m;
  };

  return {
    prepare: ({ params, body, reply }) => {
      const spec = parseVmSpec(body.spec);
      const earlier = migrations.get(params.id);
      if (earlier !== undefined) {
        if (earlier.view.role === 'destination' && earlier.view.stage === 'prepared')
          return { id: params.id, uri: earlier.view.uri!, nbd: null, tlsHostname: null };
        throw new FerryError('FERRY_E_MIGRATION_ACTIVE', `Migration ${params.id} was prepared here already.`);
      }
      if (host.vms.has(spec.name))
        throw new FerryError('FERRY_E_VM_EXISTS', `VM ${spec.name} exists on this host already.`);
      const m = begin(params.id, 'destination', spec.name, 'prepared', body.tls ?? true);
      m.view.uri = `tcp:${body.listenAddress}:49152`;
      host.put(spec, 'paused').qemuStatus = 'inmigrate';
      void reply.status(201);
      return {
        id: params.id,
        uri: m.view.uri,
        nbd: null,
        tlsHostname: (body.tls ?? true) ? body.listenAddress : null,
      };
    },
    perform: ({ params, body, reply }) => {
      const earlier = migrations.get(params.id);
      if (earlier !== undefined) {
        void reply.status(earlier.view.stage === 'transferring' ? 202 : 200);
        return structuredClone(earlier.view);
      }
      const vm = host.vms.get(body.vm);
      if (vm === undefined || vm.state === 'stopped')
        throw new FerryError('FERRY_E_VM_NOT_FOUND', `No running VM ${body.vm} on this host.`);
      const m = begin(params.id, 'source', body.vm, 'transferring', body.tls ?? true);
      Object.assign(m.view, {
        uri: body.uri,
        qemuStatus: 'active',
        memoryBytes: vm.spec.memoryBytes,
        transferredBytes: 0,
        remainingBytes: vm.spec.memoryBytes,
        iterations: 1,
      });
      agent.onPerform?.(m.view);
      return structuredClone(m.view);
    },
    migration: ({ params }) => {
      const m = known(params.id);
      if (
        m.view.role === 'source' &&
        (m.view.stage === 'transferring' || m.view.stage === 'postcopy') &&
        ++m.polls >= agent.completeAfterPolls
      ) {
        Object.assign(m.view, {
          qemuStatus: 'completed',
          transferredBytes: m.view.memoryBytes,
          remainingBytes: 0,
          totalMs: 100,
          downtimeMs: 5,
        });
        const vm = host.vms.get(m.view.vm);
        if (vm) Object.assign(vm, { state: 'paused', qemuStatus: 'postmigrate' });
        stage(m, 'completed');
      }
      return structuredClone(m.view);
    },
    events: ({ params, reply }) => {
      const m = known(params.id);
      reply.raw.writeHead(200, {
        [PROTOCOL_HEADER]: String(agent.protocol.current),
        'content-type': 'text/event-stream',
      });
      reply.raw.end(`event: migration\ndata: ${JSON.stringify(m.view)}\n\n`);
      return reply;
    },
    cancel: ({ params }) => {
      const m = known(params.id);
      if (m.view.role === 'source' && m.view.stage === 'transferring') {
        m.view.qemuStatus = 'cancelled';
        return stage(m, 'cancelled');
      }
      return structuredClone(m.view);
    },
    postcopy: ({ params }) => {
      const m = running(params.id, 'transferring');
      m.view.postcopyStarted = true;
      return stage(m, 'postcopy');
    },
    postcopyPause: ({ params }) => {
      const m = running(params.id, 'in post-copy');
      m.view.qemuStatus = 'postcopy-paused';
      return structuredClone(m.view);
    },
    postcopyResume: ({ params }) => {
      const m = running(params.id, 'in post-copy');
      m.view.qemuStatus = 'postcopy-active';
      m.view.recoveries = (m.view.recoveries ?? 0) + 1;
      return structuredClone(m.view);
    },
    recover: ({ params }) => {
      const m = as(params.id, 'destination');
      if (!m.view.postcopyStarted)
        throw new FerryError(
          'FERRY_E_VM_STATE',
          `The incoming migration ${params.id} is not a paused post-copy.`,
        );
      return { uri: 'tcp:127.0.0.1:49153' };
    },
    tune: ({ params, body }) => {
      const m = running(params.id, 'transferring');
      if (body.downtimeLimitMs !== undefined) m.view.downtimeLimitMs = Math.round(body.downtimeLimitMs);
      if (body.bandwidthBytesPerSec !== undefined) m.view.bandwidthBytesPerSec = body.bandwidthBytesPerSec;
      return structuredClone(m.view);
    },
    complete: ({ params }) => {
      const m = running(params.id, 'transferring');
      if (m.view.stage !== 'transferring')
        throw new FerryError('FERRY_E_VM_STATE', `Cannot complete in stage ${m.view.stage}.`);
      m.view.runState = 'paused';
      return structuredClone(m.view);
    },
    finish: async ({ params, body }) => {
      if (agent.finishHeld !== null) await agent.finishHeld;
      const m = as(params.id, 'destination');
      const st = m.view.stage;
      if (body.success) {
        if (st === 'finished') return structuredClone(m.view);
        if (st !== 'prepared' && st !== 'postcopy')
          throw new FerryError('FERRY_E_VM_STATE', `Migration ${params.id} is ${st} here.`);
        const vm = host.vms.get(m.view.vm);
        if (vm) Object.assign(vm, { state: 'running', qemuStatus: 'running' });
        return stage(m, 'finished');
      }
      if (st === 'discarded') return structuredClone(m.view);
      if (st === 'finished')
        throw new FerryError(
          'FERRY_E_VM_STATE',
          `Migration ${params.id} is finished here: the guest ran on this host.`,
        );
      host.vms.delete(m.view.vm);
      const receipt: DiscardReceipt = {
        version: 1,
        migration: params.id,
        vm: m.view.vm,
        host: host.name,
        at: now(),
        signature: '',
        certPem: '',
      };
      m.view.receipt = receipt;
      return stage(m, 'discarded');
    },
    confirm: ({ params, body }) => {
      const m = as(params.id, 'source');
      const st = m.view.stage;
      if (body.success) {
        if (st === 'confirmed') return structuredClone(m.view);
        if (st !== 'completed')
          throw new FerryError(
            st === 'transferring' ? 'FERRY_E_MIGRATION_ACTIVE' : 'FERRY_E_VM_STATE',
            `Migration ${params.id} is ${st} here.`,
          );
        host.vms.delete(m.view.vm);
        return stage(m, 'confirmed');
      }
      if (st === 'resumed') return structuredClone(m.view);
      if (st === 'confirmed')
        throw new FerryError(
          'FERRY_E_VM_STATE',
          `Migration ${params.id} was confirmed: the source copy is gone.`,
        );
      if (st === 'completed' && body.receipt === undefined)
        throw new FerryError(
          'FERRY_E_RECEIPT_REQUIRED',
          `Migration ${params.id} completed here: the source resumes only against the discard receipt.`,
        );
      const vm = host.vms.get(m.view.vm);
      if (vm && vm.state !== 'stopped') Object.assign(vm, { state: 'running', qemuStatus: 'running' });
      return stage(m, 'resumed');
    },
    coldPrepare: ({ params, body }) => {
      const spec = parseVmSpec(body.spec);
      if (host.vms.has(spec.name) && !migrations.has(params.id))
        throw new FerryError('FERRY_E_VM_EXISTS', `VM ${spec.name} exists on this host already.`);
      const m = migrations.get(params.id) ?? begin(params.id, 'destination', spec.name, 'prepared', false);
      if (!host.vms.has(spec.name)) host.put(spec, 'stopped');
      return structuredClone(m.view);
    },
    coldPerform: ({ params, body }) => {
      const vm = host.vms.get(body.vm);
      if (vm === undefined) throw new FerryError('FERRY_E_VM_NOT_FOUND', `No VM ${body.vm} on this host.`);
      const mode = body.mode ?? 'shutdown';
      if (mode === 'save' && vm.state === 'stopped')
        throw new FerryError('FERRY_E_VM_STATE', `VM ${body.vm} is stopped: there is no state to save.`);
      const m = migrations.get(params.id) ?? begin(params.id, 'source', body.vm, 'completed', false);
      if (mode === 'save') m.files.set('state', Buffer.from(`saved state of ${body.vm}\n`));
      Object.assign(vm, {
        state: mode === 'save' ? 'paused' : 'stopped',
        qemuStatus: mode === 'save' ? 'postmigrate' : null,
      });
      const files: ColdFile[] = [...m.files].map(([name, b]) => ({
        name,
        bytes: b.length,
        sha256: sha256(b),
      }));
      return { id: params.id, vm: body.vm, mode, files };
    },
    coldDownload: ({ params }) => {
      const b = known(params.id).files.get(params.name);
      if (b === undefined)
        throw new FerryError(
          'FERRY_E_NOT_FOUND',
          `Migration ${params.id} offers no file ${JSON.stringify(params.name)} here.`,
        );
      return { stream: Readable.from([b]), sha256: sha256(b), bytes: b.length };
    },
    coldUpload: async ({ params, headers, body }) => {
      if (!(body instanceof Readable))
        throw new FerryError('FERRY_E_BAD_INPUT', 'Send the file as application/octet-stream.');
      const m = known(params.id);
      if (m.view.role !== 'destination' || m.view.stage !== 'prepared')
        throw new FerryError('FERRY_E_VM_STATE', `Migration ${params.id} is not waiting for files here.`);
      const parts: Buffer[] = [];
      for await (const chunk of body) parts.push(chunk as Buffer);
      const b = Buffer.concat(parts);
      const want = headers[SHA256_HEADER].toLowerCase();
      if (sha256(b) !== want)
        throw new FerryError(
          'FERRY_E_VERIFY_FAILED',
          `File ${params.name}: sha256 ${sha256(b)} received, ${want} sent; nothing was replaced.`,
        );
      m.files.set(params.name, b);
      return { name: params.name, bytes: b.length, sha256: want };
    },
  };
}

export interface FakeAgentOptions {
  name?: string;
  inventory?: Partial<HostInventory>;
  /** Play an agent of other protocol versions (the controller's range checks). */
  protocol?: { current: number; min: number };
}

/** The fake agent: `start` it with an agent identity (certificates and the controller's pin). */
export class FakeAgent {
  readonly host: FakeVmHost;
  readonly migrations = new Map<string, FakeMigration>();
  readonly calls: string[] = [];
  /** The leader terms it has seen, as a real agent's (in memory). */
  readonly fence = new TermFence();
  /** How many reads of a source's view a perform takes to complete. */
  completeAfterPolls = 1;
  /** While set, a finish waits for it before it answers: an answer held up by a cut link. */
  finishHeld: Promise<void> | null = null;
  /** Called when a perform starts a migration here, to script the source's view. */
  onPerform: ((view: AgentMigrationView) => void) | null = null;
  private app: FastifyInstance | undefined;
  port = 0;

  constructor(private readonly opts: FakeAgentOptions = {}) {
    this.host = new FakeVmHost(opts.name ?? 'h1', {
      ...(opts.protocol === undefined ? {} : { protocol: opts.protocol.current }),
      ...opts.inventory,
    });
  }

  /** Makes the agent know a migration in the state of `view` (its files none). */
  seed(view: AgentMigrationView): void {
    this.migrations.set(view.id, { view: structuredClone(view), files: new Map(), polls: 0 });
  }

  get protocol(): { current: number; min: number } {
    return this.opts.protocol ?? PROTOCOL_RANGE;
  }

  get url(): string {
    return `https://127.0.0.1:${this.port}`;
  }

  async start(tls: AgentIdentity, port = 0): Promise<void> {
    const app = agentFastify({
      tls,
      fence: this.fence,
      ...(this.opts.protocol === undefined ? {} : { protocol: this.opts.protocol }),
    });
    app.addHook('onRequest', async (req) => {
      this.calls.push(`${req.method} ${req.url}`);
    });
    mountAgentRoutes(app, {
      ...hostHandlers(this.host, undefined, { protocol: this.protocol, certificate: () => certificateView(tls.certPem) }),
      version: () => ({ agentVersion: 'fake', protocol: { ...this.protocol } }),
      ...fakeMigrationHandlers(this),
    });
    await app.listen({ host: '127.0.0.1', port });
    this.port = (app.server.address() as AddressInfo).port;
    this.app = app;
  }

  async stop(): Promise<void> {
    const app = this.app;
    this.app = undefined;
    if (app === undefined) return;
    app.server.closeAllConnections();
    await app.close();
  }
}

/**
 * A fake agent joined to `ctl` through its host registry with a join token, listening with the
 * certificate the join handed out, polled once. The agent's port goes into its URL at the join, so it binds
 * first with a throwaway certificate.
 */
export async function joinFakeAgent(ctl: Controller, name: string): Promise<FakeAgent> {
  const agent = new FakeAgent({ name });
  const boot = await ctl.ca.issueAgentCert(name, ['127.0.0.1']);
  await agent.start({ caPem: ctl.ca.caCertPem, ...boot, controllerPin: ctl.ca.controllerPin });
  const port = agent.port;
  await agent.stop();
  const { token } = createJoinToken(ctl.store);
  const j = await ctl.hosts.join({ token, name, agentUrl: `https://127.0.0.1:${port}` }, 'https://127.0.0.1:1', '127.0.0.1');
  await agent.start({ caPem: j.caCertPem, certPem: j.certPem, keyPem: j.keyPem, controllerPin: j.controllerPin }, port);
  await ctl.hosts.poll(name);
  return agent;
}
