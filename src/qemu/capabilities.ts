/**
 * What this host's QEMU can run and how it can migrate, asked of QEMU itself: a short-lived QEMU with no
 * machine (`-machine none`, TCG, nothing attached) answers `query-version`, `query-machines`,
 * `query-cpu-definitions`, `query-cpu-model-expansion` for the CPU models asked about, and
 * `query-migrate-capabilities`, then quits. The agent runs it once at start (these facts change only
 * with an upgrade of QEMU) and reports them in its inventory, so that the scheduler can refuse a
 * destination before a migration fails half-way on it.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryError } from '../common/errors.ts';
import { qemuBinary } from './accel.ts';
import { QmpClient } from './qmp.ts';

export interface CpuDefinition {
  name: string;
  /** False when this QEMU, under the accelerator probed, cannot give every feature of the model. */
  usable: boolean;
  /** What it lacks, QEMU's words (empty when usable). */
  unavailableFeatures: string[];
}

export interface QemuCapabilities {
  version: string;
  machineTypes: string[];
  cpuDefinitions: CpuDefinition[];
  /** For each CPU model asked about: the features it enables (`query-cpu-model-expansion`, full). */
  cpuExpansions: Record<string, string[]>;
  /** Migration capabilities this QEMU knows (`postcopy-ram`, `multifd`, …), whatever their state. */
  migrationCapabilities: string[];
}

interface MachineInfo { name: string; alias?: string }
interface CpuDefinitionInfo { name: string; 'unavailable-features'?: string[] }
interface Expansion { model: { name: string; props?: Record<string, unknown> } }
interface Capability { capability: string }
interface Version { qemu: { major: number; minor: number; micro: number } }

const PROBE_TIMEOUT_MS = 20_000;

/** Starts the probe QEMU, asks it, and always kills it. */
export async function probeQemuCapabilities(opts: { cpuModels?: readonly string[] } = {}): Promise<QemuCapabilities> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-qemu-probe-'));
  const sock = join(dir, 'qmp.sock');
  const child = spawn(qemuBinary(), ['-machine', 'none', '-accel', 'tcg', '-nodefaults', '-display', 'none', '-qmp', `unix:${sock},server=on,wait=off`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr = (stderr + b.toString()).slice(-2000)));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  let qmp: QmpClient | undefined;
  try {
    qmp = await QmpClient.connect(sock, { timeoutMs: PROBE_TIMEOUT_MS });
    const ask = <T>(cmd: string, args?: Record<string, unknown>): Promise<T> => qmp!.executeRaw(cmd, args, { timeoutMs: PROBE_TIMEOUT_MS }) as Promise<T>;
    const v = await ask<Version>('query-version');
    const machines = await ask<MachineInfo[]>('query-machines');
    const defs = await ask<CpuDefinitionInfo[]>('query-cpu-definitions');
    const caps = await ask<Capability[]>('query-migrate-capabilities');
    const cpuExpansions: Record<string, string[]> = {};
    for (const model of opts.cpuModels ?? []) {
      if (!defs.some((d) => d.name === model)) continue;
      const e = await ask<Expansion>('query-cpu-model-expansion', { type: 'full', model: { name: model } });
      cpuExpansions[model] = Object.entries(e.model.props ?? {}).filter(([, on]) => on === true).map(([k]) => k).sort();
    }
    return {
      version: `${v.qemu.major}.${v.qemu.minor}.${v.qemu.micro}`,
      machineTypes: [...new Set(machines.flatMap((m) => (m.alias === undefined ? [m.name] : [m.name, m.alias])))].sort(),
      cpuDefinitions: defs
        .map((d) => ({ name: d.name, usable: (d['unavailable-features'] ?? []).length === 0, unavailableFeatures: d['unavailable-features'] ?? [] }))
        .sort((a, b) => a.name.localeCompare(b.name)),
      cpuExpansions,
      migrationCapabilities: caps.map((c) => c.capability).sort(),
    };
  } catch (err) {
    throw new FerryError('FERRY_E_MISSING_TOOL', `Cannot probe ${qemuBinary()} (-machine none): ${stderr.trim() || String(err)}`, { cause: err });
  } finally {
    await qmp?.close().catch(() => undefined);
    child.kill('SIGKILL');
    await exited;
    await rm(dir, { recursive: true, force: true });
  }
}
