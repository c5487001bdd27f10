/**
 * finish: the destination's verdict. Success: the incoming stream has completed, the guest runs here (cont
 * when QEMU holds it paused — copied storage keeps it paused until the source's mirrors finished), the NBD
 * exports close, `announce-self` tells the switches where the guest's MACs live now, and the VM is an
 * ordinary VM of this host. Failure: the destination QEMU is killed and its disks and run dir removed.
 * Idempotent both ways: the controller calls it again after a crash and gets the same answer.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../common/errors.ts';
import { LocalVm } from '../agent/vm.ts';
import { startColdDestination } from './cold.ts';
import { loadRecord, saveRecord, type MigrationRecord } from './record.ts';
import { stopExports } from './storage.ts';
import { TLS_OBJECT_ID } from './tls.ts';
import type { AgentMigrationView } from './types.ts';

export interface OutcomeOptions {
  id: string;
  agentDir: string;
  success: boolean;
  /** The agent's handle of the VM, when it holds one (QMP serves one client); else finish attaches. */
  vm?: LocalVm;
  /** How long to wait for the incoming stream to complete (post-copy may take a while). */
  timeoutMs?: number;
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

async function settle(rec: MigrationRecord, agentDir: string, stage: AgentMigrationView['stage']): Promise<AgentMigrationView> {
  rec.view.stage = stage;
  rec.view.updatedAt = new Date().toISOString();
  rec.view.finishedAt = rec.view.updatedAt;
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
  if (stage !== 'prepared') {
    throw new FerryError('FERRY_E_VM_STATE', `Migration ${o.id} is ${stage} here; finish(${o.success}) cannot change that.`);
  }
  const vm = await attachOrNull(o.agentDir, rec.view.vm, o.vm);
  if (!o.success) {
    await discardDestination(vm, rec.runDir);
    rec.runDir = null;
    rec.view.runState = null;
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
    if (mig.status === 'failed' || mig.status === 'cancelled') {
      throw new FerryError('FERRY_E_MIGRATION_FAILED', `The incoming migration ${mig.status}${mig['error-desc'] ? `: ${mig['error-desc']}` : ''}.`);
    }
    if (Date.now() > deadline) {
      throw new FerryError('FERRY_E_MIGRATION_TIMEOUT', `The incoming migration is still ${mig.status ?? 'none'}: not complete.`);
    }
    await sleep(100);
  }
  let st = await qmp.execute('query-status');
  if (!st.running) {
    if (st.status === 'inmigrate' || st.status === 'finish-migrate') {
      // Loading the last device state: wait for QEMU to leave it.
      while ((st.status === 'inmigrate' || st.status === 'finish-migrate') && Date.now() < deadline) {
        await sleep(50);
        st = await qmp.execute('query-status');
      }
    }
    if (!st.running) {
      await qmp.execute('cont');
      st = await qmp.execute('query-status');
    }
  }
  rec.view.runState = st.status;
  await stopExports(qmp);
  await qmp.execute('announce-self', { initial: 50, max: 550, rounds: 5, step: 100 }).catch(() => undefined);
  // The parameters still name the credentials; clear them first, or a later save or migration fails.
  await qmp.execute('migrate-set-parameters', { 'tls-creds': '' }).catch(() => undefined);
  await qmp.execute('object-del', { id: TLS_OBJECT_ID.server }).catch(() => undefined);
  await rm(join(vm.runDir, 'migration-tls'), { recursive: true, force: true });
  if (vm.spec.guestChannel) {
    // The boot id the guest brought along; best effort and bounded: a guest without ferry-guest, or one
    // slow to answer, is still migrated, and the migration never waits on it for long.
    await vm.refreshBootId({ timeoutMs: FINISH_BOOT_ID_TIMEOUT_MS }).catch(() => undefined);
  }
  return settle(rec, o.agentDir, 'finished');
}
