/**
 * A fake QMP server for unit tests: raw QMP lines on a temporary Unix socket, a handler deciding what each
 * command gets back — what real QEMU will not do on demand (garbled lines, replies out of order, silence,
 * event storms, a migration whose byte counter froze). Fake at the wire, not at the function: the code under
 * test talks to it through its real QMP client. Real QEMU covers the capability itself.
 */
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';

export const GREETING =
  '{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2"}, ' +
  '"capabilities": ["oob"]}}\r\n';

export interface Command {
  execute: string;
  arguments?: Record<string, unknown>;
  id: unknown;
}

/** One client connection as the fake server sees it. */
export class FakeConn {
  readonly received: Command[] = [];
  constructor(readonly socket: Socket) {}
  raw(text: string): void {
    this.socket.write(text);
  }
  reply(id: unknown, ret: unknown = {}): void {
    this.raw(JSON.stringify({ return: ret, id }) + '\r\n');
  }
  error(id: unknown, cls: string, desc: string): void {
    this.raw(JSON.stringify({ error: { class: cls, desc }, id }) + '\r\n');
  }
  eventLine(event: string, data?: Record<string, unknown>, seconds = 1700000000): string {
    const ev: Record<string, unknown> = { event, timestamp: { seconds, microseconds: 42 } };
    if (data) ev.data = data;
    return JSON.stringify(ev) + '\r\n';
  }
  event(event: string, data?: Record<string, unknown>): void {
    this.raw(this.eventLine(event, data));
  }
}

export type Handler = (cmd: Command, conn: FakeConn) => void;

export interface FakeServer {
  path: string;
  conns: FakeConn[];
  close(): Promise<void>;
}

/** A QMP server on a fresh Unix socket; `qmp_capabilities` is answered unless the handler takes it. */
export async function fakeQmp(
  dir: string,
  handler: Handler,
  opts: { greeting?: boolean; path?: string } = {},
): Promise<FakeServer> {
  const path = opts.path ?? join(dir, `qmp-${Math.random().toString(36).slice(2)}.sock`);
  const conns: FakeConn[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    const conn = new FakeConn(socket);
    conns.push(conn);
    if (opts.greeting !== false) socket.write(GREETING);
    let buf = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const cmd = JSON.parse(buf.slice(0, nl)) as Command;
        buf = buf.slice(nl + 1);
        conn.received.push(cmd);
        if (cmd.execute === 'qmp_capabilities') conn.reply(cmd.id);
        else handler(cmd, conn);
      }
    });
  });
  server.listen(path);
  await once(server, 'listening');
  return {
    path,
    conns,
    close: async () => {
      for (const s of sockets) s.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}
