/**
 * How the controller calls host agents: one typed client made from the route table
 * (src/common/agent-routes.ts) — `client.call('prepare', { params: { id }, body })` answers the route's
 * response type, checked against its schema on arrival, and the cold-migration file streams go through
 * `download` and `upload` of the same table. HTTPS with mutual TLS (the controller's client certificate,
 * the cluster CA pinned), the protocol version header on every request and checked on every answer (each
 * agent is sent the newest version both speak, learnt from its answers, and a route newer than the agent's
 * version is never sent: `supports`),
 * timeouts on every call (the table's, unless the caller gives one), an `events` route followed with `watch`, the error envelope decoded back into
 * a FerryError in one place (`decodeAgentError`), and network failures as FERRY_E_AGENT_UNREACHABLE.
 */
import type { Readable } from 'node:stream';
import { createSecureContext } from 'node:tls';
import { Agent, request, type Dispatcher } from 'undici';
import { createParser } from 'eventsource-parser';
import { Compile } from 'typebox/compile';
import type { TSchema } from 'typebox';
import {
  AGENT_ROUTES,
  PROTOCOL_RANGE,
  SHA256_HEADER,
  TERM_HEADER,
  answerAccepted,
  describeRange,
  fillPath,
  parseProtocol,
  requestProtocol,
  routeIn,
  type BodyOf,
  type HeadersOf,
  type ParamsOf,
  type ResponseOf,
  type RouteName,
  type RouteSpec,
  type RoutesStreaming,
} from '../common/agent-routes.ts';
import { FerryError, fromErrorJSON, type ErrorCode } from '../common/errors.ts';
import { transportError } from '../common/http.ts';
import { ErrorEnvelope, PROTOCOL_HEADER } from '../common/protocol.ts';

export interface AgentTls {
  caCertPem: string;
  certPem: string;
  keyPem: string;
}

export interface CallOptions {
  /** Whole-call deadline, instead of the route's (for streams: the wait for headers and each idle gap). */
  timeoutMs?: number;
}


/**
 * The leader's term, for controllers that share their store (leader.ts): sent on every call (TERM_HEADER);
 * undefined while this controller does not lead, and then no header, which agents that have seen a leader
 * refuse (FERRY_E_STALE_TERM): a follower gives no orders.
 */
export type TermSource = () => number | undefined;

/** One connection pool for all agents: they share the controller's client certificate and the CA. */
export class AgentPool {
  readonly dispatcher: Agent;
  private readonly clients = new Map<string, AgentClient>();
  constructor(
    tls: AgentTls,
    private readonly term?: TermSource,
  ) {
    this.dispatcher = new Agent({
      // One TLS context for every connection: given only ca/cert/key, Node builds a context per connection
      // (parsing the key and certificates again, ~5 ms of CPU each), which at 1,000 hosts made the first
      // heartbeat round alone take seconds of the event loop (BENCHMARKS.md, the API under load).
      connect: { secureContext: createSecureContext({ ca: tls.caCertPem, cert: tls.certPem, key: tls.keyPem }), timeout: 5_000 },
      keepAliveTimeout: 10_000,
    });
  }

  /** The client for the agent at `url` (`https://ADDR:PORT`), named `host` in messages. */
  client(host: string, url: string): AgentClient {
    const key = `${host} ${url}`;
    let c = this.clients.get(key);
    if (!c) {
      c = new AgentClient(host, url, this.dispatcher, this.term);
      this.clients.set(key, c);
    }
    return c;
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }
}

/** The routes `call` serves: JSON and text answers (the file streams have `download`/`upload`, events `watch`). */
export type CallRouteName = RoutesStreaming<undefined | 'text'>;
export type EventsRouteName = RoutesStreaming<'events'>;
export type DownloadRouteName = RoutesStreaming<'download'>;
export type UploadRouteName = RoutesStreaming<'upload'>;

