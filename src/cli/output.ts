/**
 * How every command speaks: `-o json` (or `--json`) prints exactly one JSON document on stdout, `-o yaml` the
 * same document as YAML (a VM's manifest for `vm show`), `-o name` the names of what a list or show holds,
 * `-o wide` a list's table with its extra columns; without `-o`, human lines (`--no-headers` drops a table's
 * header). Errors become `{ "error": { code, message } }` (JSON or YAML) or `error FERRY_E_…: message`
 * (stderr), and the exit code of the error registry (2 = bad usage or input, 1 = failed operation).
 */
import { stringify } from 'yaml';
import { toFerryError } from '../common/errors.ts';
import type { TableOptions } from '../client/table.ts';

/** Every format a list or show prints; other commands take only the documents (json, yaml). */
export const LIST_FORMATS = ['json', 'yaml', 'wide', 'name'] as const;
export const DOCUMENT_FORMATS = ['json', 'yaml'] as const;
export type OutputFormat = (typeof LIST_FORMATS)[number];

export interface OutputOptions {
  json?: boolean;
  output?: OutputFormat;
  /** false with --no-headers. */
  headers?: boolean;
}

/** Result of an action: the JSON document, and the human renderings of it. */
export interface Outcome<T> {
  json: T;
  human?: string | (() => string);
  /** A list as a table (the default view, `-o wide`, `--no-headers`). */
  table?: (opts: TableOptions) => string;
  /** What `-o name` prints, one a line. */
  names?: readonly string[];
  /** The document `-o yaml` prints when it is not the JSON one. */
  yaml?: unknown;
  /** Exit code for an outcome that is not an error but still a failure (e.g. a migration that failed). */
  exitCode?: number;
}

/** The format asked for; `--json` is `-o json`. */
export function formatOf(opts: OutputOptions): OutputFormat | 'human' {
  return opts.output ?? (opts.json ? 'json' : 'human');
}

const yamlText = (doc: unknown): string => stringify(doc, { lineWidth: 0 });

export function printOutcome<T>(out: Outcome<T>, opts: OutputOptions): number {
  const format = formatOf(opts);
  let text: string;
  if (format === 'json') text = JSON.stringify(out.json, null, 2);
  else if (format === 'yaml') text = yamlText(out.yaml ?? out.json).trimEnd();
  else if (format === 'name' && out.names) text = out.names.join('\n');
  else if (out.table) text = out.table({ wide: format === 'wide', ...(opts.headers === false ? { headers: false } : {}) });
  else {
    const h = typeof out.human === 'function' ? out.human() : out.human;
    text = h ?? JSON.stringify(out.json, null, 2);
  }
  if (text !== '') process.stdout.write(text + '\n');
  return out.exitCode ?? 0;
}

export function printError(err: unknown, opts: OutputOptions): number {
  const fe = toFerryError(err);
  const format = formatOf(opts);
  if (format === 'json') {
    process.stdout.write(JSON.stringify({ error: fe.toJSON() }, null, 2) + '\n');
  } else if (format === 'yaml') {
    process.stdout.write(yamlText({ error: fe.toJSON() }));
  } else {
    process.stderr.write(`error ${fe.code}: ${fe.message}\n`);
    if (process.env.FERRY_DEBUG && fe.cause) process.stderr.write(`cause: ${String(fe.cause)}\n`);
  }
  return fe.exit;
}

/** Wraps a command action: runs it, prints its outcome or its error, records the exit code. */
export function action<A extends unknown[]>(
  fn: (...args: A) => Promise<Outcome<unknown>>,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    // commander passes (positional..., options, command); the options object holds the output flags. A
    // command that calls an action itself with its options alone gets them read too.
    const opts = (args.length >= 2 ? args[args.length - 2] : (args[0] ?? {})) as OutputOptions;
    try {
      process.exitCode = printOutcome(await fn(...args), opts);
    } catch (err) {
      process.exitCode = printError(err, opts);
    }
  };
}

/**
 * The structured format a command line asks for, read from argv itself: for a usage error commander
 * raised before any option was parsed.
 */
export function structuredFormatIn(argv: readonly string[]): 'json' | 'yaml' | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = a === '-o' || a === '--output' ? argv[i + 1] : a.startsWith('--output=') ? a.slice(9) : a.startsWith('-o') && a.length > 2 ? a.slice(2) : undefined;
    if (v === 'json' || v === 'yaml') return v;
  }
  return argv.includes('--json') ? 'json' : undefined;
}
