/**
 * Cold migration as the controller drives it: the source stops the VM (or pauses it and saves its state
 * to a file, so the guest resumes with the same boot), each file — local disks and the saved state — is
 * streamed from the source agent to the destination agent with its sha256 checked on arrival, the
 * destination starts the VM and verifies it (finish), and only then the source removes its copy (confirm).
 * The phases and the truth rule are the live migration's: until finish succeeds the source holds the VM.
 */
import { Transform } from 'node:stream';
import { FerryError } from '../../common/errors.ts';
import type { MigrationProgress } from '../../common/migration.ts';
import type { ColdManifest } from '../../common/agent-migration.ts';
import type { VmSpec } from '../../common/spec.ts';
import { SHA256_HEADER } from '../../common/agent-routes.ts';
import type { AgentClient } from '../agent-client.ts';
import type { JobStore } from './jobs.ts';
import { sharedDisksForPrepare } from './shared-disks.ts';

export interface ColdDeps {
  jobs: JobStore;
  src: AgentClient;
  dst: AgentClient;
  /** Makes the destination hold the VM's base images (the overlays move, their bases do not). */
  baseImages?: (spec: VmSpec) => Promise<void>;
}

/** begin → prepare → perform (stop/save + stream files). Returns when the destination holds every file. */
export async function transferCold(d: ColdDeps, id: string): Promise<ColdManifest> {
  let job = d.jobs.transition(id, 'queued', 'preparing', { phase: 'begin' });
  const status = await d.src.call('getVm', { params: { name: job.vm } });
  d.jobs.update(id, { phase: 'prepare', memoryBytes: status.spec.memoryBytes });
  const wasStopped = status.state === 'stopped';
  const shared = await sharedDisksForPrepare(d.src, status.spec);
  await d.baseImages?.(status.spec);
  await d.dst.call('coldPrepare', { params: { id }, body: { spec: status.spec, start: !wasStopped, ...shared } }, { timeoutMs: 90_000 });
  job = d.jobs.transition(id, 'preparing', 'transferring', { phase: 'perform' });
  // A running VM keeps its memory (save); a stopped one has only its disks.
  const mode = wasStopped ? 'shutdown' : 'save';
  const manifest = await d.src.call('coldPerform', { params: { id }, body: { vm: job.vm, mode } }, { timeoutMs: 300_000 });
  const total = manifest.files.reduce((s, f) => s + f.bytes, 0);
  let done = 0;
  const t0 = Date.now();
  for (const f of manifest.files) {
    if (d.jobs.cancelRequested(id)) throw new FerryError('FERRY_E_MIGRATION_CANCELLED', 'Cancelled by the user; the VM stays on the source.');
    await streamFile(d, id, f.name, f.sha256, (n) => {
      const moved = done + n;
      const secs = (Date.now() - t0) / 1000;
      const rate = secs > 0 ? moved / secs : 0;
      const progress: MigrationProgress = {
        percent: total === 0 ? 100 : (100 * moved) / total,
        transferredBytes: moved,
        totalBytes: total,
        remainingBytes: total - moved,
        rateBytesPerSec: rate,
        dirtyRateBytesPerSec: 0,
        pass: 1,
        etaMs: rate > 0 ? Math.round(((total - moved) / rate) * 1000) : null,
        converges: true,
        disk: null,
        sampledAt: new Date().toISOString(),
      };
      d.jobs.update(id, { progress, transferredBytes: moved, qemuStatus: null });
    });
    done += f.bytes;
  }
  d.jobs.update(id, { transferredBytes: total, iterations: 1 });
  return manifest;
}

/** Download from the source, upload to the destination (both routes of the table), never holding the file. */
async function streamFile(d: ColdDeps, id: string, name: string, sha256: string, onBytes: (n: number) => void): Promise<void> {
  const params = { id, name };
  const src = await d.src.download('coldDownload', { params });
  let n = 0;
  let lastReport = 0;
  // Counting in transform(), not with a 'data' listener: that would switch the stream to flowing mode and
  // hand chunks to the listener before the upload reads them.
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      n += chunk.length;
      if (Date.now() - lastReport > 250) {
        lastReport = Date.now();
        onBytes(n);
      }
      cb(null, chunk);
    },
  });
  src.body.pipe(counter);
  try {
    // The manifest's sha256, not the one the download announced: the destination checks what was promised.
    await d.dst.upload('coldUpload', { params, headers: { [SHA256_HEADER]: sha256 }, body: counter });
  } catch (err) {
    src.body.destroy();
    throw err;
  }
  onBytes(n);
}
