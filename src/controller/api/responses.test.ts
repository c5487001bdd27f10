/**
 * The OpenAPI document against what the API really answers. A real controller (SQLite in a temp dir) and two
 * fake agents at the wire (src/testing/fake-agent.ts, mTLS with the certificates the join handed out) go
 * through a cluster's life over `inject()`: join, create, stop/start/pause/resume, guest, console, a live
 * migration, a drain, an image, deletes, and refusals. Every answer must have its status declared for its
 * operation, and its body must fit the declared schema exactly: nothing missing, nothing undocumented.
 * Errors must be the shared envelope. The document's own shape (operationId, tags, servers, …) is checked
 * here too; the linter (scripts/lint-openapi.sh) checks the rest.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, sign } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Type, { type TSchema } from 'typebox';
import { Value } from 'typebox/value';
import { isErrorCode } from '../../common/errors.ts';
import { renewalPayload } from '../../common/identity.ts';
import type { RenewRequest } from '../../common/protocol.ts';
import { FakeAgent } from '../../testing/fake-agent.ts';
import { createController, type Controller } from '../controller.ts';
import { buildApp } from './app.ts';
import { RESPONSE_SCHEMAS } from './responses.ts';
import type { App } from './types.ts';

interface DocSchema {
  $ref?: string;
  type?: string;
  items?: DocSchema;
}
interface DocResponse {
  description: string;
  content?: Record<string, { schema: DocSchema }>;
}
interface Operation {
  operationId?: string;
  tags?: string[];
  summary?: string;
  security?: unknown[];
  responses: Record<string, DocResponse>;
}
interface Doc {
  servers?: { url: string }[];
  info: { version: string; license?: { name: string } };
  tags?: { name: string; description?: string }[];
  components: { schemas: Record<string, unknown> };
  paths: Record<string, Record<string, Operation>>;
}

const byId = new Map<string, TSchema>(RESPONSE_SCHEMAS.map((s): [string, TSchema] => [(s as unknown as { $id: string }).$id, s]));

/** The TypeBox schema a response of the document names: a component, or an array of one. */
/** A component whose parts are components themselves (`DrainAnswer`), with those parts put in place of their `$ref`. */
function inlined(schema: TSchema, where: string): TSchema {
  const walk = (node: unknown): unknown => {
    if (Array.isArray(node)) return node.map(walk);
    if (node === null || typeof node !== 'object') return node;
    const ref = (node as { $ref?: unknown }).$ref;
    if (typeof ref === 'string') {
      const part = byId.get(ref.replace(/#$/, ''));
      assert.ok(part, `${where}: $ref ${ref} is one of RESPONSE_SCHEMAS`);
      return part;
    }
    return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, walk(v)]));
  };
  return walk(schema) as TSchema;
}

function schemaOf(s: DocSchema, where: string): TSchema {
  if (s.$ref !== undefined) {
    const name = s.$ref.replace('#/components/schemas/', '');
    const schema = byId.get(name);
    assert.ok(schema, `${where}: $ref ${s.$ref} is one of RESPONSE_SCHEMAS`);
    return inlined(schema, where);
  }
  assert.ok(s.type === 'array' && s.items, `${where}: a JSON answer is a component or an array of one, not ${JSON.stringify(s)}`);
  return Type.Array(schemaOf(s.items, where));
}

function operationOf(doc: Doc, method: string, url: string): { path: string; op: Operation } {
  const path = url.split('?')[0]!;
  for (const [template, ops] of Object.entries(doc.paths)) {
    const re = new RegExp(`^${template.replace(/\{\w+\}/g, '[^/]+')}$`);
    const op = ops[method.toLowerCase()];
    if (op && re.test(path)) return { path: template, op };
  }
  assert.fail(`no operation ${method} ${path} in the document`);
}

interface Answer {
  status: number;
  body: unknown;
  text: string;
}

interface Env {
  ctl: Controller;
  app: App;
  doc: Doc;
  /** Each operation seen, with the statuses it answered. */
  seen: Map<string, Set<number>>;
  call(method: 'GET' | 'POST' | 'DELETE', url: string, payload?: unknown, opts?: { auth?: boolean }): Promise<Answer>;
}

