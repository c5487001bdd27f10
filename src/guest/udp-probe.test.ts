import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { UdpProbe } from './udp-probe.ts';

/** A stand-in for ferry-guest's probe answer on 127.0.0.1 that can be told to go silent. */
async function fakeGuest(): Promise<{ port: number; silent: (on: boolean) => void; close: () => Promise<void> }> {
  const sock = createSocket('udp4');
  let silent = false;
  sock.on('message', (msg, rinfo) => {
    const m = /^probe (\d+)$/.exec(msg.toString().trim());
    if (!silent && m) sock.send(`{"ok":true,"probe":${m[1]}}\n`, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', resolve));
  return {
    port: sock.address().port,
    silent: (on) => (silent = on),
    close: () => new Promise<void>((resolve) => sock.close(() => resolve())),
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('the longest gap between replies is the time the guest did not answer', async () => {
  const guest = await fakeGuest();
  const prober = new UdpProbe({ ip: '127.0.0.1', port: guest.port });
  try {
    await prober.start();
    await sleep(300);
    guest.silent(true);
    await sleep(200);
    guest.silent(false);
    await sleep(300);
    const r = await prober.stop();
    assert.ok(r.sent >= 50, `sent ${r.sent}`);
    assert.ok(r.received >= r.sent - 30 && r.received < r.sent, `received ${r.received} of ${r.sent}`);
    assert.ok(r.longestGapMs !== null && r.longestGapMs >= 190 && r.longestGapMs <= 290, `longest gap ${r.longestGapMs} ms`);
    assert.equal(r.gaps.length, 1, JSON.stringify(r.gaps));
    assert.ok(r.gaps[0]!.fromMs >= 250 && r.gaps[0]!.fromMs <= 400, JSON.stringify(r.gaps));
    assert.ok(r.tailGapMs !== null && r.tailGapMs < 50);
    assert.ok(r.rttMs !== null && r.rttMs.p50 < 20);
  } finally {
    if (prober.running) await prober.stop();
    await guest.close();
  }
});

test('a guest that never answers: no replies, no gap (null, not 0), the tail is unknown', async () => {
  const guest = await fakeGuest();
  guest.silent(true);
  const prober = new UdpProbe({ ip: '127.0.0.1', port: guest.port });
  try {
    await prober.start();
    await sleep(100);
    const r = await prober.stop();
    assert.equal(r.received, 0);
    assert.equal(r.longestGapMs, null, 'no reply: nothing measured, not 0');
    assert.equal(r.firstReplyMs, null);
    assert.equal(r.tailGapMs, null);
  } finally {
    if (prober.running) await prober.stop();
    await guest.close();
  }
});
