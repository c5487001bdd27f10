/**
 * Ferry's process logs: JSON lines (pino, fastify's own logger) on stderr, one logger per process, with a
 * level, an ISO time, the process kind and child loggers that carry the subject of a line (a migration's id
 * and phase, a request's id). No secret reaches a line: fields that hold one are censored by name, and
 * token- or key-shaped text is cut out of messages and errors, because an error message may quote what a
 * caller sent. The controller's and the agent's loggers (src/controller/log.ts, src/agent/log.ts) build on
 * this one.
 */
import { Writable } from 'node:stream';
import { pino, stdSerializers, stdTimeFunctions, type DestinationStream, type Logger } from 'pino';

export type Log = Logger;

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** What a censored field or a scrubbed secret reads as. */
export const REDACTED = '[redacted]';

/** Field names that hold a secret wherever they appear (top level and two levels down). */
const SECRET_FIELDS = ['token', 'adminToken', 'joinToken', 'secret', 'password', 'keyPem', 'privateKey', 'authorization', 'cookie'];
const SECRET_PATHS = [
  ...SECRET_FIELDS.flatMap((f) => [f, `*.${f}`, `*.*.${f}`]),
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-ferry-token"]',
];

/**
 * Secrets by shape: Ferry's API and join tokens (`<id>.<secret>`, tokens.ts: 16 hex, a dot, 43 base64url),
 * a bearer credential, and PEM private keys.
 */
const SECRET_SHAPES: RegExp[] = [
  /\b[a-z0-9]{8,32}\.[A-Za-z0-9_-]{43,128}\b/g,
  /\b(Bearer\s+)\S+/gi,
  /-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----/g,
];

/** `text` with every secret-shaped part replaced by REDACTED. */
export function scrub(text: string): string {
  let out = text;
  for (const re of SECRET_SHAPES) out = out.replace(re, (_m, bearer?: unknown) => (typeof bearer === 'string' && /^Bearer/i.test(bearer) ? `${bearer}${REDACTED}` : REDACTED));
  return out;
}

function scrubError(err: unknown): unknown {
  const s = stdSerializers.err(err as Error) as unknown as Record<string, unknown>;
  if (typeof s !== 'object' || s === null) return s;
  for (const k of ['message', 'stack'] as const) if (typeof s[k] === 'string') s[k] = scrub(s[k]);
  return s;
}

export interface LoggerOptions {
  /** `controller` or `agent`: on every line, so one collector can take both. */
  process: string;
  /** More fields on every line (the agent's host name). */
  base?: Record<string, unknown>;
  /** Default: FERRY_LOG_LEVEL, else info. */
  level?: LogLevel;
  /** Default: stderr, written synchronously so that the last lines before an exit are not lost. */
  destination?: DestinationStream;
}

export function logLevelFromEnv(env: NodeJS.ProcessEnv = process.env): LogLevel {
  const v = env.FERRY_LOG_LEVEL?.toLowerCase();
  return (LOG_LEVELS as readonly string[]).includes(v ?? '') ? (v as LogLevel) : 'info';
}

export function createLogger(opts: LoggerOptions): Log {
  return pino(
    {
      level: opts.level ?? logLevelFromEnv(),
      base: { process: opts.process, pid: process.pid, ...opts.base },
      timestamp: stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: SECRET_PATHS, censor: REDACTED },
      serializers: { err: scrubError, error: scrubError },
      hooks: {
        // Messages are scrubbed here, fields by `redact` above: a message is free text.
        logMethod(args, method) {
          const scrubbed = args.map((a) => (typeof a === 'string' ? scrub(a) : a)) as Parameters<typeof method>;
          method.apply(this, scrubbed);
        },
      },
    },
    opts.destination ?? pino.destination({ fd: 2, sync: true }),
  );
}

/** A logger that writes nothing: the default of library code and of tests that do not look. */
export function silentLogger(): Log {
  return pino({ level: 'silent' });
}

/** A logger into memory, for tests that read what was logged: `lines()` are the parsed JSON lines. */
export function memoryLogger(opts: Omit<LoggerOptions, 'destination'> = { process: 'test' }): {
  log: Log;
  lines: () => Record<string, unknown>[];
  text: () => string;
} {
  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer | string, _enc, done) {
      chunks.push(String(chunk));
      done();
    },
  });
  const log = createLogger({ level: 'debug', ...opts, destination: sink });
  const text = (): string => chunks.join('');
  return {
    log,
    text,
    lines: () =>
      text()
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}