type ParamsPart<N extends RouteName> = ParamsOf<N> extends undefined ? { params?: undefined } : { params: ParamsOf<N> };
type BodyPart<N extends RouteName> = BodyOf<N> extends undefined ? { body?: undefined } : object extends BodyOf<N> ? { body?: BodyOf<N> } : { body: BodyOf<N> };
/** What one call of route N takes: its params and body, typed by the table; optional where nothing is required. */
export type CallInput<N extends RouteName> = ParamsPart<N> & BodyPart<N>;
type CallArgs<N extends RouteName> = object extends CallInput<N> ? [input?: CallInput<N>, opts?: CallOptions] : [input: CallInput<N>, opts?: CallOptions];

export interface UploadInput<N extends UploadRouteName> {
  params: ParamsOf<N>;
  headers: HeadersOf<N>;
  body: Readable;
}

/** A file as the source agent sends it: the bytes, and the sha256 it announced. */
export interface DownloadResult {
  body: Readable;
  sha256: string;
  bytes: number | null;
}

/** One compiled checker per schema of the table, made on first use. */
const checkers = new Map<TSchema, ReturnType<typeof Compile>>();
function checker(schema: TSchema): ReturnType<typeof Compile> {
  let c = checkers.get(schema);
  if (c === undefined) {
    c = Compile(schema);
    checkers.set(schema, c);
  }
  return c;
}

