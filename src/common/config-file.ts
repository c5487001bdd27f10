/**
 * The YAML config files of `ferry server --config FILE` and `ferry agent --config FILE` (deploy/ has
 * examples): a mapping whose keys are the command's flags in camelCase, each checked for its type here and
 * for its value by the command's own parsers, so a file and a flag are refused the same way. A flag given on
 * the command line wins over the file's key. Every refusal names the key: FERRY_E_CONFIG_FILE for a file
 * that is not a YAML mapping, FERRY_E_CONFIG_KEY for an unknown key or a bad value (both exit 2).
 * Also the values both commands share: a port range (`49152-49215`) and an IPv4 CIDR.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { parse as parseYaml } from 'yaml';
import { FerryError } from './errors.ts';

/** What a key holds: one string (numbers are taken as written, `7443` → "7443"), or a list of strings. */
export type KeyKind = 'string' | 'list';

export type ConfigKeys = Readonly<Record<string, KeyKind>>;

export type ConfigValues<K extends ConfigKeys> = { [P in keyof K]?: K[P] extends 'list' ? string[] : string };

const scalar = (v: unknown): string | undefined =>
  typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'boolean' ? String(v) : undefined;

/** Reads and type-checks a config file against its keys; unknown keys and wrong types are refused by name. */
export function loadConfigFile<K extends ConfigKeys>(file: string, keys: K): ConfigValues<K> {
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new FerryError('FERRY_E_CONFIG_FILE', `Cannot read the config file ${file}: ${(err as Error).message}`, { cause: err, details: { file } });
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    throw new FerryError('FERRY_E_CONFIG_FILE', `The config file ${file} is not a YAML mapping of keys to values.`, { details: { file } });
  }
  const out: Record<string, string | string[]> = {};
  for (const [key, value] of Object.entries(doc as Record<string, unknown>)) {
    const kind = keys[key];
    if (kind === undefined) {
      throw new FerryError('FERRY_E_CONFIG_KEY', `Unknown key ${JSON.stringify(key)} in ${file}: the keys are ${Object.keys(keys).join(', ')}.`, { details: { file, key } });
    }
    if (kind === 'list') {
      const list = Array.isArray(value) ? value.map(scalar) : [scalar(value)];
      if (list.some((v) => v === undefined)) throw badKey(file, key, 'a list of strings');
      out[key] = list as string[];
    } else {
      const v = scalar(value);
      if (v === undefined) throw badKey(file, key, 'a string');
      out[key] = v;
    }
  }
  return out as ConfigValues<K>;
}

/** FERRY_E_CONFIG_KEY naming the key and what it takes. */
export function badKey(file: string, key: string, wanted: string, cause?: unknown): FerryError {
  const why = cause instanceof Error ? ` (${cause.message})` : '';
  return new FerryError('FERRY_E_CONFIG_KEY', `Bad ${JSON.stringify(key)} in ${file}: ${wanted}${why}.`, { details: { file, key }, ...(cause === undefined ? {} : { cause }) });
}

/**
 * Runs a value's parser; its refusal becomes FERRY_E_CONFIG_KEY naming the key when the value came from
 * the file, and stays as it is for a flag.
 */
export function fromFile<T>(file: string | undefined, key: string, fromFlag: boolean, parse: () => T): T {
  if (fromFlag || file === undefined) return parse();
  try {
    return parse();
  } catch (err) {
    throw badKey(file, key, err instanceof FerryError ? err.message.replace(/\.$/, '') : 'a valid value', err);
  }
}

export interface PortRange {
  first: number;
  last: number;
}

/** `FIRST-LAST` (inclusive, 1024–65535): the ports a firewall opens for migration streams and NBD. */
export function parsePortRange(text: string, what = '--migration-ports'): PortRange {
  const m = /^(\d{1,5})-(\d{1,5})$/.exec(text.trim());
  const first = m ? Number(m[1]) : NaN;
  const last = m ? Number(m[2]) : NaN;
  if (!m || first < 1024 || last > 65535 || first > last) {
    throw new FerryError('FERRY_E_USAGE', `Bad ${what} ${JSON.stringify(text)}: FIRST-LAST between 1024 and 65535, e.g. 49152-49215.`);
  }
  return { first, last };
}

function ipv4(text: string): number {
  return text.split('.').reduce((n, o) => n * 256 + Number(o), 0);
}

/** An IPv4 CIDR `A.B.C.D/LEN` as its network and prefix length. */
export function parseCidr4(text: string, what = '--migration-cidr'): { base: number; prefix: number } {
  const [addr = '', len = ''] = text.trim().split('/');
  const prefix = /^\d{1,2}$/.test(len) ? Number(len) : -1;
  if (isIP(addr) !== 4 || prefix < 0 || prefix > 32) {
    throw new FerryError('FERRY_E_USAGE', `Bad ${what} ${JSON.stringify(text)}: an IPv4 network A.B.C.D/LEN, e.g. 10.0.1.0/24.`);
  }
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return { base: (ipv4(addr) & mask) >>> 0, prefix };
}

export function inCidr4(ip: string, cidr: string): boolean {
  if (isIP(ip) !== 4) return false;
  const { base, prefix } = parseCidr4(cidr);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return ((ipv4(ip) & mask) >>> 0) === base;
}
