/**
 * finish: the destination's verdict. The destination QEMU was started paused (`-S`), so the guest runs
 * here only when finish says so. Success: the incoming stream has completed, `cont`, the NBD exports close,
 * `announce-self` tells the switches where the guest's MACs live now, and the VM is an ordinary VM of this
 * host. Success during post-copy: `cont` at once (the guest runs here while its pages arrive; stage
 * `postcopy`), the rest once the stream completed. Failure: the destination QEMU is killed, its disks and
 * run dir removed, and a signed discard receipt is returned — the only thing that lets a source whose QEMU
 * completed resume its own copy (receipt.ts). A failure is refused once the guest ran here (finished or in
 * post-copy): this copy is then the truth. Idempotent both ways: a repeated call gets the same answer.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../../common/errors.ts';
import { LocalVm } from '../vm.ts';
import { startColdDestination } from './cold.ts';
import { signReceipt } from './receipt.ts';
import { loadRecord, saveRecord, type MigrationRecord } from './record.ts';
import { stopExports } from './storage.ts';
import { TLS_OBJECT_ID, type TlsIdentity } from './tls.ts';
import type { AgentMigrationView } from '../../common/agent-migration.ts';

export interface OutcomeOptions {
  id: string;
  agentDir: string;
  success: boolean;
  /** The agent's handle of the VM, when it holds one (QMP serves one client); else finish attaches. */
  vm?: LocalVm;
  /** How long to wait for the incoming stream to complete (post-copy may take a while). */
  timeoutMs?: number;
  /** Destination: the identity that signs discard receipts; source: the one that checks them. */
  identity?: TlsIdentity | null;
  /** This host's name (what a receipt says; its certificate's CN when it has one). */
  hostName?: string;
  /** confirm(false): the destination's discard receipt. */
  receipt?: unknown;
}

/** How long finish asks the guest for its boot id before it settles without it. */
export const FINISH_BOOT_ID_TIMEOUT_MS = 3000;

export async function requireRecord(agentDir: string, id: string, role: 'source' | 'destination'): Promise<MigrationRecord> {
  const rec = await loadRecord(agentDir, id);
  if (rec === undefined || rec.view.role !== role) {
    throw new FerryError('FERRY_E_MIGRATION_NOT_FOUND', `This agent is not the ${role} of migration ${id}.`);
  }
  return rec;
}

async function attachOrNull(agentDir: string, name: string, given?: LocalVm): Promise<LocalVm | null> {
  if (given !== undefined) return given;
  return LocalVm.attach(agentDir, name).catch(() => null);
}

async function settle(rec: MigrationRecord, agentDir: string, stage: AgentMigrationView['stage'], final = true): Promise<AgentMigrationView> {
  rec.view.stage = stage;
  rec.view.updatedAt = new Date().toISOString();
  if (final) rec.view.finishedAt = rec.view.updatedAt;
  await saveRecord(agentDir, rec);
  return structuredClone(rec.view);
}

/** Kills the destination QEMU and removes everything it had here (its disks live in the run dir). */
export async function discardDestination(vm: LocalVm | null, runDir: string | null): Promise<void> {
  if (vm !== null) await vm.stop({ force: true }).catch(() => undefined);
  if (runDir !== null) await rm(runDir, { recursive: true, force: true });
}

