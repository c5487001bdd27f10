/**
 * Cold migration as the controller drives it: the source stops the VM (or pauses it and saves its state
 * to a file, so the guest resumes with the same boot), each file — local disks and the saved state — is
 * streamed from the source agent to the destination agent with its sha256 checked on arrival, the
 * destination starts the VM and verifies it (finish), and only then the source removes its copy (confirm).
 * The phases and the truth rule are the live migration's: until finish succeeds the source holds the VM.
 */
import { Transform } from 'node:stream';
import { request } from 'undici';
import { FerryError, fromErrorJSON } from '../../common/errors.ts';
import type { MigrationProgress } from '../../common/migration.ts';
import { AGENT_PROTOCOL, PROTOCOL_HEADER, type VmStatus } from '../../common/protocol.ts';
import type { ColdManifest } from '../../common/agent-migration.ts';
import { transportError } from '../../common/http.ts';
import type { AgentClient, AgentPool } from '../agent-client.ts';
import type { JobStore } from './jobs.ts';

const BASE = '/agent/v1/migrations';
const SHA256_HEADER = 'x-ferry-sha256';

export interface ColdDeps {
  jobs: JobStore;
  pool: AgentPool;
  src: AgentClient;
  dst: AgentClient;
}

/** begin → prepare → perform (stop/save + stream files). Returns when the destination holds every file. */
export async function transferCold(d: ColdDeps, id: string): Promise<ColdManifest> {
  let job = d.jobs.transition(id, 'queued', 'preparing', { phase: 'begin' });
  const status = await d.src.call<VmStatus>('GET', `/agent/v1/vms/${job.vm}`);
  d.jobs.update(id, { phase: 'prepare', memoryBytes: status.spec.memoryBytes });
  const wasStopped = status.state === 'stopped';
  await d.dst.call('POST', `${BASE}/${id}/cold/prepare`, { spec: status.spec, start: !wasStopped }, { timeoutMs: 90_000 });
  job = d.jobs.transition(id, 'preparing', 'transferring', { phase: 'perform' });
  // A running VM keeps its memory (save); a stopped one has only its disks.
  const mode = wasStopped ? 'shutdown' : 'save';
  const manifest = await d.src.call<ColdManifest>('POST', `${BASE}/${id}/cold/perform`, { vm: job.vm, mode }, { timeoutMs: 300_000 });
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

/** GET from the source, PUT to the destination, without holding the file in memory. */
async function streamFile(d: ColdDeps, id: string, name: string, sha256: string, onBytes: (n: number) => void): Promise<void> {
  const path = `${BASE}/${id}/files/${encodeURIComponent(name)}`;
  let src;
  try {
    src = await request(new URL(path, d.src.url), { method: 'GET', dispatcher: d.pool.dispatcher, headers: { [PROTOCOL_HEADER]: String(AGENT_PROTOCOL) } });
  } catch (err) {
    throw transportError(err, `The agent of ${d.src.host}`, 'FERRY_E_AGENT_UNREACHABLE');
  }
  if (src.statusCode >= 400) throw fromErrorJSON(await src.body.json().catch(() => ({})), 'FERRY_E_MIGRATION_FAILED');
  let n = 0;
  let lastReport = 0;
  // Counting in transform(), not with a 'data' listener: that would switch the stream to flowing mode and
  // hand chunks to the listener before the PUT reads them.
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
  let dst;
  try {
    dst = await request(new URL(path, d.dst.url), {
      method: 'PUT',
      dispatcher: d.pool.dispatcher,
      // No content-length: the destination counts and checks the sha256 of what arrives.
      headers: { [PROTOCOL_HEADER]: String(AGENT_PROTOCOL), 'content-type': 'application/octet-stream', [SHA256_HEADER]: sha256 },
      body: counter,
      headersTimeout: 300_000,
      bodyTimeout: 300_000,
    });
  } catch (err) {
    src.body.destroy();
    throw transportError(err, `The agent of ${d.dst.host}`, 'FERRY_E_AGENT_UNREACHABLE');
  }
  const text = await dst.body.text();
  if (dst.statusCode >= 400) {
    let parsed: unknown = {};
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON: the code below says what we know
    }
    throw fromErrorJSON(parsed, 'FERRY_E_VERIFY_FAILED');
  }
  onBytes(n);
}
