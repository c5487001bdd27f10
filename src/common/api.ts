/**
 * What the public API answers besides migrations (src/common/migration.ts): VMs, hosts and drains as JSON.
 * The controller builds them; the CLI, the web console, the benchmarks and scripts read them. Field names
 * are a contract: add fields, never rename them.
 */
import type { AgentCertificate, AgentVersion, HostInventory, HostState, VmState } from './protocol.ts';
import type { VmSpec } from './spec.ts';

export interface VmJson {
  name: string;
  host: string;
  /** One of VM_STATES, or `creating` / `deleting` while the agent is still starting or removing it. */
  state: VmState | 'creating' | 'deleting';
  spec: VmSpec;
  bootId: string | null;
  /** The guest answered during this boot (ferry-guest's READY, or qemu-guest-agent's ping); `running` only says QEMU runs it. */
  ready: boolean;
  ip: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface HostJson {
  name: string;
  url: string;
  state: HostState;
  maintenance: boolean;
  inventory: HostInventory | null;
  /** The agent's Ferry version and the protocol versions it serves (GET /agent/v1/version), once heard. */
  agent: AgentVersion | null;
  /** The agent certificate's validity (GET /agent/v1/certificate, protocol 3); null from an older agent or before it answered. */
  certificate: AgentCertificate | null;
  /** Why the host is `incompatible` (FERRY_E_AGENT_PROTOCOL, naming both versions); null otherwise. */
  error: { code: string; message: string } | null;
  /** What the scheduler would still give (memory), after store-known VMs. */
  freeMemoryBytes: number;
  vms: string[];
  lastSeenAt: string | null;
  joinedAt: string;
}

/**
 * What a list shows of a host's inventory (`GET /api/v1/hosts?view=summary`): the fields of HostInventory a
 * table or a card prints, in the same places, so code that reads them takes either. CPU flags, machine
 * types, CPU definitions and expansions, and migration capabilities are left to `GET /api/v1/hosts/NAME`.
 */
export interface HostInventorySummary {
  protocol: HostInventory['protocol'];
  cpu: Pick<HostInventory['cpu'], 'model' | 'vendor' | 'cores'>;
  memoryBytes: number;
  accel: HostInventory['accel'];
  qemu: Pick<HostInventory['qemu'], 'version'>;
  agentVersion: string;
}

/** A host as a list shows it: every field of HostJson, its inventory reduced to HostInventorySummary. */
export interface HostSummaryJson extends Omit<HostJson, 'inventory'> {
  inventory: HostInventorySummary | null;
}

/** One move of `ferry cluster rebalance` (src/controller/fleet/rebalance.ts). */
export interface RebalanceMoveJson {
  vm: string;
  from: string;
  to: string;
  mode: 'live' | 'cold';
  costBytes: number;
  reason: string;
  /** The migration started for it (null in a dry run, or when it was refused: `error`). */
  migration: string | null;
  error: { code: string; message: string } | null;
}

export interface RebalanceJson {
  dryRun: boolean;
  threshold: number;
  spreadBefore: number;
  spreadAfter: number;
  moves: RebalanceMoveJson[];
}

/** One VM of a drain's plan (src/controller/fleet/planner.ts), in the order the drain submits them. */
export interface DrainPlanEntry {
  vm: string;
  /** null: no host takes it, or it cannot move (strategy `none`, `code` says why). */
  destination: string | null;
  reason: string;
  /** When it is predicted to be moved, from the start of the drain; null when it does not move. */
  predictedMs: number | null;
  /** `live` | `postcopy` | `cold` | `none`. */
  strategy: string;
  bytes: number;
  dirtyBytesPerSec: number | null;
  code: string | null;
}

/** A drain's plan: what `--dry-run` answers, and what a drain carries out. */
export interface DrainPlanJson {
  host: string;
  deadlineMs: number;
  feasible: boolean;
  predictedMs: number | null;
  plan: DrainPlanEntry[];
}

export interface DrainItem {
  vm: string;
  /**
   * `pending` → `migrating` → `moved` | `failed`; `skipped` when the deadline passed first; `unmovable`
   * when the plan found no way (its `error` says why) and it was never tried.
   */
  status: 'pending' | 'migrating' | 'moved' | 'failed' | 'skipped' | 'unmovable';
  /** The rung it moves (or moved) by: `live`, `postcopy`, `cold`; `none` when unmovable. */
  strategy?: string;
  migration: string | null;
  destination: string | null;
  error: { code: string; message: string } | null;
}

export interface DrainJson {
  host: string;
  state: 'draining' | 'drained' | 'incomplete';
  startedAt: string;
  finishedAt: string | null;
  deadlineMs: number;
  items: DrainItem[];
  /** The plan the drain started from. */
  feasible?: boolean;
  predictedMs?: number | null;
  plan?: DrainPlanEntry[];
}

/** One host's verdict for placing a VM there (`GET /api/v1/vms/:name/placements`): the scheduler's own judgement. */
export interface PlacementJson {
  host: string;
  fits: boolean;
  /** Why it fits (free memory) or why not (maintenance, memory, vCPUs, unreachable, the VM runs there). */
  reason: string;
}

