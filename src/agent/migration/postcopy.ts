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
 *   C->>D: recover (migrate-pause if still active, wait postcopy-paused, migrate-recover tcp:ADDR:0) → uri
 *   C->>S: postcopy-resume {uri} (migrate resume=true)
 *   S-->>D: the remaining pages; the migration completes as usual
 * ```
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../../common/errors.ts';
import type { QmpClient } from '../../qemu/qmp.ts';
import type { LocalVm } from '../vm.ts';
import { requireRecord } from './finish.ts';
import { incomingPort, tcpUri, validateListenAddress } from './prepare.ts';
import { saveRecord } from './record.ts';

/** How long the destination waits for its QEMU to notice the pause and reach `postcopy-paused`. */
const PAUSED_WITHIN_MS = 10_000;

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

/** Makes the destination listen again for a paused post-copy; returns the URI the source resumes to. */
export async function recoverIncoming(o: { id: string; agentDir: string; vm: LocalVm | undefined; listenAddress: string }): Promise<{ uri: string }> {
  const rec = await requireRecord(o.agentDir, o.id, 'destination');
  if (o.vm === undefined || o.vm.pid === null) {
    throw new FerryError('FERRY_E_POSTCOPY_LOST', `The destination QEMU of VM ${rec.view.vm} is gone during post-copy: the guest is lost.`);
  }
  const qmp = o.vm.qmp;
  const host = validateListenAddress(o.listenAddress);
  const status = (await qmp.execute('query-migrate')).status ?? 'none';
  if (status === 'postcopy-recover-setup' || status === 'postcopy-recover') {
    // A recovery is under way already (a retried call): answer with its address.
    return { uri: tcpUri(host, await incomingPort(qmp)) };
  }
  if (status === 'completed') throw new FerryError('FERRY_E_VM_STATE', `Migration ${o.id} completed here: nothing to recover.`);
  if (status === 'postcopy-active') await qmp.execute('migrate-pause');
  else if (status !== 'postcopy-paused') {
    throw new FerryError('FERRY_E_VM_STATE', `The incoming migration is ${status}: only a paused post-copy can be recovered.`);
  }
  await waitStatus(qmp, (s) => s === 'postcopy-paused', PAUSED_WITHIN_MS);
  await qmp.execute('migrate-recover', { uri: tcpUri(host, 0) });
  const uri = tcpUri(host, await incomingPort(qmp));
  rec.view.uri = uri;
  rec.view.updatedAt = new Date().toISOString();
  await saveRecord(o.agentDir, rec);
  return { uri };
}
