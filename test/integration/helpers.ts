/**
 * Shared harness of the lab acceptance tests that drive the real CLI: one lab per test file with a unique
 * name, a private FERRY_CONFIG and FERRY_LAB_DIR under a mkdtemp root, `ferry … --json` run as a child
 * process, and looks at what really runs (QEMU processes found through /proc, run dirs on each host).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MigrationJson } from '../../src/common/migration.ts';
import { PACKAGE_ROOT } from '../../src/common/paths.ts';
import { labDown, type LabState } from '../../src/lab/index.ts';
import { cmdlineOf as cmdline, pidGone, waitUntil as waitFor } from '../../src/testing/cluster.ts';

export const FERRY = join(PACKAGE_ROOT, 'bin', 'ferry.js');
export const FINAL_STATES = ['completed', 'failed', 'cancelled'];

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export interface VmView {
  name: string;
  host: string;
  state: string;
  bootId: string | null;
}

export const otherHost = (host: string): string => (host === 'h1' ? 'h2' : 'h1');

/** The same waits and /proc readings as the fault tooling's (src/testing/cluster.ts). */
export { cmdlineOf as cmdline, waitUntil as waitFor } from '../../src/testing/cluster.ts';

/** A process that exited but was not reaped yet counts as gone. */
export const isZombie = (pid: string): boolean => pidGone(Number(pid));

/** One lab of one test file: unique lab name, private config and data dirs. */
export class LabHarness {
  readonly lab: string;
  readonly root: string;
  readonly dataRoot: string;
  readonly env: NodeJS.ProcessEnv;
  /** Set once the lab is up (tests that restart the controller replace it). */
  state: LabState | null = null;

  constructor(prefix: string) {
    this.lab = prefix + randomBytes(2).toString('hex');
    this.root = mkdtempSync(join(tmpdir(), `ferry-${prefix}-`));
    this.dataRoot = join(this.root, 'labs');
    this.env = { ...process.env, FERRY_LAB_DIR: this.dataRoot, FERRY_CONFIG: join(this.root, 'config.json') };
  }

  /**
   * Removes the lab and the temporary folder, even after a failure; prints what the tests measured. With
   * FERRY_TEST_LOGS=DIR the lab's logs (controller, agents) are copied to DIR/<lab>/ first, to read after a failure.
   */
  async down(measured: readonly string[] = []): Promise<void> {
    try {
      const keep = process.env.FERRY_TEST_LOGS;
      if (keep) {
        const from = join(this.dataRoot, this.lab);
        if (existsSync(from)) cpSync(from, join(keep, this.lab), { recursive: true, filter: (f) => !/\.(qcow2|img|raw|sock)$/.test(f) });
      }
      await labDown({ name: this.lab, dataRoot: this.dataRoot });
    } finally {
      rmSync(this.root, { recursive: true, force: true });
      if (measured.length) console.log(`# measured:\n${measured.map((l) => `#   ${l}`).join('\n')}`);
    }
  }

  ferry(args: string[], timeoutMs = 180_000): Promise<Run> {
    return new Promise((resolve) => {
      execFile(
        process.execPath,
        [FERRY, ...args],
        { env: this.env, timeout: timeoutMs, maxBuffer: 16 << 20 },
        (err, stdout, stderr) => {
          const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
          resolve({ code, stdout: String(stdout), stderr: String(stderr) });
        },
      );
    });
  }

  /** Runs a command with `--json` (placed before a `--`, which hands the rest to the guest tool). */
  ferryRaw(args: string[], timeoutMs?: number): Promise<Run> {
    const dd = args.indexOf('--');
    return this.ferry(dd < 0 ? [...args, '--json'] : [...args.slice(0, dd), '--json', ...args.slice(dd)], timeoutMs);
  }

  /** Runs a `--json` command and parses its one document; `okCodes` are the exit codes the caller expects. */
  async ferryJson<T>(args: string[], okCodes: number[] = [0]): Promise<T> {
    const r = await this.ferryRaw(args);
    assert.ok(okCodes.includes(r.code), `ferry ${args.join(' ')} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  }

  vmShow(vm: string): Promise<VmView> {
    return this.ferryJson<VmView>(['vm', 'show', vm]);
  }

  guest<T>(vm: string, ...cmd: string[]): Promise<T> {
    return this.ferryJson<T>(['vm', 'guest', vm, '--', ...cmd]);
  }

  migrationShow(id: string): Promise<MigrationJson> {
    return this.ferryJson<MigrationJson>(['migration', 'show', id]);
  }

  async waitFinal(id: string, timeoutMs: number): Promise<MigrationJson> {
    let last: MigrationJson | null = null;
    try {
      return await waitFor(
        `migration ${id} to end`,
        async () => {
          const m = await this.migrationShow(id);
          last = m;
          return FINAL_STATES.includes(m.state) ? m : null;
        },
        timeoutMs,
        300,
      );
    } catch (err) {
      // A migration that never ends is explained by its record and by what the lab's processes logged about it.
      throw new Error(`${(err as Error).message}\nlast seen: ${JSON.stringify(last)}\n${this.logLinesOf(id)}`, { cause: err });
    }
  }

  /** The last lines that mention `what` in the controller's and the agents' logs of this lab. */
  logLinesOf(what: string, max = 40): string {
    if (!this.state) return '';
    const logs = [this.state.server.log, ...this.state.hosts.map((x) => x.log)];
    return logs
      .map((file) => {
        let lines: string[] = [];
        try {
          lines = readFileSync(file, 'utf8').split('\n').filter((l) => l.includes(what));
        } catch {
          // not written (yet)
        }
        return `--- ${file}: ${lines.length} lines about ${what}\n${lines.slice(-max).join('\n')}`;
      })
      .join('\n');
  }

  hostDir(host: string): string {
    assert.ok(this.state, 'the lab is up');
    return join(this.state.dir, 'hosts', host);
  }

  runDirExists(host: string, vm: string): boolean {
    return existsSync(join(this.hostDir(host), 'vms', vm));
  }

  /** QEMU processes of `vm` on one lab host, found from /proc by the host's data dir in their argv. */
  qemuPids(host: string, vm: string, opts: { incoming?: boolean } = {}): number[] {
    const dir = this.hostDir(host) + '/';
    const out: number[] = [];
    for (const e of readdirSync('/proc')) {
      if (!/^\d+$/.test(e)) continue;
      const argv = cmdline(e);
      if (!argv[0]?.includes('qemu-system')) continue;
      if (!argv.some((a) => a.includes(dir))) continue;
      if (!argv.some((a) => a === vm || a.startsWith(`${vm},`))) continue;
      if (opts.incoming && !argv.includes('-incoming')) continue;
      if (isZombie(e)) continue;
      out.push(Number(e));
    }
    return out;
  }
}
