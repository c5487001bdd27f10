/**
 * Hostile input against every route of the API, with fast-check. The routes come from the app's own
 * OpenAPI document (plus the hidden ones fastify knows), so a new route is fuzzed without touching this
 * file. The controller is real (SQLite file in a temp dir, real HTTPS); the one host's agent is a fake at
 * the wire (mTLS from the cluster CA) that accepts what a healthy agent would, so that a valid request ends
 * 2xx and only the controller's own answers are under test.
 *
 * Properties, for every request: no answer ≥ 500; every error is the envelope `{error:{code,message}}`
 * with a registered FERRY_E_* code whose status is the HTTP status; the status is one the document declares
 * for the route; a 4xx changes nothing in the store
 * (every table but the event log); a JSON body over the limit is a 413; and the controller still answers
 * at the end. Most requests go through `inject()`; a smaller run goes over real HTTPS, and raw bytes over
 * TLS for what only a socket can send (broken request lines, chunked encoding, header floods).
 *
 * FERRY_FUZZ_SEED (default fixed) and FERRY_FUZZ_RUNS (inject runs; the HTTPS runs scale with it) let
 * anyone explore further; a failure prints the seed and path to replay it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { tracingChannel } from 'node:diagnostics_channel';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { Agent, request } from 'undici';
import { ERRORS, isErrorCode } from '../../common/errors.ts';
import { AGENT_PROTOCOL, PROTOCOL_HEADER, type HostInventory } from '../../common/protocol.ts';
import { defaultVmSpec } from '../../common/spec.ts';
import { createController, type Controller } from '../controller.ts';
import { nowIso } from '../store/db.ts';
import { BODY_LIMIT, buildApp } from './app.ts';
import type { App } from './types.ts';

const SEED = process.env.FERRY_FUZZ_SEED === undefined ? 20_250_707 : Number(process.env.FERRY_FUZZ_SEED);
const RUNS = process.env.FERRY_FUZZ_RUNS === undefined ? 2500 : Number(process.env.FERRY_FUZZ_RUNS);
const HTTPS_RUNS = Math.max(50, Math.round(RUNS / 8));
const RAW_RUNS = Math.max(50, Math.round(RUNS / 12));

// --- the routes, from the app -----------------------------------------------------------------------

/** The subset of JSON Schema that TypeBox emits and @fastify/swagger publishes. */
interface Schema {
  type?: string;
  properties?: Record<string, Schema>;
  required?: string[];
  additionalProperties?: boolean | Schema;
  items?: Schema;
  anyOf?: Schema[];
  const?: unknown;
  enum?: unknown[];
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  minItems?: number;
  maxItems?: number;
}

interface Param {
  name: string;
  in: 'path' | 'query' | 'header';
  required?: boolean;
  schema: Schema;
}

interface Operation {
  parameters?: Param[];
  requestBody?: { content: Record<string, { schema: Schema }> };
  responses?: Record<string, { content?: Record<string, unknown> }>;
  security?: unknown[];
}

interface Route {
  method: string;
  /** fastify's form, `/api/v1/vms/:name`. */
  url: string;
  params: Param[];
  query: Param[];
  body: Schema | undefined;
  /** Declared text/event-stream: an answer that never ends, so it is read over HTTPS up to its headers. */
  streaming: boolean;
  public: boolean;
  /** The statuses the document declares for it (`2XX` style ranges included); none for hidden routes. */
  statuses: string[] | undefined;
}

/**
 * Every route fastify's router has, hidden from the document or not, read from its printed tree (each
 * level indented by four columns and holding the part of the path after its parent's).
 */
function routerRoutes(app: App): { method: string; url: string }[] {
  const out: { method: string; url: string }[] = [];
  const stack: string[] = [];
  for (const line of app.printRoutes({ commonPrefix: false }).split('\n')) {
    const start = line.search(/[^\s│├└─]/);
    if (start < 0) continue;
    const depth = Math.floor(start / 4);
    const m = /^(\S+)(?: \(([A-Z, ]+)\))?/.exec(line.slice(start));
    if (!m) continue;
    stack.length = depth;
    stack[depth] = m[1]!;
    for (const method of m[2]?.split(', ') ?? []) if (method !== 'HEAD') out.push({ method, url: stack.join('') });
  }
  return out;
}

function routesOf(app: App, hidden: readonly { method: string; url: string }[]): Route[] {
  const doc = app.swagger() as unknown as { paths: Record<string, Record<string, Operation>> };
  const routes: Route[] = [];
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const params = op.parameters ?? [];
      routes.push({
        method: method.toUpperCase(),
        url: path.replace(/\{(\w+)\}/g, ':$1'),
        params: params.filter((p) => p.in === 'path'),
        query: params.filter((p) => p.in === 'query'),
        body: op.requestBody?.content['application/json']?.schema,
        streaming: Object.values(op.responses ?? {}).some((r) => Object.keys(r.content ?? {}).includes('text/event-stream')),
        public: Array.isArray(op.security) && op.security.length === 0,
        statuses: Object.keys(op.responses ?? {}),
      });
    }
  }
  // Routes hidden from the document still take requests.
  for (const h of hidden) {
    if (!routes.some((r) => r.method === h.method && r.url === h.url)) {
      routes.push({ method: h.method, url: h.url, params: [], query: [], body: undefined, streaming: false, public: false, statuses: undefined });
    }
  }
  return routes;
}

// --- the controller under test, and a fake agent at the wire -----------------------------------------

interface Env {
  ctl: Controller;
  app: App;
  token: string;
  url: string;
  client: Agent;
  imageDir: string;
  routes: Route[];
  /** Resolves once no route handler is running (fastify's diagnostics channel counts them). */
  quiet(): Promise<void>;
}

