/**
 * The one HTTP client of Ferry's public API, used by the CLI, the lab, the benchmarks and the tests: undici
 * with the cluster CA pinned and the bearer token, error envelopes decoded back into FerryErrors,
 * transport failures as FERRY_E_SERVER_UNREACHABLE (or FERRY_E_TLS).
 */
import { Agent, request } from 'undici';
import { FerryError, fromErrorJSON } from '../common/errors.ts';
import { checkControllerIdentity } from '../common/identity.ts';
import { transportError } from '../common/http.ts';
import { loadConfig, type ClientConfig, type ConfigOverrides } from './config.ts';

export interface RequestOptions {
  timeoutMs?: number;
  as?: 'json' | 'text';
}

export class ApiClient {
  private readonly dispatcher: Agent;
  constructor(readonly config: ClientConfig) {
    this.dispatcher = new Agent({ connect: { ca: config.caCertPem, timeout: 5_000, checkServerIdentity: checkControllerIdentity } });
  }

  async request<T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown, opts: RequestOptions = {}): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? 180_000;
    const what = `The Ferry server at ${this.config.server}`;
    let res;
    try {
      res = await request(new URL(path, this.config.server), {
        method,
        dispatcher: this.dispatcher,
        headers: {
          authorization: `Bearer ${this.config.token}`,
          accept: opts.as === 'text' ? 'text/plain' : 'application/json',
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        body: body === undefined ? null : JSON.stringify(body),
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      });
    } catch (err) {
      throw transportError(err, what, 'FERRY_E_SERVER_UNREACHABLE');
    }
    const text = await res.body.text().catch((err: unknown) => {
      throw transportError(err, what, 'FERRY_E_SERVER_UNREACHABLE');
    });
    if (res.statusCode >= 400) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        throw new FerryError('FERRY_E_INTERNAL', `${what} answered HTTP ${res.statusCode}: ${text.slice(0, 200)}`);
      }
      throw fromErrorJSON(parsed);
    }
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
    const what = `The Ferry server at ${this.config.server}`;
    let res;
    try {
      res = await request(new URL(path, this.config.server), {
        method: 'GET',
        dispatcher: this.dispatcher,
        headers: { authorization: `Bearer ${this.config.token}`, accept: 'text/event-stream', ...headers },
        headersTimeout: 10_000,
        bodyTimeout: idleMs,
        signal,
      });
    } catch (err) {
      if (signal?.aborted) throw err;
      throw transportError(err, what, 'FERRY_E_SERVER_UNREACHABLE');
    }
    if (res.statusCode >= 400) {
      const text = await res.body.text();
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        throw new FerryError('FERRY_E_INTERNAL', `${what} answered HTTP ${res.statusCode}: ${text.slice(0, 200)}`);
      }
      throw fromErrorJSON(parsed);
    }
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
    await this.dispatcher.close();
  }
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
