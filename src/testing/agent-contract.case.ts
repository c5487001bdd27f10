/**
 * The agent route contract: one suite, run against every implementation of the route table — the real
 * agent app (src/agent/contract.test.ts: buildAgentApp and the migration routes over a fake VmHost and an
 * empty migration host) and the fake agent (src/testing/fake-agent.test.ts) — the way hono runs one router
 * suite against every router. What it holds both to:
 *
 * - every route of the table is served, and a valid request answers the route's schema with its success
 *   status, or the error envelope with a code of the registry (never a validation error: the sample is valid);
 * - a bad body (not an object; one property of the wrong type) is 400 with the envelope;
 * - an id or name the agent does not know is 404 with the code the table names for the route;
 * - the protocol header: the current and the previous version are served, others are 400
 *   FERRY_E_AGENT_PROTOCOL naming both versions; every answer carries the agent's version.
 *
 * Requests go through the controller's typed client where it serves the route, raw HTTPS otherwise.
 */
import { MigrationPorts } from '../agent/migration/ports.ts';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { TSchema } from 'typebox';
import { Value } from 'typebox/value';
import { request } from 'undici';
import { emptyView, type AgentMigrationView } from '../common/agent-migration.ts';
import {
  AGENT_ROUTES,
  ROUTE_NAMES,
  SHA256_HEADER,
  fillPath,
  type RouteName,
  type RouteSpec,
} from '../common/agent-routes.ts';
import { ERRORS, FerryError, isErrorCode } from '../common/errors.ts';
import { AGENT_PROTOCOL, AGENT_PROTOCOL_MIN, ErrorEnvelope, PROTOCOL_HEADER } from '../common/protocol.ts';
import { defaultVmSpec, type VmSpec } from '../common/spec.ts';
import type { AgentIdentity } from '../agent/identity.ts';
import { registerMigrationRoutes, type MigrationHost } from '../agent/migration/routes.ts';
import { saveRecord } from '../agent/migration/record.ts';
import { buildAgentApp } from '../agent/server.ts';
import { caFromPem, createCaCert, type ClusterCa } from '../controller/ca.ts';
import {
  AgentPool,
  type AgentClient,
  type CallInput,
  type CallRouteName,
  type UploadRouteName,
} from '../controller/agent-client.ts';
import { FakeAgent, FakeVmHost } from './fake-agent.ts';

/** What every implementation is started with: its identity, one VM it runs, two migrations it knows. */
export interface ContractWorld {
  tls: AgentIdentity;
  /** Running on the agent. */
  vm: VmSpec;
  /** `m-src`: this agent was the source, confirmed; `m-dst`: the destination, discarded. */
  migrations: AgentMigrationView[];
}

export interface ContractAgent {
  url: string;
  close(): Promise<void>;
}

export type ContractFactory = (world: ContractWorld) => Promise<ContractAgent>;

