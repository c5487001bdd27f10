/**
 * Host-side clients of `ferry-guest` (guest/ferry-guest.c): over the VM's virtio-serial port, which QEMU
 * exposes as a Unix socket (GuestChannel), and over UDP to the guest's address, port 7777 (GuestUdp). Both
 * speak the same line protocol; each command goes out as `#<tag> <command>` and only the reply carrying
 * that tag is taken, so a late reply to a command that timed out can't be mistaken for the next one.
 *
 * QEMU's socket chardev serves one client at a time: hold one GuestChannel per VM and close it when done.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createConnection, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../common/errors.ts';

export const GUEST_UDP_PORT = 7777;
export const DEFAULT_COMMAND_TIMEOUT_MS = 10_000;

export interface CommandOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Resolve with the reply even when it says `ok: false` (default: throw FERRY_E_GUEST_COMMAND). */
  raw?: boolean;
}

/** A reply of ferry-guest: one JSON object, `ok` always present. */
export type GuestReply = { ok: boolean; error?: string } & Record<string, unknown>;

export interface GuestInfo {
  ok: true;
  /** /proc/sys/kernel/random/boot_id: changes with every boot, survives a migration. */
  bootId: string;
  uptimeMs: number;
  dirty: { running: boolean; mib: number; rateMBps: number; passes: number };
}

export interface DirtyStarted {
  ok: true;
  mib: number;
  rateMBps: number;
  pages: number;
}

/** `dirty verify`: the pattern held (ok) or where it broke first. */
export type DirtyVerifyResult =
  | { ok: true; pages: number; passes: number; cursor: number }
  | {
      ok: false;
      error: 'pattern';
      firstBadPage: number;
      expected: number;
      found: number;
      badPages: number;
      pages: number;
      passes: number;
      cursor: number;
    };

export interface DiskSum {
  ok: true;
  device: string;
  mib: number;
  /** 64-bit FNV-1a of the first `mib` MiB, 16 hex digits. */
  sum: string;
}

/** The typed commands, over whatever transport sends one line and returns its reply. */
export abstract class GuestCommands {
  abstract command(line: string, opts?: CommandOptions): Promise<GuestReply>;

  async info(opts?: CommandOptions): Promise<GuestInfo> {
    return (await this.command('info', opts)) as unknown as GuestInfo;
  }

  async probe(seq: number, opts?: CommandOptions): Promise<number> {
    return (await this.command(`probe ${checkUint(seq, 'seq')}`, opts)).probe as number;
  }

  /** Starts (or restarts) the dirtier over `mib` MiB at `rateMBps` MiB/s of pages touched (0 = unpaced). */
  async dirtyStart(a: { mib: number; rateMBps?: number }, opts?: CommandOptions): Promise<DirtyStarted> {
    const line = `dirty start --mib ${checkUint(a.mib, 'mib')} --rate ${checkUint(a.rateMBps ?? 0, 'rateMBps')}`;
    // Allocating and touching the memory happens before the reply: allow for a slow TCG guest.
    return (await this.command(line, { timeoutMs: 10_000 + a.mib * 100, ...opts })) as unknown as DirtyStarted;
  }

  /** Checks the dirtier's pattern; a broken pattern is a result (ok: false), not an exception. */
  async dirtyVerify(opts?: CommandOptions): Promise<DirtyVerifyResult> {
    const r = await this.command('dirty verify', { ...opts, raw: true });
    if (!r.ok && r.error !== 'pattern') throw commandError('dirty verify', r);
    return r as unknown as DirtyVerifyResult;
  }

  async dirtyStop(opts?: CommandOptions): Promise<void> {
    await this.command('dirty stop', opts);
  }

  /** Breaks the pattern at one page, to prove that `dirtyVerify` can fail. */
  async dirtyCorrupt(page: number, opts?: CommandOptions): Promise<void> {
    await this.command(`dirty corrupt ${checkUint(page, 'page')}`, opts);
  }

  /** Writes `mib` MiB of a pattern derived from `seed` to the start of `dev` (`vdb` or `/dev/vdb`). */
  async diskFill(dev: string, mib: number, seed: number | bigint, opts?: CommandOptions): Promise<DiskSum> {
    const line = `disk fill ${checkDev(dev)} ${checkUint(mib, 'mib')} ${checkUint(seed, 'seed')}`;
    return (await this.command(line, { timeoutMs: 10_000 + mib * 500, ...opts })) as unknown as DiskSum;
  }

