import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { MigrationPorts } from './ports.ts';

const listen = (port: number): Promise<Server> =>
  new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(port, '127.0.0.1', () => resolve(s));
  });

test('ports come from the range, never twice while reserved, skip ports in use, and run out with FERRY_E_PORT_RANGE_EXHAUSTED', async () => {
  const probe = await listen(0);
  const base = (probe.address() as { port: number }).port;
  probe.close();
  // Three ports next to one the kernel just gave: free with overwhelming likelihood; one taken by us.
  const first = base < 65000 ? base + 1 : base - 10;
  const busy = await listen(first + 1);
  try {
    const ports = new MigrationPorts({ first, last: first + 2 });
    const a = await ports.take('127.0.0.1');
    const b = await ports.take('127.0.0.1');
    assert.deepEqual([a, b].sort(), [first, first + 2], 'the busy port is skipped');
    await assert.rejects(ports.take('127.0.0.1'), { code: 'FERRY_E_PORT_RANGE_EXHAUSTED' });
    ports.release(a);
    assert.equal(await ports.take('127.0.0.1'), a);
  } finally {
    busy.close();
  }
});

test('without a range, any free port', async () => {
  const p = await new MigrationPorts(null).take('127.0.0.1');
  assert.ok(p > 0);
});