/** One request through inject(), its answer checked against the document before it is returned. */
async function checked(env: Omit<Env, 'call'>, token: string, method: 'GET' | 'POST' | 'DELETE', url: string, payload?: unknown, auth = true): Promise<Answer> {
  const res = await env.app.inject({
    method,
    url,
    headers: auth ? { authorization: `Bearer ${token}` } : {},
    ...(payload === undefined ? {} : { payload: payload as object }),
  });
  const { path, op } = operationOf(env.doc, method, url);
  const where = `${method} ${url} → ${res.statusCode}`;
  const key = `${method} ${path}`;
  if (!env.seen.has(key)) env.seen.set(key, new Set());
  env.seen.get(key)!.add(res.statusCode);
  const declared = op.responses[String(res.statusCode)] ?? op.responses[`${String(res.statusCode)[0]}XX`];
  assert.ok(declared, `${where}: status not declared (declared: ${Object.keys(op.responses).join(', ')}); body ${res.body.slice(0, 300)}`);
  const type = String(res.headers['content-type'] ?? '').split(';')[0]!;
  assert.ok(declared.content?.[type], `${where}: content type ${type} not declared (${Object.keys(declared.content ?? {}).join(', ')})`);
  let body: unknown = res.body;
  if (type === 'application/json') {
    body = res.json();
    const schema = schemaOf(declared.content[type]!.schema, where);
    const errors = [...Value.Errors(schema, body)].slice(0, 5).map((e) => `${e.instancePath || '/'} ${e.message}`);
    assert.deepEqual(errors, [], `${where}: the answer does not fit its schema: ${res.body.slice(0, 500)}`);
    // Clean drops what the schema does not name: an undocumented field shows as a difference.
    assert.deepEqual(Value.Clean(schema, structuredClone(body)), body, `${where}: the answer has fields its schema does not declare`);
    if (res.statusCode >= 400) {
      const code = (body as { error: { code: string } }).error.code;
      assert.ok(isErrorCode(code), `${where}: ${code} is a registered code`);
    }
  }
  return { status: res.statusCode, body, text: res.body };
}

/** POST /api/v1/renew's body for a new key, signed with `signer` (the certificate's own key, or not). */
function renewBody(name: string, certPem: string, signer: string): RenewRequest {
  const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const fields = { name, certPem, publicKeyPem: pair.publicKey.export({ type: 'spki', format: 'pem' }).toString(), signedAt: new Date().toISOString() };
  const payload = renewalPayload(fields);
  return { ...fields, signature: sign('sha256', payload, signer).toString('base64'), proof: sign('sha256', payload, pair.privateKey).toString('base64') };
}

/** A fake agent that joined through the API, listening with the certificate the join handed out. */
async function joinAgent(env: Env, ctl: Controller, name: string): Promise<FakeAgent> {
  const agent = new FakeAgent({ name });
  // The agent's port goes into its URL at the join: bind first with a throwaway certificate.
  const boot = await ctl.ca.issueAgentCert(name, ['127.0.0.1']);
  await agent.start({ caPem: ctl.ca.caCertPem, ...boot, controllerPin: ctl.ca.controllerPin });
  const port = agent.port;
  await agent.stop();
  const token = (await env.call('POST', '/api/v1/join-tokens', { ttlSeconds: 60 })).body as { token: string };
  const joined = await env.call('POST', '/api/v1/join', { token: token.token, name, agentUrl: `https://127.0.0.1:${port}` }, { auth: false });
  assert.equal(joined.status, 200, joined.text);
  const j = joined.body as { caCertPem: string; certPem: string; keyPem: string; controllerPin: string };
  await agent.start({ caPem: j.caCertPem, certPem: j.certPem, keyPem: j.keyPem, controllerPin: j.controllerPin }, port);
  // Used once: a second join with it is refused in the envelope.
  assert.equal((await env.call('POST', '/api/v1/join', { token: token.token, name: `${name}x`, agentUrl: `https://127.0.0.1:${port}` }, { auth: false })).status, 401);
  // A renewal signed by the joined key gets a certificate; one signed by another key, the envelope.
  assert.equal((await env.call('POST', '/api/v1/renew', renewBody(name, j.certPem, j.keyPem), { auth: false })).status, 200);
  assert.equal((await env.call('POST', '/api/v1/renew', renewBody(name, j.certPem, boot.keyPem), { auth: false })).status, 403);
  await ctl.hosts.poll(name);
  return agent;
}

