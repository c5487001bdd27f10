/**
 * Storage copy for a live migration without shared storage: the destination exports its empty disks over
 * NBD (writable), the source mirrors each disk's qcow2 node into them while the guest runs, and RAM
 * migration starts only once every mirror is READY (in sync). At switch-over the source is paused, so
 * cancelling a ready mirror finishes it cleanly: the destination then holds an exact copy.
 *
 * The destination is told not to start the guest by itself after the RAM stream (`stop` while `inmigrate`
 * clears QEMU's autostart): the source's last mirrored writes land after the stream ends, and the guest
 * must not read its disk before they do. finish() resumes it.
 */
import { MigrationPorts } from './ports.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../../common/errors.ts';
import { formatNode } from '../../qemu/argv.ts';
import type { BlockJobInfo, QmpClient } from '../../qemu/qmp.ts';
import type { MirrorProgress } from '../../common/progress.ts';
import type { NbdTarget } from '../../common/agent-migration.ts';

export type { NbdTarget };

/** Where the source finds the destination's disk exports. */

export const nbdNode = (diskId: string): string => `nbd-${diskId}`;
export const mirrorJob = (diskId: string): string => `mirror-${diskId}`;


// ------------------------------------------------------------------------------------------ destination

/** Starts the NBD server on the migration address and exports each disk writable under its disk id. */
export async function exportDisks(
  qmp: QmpClient,
  opts: { host: string; diskIds: readonly string[]; tlsCredsId: string | null; tlsAuthzId?: string | null; ports?: MigrationPorts },
): Promise<NbdTarget> {
  // Safe to repeat: a retried prepare on the same QEMU starts over.
  await qmp.execute('nbd-server-stop').catch(() => undefined);
  // A small race with other programs between the probe and QEMU's bind is accepted.
  const port = await (opts.ports ?? new MigrationPorts(null)).take(opts.host);
  await qmp.execute('nbd-server-start', {
    addr: { type: 'inet', data: { host: opts.host, port: String(port) } },
    ...(opts.tlsCredsId === null ? {} : { 'tls-creds': opts.tlsCredsId }),
    // The disks take writes from the one source the controller chose, as the migration stream does (tls.ts).
    ...(opts.tlsCredsId === null || !opts.tlsAuthzId ? {} : { 'tls-authz': opts.tlsAuthzId }),
  });
  const exports: Record<string, string> = {};
  for (const id of opts.diskIds) {
    await qmp.execute('nbd-server-add', { device: formatNode(id), name: id, writable: true });
    exports[id] = id;
  }
  return { host: opts.host, port, exports };
}

export async function stopExports(qmp: QmpClient): Promise<void> {
  await qmp.execute('nbd-server-stop').catch(() => undefined);
}

// ------------------------------------------------------------------------------------------ source

export interface MirrorOptions {
  nbd: NbdTarget;
  tls: { credsId: string; hostname: string } | null;
  signal?: AbortSignal;
  /** Called with mirror progress about every `pollMs`. */
  onProgress?: (p: MirrorProgress) => void;
  pollMs?: number;
  /**
   * Disks that are overlays on a base the destination opens at the same path: only their top layer moves
   * (`sync: top`); the others are copied whole.
   */
  topOnly?: readonly string[];
}

export async function mirrorProgress(qmp: QmpClient, diskIds: readonly string[]): Promise<MirrorProgress & { jobs: BlockJobInfo[] }> {
  const jobs = (await qmp.execute('query-block-jobs')).filter((j) => diskIds.some((id) => j.device === mirrorJob(id)));
  return {
    doneBytes: jobs.reduce((a, j) => a + j.offset, 0),
    totalBytes: jobs.reduce((a, j) => a + j.len, 0),
    ready: jobs.length === diskIds.length && jobs.every((j) => j.ready),
    jobs,
  };
}

/**
 * Connects an NBD node per disk to the destination and mirrors into it; resolves when every mirror is
 * READY. `write-blocking` keeps a ready mirror in lock-step with guest writes, so nothing is left behind
 * at switch-over but what is in flight.
 */
