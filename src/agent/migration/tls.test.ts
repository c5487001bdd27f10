import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dhParamsPem, writeQemuTlsDir } from './tls.ts';

const openssl = ['/usr/bin/openssl', '/bin/openssl'].find((p) => existsSync(p));

test('the DH parameters are the 2048-bit MODP group as OpenSSL reads them', { skip: openssl === undefined && 'no openssl here' }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-dh-'));
  try {
    const file = join(dir, 'dh.pem');
    writeFileSync(file, dhParamsPem());
    const out = execFileSync(openssl!, ['dhparam', '-in', file, '-check', '-noout', '-text'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    assert.match(out, /DH Parameters: \(2048 bit\)/);
    assert.match(out, /GROUP: modp_2048/, 'OpenSSL knows it as the published group');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("QEMU's x509 directory holds the CA, the pair for both ends and the DH parameters; keys are 0600", async () => {
  const root = mkdtempSync(join(tmpdir(), 'ferry-tlsdir-'));
  try {
    const pem = (kind: string): string => `-----BEGIN ${kind}-----\nAAAA\n-----END ${kind}-----\n`;
    const dir = await writeQemuTlsDir(join(root, 'tls'), { caPem: pem('CERTIFICATE'), certPem: pem('CERTIFICATE'), keyPem: pem('PRIVATE KEY') });
    for (const f of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem', 'client-cert.pem', 'client-key.pem', 'dh-params.pem']) {
      assert.ok(existsSync(join(dir, f)), f);
    }
    assert.equal(readFileSync(join(dir, 'dh-params.pem'), 'utf8'), dhParamsPem());
    assert.equal(statSync(join(dir, 'server-key.pem')).mode & 0o777, 0o600);
    assert.equal(statSync(dir).mode & 0o777, 0o700);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
