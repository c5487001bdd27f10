/**
 * Declarative VMs and the CLI's output, through the real CLI in a one-host lab: a VM created from flags,
 * shown as YAML, deleted and created again from that file has the same spec — for the tiny guest (memory,
 * vCPUs, a disk, an address) and for a VM on an imported image (its disk an overlay whose base the file
 * names by the image's name); `vm show` lists the backing chain; lists print names and header-less tables;
 * `ferry version -o json` lists the client, the server and every agent.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { VmSpec } from '../../src/common/spec.ts';
import { PACKAGE_ROOT } from '../../src/common/paths.ts';
import { readLabState } from '../../src/lab/index.ts';
import { LabHarness } from './helpers.ts';

interface VmDoc {
  name: string;
  host: string;
  state: string;
  ip: string | null;
  spec: VmSpec;
}

const h = new LabHarness('o');
const pkgVersion = (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;

/** show -o yaml, delete, create -f that file: the spec the controller stores is the same. */
async function roundTrip(name: string): Promise<{ manifest: Record<string, unknown>; before: VmDoc; after: VmDoc }> {
  const before = await h.ferryJson<VmDoc>(['vm', 'show', name]);
  const shown = await h.ferry(['vm', 'show', name, '-o', 'yaml']);
  assert.equal(shown.code, 0, shown.stderr);
  const file = join(h.root, `${name}.yaml`);
  writeFileSync(file, shown.stdout);
  await h.ferryJson(['vm', 'delete', name]);
  const created = await h.ferry(['vm', 'create', name, '-f', file, '--no-wait-ready', '-o', 'json']);
  assert.equal(created.code, 0, `create -f ${file}:\n${shown.stdout}\n${created.stdout}${created.stderr}`);
  const after = await h.ferryJson<VmDoc>(['vm', 'show', name]);
  return { manifest: parseYaml(shown.stdout) as Record<string, unknown>, before, after };
}

describe('declarative VMs and output formats, in a one-host lab', { timeout: 480_000 }, () => {
  before(async () => {
    const up = await h.ferry(['lab', 'up', '--hosts', '1', '--name', h.lab, '--json'], 180_000);
    h.state = readLabState({ name: h.lab, dataRoot: h.dataRoot });
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
  });

  after(() => h.down());

  it('a tiny guest from flags comes back from its own YAML with the same spec', async () => {
    await h.ferryJson(['vm', 'create', 't1', '--memory', '96M', '--vcpus', '2', '--disk', '16M']);
    const { manifest, before, after } = await roundTrip('t1');
    assert.deepEqual(
      { memory: manifest.memory, vcpus: manifest.vcpus, disk: manifest.disk, image: manifest.image },
      { memory: '96M', vcpus: 2, disk: '16M', image: 'tiny' },
      JSON.stringify(manifest),
    );
    assert.ok(before.ip, 'the lab gives the VM an address');
    assert.equal(manifest.ip, before.spec.nics[0]?.ip, 'the address is part of the file');
    assert.deepEqual(after.spec, before.spec);
  });

  it('a VM on an imported image: the file names the image, vm show lists the backing chain', async () => {
    const base = join(h.root, 'base.raw');
    writeFileSync(base, Buffer.alloc(4 * 2 ** 20));
    await h.ferryJson(['image', 'import', 'img1', base]);
    await h.ferryJson(['vm', 'create', 'd1', '--image', 'img1', '--disk', '8M', '--memory', '64M', '--no-wait-ready']);
    const human = await h.ferry(['vm', 'show', 'd1']);
    assert.match(human.stdout, /^disk +vda 8\.0 MiB overlay \(.+\) → base .+ \(raw, image img1\)$/m, human.stdout);
    assert.match(human.stdout, /^boot +disk/m);
    assert.match(human.stdout, /^firmware +bios/m);
    const { manifest, before, after } = await roundTrip('d1');
    assert.equal(manifest.image, 'img1', JSON.stringify(manifest));
    assert.equal(manifest.diskImage, undefined, 'the base is the image, not a path of its own');
    assert.deepEqual(after.spec, before.spec);
    assert.ok(before.spec.disks[0]?.backing, 'the disk is an overlay');
  });

  it('lists print names and header-less tables; ferry version -o json lists the client, the server and every agent', async () => {
    const names = await h.ferry(['vm', 'list', '-o', 'name']);
    assert.deepEqual(names.stdout.trim().split('\n').sort(), ['d1', 't1']);
    const bare = await h.ferry(['vm', 'list', '--no-headers']);
    assert.equal(bare.stdout.trim().split('\n').length, 2, bare.stdout);
    assert.ok(!bare.stdout.includes('NAME'));
    const wide = await h.ferry(['host', 'list', '-o', 'wide']);
    // Wide adds the agent's version, the protocol range it serves and its certificate's end to the default columns.
    assert.match(wide.stdout.split('\n')[0]!, /PROTOCOL .* AGENT +SERVES +CERT-EXPIRES/);

    const v = await h.ferry(['version', '-o', 'json']);
    assert.equal(v.code, 0, v.stderr);
    const doc = JSON.parse(v.stdout) as {
      client: { version: string };
      server: { version: string; agentProtocol: { current: number; min: number } };
      agents: { host: string; version: string; protocol: { current: number; min: number } }[];
    };
    assert.equal(doc.client.version, pkgVersion);
    assert.equal(doc.server.version, pkgVersion);
    assert.deepEqual(
      doc.agents.map((a) => [a.host, a.version, a.protocol.current]),
      [['h1', pkgVersion, doc.server.agentProtocol.current]],
    );
  });
});
