/**
 * The agent's logger: JSON lines on stderr (src/common/log.ts) with the host's name on each, and the
 * timing of the migration phases this agent runs (prepare, perform, finish, confirm, storage copy, cold):
 * one line when a phase starts and one when it ends, with its duration and, when it failed, its error code.
 */
import { toFerryError } from '../common/errors.ts';
import { createLogger, type Log, type LoggerOptions } from '../common/log.ts';

export function agentLogger(host: string, opts: Omit<LoggerOptions, 'process' | 'base'> = {}): Log {
  return createLogger({ ...opts, process: 'agent', base: { host } });
}

/** The phases an agent runs, as its log lines name them. */
export type AgentPhase =
  | 'prepare'
  | 'perform'
  | 'setup'
  | 'mirror'
  | 'transfer'
  | 'postcopy'
  | 'finish'
  | 'confirm'
  | 'recover'
  | 'cold-prepare'
  | 'cold-perform'
  | 'cold-download'
  | 'cold-upload';

/** A child of `log` for one migration, and one phase of it when the logger is for that phase only. */
export function phaseLog(log: Log, migration: string, phase: AgentPhase | null, fields: Record<string, unknown> = {}): Log {
  return log.child({ migration, ...(phase === null ? {} : { phase }), ...fields });
}

/** Told of every phase that ended: its name, `ok` or the error code, its duration (the agent's metrics). */
export type PhaseObserver = (phase: AgentPhase, result: string, ms: number) => void;

/**
 * Runs one phase of a migration, logging its start and its end with its duration (and the error code if it
 * failed), and telling `observe`.
 */
export async function timedPhase<T>(
  t: { log: Log; observe?: PhaseObserver },
  migration: string,
  phase: AgentPhase,
  fields: Record<string, unknown>,
  fn: () => Promise<T>,
  outcome?: (result: T) => Record<string, unknown>,
): Promise<T> {
  const l = phaseLog(t.log, migration, phase, fields);
  const t0 = performance.now();
  l.info(`${phase} started`);
  try {
    const result = await fn();
    const ms = Math.round(performance.now() - t0);
    l.info({ durationMs: ms, ...outcome?.(result) }, `${phase} done in ${ms} ms`);
    t.observe?.(phase, 'ok', ms);
    return result;
  } catch (err) {
    const fe = toFerryError(err);
    const ms = Math.round(performance.now() - t0);
    l.warn({ durationMs: ms, code: fe.code, err }, `${phase} failed after ${ms} ms: ${fe.message}`);
    t.observe?.(phase, fe.code, ms);
    throw err;
  }
}
