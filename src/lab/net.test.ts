import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { PACKAGE_ROOT } from '../common/paths.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryError } from '../common/errors.ts';
import {
  MAX_HOSTS,
  createLabNetwork,
  destroyLabNetwork,
  findLabObjects,
  hostIndex,
  labHostNamespace,
  labNetworkPlan,
  validateLabName,
} from './net.ts';

const code = (c: string) => (e: unknown) => e instanceof FerryError && e.code === c;

test('namespaces: ferry-hN for the default lab, ferry-<lab>-hN for the others', () => {
  assert.equal(labHostNamespace('lab', 1), 'ferry-h1');
  assert.equal(labHostNamespace('lab', 'h3'), 'ferry-h3');
  assert.equal(labHostNamespace('t1', 2), 'ferry-t1-h2');
  assert.throws(() => labHostNamespace('t1', 'x1'), code('FERRY_E_HOST_NOT_FOUND'));
  assert.throws(() => labHostNamespace('t1', 0), code('FERRY_E_HOST_NOT_FOUND'));
  assert.equal(hostIndex('h12'), 12);
});

test('lab names are 1 to 8 of [a-z0-9]', () => {
  for (const ok of ['lab', 'a', '12345678']) assert.equal(validateLabName(ok), ok);
  for (const bad of ['', 'Lab', 'a-b', '123456789', 'a b', '../x', 3]) {
    assert.throws(() => validateLabName(bad), code('FERRY_E_BAD_NAME'), String(bad));
  }
});

test('the plan: .1 for the root, .1N for host N, interface names within 15 bytes', () => {
  const p = labNetworkPlan('abcdefgh', 7, MAX_HOSTS);
  assert.equal(p.mgmtCidr, '10.231.7.0/24');
  assert.equal(p.vmCidr, '10.232.7.0/24');
  assert.equal(p.gateway, '10.231.7.1');
  assert.equal(p.vmGateway, '10.232.7.1');
  assert.equal(p.hosts[0]!.address, '10.231.7.11');
  assert.equal(p.hosts[1]!.address, '10.231.7.12');
  for (const n of [p.mgmtBridge, p.vmSwitch, ...p.hosts.flatMap((h) => [h.mgmtVeth, h.vmVeth, h.vmBridge])]) {
    assert.ok(n.length <= 15, n);
  }
  assert.throws(() => labNetworkPlan('lab', 1, MAX_HOSTS + 1), code('FERRY_E_BAD_INPUT'));
  assert.throws(() => labNetworkPlan('lab', 1, 0), code('FERRY_E_BAD_INPUT'));
});

test('without `ip` on PATH: FERRY_E_MISSING_TOOL (or NOT_ROOT when not root), nothing changed', async () => {
  const empty = mkdtempSync(join(tmpdir(), 'ferry-nopath-'));
  const saved = process.env.PATH;
  try {
    process.env.PATH = empty;
    const expected = process.getuid?.() === 0 ? 'FERRY_E_MISSING_TOOL' : 'FERRY_E_NOT_ROOT';
    await assert.rejects(createLabNetwork({ name: 'zz', hosts: 1 }), code(expected));
    await assert.rejects(destroyLabNetwork('zz'), code(expected));
  } finally {
    process.env.PATH = saved;
    rmSync(empty, { recursive: true, force: true });
  }
});

const canDropRoot = process.getuid?.() === 0 && existsSync('/usr/bin/setpriv');
test(
  '`ferry lab up` as an ordinary user: FERRY_E_NOT_ROOT, exit 1, nothing changed',
  { skip: !canDropRoot },
  async () => {
    const home = mkdtempSync(join(tmpdir(), 'ferry-nobody-'));
    try {
      const argv = [
        '--reuid=65534',
        '--regid=65534',
        '--clear-groups',
        'env',
        `HOME=${home}`,
        `FERRY_LAB_DIR=${home}/labs`,
      ];
      const r = await new Promise<{ code: number; stdout: string }>((resolve) => {
        execFile(
          'setpriv',
          [
            ...argv,
            process.execPath,
            join(PACKAGE_ROOT, 'bin', 'ferry.js'),
            'lab',
            'up',
            '--name',
            'zy',
            '--json',
          ],
          (err, stdout) =>
            resolve({
              code: err ? (typeof err.code === 'number' ? err.code : -1) : 0,
              stdout: String(stdout),
            }),
        );
      });
      assert.equal(r.code, 1, r.stdout);
      assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'FERRY_E_NOT_ROOT');
      assert.deepEqual(await findLabObjects('zy'), { namespaces: [], links: [] });
      assert.ok(!existsSync(join(home, 'labs')));
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  },
);
