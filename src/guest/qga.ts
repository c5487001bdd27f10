/**
 * A host-side client of qemu-guest-agent (qemu-ga), the agent most distributions ship: QEMU exposes its
 * virtio-serial port `org.qemu.guest_agent.0` as a Unix socket on the host, and qemu-ga speaks QMP-style
 * JSON over it (one `{"execute":…}` per request, one `{"return":…}` or `{"error":…}` per answer, no
 * greeting, no ids).
 *
 * Why `guest-sync-delimited` before anything else: the socket outlives our connections, and an answer to a
 * request whose client gave up (a timeout, an earlier agent) may still be in the pipe. qemu-ga answers
 * this one with a 0xFF byte then `{"return": ID}`; everything before the answer carrying our random ID is
 * stale and dropped. Once in sync, answers come in request order, so one request at a time is enough.
 *
 * What Ferry asks: `guest-ping` (the guest answers: it is ready) and the boot id
 * (`/proc/sys/kernel/random/boot_id`, the same value ferry-guest reports), read with guest-file-open/read
 * (one round trip each, no process in the guest) and, where a guest's qemu-ga forbids file access,
 * `guest-exec` of `cat` plus `guest-exec-status`.
 */
import { randomInt } from 'node:crypto';
import { createConnection, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../common/errors.ts';

export const QGA_DEFAULT_TIMEOUT_MS = 5_000;
const BOOT_ID_PATH = '/proc/sys/kernel/random/boot_id';
const BOOT_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** Bound on one line from the guest: a boot id read is ~50 bytes; a runaway guest must not grow memory. */
const MAX_LINE = 1024 * 1024;

interface Waiter {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

export class QgaClient {
  readonly #sock: Socket;
  #buf = '';
  #waiter: Waiter | undefined;
  /** Until our sync ID came back, answers are stale ones of an earlier client. */
  #syncId: number | undefined;
  #closed = false;

  private constructor(sock: Socket) {
    this.#sock = sock;
    sock.setEncoding('latin1');
    sock.on('data', (chunk: string) => this.#onData(chunk));
    const fail = (err: Error) => {
      this.#closed = true;
      const w = this.#waiter;
      this.#waiter = undefined;
      w?.reject(new FerryError('FERRY_E_GUEST_COMMAND', `qemu-guest-agent channel closed: ${err.message}`, { cause: err }));
    };
    sock.on('error', fail);
    sock.on('close', () => fail(new Error('closed')));
  }

  /** Connects and syncs; fails with FERRY_E_GUEST_COMMAND when no agent answers within `timeoutMs`. */
  static async connect(path: string, opts: { timeoutMs?: number } = {}): Promise<QgaClient> {
    const timeoutMs = opts.timeoutMs ?? QGA_DEFAULT_TIMEOUT_MS;
    const sock = await new Promise<Socket>((resolve, reject) => {
      const s = createConnection(path);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(s);
      });
      s.once('error', (err) =>
        reject(new FerryError('FERRY_E_GUEST_COMMAND', `Could not connect to the qemu-guest-agent socket ${path}: ${err.message}`, { cause: err })),
      );
    });
    const c = new QgaClient(sock);
    try {
      await c.#sync(timeoutMs);
      return c;
    } catch (err) {
      await c.close();
      throw err;
    }
  }

  #onData(chunk: string): void {
    this.#buf += chunk;
    if (this.#buf.length > MAX_LINE) {
      this.#sock.destroy(new Error('an answer longer than 1 MiB'));
      return;
    }
    for (;;) {
      // 0xFF is qemu-ga's "reset your parser" byte ahead of a sync answer: whatever came before is junk.
      const ff = this.#buf.lastIndexOf('\xff');
      if (ff >= 0) this.#buf = this.#buf.slice(ff + 1);
      const nl = this.#buf.indexOf('\n');
      if (nl < 0) return;
      const line = this.#buf.slice(0, nl).trim();
      this.#buf = this.#buf.slice(nl + 1);
      if (line !== '') this.#onLine(line);
    }
  }

  #onLine(line: string): void {
    let msg: { return?: unknown; error?: { class?: string; desc?: string } };
    try {
      msg = JSON.parse(line) as typeof msg;
    } catch {
      return; // a partial line of an earlier client's answer
    }
    if (this.#syncId !== undefined) {
      if (msg.return === this.#syncId) {
        this.#syncId = undefined;
        this.#settle(null, msg.return);
      }
      return;
    }
    if (msg.error !== undefined) {
      this.#settle(new FerryError('FERRY_E_GUEST_COMMAND', `qemu-guest-agent: ${msg.error.class ?? 'Error'}: ${msg.error.desc ?? ''}`.trim()));
    } else this.#settle(null, msg.return);
  }

  #settle(err: Error | null, value?: unknown): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    if (w === undefined) return;
    if (err) w.reject(err);
    else w.resolve(value);
  }

  #request(cmd: string, args: Record<string, unknown> | undefined, timeoutMs: number): Promise<unknown> {
    if (this.#closed) return Promise.reject(new FerryError('FERRY_E_GUEST_COMMAND', 'qemu-guest-agent channel closed.'));
    if (this.#waiter !== undefined) return Promise.reject(new FerryError('FERRY_E_INTERNAL', 'QgaClient: one request at a time.'));
    return new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiter = undefined;
        // The answer may still come; only a new sync could tell it from the next one, so this client is done.
        this.#sock.destroy();
        reject(new FerryError('FERRY_E_GUEST_TIMEOUT', `qemu-guest-agent did not answer ${cmd} within ${timeoutMs} ms.`));
      }, timeoutMs);
      this.#waiter = {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.#sock.write(JSON.stringify(args === undefined ? { execute: cmd } : { execute: cmd, arguments: args }) + '\n');
    });
  }

  async #sync(timeoutMs: number): Promise<void> {
    const id = randomInt(1, 2 ** 31);
    this.#syncId = id;
    // A leading 0xFF makes qemu-ga drop whatever partial request an earlier client left in its parser.
    this.#sock.write('\xff', 'latin1');
    await this.#request('guest-sync-delimited', { id }, timeoutMs);
  }

  /** Any command; resolves with its `return` value. */
  execute(cmd: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<unknown> {
    return this.#request(cmd, args, opts.timeoutMs ?? QGA_DEFAULT_TIMEOUT_MS);
  }

  async ping(opts: { timeoutMs?: number } = {}): Promise<void> {
    await this.execute('guest-ping', undefined, opts);
  }

  /** The guest kernel's boot id: by guest-file-* first, by guest-exec where file access is blocked. */
  async bootId(opts: { timeoutMs?: number } = {}): Promise<string> {
    let text: string;
    try {
      text = await this.#readFile(BOOT_ID_PATH, opts);
    } catch (err) {
      if (err instanceof FerryError && err.code === 'FERRY_E_GUEST_TIMEOUT') throw err;
      text = await this.#exec('/bin/cat', [BOOT_ID_PATH], opts);
    }
    const id = text.trim();
    if (!BOOT_ID_RE.test(id)) throw new FerryError('FERRY_E_GUEST_COMMAND', `qemu-guest-agent gave a boot id that is not one: ${JSON.stringify(id.slice(0, 80))}.`);
    return id;
  }

  async #readFile(path: string, opts: { timeoutMs?: number }): Promise<string> {
    const handle = await this.execute('guest-file-open', { path, mode: 'r' }, opts);
    if (typeof handle !== 'number') throw new FerryError('FERRY_E_GUEST_COMMAND', 'guest-file-open returned no handle.');
    try {
      const r = (await this.execute('guest-file-read', { handle, count: 4096 }, opts)) as { 'buf-b64'?: unknown };
      if (typeof r['buf-b64'] !== 'string') throw new FerryError('FERRY_E_GUEST_COMMAND', 'guest-file-read returned no data.');
      return Buffer.from(r['buf-b64'], 'base64').toString('utf8');
    } finally {
      await this.execute('guest-file-close', { handle }, opts).catch(() => undefined);
    }
  }

  async #exec(path: string, arg: string[], opts: { timeoutMs?: number }): Promise<string> {
    const timeoutMs = opts.timeoutMs ?? QGA_DEFAULT_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    const started = (await this.execute('guest-exec', { path, arg, 'capture-output': true }, opts)) as { pid?: unknown };
    if (typeof started.pid !== 'number') throw new FerryError('FERRY_E_GUEST_COMMAND', 'guest-exec returned no pid.');
    for (;;) {
      const st = (await this.execute('guest-exec-status', { pid: started.pid }, { timeoutMs: Math.max(1, deadline - Date.now()) })) as {
        exited?: boolean;
        exitcode?: number;
        'out-data'?: string;
      };
      if (st.exited === true) {
        if (st.exitcode !== 0) throw new FerryError('FERRY_E_GUEST_COMMAND', `${path} exited with ${String(st.exitcode)} in the guest.`);
        return Buffer.from(st['out-data'] ?? '', 'base64').toString('utf8');
      }
      if (Date.now() > deadline) throw new FerryError('FERRY_E_GUEST_TIMEOUT', `${path} did not end within ${timeoutMs} ms in the guest.`);
      await sleep(50);
    }
  }

  async close(): Promise<void> {
    if (this.#sock.destroyed) return;
    await new Promise<void>((resolve) => {
      this.#sock.once('close', () => resolve());
      this.#sock.destroy();
    });
  }
}

/** Connect, sync, ping, read the boot id, close: what readiness and a migration's finish need. */
export async function qgaProbe(path: string, opts: { timeoutMs?: number } = {}): Promise<{ bootId: string | null }> {
  const c = await QgaClient.connect(path, opts);
  try {
    await c.ping(opts);
    // A guest that answers is ready even when it will not say its boot id (a locked-down qemu-ga).
    const bootId = await c.bootId(opts).catch(() => null);
    return { bootId };
  } finally {
    await c.close();
  }
}
