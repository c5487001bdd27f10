/**
 * QEMU as an operating-system process: launch (no shell, own session so the manager may die without taking
 * the VM along), the run dir layout QEMU writes into, re-attach after the manager restarts (pidfile checked
 * against /proc so a recycled PID is never mistaken for our QEMU), and the end of a QEMU. A QEMU has ended
 * when its QMP socket closed AND its process is gone; a zombie counts as gone because PID 1 here reaps
 * orphans ~1.3 s late, and the PID alone can be recycled.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { chmod, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../common/errors.ts';
import { qemuBinary } from './accel.ts';
import { QmpClient } from './qmp.ts';

/** Files of one QEMU in its run dir. The names are part of the on-disk layout: re-attach relies on them. */
export interface RunFiles {
  qmpSocket: string;
  /** The observer QMP monitor (argv.ts): for tooling that must not take the agent's connection. */
  observeSocket: string;
  guestSocket: string;
  /** qemu-guest-agent's channel (VmSpec.guestAgent). */
  qgaSocket: string;
  serialLog: string;
  pidfile: string;
  stderr: string;
}

export function runFiles(runDir: string): RunFiles {
  return {
    qmpSocket: join(runDir, 'qmp.sock'),
    observeSocket: join(runDir, 'qmp-observe.sock'),
    guestSocket: join(runDir, 'guest.sock'),
    qgaSocket: join(runDir, 'qga.sock'),
    serialLog: join(runDir, 'serial.log'),
    pidfile: join(runDir, 'qemu.pid'),
    stderr: join(runDir, 'qemu.stderr'),
  };
}

export interface QemuHandle {
  pid: number;
  qmp: QmpClient;
  /** True when this process spawned QEMU (and so reaps it); false after attach. */
  child: boolean;
}

/** Whether `pid` is gone: no /proc entry, or a zombie waiting to be reaped. */
export function processGone(pid: number): boolean {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return true;
  }
  // Field 3 follows the command name in parentheses, which may itself contain ') '.
  const state = text.slice(text.lastIndexOf(')') + 2, text.lastIndexOf(')') + 3);
  return state === 'Z' || state === 'X';
}

/** Whether `pid` is a QEMU that serves `qmpSocket`: the guard against a recycled PID. */
export function isOurQemu(pid: number, qmpSocket: string): boolean {
  try {
    const args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return !processGone(pid) && args.some((a) => a.startsWith(`unix:${qmpSocket},`));
  } catch {
    return false;
  }
}