/** The real agent's routes, with a fake VmHost, and its migration routes over a host that has no room. */
export const realAgent: ContractFactory = async (world) => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-contract-'));
  for (const view of world.migrations) await saveRecord(dir, { version: 1, view, runDir: null });
  const vms = new FakeVmHost('h1');
  vms.put(world.vm);
  const host: MigrationHost = {
    name: 'h1',
    dataDir: dir,
    accel: 'tcg',
    migrationAddress: '127.0.0.1',
    migrationPorts: new MigrationPorts(null),
    // No room: an incoming VM is refused before any QEMU could start (no QEMU in unit tests).
    admit: async () => {
      throw new FerryError('FERRY_E_NO_CAPACITY', 'The contract host has no room.');
    },
    exclusive: (_name, fn) => fn(undefined),
    adopt: () => undefined,
    forget: () => undefined,
    ensureTaps: async () => ({}),
    releaseTaps: async () => undefined,
  };
  const app = buildAgentApp({ host: vms, tls: world.tls });
  registerMigrationRoutes({ app, host, tls: null });
  await app.listen({ host: '127.0.0.1', port: 0 });
  return {
    url: `https://127.0.0.1:${(app.server.address() as AddressInfo).port}`,
    close: async () => {
      await app.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
};

/** The fake agent, seeded with the same world. */
export const fakeAgent: ContractFactory = async (world) => {
  const agent = new FakeAgent({ name: 'h1' });
  agent.host.put(world.vm);
  for (const view of world.migrations) agent.seed(view);
  await agent.start(world.tls);
  return { url: agent.url, close: () => agent.stop() };
};

const UPLOAD = Buffer.from('not a disk\n');
const UPLOAD_SHA = createHash('sha256').update(UPLOAD).digest('hex');

/** The params of each upload's sample: a cold file of a migration the agent knows, or an image by its sha256. */
const UPLOAD_PARAMS: Record<UploadRouteName, Record<string, string>> = {
  coldUpload: { id: 'm-dst', name: 'vda' },
  putImage: { sha256: UPLOAD_SHA },
};

/** A valid request of every route the typed client calls, in the table's order (state carries over). */
const SAMPLES: { [N in CallRouteName]: CallInput<N> } = {
  version: {},
  certificate: {},
  inventory: {},
  listVms: {},
  createVm: { body: { spec: defaultVmSpec('v2') } },
  getVm: { params: { name: 'v1' } },
  stopVm: { params: { name: 'v1' }, body: { timeoutMs: 1000 } },
  startVm: { params: { name: 'v1' } },
  pauseVm: { params: { name: 'v1' } },
  resumeVm: { params: { name: 'v1' } },
  deleteVm: { params: { name: 'v2' } },
  guest: { params: { name: 'v1' }, body: { command: 'ping 1' } },
  console: { params: { name: 'v1' } },
  sharedDisks: { params: { name: 'v1' } },
  dirtyRate: { params: { name: 'v1' } },
  listImages: {},
  metrics: {},
  prepare: {
    params: { id: 'm-in' },
    body: { spec: defaultVmSpec('v3'), listenAddress: '127.0.0.1', storage: 'shared' },
  },
  perform: { params: { id: 'm-out' }, body: { vm: 'v1', uri: 'tcp:127.0.0.1:49152', storage: 'shared' } },
  migration: { params: { id: 'm-src' } },
  cancel: { params: { id: 'm-src' } },
  postcopy: { params: { id: 'm-src' } },
  postcopyPause: { params: { id: 'm-src' } },
  postcopyResume: { params: { id: 'm-src' }, body: { uri: 'tcp:127.0.0.1:49153' } },
  recover: { params: { id: 'm-dst' } },
  tune: { params: { id: 'm-src' }, body: { downtimeLimitMs: 100 } },
  complete: { params: { id: 'm-src' } },
  finish: { params: { id: 'm-dst' }, body: { success: false } },
  confirm: { params: { id: 'm-src' }, body: { success: true } },
  coldPrepare: { params: { id: 'm-cold-in' }, body: { spec: defaultVmSpec('v4'), start: false } },
  coldPerform: { params: { id: 'm-cold-out' }, body: { vm: 'v1', mode: 'shutdown' } },
};

/** Routes both implementations must answer with success in the contract's world. */
const SUCCEED = new Set<RouteName>([
  'version',
  'inventory',
  'listVms',
  'createVm',
  'getVm',
  'stopVm',
  'startVm',
  'pauseVm',
  'resumeVm',
  'deleteVm',
  'guest',
  'console',
  'sharedDisks',
  'dirtyRate',
  'metrics',
  'migration',
  'events',
  'cancel',
  'finish',
  'confirm',
  'listImages',
  'putImage',
]);
/** What a valid request must never get back: it was valid, the route exists, the versions match. */
const NEVER = new Set([
  'FERRY_E_BAD_INPUT',
  'FERRY_E_BAD_SPEC',
  'FERRY_E_BAD_NAME',
  'FERRY_E_AGENT_PROTOCOL',
  'FERRY_E_INTERNAL',
  'FERRY_E_AGENT_UNREACHABLE',
  'FERRY_E_FORBIDDEN',
]);

interface Raw {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

/** A wrong value for a property schema (another JSON type than it allows), or undefined when none is clear. */
function wrongFor(s: TSchema): unknown {
  const t = (s as { type?: unknown }).type;
  if ((s as { enum?: unknown }).enum !== undefined) return 'not-one-of-them';
  if (t === 'string') return 42;
  if (t === 'number' || t === 'integer') return 'soon';
  if (t === 'boolean') return 'yes';
  if (t === 'object' || t === 'array') return 'x';
  return undefined;
}

export function agentContract(label: string, factory: ContractFactory): void {
  let ca: ClusterCa;
  let pool: AgentPool;
  let agent: ContractAgent;
  let client: AgentClient;

  before(async () => {
    const c = await createCaCert('contract CA');
    ca = await caFromPem(c.certPem, c.keyPem);
    const cert = await ca.issueAgentCert('h1', ['127.0.0.1']);
    const view = (
      id: string,
      role: 'source' | 'destination',
      stage: AgentMigrationView['stage'],
    ): AgentMigrationView => ({
      ...emptyView({ id, role, vm: 'v9', stage, storage: 'shared', tls: true, uri: null }),
      finishedAt: new Date().toISOString(),
    });
    agent = await factory({
      tls: {
        caPem: ca.caCertPem,
        certPem: cert.certPem,
        keyPem: cert.keyPem,
        controllerPin: ca.controllerPin,
      },
      vm: defaultVmSpec('v1'),
      migrations: [view('m-src', 'source', 'confirmed'), view('m-dst', 'destination', 'discarded')],
    });
    pool = new AgentPool({ caCertPem: ca.caCertPem, ...ca.controllerClient });
    client = pool.client('h1', agent.url);
  });

  after(async () => {
    await agent?.close();
    await pool?.close();
  });

  const raw = async (
    name: RouteName,
    o: {
      params?: Record<string, string>;
      body?: unknown;
      headers?: Record<string, string>;
      protocol?: string | null;
    } = {},
  ): Promise<Raw> => {
    const def: RouteSpec = AGENT_ROUTES[name];
    const headers: Record<string, string> = { ...o.headers };
    if (o.protocol !== null) headers[PROTOCOL_HEADER] = o.protocol ?? String(AGENT_PROTOCOL);
    let body: string | Readable | null = null;
    if (o.body instanceof Readable) body = o.body;
    else if (o.body !== undefined) {
      body = typeof o.body === 'string' ? o.body : JSON.stringify(o.body);
      headers['content-type'] ??= 'application/json';
    }
    const res = await request(new URL(fillPath(name, o.params), agent.url), {
      method: def.method,
      dispatcher: pool.dispatcher,
      headers,
      body,
    });
    return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
  };

  /** An error answer: the envelope, a code of the registry, the registry's status (or the protocol's 400). */
  const envelope = (r: Raw, what: string): string => {
    const parsed = JSON.parse(r.text) as unknown;
    assert.ok(Value.Check(ErrorEnvelope, parsed), `${what}: not the error envelope: ${r.text}`);
    const code = (parsed as { error: { code: string } }).error.code;
    assert.ok(isErrorCode(code), `${what}: ${code} is not in the registry`);
    assert.equal(
      r.status,
      code === 'FERRY_E_AGENT_PROTOCOL' ? 400 : ERRORS[code].status,
      `${what}: status of ${code}`,
    );
    return code;
  };

  test(`${label}: every route answers its schema or the error envelope`, async () => {
    for (const name of ROUTE_NAMES) {
      const def: RouteSpec = AGENT_ROUTES[name];
      if (def.stream === 'events' || def.stream === 'download' || def.stream === 'upload') {
        const r =
          def.stream === 'upload'
            ? await raw(name, {
                params: UPLOAD_PARAMS[name as UploadRouteName],
                headers: { [SHA256_HEADER]: UPLOAD_SHA, 'content-type': 'application/octet-stream' },
                body: Readable.from([UPLOAD]),
              })
            : await raw(name, {
                params: def.stream === 'events' ? { id: 'm-src' } : { id: 'm-src', name: 'vda' },
              });
        assert.equal(
          r.headers[PROTOCOL_HEADER],
          String(AGENT_PROTOCOL),
          `${name}: the answer carries the agent's version`,
        );
        if (r.status >= 400) {
          assert.ok(!SUCCEED.has(name), `${name} must succeed: ${r.text}`);
          assert.ok(!NEVER.has(envelope(r, name)), `${name}: ${r.text}`);
          continue;
        }
        if (def.stream === 'upload') {
          assert.ok(
            Value.Check(def.response, JSON.parse(r.text)),
            `${name}: the answer is not its schema: ${r.text}`,
          );
          continue;
        }
        assert.equal(def.stream, 'events', `${name} answered ${r.status}`);
        assert.match(String(r.headers['content-type']), /^text\/event-stream/);
        const data = /^data: (.*)$/m.exec(r.text)?.[1];
        assert.ok(data !== undefined && Value.Check(def.response, JSON.parse(data)), `${name}: ${r.text}`);
        continue;
      }
      const call = name as CallRouteName;
      try {
        // A sample per route: the union of inputs is what the client's overloads take one at a time.
        const out = await (client.call as (n: CallRouteName, i: unknown) => Promise<unknown>)(
          call,
          SAMPLES[call],
        );
        assert.ok(Value.Check(def.response, out), `${name}: the answer is not its schema`);
      } catch (err) {
        assert.ok(err instanceof FerryError, `${name}: ${String(err)}`);
        assert.ok(!SUCCEED.has(name), `${name} must succeed: ${err.code} ${err.message}`);
        assert.ok(!NEVER.has(err.code), `${name}: ${err.code} ${err.message}`);
        assert.ok(!/^No route/.test(err.message), `${name} is not served: ${err.message}`);
      }
    }
  });

  test(`${label}: an image whose bytes do not match its sha256 is refused and kept nowhere; a second PUT finds it present`, async () => {
    const other = createHash('sha256').update('other bytes').digest('hex');
    const bad = await raw('putImage', {
      params: { sha256: other },
      headers: { 'content-type': 'application/octet-stream' },
      body: Readable.from([UPLOAD]),
    });
    assert.equal(envelope(bad, 'putImage mismatch'), 'FERRY_E_IMAGE_CHECKSUM');
    assert.ok(!(await client.call('listImages')).some((i) => i.sha256 === other), 'nothing kept');
    const again = await client.upload('putImage', {
      params: { sha256: UPLOAD_SHA },
      headers: undefined,
      body: Readable.from([UPLOAD]),
    });
    assert.deepEqual(again, { sha256: UPLOAD_SHA, bytes: UPLOAD.length, action: 'present' });
    assert.deepEqual(await client.call('listImages'), [{ sha256: UPLOAD_SHA, bytes: UPLOAD.length }]);
  });

  test(`${label}: success statuses are the table's`, async () => {
    const created = await raw('createVm', { body: { spec: defaultVmSpec('v5') } });
    assert.equal(created.status, AGENT_ROUTES.createVm.status, created.text);
    for (const name of ['version', 'inventory', 'getVm'] as const) {
      const r = await raw(name, { params: { name: 'v1' } });
      assert.equal(r.status, AGENT_ROUTES[name].status, `${name}: ${r.text}`);
    }
  });

  test(`${label}: a bad body is 400 with the error envelope`, async () => {
    for (const name of ROUTE_NAMES) {
      const def: RouteSpec = AGENT_ROUTES[name];
      const sample = (
        SAMPLES as Partial<
          Record<RouteName, { params?: Record<string, string>; body?: Record<string, unknown> }>
        >
      )[name];
      if (def.stream === 'upload') {
        // The sha256 the bytes are checked against is missing or malformed (a header, or the image's param).
        const r = await raw(name, {
          params: name === 'putImage' ? { sha256: 'not-a-sha256' } : UPLOAD_PARAMS[name as UploadRouteName],
          headers: { 'content-type': 'application/octet-stream' },
          body: Readable.from([UPLOAD]),
        });
        assert.equal(r.status, 400, `${name} without its sha256: ${r.text}`);
        envelope(r, name);
        continue;
      }
      if (def.body === undefined || sample === undefined) continue;
      const notObject = await raw(name, { params: sample.params ?? {}, body: '[1]' });
      assert.equal(notObject.status, 400, `${name} [1]: ${notObject.text}`);
      envelope(notObject, name);
      const props = (def.body as { properties?: Record<string, TSchema> }).properties ?? {};
      for (const [key, schema] of Object.entries(props)) {
        const wrong = wrongFor(schema);
        if (wrong === undefined) continue;
        const r = await raw(name, { params: sample.params ?? {}, body: { ...sample.body, [key]: wrong } });
        assert.equal(r.status, 400, `${name} with ${key}: ${JSON.stringify(wrong)}: ${r.text}`);
        assert.match(envelope(r, `${name}.${key}`), /^FERRY_E_BAD_(INPUT|SPEC|NAME)$/);
      }
    }
  });

  test(`${label}: unknown ids and names are 404 with the table's code`, async () => {
    for (const name of ROUTE_NAMES) {
      const def: RouteSpec = AGENT_ROUTES[name];
      if (def.unknown === undefined) continue;
      const sample = (SAMPLES as Partial<Record<RouteName, { body?: unknown }>>)[name];
      const params = { id: 'm-unknown', name: def.path.startsWith('/vms') ? 'nope' : 'vda' };
      const r =
        def.stream === 'upload'
          ? await raw(name, {
              params,
              headers: { [SHA256_HEADER]: UPLOAD_SHA, 'content-type': 'application/octet-stream' },
              body: Readable.from([UPLOAD]),
            })
          : await raw(name, { params, ...(sample?.body === undefined ? {} : { body: sample.body }) });
      assert.equal(r.status, 404, `${name}: ${r.text}`);
      assert.equal(envelope(r, name), def.unknown, name);
    }
    const none = await raw('inventory', {});
    assert.equal(none.status, 200);
    const nothing = await request(new URL('/agent/v1/nothing-here', agent.url), {
      dispatcher: pool.dispatcher,
      headers: { [PROTOCOL_HEADER]: String(AGENT_PROTOCOL) },
    });
    const text = await nothing.body.text();
    assert.equal(
      envelope({ status: nothing.statusCode, headers: nothing.headers, text }, 'no route'),
      'FERRY_E_NOT_FOUND',
    );
  });

  test(`${label}: the current and previous protocol versions are served, others refused naming both`, async () => {
    for (const v of [AGENT_PROTOCOL, AGENT_PROTOCOL_MIN]) {
      const r = await raw('inventory', { protocol: String(v) });
      assert.equal(r.status, 200, `version ${v}: ${r.text}`);
      assert.equal(r.headers[PROTOCOL_HEADER], String(AGENT_PROTOCOL));
    }
    for (const v of [null, String(AGENT_PROTOCOL + 1), String(AGENT_PROTOCOL_MIN - 1), 'two']) {
      const r = await raw('inventory', { protocol: v });
      assert.equal(envelope(r, `version ${String(v)}`), 'FERRY_E_AGENT_PROTOCOL');
      const e = (
        JSON.parse(r.text) as {
          error: { message: string; details: { agentProtocol: number; agentMinProtocol: number } };
        }
      ).error;
      assert.deepEqual(
        [e.details.agentProtocol, e.details.agentMinProtocol],
        [AGENT_PROTOCOL, AGENT_PROTOCOL_MIN],
      );
      assert.ok(
        e.message.includes(String(AGENT_PROTOCOL)) && e.message.includes(JSON.stringify(v)),
        e.message,
      );
      assert.equal(r.headers[PROTOCOL_HEADER], String(AGENT_PROTOCOL));
    }
    const version = await client.call('version');
    assert.deepEqual(version.protocol, { current: AGENT_PROTOCOL, min: AGENT_PROTOCOL_MIN });
  });
}
