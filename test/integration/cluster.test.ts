/**
 * Issue #3's acceptance list, checked the way a new user meets the cluster: one real lab (`ferry lab up
 * --hosts 2`), the real CLI with `--json`, one real guest. A VM created through the CLI runs and answers
 * UDP on its lab address; an agent killed with SIGKILL and started again finds its VM as it was (same
 * QEMU, same guest boot); agents refuse TLS clients without a certificate and the API refuses requests
 * without a token; bad input gets a stable code and exit code 2 and leaves nothing behind; `vm delete`
 * ends the QEMU; `lab down` leaves no namespace, link or process of the lab even after a failure.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request, type Dispatcher } from 'undici';
import { PACKAGE_ROOT } from '../../src/common/paths.ts';
import { GuestUdp, type GuestInfo } from '../../src/guest/client.ts';
import { labDown, labRestartAgent, processAlive, readLabState, type LabState } from '../../src/lab/index.ts';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

interface VmDoc {
  name: string;
  host: string;
  state: string;
  bootId: string | null;
  ip: string | null;
}

interface ErrorDoc {
  error: { code: string; message: string };
}

function ferry(args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [join(PACKAGE_ROOT, 'bin', 'ferry.js'), ...args],
      { env, timeout: 120_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

/** Runs a `--json` command and parses its one document; the exit code is checked by the caller. */
async function ferryJson<T>(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; doc: T }> {
  const r = await ferry([...args, '--json'], env);
  let doc: T;
  try {
    doc = JSON.parse(r.stdout) as T;
  } catch {
    assert.fail(
      `ferry ${args.join(' ')} printed no single JSON document (exit ${r.code}):\n${r.stdout}\n${r.stderr}`,
    );
  }
  return { code: r.code, doc };
}

/** QEMU processes whose argv names a path inside the lab's directory, by pid (zombies are gone). */
function labQemuPids(labDir: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    if (argv[0]?.includes('qemu-system') && argv.some((a) => a.includes(labDir)) && processAlive(Number(e))) {
      out.push(Number(e));
    }
  }
  return out.sort((a, b) => a - b);
}

/** The QEMU of one VM of the lab: its argv carries `-name <vm>,…`. */
function vmQemuPid(labDir: string, vm: string): number | null {
  for (const pid of labQemuPids(labDir)) {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const i = argv.indexOf('-name');
    if (i >= 0 && argv[i + 1]?.split(',')[0] === vm) return pid;
  }
  return null;
}

/** Processes (any) whose argv mentions the lab's directory: after `lab down` there must be none. */
function labProcesses(labDir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const argv = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      if (argv.some((a) => a.includes(labDir)) && processAlive(Number(e)))
        out.push(`${e} ${argv.join(' ').slice(0, 120)}`);
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

function execText(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: 10_000 }, (err, stdout) => (err ? reject(err) : resolve(String(stdout))));
  });
}

/** The guest's own report over UDP from the root namespace; datagrams may be lost, so a few tries. */
async function guestInfo(ip: string): Promise<GuestInfo> {
  const g = await GuestUdp.open(ip);
  try {
    let last: unknown;
    for (let i = 0; i < 10; i++) {
      try {
        const seq = 1000 + i;
        assert.equal(await g.probe(seq, { timeoutMs: 1000 }), seq);
        return await g.info({ timeoutMs: 2000 });
      } catch (err) {
        last = err;
      }
    }
    throw last;
  } finally {
    await g.close();
  }
}

/** An HTTPS request to an agent with the cluster CA pinned and the given client certificate, if any. */
function callAgent(
  url: string,
  caPem: string,
  client?: { cert: string; key: string },
): Promise<{ status: number; body: string } | { error: string }> {
  return new Promise((resolve) => {
    const req = httpsRequest(new URL('/v1/vms', url), {
      ca: caPem,
      ...client,
      agent: false,
      timeout: 10_000,
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ error: `${err.code ?? ''} ${err.message}` }));
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.end();
  });
}

