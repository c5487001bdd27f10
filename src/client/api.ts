/**
 * The one HTTP client of Ferry's public API, used by the CLI, the lab, the benchmarks and the tests: undici
 * with the context's CA pinned and the bearer token, error envelopes decoded back into FerryErrors,
 * transport failures as FERRY_E_SERVER_UNREACHABLE (or FERRY_E_TLS).
 *
 * Several controllers (docs/ha.md): the context's servers are tried in order while one cannot be reached
 * (or answers FERRY_E_NO_LEADER), starting with the one that answered last; a follower's 307 is followed
 * to the leader with the same method and body, at most MAX_REDIRECTS hops, and only where the token may go
 * (`redirectTarget`).
 */
import { Agent, request, type Dispatcher } from 'undici';
import { FerryError, fromErrorJSON } from '../common/errors.ts';
import { checkApiServerIdentity, checkControllerIdentity } from '../common/identity.ts';
import { codesOf, transportError } from '../common/http.ts';
import { loadConfig, type ClientConfig, type ConfigOverrides } from './config.ts';

export interface RequestOptions {
  timeoutMs?: number;
  as?: 'json' | 'text';
}

/** Redirects followed for one request: a follower points at the leader, which answers (one hop, three to spare for an election). */
export const MAX_REDIRECTS = 3;

/** Transport failures that mean the request never reached the server: another one may take it. */
const NOT_DELIVERED = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT']);

/**
 * Where a 307 may take the token. Only https, and only to a host of the context's own servers (any port:
 * controllers of one machine listen on ports of their own), checked against the context's CA as usual;
 * any other host only when it proves it is a controller of this cluster — the cluster CA's certificate
 * with the server role, which the cluster issues to its controllers alone (`member: true`). Anything
 * else is FERRY_E_REDIRECT and the token is not sent.
 */
export function redirectTarget(location: string, from: URL, servers: readonly string[]): { url: URL; member: boolean } {
  let url: URL;
  try {
    url = new URL(location, from);
  } catch (err) {
    throw new FerryError('FERRY_E_REDIRECT', `The Ferry server at ${from.origin} redirected to ${JSON.stringify(location)}, which is not a URL.`, { cause: err });
  }
  if (url.protocol !== 'https:') {
    throw new FerryError('FERRY_E_REDIRECT', `The Ferry server at ${from.origin} redirected to ${url.origin}: not https, the token is not sent there.`);
  }
  const configured = servers.some((s) => new URL(s).hostname === url.hostname);
  return { url, member: !configured };
}

export class ApiClient {
  /** For the context's servers: their certificate may be the operator's own (src/common/identity.ts). */
  private readonly dispatcher: Agent;
  /** For hosts only a redirect named: the cluster's controller certificate, role required. */
  private readonly memberDispatcher: Agent;
  /** Index in `config.servers` of the one that answered last: tried first. */
  private active = 0;

  constructor(readonly config: ClientConfig) {
    this.dispatcher = new Agent({ connect: { ca: config.caCertPem, timeout: 5_000, checkServerIdentity: checkApiServerIdentity } });
    this.memberDispatcher = new Agent({ connect: { ca: config.caCertPem, timeout: 5_000, checkServerIdentity: checkControllerIdentity } });
  }

  /** The server that answered last (or the first, before any answer). */
  get server(): string {
    return this.config.servers[this.active] ?? this.config.server;
  }

  /**
   * One request against the cluster: each server in turn (from the last that answered) while the request
   * cannot reach it or no controller leads, then along the leader's redirects. Answers the HTTP answer
   * of the server that took it, status below 300 or an error envelope.
   */
  private async send(
    method: 'GET' | 'POST' | 'DELETE',
    path: string,
    opts: { body?: string | undefined; headers: Record<string, string>; headersTimeout: number; bodyTimeout: number; signal?: AbortSignal | undefined },
  ): Promise<{ res: Dispatcher.ResponseData; what: string }> {
    const servers = this.config.servers.length > 0 ? this.config.servers : [this.config.server];
    let last: unknown;
    for (let i = 0; i < servers.length; i++) {
      const index = (this.active + i) % servers.length;
      try {
        const out = await this.follow(method, new URL(path, servers[index]), opts, servers);
        this.active = index;
        return out;
      } catch (err) {
        if (opts.signal?.aborted) throw err;
        last = err;
        const code = (err as { code?: unknown }).code;
        // A write that may have arrived is never sent twice; a read may be.
        const tryNext = code === 'FERRY_E_NO_LEADER' || (code === 'FERRY_E_SERVER_UNREACHABLE' && (method === 'GET' || codesOf(err).some((c) => NOT_DELIVERED.has(c))));
        if (!tryNext) throw err;
      }
    }
    throw last;
  }

