/**
 * confirm: the source's verdict, last of the five phases. Success (the destination runs the guest): quit
 * the source QEMU and remove its run dir and local disks — never while the guest runs here. Failure: the
 * source resumes the guest if the migration left it paused — but once its QEMU reported `completed` the
 * destination may hold the only complete guest, so then only against the destination's signed discard
 * receipt (receipt.ts), checked here. After post-copy began the source's memory is incomplete: it never
 * resumes. Idempotent both ways.
 */
import { rm } from 'node:fs/promises';
import { FerryError } from '../../common/errors.ts';
import { LocalVm } from '../vm.ts';
import { resumeColdSource } from './cold.ts';
import { checkReceipt } from './receipt.ts';
import { saveRecord } from './record.ts';
import { requireRecord, type OutcomeOptions } from './finish.ts';
import type { AgentMigrationView } from '../../common/agent-migration.ts';

export async function confirm(o: OutcomeOptions): Promise<AgentMigrationView> {
  const rec = await requireRecord(o.agentDir, o.id, 'source');
  const v = rec.view;
  if (o.success && v.stage === 'confirmed') return structuredClone(v);
  if (!o.success && v.stage === 'resumed') return structuredClone(v);
  const vm: LocalVm | null = o.vm ?? (await LocalVm.attach(o.agentDir, v.vm).catch(() => null));
  const settle = async (stage: 'confirmed' | 'resumed'): Promise<AgentMigrationView> => {
    v.stage = stage;
    v.updatedAt = new Date().toISOString();
    v.finishedAt = v.updatedAt;
    await saveRecord(o.agentDir, rec);
    return structuredClone(v);
  };

  if (rec.cold !== undefined && !o.success) {
    if (vm === null) throw new FerryError('FERRY_E_SOURCE_LOST', `The source VM ${v.vm} is gone: nothing to resume.`);
    await resumeColdSource(vm, rec);
    v.runState = (await vm.status()).qemuStatus;
    return settle('resumed');
  }
  if (o.success) {
    if (v.stage !== 'completed') {
      throw new FerryError('FERRY_E_VM_STATE', `Migration ${o.id} is ${v.stage} here, not completed: the source stays.`);
    }
    if (vm !== null && vm.pid !== null) {
      const st = await vm.qmp.execute('query-status');
      if (st.running) {
        // The guest runs here: removing it would lose it. Something resumed it after the switch-over.
        throw new FerryError('FERRY_E_VM_STATE', `VM ${v.vm} is running on the source (${st.status}); it is not removed.`);
      }
      await vm.stop({ force: true });
    }
    const runDir = rec.runDir ?? vm?.runDir ?? null;
    if (runDir !== null) await rm(runDir, { recursive: true, force: true });
    rec.runDir = null;
    v.runState = null;
    return settle('confirmed');
  }

  if (v.stage === 'confirmed') {
    throw new FerryError('FERRY_E_VM_STATE', `Migration ${o.id} was confirmed: the source copy is gone.`);
  }
  if (vm === null || vm.pid === null) {
    throw new FerryError('FERRY_E_SOURCE_LOST', `The source QEMU of VM ${v.vm} is gone: nothing to resume.`);
  }
  let st = await vm.qmp.execute('query-status');
  const mig = await vm.qmp.execute('query-migrate');
  if (v.postcopyStarted || (mig.status ?? '').startsWith('postcopy')) {
    throw new FerryError('FERRY_E_POSTCOPY_LOST', `Post-copy started: the source's memory of VM ${v.vm} is incomplete and it cannot resume here.`);
  }
  if (!st.running && (v.stage === 'completed' || (rec.performed !== undefined && mig.status === 'completed'))) {
    checkReceipt(o.identity ?? null, o.receipt ?? null, { migration: o.id, vm: v.vm, destination: rec.performed?.destination ?? null });
  }
  if (!st.running && (rec.wasRunning ?? true)) {
    await vm.qmp.execute('cont');
    st = await vm.qmp.execute('query-status');
  }
  v.runState = st.status;
  return settle('resumed');
}