test(
  'cluster acceptance (issue #3): lab, VM, agent restart, TLS and token, bad input, delete, down',
  { timeout: 480_000 },
  async () => {
    const name = 'c' + randomBytes(4).toString('hex').slice(0, 4);
    const root = mkdtempSync(join(tmpdir(), 'ferry-cluster-test-'));
    const dataRoot = join(root, 'labs');
    // The lab's helpers in this process and the CLI in child processes use the same private config and lab dir.
    process.env.FERRY_LAB_DIR = dataRoot;
    process.env.FERRY_CONFIG = join(root, 'config.json');
    const env = { ...process.env };
    const labDir = join(dataRoot, name);
    let state: LabState | null = null;
    let dispatcher: Agent | undefined;
    let failed = false;
    try {
      // --- lab up, one VM ---------------------------------------------------------------------------
      const up = await ferryJson<{ name: string; hosts: { name: string; pid: number }[] }>(
        ['lab', 'up', '--hosts', '2', '--name', name],
        env,
      );
      assert.equal(up.code, 0, JSON.stringify(up.doc));
      assert.deepEqual(
        up.doc.hosts.map((h) => h.name),
        ['h1', 'h2'],
      );
      state = readLabState({ name, dataRoot });
      assert.ok(state, 'lab.json written');

      const created = await ferryJson<VmDoc>(['vm', 'create', 't1', '--memory', '256M'], env);
      assert.equal(created.code, 0, JSON.stringify(created.doc));
      const shown = await ferryJson<VmDoc>(['vm', 'show', 't1'], env);
      assert.equal(shown.code, 0, JSON.stringify(shown.doc));
      const vm = shown.doc;
      assert.equal(vm.state, 'running');
      assert.ok(['h1', 'h2'].includes(vm.host), `host ${vm.host}`);
      assert.match(vm.bootId ?? '', /^[0-9a-f-]{36}$/);
      assert.ok(vm.ip, 'the VM has an address');
      const info = await guestInfo(vm.ip);
      assert.equal(info.bootId, vm.bootId, 'the guest reports the boot id the controller shows');
      const qemuPid = vmQemuPid(labDir, 't1');
      assert.ok(qemuPid !== null, 'the QEMU of t1 runs');

      // --- SIGKILL the VM's agent, start it again: the VM never noticed --------------------------------
      const host = state.hosts.find((h) => h.name === vm.host)!;
      process.kill(host.pid, 'SIGKILL');
      state = await labRestartAgent(name, host.name, { dataRoot });
      assert.notEqual(state.hosts.find((h) => h.name === vm.host)!.pid, host.pid);
      assert.equal(vmQemuPid(labDir, 't1'), qemuPid, 'same QEMU process');
      assert.equal((await guestInfo(vm.ip)).bootId, vm.bootId, 'same guest boot');
      let after: VmDoc | null = null;
      for (const deadline = Date.now() + 20_000; Date.now() < deadline; await sleep(500)) {
        const r = await ferryJson<VmDoc>(['vm', 'show', 't1'], env);
        after = r.doc;
        if (r.code === 0 && after.state === 'running') break;
      }
      assert.equal(
        after?.state,
        'running',
        `the controller shows t1 running again: ${JSON.stringify(after)}`,
      );
      assert.equal(after!.bootId, vm.bootId);
      assert.equal(after!.host, vm.host);

      // --- mTLS and tokens -----------------------------------------------------------------------------
      for (const [i, h] of state.hosts.entries()) {
        const bare = await callAgent(h.url, state.server.caCertPem);
        assert.ok(
          'error' in bare,
          `agent ${h.name} answered a client without a certificate: ${JSON.stringify(bare)}`,
        );
        assert.doesNotMatch(
          bare.error,
          /ECONNREFUSED|EHOSTUNREACH|timeout/,
          'refused by TLS, not unreachable',
        );
        // Control: the other agent's certificate (cluster-signed, clientAuth) passes TLS and is then
        // refused by the agent itself, so the failure above is the missing certificate.
        const peer = state.hosts[(i + 1) % state.hosts.length]!;
        const cert = {
          cert: readFileSync(join(peer.dataDir, 'cert.pem'), 'utf8'),
          key: readFileSync(join(peer.dataDir, 'key.pem'), 'utf8'),
        };
        const other = await callAgent(h.url, state.server.caCertPem, cert);
        assert.ok(
          'status' in other && other.status === 403,
          `agent ${h.name}, peer certificate: ${JSON.stringify(other)}`,
        );
        assert.match(other.body, /FERRY_E_FORBIDDEN/);
      }
      dispatcher = new Agent({ connect: { ca: state.server.caCertPem } });
      const noToken = await request(`${state.server.url}/api/v1/vms`, { dispatcher });
      assert.equal(noToken.statusCode, 401);
      assert.equal(((await noToken.body.json()) as ErrorDoc).error.code, 'FERRY_E_UNAUTHORIZED');
      const wrong = await ferryJson<ErrorDoc>(['vm', 'list', '--token', 'wrong'], env);
      assert.equal(wrong.code, 2);
      assert.equal(wrong.doc.error.code, 'FERRY_E_UNAUTHORIZED');

      // --- bad input: a stable code, exit 2, nothing started or half-created ----------------------------
      const snapshot = async (): Promise<{ vms: string[]; qemu: number[] }> => {
        const l = await ferryJson<VmDoc[]>(['vm', 'list'], env);
        assert.equal(l.code, 0, JSON.stringify(l.doc));
        return { vms: l.doc.map((v) => `${v.name}@${v.host}:${v.state}`).sort(), qemu: labQemuPids(labDir) };
      };
      const before = await snapshot();
      assert.deepEqual(before.vms, [`t1@${vm.host}:running`]);
      assert.deepEqual(before.qemu, [qemuPid]);
      const cases: [string[], string[]][] = [
        [['vm', 'create', 't1', '--memory', '256M'], ['FERRY_E_VM_EXISTS']],
        [
          ['vm', 'create', 't2', '--memory', '900G'],
          ['FERRY_E_NO_CAPACITY', 'FERRY_E_MEMORY_TOO_LARGE'],
        ],
        [['vm', 'create', 't2', '--host', 'nope'], ['FERRY_E_HOST_NOT_FOUND']],
        [['vm', 'create', 'Bad_Name'], ['FERRY_E_BAD_NAME']],
        [['vm', 'create', 't2', '--memory', '0'], ['FERRY_E_BAD_SIZE']],
      ];
      for (const [args, codes] of cases) {
        const r = await ferryJson<ErrorDoc>(args, env);
        assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code} ${JSON.stringify(r.doc)}`);
        assert.ok(codes.includes(r.doc.error?.code), `${args.join(' ')}: ${JSON.stringify(r.doc)}`);
        assert.ok(r.doc.error.message.length > 10, 'a message that says something');
      }
      const auth = { authorization: `Bearer ${state.server.adminToken}`, 'content-type': 'application/json' };
      const malformed = [
        '{"name": "t2", "memory":',
        JSON.stringify({ name: 't2', memory: true, vcpus: 'x' }),
        JSON.stringify(['t2']),
      ];
      const vmsUrl = `${state.server.url}/api/v1/vms`;
      for (const payload of malformed) {
        const res: Dispatcher.ResponseData = await request(vmsUrl, {
          method: 'POST',
          dispatcher,
          headers: auth,
          body: payload,
        });
        const doc = (await res.body.json()) as ErrorDoc;
        assert.equal(res.statusCode, 400, payload);
        assert.equal(doc.error.code, 'FERRY_E_BAD_INPUT', `${payload}: ${JSON.stringify(doc)}`);
      }
      assert.deepEqual(await snapshot(), before, 'bad input changed nothing');

      // --- delete ----------------------------------------------------------------------------------------
      const del = await ferryJson<{ deleted: boolean }>(['vm', 'delete', 't1'], env);
      assert.equal(del.code, 0, JSON.stringify(del.doc));
      for (const deadline = Date.now() + 10_000; processAlive(qemuPid) && Date.now() < deadline;)
        await sleep(100);
      assert.ok(!processAlive(qemuPid), 'the QEMU of t1 is gone');
      assert.deepEqual(await snapshot(), { vms: [], qemu: [] });
      const gone = await ferryJson<ErrorDoc>(['vm', 'show', 't1'], env);
      assert.equal(gone.code, 2);
      assert.equal(gone.doc.error.code, 'FERRY_E_VM_NOT_FOUND');
    } catch (err) {
      failed = true;
      throw err;
    } finally {
      await dispatcher?.close();
      const down = await ferry(['lab', 'down', '--name', name, '--json'], env);
      if (down.code !== 0) await labDown({ name, dataRoot }).catch(() => undefined);
      const namespaces = (await execText('ip', ['netns', 'list']))
        .split('\n')
        .filter((l) => l.startsWith(`ferry-${name}-`));
      const links = (
        JSON.parse(await execText('ip', ['-j', 'link'])) as { ifname: string; ifalias?: string }[]
      )
        .filter(
          (l) =>
            l.ifname.startsWith(`fm-${name}`) ||
            l.ifname.startsWith(`fv-${name}`) ||
            l.ifalias === `ferry-lab:${name}`,
        )
        .map((l) => l.ifname);
      // PID 1 reaps orphans late: give the kernel a moment before calling a process a survivor.
      let left = labProcesses(labDir);
      for (let i = 0; i < 30 && left.length > 0; i++) {
        await sleep(100);
        left = labProcesses(labDir);
      }
      rmSync(root, { recursive: true, force: true });
      const leftovers = { downExit: down.code, namespaces, links, processes: left };
      const clean = { downExit: 0, namespaces: [], links: [], processes: [] };
      // After a failure, report leftovers without hiding the failure itself.
      if (!failed)
        assert.deepEqual(leftovers, clean, `lab down left things behind: ${down.stdout}\n${down.stderr}`);
      else if (JSON.stringify(leftovers) !== JSON.stringify(clean))
        console.error('lab down left:', leftovers);
    }
  },
);