async function withCluster(fn: (env: Env) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-responses-'));
  let ctl: Controller | undefined;
  let app: App | undefined;
  try {
    ctl = await createController({ dataDir: join(dir, 'data'), heartbeats: false, recover: false, probe: false, vmNetworks: [{ name: 'vm0', cidr: '10.77.0.0/24' }] });
    app = await buildApp(ctl, { tls: await ctl.ca.issue('ferry-server', ['127.0.0.1']) });
    const token = ctl.newAdminToken!;
    const doc = (await app.inject({ method: 'GET', url: '/api/v1/openapi.json', headers: { authorization: `Bearer ${token}` } })).json() as Doc;
    const base = { ctl, app, doc, seen: new Map<string, Set<number>>() };
    const env: Env = { ...base, call: (method, url, payload, opts) => checked(base, token, method, url, payload, opts?.auth ?? true) };
    await fn(env);
  } finally {
    await app?.close();
    await ctl?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function until<T>(what: string, fn: () => Promise<T | undefined>): Promise<T> {
  for (let i = 0; i < 300; i++) {
    const v = await fn();
    if (v !== undefined) return v;
    await sleep(50);
  }
  assert.fail(`timed out waiting for ${what}`);
}

test('the document: every operation has an operationId, tags, a summary, its success and error answers; servers, license, tags', async () => {
  await withCluster(async ({ doc }) => {
    assert.ok(doc.servers?.length, 'servers');
    assert.equal(doc.info.license?.name, 'Apache-2.0');
    const tags = new Set((doc.tags ?? []).map((t) => t.name));
    const ids = new Set<string>();
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const where = `${method.toUpperCase()} ${path}`;
        assert.ok(op.operationId && !ids.has(op.operationId), `${where}: a unique operationId`);
        ids.add(op.operationId);
        assert.ok(op.tags?.length && op.tags.every((t) => tags.has(t)), `${where}: tags declared at the top`);
        assert.ok(op.summary, `${where}: a summary`);
        const statuses = Object.keys(op.responses);
        assert.equal(statuses.filter((s) => s.startsWith('2')).length, 1, `${where}: one success status (${statuses.join(', ')})`);
        for (const s of ['400', '5XX', ...(op.security?.length === 0 ? [] : ['401'])]) assert.ok(statuses.includes(s), `${where}: declares ${s}`);
        for (const s of statuses.filter((x) => x >= '4')) {
          assert.deepEqual(op.responses[s]!.content?.['application/json']?.schema, { $ref: '#/components/schemas/Error' }, `${where} ${s}: the shared envelope`);
        }
      }
    }
    // Routes fastify has but the document does not would escape all of this.
    assert.ok(ids.has('getOpenApi') && ids.has('getMetrics') && ids.has('streamEvents'));
  });
});

