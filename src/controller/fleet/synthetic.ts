/**
 * A synthetic fleet written straight into a store — hosts with inventories as a real agent reports them and
 * VMs with specs as `ferry vm create` stores them — so that the controller's API can be measured at fleet
 * size (`ferry bench api`, BENCHMARKS.md) without a thousand agents. Never used on a real cluster: the hosts'
 * URLs point at a closed port on loopback, so a heartbeat finds them unreachable at once.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type { HostInventory } from '../../common/protocol.ts';
import { defaultVmSpec, MIB } from '../../common/spec.ts';
import { nowIso, type Store } from '../store/db.ts';

const GIB = 1024 * MIB;

/** Names as a lab or an operator would give them, sorted as they are numbered. */
export const syntheticHostName = (i: number): string => `h${String(i + 1).padStart(4, '0')}`;
export const syntheticVmName = (i: number): string => `vm${String(i + 1).padStart(5, '0')}`;

function inventory(name: string): HostInventory {
  return {
    name,
    protocol: 3,
    cpu: { model: 'AMD EPYC 7543 32-Core Processor', vendor: 'AuthenticAMD', flags: ['sse4_2', 'avx2', 'aes', 'x2apic', 'npt'], cores: 64 },
    memoryBytes: 512 * GIB,
    freeMemoryBytes: 500 * GIB,
    accel: 'kvm',
    qemu: {
      version: '10.0.0',
      machineTypes: ['q35', 'pc', 'pc-q35-10.0', 'pc-q35-9.2', 'pc-q35-9.1', 'pc-i440fx-10.0', 'pc-i440fx-9.2', 'microvm', 'none'],
      cpuDefinitions: ['qemu64', 'max', 'host', 'EPYC', 'EPYC-Milan', 'Skylake-Server', 'Cascadelake-Server'].map((n) => ({
        name: n,
        usable: true,
        unavailableFeatures: [],
      })),
      migrationCapabilities: ['xbzrle', 'postcopy-ram', 'multifd', 'zero-copy-send', 'auto-converge'],
    },
    migrationAddress: '127.0.0.1',
    agentVersion: '0.1.0',
  };
}

/** Writes `hosts` hosts and `vms` VMs (spread evenly) into an empty store, in one transaction. */
export function seedSyntheticFleet(store: Store, opts: { hosts: number; vms: number }): void {
  const at = nowIso();
  const addHost = store.sql.prepare(
    `INSERT INTO hosts (name, url, state, maintenance, inventory, last_seen_at, joined_at) VALUES (?, ?, 'ready', 0, ?, ?, ?)`,
  );
  const addVm = store.sql.prepare(
    `INSERT INTO vms (name, host, state, spec, boot_id, ready, ip, created_at, updated_at) VALUES (?, ?, 'running', ?, ?, 1, NULL, ?, ?)`,
  );
  store.sql.transaction(() => {
    for (let i = 0; i < opts.hosts; i++) {
      const name = syntheticHostName(i);
      addHost.run(name, 'https://127.0.0.1:9', JSON.stringify(inventory(name)), at, at);
    }
    for (let i = 0; i < opts.vms; i++) {
      const name = syntheticVmName(i);
      const spec = defaultVmSpec(name, { memoryBytes: (1 + (i % 8)) * GIB, vcpus: 1 + (i % 4) });
      const bootId = `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;
      addVm.run(name, syntheticHostName(i % opts.hosts), JSON.stringify(spec), bootId, at, at);
    }
  })();
}

/**
 * What a live fleet's heartbeats write, without the agents: each synthetic host's row rewritten as a
 * successful heartbeat rewrites it (state, inventory, last_seen_at; hosts.ts), `perSecond` rows a second
 * round-robin, each its own commit, from a second connection in a worker thread so that the writes do not
 * share an event loop with whoever measures. SQLite stores only (the bench's). `stop` says how many it wrote.
 */
export function startSyntheticHeartbeats(file: string, opts: { hosts: number; perSecond: number }): { stop(): Promise<number> } {
  const sqlitePath = createRequire(import.meta.url).resolve('better-sqlite3');
  const worker = new Worker(HEARTBEAT_WORKER, { eval: true, workerData: { file, sqlitePath, ...opts, names: Array.from({ length: opts.hosts }, (_, i) => syntheticHostName(i)) } });
  let written = 0;
  worker.on('message', (n: number) => (written = n));
  return {
    stop: async () => {
      worker.postMessage('stop');
      await new Promise((r) => worker.once('exit', r));
      return written;
    },
  };
}

// Plain JavaScript: a worker evaluated from text runs outside the bundle and the TypeScript loader.
const HEARTBEAT_WORKER = `
const { parentPort, workerData: w } = require('node:worker_threads');
const db = new (require(w.sqlitePath))(w.file);
db.pragma('busy_timeout = 5000');
const write = db.prepare("UPDATE hosts SET state = 'ready', inventory = inventory, last_seen_at = ? WHERE name = ?");
const tickMs = 20;
let next = 0, written = 0, owed = 0;
const timer = setInterval(() => {
  owed += (w.perSecond * tickMs) / 1000;
  const at = new Date().toISOString();
  for (; owed >= 1; owed--) {
    write.run(at, w.names[next]);
    next = (next + 1) % w.names.length;
    written++;
  }
}, tickMs);
parentPort.on('message', () => {
  clearInterval(timer);
  db.close();
  parentPort.postMessage(written);
  parentPort.close();
});
`;
