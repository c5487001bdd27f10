/**
 * How the controller calls host agents: HTTPS with mutual TLS (the controller's client certificate,
 * the cluster CA pinned), the protocol version header on every request, timeouts on every call, agent
 * errors decoded back into FerryErrors, and network failures as FERRY_E_AGENT_UNREACHABLE.
 */
import { Agent, request } from 'undici';
import { FerryError, fromErrorJSON } from '../common/errors.ts';
import { transportError } from '../common/http.ts';
import { AGENT_PROTOCOL, PROTOCOL_HEADER, type HostInventory, type VmStatus } from '../common/protocol.ts';
import type { VmSpec } from '../common/spec.ts';

export interface AgentTls {
  caCertPem: string;
  certPem: string;
  keyPem: string;
}

export interface CallOptions {
  /** Whole-call deadline; creating a VM waits for the guest to boot, so it gets a longer one. */
  timeoutMs?: number;
  /** `text` for routes that answer text/plain (the console log). */
  as?: 'json' | 'text';
}

export const DEFAULT_TIMEOUT_MS = 10_000;
export const CREATE_TIMEOUT_MS = 120_000;

/** One connection pool for all agents: they share the controller's client certificate and the CA. */
export class AgentPool {
  readonly dispatcher: Agent;
  private readonly clients = new Map<string, AgentClient>();
  constructor(tls: AgentTls) {
    this.dispatcher = new Agent({
      connect: { ca: tls.caCertPem, cert: tls.certPem, key: tls.keyPem, timeout: 5_000 },
      keepAliveTimeout: 10_000,
    });
  }

  /** The client for the agent at `url` (`https://ADDR:PORT`), named `host` in messages. */
  client(host: string, url: string): AgentClient {
    const key = `${host} ${url}`;
    let c = this.clients.get(key);
    if (!c) {
      c = new AgentClient(host, url, this.dispatcher);
      this.clients.set(key, c);
    }
    return c;
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }
}

export class AgentClient {
  constructor(
    readonly host: string,
    readonly url: string,
    private readonly dispatcher: Agent,
  ) {}

  /** Any agent route. Answers of 4xx/5xx become the agent's FerryError. */
  async call<T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown, opts: CallOptions = {}): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const what = `The agent of ${this.host} (${this.url})`;
    let res;
    try {
      res = await request(new URL(path, this.url), {
        method,
        dispatcher: this.dispatcher,
        headers: {
          [PROTOCOL_HEADER]: String(AGENT_PROTOCOL),
          accept: opts.as === 'text' ? 'text/plain' : 'application/json',
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        body: body === undefined ? null : JSON.stringify(body),
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      throw transportError(err, what, 'FERRY_E_AGENT_UNREACHABLE');
    }
    let text: string;
    try {
      text = await res.body.text();
    } catch (err) {
      throw transportError(err, what, 'FERRY_E_AGENT_UNREACHABLE');
    }
    if (res.statusCode >= 400) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = { error: { code: 'FERRY_E_INTERNAL', message: `${what} answered HTTP ${res.statusCode}: ${text.slice(0, 200)}` } };
      }
      throw fromErrorJSON(parsed);
    }
    if (opts.as === 'text') return text as T;
    try {
      return (text === '' ? undefined : JSON.parse(text)) as T;
    } catch (err) {
      throw new FerryError('FERRY_E_AGENT_PROTOCOL', `${what} sent a body that is not JSON.`, { cause: err });
    }
  }

  inventory(): Promise<HostInventory> {
    return this.call('GET', '/agent/v1/inventory');
  }
  listVms(): Promise<VmStatus[]> {
    return this.call('GET', '/agent/v1/vms');
  }
  getVm(name: string): Promise<VmStatus> {
    return this.call('GET', `/agent/v1/vms/${encodeURIComponent(name)}`);
  }
  /** `ready`: how the agent treats the guest's readiness (protocol.ts POST /vms); absent = the agent's default. */
  createVm(spec: VmSpec, opts: CallOptions = {}, ready: { readiness?: 'require' | 'wait' | 'skip'; readyTimeoutMs?: number } = {}): Promise<VmStatus> {
    return this.call('POST', '/agent/v1/vms', { spec, ...ready }, { timeoutMs: CREATE_TIMEOUT_MS + (ready.readyTimeoutMs ?? 0), ...opts });
  }
  startVm(name: string): Promise<VmStatus> {
    return this.call('POST', `/agent/v1/vms/${encodeURIComponent(name)}/start`, {}, { timeoutMs: CREATE_TIMEOUT_MS });
  }
  stopVm(name: string, body: { timeoutMs?: number; force?: boolean } = {}): Promise<VmStatus> {
    return this.call('POST', `/agent/v1/vms/${encodeURIComponent(name)}/stop`, body, {
      timeoutMs: (body.timeoutMs ?? 30_000) + DEFAULT_TIMEOUT_MS,
    });
  }
  pauseVm(name: string): Promise<VmStatus> {
    return this.call('POST', `/agent/v1/vms/${encodeURIComponent(name)}/pause`, {});
  }
  resumeVm(name: string): Promise<VmStatus> {
    return this.call('POST', `/agent/v1/vms/${encodeURIComponent(name)}/resume`, {});
  }
  deleteVm(name: string): Promise<{ deleted: boolean }> {
    return this.call('DELETE', `/agent/v1/vms/${encodeURIComponent(name)}`, undefined, { timeoutMs: 60_000 });
  }
  guest(name: string, command: string, opts: CallOptions = {}): Promise<unknown> {
    return this.call('POST', `/agent/v1/vms/${encodeURIComponent(name)}/guest`, { command }, { timeoutMs: 30_000, ...opts });
  }
  console(name: string): Promise<string> {
    return this.call('GET', `/agent/v1/vms/${encodeURIComponent(name)}/console`, undefined, { as: 'text' });
  }
}
