/**
 * Cold migration: the guest does not run while it moves. The source either stops it (ACPI power-down with a
 * timeout, then quit) or pauses it and saves its whole state to a file (`migrate file:…`, QEMU 10), then
 * offers its files (local disks, saved state) each with a sha256; the controller streams them to the
 * destination, which recomputes the sha256 while writing and refuses a mismatch. The destination starts
 * the VM from the same spec (or resumes the saved state: same boot, same memory) and verifies it runs;
 * the source copy is removed only after that (confirm).
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../../common/errors.ts';
import { parseVmSpec, type VmSpec } from '../../common/spec.ts';
import { basePathOf, rebaseOverlay } from '../images.ts';
import { LocalVm } from '../vm.ts';
import type { Accel } from '../../qemu/argv.ts';
import type { QmpClient } from '../../qemu/qmp.ts';
import { capabilityList, negotiateCapabilities, NO_CAPABILITIES, UNLIMITED_BANDWIDTH } from './capabilities.ts';
import { emptyView } from '../../common/agent-migration.ts';
import { loadRecord, saveRecord, type MigrationRecord } from './record.ts';
import type { AgentMigrationView, ColdFile, ColdManifest, ColdMode } from '../../common/agent-migration.ts';

export type { ColdFile, ColdManifest, ColdMode } from '../../common/agent-migration.ts';
/** The saved device and memory state travels as one more file. */
export const STATE_FILE = 'state';
export const SHA256_HEADER = 'x-ferry-sha256';

export async function sha256File(path: string): Promise<{ sha256: string; bytes: number }> {
  const h = createHash('sha256');
  let bytes = 0;
  for await (const chunk of createReadStream(path)) {
    h.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { sha256: h.digest('hex'), bytes };
}

const localPath = (runDir: string, name: string): string => join(runDir, name === STATE_FILE ? 'state.mig' : `${name}.qcow2`);

function fileName(spec: VmSpec, name: unknown): string {
  if (name === STATE_FILE) return name;
  const d = spec.disks.find((x) => x.id === name);
  if (d === undefined || d.shared) {
    throw new FerryError('FERRY_E_NOT_FOUND', `No local disk ${JSON.stringify(name)} to move (shared disks are not copied).`);
  }
  return d.id;
}

async function waitMigration(qmp: QmpClient, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = await qmp.execute('query-migrate');
    if (m.status === 'completed') return;
    if (m.status === 'failed' || m.status === 'cancelled') {
      throw new FerryError('FERRY_E_MIGRATION_FAILED', `Saving or loading the VM state ${m.status}: ${m['error-desc'] ?? 'no reason given'}.`);
    }
    if (Date.now() > deadline) throw new FerryError('FERRY_E_MIGRATION_TIMEOUT', `VM state transfer not done within ${timeoutMs} ms.`);
    await sleep(50);
  }
}

// ------------------------------------------------------------------------------------------ source

/**
 * Stops (or pauses and saves) the VM and lists its files with checksums. The run dir and the files stay
 * until confirm: a failed move resumes the VM here.
 */
