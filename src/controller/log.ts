/**
 * The controller's logger: JSON lines on stderr (src/common/log.ts), and the child logger of a migration,
 * which puts the job's id, VM, hosts and its current state and phase on every line about it.
 */
import { createLogger, type Log, type LoggerOptions } from '../common/log.ts';
import type { MigrationJson } from '../common/migration.ts';

export function controllerLogger(opts: Omit<LoggerOptions, 'process'> = {}): Log {
  return createLogger({ ...opts, process: 'controller' });
}

/** The fields that say which migration a line is about; state and phase as the job stands now. */
export function migrationFields(job: Pick<MigrationJson, 'id' | 'vm' | 'source' | 'destination' | 'mode' | 'state' | 'phase'>): Record<string, string> {
  return { migration: job.id, vm: job.vm, source: job.source, destination: job.destination, mode: job.mode, state: job.state, phase: job.phase };
}

/** A child of `log` for one migration (its current state and phase included). */
export function migrationLog(log: Log, job: Parameters<typeof migrationFields>[0]): Log {
  return log.child(migrationFields(job));
}
