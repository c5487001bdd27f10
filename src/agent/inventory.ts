/**
 * What this host is and has, as the controller's scheduler needs it (HostInventory): CPU model, vendor and
 * flags (for CPU compatibility), memory and the memory not yet promised to VMs, the accelerator that really
 * works here, the QEMU version and machine types, and the address migration streams use.
 * The slow facts (accelerator probe, QEMU query) are gathered once at start: they do not change while the
 * agent runs, and the controller polls the inventory every few seconds.
 */
import { readFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { AGENT_PROTOCOL, type HostInventory } from '../common/protocol.ts';
import { MIB } from '../common/spec.ts';
import { ferryVersion } from '../common/version.ts';
import type { CpuDefinition } from '../qemu/capabilities.ts';

/** Memory kept for the host itself (kernel, agent, QEMU overhead) and never offered to VMs. */
export const HOST_RESERVE_BYTES = 512 * MIB;

export interface CpuFacts {
  model: string;
  vendor: string;
  flags: string[];
  cores: number;
}

/** The facts that need QEMU to find out; gathered once per agent process. */
export interface QemuFacts {
  accel: 'kvm' | 'tcg';
  version: string;
  machineTypes: string[];
  cpuDefinitions?: CpuDefinition[];
  cpuExpansions?: Record<string, string[]>;
  migrationCapabilities?: string[];
}

/**
 * Test-only: `FERRY_TEST_HIDE_MACHINE_TYPES=h3=pc-q35-10.0+q35,h4=…` makes the agent named h3 behave as if
 * its QEMU lacked those machine types (inventory and admission alike), so that a lab of one QEMU can show
 * a host refused for the machine type. Unset in production; an agent hiding anything says so in its log.
 */
export function hiddenMachineTypes(hostName: string, env: NodeJS.ProcessEnv = process.env): string[] {
  const raw = env.FERRY_TEST_HIDE_MACHINE_TYPES;
  if (raw === undefined || raw === '') return [];
  return raw
    .split(',')
    .map((e) => e.split('='))
    .filter(([h]) => h?.trim() === hostName)
    .flatMap(([, types]) => (types ?? '').split('+').map((t) => t.trim()).filter(Boolean));
}

/** The facts as this agent reports them: the probe's, less any machine type hidden for tests. */
export function withHiddenMachineTypes(facts: QemuFacts, hidden: readonly string[]): QemuFacts {
  if (hidden.length === 0) return facts;
  return { ...facts, machineTypes: facts.machineTypes.filter((m) => !hidden.includes(m)) };
}

/** Parses /proc/cpuinfo (x86 layout; other architectures fall back to os.cpus()). */
export function parseCpuinfo(text: string): CpuFacts {
  const blocks = text.split(/\n\s*\n/).filter((b) => b.trim() !== '');
  const field = (block: string, key: string): string | undefined => {
    const m = new RegExp(`^${key}\\s*:\\s*(.*)$`, 'm').exec(block);
    return m?.[1]?.trim();
  };
  const first = blocks[0] ?? '';
  const flags = (field(first, 'flags') ?? field(first, 'Features') ?? '').split(/\s+/).filter(Boolean);
  return {
    model: field(first, 'model name') ?? field(first, 'cpu model') ?? 'unknown',
    vendor: field(first, 'vendor_id') ?? field(first, 'CPU implementer') ?? 'unknown',
    flags: [...new Set(flags)].sort(),
    cores: blocks.filter((b) => /^processor\s*:/m.test(b)).length || cpus().length,
  };
}

export async function readCpuFacts(path = '/proc/cpuinfo'): Promise<CpuFacts> {
  try {
    return parseCpuinfo(await readFile(path, 'utf8'));
  } catch {
    const c = cpus();
    return { model: c[0]?.model ?? 'unknown', vendor: 'unknown', flags: [], cores: c.length };
  }
}

/** The agent is Ferry: it reports Ferry's version. */
export const readAgentVersion = ferryVersion;

/**
 * Free memory as promised, not as measured: a TCG guest touches its RAM lazily, so measured free memory
 * would let the scheduler overcommit and fail later, in the middle of a migration.
 */
export function freeMemory(
  totalBytes: number,
  committedBytes: number,
  reserveBytes = HOST_RESERVE_BYTES,
): number {
  return Math.max(0, totalBytes - committedBytes - reserveBytes);
}

export interface InventoryInput {
  name: string;
  cpu: CpuFacts;
  qemu: QemuFacts;
  migrationAddress: string;
  /** Memory of the VMs whose QEMU is alive on this host (running or paused: both hold their RAM). */
  committedBytes: number;
  totalBytes?: number;
}

export function buildInventory(i: InventoryInput): HostInventory {
  const memoryBytes = i.totalBytes ?? totalmem();
  return {
    name: i.name,
    protocol: AGENT_PROTOCOL,
    cpu: i.cpu,
    memoryBytes,
    freeMemoryBytes: freeMemory(memoryBytes, i.committedBytes),
    accel: i.qemu.accel,
    qemu: {
      version: i.qemu.version,
      machineTypes: i.qemu.machineTypes,
      ...(i.qemu.cpuDefinitions === undefined ? {} : { cpuDefinitions: i.qemu.cpuDefinitions }),
      ...(i.qemu.cpuExpansions === undefined ? {} : { cpuExpansions: i.qemu.cpuExpansions }),
      ...(i.qemu.migrationCapabilities === undefined ? {} : { migrationCapabilities: i.qemu.migrationCapabilities }),
    },
    migrationAddress: i.migrationAddress,
    agentVersion: readAgentVersion(),
  };
}
