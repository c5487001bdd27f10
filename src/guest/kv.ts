/**
 * The host side of guest/kv-user-data.yaml's key-value service (TCP, one line per request: `SET k v` →
 * `OK k`, `GET k` → `VAL k v` or `NONE k`), which the Debian demo and tests install through cloud-init.
 */
import { connect } from 'node:net';

export const KV_PORT = 7070;

/** One request on a connection of its own; its one-line answer. */
export function askKv(ip: string, line: string, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: ip, port: KV_PORT }, () => s.write(`${line}\n`));
    let buf = '';
    s.setTimeout(timeoutMs, () => s.destroy(new Error(`no answer from ${ip}:${KV_PORT} to ${line}`)));
    s.on('data', (d: Buffer) => {
      buf += d.toString();
      const i = buf.indexOf('\n');
      if (i >= 0) {
        s.end();
        resolve(buf.slice(0, i));
      }
    });
    s.on('error', reject);
  });
}