export async function startMirrors(qmp: QmpClient, diskIds: readonly string[], o: MirrorOptions): Promise<void> {
  const pollMs = o.pollMs ?? 200;
  for (const id of diskIds) {
    const exportName = o.nbd.exports[id];
    if (exportName === undefined) throw new FerryError('FERRY_E_BAD_INPUT', `The destination exports no disk ${id}.`);
    await qmp.execute('blockdev-add', {
      driver: 'nbd',
      'node-name': nbdNode(id),
      server: { type: 'inet', host: o.nbd.host, port: String(o.nbd.port) },
      export: exportName,
      ...(o.tls === null ? {} : { 'tls-creds': o.tls.credsId, 'tls-hostname': o.tls.hostname }),
    });
    await qmp.execute('blockdev-mirror', {
      'job-id': mirrorJob(id),
      device: formatNode(id),
      target: nbdNode(id),
      sync: o.topOnly?.includes(id) === true ? 'top' : 'full',
      'copy-mode': 'write-blocking',
      // A failed write to the destination must end the job, not pause it silently.
      'on-target-error': 'report',
      'on-source-error': 'report',
    });
  }
  for (;;) {
    o.signal?.throwIfAborted();
    const p = await mirrorProgress(qmp, diskIds);
    o.onProgress?.(p);
    if (p.ready) return;
    if (p.jobs.length < diskIds.length) {
      const gone = diskIds.filter((id) => !p.jobs.some((j) => j.device === mirrorJob(id)));
      throw new FerryError('FERRY_E_DESTINATION_LOST', `Disk mirror ended before it was in sync (${gone.join(', ')}): the destination went away?`);
    }
    const failed = p.jobs.find((j) => j.error !== undefined || j['io-status'] !== 'ok');
    if (failed !== undefined) {
      throw new FerryError('FERRY_E_DESTINATION_LOST', `Disk mirror ${failed.device} failed: ${failed.error ?? failed['io-status']}.`);
    }
    await sleep(pollMs, undefined, o.signal === undefined ? {} : { signal: o.signal }).catch(() => undefined);
  }
}

async function endJobs(qmp: QmpClient, diskIds: readonly string[], force: boolean, timeoutMs: number): Promise<string[]> {
  const errors: string[] = [];
  for (const id of diskIds) {
    await qmp.execute('block-job-cancel', { device: mirrorJob(id), force }).catch(() => undefined);
  }
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = (await qmp.execute('query-block-jobs')).filter((j) => diskIds.some((id) => j.device === mirrorJob(id)));
    if (left.length === 0) break;
    for (const j of left) if (j.error !== undefined) errors.push(`${j.device}: ${j.error}`);
    if (Date.now() > deadline) {
      errors.push(`mirrors still running after ${timeoutMs} ms: ${left.map((j) => j.device).join(', ')}`);
      break;
    }
    await sleep(50);
  }
  for (const id of diskIds) await qmp.execute('blockdev-del', { 'node-name': nbdNode(id) }).catch(() => undefined);
  return errors;
}

/**
 * After the RAM stream completed (source paused): cancel the ready mirrors — for a ready mirror that is a
 * clean finish that flushes the last writes — and drop the NBD nodes.
 */
export async function completeMirrors(qmp: QmpClient, diskIds: readonly string[], timeoutMs = 60_000): Promise<void> {
  const errors = await endJobs(qmp, diskIds, false, timeoutMs);
  if (errors.length > 0) {
    throw new FerryError('FERRY_E_DESTINATION_LOST', `The last disk writes did not reach the destination: ${errors.join('; ')}`);
  }
}

/** Abandons the mirrors (cancel, failure): the source's disks are untouched, the copies are thrown away. */
export async function abortMirrors(qmp: QmpClient, diskIds: readonly string[]): Promise<void> {
  await endJobs(qmp, diskIds, true, 10_000);
}