  /** Sums the first `mib` MiB of `dev` as read from the device (O_DIRECT). */
  async diskSum(dev: string, mib: number, opts?: CommandOptions): Promise<DiskSum> {
    const line = `disk sum ${checkDev(dev)} ${checkUint(mib, 'mib')}`;
    return (await this.command(line, { timeoutMs: 10_000 + mib * 500, ...opts })) as unknown as DiskSum;
  }
}

function checkUint(n: number | bigint, what: string): string {
  if ((typeof n === 'bigint' && n >= 0n && n < 2n ** 64n) || (typeof n === 'number' && Number.isSafeInteger(n) && n >= 0)) {
    return String(n);
  }
  throw new FerryError('FERRY_E_BAD_INPUT', `Guest command: bad ${what} ${String(n)}.`);
}

function checkDev(dev: string): string {
  if (!/^(\/dev\/)?[a-z0-9_-]{1,32}$/.test(dev)) throw new FerryError('FERRY_E_BAD_INPUT', `Bad block device ${JSON.stringify(dev)}.`);
  return dev;
}

function checkLine(line: string): string {
  // One command per line, and the tag is ours to add.
  if (line.length === 0 || line.length > 900 || /[\r\n]/.test(line) || line.startsWith('#')) {
    throw new FerryError('FERRY_E_BAD_INPUT', `Bad guest command ${JSON.stringify(line.slice(0, 80))}.`);
  }
  return line;
}

function commandError(line: string, reply: GuestReply): FerryError {
  const why = typeof reply.error === 'string' ? reply.error : 'failed';
  return new FerryError('FERRY_E_GUEST_COMMAND', `ferry-guest: \`${line}\`: ${why}`, { details: { reply } });
}

/** Parses a reply line; anything but a JSON object with `ok` is noise (e.g. half a line from before a reconnect). */
function parseReply(text: string): (GuestReply & { tag?: unknown }) | null {
  try {
    const v: unknown = JSON.parse(text);
    if (typeof v === 'object' && v !== null && typeof (v as { ok?: unknown }).ok === 'boolean') {
      return v as GuestReply & { tag?: unknown };
    }
  } catch {
    // fall through
  }
  return null;
}

interface Waiter {
  tag: number;
  resolve: (r: GuestReply) => void;
  reject: (e: unknown) => void;
}

/**
 * Sends one command at a time over `send`, and matches replies by tag. Shared by both transports: they
 * differ only in how bytes move.
 */
abstract class TaggedClient extends GuestCommands {
  #tag = Math.floor(Math.random() * 1e6);
  #queue: Promise<unknown> = Promise.resolve();
  #waiter: Waiter | null = null;
  #closedError: FerryError | null = null;

  protected abstract send(text: string): void;
  protected abstract describe(): string;

  /** Called by the transport with each reply it received. */
  protected onReply(text: string): void {
    const r = parseReply(text);
    const w = this.#waiter;
    if (r === null || w === null || r.tag !== w.tag) return;
    delete r.tag;
    this.#waiter = null;
    w.resolve(r);
  }

  /** Called by the transport when it can carry no more commands. */
  protected onClosed(err: FerryError): void {
    this.#closedError ??= err;
    const w = this.#waiter;
    this.#waiter = null;
    w?.reject(err);
  }

  get isClosed(): boolean {
    return this.#closedError !== null;
  }

