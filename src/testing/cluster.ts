/**
 * A lab as the fault tooling drives it: one lab with a unique name, private config and data dirs under a
 * temporary root, the controller started with test hold points on (`FERRY_TEST_HOLD_DIR`), the real CLI for
 * what a user does (`ferry … --json` as a child process), the API for what is polled often (cheaper than a
 * CLI process per poll on 2 cores), and /proc for what really runs on each host.
 *
 * The hold dir reaches this lab's controller (and its restarts) through the lab's `serverEnv`, so several
 * clusters can run in one process; `up` writes the CLI config to this cluster's own file (FERRY_CONFIG is
 * set for the moment of `labUp`), and every CLI call gets this cluster's environment.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { MigrationJson } from '../common/migration.ts';
import { PACKAGE_ROOT } from '../common/paths.ts';
import { labApi, labDown, labUp, readLabState, restoreTraffic, type LabState } from '../lab/index.ts';

export const FERRY_BIN = join(PACKAGE_ROOT, 'bin', 'ferry.js');
/** The job states after which nothing more happens. Every other state (parked ones too) is not final. */
export const FINAL_STATES: readonly string[] = ['completed', 'failed', 'cancelled'];

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** What `ferry vm show --json` says (the fields the invariants read). */
export interface VmJson {
  name: string;
  host: string;
  state: string;
  bootId: string | null;
  ip?: string | null;
  spec?: { disks?: { id: string }[]; nics?: { ip?: string }[] };
}

/** A QEMU process found in /proc: which host's data dir it belongs to. */
export interface QemuProc {
  pid: number;
  host: string;
  incoming: boolean;
}

export function cmdlineOf(pid: number | string): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

/** Gone, or a zombie nobody reaped yet: either way it runs no guest. */
export function pidGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const s = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return s === 'Z' || s === 'X';
  } catch {
    return true;
  }
}

/** Thrown inside a `waitUntil` callback: stop waiting at once, and throw this error. */
export class StopWaiting extends Error {}

