/**
 * Migration capabilities and parameters: which QEMU switches each side sets, built as pure data, and their
 * negotiation against what a QEMU says it supports. Some capabilities change the stream format and must be
 * on at BOTH ends before the stream starts (post-copy, multifd, xbzrle); others only steer the sender.
 */
import { FerryError } from '../../common/errors.ts';
import type { MigrationCapabilities } from '../../common/agent-migration.ts';

export type { MigrationCapabilities };

/** What a migration uses; the same object goes to prepare (destination) and perform (source). */

export const NO_CAPABILITIES: MigrationCapabilities = { postcopy: false, multifd: 0, xbzrle: false, autoConverge: false };

export type Role = 'source' | 'destination';

export interface CapabilityState {
  capability: string;
  state: boolean;
}

/** Capabilities that must agree on both sides (they change what the stream looks like). */
export const SYMMETRIC = ['postcopy-ram', 'multifd', 'xbzrle'] as const;

/**
 * The `migrate-set-capabilities` list for one side. Every switch Ferry owns is set explicitly, on or off, so
 * that a QEMU reused after a cancelled attempt starts from a known state.
 */
export function capabilityList(caps: MigrationCapabilities, role: Role): CapabilityState[] {
  const list: CapabilityState[] = [
    { capability: 'postcopy-ram', state: caps.postcopy },
    { capability: 'multifd', state: caps.multifd > 0 },
    { capability: 'xbzrle', state: caps.xbzrle },
  ];
  if (role === 'source') {
    list.push({ capability: 'auto-converge', state: caps.autoConverge });
    // MIGRATION_PASS and MIGRATION events: progress without waiting for the next poll.
    list.push({ capability: 'events', state: true });
  }
  return list;
}

/**
 * Checks the wanted capabilities against `query-migrate-capabilities`. Only capabilities turned ON must be
 * known; an unknown one turned off is dropped (an older QEMU simply lacks it).
 */
export function negotiateCapabilities(wanted: CapabilityState[], supported: readonly string[]): CapabilityState[] {
  const known = new Set(supported);
  const missing = wanted.filter((c) => c.state && !known.has(c.capability)).map((c) => c.capability);
  if (missing.length > 0) {
    throw new FerryError('FERRY_E_CPU_INCOMPATIBLE', `This host's QEMU lacks the migration capabilities: ${missing.join(', ')}.`, {
      details: { missing },
    });
  }
  return wanted.filter((c) => known.has(c.capability));
}

/** True when both sides agree on every capability that changes the stream. */
export function symmetricMismatch(a: MigrationCapabilities, b: MigrationCapabilities): string[] {
  const out: string[] = [];
  if (a.postcopy !== b.postcopy) out.push('postcopy-ram');
  if ((a.multifd > 0) !== (b.multifd > 0) || (a.multifd > 0 && a.multifd !== b.multifd)) out.push('multifd');
  if (a.xbzrle !== b.xbzrle) out.push('xbzrle');
  return out;
}

/**
 * QEMU caps a migration at 128 MiB/s unless told otherwise. "No limit" is written as 1 TiB/s: far above any
 * link, and exact in a JSON number (QEMU refuses values above SIZE_MAX).
 */
export const UNLIMITED_BANDWIDTH = 2 ** 40;

export interface SourceTuning {
  /** Bytes per second; 0 = no limit. */
  bandwidthBytesPerSec: number;
  downtimeLimitMs: number;
  /** xbzrle cache; defaults to a quarter of guest memory (64 MiB was measured too small for a busy guest, docs/qemu.md). */
  xbzrleCacheBytes?: number;
}

export interface TlsParams {
  credsId: string;
  /** The name the destination's certificate must carry (its host name; else its migration address). Source only. */
  hostname?: string;
  /** The `authz-simple` object naming the one source admitted (tls.ts addTlsAuthz). Destination only. */
  authzId?: string | null;
}

/** `migrate-set-parameters` for the source. */
export function sourceParameters(
  caps: MigrationCapabilities,
  tuning: SourceTuning,
  tls: TlsParams | null,
  memoryBytes: number,
): Record<string, unknown> {
  if (!Number.isFinite(tuning.bandwidthBytesPerSec) || tuning.bandwidthBytesPerSec < 0) {
    throw new FerryError('FERRY_E_BAD_INPUT', `Bad bandwidth ${tuning.bandwidthBytesPerSec}.`);
  }
  if (!Number.isInteger(tuning.downtimeLimitMs) || tuning.downtimeLimitMs < 1 || tuning.downtimeLimitMs > 2_000_000) {
    throw new FerryError('FERRY_E_BAD_INPUT', `Bad downtime limit ${tuning.downtimeLimitMs} ms.`);
  }
  const p: Record<string, unknown> = {
    'max-bandwidth': tuning.bandwidthBytesPerSec === 0 ? UNLIMITED_BANDWIDTH : Math.round(tuning.bandwidthBytesPerSec),
    'downtime-limit': tuning.downtimeLimitMs,
    // Post-copy has its own cap (0 = none). A bandwidth the user set is the link's budget and holds for
    // post-copy too; without one it stays unlimited: the guest waits on every missing page.
    'max-postcopy-bandwidth': tuning.bandwidthBytesPerSec === 0 ? 0 : Math.round(tuning.bandwidthBytesPerSec),
  };
  if (caps.multifd > 0) p['multifd-channels'] = caps.multifd;
  if (caps.xbzrle) {
    const dflt = Math.max(64 * 1024 * 1024, Math.floor(memoryBytes / 4));
    // QEMU refuses a cache size that is not a power of two.
    p['xbzrle-cache-size'] = 2 ** Math.floor(Math.log2(Math.max(4096, tuning.xbzrleCacheBytes ?? dflt)));
  }
  // An empty string turns TLS off explicitly (a QEMU reused after an earlier attempt may still have it).
  p['tls-creds'] = tls?.credsId ?? '';
  p['tls-hostname'] = tls?.hostname ?? '';
  return p;
}

/** `migrate-set-parameters` for the destination: only what must match the source. */
export function destinationParameters(caps: MigrationCapabilities, tls: TlsParams | null): Record<string, unknown> {
  const p: Record<string, unknown> = { 'tls-creds': tls?.credsId ?? '' };
  // Set only when there is one: the destination QEMU is fresh, and an empty string is not "none" everywhere.
  if (tls?.authzId) p['tls-authz'] = tls.authzId;
  if (caps.multifd > 0) p['multifd-channels'] = caps.multifd;
  return p;
}

export function validateCapabilities(input: unknown): MigrationCapabilities {
  const c = (typeof input === 'object' && input !== null ? input : {}) as Record<string, unknown>;
  const bool = (k: string): boolean => {
    const v = c[k];
    if (v === undefined) return false;
    if (typeof v !== 'boolean') throw new FerryError('FERRY_E_BAD_INPUT', `capabilities.${k} must be true or false.`);
    return v;
  };
  const multifd = c.multifd ?? 0;
  if (typeof multifd !== 'number' || !Number.isInteger(multifd) || multifd < 0 || multifd > 16) {
    throw new FerryError('FERRY_E_BAD_INPUT', 'capabilities.multifd: a whole number from 0 (off) to 16.');
  }
  return { postcopy: bool('postcopy'), multifd, xbzrle: bool('xbzrle'), autoConverge: bool('autoConverge') };
}
