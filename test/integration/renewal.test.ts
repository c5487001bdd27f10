/**
 * Agent certificate renewal in a real 2-host lab whose controller issues certificates of 45 s: both agents
 * renew by themselves after two thirds of that, without a restart; `ferry host show` shows the new
 * validity and when it was renewed; the certificate on each host's disk is the one reported; and a live
 * migration over TLS (the agents' renewed certificates on both ends) still completes with the guest's
 * memory intact.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { HostJson } from '../../src/common/api.ts';
import type { MigrationJson } from '../../src/common/migration.ts';
import { TestCluster, waitUntil } from '../../src/testing/cluster.ts';

const VM = 'r1';
const LIFETIME_S = 45;
const cluster = new TestCluster('rn');

describe('agent certificate renewal', { timeout: 4 * 60_000 }, () => {
  before(async () => {
    await cluster.up(2, { serverEnv: { FERRY_AGENT_CERT_SECONDS: String(LIFETIME_S) } });
    await cluster.ferryJson(['vm', 'create', VM, '--memory', '128M', '--host', 'h1']);
    await cluster.guest(VM, 'dirty', 'start', '--mib', '16', '--rate', '2');
  });
  after(() => cluster.down());

  it('each agent renews before expiry, host show says so, and a live migration over TLS still works', async () => {
    const renewed = await waitUntil(
      'both agents to renew their certificates',
      async () => {
        const hosts = await Promise.all(['h1', 'h2'].map((h) => cluster.ferryJson<HostJson>(['host', 'show', h])));
        return hosts.every((h) => h.certificate?.renewedAt != null && h.state === 'ready') ? hosts : null;
      },
      90_000,
      1000,
    );
    for (const h of renewed) {
      const c = h.certificate!;
      const lifetime = Date.parse(c.notAfter) - Date.parse(c.notBefore);
      assert.ok(lifetime <= (LIFETIME_S + 10) * 1000, `${h.name}: the lab's short lifetime (${c.notBefore} – ${c.notAfter})`);
      // The certificate in use is the renewed one: it starts at the renewal (less the CA's backdating).
      assert.ok(Date.parse(c.notBefore) >= Date.parse(c.renewedAt!) - (LIFETIME_S / 10 + 2) * 1000, `${h.name}: valid from ${c.notBefore}, renewed at ${c.renewedAt}`);
      assert.ok(Date.parse(c.notAfter) > Date.parse(c.renewedAt!), `${h.name}: valid after its renewal`);
      const onDisk = new X509Certificate(readFileSync(join(cluster.hostDir(h.name), 'cert.pem')));
      assert.ok(Date.parse(onDisk.validTo) >= Date.parse(c.notAfter), `${h.name}: the certificate on disk is the renewed one (or newer)`);
      assert.match(readFileSync(cluster.current.hosts.find((x) => x.name === h.name)!.log, 'utf8'), /certificate renewed/);
    }

    const m = await cluster.ferryJson<MigrationJson>(['vm', 'migrate', VM, '--to', 'h2', '--wait'], [0, 1]);
    assert.equal(m.state, 'completed', `${m.state} ${JSON.stringify(m.error)}`);
    assert.equal((await cluster.vmShow(VM)).host, 'h2');
    const verify = await cluster.guest<{ ok: boolean }>(VM, 'dirty', 'verify');
    assert.equal(verify.ok, true, `dirty verify ${JSON.stringify(verify)}`);
    // Past the first certificates' whole lifetime, the hosts still answer: the renewals kept them reachable.
    const hosts = await cluster.ferryJson<HostJson[]>(['host', 'list']);
    assert.deepEqual(hosts.map((h) => h.state), ['ready', 'ready']);
  });
});