function headerOf(headers: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * The one place an agent's error answer becomes a FerryError: the envelope `{error:{code,message,details?}}`
 * (a code outside the registry becomes `fallback`); anything else is reported with its status and start.
 */
export function decodeAgentError(status: number, text: string, what: string, fallback: ErrorCode = 'FERRY_E_INTERNAL'): FerryError {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  if (checker(ErrorEnvelope).Check(parsed)) return fromErrorJSON(parsed, fallback);
  return new FerryError(fallback, `${what} answered HTTP ${status}: ${text.slice(0, 200)}`);
}

export class AgentClient {
  /** The agent's current version, from its last answer (null before the first). */
  private peer: number | null = null;

  constructor(
    readonly host: string,
    readonly url: string,
    private readonly dispatcher: Agent,
    private readonly term?: TermSource,
  ) {}

  private get what(): string {
    return `The agent of ${this.host} (${this.url})`;
  }

  /** The agent's current protocol version as last heard, or null. */
  get peerProtocol(): number | null {
    return this.peer;
  }

  /** Whether the agent's version has route `name` (unknown before its first answer: only the routes of every version). */
  supports(name: RouteName): boolean {
    return routeIn(name, requestProtocol(this.peer));
  }

  private learn(res: Dispatcher.ResponseData): void {
    const v = parseProtocol(headerOf(res.headers, PROTOCOL_HEADER));
    if (v !== null) this.peer = v;
  }

  /** A successful answer from an agent too old for this controller's range (one that did not check) is refused. */
  private checkProtocol(res: Dispatcher.ResponseData): void {
    const raw = headerOf(res.headers, PROTOCOL_HEADER);
    const version = parseProtocol(raw);
    if (answerAccepted(version)) return;
    throw new FerryError(
      'FERRY_E_AGENT_PROTOCOL',
      `${this.what} speaks ${version === null ? `an unknown protocol (${PROTOCOL_HEADER}: ${JSON.stringify(raw ?? null)})` : `protocol ${version}`}; this controller speaks ${describeRange()}. Upgrade the older of the two.`,
      { details: { agentProtocol: version, controllerProtocol: PROTOCOL_RANGE.current, controllerMinProtocol: PROTOCOL_RANGE.min } },
    );
  }

  private termHeader(): Record<string, string> {
    const term = this.term?.();
    return term === undefined ? {} : { [TERM_HEADER]: String(term) };
  }

  private async send(
    name: RouteName,
    init: { params: Record<string, string> | undefined; body: string | Readable | null; headers: Record<string, string>; timeoutMs: number; whole: boolean; signal?: AbortSignal },
  ): Promise<Dispatcher.ResponseData> {
    const def: RouteSpec = AGENT_ROUTES[name];
    const version = requestProtocol(this.peer);
    if (!routeIn(name, version)) {
      throw new FerryError(
        'FERRY_E_AGENT_PROTOCOL',
        `${this.what} speaks protocol ${version}, which has no ${name} route (since protocol ${def.since}): upgrade the agent.`,
        { details: { agentProtocol: this.peer, route: name, since: def.since ?? null } },
      );
    }
    try {
      const res = await request(new URL(fillPath(name, init.params), this.url), {
        method: def.method,
        dispatcher: this.dispatcher,
        headers: { [PROTOCOL_HEADER]: String(version), ...this.termHeader(), ...init.headers },
        body: init.body,
        headersTimeout: init.timeoutMs,
        bodyTimeout: init.timeoutMs,
        ...(init.whole ? { signal: AbortSignal.timeout(init.timeoutMs) } : init.signal === undefined ? {} : { signal: init.signal }),
      });
      this.learn(res);
      return res;
    } catch (err) {
      throw transportError(err, this.what, 'FERRY_E_AGENT_UNREACHABLE');
    }
  }

  private async text(res: Dispatcher.ResponseData): Promise<string> {
    try {
      return await res.body.text();
    } catch (err) {
      throw transportError(err, this.what, 'FERRY_E_AGENT_UNREACHABLE');
    }
  }

  /** The answer's body as route N's response, or the agent's error. */
  private async answer<N extends RouteName>(name: N, res: Dispatcher.ResponseData, fallback: ErrorCode = 'FERRY_E_INTERNAL'): Promise<ResponseOf<N>> {
    const def: RouteSpec = AGENT_ROUTES[name];
    const text = await this.text(res);
    if (res.statusCode >= 400) throw decodeAgentError(res.statusCode, text, this.what, fallback);
    this.checkProtocol(res);
    let value: unknown;
    if (def.stream === 'text') value = text;
    else {
      try {
        value = text === '' ? undefined : JSON.parse(text);
      } catch (err) {
        throw new FerryError('FERRY_E_AGENT_PROTOCOL', `${this.what} sent a body that is not JSON (${name}).`, { cause: err });
      }
    }
    const check = checker(def.response);
    if (!check.Check(value)) {
      const problems = check.Errors(value).slice(0, 4).map((e) => `${e.instancePath || '/'} ${e.message}`);
      throw new FerryError('FERRY_E_AGENT_PROTOCOL', `${this.what} answered ${name} with a body that is not the protocol's: ${problems.join('; ')}.`, { details: { problems } });
    }
    // Checked against the route's schema just above; Static<> of that schema is ResponseOf<N>.
    return value as ResponseOf<N>;
  }

  /** One call of a route of the table, answering its response type. Answers of 4xx/5xx become the agent's FerryError. */
  async call<N extends CallRouteName>(name: N, ...args: CallArgs<N>): Promise<ResponseOf<N>> {
    const [input, opts = {}] = args;
    const def: RouteSpec = AGENT_ROUTES[name];
    // The table types `input` per route; here, for any route, only its shape matters.
    const { params, body } = (input ?? {}) as { params?: Record<string, string>; body?: unknown };
    const sent = body ?? (def.body === undefined ? undefined : {});
    const timeoutMs = opts.timeoutMs ?? (typeof def.timeoutMs === 'function' ? (def.timeoutMs as (b: unknown) => number)(sent ?? {}) : def.timeoutMs);
    const res = await this.send(name, {
      params,
      body: sent === undefined ? null : JSON.stringify(sent),
      headers: {
        accept: def.stream === 'text' ? 'text/plain' : 'application/json',
        ...(sent === undefined ? {} : { 'content-type': 'application/json' }),
      },
      timeoutMs,
      whole: true,
    });
    return this.answer(name, res);
  }

  /**
   * The values of an `events` route as the agent sends them (server-sent events, each checked against the
   * route's response schema), until the agent ends the stream or `signal` aborts (then it just ends). The
   * stream may stay quiet for long: `timeoutMs` bounds the wait for each next event.
   */
  async *watch<N extends EventsRouteName>(name: N, input: { params: ParamsOf<N> }, opts: { signal: AbortSignal; timeoutMs: number }): AsyncGenerator<ResponseOf<N>> {
    const def: RouteSpec = AGENT_ROUTES[name];
    const res = await this.send(name, {
      // Params of the table are strings (ids, names); Static<> of a params schema is that record.
      params: input.params as Record<string, string>,
      body: null,
      headers: { accept: 'text/event-stream' },
      timeoutMs: opts.timeoutMs,
      whole: false,
      signal: opts.signal,
    });
    if (res.statusCode >= 400) throw decodeAgentError(res.statusCode, await this.text(res), this.what, 'FERRY_E_INTERNAL');
    const queue: unknown[] = [];
    const parser = createParser({ onEvent: (m) => queue.push(JSON.parse(m.data)) });
    const check = checker(def.response);
    try {
      this.checkProtocol(res);
      for await (const chunk of res.body) {
        parser.feed((chunk as Buffer).toString('utf8'));
        for (let value = queue.shift(); value !== undefined; value = queue.shift()) {
          if (!check.Check(value)) throw new FerryError('FERRY_E_AGENT_PROTOCOL', `${this.what} sent an event on ${name} that is not the protocol's.`);
          // Checked against the route's schema just above.
          yield value as ResponseOf<N>;
        }
      }
    } catch (err) {
      if (opts.signal.aborted) return;
      if (err instanceof FerryError) throw err;
      throw transportError(err, this.what, 'FERRY_E_AGENT_UNREACHABLE');
    } finally {
      res.body.destroy();
    }
  }

  /** A file from a `download` route (the source of a cold migration), as a stream; its error is the agent's. */
  async download<N extends DownloadRouteName>(name: N, input: { params: ParamsOf<N> }, opts: CallOptions = {}): Promise<DownloadResult> {
    const def: RouteSpec = AGENT_ROUTES[name];
    const res = await this.send(name, {
      // Params of the table are strings (ids, names); Static<> of a params schema is that record.
      params: input.params as Record<string, string>,
      body: null,
      headers: { accept: 'application/octet-stream' },
      timeoutMs: opts.timeoutMs ?? (def.timeoutMs as number),
      whole: false,
    });
    if (res.statusCode >= 400) throw decodeAgentError(res.statusCode, await this.text(res), this.what, 'FERRY_E_MIGRATION_FAILED');
    try {
      this.checkProtocol(res);
    } catch (err) {
      res.body.destroy();
      throw err;
    }
    const sha256 = headerOf(res.headers, SHA256_HEADER);
    if (sha256 === undefined) {
      res.body.destroy();
      throw new FerryError('FERRY_E_AGENT_PROTOCOL', `${this.what} sent a file without ${SHA256_HEADER}.`);
    }
    const length = Number(headerOf(res.headers, 'content-length'));
    return { body: res.body, sha256, bytes: Number.isFinite(length) ? length : null };
  }

  /** A stream to an `upload` route (the destination of a cold migration); answers the route's response type. */
  async upload<N extends UploadRouteName>(name: N, input: UploadInput<N>, opts: CallOptions = {}): Promise<ResponseOf<N>> {
    const def: RouteSpec = AGENT_ROUTES[name];
    const res = await this.send(name, {
      params: input.params as Record<string, string>,
      body: input.body,
      // No content-length: the destination counts and checks the sha256 of what arrives.
      headers: { accept: 'application/json', 'content-type': 'application/octet-stream', ...(input.headers as Record<string, string>) },
      timeoutMs: opts.timeoutMs ?? (def.timeoutMs as number),
      whole: false,
    });
    return this.answer(name, res, 'FERRY_E_VERIFY_FAILED');
  }
}