  private async follow(
    method: 'GET' | 'POST' | 'DELETE',
    start: URL,
    opts: { body?: string | undefined; headers: Record<string, string>; headersTimeout: number; bodyTimeout: number; signal?: AbortSignal | undefined },
    servers: readonly string[],
  ): Promise<{ res: Dispatcher.ResponseData; what: string }> {
    let url = start;
    let member = false;
    for (let hop = 0; ; hop++) {
      const what = `The Ferry server at ${url.origin}`;
      let res: Dispatcher.ResponseData;
      try {
        res = await request(url, {
          method,
          dispatcher: member ? this.memberDispatcher : this.dispatcher,
          headers: { authorization: `Bearer ${this.config.token}`, ...opts.headers },
          body: opts.body ?? null,
          headersTimeout: opts.headersTimeout,
          bodyTimeout: opts.bodyTimeout,
          ...(opts.signal === undefined ? {} : { signal: opts.signal }),
        });
      } catch (err) {
        if (opts.signal?.aborted) throw err;
        throw transportError(err, what, 'FERRY_E_SERVER_UNREACHABLE');
      }
      if (res.statusCode !== 307 && res.statusCode !== 308) {
        if (res.statusCode >= 400) throw await errorOf(res, what);
        return { res, what };
      }
      await res.body.dump();
      const location = res.headers.location;
      if (typeof location !== 'string') throw new FerryError('FERRY_E_REDIRECT', `${what} answered ${res.statusCode} without a Location.`);
      if (hop >= MAX_REDIRECTS) throw new FerryError('FERRY_E_REDIRECT', `${what} redirected once more after ${MAX_REDIRECTS} redirects (last to ${location}): the controllers disagree on who leads.`);
      const next = redirectTarget(location, url, servers);
      url = next.url;
      member = next.member;
    }
  }

  async request<T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown, opts: RequestOptions = {}): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? 180_000;
    const { res, what } = await this.send(method, path, {
      headers: {
        accept: opts.as === 'text' ? 'text/plain' : 'application/json',
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
    });
    const text = await res.body.text().catch((err: unknown) => {
      throw transportError(err, what, 'FERRY_E_SERVER_UNREACHABLE');
    });
    if (opts.as === 'text') return text as T;
    try {
      return JSON.parse(text) as T;
    } catch (err) {
      throw new FerryError('FERRY_E_INTERNAL', `${what} sent a body that is not JSON.`, { cause: err });
    }
  }

  /**
   * Opens a long-lived text stream (Server-Sent Events): the body's chunks as they come. No body timeout
   * beyond `idleMs`, since an event stream is silent between events (the server pings every 15 s).
   */
  async stream(path: string, headers: Record<string, string>, signal?: AbortSignal, idleMs = 60_000): Promise<AsyncIterable<Buffer>> {
    const { res } = await this.send('GET', path, { headers: { accept: 'text/event-stream', ...headers }, headersTimeout: 10_000, bodyTimeout: idleMs, signal });
    return res.body;
  }

  get<T>(path: string, opts?: RequestOptions): Promise<T> {
    return this.request<T>('GET', path, undefined, opts);
  }
  post<T>(path: string, body: unknown = {}, opts?: RequestOptions): Promise<T> {
    return this.request<T>('POST', path, body, opts);
  }
  delete<T>(path: string, opts?: RequestOptions): Promise<T> {
    return this.request<T>('DELETE', path, undefined, opts);
  }

  async close(): Promise<void> {
    await Promise.all([this.dispatcher.close(), this.memberDispatcher.close()]);
  }
}

/** An answer of status 400 or more as the FerryError its envelope carries. */
async function errorOf(res: Dispatcher.ResponseData, what: string): Promise<FerryError> {
  const text = await res.body.text().catch(() => '');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return new FerryError('FERRY_E_INTERNAL', `${what} answered HTTP ${res.statusCode}: ${text.slice(0, 200)}`);
  }
  return fromErrorJSON(parsed);
}

/** Runs `fn` with a client built from the config file and the command's flags, then closes it. */
export async function withClient<T>(over: ConfigOverrides, fn: (c: ApiClient) => Promise<T>): Promise<T> {
  const client = new ApiClient(loadConfig(over));
  try {
    return await fn(client);
  } finally {
    await client.close();
  }
}

export const enc = encodeURIComponent;
