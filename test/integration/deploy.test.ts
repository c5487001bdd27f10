/**
 * Issue #14 parts 3–5 in one 2-host lab: API tokens with roles (a read-only token reads but is refused a
 * write with 403, a revoked token is refused), a rolling upgrade (h2's agent plays the previous protocol
 * version, `ferry host list` shows each host's version, and VMs migrate to and from it), migration traffic
 * on the configured migration network and port range (agents restarted with `--config FILE` and
 * `--migration-cidr`/`--migration-ports`; the destination's migration URI says where it listened), and a
 * second lab brought up beside the first keeping its own CLI context.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { HostJson } from '../../src/common/api.ts';
import type { MigrationJson } from '../../src/common/migration.ts';
import { AGENT_PROTOCOL } from '../../src/common/protocol.ts';
import { labRestartAgent, readLabState, type LabState } from '../../src/lab/index.ts';
import { LabHarness } from './helpers.ts';

const run = promisify(execFile);

interface ErrorDoc {
  error: { code: string };
}

test('deploy: token roles, an agent a protocol version behind, the migration network and ports, two labs’ contexts', { timeout: 600_000 }, async () => {
  const h = new LabHarness('dep');
  const second = `${h.lab}b`;
  try {
    const up = await h.ferry(['lab', 'up', '--hosts', '2', '--name', h.lab, '--json'], 180_000);
    assert.equal(up.code, 0, up.stderr);
    h.state = JSON.parse(up.stdout) as LabState;
    const k = h.state.network.index;

    // --- tokens: read-only reads, is refused writes; a revoked token is refused everything
    const ro = await h.ferryJson<{ id: string; role: string; token: string }>(['token', 'create', '--role', 'read-only']);
    assert.equal(ro.role, 'read-only');
    const hostsRo = await h.ferryJson<HostJson[]>(['host', 'list', '--token', ro.token]);
    assert.equal(hostsRo.length, 2);
    const write = await h.ferryRaw(['vm', 'create', 'nope', '--memory', '128M', '--token', ro.token]);
    assert.equal(write.code, 2, write.stdout + write.stderr);
    assert.equal((JSON.parse(write.stdout) as ErrorDoc).error.code, 'FERRY_E_READ_ONLY');
    const vmsAfter = await h.ferryJson<{ name: string }[]>(['vm', 'list']);
    assert.deepEqual(vmsAfter, [], 'the refused write created nothing');
    const tokens = await h.ferryJson<{ id: string; role: string }[]>(['token', 'list']);
    assert.deepEqual(tokens.map((t) => t.role).sort(), ['admin', 'read-only']);
    await h.ferryJson(['token', 'revoke', ro.id]);
    const revoked = await h.ferryRaw(['host', 'list', '--token', ro.token]);
    assert.equal((JSON.parse(revoked.stdout) as ErrorDoc).error.code, 'FERRY_E_UNAUTHORIZED');

    // --- a migration network apart from the management one: a second subnet on each host's link
    const migCidr = `10.233.${k}.0/24`;
    for (const host of h.state.hosts) {
      const i = Number(host.name.slice(1));
      await run('ip', ['-n', host.namespace, 'addr', 'add', `10.233.${k}.${10 + i}/24`, 'dev', 'eth0']);
    }
    // h1 from a config file (the way deploy/agent.yaml does it), h2 by flags and playing protocol N-1.
    const h1Config = join(h.root, 'agent-h1.yaml');
    writeFileSync(h1Config, `migrationCidr: ${migCidr}\nmigrationPorts: 49300-49309\n`);
    await labRestartAgent(h.lab, 1, { dataRoot: h.dataRoot, agentArgs: ['--config', h1Config] });
    await labRestartAgent(h.lab, 2, {
      dataRoot: h.dataRoot,
      agentArgs: ['--migration-cidr', migCidr, '--migration-ports', '49310-49319', '--protocol', String(AGENT_PROTOCOL - 1)],
    });
    h.state = readLabState({ name: h.lab, dataRoot: h.dataRoot });

    // --- ferry host list shows each host's version
    const hosts = await h.ferryJson<HostJson[]>(['host', 'list']);
    const byName = new Map(hosts.map((x) => [x.name, x]));
    assert.equal(byName.get('h1')?.agent?.protocol.current, AGENT_PROTOCOL);
    assert.equal(byName.get('h2')?.agent?.protocol.current, AGENT_PROTOCOL - 1);
    assert.equal(byName.get('h2')?.state, 'ready', 'an agent one version behind is a ready host');
    assert.equal(byName.get('h1')?.inventory?.migrationAddress, `10.233.${k}.11`);
    assert.equal(byName.get('h2')?.inventory?.migrationAddress, `10.233.${k}.12`);
    assert.ok(byName.get('h1')?.certificate !== null, 'the current agent reports its certificate');
    assert.equal(byName.get('h2')?.certificate, null, 'the older one is not asked (its version has no such route)');
    const table = await h.ferry(['host', 'list']);
    assert.match(table.stdout, /PROTOCOL/);
    assert.match(table.stdout, new RegExp(`h2 .* ${AGENT_PROTOCOL - 1}\\b`));

    // --- the old agent's VM migrates to the new agent and back, on the migration network and ports
    await h.ferryJson(['vm', 'create', 'd1', '--memory', '128M', '--host', 'h2']);
    const uriOf = (host: string, id: string): string =>
      (JSON.parse(readFileSync(join(h.hostDir(host), 'migrations', `${id}.json`), 'utf8')) as { view: { uri: string } }).view.uri;
    for (const [to, ports] of [
      ['h1', [49300, 49309]],
      ['h2', [49310, 49319]],
    ] as const) {
      const m = await h.ferryJson<MigrationJson>(['vm', 'migrate', 'd1', '--to', to, '--wait'], [0, 1]);
      assert.equal(m.state, 'completed', JSON.stringify(m.error));
      assert.equal((await h.vmShow('d1')).host, to);
      const uri = uriOf(to, m.id);
      const match = /^tcp:10\.233\.(\d+)\.(\d+):(\d+)$/.exec(uri);
      assert.ok(match, `the destination listened on the migration network: ${uri}`);
      assert.equal(Number(match[1]), k);
      assert.ok(Number(match[3]) >= ports[0] && Number(match[3]) <= ports[1], `port ${match[3]} in ${ports.join('-')}`);
    }

    // --- a second lab beside it adds its own context; each command reaches the lab its context names
    const up2 = await h.ferry(['lab', 'up', '--hosts', '1', '--name', second, '--json'], 180_000);
    assert.equal(up2.code, 0, up2.stderr);
    const contexts = await h.ferryJson<{ name: string; current: boolean }[]>(['context', 'list']);
    assert.deepEqual(contexts.map((c) => [c.name, c.current]).sort(), [[h.lab, false], [second, true]].sort());
    assert.equal((await h.ferryJson<HostJson[]>(['host', 'list'])).length, 1, 'the current context is the new lab');
    assert.equal((await h.ferryJson<HostJson[]>(['host', 'list', '--context', h.lab])).length, 2);
    await h.ferryJson(['context', 'use', h.lab]);
    assert.deepEqual((await h.ferryJson<{ name: string }[]>(['vm', 'list'])).map((v) => v.name), ['d1']);
    const down2 = await h.ferry(['lab', 'down', '--name', second, '--json']);
    assert.equal(down2.code, 0, down2.stderr);
    const left = await h.ferryJson<{ name: string; current: boolean }[]>(['context', 'list']);
    assert.deepEqual(left.map((c) => [c.name, c.current]), [[h.lab, true]]);
  } finally {
    await h.ferry(['lab', 'down', '--name', second, '--json']).catch(() => undefined);
    await h.down();
  }
});