/** Reads a QEMU pidfile; undefined when absent or not a number. */
export async function readPidfile(pidfile: string): Promise<number | undefined> {
  try {
    const pid = Number.parseInt((await readFile(pidfile, 'utf8')).trim(), 10);
    return Number.isSafeInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function tail(path: string, bytes = 2000): string {
  try {
    const t = readFileSync(path, 'utf8');
    return t.slice(-bytes).trim();
  } catch {
    return '';
  }
}

export interface LaunchOptions {
  runDir: string;
  timeoutMs?: number;
}

/**
 * Starts QEMU with `argv` (built by buildQemuArgv with this run dir's files) and returns once QMP answers.
 * The QMP socket and the guest channel's socket are made 0600 (the run dir is 0700 as well, which closes
 * the window before the chmod): whoever connects to either drives the VM.
 */
export async function launchQemu(argv: readonly string[], opts: LaunchOptions): Promise<QemuHandle> {
  const files = runFiles(opts.runDir);
  const timeoutMs = opts.timeoutMs ?? 15_000;
  if (!argv.includes(`unix:${files.qmpSocket},server=on,wait=off`)) {
    throw new FerryError('FERRY_E_INTERNAL', `QEMU argv does not serve QMP at ${files.qmpSocket}.`);
  }
  // A stale socket from an earlier QEMU would look like this one being ready.
  await unlink(files.qmpSocket).catch(() => undefined);
  await unlink(files.observeSocket).catch(() => undefined);
  await unlink(files.pidfile).catch(() => undefined);

  const errFd = openSync(files.stderr, 'a', 0o600);
  let child;
  try {
    child = spawn(qemuBinary(), [...argv], { detached: true, stdio: ['ignore', errFd, errFd], cwd: opts.runDir });
  } finally {
    closeSync(errFd);
  }
  // Errors such as ENOENT arrive asynchronously; remember them for the failure message.
  let spawnError: Error | undefined;
  let exited: string | undefined;
  child.on('error', (e) => (spawnError = e));
  child.on('exit', (code, sig) => (exited = `exit ${code ?? sig}`));
  child.unref();
  const pid = child.pid;

  const fail = (why: string, cause?: unknown): never => {
    if (pid !== undefined && !processGone(pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone already */
      }
    }
    const err = tail(files.stderr);
    throw new FerryError('FERRY_E_QEMU_START', `QEMU failed to start (${why})${err ? `: ${err}` : ''}`, { cause });
  };

  if (pid === undefined) return fail(`cannot run ${qemuBinary()}: ${spawnError?.message ?? 'no pid'}`, spawnError);
  // QEMU exiting early (bad argv, missing file) should fail now, not when the connect times out.
  const gone = new AbortController();
  child.once('exit', () => gone.abort());
  let qmp: QmpClient;
  try {
    // A migration destination may need out-of-band commands to recover a broken post-copy (docs/qemu.md).
    qmp = await QmpClient.connect(files.qmpSocket, { timeoutMs, signal: gone.signal, oob: argv.includes('-incoming') });
  } catch (err) {
    if (spawnError !== undefined) return fail(`cannot run ${qemuBinary()}: ${spawnError.message}`, spawnError);
    return fail(exited ?? `QMP did not answer within ${timeoutMs} ms`, err);
  }
  await chmod(files.qmpSocket, 0o600);
  // QEMU creates its listening chardevs before the monitor answers; a VM without the guest channel has none.
  for (const sock of [files.guestSocket, files.qgaSocket]) {
    await chmod(sock, 0o600).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
  // The observer monitor exists by now when the argv asked for it.
  if (argv.some((a) => a.includes(`path=${files.observeSocket},`))) await chmod(files.observeSocket, 0o600);
  return { pid, qmp, child: true };
}

/**
 * Re-attaches to the QEMU of a run dir after the manager restarted. Returns undefined when no QEMU of ours
 * runs there (no pidfile, dead PID, or a recycled PID that is not our QEMU).
 */
export async function attachQemu(runDir: string, opts: { timeoutMs?: number } = {}): Promise<QemuHandle | undefined> {
  const files = runFiles(runDir);
  const pid = await readPidfile(files.pidfile);
  if (pid === undefined || !isOurQemu(pid, files.qmpSocket)) return undefined;
  try {
    const qmp = await QmpClient.connect(files.qmpSocket, { timeoutMs: opts.timeoutMs ?? 5000 });
    return { pid, qmp, child: false };
  } catch (err) {
    if (!isOurQemu(pid, files.qmpSocket)) return undefined; // it exited while we connected
    throw new FerryError('FERRY_E_QMP_CONNECT', `QEMU ${pid} runs but its QMP socket does not answer.`, { cause: err });
  }
}

/**
 * Waits until QEMU has ended: its QMP connection closed and its process gone (or a zombie). Returns false
 * on timeout. The QMP close comes first in practice; the /proc poll covers a QEMU that was SIGKILLed
 * while no one was connected.
 */
export async function waitForExit(h: QemuHandle, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  const closed = h.qmp.closed.then(
    () => true,
    () => true,
  );
  const timedOut = sleep(timeoutMs, false, { ref: false });
  if (!(await Promise.race([closed, timedOut]))) return false;
  while (!processGone(h.pid)) {
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
  return true;
}

/** SIGKILLs the QEMU of `pid` if it still is ours; never anything else that later got the PID. */
export function killQemu(pid: number, qmpSocket: string): void {
  if (!isOurQemu(pid, qmpSocket)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* exited meanwhile */
  }
}
