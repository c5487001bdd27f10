import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IcmpProbe, parsePingLine, PingTally, pingArgv } from './icmp-probe.ts';
import { gapReport } from './probe.ts';

const GUEST = '10.232.7.20';
/** 1796127739.800 s since the epoch: the stamps below are ms after it. */
const T0 = 1796127739800;
const stamp = (ms: number): string => `[${((T0 + ms) / 1000).toFixed(6)}]`;
const reply = (ms: number, seq: number, extra = ''): string =>
  `${stamp(ms)} 64 bytes from ${GUEST}: icmp_seq=${seq} ttl=64 time=0.412 ms${extra}`;

/** Feeds captured `ping -n -D` output through the tally and reports as the probe does (ms since T0). */
function reportOf(lines: string[], durationMs: number) {
  const t = new PingTally(GUEST);
  for (const l of lines) t.line(l);
  return {
    tally: t,
    report: gapReport(
      'icmp',
      {
        sent: t.sent,
        replyMs: t.replyAtMs.map((at) => at - T0),
        duplicates: t.duplicates,
        rtts: t.rtts,
        durationMs,
      },
      50,
    ),
  };
}

/** Replies every 10 ms from `fromMs` to `toMs`, numbered from `seq0`. */
function steady(fromMs: number, toMs: number, seq0: number): string[] {
  const out: string[] = [];
  for (let ms = fromMs, seq = seq0; ms <= toMs; ms += 10, seq++) out.push(reply(ms, seq));
  return out;
}

test('a reply line: its stamp, sequence number and round trip; other lines are not replies', () => {
  assert.deepEqual(
    parsePingLine('[1796127739.803598] 64 bytes from 10.232.7.20: icmp_seq=1 ttl=64 time=0.027 ms', GUEST),
    {
      atMs: 1796127739803.598,
      seq: 1,
      rttMs: 0.027,
      dup: false,
    },
  );
  assert.equal(parsePingLine(`${reply(5, 7)} (DUP!)`, GUEST)?.dup, true);
  // A truncated reply (no time=) is still the guest answering.
  assert.deepEqual(
    parsePingLine(`${stamp(3)} 64 bytes from ${GUEST}: icmp_seq=4 ttl=64 (truncated)`, GUEST)?.rttMs,
    null,
  );
  for (const junk of [
    `PING ${GUEST} (${GUEST}) 56(84) bytes of data.`,
    `${stamp(1)} From 10.232.7.1 icmp_seq=12 Destination Host Unreachable`,
    `${stamp(1)} 64 bytes from 10.232.7.21: icmp_seq=3 ttl=64 time=0.3 ms`, // another address
    `${stamp(1)} 64 bytes from ${GUEST}: icmp_seq=3 ttl=64 time=0.3 ms (BAD CHECKSUM!)`,
    `64 bytes from ${GUEST}: icmp_seq=3 ttl=64 time=0.3 ms`, // no -D stamp: no time to place it at
    'Warning: time of day goes back (-34us), taking countermeasures',
    `--- ${GUEST} ping statistics ---`,
    `${stamp(1)} 64 bytes fr`, // a line cut by a kill
    '',
  ]) {
    assert.equal(parsePingLine(junk, GUEST), null, junk);
  }
});

test('lost replies: the longest gap is from the last reply before the outage to the first after it', () => {
  const lines = [
    `PING ${GUEST} (${GUEST}) 56(84) bytes of data.`,
    ...steady(10, 500, 1),
    ...steady(740, 1000, 74),
  ];
  lines.push(
    '',
    `--- ${GUEST} ping statistics ---`,
    '100 packets transmitted, 76 received, 24% packet loss, time 990ms',
  );
  const { report } = reportOf(lines, 1005);
  assert.equal(report.probe, 'icmp');
  assert.equal(report.sent, 100);
  assert.equal(report.received, 50 + 27);
  assert.equal(report.longestGapMs, 240);
  assert.deepEqual(report.gaps, [{ fromMs: 500, toMs: 740, ms: 240 }]);
  assert.equal(report.firstReplyMs, 10);
  assert.equal(report.tailGapMs, 5);
  assert.deepEqual(report.rttMs, { p50: 0.4, p99: 0.4, max: 0.4 });
});

