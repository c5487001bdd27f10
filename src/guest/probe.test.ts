import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { IcmpProbe } from './icmp-probe.ts';
import { probeAddress, probeKindFor, type DowntimeProbe } from './probe.ts';
import { UdpProbe } from './udp-probe.ts';

test('the probe for a VM: the tiny guest (guest channel) is asked over UDP, any other guest with ICMP', () => {
  assert.equal(probeKindFor({ guestChannel: true }), 'udp');
  assert.equal(probeKindFor({ guestChannel: false }), 'icmp');
  const nics = [{ id: 'net0', mac: '52:54:00:00:00:01', network: 'vm0', ip: '10.232.7.30/24' }];
  assert.equal(probeAddress('10.232.7.20/24', { nics }), '10.232.7.20');
  assert.equal(probeAddress(null, { nics }), '10.232.7.30');
  assert.equal(
    probeAddress(null, { nics: [{ id: 'net0', mac: '52:54:00:00:00:01', network: 'vm0' }] }),
    null,
  );
});

/** ferry-guest's probe answer on 127.0.0.1, for the UDP probe. */
async function udpEcho(): Promise<{ port: number; close: () => Promise<void> }> {
  const sock = createSocket('udp4');
  sock.on('message', (msg, rinfo) => {
    const m = /^probe (\d+)$/.exec(msg.toString().trim());
    if (m) sock.send(`{"ok":true,"probe":${m[1]}}\n`, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', resolve));
  return {
    port: sock.address().port,
    close: () => new Promise<void>((resolve) => sock.close(() => resolve())),
  };
}

/** One contract, every implementation: a guest that answers all along is seen without a gap. */
for (const [kind, make] of [
  [
    'udp',
    async () => {
      const echo = await udpEcho();
      return {
        probe: new UdpProbe({ ip: '127.0.0.1', port: echo.port }) as DowntimeProbe,
        close: echo.close,
      };
    },
  ],
  [
    'icmp',
    async () => ({
      probe: new IcmpProbe({ ip: '127.0.0.1' }) as DowntimeProbe,
      close: async () => undefined,
    }),
  ],
] as const) {
  test(`the ${kind} probe: start, a steady guest, stop reports it (once, the same report again)`, async () => {
    const { probe, close } = await make();
    try {
      assert.equal(probe.kind, kind);
      await probe.start();
      assert.equal(probe.running, true);
      await new Promise((r) => setTimeout(r, 400));
      const r = await probe.stop();
      assert.equal(probe.running, false);
      assert.equal(r.probe, kind);
      assert.ok(r.sent >= 10 && r.received >= 10 && r.received <= r.sent, JSON.stringify(r));
      assert.equal(r.duplicates, 0);
      assert.ok(r.longestGapMs !== null && r.longestGapMs > 0 && r.longestGapMs < 250, JSON.stringify(r));
      assert.ok(r.rttMs !== null);
      assert.equal(await probe.stop(), r);
    } finally {
      if (probe.running) await probe.stop();
      await close();
    }
  });
}