const INVENTORY = (migrationAddress: string): HostInventory => ({
  name: 'h1',
  protocol: 1,
  cpu: { model: 'fuzz', vendor: 'fuzz', flags: [], cores: 64 },
  memoryBytes: 2 ** 44,
  freeMemoryBytes: 2 ** 44,
  accel: 'tcg',
  qemu: { version: '10.0.2', machineTypes: ['pc-q35-10.0'] },
  migrationAddress,
  agentVersion: 'fuzz',
});

/**
 * The agent's VM routes, answered as a healthy agent would; `…-refused` VMs are refused (409) on
 * create, to exercise the controller's undo. Migration routes are not served: with one host no
 * migration is ever placed.
 */
async function startFakeAgent(ctl: Controller): Promise<HttpsServer> {
  const leaf = await ctl.ca.issueAgentCert('h1', ['127.0.0.1']);
  const server = createHttpsServer({ cert: leaf.certPem, key: leaf.keyPem, ca: ctl.ca.caCertPem, requestCert: true, rejectUnauthorized: true }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const send = (status: number, body: unknown, type = 'application/json'): void => {
        // An agent states its protocol on every answer; the controller refuses one that does not.
        res.writeHead(status, { 'content-type': type, [PROTOCOL_HEADER]: String(AGENT_PROTOCOL) });
        res.end(type === 'application/json' ? JSON.stringify(body) : String(body));
      };
      const m = /^\/agent\/v1\/vms(?:\/([^/]+))?(?:\/(\w+))?$/.exec(req.url ?? '');
      if (!m) return send(404, { error: { code: 'FERRY_E_NOT_FOUND', message: `fake agent: no ${req.url}` } });
      const name = m[1] === undefined ? '' : decodeURIComponent(m[1]);
      const status = (state: string, spec = defaultVmSpec(name || 'x')) => ({ name: spec.name, state, qemuStatus: state, pid: null, bootId: 'boot-fuzz', spec, startedAt: nowIso() });
      if (req.method === 'POST' && m[1] === undefined) {
        const { spec } = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { spec: ReturnType<typeof defaultVmSpec> };
        if (spec.name.endsWith('-refused')) return send(409, { error: { code: 'FERRY_E_VM_STATE', message: 'fake agent refuses this one' } });
        return send(200, status('running', spec));
      }
      if (req.method === 'DELETE') return send(200, { deleted: true });
      if (m[2] === 'start') return send(200, status('running'));
      if (m[2] === 'stop') return send(200, status('stopped'));
      if (m[2] === 'guest') return send(200, { ok: true });
      if (m[2] === 'console') return send(200, 'fuzz console\n', 'text/plain');
      if (req.method === 'GET') return send(200, status('running'));
      return send(404, { error: { code: 'FERRY_E_NOT_FOUND', message: 'fake agent: no such route' } });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

/** The objects requests are about; put back before each request when a previous one removed them. */
function ensureFixture(ctl: Controller, agentUrl: string): void {
  const db = ctl.store.sql;
  const now = nowIso();
  db.prepare("INSERT OR IGNORE INTO hosts (name, url, state, maintenance, inventory, last_seen_at, joined_at) VALUES ('h1', ?, 'ready', 0, ?, ?, ?)").run(
    agentUrl,
    JSON.stringify(INVENTORY('127.0.0.1')),
    now,
    now,
  );
  db.prepare("UPDATE hosts SET maintenance = 0 WHERE name = 'h1'").run();
  const vm = db.prepare("INSERT OR IGNORE INTO vms (name, host, state, spec, boot_id, ip, created_at, updated_at) VALUES (?, 'h1', ?, ?, 'boot-fuzz', NULL, ?, ?)");
  vm.run('v1', 'running', JSON.stringify(defaultVmSpec('v1')), now, now);
  vm.run('v2', 'stopped', JSON.stringify(defaultVmSpec('v2')), now, now);
  vm.run('v3', 'migrating', JSON.stringify(defaultVmSpec('v3')), now, now);
  const job = db.prepare(
    `INSERT OR IGNORE INTO migrations (id, vm, source, destination, mode, state, phase, policy, why, started_at, updated_at, timeline)
     VALUES (?, ?, 'h1', 'h2', 'live', ?, 'begin', '{}', '[]', ?, ?, '[]')`,
  );
  job.run('m-fuzzdone', 'v1', 'failed', now, now);
  job.run('m-fuzzlive', 'v3', 'queued', now, now);
}

/** Every table but the event log (a 4xx may well be logged) and the schema's own bookkeeping. */
function snapshot(ctl: Controller): Record<string, string> {
  const db = ctl.store.sql;
  const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN ('events', 'schema_migrations', 'sqlite_sequence') ORDER BY name").all() as { name: string }[]).map((r) => r.name);
  return Object.fromEntries(tables.map((t) => [t, JSON.stringify(db.prepare(`SELECT * FROM "${t}" ORDER BY rowid`).all())]));
}

async function withEnv(fn: (env: Env) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-fuzz-'));
  let ctl: Controller | undefined;
  let app: App | undefined;
  let agent: HttpsServer | undefined;
  let client: Agent | undefined;
  // Handlers of streaming routes hijack their reply and never report an end: those are not counted.
  const running = new Set<object>();
  let streaming = new Set<string>();
  type HandlerStore = { async?: boolean; route: { url: string; method: string } };
  const handlers = tracingChannel<unknown, HandlerStore>('fastify.request.handler');
  const counting = {
    start: (s: HandlerStore) => void (streaming.has(s.route.url) ? undefined : running.add(s)),
    end: (s: HandlerStore) => void (s.async ? undefined : running.delete(s)),
    asyncStart: () => undefined,
    asyncEnd: (s: HandlerStore) => void running.delete(s),
    error: () => undefined,
  };
  handlers.subscribe(counting);
  try {
    ctl = await createController({
      dataDir: join(dir, 'data'),
      heartbeats: false,
      recover: false,
      probe: false,
      vmNetworks: [{ name: 'vm0', cidr: '10.77.0.0/16' }],
    });
    const leaf = await ctl.ca.issue('ferry-server', ['127.0.0.1']);
    const hidden: { method: string; url: string }[] = [];
    app = await buildApp(ctl, { tls: leaf });
    await app.listen({ host: '127.0.0.1', port: 0 });
    hidden.push(...routerRoutes(app));
    agent = await startFakeAgent(ctl);
    const agentUrl = `https://127.0.0.1:${(agent.address() as AddressInfo).port}`;
    ensureFixture(ctl, agentUrl);
    const imageDir = join(dir, 'image');
    mkdirSync(imageDir);
    writeFileSync(join(imageDir, 'vmlinuz'), 'kernel');
    writeFileSync(join(imageDir, 'initramfs.gz'), 'initrd');
    client = new Agent({ connect: { ca: ctl.ca.caCertPem }, keepAliveTimeout: 1000 });
    const env: Env = {
      ctl,
      app,
      token: ctl.newAdminToken!,
      url: `https://127.0.0.1:${(app.server.address() as AddressInfo).port}`,
      client,
      imageDir,
      routes: routesOf(app, hidden),
      quiet: async () => {
        while (running.size > 0) await sleep(2);
      },
    };
    // By path: fastify runs the GET handler for HEAD too.
    streaming = new Set(env.routes.filter((r) => r.streaming).map((r) => r.url));
    await fn(env);
    // Fixture put back once more, for the checks that follow.
    ensureFixture(ctl, agentUrl);
  } finally {
    handlers.unsubscribe(counting);
    await client?.close();
    await app?.close();
    if (agent) await new Promise<void>((resolve) => agent!.close(() => resolve()));
    await ctl?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

// --- what a hostile client sends --------------------------------------------------------------------

interface Req {
  route: Route;
  method: string;
  url: string;
  headers: Record<string, string>;
  body: string | Buffer | undefined;
}

/** Strings that break things: NUL, lone surrogates, RTL marks, path tricks, SQL and JSON look-alikes. */
const nasty = fc.constantFrom(
  '',
  ' ',
  '\0',
  'a\0b',
  '\ud800',
  '\u202e\u0000',
  '😀',
  'ｖ１',
  '..',
  '../../etc/passwd',
  '/etc',
  '%00',
  "'; DROP TABLE vms; --",
  '{"a":1}',
  '__proto__',
  'constructor',
  'toString',
  'null',
  'NaN',
  '-1',
  '1e999',
  '9'.repeat(400),
  'x'.repeat(70),
  'A',
  'v1 ',
  'v1\n',
);
const hostileString = fc.oneof(nasty, fc.string({ unit: 'binary', maxLength: 40 }), fc.string({ unit: 'grapheme', maxLength: 40 }), fc.string({ minLength: 200, maxLength: 5000 }));
const hugeNumber = fc.constantFrom(1e308, -1e308, Number.MAX_SAFE_INTEGER + 2, -Number.MAX_SAFE_INTEGER, 2 ** 63, -0, 0, -1, 0.5, 1e-320);
const nested = (depth: number, leaf: unknown, asArray: boolean): unknown => {
  let v = leaf;
  for (let i = 0; i < depth; i++) v = asArray ? [v] : { a: v };
  return v;
};
const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: hostileString },
  { weight: 2, arbitrary: hugeNumber },
  fc.constant(null),
  fc.boolean(),
  fc.integer(),
  fc.double(),
  fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 5 }),
  fc.dictionary(hostileString, fc.jsonValue({ maxDepth: 2 }), { maxKeys: 5 }),
  fc.tuple(fc.integer({ min: 10, max: 3000 }), fc.boolean()).map(([d, a]) => nested(d, 'x', a)),
);

