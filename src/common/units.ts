/** Parsing and printing of sizes, durations and names given by users. */
import { FerryError } from './errors.ts';

export const NAME_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** Validates a VM, host or network name; nothing else may reach argv, paths or interface names. */
export function validateName(name: unknown, what = 'name'): string {
  if (typeof name !== 'string' || !NAME_RE.test(name)) {
    throw new FerryError(
      'FERRY_E_BAD_NAME',
      `Bad ${what} ${JSON.stringify(name)}: names must match [a-z0-9][a-z0-9-]{0,62}.`,
    );
  }
  return name;
}

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  B: 1,
  K: 1024,
  KB: 1024,
  KIB: 1024,
  M: 1024 ** 2,
  MB: 1024 ** 2,
  MIB: 1024 ** 2,
  G: 1024 ** 3,
  GB: 1024 ** 3,
  GIB: 1024 ** 3,
  T: 1024 ** 4,
  TB: 1024 ** 4,
  TIB: 1024 ** 4,
};

/** Parses `256M`, `1G`, `512KiB`, `1048576` into bytes (binary units). Zero or negative is refused. */
export function parseSize(text: string | number, what = 'size'): number {
  if (typeof text === 'number') {
    if (Number.isSafeInteger(text) && text > 0) return text;
    throw new FerryError('FERRY_E_BAD_SIZE', `Bad ${what} ${text}: must be a positive whole number of bytes.`);
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? SIZE_UNITS[m[2]!.toUpperCase()] : undefined;
  if (!m || unit === undefined) {
    throw new FerryError('FERRY_E_BAD_SIZE', `Bad ${what} ${JSON.stringify(text)}: use e.g. 256M, 1G.`);
  }
  const bytes = Math.round(Number(m[1]) * unit);
  if (!(bytes > 0) || !Number.isSafeInteger(bytes)) {
    throw new FerryError('FERRY_E_BAD_SIZE', `Bad ${what} ${JSON.stringify(text)}: must be more than 0.`);
  }
  return bytes;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses `300ms`, `10s`, `5m`, `1h` into milliseconds. A bare number is milliseconds. */
export function parseDuration(text: string | number, what = 'duration'): number {
  if (typeof text === 'number') {
    if (Number.isFinite(text) && text >= 0) return text;
    throw new FerryError('FERRY_E_BAD_DURATION', `Bad ${what} ${text}.`);
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  if (!m) throw new FerryError('FERRY_E_BAD_DURATION', `Bad ${what} ${JSON.stringify(text)}: use e.g. 300ms, 10s, 5m.`);
  return Math.round(Number(m[1]) * DURATION_UNITS[m[2] ?? 'ms']!);
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const m = Math.floor(ms / 60_000);
  return `${m}m${Math.round((ms % 60_000) / 1000)}s`;
}
