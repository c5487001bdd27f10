/**
 * The ports a destination listens on for a migration stream, a post-copy recovery and NBD exports. By
 * default the kernel picks them (any free port); with a configured range (`ferry agent --migration-ports
 * 49152-49215`) every one is taken from that range, so a firewall can open exactly it. A port is probed
 * by binding it, and one handed out stays reserved for a while so that two prepares at once never get
 * the same one before QEMU has bound it. No free port left: FERRY_E_PORT_RANGE_EXHAUSTED.
 */
import { createServer } from 'node:net';
import { FerryError } from '../../common/errors.ts';
import type { PortRange } from '../../common/config-file.ts';

/** How long a handed-out port is kept from others: QEMU binds it within a QMP round trip. */
const RESERVED_MS = 30_000;

function bindable(host: string, port: number): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(0));
    srv.listen(port, host, () => {
      const addr = srv.address();
      const got = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(got));
    });
  });
}

export class MigrationPorts {
  private readonly handed = new Map<number, number>();
  private next = 0;

  constructor(readonly range: PortRange | null) {}

  /** A port to listen on at `host`: free now, and not handed to anyone in the last RESERVED_MS. */
  async take(host: string): Promise<number> {
    if (this.range === null) {
      const p = await bindable(host, 0);
      if (p === 0) throw new FerryError('FERRY_E_PORT_RANGE_EXHAUSTED', `No free port on ${host}.`);
      return p;
    }
    const now = Date.now();
    for (const [p, at] of this.handed) if (now - at > RESERVED_MS) this.handed.delete(p);
    const { first, last } = this.range;
    const size = last - first + 1;
    // Round robin from after the last port handed: a port QEMU just closed is not reused at once.
    for (let i = 0; i < size; i++) {
      const port = first + ((this.next + i) % size);
      if (this.handed.has(port)) continue;
      if ((await bindable(host, port)) !== port) continue;
      this.handed.set(port, now);
      this.next = (port - first + 1) % size;
      return port;
    }
    throw new FerryError(
      'FERRY_E_PORT_RANGE_EXHAUSTED',
      `Every port of this host's migration range ${first}-${last} on ${host} is in use (${size} ports): let running migrations end, or widen --migration-ports.`,
      { details: { first, last, host } },
    );
  }

  /** The port is no longer listened on (the migration ended or QEMU refused it). */
  release(port: number): void {
    this.handed.delete(port);
  }
}