export async function waitUntil<T>(
  what: string,
  fn: () => Promise<T | null | undefined | false> | T | null | undefined | false,
  timeoutMs: number,
  everyMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== null && v !== undefined && v !== false) return v;
    } catch (err) {
      if (err instanceof StopWaiting) throw err;
      lastErr = err;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? `: ${String(lastErr)}` : ''}`);
    await sleep(everyMs);
  }
}

export class TestCluster {
  readonly lab: string;
  readonly root: string;
  readonly dataRoot: string;
  readonly holdDir: string;
  readonly configFile: string;
  state: LabState | null = null;

  constructor(prefix: string) {
    this.lab = prefix + randomBytes(2).toString('hex');
    this.root = mkdtempSync(join(tmpdir(), `ferry-${prefix}-`));
    this.dataRoot = join(this.root, 'labs');
    this.holdDir = join(this.root, 'holds');
    this.configFile = join(this.root, 'config.json');
    mkdirSync(this.holdDir, { recursive: true, mode: 0o700 });
  }

  get env(): NodeJS.ProcessEnv {
    return { ...process.env, FERRY_LAB_DIR: this.dataRoot, FERRY_CONFIG: this.configFile };
  }

  /** The lab's state; throws before `up`. */
  get current(): LabState {
    if (this.state === null) throw new Error(`lab ${this.lab} is not up`);
    return this.state;
  }

  /**
   * `serverArgs`: more arguments of the lab's `ferry server` (e.g. `--ha --id c1`), kept across its restarts;
   * `serverEnv`: more of its environment (e.g. FERRY_AGENT_CERT_SECONDS), kept too.
   */
  async up(hosts: number, opts: { serverArgs?: string[]; serverEnv?: Record<string, string> } = {}): Promise<LabState> {
    process.env.FERRY_CONFIG = this.configFile; // where labUp writes the CLI config
    // The hold dir goes to this lab's controller only (and to its restarts): two clusters may run at once.
    this.state = await labUp({
      name: this.lab,
      hosts,
      dataRoot: this.dataRoot,
      timeoutMs: 180_000,
      serverEnv: { ...opts.serverEnv, FERRY_TEST_HOLD_DIR: this.holdDir },
      ...(opts.serverArgs === undefined ? {} : { serverArgs: opts.serverArgs }),
    });
    return this.state;
  }

  /** Re-reads lab.json (pids change when the lab restarts an agent or the controller). */
  refresh(): LabState {
    const s = readLabState({ name: this.lab, dataRoot: this.dataRoot });
    if (s === null) throw new Error(`lab ${this.lab}: lab.json is gone`);
    this.state = s;
    return s;
  }

  /** Removes the lab (every process, namespace, nft table with it) and the temporary root. */
  async down(): Promise<void> {
    try {
      if (this.state !== null) {
        for (const h of this.state.hosts) await restoreTraffic(this.lab, h.name).catch(() => undefined);
        // A stopped agent would ignore the SIGTERM labDown sends first.
        for (const h of this.state.hosts) {
          try {
            process.kill(h.pid, 'SIGCONT');
          } catch {
            /* not running */
          }
        }
      }
      await labDown({ name: this.lab, dataRoot: this.dataRoot });
    } finally {
      rmSync(this.root, { recursive: true, force: true });
    }
  }

  ferry(args: string[], timeoutMs = 180_000): Promise<CliRun> {
    return new Promise((resolve) => {
      execFile(
        process.execPath,
        [FERRY_BIN, ...args],
        { env: this.env, timeout: timeoutMs, maxBuffer: 16 << 20 },
        (err, stdout, stderr) => {
          const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
          resolve({ code, stdout: String(stdout), stderr: String(stderr) });
        },
      );
    });
  }

  /** `ferry ARGS --json` (the flag placed before a `--`); throws unless the exit code is one of `ok`. */
  async ferryJson<T>(args: string[], ok: readonly number[] = [0], timeoutMs?: number): Promise<T> {
    const dd = args.indexOf('--');
    const full = dd < 0 ? [...args, '--json'] : [...args.slice(0, dd), '--json', ...args.slice(dd)];
    const r = await this.ferry(full, timeoutMs);
    if (!ok.includes(r.code)) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${r.stdout.trim()} ${r.stderr.trim()}`);
    return JSON.parse(r.stdout) as T;
  }

  /** GET on the controller's API (pinned CA, admin token). */
  api<T>(path: string, timeoutMs = 5000): Promise<T> {
    return labApi(this.current, path, timeoutMs) as Promise<T>;
  }

  migration(id: string): Promise<MigrationJson> {
    return this.api<MigrationJson>(`/api/v1/migrations/${encodeURIComponent(id)}`);
  }

  vmShow(vm: string): Promise<VmJson> {
    return this.ferryJson<VmJson>(['vm', 'show', vm]);
  }

  guest<T>(vm: string, ...cmd: string[]): Promise<T> {
    return this.ferryJson<T>(['vm', 'guest', vm, '--', ...cmd]);
  }

  /** Waits until the job is final (the API may be down meanwhile: a controller being restarted). */
  waitFinal(id: string, timeoutMs: number): Promise<MigrationJson> {
    return waitUntil(
      `migration ${id} to become final`,
      async () => {
        const m = await this.migration(id);
        return FINAL_STATES.includes(m.state) ? m : null;
      },
      timeoutMs,
      300,
    );
  }

  hostDir(host: string): string {
    return join(this.current.dir, 'hosts', host);
  }

  runDir(host: string, vm: string): string {
    return join(this.hostDir(host), 'vms', vm);
  }

  runDirExists(host: string, vm: string): boolean {
    return existsSync(this.runDir(host, vm));
  }

  /** Every QEMU of `vm` on every host of the lab, from /proc (not from any agent or the store). */
  qemus(vm: string): QemuProc[] {
    const dirs = this.current.hosts.map((h) => ({ host: h.name, dir: this.hostDir(h.name) + '/' }));
    const out: QemuProc[] = [];
    for (const e of readdirSync('/proc')) {
      if (!/^\d+$/.test(e)) continue;
      const argv = cmdlineOf(e);
      if (!argv[0]?.includes('qemu-system')) continue;
      if (!argv.some((a) => a === vm || a.startsWith(`${vm},`))) continue;
      const pid = Number(e);
      if (pidGone(pid)) continue;
      const d = dirs.find((x) => argv.some((a) => a.includes(x.dir)));
      if (d === undefined) continue;
      out.push({ pid, host: d.host, incoming: argv.includes('-incoming') });
    }
    return out;
  }

  hostPid(host: string, refresh = true): number {
    const s = refresh ? this.refresh() : this.current;
    const h = s.hosts.find((x) => x.name === host);
    if (h === undefined) throw new Error(`lab ${this.lab} has no host ${host}`);
    return h.pid;
  }

  serverPid(): number {
    return this.refresh().server.pid;
  }

  /** Hosts as the controller sees them. */
  async hostStates(): Promise<Record<string, string>> {
    const list = await this.api<{ name: string; state: string }[] | { hosts: { name: string; state: string }[] }>('/api/v1/hosts');
    const arr = Array.isArray(list) ? list : list.hosts;
    return Object.fromEntries(arr.map((h) => [h.name, h.state]));
  }

  /** Every host `ready` in the controller's view: what a user waits for before the next migration. */
  waitHostsReady(timeoutMs: number): Promise<true> {
    return waitUntil(
      'every host ready',
      async () => Object.values(await this.hostStates()).every((s) => s === 'ready') || null,
      timeoutMs,
      500,
    );
  }
}
