/**
 * The public API as the console calls it: `fetch` with the operator's bearer token (kept in this tab's
 * sessionStorage, never in a URL), JSON in and out, and the API's error envelope turned into ApiError.
 */
import type { DrainJson, DrainPlanJson, HostSummaryJson, PlacementJson, VmJson } from '../../src/common/api.ts';
import type { MigrationJson } from '../../src/common/migration.ts';
import type { MigrateRequest } from '../../src/common/policy.ts';

const TOKEN_KEY = 'ferry.token';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export const savedToken = (): string | null => sessionStorage.getItem(TOKEN_KEY);
export const saveToken = (t: string): void => sessionStorage.setItem(TOKEN_KEY, t);
export const forgetToken = (): void => sessionStorage.removeItem(TOKEN_KEY);

export async function call<T>(method: 'GET' | 'POST', path: string, body?: unknown, token = savedToken()): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`/api/v1${path}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  const text = await res.text();
  const json: unknown = text ? JSON.parse(text) : null;
  if (!res.ok) {
    const e = (json as { error?: { code?: string; message?: string } } | null)?.error;
    throw new ApiError(res.status, e?.code ?? 'FERRY_E_INTERNAL', e?.message ?? `HTTP ${res.status}`);
  }
  return json as T;
}

const enc = encodeURIComponent;

export const api = {
  // A card shows only the summary (QEMU, CPU, memory): less than half the bytes of every host in full.
  hosts: () => call<HostSummaryJson[]>('GET', '/hosts?view=summary'),
  vms: () => call<VmJson[]>('GET', '/vms'),
  migrations: () => call<MigrationJson[]>('GET', '/migrations?limit=200'),
  migration: (id: string) => call<MigrationJson>('GET', `/migrations/${enc(id)}`),
  placements: (vm: string) => call<PlacementJson[]>('GET', `/vms/${enc(vm)}/placements`),
  migrate: (vm: string, req: MigrateRequest) => call<MigrationJson>('POST', `/vms/${enc(vm)}/migrate`, req),
  cancel: (id: string) => call<MigrationJson>('POST', `/migrations/${enc(id)}/cancel`, {}),
  drainPlan: (host: string) => call<DrainPlanJson>('POST', `/hosts/${enc(host)}/drain`, { dryRun: true }),
  drain: (host: string) => call<DrainJson>('POST', `/hosts/${enc(host)}/drain`, {}),
  drainStatus: (host: string) => call<DrainJson | { host: string; state: 'none'; items: [] }>('GET', `/hosts/${enc(host)}/drain`),
  undrain: (host: string) => call<{ host: string }>('POST', `/hosts/${enc(host)}/undrain`, {}),
};