/** Values that mean something to the fixture, so requests also reach objects that exist. */
const POOLS: Record<string, readonly string[]> = {
  name: ['v1', 'v2', 'v3', 'new1', 'new2', 'new-refused', 'h1', 'nope'],
  host: ['h1', 'h2'],
  to: ['h1', 'h2'],
  vm: ['v1', 'v3'],
  network: ['vm0', 'nonet'],
  id: ['m-fuzzdone', 'm-fuzzlive', 'm-nope'],
  image: ['tiny', '/etc', '/nonexistent', '/tmp', '/etc/passwd', '/proc/self', '/dev/null', '/a/../etc', 'tiny/'],
};

function fromSchema(s: Schema, key: string | undefined, depth = 0): fc.Arbitrary<unknown> {
  const pool = key !== undefined ? POOLS[key] : undefined;
  const own = ((): fc.Arbitrary<unknown> => {
    if (s.const !== undefined) return fc.constant(s.const);
    if (s.enum) return fc.constantFrom(...s.enum);
    if (s.anyOf) return fc.oneof(...s.anyOf.map((a) => fromSchema(a, key, depth + 1)));
    switch (s.type) {
      case 'string':
        return s.pattern
          ? fc.stringMatching(new RegExp(s.pattern)).filter((x) => x.length <= (s.maxLength ?? Infinity) && x.length >= (s.minLength ?? 0))
          : fc.string({ minLength: s.minLength ?? 0, maxLength: Math.min(s.maxLength ?? 40, 40) });
      case 'integer':
        return fc.integer({ min: s.minimum ?? -1e9, max: s.maximum ?? 1e12 });
      case 'number':
        return fc.double({ min: s.minimum ?? -1e9, max: s.maximum ?? 1e12, noNaN: true });
      case 'boolean':
        return fc.boolean();
      case 'array':
        return fc.array(s.items ? fromSchema(s.items, key, depth + 1) : fc.jsonValue(), { minLength: s.minItems ?? 0, maxLength: Math.min(s.maxItems ?? 4, 4) });
      case 'object': {
        const props = s.properties ?? {};
        if (depth > 4) return fc.constant({});
        return fc.record(
          Object.fromEntries(Object.entries(props).map(([k, v]) => [k, fromSchema(v, k, depth + 1)])),
          { requiredKeys: s.required ?? [] },
        );
      }
      default:
        return fc.jsonValue({ maxDepth: 2 });
    }
  })();
  return pool ? fc.oneof({ weight: 2, arbitrary: fc.constantFrom(...pool) }, { weight: 1, arbitrary: own }) : own;
}

