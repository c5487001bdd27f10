/**
 * How every command speaks: with `--json`, exactly one JSON document on stdout; without, human lines.
 * Errors become `{ "error": { code, message } }` (JSON) or `error FERRY_E_…: message` (stderr), and the
 * exit code of the error registry (2 = bad usage or input, 1 = failed operation).
 */
import { toFerryError } from '../common/errors.ts';

export interface OutputOptions {
  json?: boolean;
}

/** Result of an action: the JSON document, and the human rendering of it. */
export interface Outcome<T> {
  json: T;
  human?: string | (() => string);
  /** Exit code for an outcome that is not an error but still a failure (e.g. a migration that failed). */
  exitCode?: number;
}

export function printOutcome<T>(out: Outcome<T>, opts: OutputOptions): number {
  if (opts.json) {
    process.stdout.write(JSON.stringify(out.json, null, 2) + '\n');
  } else {
    const h = typeof out.human === 'function' ? out.human() : out.human;
    process.stdout.write((h ?? JSON.stringify(out.json, null, 2)) + '\n');
  }
  return out.exitCode ?? 0;
}

export function printError(err: unknown, opts: OutputOptions): number {
  const fe = toFerryError(err);
  if (opts.json) {
    process.stdout.write(JSON.stringify({ error: fe.toJSON() }, null, 2) + '\n');
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
    // commander passes (positional..., options, command); the options object holds --json.
    const opts = (args.length >= 2 ? args[args.length - 2] : {}) as OutputOptions;
    try {
      process.exitCode = printOutcome(await fn(...args), opts);
    } catch (err) {
      process.exitCode = printError(err, opts);
    }
  };
}

