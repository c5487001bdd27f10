/**
 * Requests that race for one VM, against a real two-host lab with real QEMU (issue #7, "never lost, never
 * twice"). Ten migrate requests at once must make exactly one job, and one QEMU runs the VM afterwards; a
 * migrate and a delete at once must leave either no VM anywhere (no QEMU, no record) or one VM running on
 * exactly one host, the store agreeing. Requests go straight to the API, concurrently from this process
 * (ten CLI processes would not start at once on two cores); what runs is read from /proc.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Agent, request } from 'undici';
import type { MigrationJson } from '../../src/common/migration.ts';
import { readLabState } from '../../src/lab/index.ts';
import { FINAL_STATES, LabHarness, waitFor, type VmView } from './helpers.ts';

const VM = 'r1';
const HOSTS = ['h1', 'h2'];

const h = new LabHarness('r');
let client: Agent | undefined;

interface Answer {
  status: number;
  body: { error?: { code: string; message: string } } & Record<string, unknown>;
}

async function api(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown): Promise<Answer> {
  assert.ok(h.state && client);
  const res = await request(new URL(path, h.state.server.url), {
    method,
    dispatcher: client,
    headers: { authorization: `Bearer ${h.state.server.adminToken}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? null : JSON.stringify(body),
  });
  const text = await res.body.text();
  return { status: res.statusCode, body: text ? (JSON.parse(text) as Answer['body']) : {} };
}

const jobsOf = async (vm: string): Promise<MigrationJson[]> => (await api('GET', `/api/v1/migrations?vm=${vm}`)).body as unknown as MigrationJson[];
const qemus = (): Record<string, number[]> => Object.fromEntries(HOSTS.map((host) => [host, h.qemuPids(host, VM)]));
const total = (q: Record<string, number[]>): number => Object.values(q).reduce((n, p) => n + p.length, 0);

/** Until the VM has no unfinished job (the answer to a migrate comes before the job ends). */
const settled = (): Promise<MigrationJson[]> =>
  waitFor(`jobs of ${VM} to end`, async () => {
    const jobs = await jobsOf(VM);
    return jobs.every((j) => FINAL_STATES.includes(j.state)) ? jobs : null;
  }, 90_000, 300);

async function createVm(host: string): Promise<VmView> {
  const v = await api('POST', '/api/v1/vms', { name: VM, memory: '128M', host });
  assert.equal(v.status, 201, JSON.stringify(v.body));
  return v.body as unknown as VmView;
}

/** The VM's one QEMU runs where the store says, and nowhere else. */
async function assertRunsOnce(what: string): Promise<VmView> {
  const shown = await api('GET', `/api/v1/vms/${VM}`);
  assert.equal(shown.status, 200, `${what}: ${JSON.stringify(shown.body)}`);
  const vm = shown.body as unknown as VmView;
  assert.equal(vm.state, 'running', `${what}: ${JSON.stringify(vm)}`);
  // The other host's QEMU (source or discarded destination) is gone once its agent has reaped it.
  const q = await waitFor(`${what}: one QEMU`, () => {
    const cur = qemus();
    return total(cur) === 1 ? cur : null;
  }, 20_000);
  assert.equal(q[vm.host]!.length, 1, `${what}: the QEMU runs on ${vm.host}, as the store says: ${JSON.stringify(q)}`);
  return vm;
}

describe('racing requests for one VM in a two-host lab', { timeout: 600_000 }, () => {
  before(async () => {
    const up = await h.ferry(['lab', 'up', '--hosts', '2', '--name', h.lab, '--json'], 180_000);
    h.state = readLabState({ name: h.lab, dataRoot: h.dataRoot });
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
    assert.ok(h.state);
    client = new Agent({ connect: { ca: h.state.server.caCertPem }, connections: 16 });
  });

  after(async () => {
    try {
      await client?.close();
    } finally {
      await h.down();
    }
  });

  it('10 concurrent migrate requests make exactly one job; one QEMU runs the VM afterwards', async () => {
    const before = await createVm('h1');
    const answers = await Promise.all(Array.from({ length: 10 }, () => api('POST', `/api/v1/vms/${VM}/migrate`, {})));
    const accepted = answers.filter((a) => a.status === 202);
    assert.equal(accepted.length, 1, `one 202: ${JSON.stringify(answers.map((a) => [a.status, a.body.error?.code]))}`);
    for (const a of answers.filter((x) => x.status !== 202)) {
      assert.equal(a.status, 409, JSON.stringify(a.body));
      assert.ok(['FERRY_E_MIGRATION_ACTIVE', 'FERRY_E_VM_STATE'].includes(a.body.error!.code), JSON.stringify(a.body));
    }
    const jobs = await settled();
    assert.equal(jobs.length, 1, `one job in the store: ${JSON.stringify(jobs.map((j) => j.id))}`);
    assert.equal(jobs[0]!.id, accepted[0]!.body.id);
    assert.equal(jobs[0]!.state, 'completed', JSON.stringify(jobs[0]!.error));
    const vm = await assertRunsOnce('after 10 migrates');
    assert.equal(vm.host, 'h2');
    assert.equal(vm.bootId, before.bootId, 'the same guest, not a reboot');
  });

  for (const order of ['migrate first', 'delete first'] as const) {
    it(`a migrate and a delete at once (${order} on the wire): deleted everywhere, or running on exactly one host`, async () => {
      if ((await api('GET', `/api/v1/vms/${VM}`)).status === 404) await createVm('h1');
      const migrate = (): Promise<Answer> => api('POST', `/api/v1/vms/${VM}/migrate`, {});
      const remove = (): Promise<Answer> => api('DELETE', `/api/v1/vms/${VM}`);
      const [m, d] = order === 'migrate first' ? await Promise.all([migrate(), remove()]) : (await Promise.all([remove(), migrate()])).reverse();
      const outcome = `migrate ${m!.status} ${m!.body.error?.code ?? ''}, delete ${d!.status} ${d!.body.error?.code ?? ''}`;
      assert.ok(m!.status < 500 && d!.status < 500, outcome);
      // Never both: a migration accepted for a VM that a delete removes would leave a guest nobody owns.
      assert.ok(!(m!.status === 202 && d!.status === 200), `${outcome}: both were accepted`);
      await settled();
      const now = await api('GET', `/api/v1/vms/${VM}`);
      if (now.status === 404) {
        assert.equal(now.body.error?.code, 'FERRY_E_VM_NOT_FOUND');
        assert.equal(d!.status, 200, `${outcome}: the VM is gone, so the delete must have said so`);
        await waitFor(`${outcome}: no QEMU left`, () => total(qemus()) === 0, 20_000);
        for (const host of HOSTS) await waitFor(`${outcome}: no run dir on ${host}`, () => !h.runDirExists(host, VM), 20_000);
        const vms = (await api('GET', '/api/v1/vms')).body as unknown as VmView[];
        assert.ok(!vms.some((v) => v.name === VM), outcome);
      } else {
        assert.notEqual(d!.status, 200, `${outcome}: the delete said deleted, yet the VM is there`);
        await assertRunsOnce(outcome);
      }
      console.log(`# ${order}: ${outcome} → ${now.status === 404 ? 'deleted' : 'kept'}`);
    });
  }
});