/** A body as JSON: valid for the schema, valid but one field hostile, an extra field, or anything. */
function jsonBody(schema: Schema | undefined, imageDir: string): fc.Arbitrary<unknown> {
  const valid = schema ? fromSchema(schema, undefined) : fc.constant({});
  const withImage = valid.chain((v) =>
    typeof v === 'object' && v !== null && schema?.properties?.image ? fc.constantFrom(v, { ...v, image: imageDir }) : fc.constant(v),
  );
  const keys = Object.keys(schema?.properties ?? {});
  const mutated = fc.tuple(withImage, keys.length ? fc.constantFrom(...keys) : hostileString, hostileValue).map(([v, k, bad]) =>
    typeof v === 'object' && v !== null && !Array.isArray(v) ? { ...v, [k]: bad } : bad,
  );
  const extra = fc.tuple(withImage, hostileString, hostileValue).map(([v, k, x]) => (typeof v === 'object' && v !== null ? { ...v, [k]: x } : v));
  return fc.oneof({ weight: 4, arbitrary: withImage }, { weight: 4, arbitrary: mutated }, { weight: 1, arbitrary: extra }, { weight: 2, arbitrary: hostileValue });
}

/** Bodies JSON.stringify never writes: broken JSON, duplicate keys, deep nesting, prototype keys, bytes. */
const rawBody: fc.Arbitrary<string | Buffer> = fc.oneof(
  fc.constantFrom(
    '',
    '{',
    '{"name":',
    '[1,2',
    '{"a":1}}',
    "{'name':'v1'}",
    'NaN',
    'undefined',
    '{"name":"new1",}',
    '\uFEFF{"name":"new1"}',
    '{"name":"new1","name":"new2"}',
    '{"name":"new1","memory":1,"memory":"1Q"}',
    '{"__proto__":{"polluted":1}}',
    '{"name":"new1","__proto__":{"isAdmin":true}}',
    '{"constructor":{"prototype":{"polluted":1}}}',
    '1e999999',
    '"\\u0000"',
    '{"name":"\\ud800"}',
    '{"name":"new1"}\0',
    'null',
    '[]',
    '[{"name":"new1"}]',
    '{"command":"\\n"}',
    '{"command":["a","\\n"]}',
  ),
  fc.tuple(fc.constantFrom('name', 'image', 'network', 'to', 'command', 'deadline'), fc.jsonValue(), fc.jsonValue()).map(
    ([k, a, b]) => `{"${k}":${JSON.stringify(a) ?? 'null'},"${k}":${JSON.stringify(b) ?? 'null'}}`,
  ),
  fc.tuple(fc.integer({ min: 1000, max: 200_000 }), fc.constantFrom('[', '{"a":', '{"__proto__":', '{"constructor":')).map(([n, open]) => {
    const close = open === '[' ? ']' : '}';
    return open.repeat(n) + '1' + close.repeat(n);
  }),
  fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
  fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v) ?? 'null', 'utf16le')),
  fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v) ?? 'null', 'latin1')),
);

/** Over the limit: a JSON string one byte too long, or far too long. */
const oversize = fc.constantFrom(1, 4096, BODY_LIMIT).map((extra) => `{"name":"${'a'.repeat(BODY_LIMIT + extra - 11)}"}`);

const CONTENT_TYPES = [
  'application/json',
  'application/json; charset=utf-8',
  'APPLICATION/JSON',
  'application/json; charset=utf-16',
  'application/json; charset=latin1',
  'application/json;;;',
  'text/plain',
  'text/json',
  'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x',
  'application/octet-stream',
  '*/*',
  'application/json\0',
  ';',
  '',
];

function authHeader(token: string): fc.Arbitrary<string | undefined> {
  const [id, secret] = token.split('.') as [string, string];
  return fc.oneof(
    { weight: 10, arbitrary: fc.constant(`Bearer ${token}`) },
    {
      weight: 3,
      arbitrary: fc.constantFrom(
        undefined,
        '',
        'Bearer',
        'Bearer ',
        `bearer ${token}`,
        `Bearer  ${token}  `,
        `Bearer ${token}x`,
        `Bearer ${id}.${'A'.repeat(secret.length)}`,
        `Bearer ${id}`,
        `Bearer ${token} ${token}`,
        `Basic ${Buffer.from(`admin:${token}`).toString('base64')}`,
        `Bearer ${'x'.repeat(8000)}`,
        `Bearer ${id}.${secret}\u0000`,
      ),
    },
  );
}

