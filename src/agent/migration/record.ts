/**
 * The agent's memory of a migration across its own restarts: one small versioned JSON record per migration,
 * written atomically in the VM's run dir (`migration.json`, it lives and dies with the VM there) and in the
 * agent's `migrations/` index (it outlives the run dir, so a repeated finish/confirm or a GET after the VM
 * left still answers).
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { FerryError } from '../../common/errors.ts';
import { MIGRATION_ID_RE, type AgentMigrationView, type ColdManifest, type PerformRequest, type PrepareResponse } from '../../common/agent-migration.ts';

export const RECORD_VERSION = 1;
export const RUN_DIR_RECORD = 'migration.json';

export interface MigrationRecord {
  version: typeof RECORD_VERSION;
  view: AgentMigrationView;
  /** Where the VM's QEMU runs on this host (null once removed). */
  runDir: string | null;
  /** Source: whether the guest was running when perform began (resume it only then). */
  wasRunning?: boolean;
  /** Destination: the answer of prepare, given again to a retried prepare. */
  prepared?: PrepareResponse;
  /** Source: the perform request, to resume watching after an agent restart. */
  performed?: PerformRequest;
  /** A cold migration: its files (source: offered; destination: received so far). */
  /** `start: false`: a VM that was stopped on the source stays stopped on the destination. */
  cold?: { manifest: ColdManifest; start?: boolean };
}

export function validateMigrationId(id: unknown): string {
  if (typeof id !== 'string' || !MIGRATION_ID_RE.test(id)) {
    throw new FerryError('FERRY_E_BAD_INPUT', `Bad migration id ${JSON.stringify(id)}: letters, digits, - and _, at most 64.`);
  }
  return id;
}

export function indexPath(agentDir: string, id: string): string {
  return join(agentDir, 'migrations', `${validateMigrationId(id)}.json`);
}

async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, text, { mode: 0o600 });
  await rename(tmp, path);
}

export async function saveRecord(agentDir: string, rec: MigrationRecord): Promise<void> {
  const text = `${JSON.stringify(rec, null, 2)}\n`;
  await mkdir(join(agentDir, 'migrations'), { recursive: true, mode: 0o700 });
  if (rec.runDir !== null && existsSync(rec.runDir)) {
    await writeAtomic(join(rec.runDir, RUN_DIR_RECORD), text).catch(() => undefined);
  }
  await writeAtomic(indexPath(agentDir, rec.view.id), text);
}

function parse(text: string, where: string): MigrationRecord {
  const rec = JSON.parse(text) as Partial<MigrationRecord>;
  if (rec.version !== RECORD_VERSION || typeof rec.view !== 'object' || rec.view === null) {
    throw new FerryError('FERRY_E_INTERNAL', `${where}: not a migration record of version ${RECORD_VERSION}.`);
  }
  return rec as MigrationRecord;
}

/** The record of migration `id` on this agent, or undefined when this agent never took part in it. */
export async function loadRecord(agentDir: string, id: string): Promise<MigrationRecord | undefined> {
  const path = indexPath(agentDir, id);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
  const rec = parse(text, path);
  // The run dir's copy is written first and may be newer if the agent died between the two writes.
  if (rec.runDir !== null) {
    const inRun = await readFile(join(rec.runDir, RUN_DIR_RECORD), 'utf8').then((t) => parse(t, rec.runDir!), () => undefined);
    if (inRun !== undefined && inRun.view.id === id && inRun.view.updatedAt > rec.view.updatedAt) return inRun;
  }
  return rec;
}