export async function performCold(o: { id: string; agentDir: string; vm: LocalVm; mode: ColdMode; timeoutMs?: number }): Promise<ColdManifest> {
  const { vm } = o;
  const earlier = await loadRecord(o.agentDir, o.id);
  if (earlier?.cold !== undefined) return earlier.cold.manifest;
  const view = emptyView({ id: o.id, role: 'source', vm: vm.name, stage: 'transferring', storage: 'copy', tls: false, uri: null });
  const st = await vm.status();
  const rec: MigrationRecord = { version: 1, view, runDir: vm.runDir, wasRunning: st.state === 'running' };
  if (st.pid !== null) {
    if (o.mode === 'save') {
      const qmp = vm.qmp;
      await qmp.execute('stop');
      // A file needs no TLS and no cap: whatever an earlier live migration left set would only hinder.
      await qmp.execute('migrate-set-parameters', { 'tls-creds': '', 'tls-hostname': '', 'max-bandwidth': UNLIMITED_BANDWIDTH });
      // Nor the stream's capabilities: a QEMU that arrived over multifd still has it set, and QEMU refuses
      // `migrate file:` then ("Migration requires multi-channel URIs").
      const supported = (await qmp.execute('query-migrate-capabilities')).map((c) => c.capability);
      await qmp.execute('migrate-set-capabilities', { capabilities: negotiateCapabilities(capabilityList(NO_CAPABILITIES, 'destination'), supported) });
      const uri = `file:${localPath(vm.runDir, STATE_FILE)}`;
      await qmp.execute('migrate', { uri });
      await waitMigration(qmp, o.timeoutMs ?? 120_000);
      view.downtimeMs = (await qmp.execute('query-migrate')).downtime ?? null;
      await vm.stop({ force: true });
    } else {
      await vm.stop({ timeoutMs: o.timeoutMs ?? 30_000 });
    }
  } else if (o.mode === 'save') {
    throw new FerryError('FERRY_E_VM_STATE', `VM ${vm.name} is stopped: there is no state to save (use mode shutdown).`);
  }
  const files: ColdFile[] = [];
  for (const d of vm.spec.disks.filter((x) => !x.shared)) {
    files.push({ name: d.id, ...(await sha256File(d.path ?? localPath(vm.runDir, d.id))) });
  }
  if (o.mode === 'save') files.push({ name: STATE_FILE, ...(await sha256File(localPath(vm.runDir, STATE_FILE))) });
  const manifest: ColdManifest = { id: o.id, vm: vm.name, mode: o.mode, files };
  rec.cold = { manifest };
  view.stage = 'completed';
  view.runState = null;
  await saveRecord(o.agentDir, rec);
  return manifest;
}

/** A file of the manifest, to stream out (with its checksum for the header). */
export async function openColdFile(agentDir: string, id: string, name: string): Promise<{ stream: Readable; file: ColdFile }> {
  const rec = await loadRecord(agentDir, id);
  const file = rec?.cold?.manifest.files.find((f) => f.name === name);
  if (rec === undefined || rec.view.role !== 'source' || rec.runDir === null || file === undefined) {
    throw new FerryError('FERRY_E_NOT_FOUND', `Migration ${id} offers no file ${JSON.stringify(name)} here.`);
  }
  const spec = parseVmSpec((await LocalVm.attach(agentDir, rec.view.vm)).spec);
  const disk = spec.disks.find((d) => d.id === name);
  return { stream: createReadStream(disk?.path ?? localPath(rec.runDir, name)), file };
}

/** Failure: boot the VM again here (or restore its saved state: the same boot). */
export async function resumeColdSource(vm: LocalVm, rec: MigrationRecord): Promise<void> {
  if (vm.pid !== null) return;
  if (rec.cold?.manifest.mode === 'save') {
    await vm.start({ incoming: 'defer' });
    await vm.qmp.execute('migrate-incoming', { uri: `file:${localPath(vm.runDir, STATE_FILE)}` });
    await waitMigration(vm.qmp, 120_000);
    if (rec.wasRunning !== false) await vm.qmp.execute('cont');
    await rm(localPath(vm.runDir, STATE_FILE), { force: true });
  } else if (rec.wasRunning !== false) {
    await vm.start();
  }
}

// ------------------------------------------------------------------------------------------ destination

/**
 * Lays the VM out here without running it: LocalVm creates the run dir and empty disks (QEMU started
 * waiting for a stream that never comes, then stopped), so the received files can take their place.
 */
export async function prepareCold(o: {
  id: string;
  agentDir: string;
  accel: Accel;
  spec: VmSpec;
  taps?: Record<string, string>;
  /** Start the VM once its files are here (default true; false for a VM that was stopped). */
  start?: boolean;
}): Promise<{ vm: LocalVm; view: AgentMigrationView }> {
  const spec = parseVmSpec(o.spec);
  const earlier = await loadRecord(o.agentDir, o.id);
  if (earlier !== undefined) {
    if (earlier.view.role === 'destination' && earlier.view.stage === 'prepared') {
      return { vm: await LocalVm.attach(o.agentDir, spec.name), view: earlier.view };
    }
    throw new FerryError('FERRY_E_MIGRATION_ACTIVE', `Migration ${o.id} was prepared here already (stage ${earlier.view.stage}).`);
  }
  const vm = await LocalVm.create(o.agentDir, spec, { accel: o.accel, incoming: 'defer', ...(o.taps ? { taps: o.taps } : {}) });
  await vm.stop({ force: true });
  const view = emptyView({ id: o.id, role: 'destination', vm: spec.name, stage: 'prepared', storage: 'copy', tls: false, uri: null });
  await saveRecord(o.agentDir, { version: 1, view, runDir: vm.runDir, cold: { manifest: { id: o.id, vm: spec.name, mode: 'shutdown', files: [] }, start: o.start !== false } });
  return { vm, view };
}