/** encodeURIComponent, but for any string (it throws on lone surrogates; UTF-8 turns those into U+FFFD). */
const pct = (s: string): string =>
  [...Buffer.from(s, 'utf8')].map((b) => (/[A-Za-z0-9\-_.!~*'()]/.test(String.fromCharCode(b)) && b < 0x80 ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`)).join('');

const encodeSegment = fc.oneof(
  { weight: 6, arbitrary: fc.constant((s: string) => pct(s)) },
  { weight: 1, arbitrary: fc.constant((s: string) => s) },
  { weight: 1, arbitrary: fc.constantFrom('%', '%zz', '%FF', '%C0%AF', '%00', '%2F', '%2e%2e', '..').map((t) => (s: string) => `${pct(s)}${t}`) },
);

function requestFor(env: Env, route: Route): fc.Arbitrary<Req> {
  const param = (p: Param): fc.Arbitrary<string> =>
    fc.oneof(
      { weight: 5, arbitrary: fromSchema(p.schema, p.name).map(String) },
      { weight: 2, arbitrary: hostileString },
    );
  const pathArb = fc.tuple(fc.tuple(...route.params.map(param)), fc.array(encodeSegment, { minLength: route.params.length, maxLength: route.params.length })).map(([values, encs]) => {
    let i = 0;
    return route.url.replace(/:(\w+)/g, () => {
      const v = values[i]!;
      const enc = encs[i++]!;
      return enc(v);
    });
  });
  const queryArb = fc.oneof(
    { weight: 4, arbitrary: fc.constant('') },
    {
      weight: 4,
      arbitrary: fc
        .tuple(
          fc.tuple(...route.query.map((q) => fc.option(fc.oneof(fromSchema(q.schema, q.name).map(String), hostileString), { nil: undefined }))),
          fc.array(fc.tuple(fc.constantFrom(...route.query.map((q) => q.name), 'x', 'vm[]', '__proto__', 'after[a]'), hostileString), { maxLength: 3 }),
        )
        .map(([own, extra]) => {
          const pairs = [...route.query.map((q, i) => [q.name, own[i]] as const).filter((p): p is readonly [string, string] => p[1] !== undefined), ...extra];
          return pairs.length ? `?${pairs.map(([k, v]) => `${pct(k)}=${pct(v)}`).join('&')}` : '';
        }),
    },
    { weight: 1, arbitrary: fc.constantFrom('?', '?&&', '?=', '?limit=1&limit=2', '?after=-1', '?after=1e400', '?limit=%FF', '?vm=%00', `?${'a=1&'.repeat(2000)}`) },
  );
  const bodyArb: fc.Arbitrary<string | Buffer | undefined> = fc.oneof(
    { weight: 2, arbitrary: fc.constant(undefined) },
    { weight: 8, arbitrary: jsonBody(route.body, env.imageDir).map((v) => JSON.stringify(v) ?? 'null') },
    { weight: 3, arbitrary: rawBody },
    { weight: 1, arbitrary: oversize },
  );
  const methodArb = fc.oneof({ weight: 12, arbitrary: fc.constant(route.method) }, { weight: 1, arbitrary: fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD') });
  return fc
    .record({
      method: methodArb,
      path: pathArb,
      query: queryArb,
      body: bodyArb,
      auth: route.public ? fc.option(authHeader(env.token), { nil: undefined }) : authHeader(env.token),
      contentType: fc.oneof({ weight: 6, arbitrary: fc.constant('application/json') }, { weight: 2, arbitrary: fc.constantFrom(...CONTENT_TYPES) }, { weight: 1, arbitrary: fc.constant(undefined) }),
      extra: fc.dictionary(
        fc.constantFrom('last-event-id', 'accept', 'content-encoding', 'x-http-method-override', 'accept-charset', 'x-forwarded-for', 'expect', 'origin'),
        fc.oneof(fc.constantFrom('1', '-1', '99999999999999999999', 'gzip', 'DELETE', '100-continue', 'application/xml', '*/*'), fc.string({ maxLength: 30 })),
        { maxKeys: 3 },
      ),
    })
    .map(({ method, path, query, body, auth, contentType, extra }) => {
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(extra)) if (/^[\t\x20-\x7e]*$/.test(v)) headers[k] = v;
      if (auth !== undefined) headers.authorization = auth;
      if (body !== undefined && contentType !== undefined) headers['content-type'] = contentType;
      const req: Req = { route, method, url: path + query, headers, body };
      // fast-check prints counterexamples: the request as sent, not the route's schemas.
      return Object.assign(req, { [fc.toStringMethod]: () => describe(req) });
    });
}

// --- sending, and the properties ------------------------------------------------------------------

interface Answer {
  status: number;
  type: string;
  body: string;
}

interface Tally {
  requests: number;
  atLeast500: number;
  byStatus: Map<number, number>;
  notSent: number;
}

const newTally = (): Tally => ({ requests: 0, atLeast500: 0, byStatus: new Map(), notSent: 0 });

async function overHttps(env: Env, r: Req): Promise<Answer | null> {
  let res;
  const ac = new AbortController();
  try {
    res = await request(env.url + r.url, {
      signal: ac.signal,
      method: r.method as 'GET',
      headers: r.headers,
      body: r.body ?? null,
      dispatcher: env.client,
      headersTimeout: 30_000,
      bodyTimeout: 30_000,
    });
  } catch (err) {
    // undici refuses to send some requests at all (a header it finds invalid): nothing reached the server.
    if (['UND_ERR_INVALID_ARG', 'UND_ERR_NOT_SUPPORTED'].includes((err as { code?: string }).code ?? '')) return null;
    throw err;
  }
  const type = String(res.headers['content-type'] ?? '');
  if (type.startsWith('text/event-stream')) {
    // The stream never ends: its headers are the answer.
    res.body.on('error', () => undefined);
    ac.abort();
    return { status: res.statusCode, type, body: '' };
  }
  return { status: res.statusCode, type, body: await res.body.text() };
}

async function send(env: Env, r: Req, via: 'inject' | 'https'): Promise<Answer | null> {
  if (via === 'https' || r.route.streaming) return overHttps(env, r);
  let res;
  try {
    res = await env.app.inject({ method: r.method as 'GET', url: r.url, headers: r.headers, ...(r.body === undefined ? {} : { payload: r.body }) });
  } catch (err) {
    // light-my-request refuses some URLs and headers before the app sees them (not a server answer).
    if (err instanceof TypeError || (err as { code?: string }).code === 'ERR_INVALID_CHAR' || (err as { code?: string }).code === 'ERR_INVALID_URL') return null;
    throw err;
  }
  return { status: res.statusCode, type: String(res.headers['content-type'] ?? ''), body: res.body };
}

function checkEnvelope(a: Answer, what: string): void {
  let parsed: unknown;
  try {
    parsed = JSON.parse(a.body);
  } catch {
    assert.fail(`${what}: HTTP ${a.status} with a body that is not JSON: ${a.body.slice(0, 200)}`);
  }
  const e = (parsed as { error?: { code?: unknown; message?: unknown } }).error;
  assert.ok(e && isErrorCode(e.code), `${what}: HTTP ${a.status} without a FERRY_E_* code: ${a.body.slice(0, 300)}`);
  assert.equal(typeof e.message, 'string', `${what}: no message`);
  assert.equal(ERRORS[e.code].status, a.status, `${what}: ${e.code} is HTTP ${ERRORS[e.code].status} in the registry, sent as ${a.status}`);
}

function describe(r: Req): string {
  const body = r.body === undefined ? '' : ` body(${r.body.length} bytes)=${JSON.stringify(String(r.body).slice(0, 160))}`;
  return `${r.method} ${r.url.slice(0, 200)} ${JSON.stringify(r.headers).slice(0, 200)}${body}`;
}

/**
 * What only a create can get wrong by accepting: an image that is not `tiny` or an image directory, or
 * a network the server does not have (the tester's `{"image":"/etc"}` and the VM without an address).
 */
function checkCreateOracle(env: Env, r: Req, a: Answer, what: string): void {
  if (r.method !== 'POST' || r.route.url !== '/api/v1/vms' || a.status >= 300) return;
  const body = JSON.parse(String(r.body ?? '{}')) as { image?: unknown; network?: unknown };
  assert.ok(body.image === undefined || body.image === 'tiny' || body.image === env.imageDir, `${what}: created with image ${String(body.image)}`);
  assert.ok(body.network === undefined || body.network === 'vm0', `${what}: created on network ${String(body.network)}`);
}

async function checkOne(env: Env, r: Req, via: 'inject' | 'https', tally: Tally): Promise<void> {
  ensureFixture(env.ctl, env.ctl.hosts.get('h1').url);
  const before = snapshot(env.ctl);
  const a = await send(env, r, via);
  await env.quiet();
  if (a === null) {
    tally.notSent++;
    return;
  }
  tally.requests++;
  tally.byStatus.set(a.status, (tally.byStatus.get(a.status) ?? 0) + 1);
  if (a.status >= 500) tally.atLeast500++;
  const what = describe(r);
  assert.ok(a.status < 500, `${what} → HTTP ${a.status}: ${a.body.slice(0, 500)}`);
  if (a.status >= 400) {
    if (r.method !== 'HEAD') checkEnvelope(a, what);
    const after = snapshot(env.ctl);
    for (const t of Object.keys(before)) assert.equal(after[t], before[t], `${what} → HTTP ${a.status}, yet table ${t} changed`);
  }
  // The document tells the truth about statuses: whatever the route answers is declared for it (another
  // method on its path is the router's 404, which no operation declares).
  if (r.method === r.route.method && r.route.statuses) {
    const declared = r.route.statuses.includes(String(a.status)) || r.route.statuses.includes(`${String(a.status)[0]}XX`);
    assert.ok(declared, `${what} → HTTP ${a.status}, a status its operation does not declare (${r.route.statuses.join(', ')})`);
  }
  checkCreateOracle(env, r, a, what);
  const authorised = r.route.public || r.headers.authorization === `Bearer ${env.token}`;
  const parses = !['GET', 'HEAD'].includes(r.method) && r.method === r.route.method;
  // A path the router refuses (not valid percent-encoding, a parameter too long) is refused before the
  // body is read, and that is fine.
  const badUrl = a.status === 400 && /"fastifyCode":"FST_ERR_(BAD_URL|MAX_PARAM_LENGTH)"/.test(a.body);
  // A content type that only starts like JSON (`application/json\0`) is a 415, before the body is read.
  if (r.body !== undefined && r.body.length > BODY_LIMIT && authorised && parses && !badUrl && /^application\/json\s*(;|$)/i.test(r.headers['content-type'] ?? '')) {
    assert.equal(a.status, 413, `${what}: over the limit, answered ${a.status} ${a.body.slice(-300)}`);
  }
}

function report(label: string, t: Tally, ms: number): string {
  const statuses = [...t.byStatus.entries()].sort((a, b) => a[0] - b[0]).map(([s, n]) => `${s}×${n}`).join(' ');
  return `${label}: ${t.requests} requests, ${t.atLeast500} answers ≥ 500, ${(ms / 1000).toFixed(1)} s (seed ${SEED}; ${statuses}${t.notSent ? `; ${t.notSent} refused by the client library` : ''})`;
}

/** Every route equally likely; each route's arbitrary is built once (building them costs more than using them). */
const requestArb = (env: Env): fc.Arbitrary<Req> => fc.oneof(...env.routes.map((route) => requestFor(env, route)));

// --- raw bytes over TLS ----------------------------------------------------------------------------

/** Sends bytes on a fresh TLS connection, half-closes, and reads until the server closes. */
function rawExchange(env: Env, bytes: Buffer): Promise<string> {
  const { port } = new URL(env.url);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const s = tlsConnect({ host: '127.0.0.1', port: Number(port), ca: env.ctl.ca.caCertPem, servername: undefined }, () => {
      s.end(bytes);
    });
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', (err: NodeJS.ErrnoException) => (err.code === 'ECONNRESET' || err.code === 'EPIPE' ? resolve(Buffer.concat(chunks).toString('latin1')) : reject(err)));
    s.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
  });
}

/** Splits a raw HTTP/1.1 answer into status, headers and the (de-chunked) body. */
function parseRaw(text: string): Answer | null {
  const m = /^HTTP\/1\.1 (\d{3})[^\r\n]*\r\n([\s\S]*?)\r\n\r\n([\s\S]*)$/.exec(text);
  if (!m) return null;
  const headers = Object.fromEntries(m[2]!.split('\r\n').map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
  let body = m[3]!;
  if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
    let out = '';
    for (let rest = body; ; ) {
      const nl = rest.indexOf('\r\n');
      const size = parseInt(rest.slice(0, nl), 16);
      if (!(size > 0)) break;
      out += rest.slice(nl + 2, nl + 2 + size);
      rest = rest.slice(nl + 2 + size + 2);
    }
    body = out;
  } else if (headers['content-length'] !== undefined) body = body.slice(0, Number(headers['content-length']));
  return { status: Number(m[1]), type: headers['content-type'] ?? '', body: Buffer.from(body, 'latin1').toString('utf8') };
}

function rawRequestArb(env: Env): fc.Arbitrary<{ label: string; bytes: Buffer }> {
  const auth = `authorization: Bearer ${env.token}\r\n`;
  const json = '{"name":"new1"}';
  const cases = fc.constantFrom(
    ['garbage', 'GARBAGE\r\n\r\n'],
    ['http/0.9', 'GET /api/v1/health\r\n\r\n'],
    ['http/2 preface', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'],
    ['lowercase method', 'get /api/v1/health HTTP/1.1\r\nhost: x\r\n\r\n'],
    ['no host', 'GET /api/v1/health HTTP/1.1\r\n\r\n'],
    ['two hosts', 'GET /api/v1/health HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n'],
    ['NUL in header', `GET /api/v1/vms HTTP/1.1\r\nhost: x\r\n${auth}x-a: a\0b\r\n\r\n`],
    ['obs-fold', `GET /api/v1/vms HTTP/1.1\r\nhost: x\r\n${auth}x-a: a\r\n b\r\n\r\n`],
    ['header flood', `GET /api/v1/vms HTTP/1.1\r\nhost: x\r\n${auth}x-big: ${'a'.repeat(20_000)}\r\n\r\n`],
    ['many headers', `GET /api/v1/vms HTTP/1.1\r\nhost: x\r\n${auth}${'x-h: 1\r\n'.repeat(3000)}\r\n`],
    ['long url', `GET /api/v1/vms/${'a'.repeat(20_000)} HTTP/1.1\r\nhost: x\r\n${auth}\r\n`],
    ['CL and TE', `POST /api/v1/vms HTTP/1.1\r\nhost: x\r\n${auth}content-type: application/json\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n`],
    ['two CLs', `POST /api/v1/vms HTTP/1.1\r\nhost: x\r\n${auth}content-type: application/json\r\ncontent-length: 1\r\ncontent-length: 15\r\n\r\n${json}`],
    ['negative CL', `POST /api/v1/vms HTTP/1.1\r\nhost: x\r\n${auth}content-type: application/json\r\ncontent-length: -1\r\n\r\n${json}`],
    ['CL short', `POST /api/v1/vms HTTP/1.1\r\nhost: x\r\n${auth}content-type: application/json\r\ncontent-length: 5\r\n\r\n${json}`],
    ['CL long, body ends early', `POST /api/v1/vms HTTP/1.1\r\nhost: x\r\n${auth}content-type: application/json\r\ncontent-length: 100\r\n\r\n${json}`],
    ['CL over the limit', `POST /api/v1/vms HTTP/1.1\r\nhost: x\r\n${auth}content-type: application/json\r\ncontent-length: ${BODY_LIMIT * 4}\r\n\r\n{`],
    ['bad chunk size', `POST /api/v1/vms HTTP/1.1\r\nhost: x\r\n${auth}content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n${json}\r\n0\r\n\r\n`],
    ['chunked over the limit', `POST /api/v1/vms HTTP/1.1\r\nhost: x\r\n${auth}content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n${`100000\r\n${'a'.repeat(0x100000)}\r\n`.repeat(2)}0\r\n\r\n`],
    ['gzip claimed', `POST /api/v1/vms HTTP/1.1\r\nhost: x\r\n${auth}content-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: ${json.length}\r\n\r\n${json}`],
    ['expect 100', `POST /api/v1/vms HTTP/1.1\r\nhost: x\r\n${auth}content-type: application/json\r\nexpect: 100-continue\r\ncontent-length: ${json.length}\r\n\r\n${json}`],
    ['absolute url', `GET https://evil.example/api/v1/vms HTTP/1.1\r\nhost: x\r\n${auth}\r\n`],
    ['asterisk', 'OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n'],
    ['CONNECT', 'CONNECT 127.0.0.1:22 HTTP/1.1\r\nhost: x\r\n\r\n'],
    ['bare LF', `GET /api/v1/vms HTTP/1.1\nhost: x\n${auth.replace('\r', '')}\n`],
    ['pipelined', `GET /api/v1/health HTTP/1.1\r\nhost: x\r\n\r\nGET /api/v1/vms HTTP/1.1\r\nhost: x\r\n\r\nBROKEN\r\n\r\n`],
    ['invalid utf-8 path', 'GET /api/v1/vms/\xff\xfe HTTP/1.1\r\nhost: x\r\n\r\n'],
  );
  const mutated = fc
    .tuple(cases, fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 8 }))
    .map(([[label, text], at, bytes]) => {
      const b = Buffer.from(text as string, 'latin1');
      const i = at % b.length;
      return { label: `${label as string}, bytes ${Buffer.from(bytes).toString('hex')} at ${i}`, bytes: Buffer.concat([b.subarray(0, i), Buffer.from(bytes), b.subarray(i + bytes.length)]) };
    });
  return fc.oneof(
    { weight: 2, arbitrary: cases.map(([label, text]) => ({ label: label as string, bytes: Buffer.from(text as string, 'latin1') })) },
    { weight: 1, arbitrary: mutated },
  );
}

// --- the tests ---------------------------------------------------------------------------------------

test('every route is fuzzed: the route list comes from the app', async () => {
  await withEnv(async (env) => {
    const have = env.routes.map((r) => `${r.method} ${r.url}`);
    // A few that must be there, so that a broken derivation cannot silently fuzz nothing.
    for (const r of ['POST /api/v1/vms', 'POST /api/v1/vms/:name/migrate', 'GET /api/v1/events', 'POST /api/v1/join', 'GET /api/v1/openapi.json']) {
      assert.ok(have.includes(r), `${r} in ${have.join(', ')}`);
    }
    // The router's own list and the document's agree on everything the document has.
    const router = routerRoutes(env.app).map((r) => `${r.method} ${r.url}`);
    for (const r of have) assert.ok(router.includes(r), `${r} in the router's list ${router.join(', ')}`);
    assert.equal(new Set(have).size, new Set(router).size);
    assert.ok(env.routes.find((r) => r.url === '/api/v1/events')!.streaming);
    assert.ok(env.routes.find((r) => r.url === '/api/v1/join')!.public);
  });
});

test(`hostile requests through inject() and HTTPS: never ≥ 500, 4xx change nothing, envelope, 413`, async (t) => {
  await withEnv(async (env) => {
    const started = Date.now();
    const tally = newTally();
    await fc.assert(
      fc.asyncProperty(requestArb(env), (r) => checkOne(env, r, 'inject', tally)),
      { seed: SEED, numRuns: RUNS, endOnFailure: true },
    );
    const line = report('inject', tally, Date.now() - started);
    t.diagnostic(line);
    console.log(line);

    const startedHttps = Date.now();
    const https = newTally();
    await fc.assert(
      fc.asyncProperty(requestArb(env), (r) => checkOne(env, r, 'https', https)),
      { seed: SEED + 1, numRuns: HTTPS_RUNS, endOnFailure: true },
    );
    const line2 = report('https', https, Date.now() - startedHttps);
    t.diagnostic(line2);
    console.log(line2);

    // Still alive, over both paths.
    assert.equal((await env.app.inject({ method: 'GET', url: '/api/v1/health' })).statusCode, 200);
    assert.equal((await overHttps(env, { route: env.routes[0]!, method: 'GET', url: '/api/v1/health', headers: {}, body: undefined }))!.status, 200);
  });
});

test('raw bytes over TLS: malformed HTTP gets a 4xx envelope or nothing, never ≥ 500; the server lives on', async (t) => {
  await withEnv(async (env) => {
    const started = Date.now();
    const tally = newTally();
    await fc.assert(
      fc.asyncProperty(rawRequestArb(env), async ({ label, bytes }) => {
        ensureFixture(env.ctl, env.ctl.hosts.get('h1').url);
        const before = snapshot(env.ctl);
        const text = await rawExchange(env, bytes);
        // A request whose client went away still runs to its end (a create reaches the agent): wait for it.
        await env.quiet();
        tally.requests++;
        // Pipelined requests get one answer each: check them all.
        const answers = text.split(/(?=HTTP\/1\.1 \d{3} )/).filter(Boolean).map(parseRaw);
        for (const a of answers) {
          if (a === null) continue;
          tally.byStatus.set(a.status, (tally.byStatus.get(a.status) ?? 0) + 1);
          if (a.status >= 500) tally.atLeast500++;
          assert.ok(a.status < 500, `${label} → ${a.status}: ${a.body.slice(0, 300)}`);
          if (a.status >= 400) {
            checkEnvelope(a, label);
            const after = snapshot(env.ctl);
            for (const tb of Object.keys(before)) assert.equal(after[tb], before[tb], `${label} → ${a.status}, yet table ${tb} changed`);
          }
        }
      }),
      { seed: SEED + 2, numRuns: RAW_RUNS, endOnFailure: true },
    );
    const line = report('raw TLS', tally, Date.now() - started);
    t.diagnostic(line);
    console.log(line);
    assert.equal((await env.app.inject({ method: 'GET', url: '/api/v1/health' })).statusCode, 200);
  });
});