  command(line: string, opts: CommandOptions = {}): Promise<GuestReply> {
    checkLine(line);
    const run = this.#queue.then(() => this.#one(line, opts));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #one(line: string, opts: CommandOptions): Promise<GuestReply> {
    if (this.#closedError) throw this.#closedError;
    if (opts.signal?.aborted) {
      throw new FerryError('FERRY_E_ABORTED', `Guest command \`${line}\` aborted.`, { cause: opts.signal.reason });
    }
    const tag = (this.#tag = (this.#tag + 1) % 2 ** 31);
    const timeoutMs = opts.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    try {
      const reply = await new Promise<GuestReply>((resolve, reject) => {
        this.#waiter = { tag, resolve, reject };
        timer = setTimeout(() => {
          this.#waiter = null;
          reject(
            new FerryError('FERRY_E_GUEST_TIMEOUT', `ferry-guest did not answer \`${line}\` within ${timeoutMs} ms (${this.describe()}).`),
          );
        }, timeoutMs);
        onAbort = () => {
          this.#waiter = null;
          reject(new FerryError('FERRY_E_ABORTED', `Guest command \`${line}\` aborted.`, { cause: opts.signal?.reason }));
        };
        opts.signal?.addEventListener('abort', onAbort, { once: true });
        try {
          this.send(`#${tag} ${line}`);
        } catch (err) {
          this.#waiter = null;
          reject(new FerryError('FERRY_E_GUEST_COMMAND', `Could not send to ferry-guest (${this.describe()}).`, { cause: err }));
        }
      });
      if (!reply.ok && !opts.raw) throw commandError(line, reply);
      return reply;
    } finally {
      clearTimeout(timer);
      if (onAbort) opts.signal?.removeEventListener('abort', onAbort);
    }
  }
}

/** ferry-guest over the VM's virtio-serial port (QEMU chardev socket `<run>/guest.sock`). */
export class GuestChannel extends TaggedClient {
  readonly path: string;
  #sock: Socket;
  #buf = '';

  private constructor(path: string, sock: Socket) {
    super();
    this.path = path;
    this.#sock = sock;
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      this.#buf += chunk;
      let nl: number;
      while ((nl = this.#buf.indexOf('\n')) >= 0) {
        const line = this.#buf.slice(0, nl).trim();
        this.#buf = this.#buf.slice(nl + 1);
        if (line) this.onReply(line);
      }
      if (this.#buf.length > 65536) this.#buf = '';
    });
    sock.on('error', () => undefined); // 'close' follows and reports it
    sock.on('close', () =>
      this.onClosed(new FerryError('FERRY_E_GUEST_COMMAND', `The guest channel ${path} closed (QEMU exited or migrated?).`)),
    );
  }

  /**
   * Connects to QEMU's end of the port. Retries while the socket does not exist yet or refuses (QEMU still
   * starting) until `timeoutMs`. The guest need not be up: commands wait in QEMU until it opens its port.
   */
  static async connect(path: string, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<GuestChannel> {
    const deadline = Date.now() + (opts.timeoutMs ?? 5000);
    for (;;) {
      opts.signal?.throwIfAborted();
      try {
        const sock = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection(path);
          s.once('connect', () => {
            s.off('error', reject);
            resolve(s);
          });
          s.once('error', reject);
        });
        return new GuestChannel(path, sock);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        const transient = code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'EAGAIN';
        if (!transient || Date.now() >= deadline) {
          throw new FerryError('FERRY_E_GUEST_COMMAND', `Could not connect to the guest channel ${path}: ${code ?? String(err)}`, {
            cause: err,
          });
        }
        await sleep(50);
      }
    }
  }

  protected send(text: string): void {
    this.#sock.write(text + '\n');
  }

  protected describe(): string {
    return this.path;
  }

  async close(): Promise<void> {
    if (this.#sock.destroyed) return;
    await new Promise<void>((resolve) => {
      this.#sock.once('close', () => resolve());
      this.#sock.end();
      setTimeout(() => this.#sock.destroy(), 500).unref();
    });
  }
}

/** ferry-guest over UDP to `ip:7777`. Datagrams may be lost: a lost one ends in FERRY_E_GUEST_TIMEOUT. */
export class GuestUdp extends TaggedClient {
  readonly ip: string;
  readonly port: number;
  #sock: UdpSocket;

  private constructor(ip: string, port: number, sock: UdpSocket) {
    super();
    this.ip = ip;
    this.port = port;
    this.#sock = sock;
    sock.on('message', (msg, rinfo) => {
      if (rinfo.address === ip && rinfo.port === port) this.onReply(msg.toString('utf8').trim());
    });
    sock.on('error', (err) => this.onClosed(new FerryError('FERRY_E_GUEST_COMMAND', `UDP to ${ip}:${port}: ${err.message}`, { cause: err })));
    sock.on('close', () => this.onClosed(new FerryError('FERRY_E_GUEST_COMMAND', `UDP socket to ${ip}:${port} closed.`)));
  }

  static async open(ip: string, opts: { port?: number; bindAddress?: string } = {}): Promise<GuestUdp> {
    const sock = createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind({ port: 0, ...(opts.bindAddress === undefined ? {} : { address: opts.bindAddress }) }, () => {
        sock.off('error', reject);
        resolve();
      });
    });
    return new GuestUdp(ip, opts.port ?? GUEST_UDP_PORT, sock);
  }

  protected send(text: string): void {
    this.#sock.send(text, this.port, this.ip);
  }

  protected describe(): string {
    return `udp ${this.ip}:${this.port}`;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      try {
        this.#sock.close(() => resolve());
      } catch {
        resolve(); // closed already
      }
    });
  }
}