test('real answers fit the document: status declared, body exactly its schema, errors the envelope', { timeout: 120_000 }, async () => {
  await withCluster(async (env) => {
    const { ctl, call } = env;
    const agents: FakeAgent[] = [];
    try {
      assert.equal((await call('GET', '/api/v1/health', undefined, { auth: false })).status, 200);
      assert.equal((await call('GET', '/api/v1/vms', undefined, { auth: false })).status, 401);
      assert.equal((await call('GET', '/api/v1/openapi.json')).status, 200);
      assert.equal((await call('GET', '/metrics')).status, 200);
      assert.equal((await call('POST', '/api/v1/join-tokens', { ttlSeconds: 1 })).status, 400);

      agents.push(await joinAgent(env, ctl, 'h1'), await joinAgent(env, ctl, 'h2'));
      assert.equal((await call('GET', '/api/v1/hosts')).status, 200);
      assert.equal((await call('GET', '/api/v1/hosts?limit=1&view=summary')).status, 200);
      assert.equal(((await call('GET', '/api/v1/hosts/h1')).body as { state: string }).state, 'ready');
      assert.equal((await call('GET', '/api/v1/hosts/nope')).status, 404);

      // A VM's life.
      const created = await call('POST', '/api/v1/vms', { name: 'v1', memory: '128M', host: 'h1' });
      assert.equal(created.status, 201, created.text);
      assert.equal((await call('POST', '/api/v1/vms', { name: 'v1' })).status, 409);
      assert.equal((await call('POST', '/api/v1/vms', { name: 'v2', memory: '12Q' })).status, 400);
      assert.equal((await call('POST', '/api/v1/vms', { name: 'v2', network: 'nonet' })).status, 404);
      assert.equal((await call('GET', '/api/v1/vms')).status, 200);
      assert.equal((await call('GET', '/api/v1/vms/v1')).status, 200);
      assert.equal((await call('GET', '/api/v1/vms/nope')).status, 404);
      const verdicts = (await call('GET', '/api/v1/vms/v1/placements')).body as { host: string; fits: boolean }[];
      assert.deepEqual(verdicts.map((v) => [v.host, v.fits]), [['h1', false], ['h2', true]], 'its own host does not fit; the other does');
      assert.equal((await call('GET', '/api/v1/vms/nope/placements')).status, 404);
      assert.equal(((await call('POST', '/api/v1/vms/v1/stop', { force: true })).body as { state: string }).state, 'stopped');
      assert.equal((await call('POST', '/api/v1/vms/v1/pause')).status, 409, 'a stopped VM does not pause');
      assert.equal(((await call('POST', '/api/v1/vms/v1/start')).body as { state: string }).state, 'running');
      assert.equal((await call('POST', '/api/v1/vms/v1/pause')).status, 200);
      assert.equal((await call('POST', '/api/v1/vms/v1/resume')).status, 200);
      assert.equal((await call('POST', '/api/v1/vms/v1/guest', { command: ['ping', '1'] })).status, 200);
      assert.match((await call('GET', '/api/v1/vms/v1/console')).text, /ferry-guest ready/);

      // Its prediction first: nothing starts.
      const predicted = await call('POST', '/api/v1/vms/v1/migrate/prediction', { to: 'h2', storage: 'shared' });
      assert.equal(predicted.status, 200, predicted.text);
      assert.equal((predicted.body as { destination: string }).destination, 'h2');
      assert.equal((await call('POST', '/api/v1/vms/nope/migrate/prediction', {})).status, 404);
      assert.equal(((await call('GET', '/api/v1/migrations?vm=v1')).body as unknown[]).length, 0, 'a dry run creates no job');

      // A live migration to h2, followed to its end.
      const started = await call('POST', '/api/v1/vms/v1/migrate', { to: 'h2', storage: 'shared' });
      assert.equal(started.status, 202, started.text);
      const id = (started.body as { id: string }).id;
      assert.equal((await call('POST', '/api/v1/vms/v1/migrate', { to: 'h2' })).status, 409);
      assert.equal((await call('POST', '/api/v1/vms/nope/migrate', {})).status, 404);
      const done = await until('the migration to end', async () => {
        const m = (await call('GET', `/api/v1/migrations/${id}`)).body as { state: string };
        return ['completed', 'failed', 'cancelled'].includes(m.state) ? m : undefined;
      });
      assert.equal(done.state, 'completed', JSON.stringify(done));
      assert.equal((await call('GET', '/api/v1/migrations?vm=v1&limit=5')).status, 200);
      assert.equal((await call('GET', '/api/v1/migrations/m-nope')).status, 404);
      assert.equal((await call('GET', '/api/v1/version')).status, 200);
      assert.equal((await call('GET', '/metrics/hosts/h1')).status, 200);
      assert.equal((await call('GET', '/metrics/hosts/nope')).status, 404);
      const late = await call('POST', `/api/v1/migrations/${id}/cancel`);
      assert.equal(late.status, 409, 'a finished job cannot be cancelled');
      assert.equal((late.body as { error: { code: string } }).error.code, 'FERRY_E_MIGRATION_FINISHED');
      assert.equal(((await call('GET', '/api/v1/vms/v1')).body as { host: string }).host, 'h2');

      // Drains: none yet, then one of h2 (v1 moves back to h1), then lifted.
      assert.equal(((await call('GET', '/api/v1/hosts/h2/drain')).body as { state: string }).state, 'none');
      const plan = (await call('POST', '/api/v1/hosts/h2/drain', { dryRun: true })).body as { feasible: boolean; plan: { vm: string; destination: string; strategy: string }[] };
      assert.deepEqual([plan.feasible, plan.plan.map((i) => [i.vm, i.destination, i.strategy])], [true, [['v1', 'h1', 'live']]], 'the plan, and nothing changed');
      assert.equal(((await call('GET', '/api/v1/hosts/h2')).body as { maintenance: boolean }).maintenance, false);
      assert.equal((await call('POST', '/api/v1/hosts/h2/drain', { deadline: '1m' })).status, 202);
      assert.equal((await call('POST', '/api/v1/hosts/nope/drain', {})).status, 404);
      const drained = await until('the drain to end', async () => {
        const d = (await call('GET', '/api/v1/hosts/h2/drain')).body as { state: string };
        return d.state === 'draining' ? undefined : d;
      });
      assert.equal(drained.state, 'drained', JSON.stringify(drained));
      assert.equal((await call('POST', '/api/v1/hosts/h2/undrain')).status, 200);

      // Rebalancing (a dry run: the moves, nothing started) and API tokens (create, list, revoke).
      const moves = await call('POST', '/api/v1/cluster/rebalance', { dryRun: true });
      assert.equal(moves.status, 200, moves.text);
      assert.equal((moves.body as { dryRun: boolean }).dryRun, true);
      assert.equal((await call('POST', '/api/v1/cluster/rebalance', { threshold: 'lots' })).status, 400);
      const token = await call('POST', '/api/v1/tokens', { role: 'read-only' });
      assert.equal(token.status, 201, token.text);
      const tokenId = (token.body as { id: string }).id;
      assert.ok(((await call('GET', '/api/v1/tokens')).body as { id: string }[]).some((t) => t.id === tokenId));
      assert.equal((await call('DELETE', `/api/v1/tokens/${tokenId}`)).status, 200);
      assert.equal((await call('DELETE', `/api/v1/tokens/${tokenId}`)).status, 404);

      // The queue's limits; steering a running migration (the fake source holds it transferring meanwhile).
      assert.equal(((await call('GET', '/api/v1/limits')).body as { maxOutbound: number }).maxOutbound, 2);
      assert.equal((await call('POST', `/api/v1/migrations/${id}/set`, { bandwidth: '8M' })).status, 409, 'an ended job is not steered');
      assert.equal((await call('POST', `/api/v1/migrations/m-nope/set`, { bandwidth: '8M' })).status, 404);
      assert.equal((await call('POST', `/api/v1/migrations/${id}/set`, {})).status, 400, 'nothing to set');
      assert.equal((await call('POST', `/api/v1/migrations/${id}/postcopy`)).status, 409, 'its policy is --postcopy never');
      assert.equal((await call('POST', `/api/v1/migrations/${id}/complete`)).status, 409);
      const h1 = agents[0]!;
      h1.completeAfterPolls = Number.POSITIVE_INFINITY;
      const steered = await call('POST', '/api/v1/vms/v1/migrate', { to: 'h2', storage: 'shared', postcopy: 'auto', priority: 3 });
      assert.equal(steered.status, 202, steered.text);
      const sid = (steered.body as { id: string }).id;
      await until('the migration to transfer', async () => (((await call('GET', `/api/v1/migrations/${sid}`)).body as { state: string }).state === 'transferring' ? true : undefined));
      const set = await call('POST', `/api/v1/migrations/${sid}/set`, { bandwidth: '8M', maxDowntime: '2s' });
      assert.equal(set.status, 200, set.text);
      assert.equal((set.body as { tuning: { bandwidthBytesPerSec: number } }).tuning.bandwidthBytesPerSec, 8 * 2 ** 20);
      assert.equal((await call('POST', `/api/v1/migrations/${sid}/complete`)).status, 200);
      assert.equal((await call('POST', `/api/v1/migrations/${sid}/postcopy`)).status, 200);
      h1.completeAfterPolls = 1;
      const steeredDone = await until('the steered migration to end', async () => {
        const m = (await call('GET', `/api/v1/migrations/${sid}`)).body as { state: string; actions: { action: string }[] };
        return ['completed', 'failed', 'cancelled'].includes(m.state) ? m : undefined;
      });
      assert.equal(steeredDone.state, 'completed', JSON.stringify(steeredDone));
      assert.deepEqual(steeredDone.actions.map((a) => a.action), ['set', 'complete', 'postcopy']);

      // Images: one imported, listed, in no use, deleted.
      const file = join(ctl.dataDir, 'src.qcow2');
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', file, '8M']);
      assert.equal((await call('POST', '/api/v1/images', { name: 'img1', file })).status, 201);
      assert.equal((await call('POST', '/api/v1/images', { name: 'img1', file })).status, 409);
      assert.equal((await call('GET', '/api/v1/images')).status, 200);
      assert.equal((await call('GET', '/api/v1/images/img1')).status, 200);
      assert.equal((await call('DELETE', '/api/v1/images/img1')).status, 200);
      assert.equal((await call('GET', '/api/v1/images/img1')).status, 404);

      assert.equal((await call('DELETE', '/api/v1/vms/v1')).status, 200);
      assert.equal((await call('DELETE', '/api/v1/vms/v1')).status, 404);

      // Every operation but the endless event stream was answered, and checked.
      const ops = Object.entries(env.doc.paths).flatMap(([path, o]) => Object.keys(o).map((m) => `${m.toUpperCase()} ${path}`));
      const missed = ops.filter((o) => !env.seen.has(o) && o !== 'GET /api/v1/events');
      assert.deepEqual(missed, [], 'operations this test did not call');
    } finally {
      for (const a of agents) await a.stop();
    }
  });
});