export async function finish(o: OutcomeOptions): Promise<AgentMigrationView> {
  const rec = await requireRecord(o.agentDir, o.id, 'destination');
  const stage = rec.view.stage;
  if (o.success && stage === 'finished') return structuredClone(rec.view);
  if (!o.success && stage === 'discarded') return structuredClone(rec.view);
  if (!o.success && stage !== 'prepared') {
    throw new FerryError('FERRY_E_VM_STATE', `Migration ${o.id} is ${stage} here: the guest ran on this host, its copy is the truth and is not discarded.`);
  }
  if (stage !== 'prepared' && stage !== 'postcopy') {
    throw new FerryError('FERRY_E_VM_STATE', `Migration ${o.id} is ${stage} here; finish(${o.success}) cannot change that.`);
  }
  const vm = await attachOrNull(o.agentDir, rec.view.vm, o.vm);
  if (!o.success) {
    // A QEMU that runs the guest (someone sent `cont`, or post-copy began) must not be killed on a "failed".
    if (vm !== null && vm.pid !== null && rec.cold === undefined) {
      const [st, mig] = await Promise.all([vm.qmp.execute('query-status'), vm.qmp.execute('query-migrate')]);
      if (st.running || (mig.status ?? '').startsWith('postcopy')) {
        throw new FerryError('FERRY_E_VM_STATE', `VM ${rec.view.vm} runs here (${st.status}, migration ${mig.status ?? 'none'}): this copy is the truth and is not discarded.`);
      }
    }
    await discardDestination(vm, rec.runDir);
    rec.runDir = null;
    rec.view.runState = null;
    rec.view.receipt = signReceipt(o.identity ?? null, o.id, rec.view.vm, o.hostName ?? '');
    return settle(rec, o.agentDir, 'discarded');
  }
  if (rec.cold !== undefined) {
    if (vm === null) throw new FerryError('FERRY_E_VM_NOT_FOUND', `The destination VM ${rec.view.vm} is gone.`);
    await startColdDestination(vm, rec);
    rec.view.runState = (await vm.status()).qemuStatus;
    return settle(rec, o.agentDir, 'finished');
  }
  if (vm === null || vm.pid === null) {
    throw new FerryError('FERRY_E_DESTINATION_LOST', `The destination QEMU of VM ${rec.view.vm} is gone.`);
  }
  const qmp = vm.qmp;
  const deadline = Date.now() + (o.timeoutMs ?? 30_000);
  for (;;) {
    const mig = await qmp.execute('query-migrate');
    rec.view.qemuStatus = mig.status ?? null;
    if (mig.status === 'completed') break;
    if ((mig.status ?? '').startsWith('postcopy') && rec.view.stage !== 'postcopy') {
      // Post-copy: the guest must run here now, its missing pages are pulled from the source on demand.
      // A later finish (the source completed) waits below until the last page arrived.
      await runGuest(qmp, deadline);
      rec.view.postcopyStarted = true;
      rec.view.runState = (await qmp.execute('query-status')).status;
      await qmp.execute('announce-self', ANNOUNCE).catch(() => undefined);
      return settle(rec, o.agentDir, 'postcopy', false);
    }
    if (mig.status === 'failed' || mig.status === 'cancelled') {
      throw new FerryError('FERRY_E_MIGRATION_FAILED', `The incoming migration ${mig.status}${mig['error-desc'] ? `: ${mig['error-desc']}` : ''}.`);
    }
    if (Date.now() > deadline) {
      throw new FerryError('FERRY_E_MIGRATION_TIMEOUT', `The incoming migration is still ${mig.status ?? 'none'}: not complete.`);
    }
    // The destination completes a little after the source (it still loads the device state) and the guest
    // is paused on both meanwhile: look again soon, a 100 ms nap here was 100 ms more of the guest's gap.
    await sleep(10);
  }
  const st = await runGuest(qmp, deadline);
  rec.view.runState = st.status;
  await stopExports(qmp);
  if (rec.view.stage !== 'postcopy') await qmp.execute('announce-self', ANNOUNCE).catch(() => undefined);
  // The parameters still name the credentials; clear them first, or a later save or migration fails.
  await qmp.execute('migrate-set-parameters', { 'tls-creds': '' }).catch(() => undefined);
  await qmp.execute('object-del', { id: TLS_OBJECT_ID.server }).catch(() => undefined);
  await rm(join(vm.runDir, 'migration-tls'), { recursive: true, force: true });
  if (vm.spec.guestChannel || vm.spec.guestAgent === true) {
    // The boot id the guest brought along; best effort and bounded: a guest without ferry-guest, or one
    // slow to answer, is still migrated. Asked in the background (~90 ms of a guest just resumed under
    // TCG), while the controller lets the source go; the VM's status waits for the answer.
    vm.refreshBootIdSoon({ timeoutMs: FINISH_BOOT_ID_TIMEOUT_MS });
  }
  return settle(rec, o.agentDir, 'finished');
}

const ANNOUNCE = { initial: 50, max: 550, rounds: 5, step: 100 };

/** Lets the paused (-S) destination guest run, once QEMU left the states in which it loads device state. */
async function runGuest(qmp: LocalVm['qmp'], deadline: number): Promise<{ running: boolean; status: string }> {
  let st = await qmp.execute('query-status');
  while ((st.status === 'inmigrate' || st.status === 'finish-migrate') && Date.now() < deadline) {
    await sleep(20);
    st = await qmp.execute('query-status');
  }
  if (!st.running) {
    await qmp.execute('cont');
    st = await qmp.execute('query-status');
  }
  return st;
}
