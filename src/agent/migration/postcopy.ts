/**
 * Post-copy recovery, destination half. Once post-copy began the guest's memory is split: the destination
 * runs it, the source still holds the pages not pulled yet. A broken stream (a cut link) freezes the guest
 * on both sides; cancelling would lose it. QEMU can reconnect instead: both sides go to `postcopy-paused`
 * (`migrate-pause`, or by themselves when the socket errors), the destination listens again with
 * `migrate-recover`, and the source resumes with `migrate {resume: true}` to that address.
 *
 * ```mermaid
 * sequenceDiagram
 *   participant C as controller
 *   participant S as source agent
 *   participant D as destination agent
 *   C->>S: postcopy-pause (migrate-pause) — the hung stream is broken on purpose
 *   C->>D: recover (migrate-pause if active or stuck recovering, wait postcopy-paused, migrate-recover tcp:ADDR:0) → uri
 *   C->>S: postcopy-resume {uri} (migrate resume=true)
 *   S-->>D: the remaining pages; the migration completes as usual
 * ```
 */
import { MigrationPorts } from './ports.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../../common/errors.ts';
import type { QmpClient } from '../../qemu/qmp.ts';
import type { LocalVm } from '../vm.ts';
import { requireRecord } from './finish.ts';
import { incomingPort, listenIncoming, tcpUri, validateListenAddress } from './prepare.ts';
import { saveRecord } from './record.ts';

/** How long the destination waits for its QEMU to notice the pause and reach `postcopy-paused`. */
const PAUSED_WITHIN_MS = 10_000;
/** How long an in-band look may take before QEMU's main thread counts as blocked (out of band then). */
const IN_BAND_LOOK_MS = 3_000;
/** Out-of-band commands answer at once or not at all. */
const OOB_TIMEOUT_MS = 5_000;

async function waitStatus(qmp: QmpClient, want: (s: string) => boolean, ms: number): Promise<string> {
  const deadline = Date.now() + ms;
  for (;;) {
    const s = (await qmp.execute('query-migrate')).status ?? 'none';
    if (want(s)) return s;
    if (Date.now() > deadline) {
      throw new FerryError('FERRY_E_MIGRATION_FAILED', `The incoming post-copy is ${s}, not paused: it cannot be recovered now.`);
    }
    await sleep(50);
  }
}

/** The recovery address this agent last listened on, per migration (a retry while QEMU cannot be asked). */
const lastRecovery = new Map<string, string>();

/**
 * Makes the destination listen again for a paused post-copy; returns the URI the source resumes to.
 * QEMU's main thread may be blocked for good on the destination — a device or the guest waiting for a
 * page that was never pulled — so that no in-band command answers. `migrate-pause` and `migrate-recover`
 * are out-of-band commands for that reason: with `oob` negotiated (destination QEMUs, process.ts) they
 * are sent out of band, on a port chosen here (QEMU cannot be asked which port it picked).
 */
export async function recoverIncoming(o: { id: string; agentDir: string; vm: LocalVm | undefined; listenAddress: string; ports?: MigrationPorts }): Promise<{ uri: string }> {
  const rec = await requireRecord(o.agentDir, o.id, 'destination');
  if (o.vm === undefined || o.vm.pid === null) {
    throw new FerryError('FERRY_E_POSTCOPY_LOST', `The destination QEMU of VM ${rec.view.vm} is gone during post-copy: the guest is lost.`);
  }
  const qmp = o.vm.qmp;
  const host = validateListenAddress(o.listenAddress);
  // null: QEMU does not answer in band (its main thread is blocked).
  const status = await qmp.execute('query-migrate', undefined, { timeoutMs: qmp.oobEnabled ? IN_BAND_LOOK_MS : 30_000 }).then(
    (m) => m.status ?? 'none',
    (err: unknown) => {
      if (!qmp.oobEnabled) throw err;
      return null;
    },
  );
  if (status === 'postcopy-recover-setup') {
    // Listening already, nobody connected yet (a retried call): answer with its address.
    return { uri: tcpUri(host, await incomingPort(qmp)) };
  }
  if (status === 'completed') throw new FerryError('FERRY_E_VM_STATE', `Migration ${o.id} completed here: nothing to recover.`);
  if (status !== null && !['postcopy-active', 'postcopy-recover', 'postcopy-paused'].includes(status)) {
    throw new FerryError('FERRY_E_VM_STATE', `The incoming migration is ${status}: only a paused post-copy can be recovered.`);
  }
  let uri: string;
  if (qmp.oobEnabled) {
    uri = await recoverOutOfBand(qmp, host, o.ports ?? new MigrationPorts(null), status, lastRecovery.get(o.id));
  } else {
    // `postcopy-recover`: a source connected, and the controller asks again because nothing moved since — a
    // handshake hung on a connection that died. Its listener is closed; break it and listen anew.
    if (status === 'postcopy-active' || status === 'postcopy-recover') await qmp.execute('migrate-pause');
    await waitStatus(qmp, (s) => s === 'postcopy-paused', PAUSED_WITHIN_MS);
    await listenIncoming(qmp, 'migrate-recover', host, o.ports);
    uri = tcpUri(host, await incomingPort(qmp));
  }
  lastRecovery.set(o.id, uri);
  rec.view.uri = uri;
  rec.view.updatedAt = new Date().toISOString();
  await saveRecord(o.agentDir, rec);
  return { uri };
}

/**
 * Out of band: pause what may still run (refused when QEMU paused by itself, which is as good), then
 * `migrate-recover` on a free port until QEMU, paused, accepts it. `status` null: unknown (in band is
 * blocked); if QEMU keeps refusing then, it is most likely listening already on `previous`.
 */
async function recoverOutOfBand(qmp: QmpClient, host: string, ports: MigrationPorts, status: string | null, previous: string | undefined): Promise<string> {
  const oob = { oob: true, timeoutMs: OOB_TIMEOUT_MS };
  if (status !== 'postcopy-paused') await qmp.execute('migrate-pause', undefined, oob).catch(() => undefined);
  const deadline = Date.now() + (status === null && previous !== undefined ? IN_BAND_LOOK_MS : PAUSED_WITHIN_MS);
  for (;;) {
    const port = await ports.take(host);
    const uri = tcpUri(host, port);
    try {
      await qmp.execute('migrate-recover', { uri }, oob);
      return uri;
    } catch (err) {
      ports.release(port);
      if (Date.now() > deadline) {
        if (status === null && previous !== undefined) return previous;
        throw new FerryError('FERRY_E_MIGRATION_FAILED', `The incoming post-copy could not listen again: ${(err as Error).message}`, { cause: err });
      }
      await sleep(100);
    }
  }
}
