/**
 * The CLI's HTTP client for the controller's API: undici with the cluster CA pinned and the bearer
 * token, error envelopes decoded back into FerryErrors, transport failures as
 * FERRY_E_SERVER_UNREACHABLE (or FERRY_E_TLS). Also the table rendering the cluster commands share.
 */
import { Agent, request } from 'undici';
import { FerryError, fromErrorJSON } from '../common/errors.ts';
import { checkControllerIdentity } from '../common/identity.ts';
import { transportError } from '../controller/agent-client.ts';
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

/** Aligned columns, header first; cells are printed as given. */
export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

export const enc = encodeURIComponent;

/** The flags every cluster command takes. */
export function clusterOptions<C extends import('commander').Command>(cmd: C): C {
  return cmd
    .option('--json', 'print one JSON document')
    .option('--server <url>', 'controller URL (overrides the config)')
    .option('--token <token>', 'API token (overrides the config)')
    .option('--ca <file>', 'cluster CA certificate, PEM (overrides the config)') as C;
}

export interface ClusterFlags extends ConfigOverrides {
  json?: boolean;
}