/**
 * Writes one incoming file next to its final place, hashing as it goes; only a matching sha256 replaces
 * the empty disk. Returns what was written.
 */
export async function receiveColdFile(o: {
  agentDir: string;
  id: string;
  name: string;
  sha256: string;
  body: Readable;
}): Promise<ColdFile> {
  const rec = await loadRecord(o.agentDir, o.id);
  if (rec === undefined || rec.view.role !== 'destination' || rec.view.stage !== 'prepared' || rec.runDir === null || rec.cold === undefined) {
    throw new FerryError('FERRY_E_VM_STATE', `Migration ${o.id} is not waiting for files here.`);
  }
  if (!/^[0-9a-f]{64}$/.test(o.sha256)) throw new FerryError('FERRY_E_BAD_INPUT', `${SHA256_HEADER} must be 64 hex digits.`);
  const vm = await LocalVm.attach(o.agentDir, rec.view.vm);
  const name = fileName(vm.spec, o.name);
  const final = localPath(rec.runDir, name);
  const tmp = `${final}.incoming`;
  const h = createHash('sha256');
  let bytes = 0;
  try {
    await pipeline(
      o.body,
      async function* (src: AsyncIterable<Buffer>) {
        for await (const chunk of src) {
          h.update(chunk);
          bytes += chunk.length;
          yield chunk;
        }
      },
      createWriteStream(tmp, { mode: 0o600 }),
    );
    const got = h.digest('hex');
    if (got !== o.sha256) {
      throw new FerryError('FERRY_E_VERIFY_FAILED', `File ${name}: sha256 ${got} received, ${o.sha256} sent; nothing was replaced.`, {
        details: { name, expected: o.sha256, got, bytes },
      });
    }
    // The overlay's header names the source host's copy of its base: point it at this host's own.
    const disk = vm.spec.disks.find((d) => d.id === name);
    if (disk?.backing !== undefined && 'sha256' in disk.backing) {
      await rebaseOverlay(tmp, basePathOf(o.agentDir, disk) as string, disk.backing.format);
    }
    await rename(tmp, final);
  } finally {
    await rm(tmp, { force: true });
  }
  const file: ColdFile = { name, bytes, sha256: o.sha256 };
  rec.cold.manifest.files = [...rec.cold.manifest.files.filter((f) => f.name !== name), file];
  if (name === STATE_FILE) rec.cold.manifest.mode = 'save';
  rec.view.updatedAt = new Date().toISOString();
  await saveRecord(o.agentDir, rec);
  return file;
}

/** Success: start from the received files (resume the saved state, or boot) and check the guest runs. */
export async function startColdDestination(vm: LocalVm, rec: MigrationRecord): Promise<void> {
  if (vm.pid !== null) return;
  const state = localPath(vm.runDir, STATE_FILE);
  const saved = rec.cold?.manifest.mode === 'save' && (await stat(state).then(() => true, () => false));
  if (saved) {
    await vm.start({ incoming: 'defer' });
    await vm.qmp.execute('migrate-incoming', { uri: `file:${state}` });
    await waitMigration(vm.qmp, 120_000);
    await vm.qmp.execute('cont');
    if (vm.spec.guestChannel || vm.spec.guestAgent === true) await vm.refreshBootId().catch(() => undefined);
    await rm(state, { force: true });
  } else if (rec.cold?.start === false) {
    // A stopped VM stays stopped: its files arrived with matching checksums, which is the verification.
    return;
  } else {
    await vm.start();
  }
  const st = await vm.status();
  if (st.state !== 'running') throw new FerryError('FERRY_E_VERIFY_FAILED', `VM ${vm.name} is ${st.qemuStatus ?? 'stopped'} after the move, not running.`);
}