test('duplicates (DUP! or a sequence number seen before) count once and do not hide a gap', () => {
  const lines = [...steady(0, 200, 1)];
  // During the outage, the same probe answered twice more (both copies of a guest, a looped switch).
  lines.push(reply(300, 21, ' (DUP!)'), reply(310, 21));
  lines.push(...steady(400, 500, 41));
  const { report, tally } = reportOf(lines, 500);
  assert.equal(tally.duplicates, 2);
  assert.equal(report.duplicates, 2);
  assert.equal(report.received, 21 + 11);
  assert.equal(report.longestGapMs, 200, JSON.stringify(report.gaps));
});

test('replies out of order are placed by their arrival stamps, not their sequence numbers', () => {
  const lines = [reply(0, 1), reply(10, 2), reply(30, 4), reply(31, 3), reply(200, 5), reply(210, 6)];
  const { report } = reportOf(lines, 215);
  assert.equal(report.received, 6);
  assert.equal(report.longestGapMs, 169);
  // …even when the stamps themselves come out of order (the wall clock stepped back).
  const shuffled = reportOf([reply(0, 1), reply(200, 5), reply(10, 2), reply(210, 6)], 215).report;
  assert.equal(shuffled.longestGapMs, 190);
});

test('sequence numbers wrap at 65536: the second lap is not a duplicate of the first', () => {
  const lines = [reply(0, 65534), reply(10, 65535), reply(20, 0), reply(30, 1), reply(40, 65535, '')];
  const { tally, report } = reportOf(lines, 45);
  assert.equal(report.received, 4);
  assert.equal(tally.duplicates, 1, 'a late copy of 65535 after the wrap is still a duplicate');
  assert.equal(tally.sent, 65537, 'without a summary: the highest number answered, unwrapped');
});

test('no replies at all: nothing measured — null, not 0; one reply: still no gap to speak of', () => {
  const silent = reportOf(
    [
      `PING ${GUEST} (${GUEST}) 56(84) bytes of data.`,
      `${stamp(3000)} From 10.232.7.1 icmp_seq=1 Destination Host Unreachable`,
      '',
      '300 packets transmitted, 0 received, +1 errors, 100% packet loss, time 3000ms',
    ],
    3000,
  ).report;
  assert.equal(silent.received, 0);
  assert.equal(silent.sent, 300);
  assert.equal(silent.longestGapMs, null);
  assert.equal(silent.firstReplyMs, null);
  assert.equal(silent.tailGapMs, null);
  assert.equal(silent.rttMs, null);
  assert.equal(reportOf([reply(10, 1)], 3000).report.longestGapMs, null);
});

test('a guest that had not come back by stop(): the time since its last reply is the gap', () => {
  const { report } = reportOf(steady(0, 100, 1), 900);
  assert.equal(report.longestGapMs, 800);
  assert.equal(report.tailGapMs, 800);
});

test('ping is asked for 1 ms less than the interval (iputils rounds), bounded, and dies with its parent', () => {
  assert.deepEqual(pingArgv(GUEST, 10, 90_500), [
    'setpriv',
    '--pdeathsig',
    'KILL',
    '--',
    'ping',
    '-n',
    '-D',
    '-i',
    '0.009',
    '-w',
    '91',
    GUEST,
  ]);
});

test('a real ping of 127.0.0.1: replies, no gap; stop() ends the child and reports again the same', async () => {
  const probe = new IcmpProbe({ ip: '127.0.0.1' });
  try {
    await probe.start();
    assert.equal(probe.running, true);
    const pid = probe.pid!;
    await new Promise((r) => setTimeout(r, 400));
    const r = await probe.stop();
    assert.equal(r.probe, 'icmp');
    assert.ok(r.received >= 10 && r.received <= r.sent, JSON.stringify(r));
    assert.ok(r.longestGapMs !== null && r.longestGapMs < 250, JSON.stringify(r));
    assert.equal(probe.running, false);
    // Node is its parent and reaped it: the pid is free.
    assert.throws(() => process.kill(pid, 0), /ESRCH/, `ping ${pid} is gone after stop()`);
    assert.equal(await probe.stop(), r);
  } finally {
    if (probe.running) await probe.stop();
  }
});
