/**
 * prepare: the destination side before any byte moves. Admits the VM (LocalVm.create refuses a name that
 * exists and memory that does not fit), starts QEMU from the very same spec with `-incoming defer` (empty
 * local disks of the same sizes are created by LocalVm), sets the capabilities that must match the
 * source, exports the disks over NBD when storage is copied, and listens for the stream on the migration
 * address. Without a port range QEMU picks the port (`tcp:ADDR:0`) and reports it, so no port can be stolen
 * in between; with one (ports.ts) the port is taken from the range, and a bind QEMU refuses tries the next.
 */
import { join } from 'node:path';
import { rm } from 'node:fs/promises';
import { FerryError } from '../../common/errors.ts';
import { parseVmSpec } from '../../common/spec.ts';
import type { Accel } from '../../qemu/argv.ts';
import type { QmpClient } from '../../qemu/qmp.ts';
import { LocalVm } from '../vm.ts';
import { capabilityList, destinationParameters, negotiateCapabilities, validateCapabilities } from './capabilities.ts';
import { emptyView } from '../../common/agent-migration.ts';
import { loadRecord, saveRecord, type MigrationRecord } from './record.ts';
import { exportDisks } from './storage.ts';
import { MigrationPorts } from './ports.ts';
import { addTlsAuthz, addTlsCreds, writeQemuTlsDir, type TlsIdentity } from './tls.ts';
import type { PrepareRequest, PrepareResponse } from '../../common/agent-migration.ts';

export interface PrepareOptions {
  id: string;
  agentDir: string;
  accel: Accel;
  request: PrepareRequest;
  identity: TlsIdentity | null;
  /** Host taps for the spec's NICs (created by the agent beforehand). */
  taps?: Record<string, string>;
  /** Memory kept for the host; see LocalVm.create. */
  reserveBytes?: number;
  /** The host's migration port range; absent: any free port. */
  ports?: MigrationPorts;
}

const HOST_RE = /^(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9a-fA-F:]*:[0-9a-fA-F:.]+|[A-Za-z0-9][A-Za-z0-9.-]{0,252})$/;

/** A migration address: an IP literal or a host name, nothing that could smuggle options into a URI. */
export function validateListenAddress(addr: unknown): string {
  if (typeof addr !== 'string' || !HOST_RE.test(addr)) {
    throw new FerryError('FERRY_E_BAD_INPUT', `Bad listen address ${JSON.stringify(addr)}: an IP address or host name.`);
  }
  return addr;
}

export function tcpUri(host: string, port: number | string): string {
  return host.includes(':') ? `tcp:[${host}]:${port}` : `tcp:${host}:${port}`;
}

/** The port QEMU bound for `migrate-incoming tcp:HOST:0`. */
export async function incomingPort(qmp: QmpClient): Promise<number> {
  const info = await qmp.execute('query-migrate');
  const addr = info['socket-address']?.find((a) => a.type === 'inet');
  const port = addr !== undefined && addr.type === 'inet' ? Number(addr.port) : NaN;
  if (!(port > 0)) throw new FerryError('FERRY_E_QMP_PROTOCOL', 'QEMU did not report the port it listens on for the migration.');
  return port;
}

/**
 * `migrate-incoming` (or `migrate-recover`) on `host`: any port QEMU picks, or one of the range; a port
 * taken by someone else between the probe and QEMU's bind is given up and the next one tried.
 */
export async function listenIncoming(qmp: QmpClient, command: 'migrate-incoming' | 'migrate-recover', host: string, ports: MigrationPorts | undefined): Promise<void> {
  if (ports === undefined || ports.range === null) {
    await qmp.execute(command, { uri: tcpUri(host, 0) });
    return;
  }
  for (let attempt = 0; ; attempt++) {
    const port = await ports.take(host);
    try {
      await qmp.execute(command, { uri: tcpUri(host, port) });
      return;
    } catch (err) {
      if (attempt >= 3 || !/in use|bind/i.test((err as Error).message)) throw err;
    }
  }
}

/** The result of prepare, and the destination VM (its QEMU waits in `inmigrate`). */
export interface Prepared {
  response: PrepareResponse;
  vm: LocalVm;
  record: MigrationRecord;
}

