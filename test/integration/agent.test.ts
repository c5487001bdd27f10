/**
 * The agent as a real process (`ferry agent`) with a real VM: create it over mutual TLS, SIGKILL the agent,
 * start another with the same data dir, and find the same QEMU and the same guest boot. Then SIGTERM: the
 * agent exits 0 and the VM still runs; a QEMU that died meanwhile is reported stopped. Certificates are
 * pre-placed in the data dir (what a join leaves, the controller's pin included), so no controller is
 * needed; the join itself is covered in src/agent/identity.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { caFromPem, createCaCert, type ClusterCa } from '../../src/controller/ca.ts';
import { AGENT_PROTOCOL, PROTOCOL_HEADER, type VmStatus } from '../../src/common/protocol.ts';
import { defaultVmSpec, MIB } from '../../src/common/spec.ts';
import { processGone } from '../../src/qemu/process.ts';

const FERRY = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));

interface Agent {
  child: ChildProcess;
  url: string;
  pid: number;
}

async function startAgentProcess(dataDir: string): Promise<Agent> {
  const child = spawn(
    process.execPath,
    [FERRY, 'agent', '--name', 'h1', '--listen', '127.0.0.1:0', '--data', dataDir, '--json'],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FERRY_ACCEL: 'tcg' } },
  );
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const line = await new Promise<string>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout! });
    const timer = setTimeout(() => reject(new Error(`agent did not start in 30 s: ${stderr}`)), 30_000);
    rl.once('line', (l) => {
      clearTimeout(timer);
      resolve(l);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`agent exited ${code}: ${stderr}`));
    });
  });
  const info = JSON.parse(line) as { name: string; url: string; pid: number };
  assert.equal(info.name, 'h1');
  assert.equal(info.pid, child.pid);
  return { child, url: info.url, pid: info.pid };
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((r) => child.once('exit', (code) => r(code)));
}

function call<T>(
  ca: ClusterCa,
  url: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: T }> {
  return new Promise((resolve, reject) => {
    const text = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      `${url}${path}`,
      {
        method,
        ca: ca.caCertPem,
        cert: ca.controllerClient.certPem,
        key: ca.controllerClient.keyPem,
        agent: false,
        headers: {
          [PROTOCOL_HEADER]: String(AGENT_PROTOCOL),
          ...(text === undefined ? {} : { 'content-type': 'application/json' }),
        },
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('end', () => {
          const t = Buffer.concat(parts).toString('utf8');
          const json = String(res.headers['content-type']).includes('json');
          resolve({ status: res.statusCode ?? 0, body: (json ? JSON.parse(t) : t) as T });
        });
      },
    );
    req.on('error', reject);
    req.end(text);
  });
}

test('VMs outlive the agent: SIGKILL, restart, same QEMU and same boot; SIGTERM leaves them running', async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'ferry-agent-it-'));
  const a = await createCaCert('it CA');
  const ca = await caFromPem(a.certPem, a.keyPem);
  const mine = await ca.issueAgentCert('h1', ['127.0.0.1']);
  await writeFile(join(dataDir, 'ca.pem'), ca.caCertPem, { mode: 0o600 });
  await writeFile(join(dataDir, 'key.pem'), mine.keyPem, { mode: 0o600 });
  await writeFile(join(dataDir, 'controller.pin'), `${ca.controllerPin}\n`, { mode: 0o600 });
  await writeFile(join(dataDir, 'cert.pem'), mine.certPem, { mode: 0o600 });

  const agents: Agent[] = [];
  let qemuPid: number | null = null;
  try {
    const first = await startAgentProcess(dataDir);
    agents.push(first);
    const created = await call<VmStatus>(ca, first.url, 'POST', '/agent/v1/vms', {
      spec: defaultVmSpec('it1', { memoryBytes: 256 * MIB }),
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    qemuPid = created.body.pid;
    const st = await call<VmStatus>(ca, first.url, 'GET', '/agent/v1/vms/it1');
    assert.equal(st.body.state, 'running');
    assert.match(st.body.bootId ?? '', /^[0-9a-f-]{36}$/);
    assert.ok(qemuPid !== null && qemuPid > 1);

    const dup = await call<{ error: { code: string } }>(ca, first.url, 'POST', '/agent/v1/vms', {
      spec: defaultVmSpec('it1', { memoryBytes: 256 * MIB }),
    });
    assert.equal(dup.status, 409);
    assert.equal(dup.body.error.code, 'FERRY_E_VM_EXISTS');
    const inv = await call<{ freeMemoryBytes: number; memoryBytes: number }>(
      ca,
      first.url,
      'GET',
      '/agent/v1/inventory',
    );
    assert.ok(inv.body.freeMemoryBytes <= inv.body.memoryBytes - 256 * MIB - 512 * MIB);
    const consoleText = await call<string>(ca, first.url, 'GET', '/agent/v1/vms/it1/console');
    assert.match(consoleText.body, /FERRY-GUEST READY boot_id=/);

    first.child.kill('SIGKILL');
    await exited(first.child);
    assert.equal(processGone(qemuPid), false, 'QEMU must survive the agent’s SIGKILL');

    const second = await startAgentProcess(dataDir);
    agents.push(second);
    const list = await call<VmStatus[]>(ca, second.url, 'GET', '/agent/v1/vms');
    assert.equal(list.body.length, 1);
    assert.equal(list.body[0]!.name, 'it1');
    assert.equal(list.body[0]!.state, 'running');
    assert.equal(list.body[0]!.pid, qemuPid);
    assert.equal(list.body[0]!.bootId, st.body.bootId);

    second.child.kill('SIGTERM');
    assert.equal(await exited(second.child), 0);
    assert.equal(processGone(qemuPid), false, 'SIGTERM closes the agent, never its VMs');

    // QEMU dies while no agent runs: the next agent reports the VM stopped, and can delete it.
    process.kill(qemuPid, 'SIGKILL');
    const deadline = Date.now() + 5000;
    while (!processGone(qemuPid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const third = await startAgentProcess(dataDir);
    agents.push(third);
    const gone = await call<VmStatus>(ca, third.url, 'GET', '/agent/v1/vms/it1');
    assert.equal(gone.body.state, 'stopped');
    assert.equal(gone.body.pid, null);
    assert.equal(gone.body.bootId, null);
    const del = await call<{ deleted: boolean }>(ca, third.url, 'DELETE', '/agent/v1/vms/it1');
    assert.deepEqual([del.status, del.body], [200, { deleted: true }]);
    assert.deepEqual((await call<VmStatus[]>(ca, third.url, 'GET', '/agent/v1/vms')).body, []);
  } finally {
    for (const ag of agents)
      if (ag.child.exitCode === null && ag.child.signalCode === null) ag.child.kill('SIGKILL');
    if (qemuPid !== null && !processGone(qemuPid)) process.kill(qemuPid, 'SIGKILL');
    await rm(dataDir, { recursive: true, force: true });
  }
});
