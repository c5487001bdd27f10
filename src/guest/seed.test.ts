import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultVmSpec, MIB } from '../common/spec.ts';
import { seedFiles, writeSeedIso } from './seed.ts';

const spec = defaultVmSpec('web1', {
  boot: { kind: 'disk' },
  guestChannel: false,
  guestAgent: true,
  disks: [{ id: 'vda', sizeBytes: 64 * MIB, shared: false }],
  nics: [{ id: 'net0', mac: '52:54:00:aa:bb:cc', network: 'vm0', ip: '10.9.0.7/24' }],
  cloudInit: { instanceId: 'web1-0a1b2c3d', hostname: 'web1', sshAuthorizedKeys: ['ssh-ed25519 AAAAC3Nz test@x'], gateway: '10.9.0.1' },
});

test('the seed says who the VM is and gives it the address Ferry reserved, on the NIC with its MAC', () => {
  const f = seedFiles(spec);
  assert.deepEqual(JSON.parse(f['meta-data']), { 'instance-id': 'web1-0a1b2c3d', 'local-hostname': 'web1', 'public-keys': ['ssh-ed25519 AAAAC3Nz test@x'] });
  assert.deepEqual(JSON.parse(f['network-config']), {
    version: 2,
    ethernets: { net0: { match: { macaddress: '52:54:00:aa:bb:cc' }, 'set-name': 'eth0', addresses: ['10.9.0.7/24'], routes: [{ to: '0.0.0.0/0', via: '10.9.0.1' }] } },
  });
  assert.equal(f['user-data'], '#cloud-config\n{}\n', 'no user-data given: an empty cloud-config');
  const withUd = seedFiles({ ...spec, cloudInit: { ...spec.cloudInit!, userData: '#!/bin/sh\necho hi\n' } });
  assert.equal(withUd['user-data'], '#!/bin/sh\necho hi\n', 'user-data is passed verbatim');
});

test('two hosts make the same seed bytes from the same spec: an ISO labelled cidata holding the three files', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-seed-'));
  try {
    const a = await writeSeedIso(spec, join(dir, 'a.iso'));
    await new Promise((r) => setTimeout(r, 1100)); // a second later: no date may leak into the image
    const b = await writeSeedIso(spec, join(dir, 'b.iso'));
    assert.equal(a, b);
    assert.equal(createHash('sha256').update(readFileSync(join(dir, 'a.iso'))).digest('hex'), a);
    const info = execFileSync('xorriso', ['-indev', join(dir, 'a.iso'), '-pvd_info'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    assert.match(info, /Volume Id\s*:\s*cidata/);
    const ls = execFileSync('xorriso', ['-indev', join(dir, 'a.iso'), '-ls', '/'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    for (const f of ['meta-data', 'user-data', 'network-config']) assert.match(ls, new RegExp(`'${f}'`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
