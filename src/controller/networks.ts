/**
 * VM networks and their address allocations. A network is a name (`vm0`) and an IPv4 CIDR; each VM on it
 * gets the lowest free address, skipping the network and broadcast addresses and the gateway.
 * Allocation happens inside the caller's transaction, so two creates never get the same address.
 */
import type { SyncSql } from './store/sync.ts';
import { FerryError } from '../common/errors.ts';

export interface VmNetwork {
  name: string;
  cidr: string;
  gateway?: string | undefined;
}

const toInt = (ip: string): number => ip.split('.').reduce((n, o) => n * 256 + Number(o), 0);
const toIp = (n: number): string => [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');

export function parseCidr(cidr: string): { base: number; prefix: number; size: number } {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(cidr);
  const octets = m ? m.slice(1, 5).map(Number) : [];
  const prefix = m ? Number(m[5]) : -1;
  if (!m || octets.some((o) => o > 255) || prefix < 8 || prefix > 30) {
    throw new FerryError('FERRY_E_BAD_INPUT', `Bad network ${JSON.stringify(cidr)}: use an IPv4 CIDR like 10.77.0.0/24 (/8 to /30).`);
  }
  const size = 2 ** (32 - prefix);
  const base = Math.floor(toInt(octets.join('.')) / size) * size;
  return { base, prefix, size };
}

export function inCidr(ip: string, cidr: string): boolean {
  const { base, size } = parseCidr(cidr);
  const n = toInt(ip);
  return n >= base && n < base + size;
}

/** Parses `vm0=10.77.0.0/24` (as given to `ferry server --vm-network`). */
export function parseNetworkArg(arg: string, gateway?: string): VmNetwork {
  const m = /^([a-z0-9][a-z0-9-]{0,14})=(.+)$/.exec(arg);
  if (!m) throw new FerryError('FERRY_E_USAGE', `Bad --vm-network ${JSON.stringify(arg)}: use NAME=CIDR, e.g. vm0=10.77.0.0/24.`);
  parseCidr(m[2]!);
  if (gateway !== undefined && !inCidr(gateway, m[2]!)) {
    throw new FerryError('FERRY_E_USAGE', `Gateway ${gateway} is not inside ${m[2]}.`);
  }
  return { name: m[1]!, cidr: m[2]!, gateway };
}

/** Creates or updates the configured networks (allocations already made stay). */
export function upsertNetworks(db: SyncSql, nets: readonly VmNetwork[]): void {
  const stmt = db.prepare(
    'INSERT INTO networks (name, cidr, gateway) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET cidr = excluded.cidr, gateway = excluded.gateway',
  );
  db.transaction(() => {
    for (const n of nets) stmt.run(n.name, n.cidr, n.gateway ?? null);
  })();
}

export function getNetwork(db: SyncSql, name: string): VmNetwork | undefined {
  const r = db.prepare('SELECT name, cidr, gateway FROM networks WHERE name = ?').get(name) as
    | { name: string; cidr: string; gateway: string | null }
    | undefined;
  return r ? { name: r.name, cidr: r.cidr, gateway: r.gateway ?? undefined } : undefined;
}

/** Allocates the lowest free address of `network` to `vm`; returns `a.b.c.d/len`. Call inside a transaction. */
export function allocateIp(db: SyncSql, network: string, vm: string, wanted?: string): string {
  const net = getNetwork(db, network);
  if (!net) throw new FerryError('FERRY_E_BAD_INPUT', `No VM network ${JSON.stringify(network)} is configured (ferry server --vm-network).`);
  const { base, prefix, size } = parseCidr(net.cidr);
  const taken = new Set(
    (db.prepare('SELECT ip FROM ip_allocations WHERE network = ?').all(network) as { ip: string }[]).map((r) => r.ip),
  );
  const gateway = net.gateway ?? toIp(base + 1);
  if (wanted !== undefined) {
    // `A.B.C.D/LEN` as a guest's own configuration would say it: the length must be the network's.
    const m = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(wanted);
    const ip = m?.[1];
    const n = ip === undefined || ip.split('.').some((o) => Number(o) > 255) ? NaN : toInt(ip);
    if (ip === undefined || Number.isNaN(n) || Number(m?.[2]) !== prefix || n <= base || n >= base + size - 1 || ip === gateway) {
      throw new FerryError('FERRY_E_BAD_IP', `Bad address ${JSON.stringify(wanted)}: a host address of ${network} (${net.cidr}) other than its gateway ${gateway}, written A.B.C.D/${prefix}.`);
    }
    if (taken.has(ip)) {
      const owner = db.prepare('SELECT vm FROM ip_allocations WHERE network = ? AND ip = ?').get(network, ip) as { vm: string } | undefined;
      throw new FerryError('FERRY_E_IP_TAKEN', `${ip} on ${network} belongs to VM ${owner?.vm ?? '?'}.`, { details: { ip, vm: owner?.vm } });
    }
    db.prepare('INSERT INTO ip_allocations (network, ip, vm) VALUES (?, ?, ?)').run(network, ip, vm);
    return `${ip}/${prefix}`;
  }
  taken.add(gateway); // without a configured gateway, the first address is left for one (the usual convention)
  for (let n = base + 1; n < base + size - 1; n++) {
    const ip = toIp(n);
    if (taken.has(ip)) continue;
    db.prepare('INSERT INTO ip_allocations (network, ip, vm) VALUES (?, ?, ?)').run(network, ip, vm);
    return `${ip}/${prefix}`;
  }
  throw new FerryError('FERRY_E_NO_CAPACITY', `VM network ${network} (${net.cidr}) has no free address.`);
}
