/**
 * The flags every cluster command takes (output format, where the cluster is), and the checks of flag
 * values that happen before any config is read: a bad flag exits 2 even where no cluster is configured.
 * A bare number is refused where it would be ambiguous (a duration, a size, a rate): `--deadline 600`
 * could mean ms or s, `--memory 256` bytes or MiB, so those need a unit.
 */
import { Option, type Command } from 'commander';
import { FerryError } from '../common/errors.ts';
import { parseDuration, parseSize } from '../common/units.ts';
import { parseBandwidth } from '../common/policy.ts';
import type { ConfigOverrides } from '../client/config.ts';
import { DOCUMENT_FORMATS, LIST_FORMATS, type OutputOptions } from './output.ts';

/**
 * The flags every cluster command takes. A list or a show (`kind: 'view'`) also prints `-o wide|name` and
 * takes `--no-headers`; any other command prints its result as a document (`-o json|yaml`).
 */
export function clusterOptions<C extends Command>(cmd: C, kind: 'view' | 'action' = 'action'): C {
  cmd.option('--json', 'print one JSON document (as -o json)');
  cmd.addOption(new Option('-o, --output <format>', 'output format').choices(kind === 'view' ? LIST_FORMATS : DOCUMENT_FORMATS));
  if (kind === 'view') cmd.option('--no-headers', 'tables without their header line');
  return cmd
    .option('--server <url>', 'controller URL, or several comma-separated (tried in order; overrides the config)')
    .option('--token <token>', 'API token (overrides the config)')
    .option('--ca <file>', 'CA certificate(s) the server is checked against, PEM (overrides the config)')
    .option('--context <name>', 'a context of the CLI config instead of the current one (ferry context list)') as C;
}

export interface ClusterFlags extends ConfigOverrides, OutputOptions {}

const NUMBER = /^\s*\d+(\.\d+)?\s*$/;
const isBareNonZero = (text: string): boolean => NUMBER.test(text) && Number(text) !== 0;

function unitRequired(flag: string, text: string, example: string, units: string): never {
  throw new FerryError('FERRY_E_UNIT_REQUIRED', `${flag} ${text} needs a unit: e.g. ${example} (${units}).`, { details: { flag, value: text } });
}

/** A duration flag (`10s`, `300ms`, `5m`); returned as given, for the server to read the same way. */
export function durationFlag(flag: string, text: string): string {
  if (isBareNonZero(text)) unitRequired(flag, text, `${text.trim()}s`, 'ms, s, m, h');
  parseDuration(text, flag);
  return text;
}

/** A size flag (`256M`, `1G`). */
export function sizeFlag(flag: string, text: string): string {
  if (isBareNonZero(text)) unitRequired(flag, text, `${text.trim()}M`, 'B, K, M, G, T');
  parseSize(text, flag);
  return text;
}

/** A rate flag: `0` (no limit) or a size per second (`100M`, `100MiB/s`). */
export function rateFlag(flag: string, text: string): string {
  if (isBareNonZero(text.replace(/\/s$/i, ''))) unitRequired(flag, text, `${text.trim()}M`, 'a size per second: K, M, G; 0 = no limit');
  parseBandwidth(text);
  return text;
}

/** A whole number within bounds that may be negative (`--priority -5`). */
export function signedIntFlag(flag: string, text: string, min: number, max: number): number {
  const n = Number(text);
  if (!/^\s*-?\d+\s*$/.test(text) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new FerryError('FERRY_E_BAD_INPUT', `Bad ${flag} ${JSON.stringify(text)}: a whole number from ${min} to ${max}.`);
  }
  return n;
}

/** A whole number within bounds. */
export function intFlag(flag: string, text: string, min: number, max: number): number {
  const n = Number(text);
  if (!/^\s*\d+\s*$/.test(text) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new FerryError('FERRY_E_BAD_INPUT', `Bad ${flag} ${JSON.stringify(text)}: a whole number from ${min} to ${max}.`);
  }
  return n;
}
