/**
 * What the public API answers besides migrations (src/common/migration.ts): VMs, hosts and drains as JSON.
 * The controller builds them; the CLI, the web console, the benchmarks and scripts read them. Field names
 * are a contract: add fields, never rename them.
 */
import type { AgentVersion, HostInventory, HostState, VmState } from './protocol.ts';
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
  /** Why the host is `incompatible` (FERRY_E_AGENT_PROTOCOL, naming both versions); null otherwise. */
  error: { code: string; message: string } | null;
  /** What the scheduler would still give (memory), after store-known VMs. */
  freeMemoryBytes: number;
  vms: string[];
  lastSeenAt: string | null;
  joinedAt: string;
}

export interface DrainItem {
  vm: string;
  /** `pending` → `migrating` → `moved` | `failed`; `skipped` when the deadline passed first. */
  status: 'pending' | 'migrating' | 'moved' | 'failed' | 'skipped';
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
}
