/** The whole lab for real: `ferry lab up --hosts 2` (controller + two agents in namespaces), ready hosts, restarts, clean down. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../../src/common/paths.ts';
import {
  labApiHosts,
  labDown,
  labRestartAgent,
  labRestartServer,
  labStatus,
  readLabState,
  type LabState,
} from '../../src/lab/index.ts';
import { findLabObjects } from '../../src/lab/net.ts';

function ferry(
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [join(PACKAGE_ROOT, 'bin', 'ferry.js'), ...args],
      { env, timeout: 180_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

test(
  'ferry lab up --hosts 2: every host ready, restarts, idempotent up, clean down',
  { timeout: 600_000 },
  async () => {
    const name = 'l' + randomBytes(3).toString('hex');
    const root = mkdtempSync(join(tmpdir(), 'ferry-lab-test-'));
    const env = {
      ...process.env,
      FERRY_LAB_DIR: join(root, 'labs'),
      FERRY_CONFIG: join(root, 'config.json'),
    };
    const dataRoot = env.FERRY_LAB_DIR;
    let state: LabState | null = null;
    try {
      const up = await ferry(['lab', 'up', '--hosts', '2', '--name', name, '--json'], env);
      assert.equal(up.code, 0, `lab up failed: ${up.stdout}\n${up.stderr}`);
      const out = JSON.parse(up.stdout) as {
        name: string;
        reused: boolean;
        hosts: { name: string; pid: number }[];
      };
      assert.equal(out.name, name);
      assert.equal(out.reused, false);
      assert.deepEqual(
        out.hosts.map((h) => h.name),
        ['h1', 'h2'],
      );
      assert.ok(!up.stdout.includes('adminToken'), 'the admin token is not printed');

      state = readLabState({ name, dataRoot });
      assert.ok(state);
      const hosts = await labApiHosts(state);
      assert.deepEqual(hosts.map((h) => [h.name, h.state]).sort(), [
        ['h1', 'ready'],
        ['h2', 'ready'],
      ]);

      // The CLI config has this lab as a context, the current one, pointing at its controller with its CA.
      const doc = JSON.parse(readFileSync(env.FERRY_CONFIG, 'utf8')) as {
        current: string | null;
        contexts: Record<string, { server: string; token: string; caCertPem: string }>;
      };
      assert.equal(doc.current, name);
      const cfg = doc.contexts[name]!;
      assert.equal(cfg.server, state.server.url);
      assert.match(cfg.caCertPem, /BEGIN CERTIFICATE/);

      const st = await ferry(['lab', 'status', '--name', name, '--json'], env);
      assert.equal(st.code, 0, st.stdout);
      const status = JSON.parse(st.stdout) as {
        healthy: boolean;
        hosts: { alive: boolean; state: string }[];
      };
      assert.equal(status.healthy, true);

      // A second `up` reports the healthy lab as is.
      const again = await ferry(['lab', 'up', '--hosts', '2', '--name', name, '--json'], env);
      assert.equal(again.code, 0, again.stdout);
      assert.equal((JSON.parse(again.stdout) as { reused: boolean }).reused, true);

      // Restarts keep the data dirs: the agent needs no new token, the hosts come back ready.
      const oldAgent = state.hosts[1]!.pid;
      state = await labRestartAgent(name, 'h2', { dataRoot });
      assert.notEqual(state.hosts[1]!.pid, oldAgent);
      const oldServer = state.server.pid;
      state = await labRestartServer(name, { dataRoot });
      assert.notEqual(state.server.pid, oldServer);
      assert.equal((await labStatus({ name, dataRoot })).healthy, true);

      // A dead agent makes the lab unhealthy; `up` then rebuilds it from scratch.
      process.kill(state.hosts[0]!.pid, 'SIGKILL');
      const broken = await labStatus({ name, dataRoot });
      assert.equal(broken.healthy, false);
      assert.deepEqual(
        broken.hosts.map((h) => h.alive),
        [false, true],
      );
      const rebuilt = await ferry(['lab', 'up', '--hosts', '2', '--name', name, '--json'], env);
      assert.equal(rebuilt.code, 0, rebuilt.stdout);
      assert.equal((JSON.parse(rebuilt.stdout) as { reused: boolean }).reused, false);
      state = readLabState({ name, dataRoot });
      assert.equal((await labStatus({ name, dataRoot })).healthy, true);

      const down = await ferry(['lab', 'down', '--name', name, '--json'], env);
      assert.equal(down.code, 0, down.stdout);
      const d = JSON.parse(down.stdout) as { namespaces: string[]; removedConfig: string | null };
      assert.equal(d.namespaces.length, 2);
      assert.equal(d.removedConfig, env.FERRY_CONFIG);
    } finally {
      await labDown({ name, dataRoot }).catch(() => undefined);
      assert.deepEqual(await findLabObjects(name), { namespaces: [], links: [] });
      if (state !== null) {
        for (const pid of [state.server.pid, ...state.hosts.map((h) => h.pid)]) {
          assert.ok(
            !existsSync(`/proc/${pid}/cmdline`) ||
              !readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(name),
            `pid ${pid} survived`,
          );
        }
      }
      assert.ok(!existsSync(join(dataRoot, name)), 'the lab directory survived');
      rmSync(root, { recursive: true, force: true });
    }
  },
);
