/**
 * The QMP client: one connection to one QEMU's monitor socket. It owns the handshake (greeting, then
 * `qmp_capabilities`), the wire format (one JSON object per line), matching replies to commands by `id`
 * (QEMU interleaves events with replies), per-command timeouts and aborts, and the fan-out of events to
 * iterators and waiters. It knows nothing of VMs or migrations: the agent and the migration engine do.
 *
 * Failure model, since callers build recovery on it:
 * - a command QEMU refuses → FERRY_E_QMP_COMMAND (details: command, class, desc); the connection stays up;
 * - no reply in time → FERRY_E_QMP_TIMEOUT; the command may still run in QEMU, its late reply is dropped;
 * - abort → FERRY_E_ABORTED; same caveat: QEMU was already asked;
 * - the socket ends (QEMU exited) → FERRY_E_QMP_CLOSED for every pending command, except `quit`;
 * - a line that is not a JSON object → FERRY_E_QMP_PROTOCOL for every pending command, and the connection
 *   is closed: after a framing error nothing that follows can be trusted.
 *
 * Observability: every command, reply and event is published on the `ferry:qmp` diagnostics channel.
 */
import { channel } from 'node:diagnostics_channel';
import { createConnection, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../common/errors.ts';
import type {
  QemuVersionTriple,
  QmpArgs,
  QmpCommandName,
  QmpEvent,
  QmpEventData,
  QmpReturn,
  QmpTimestamp,
} from './qmp-types.ts';

export * from './qmp-types.ts';

export const QMP_CHANNEL = 'ferry:qmp';

/** What is published on the `ferry:qmp` diagnostics channel. */
export type QmpDiagnostic =
  | { phase: 'send'; socketPath: string; id: number; command: string; arguments?: Record<string, unknown> }
  | {
      phase: 'reply';
      socketPath: string;
      id: number;
      command: string;
      ok: boolean;
      durationMs: number;
      /** The reply arrived after the caller gave up (timeout or abort); it was dropped. */
      late?: boolean;
      error?: { class: string; desc: string };
    }
  | {
      phase: 'event';
      socketPath: string;
      event: string;
      data: Record<string, unknown>;
      timestamp: QmpTimestamp;
    }
  | { phase: 'close'; socketPath: string; error?: { code: string; message: string } };

const diag = channel(QMP_CHANNEL);

export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
export const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
/** Per-iterator cap on unread events; the oldest are dropped beyond it (and counted). */
export const DEFAULT_EVENT_BUFFER = 10_000;
/** A line longer than this without a newline is not QMP (the largest real reply, the schema, is ~200 KiB). */
const MAX_LINE_CHARS = 64 * 1024 * 1024;

export interface ConnectOptions {
  /** Total time for connecting (retried while the socket is missing or refuses) and the handshake. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /**
   * Enable out-of-band execution when QEMU offers it (`exec-oob`): commands such as `migrate-pause` and
   * `migrate-recover` then run even while QEMU's main thread is blocked (a post-copy destination waiting
   * for a page over a broken stream), where in-band commands wait for ever.
   */
  oob?: boolean;
}

export interface ExecuteOptions {
  /** Default 30 s; `Infinity` waits for ever (only for commands that end on their own). */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Out of band (`exec-oob`), when the connection enabled it (`oobEnabled`); in band otherwise. */
  oob?: boolean;
}

export interface WaitForEventOptions {
  /** Default 30 s; `Infinity` waits for ever. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface EventsOptions {
  /** Unread events kept before the oldest are dropped; default 10 000. */
  maxBuffered?: number;
  /** Ends the iteration: a pending or later `next()` rejects with FERRY_E_ABORTED. */
  signal?: AbortSignal;
}

/** An event iterator; `dropped` counts events lost because the reader fell more than `maxBuffered` behind. */
export interface QmpEventStream extends AsyncIterableIterator<QmpEvent> {
  readonly dropped: number;
}

/** Arguments are optional exactly when the command has no required argument. */
type ExecuteRest<K extends QmpCommandName> =
  Record<string, never> extends QmpArgs<K>
    ? [args?: QmpArgs<K>, opts?: ExecuteOptions]
    : [args: QmpArgs<K>, opts?: ExecuteOptions];

interface Pending {
  id: number;
  command: string;
  startedAt: number;
  resolve: (value: unknown) => void;
  reject: (err: FerryError) => void;
  /** `quit`: QEMU may close the socket before its reply arrives, which is success. */
  resolveOnClose: boolean;
  cleanup: () => void;
}

interface Subscriber {
  push(ev: QmpEvent): void;
  end(): void;
}

interface Waiter {
  offer(ev: QmpEvent): void;
  fail(err: FerryError): void;
}

export class QmpClient {
  /** QEMU's version from the greeting. */
  readonly version: QemuVersionTriple;
  /** QEMU's package string from the greeting (e.g. the Debian version). */
  readonly package: string;
  /** Capabilities QEMU offered in the greeting (e.g. `oob`). */
  readonly capabilities: readonly string[];
  /** Out-of-band execution was asked for at connect and negotiated. */
  readonly oobEnabled: boolean;
  readonly socketPath: string;
  /** Resolves when the socket has ended, for any reason (never rejects). */
  readonly closed: Promise<void>;

  readonly #conn: Connection;

  private constructor(conn: Connection, greeting: Greeting) {
    this.#conn = conn;
    this.socketPath = conn.socketPath;
    this.version = greeting.version;
    this.package = greeting.package;
    this.capabilities = greeting.capabilities;
    this.oobEnabled = greeting.oobEnabled;
    this.closed = conn.closed;
  }

  /**
   * Connects, reads the greeting and negotiates capabilities. While the socket does not exist yet or
   * refuses (QEMU creates it a moment after spawn), it retries until `timeoutMs`; then FERRY_E_QMP_CONNECT.
   * A monitor that accepts but never greets (another client holds it: QMP serves one at a time) also ends
   * in FERRY_E_QMP_CONNECT. Pass a `signal` that fires when the QEMU process exits to stop waiting early.
   */
  static async connect(socketPath: string, opts: ConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    const socket = await connectWithRetry(socketPath, deadline, opts.signal);
    const conn = new Connection(socket, socketPath);
    try {
      const greeting = await conn.handshake(Math.max(1, deadline - Date.now()), opts.signal, opts.oob === true);
      return new QmpClient(conn, greeting);
    } catch (err) {
      conn.destroy();
      if (err instanceof FerryError && err.code === 'FERRY_E_ABORTED') throw err;
      throw new FerryError(
        'FERRY_E_QMP_CONNECT',
        `QMP handshake on ${socketPath} failed: ${err instanceof Error ? err.message : String(err)}`,
        { cause: err, details: { socketPath } },
      );
    }
  }

  get isClosed(): boolean {
    return this.#conn.isClosed;
  }

  /** Why the connection ended (FERRY_E_QMP_CLOSED or FERRY_E_QMP_PROTOCOL), once it has. */
  get closeError(): FerryError | undefined {
    return this.#conn.closeError;
  }

  /** Runs a command Ferry knows the types of. */
  execute<K extends QmpCommandName>(command: K, ...rest: ExecuteRest<K>): Promise<QmpReturn<K>> {
    const [args, opts] = rest;
    return this.#conn.execute(command, args as Record<string, unknown> | undefined, opts) as Promise<
      QmpReturn<K>
    >;
  }

  /** Runs any command, untyped (for what `QmpCommands` does not list). */
  executeRaw(command: string, args?: Record<string, unknown>, opts?: ExecuteOptions): Promise<unknown> {
    return this.#conn.execute(command, args, opts);
  }

  /**
   * Events from now on, until the connection closes (buffered events are still delivered, then the
   * iteration ends). Each call is an independent iterator; `break` (or `return()`) unsubscribes.
   */
  events(opts: EventsOptions = {}): QmpEventStream {
    return this.#conn.events(opts);
  }

  /**
   * The next event `name` (matching `predicate`, when given) from the moment of this call. Call it before
   * the command that triggers the event, then await it. Timeout → FERRY_E_QMP_TIMEOUT; the connection
   * closing first → FERRY_E_QMP_CLOSED.
   */
  waitForEvent<N extends string>(
    name: N,
    predicate?: (ev: QmpEvent<N>) => boolean,
    opts: WaitForEventOptions = {},
  ): Promise<QmpEvent<N>> {
    return this.#conn.waitForEvent(name, predicate, opts);
  }

  /** Closes the connection (pending commands reject with FERRY_E_QMP_CLOSED); resolves once closed. */
  close(): Promise<void> {
    this.#conn.destroy();
    return this.closed;
  }
}

interface Greeting {
  version: QemuVersionTriple;
  package: string;
  capabilities: string[];
  /** Set by the handshake: `oob` was offered and enabled. */
  oobEnabled: boolean;
}

async function connectWithRetry(socketPath: string, deadline: number, signal?: AbortSignal): Promise<Socket> {
  let delay = 10;
  let lastErr: unknown;
  for (;;) {
    if (signal?.aborted) throw aborted(signal, `connecting to ${socketPath}`);
    try {
      return await connectOnce(socketPath, signal);
    } catch (err) {
      if (err instanceof FerryError) throw err; // aborted
      lastErr = err;
      const code = (err as NodeJS.ErrnoException).code;
      // Missing or refusing: QEMU has not created or not yet listened on the socket. Anything else
      // (permission, not a socket) will not fix itself.
      const transient = code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'EAGAIN';
      const left = deadline - Date.now();
      if (!transient || left <= 0) {
        throw new FerryError(
          'FERRY_E_QMP_CONNECT',
          `Could not connect to the QMP socket ${socketPath}: ${(err as Error).message}`,
          { cause: lastErr, details: { socketPath, errno: code } },
        );
      }
      try {
        await sleep(Math.min(delay, left), undefined, signal ? { signal } : undefined);
      } catch {
        throw aborted(signal, `connecting to ${socketPath}`);
      }
      delay = Math.min(delay * 2, 200);
    }
  }
}

function connectOnce(socketPath: string, signal?: AbortSignal): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath);
    const onAbort = (): void => {
      socket.destroy();
      reject(aborted(signal, `connecting to ${socketPath}`));
    };
    const done = (): void => {
      signal?.removeEventListener('abort', onAbort);
      socket.off('connect', onConnect);
      socket.off('error', onError);
    };
    const onConnect = (): void => {
      done();
      resolve(socket);
    };
    const onError = (err: Error): void => {
      done();
      socket.destroy();
      reject(err);
    };
    socket.once('connect', onConnect);
    socket.once('error', onError);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function aborted(signal: AbortSignal | undefined, what: string): FerryError {
  return new FerryError('FERRY_E_ABORTED', `Aborted while ${what}.`, { cause: signal?.reason });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseGreeting(msg: Record<string, unknown>): Greeting | undefined {
  const qmp = msg.QMP;
  if (!isObject(qmp) || !isObject(qmp.version) || !isObject(qmp.version.qemu)) return undefined;
  const v = qmp.version.qemu;
  if (typeof v.major !== 'number' || typeof v.minor !== 'number' || typeof v.micro !== 'number')
    return undefined;
  const caps = Array.isArray(qmp.capabilities) ? qmp.capabilities.filter((c) => typeof c === 'string') : [];
  return {
    version: { major: v.major, minor: v.minor, micro: v.micro },
    package: typeof qmp.version.package === 'string' ? qmp.version.package : '',
    capabilities: caps,
    oobEnabled: false,
  };
}

function parseTimestamp(t: unknown): QmpTimestamp {
  if (isObject(t) && typeof t.seconds === 'number' && typeof t.microseconds === 'number') {
    return { seconds: t.seconds, microseconds: t.microseconds };
  }
  const now = Date.now();
  return { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 };
}

/** Secrets must not reach diagnostics subscribers (loggers): `object-add` of a `secret` carries one. */
function redactArgs(
  command: string,
  args: Record<string, unknown> | undefined,
): Record<string, unknown> | undefined {
  if (args === undefined || command !== 'object-add' || !('data' in args)) return args;
  return { ...args, data: '<redacted>' };
}

/** The socket, the line framing and the bookkeeping of one connection. */
class Connection {
  readonly socketPath: string;
  readonly closed: Promise<void>;
  isClosed = false;
  closeError: FerryError | undefined;

  readonly #socket: Socket;
  readonly #pending = new Map<number, Pending>();
  /** Ids given up on (timeout/abort) whose reply may still come: to tell "late" from "unknown". */
  readonly #abandoned = new Map<number, { command: string; startedAt: number }>();
  readonly #subscribers = new Set<Subscriber>();
  readonly #waiters = new Set<Waiter>();
  #nextId = 1;
  #buf = '';
  #greeting: Greeting | undefined;
  #oob = false;
  #onGreeting: ((g: Greeting) => void) | undefined;
  #failGreeting: ((err: FerryError) => void) | undefined;

  constructor(socket: Socket, socketPath: string) {
    this.#socket = socket;
    this.socketPath = socketPath;
    socket.setEncoding('utf8'); // a StringDecoder: multi-byte characters split across chunks stay whole
    let resolveClosed!: () => void;
    this.closed = new Promise((r) => (resolveClosed = r));
    socket.on('data', (chunk: string) => this.#onData(chunk));
    // 'error' is always followed by 'close'; the error becomes the close reason.
    socket.on('error', (err) => {
      this.closeError ??= new FerryError(
        'FERRY_E_QMP_CLOSED',
        `QMP socket ${this.socketPath}: ${err.message}`,
        {
          cause: err,
        },
      );
    });
    socket.on('close', () => {
      this.#finish(
        this.closeError ??
          new FerryError(
            'FERRY_E_QMP_CLOSED',
            `The QMP connection ${this.socketPath} closed (QEMU exited?).`,
          ),
      );
      resolveClosed();
    });
  }

  handshake(timeoutMs: number, signal?: AbortSignal, oob = false): Promise<Greeting> {
    const greeting = new Promise<Greeting>((resolve, reject) => {
      if (this.#greeting) return resolve(this.#greeting);
      if (this.isClosed) return reject(this.closeError);
      const timer = setTimeout(() => {
        cleanup();
        reject(new FerryError('FERRY_E_QMP_TIMEOUT', 'no QMP greeting (is another client connected?)'));
      }, timeoutMs);
      const onAbort = (): void => {
        cleanup();
        reject(aborted(signal, `waiting for the QMP greeting on ${this.socketPath}`));
      };
      const cleanup = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.#onGreeting = undefined;
        this.#failGreeting = undefined;
      };
      this.#onGreeting = (g) => {
        cleanup();
        resolve(g);
      };
      this.#failGreeting = (err) => {
        cleanup();
        reject(err);
      };
      if (signal?.aborted) onAbort();
      else signal?.addEventListener('abort', onAbort, { once: true });
    });
    const started = Date.now();
    return greeting.then(async (g) => {
      const left = Math.max(1, timeoutMs - (Date.now() - started));
      const enable = oob && g.capabilities.includes('oob');
      await this.execute('qmp_capabilities', enable ? { enable: ['oob'] } : undefined, { timeoutMs: left, ...(signal ? { signal } : {}) });
      this.#oob = enable;
      return { ...g, oobEnabled: enable };
    });
  }

  execute(
    command: string,
    args: Record<string, unknown> | undefined,
    opts: ExecuteOptions = {},
  ): Promise<unknown> {
    const { timeoutMs = DEFAULT_COMMAND_TIMEOUT_MS, signal } = opts;
    if (this.isClosed) {
      return Promise.reject(
        this.closeError ??
          new FerryError('FERRY_E_QMP_CLOSED', `The QMP connection ${this.socketPath} is closed.`),
      );
    }
    if (signal?.aborted) return Promise.reject(aborted(signal, `running ${command}`));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const giveUp = (err: FerryError): void => {
        this.#pending.delete(id);
        this.#abandoned.set(id, { command, startedAt: entry.startedAt });
        // Bounded: a QEMU that never answers must not grow this for ever.
        if (this.#abandoned.size > 1000) this.#abandoned.delete(this.#abandoned.keys().next().value!);
        entry.cleanup();
        reject(err);
      };
      const onAbort = (): void => giveUp(aborted(signal, `running ${command}`));
      const entry: Pending = {
        id,
        command,
        startedAt: performance.now(),
        resolve,
        reject,
        resolveOnClose: command === 'quit',
        cleanup: () => {
          if (timer !== undefined) clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
        },
      };
      if (Number.isFinite(timeoutMs)) {
        timer = setTimeout(
          () =>
            giveUp(
              new FerryError(
                'FERRY_E_QMP_TIMEOUT',
                `QEMU did not answer ${command} within ${timeoutMs} ms.`,
                {
                  details: { command, timeoutMs },
                },
              ),
            ),
          timeoutMs,
        );
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#pending.set(id, entry);
      const msg: Record<string, unknown> = opts.oob === true && this.#oob ? { 'exec-oob': command, id } : { execute: command, id };
      if (args !== undefined) msg.arguments = args;
      if (diag.hasSubscribers) {
        const a = redactArgs(command, args);
        diag.publish({
          phase: 'send',
          socketPath: this.socketPath,
          id,
          command,
          ...(a ? { arguments: a } : {}),
        } satisfies QmpDiagnostic);
      }
      // A write error surfaces as the socket's 'error' then 'close', which rejects this entry.
      this.#socket.write(JSON.stringify(msg) + '\n');
    });
  }

  events(opts: EventsOptions): QmpEventStream {
    const cap = Math.max(1, opts.maxBuffered ?? DEFAULT_EVENT_BUFFER);
    const signal = opts.signal;
    // A queue with a moving head: shift() on a long array is O(n) per event during a storm.
    let items: QmpEvent[] = [];
    let head = 0;
    let dropped = 0;
    let ended = false;
    let failure: FerryError | undefined;
    let waiting: { resolve: (r: IteratorResult<QmpEvent>) => void; reject: (e: unknown) => void } | undefined;

    const unsubscribe = (): void => {
      this.#subscribers.delete(sub);
      signal?.removeEventListener('abort', onAbort);
    };
    const sub: Subscriber = {
      push: (ev) => {
        if (waiting) {
          const w = waiting;
          waiting = undefined;
          w.resolve({ value: ev, done: false });
          return;
        }
        items.push(ev);
        if (items.length - head > cap) {
          head++;
          dropped++;
        }
        if (head > 1024 && head * 2 > items.length) {
          items = items.slice(head);
          head = 0;
        }
      },
      end: () => {
        ended = true;
        unsubscribe();
        if (waiting) {
          const w = waiting;
          waiting = undefined;
          if (failure) w.reject(failure);
          else w.resolve({ value: undefined, done: true });
        }
      },
    };
    const onAbort = (): void => {
      failure = aborted(signal, 'reading QMP events');
      items = [];
      head = 0;
      sub.end();
    };

    const stream: QmpEventStream = {
      get dropped() {
        return dropped;
      },
      next: () => {
        if (head < items.length) {
          const value = items[head]!;
          items[head++] = undefined as unknown as QmpEvent; // release it for the GC
          return Promise.resolve({ value, done: false });
        }
        if (failure) return Promise.reject(failure);
        if (ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => (waiting = { resolve, reject }));
      },
      return: () => {
        items = [];
        head = 0;
        sub.end();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };

    if (signal?.aborted) onAbort();
    else if (this.isClosed) sub.end();
    else {
      this.#subscribers.add(sub);
      signal?.addEventListener('abort', onAbort, { once: true });
    }
    return stream;
  }

  waitForEvent<N extends string>(
    name: N,
    predicate: ((ev: QmpEvent<N>) => boolean) | undefined,
    opts: WaitForEventOptions,
  ): Promise<QmpEvent<N>> {
    const { timeoutMs = DEFAULT_COMMAND_TIMEOUT_MS, signal } = opts;
    if (this.isClosed) {
      return Promise.reject(
        this.closeError ??
          new FerryError('FERRY_E_QMP_CLOSED', `The QMP connection ${this.socketPath} is closed.`),
      );
    }
    if (signal?.aborted) return Promise.reject(aborted(signal, `waiting for ${name}`));
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const settle = (): void => {
        this.#waiters.delete(waiter);
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = (): void => {
        settle();
        reject(aborted(signal, `waiting for ${name}`));
      };
      const waiter: Waiter = {
        offer: (ev) => {
          if (ev.event !== name) return;
          const typed = ev as unknown as QmpEvent<N>;
          let ok: boolean;
          try {
            ok = predicate ? predicate(typed) : true;
          } catch (err) {
            settle();
            reject(err);
            return;
          }
          if (ok) {
            settle();
            resolve(typed);
          }
        },
        fail: (err) => {
          settle();
          reject(err);
        },
      };
      if (Number.isFinite(timeoutMs)) {
        timer = setTimeout(() => {
          settle();
          reject(
            new FerryError('FERRY_E_QMP_TIMEOUT', `No ${name} event from QEMU within ${timeoutMs} ms.`, {
              details: { event: name, timeoutMs },
            }),
          );
        }, timeoutMs);
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.add(waiter);
    });
  }

  /** Ends the connection now; the 'close' handler settles everything pending. */
  destroy(err?: FerryError): void {
    if (err) this.closeError ??= err;
    this.#socket.destroy();
  }

  #onData(chunk: string): void {
    if (this.closeError?.code === 'FERRY_E_QMP_PROTOCOL') return; // already condemned; bytes after that are noise
    let scanFrom = this.#buf.length;
    this.#buf += chunk;
    let start = 0;
    for (;;) {
      const nl = this.#buf.indexOf('\n', Math.max(start, scanFrom));
      if (nl < 0) break;
      const line = this.#buf.slice(start, nl);
      start = nl + 1;
      scanFrom = start;
      if (line.trim() === '') continue;
      if (!this.#onLine(line)) return;
    }
    this.#buf = start === 0 ? this.#buf : this.#buf.slice(start);
    if (this.#buf.length > MAX_LINE_CHARS) {
      this.#protocolError(`a line longer than ${MAX_LINE_CHARS} characters`);
    }
  }

  /** Handles one line; false when the connection was condemned. */
  #onLine(line: string): boolean {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch (err) {
      this.#protocolError(`not JSON: ${JSON.stringify(line.slice(0, 200))}`, err);
      return false;
    }
    if (!isObject(msg)) {
      this.#protocolError(`not a JSON object: ${JSON.stringify(line.slice(0, 200))}`);
      return false;
    }
    if (!this.#greeting) {
      const g = parseGreeting(msg);
      if (!g) {
        this.#protocolError(`expected the QMP greeting, got ${JSON.stringify(line.slice(0, 200))}`);
        return false;
      }
      this.#greeting = g;
      this.#onGreeting?.(g);
      return true;
    }
    if (typeof msg.event === 'string') {
      this.#dispatchEvent(msg.event, msg);
    } else if ('return' in msg || 'error' in msg) {
      this.#dispatchReply(msg);
    }
    // Anything else is a message kind a newer QEMU may add: ignored rather than fatal.
    return true;
  }

  #dispatchReply(msg: Record<string, unknown>): void {
    const id = typeof msg.id === 'number' ? msg.id : undefined;
    const entry = id === undefined ? undefined : this.#pending.get(id);
    const err = isObject(msg.error)
      ? { class: String(msg.error.class ?? 'GenericError'), desc: String(msg.error.desc ?? '') }
      : undefined;
    if (!entry) {
      // A late reply to a command given up on, or one without id (QEMU could not parse a request):
      // nobody waits for it.
      const gone = id === undefined ? undefined : this.#abandoned.get(id);
      if (gone && id !== undefined) this.#abandoned.delete(id);
      if (diag.hasSubscribers) {
        diag.publish({
          phase: 'reply',
          socketPath: this.socketPath,
          id: id ?? -1,
          command: gone?.command ?? '?',
          ok: err === undefined,
          durationMs: gone ? performance.now() - gone.startedAt : 0,
          late: true,
          ...(err ? { error: err } : {}),
        } satisfies QmpDiagnostic);
      }
      return;
    }
    this.#pending.delete(entry.id);
    entry.cleanup();
    if (diag.hasSubscribers) {
      diag.publish({
        phase: 'reply',
        socketPath: this.socketPath,
        id: entry.id,
        command: entry.command,
        ok: err === undefined,
        durationMs: performance.now() - entry.startedAt,
        ...(err ? { error: err } : {}),
      } satisfies QmpDiagnostic);
    }
    if (err) {
      entry.reject(
        new FerryError('FERRY_E_QMP_COMMAND', `QEMU refused ${entry.command}: ${err.desc}`, {
          details: { command: entry.command, class: err.class, desc: err.desc },
        }),
      );
    } else {
      entry.resolve(msg.return);
    }
  }

  #dispatchEvent(name: string, msg: Record<string, unknown>): void {
    const ev: QmpEvent = {
      event: name,
      data: (isObject(msg.data) ? msg.data : {}) as QmpEventData<string>,
      timestamp: parseTimestamp(msg.timestamp),
    };
    if (diag.hasSubscribers) {
      diag.publish({
        phase: 'event',
        socketPath: this.socketPath,
        event: ev.event,
        data: ev.data,
        timestamp: ev.timestamp,
      } satisfies QmpDiagnostic);
    }
    for (const sub of this.#subscribers) sub.push(ev);
    for (const w of this.#waiters) w.offer(ev);
  }

  #protocolError(what: string, cause?: unknown): void {
    const err = new FerryError(
      'FERRY_E_QMP_PROTOCOL',
      `QEMU sent something that is not QMP on ${this.socketPath}: ${what}`,
      {
        ...(cause === undefined ? {} : { cause }),
        details: { socketPath: this.socketPath },
      },
    );
    this.closeError ??= err;
    this.#buf = '';
    // Settle now, not on 'close': the caller learns the real reason even if the socket lingers.
    this.#finish(err);
    this.#socket.destroy();
  }

  /** Settles everything pending with `err` (once); called on close and on a protocol error. */
  #finish(err: FerryError): void {
    if (this.isClosed) return;
    this.isClosed = true;
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    this.#abandoned.clear();
    for (const p of pending) {
      p.cleanup();
      if (p.resolveOnClose && err.code === 'FERRY_E_QMP_CLOSED') p.resolve({});
      else p.reject(err);
    }
    for (const w of [...this.#waiters]) w.fail(err);
    for (const sub of [...this.#subscribers]) sub.end();
    this.#failGreeting?.(err);
    if (diag.hasSubscribers) {
      diag.publish({
        phase: 'close',
        socketPath: this.socketPath,
        ...(err.code === 'FERRY_E_QMP_CLOSED' && !err.cause
          ? {}
          : { error: { code: err.code, message: err.message } }),
      } satisfies QmpDiagnostic);
    }
  }
}