export async function prepare(o: PrepareOptions): Promise<Prepared> {
  const r = o.request;
  const spec = parseVmSpec(r.spec);
  const host = validateListenAddress(r.listenAddress);
  const caps = validateCapabilities(r.capabilities ?? {});
  const tls = r.tls ?? true;
  if (r.storage !== 'shared' && r.storage !== 'copy') throw new FerryError('FERRY_E_BAD_INPUT', 'storage: shared or copy.');
  if (tls && o.identity === null) throw new FerryError('FERRY_E_TLS', 'TLS asked for, but this agent has no cluster identity.');
  if (caps.postcopy && r.storage === 'copy' && spec.disks.some((d) => !d.shared)) {
    throw new FerryError('FERRY_E_BAD_INPUT', 'Post-copy with copied storage is not supported: the disks must be in sync before the switch.');
  }

  // A repeated prepare (the controller retried after losing the answer) gets the same answer.
  const earlier = await loadRecord(o.agentDir, o.id);
  if (earlier !== undefined) {
    if (earlier.view.role === 'destination' && earlier.view.stage === 'prepared' && earlier.prepared !== undefined) {
      const vm = await LocalVm.attach(o.agentDir, spec.name).catch(() => undefined);
      if (vm !== undefined && vm.pid !== null) return { response: earlier.prepared, vm, record: earlier };
    }
    throw new FerryError('FERRY_E_MIGRATION_ACTIVE', `Migration ${o.id} was prepared here already (stage ${earlier.view.stage}).`);
  }

  const vm = await LocalVm.create(o.agentDir, spec, {
    accel: o.accel,
    incoming: 'defer',
    ...(o.taps === undefined ? {} : { taps: o.taps }),
    ...(o.reserveBytes === undefined ? {} : { reserveBytes: o.reserveBytes }),
  });
  const view = emptyView({ id: o.id, role: 'destination', vm: spec.name, stage: 'preparing', storage: r.storage, tls, uri: null });
  const record: MigrationRecord = { version: 1, view, runDir: vm.runDir };
  try {
    const qmp = vm.qmp;
    const supported = (await qmp.execute('query-migrate-capabilities')).map((c) => c.capability);
    await qmp.execute('migrate-set-capabilities', { capabilities: negotiateCapabilities(capabilityList(caps, 'destination'), supported) });
    let credsId: string | null = null;
    let authzId: string | null = null; // admits only the source host's certificate (tls.ts)
    if (tls && o.identity !== null) {
      const dir = await writeQemuTlsDir(join(vm.runDir, 'migration-tls'), o.identity);
      credsId = await addTlsCreds(qmp, 'server', dir);
      authzId = await addTlsAuthz(qmp, r.tlsPeer);
    }
    await qmp.execute('migrate-set-parameters', destinationParameters(caps, credsId === null ? null : { credsId, authzId }));
    const copied = r.storage === 'copy' ? spec.disks.filter((d) => !d.shared).map((d) => d.id) : [];
    let nbd: PrepareResponse['nbd'] = null;
    if (copied.length > 0) {
      // QEMU waits paused (-S) until finish, so the guest cannot run before the source's last mirrored
      // writes arrived (see storage.ts).
      nbd = await exportDisks(qmp, { host, diskIds: copied, tlsCredsId: credsId, tlsAuthzId: authzId, ...(o.ports === undefined ? {} : { ports: o.ports }) });
    }
    await listenIncoming(qmp, 'migrate-incoming', host, o.ports);
    const uri = tcpUri(host, await incomingPort(qmp));
    const response: PrepareResponse = { id: o.id, uri, nbd, tlsHostname: tls ? host : null };
    view.uri = uri;
    view.stage = 'prepared';
    view.memoryBytes = spec.memoryBytes;
    view.runState = (await qmp.execute('query-status')).status;
    view.qemuStatus = (await qmp.execute('query-migrate')).status ?? null;
    record.prepared = response;
    await saveRecord(o.agentDir, record);
    return { response, vm, record };
  } catch (err) {
    await vm.stop({ force: true }).catch(() => undefined);
    await rm(vm.runDir, { recursive: true, force: true });
    throw err;
  }
}
