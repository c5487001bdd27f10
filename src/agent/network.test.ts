import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { FerryError } from '../common/errors.ts';
import { defaultVmSpec } from '../common/spec.ts';
import { ensureTaps, removeTaps, tapName } from './network.ts';

const spec = defaultVmSpec('web-1', {
  nics: [
    { id: 'net0', mac: '52:54:00:00:00:01', network: 'vm0' },
    { id: 'net1', mac: '52:54:00:00:00:02', network: 'vm0' },
  ],
});

test('tap names are stable, distinct per NIC and fit IFNAMSIZ', () => {
  const a = tapName('web-1', 'net0');
  assert.equal(a, tapName('web-1', 'net0'));
  assert.notEqual(a, tapName('web-1', 'net1'));
  assert.notEqual(a, tapName('web-10', 'net0'));
  assert.match(a, /^ft-[0-9a-f]{12}$/);
  assert.ok(tapName('a'.repeat(63), 'net9').length <= 15);
});

test('a spec with NICs but no bridge is refused with FERRY_E_BAD_SPEC', async () => {
  await assert.rejects(ensureTaps(spec, { bridge: undefined }), (e: unknown) => {
    assert.ok(e instanceof FerryError);
    assert.equal(e.code, 'FERRY_E_BAD_SPEC');
    assert.match(e.message, /--vm-bridge/);
    return true;
  });
  // No NICs: nothing to do, no bridge needed.
  assert.deepEqual(await ensureTaps(defaultVmSpec('quiet'), { bridge: undefined }), {});
});

const isRoot = process.getuid?.() === 0;

test(
  'taps are created on the bridge and deleted again (in a private netns)',
  { skip: !isRoot && 'needs root' },
  async () => {
    const ns = `ferry-t-${randomBytes(4).toString('hex')}`;
    execFileSync('ip', ['netns', 'add', ns]);
    try {
      execFileSync('ip', ['-n', ns, 'link', 'add', 'br-vm', 'type', 'bridge']);
      await assert.rejects(ensureTaps(spec, { bridge: 'nope', netns: ns }), /does not exist/);
      const taps = await ensureTaps(spec, { bridge: 'br-vm', netns: ns });
      assert.deepEqual(Object.keys(taps), ['net0', 'net1']);
      // Idempotent: a second call (start after stop, re-attach) changes nothing.
      await ensureTaps(spec, { bridge: 'br-vm', netns: ns });
      const links = JSON.parse(
        execFileSync('ip', ['-n', ns, '-j', '-d', 'link', 'show', 'master', 'br-vm'], { encoding: 'utf8' }),
      ) as {
        ifname: string;
      }[];
      assert.deepEqual(links.map((l) => l.ifname).sort(), Object.values(taps).sort());
      await removeTaps(spec, { netns: ns });
      const after = JSON.parse(
        execFileSync('ip', ['-n', ns, '-j', 'link', 'show'], { encoding: 'utf8' }),
      ) as { ifname: string }[];
      assert.ok(after.every((l) => !l.ifname.startsWith('ft-')));
      await removeTaps(spec, { netns: ns }); // already gone: fine
    } finally {
      execFileSync('ip', ['netns', 'del', ns]);
    }
  },
);
