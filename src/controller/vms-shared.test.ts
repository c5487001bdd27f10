/**
 * `vm create --shared` against the fake agent: the spec the controller builds (the file itself, its format
 * and size, no overlay), and what it refuses before anything is reserved.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryError } from '../common/errors.ts';
import { MIB } from '../common/spec.ts';
import { FakeAgent } from '../testing/fake-agent.ts';
import { createController, type Controller } from './controller.ts';
import { createJoinToken } from './tokens.ts';

const code = async (p: Promise<unknown>): Promise<string> => {
  try {
    await p;
    return 'no error';
  } catch (e) {
    assert.ok(e instanceof FerryError, String(e));
    return e.code;
  }
};

test(
  'vm create --shared: the disk is the file (qcow2 or raw as qemu-img says); bad combinations are refused, nothing created',
  { timeout: 60_000 },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ferry-vms-shared-'));
    let ctl: Controller | undefined;
    const agent = new FakeAgent();
    try {
      ctl = await createController({ dataDir: dir, heartbeats: false });
      const boot = await ctl.ca.issueAgentCert('h1', ['127.0.0.1']);
      await agent.start({ caPem: ctl.ca.caCertPem, ...boot, controllerPin: ctl.ca.controllerPin });
      const port = agent.port;
      await agent.stop();
      const { token } = createJoinToken(ctl.store);
      const joined = await ctl.hosts.join(
        { token, name: 'h1', agentUrl: `https://127.0.0.1:${port}` },
        'https://127.0.0.1:1',
        '127.0.0.1',
      );
      await agent.start(
        {
          caPem: joined.caCertPem,
          certPem: joined.certPem,
          keyPem: joined.keyPem,
          controllerPin: joined.controllerPin,
        },
        port,
      );
      await ctl.hosts.poll('h1');

      const raw = join(dir, 'disk.raw');
      execFileSync('qemu-img', ['create', '-q', '-f', 'raw', raw, '8M']);
      const qcow = join(dir, 'disk.qcow2');
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', qcow, '16M']);

      const boots = await ctl.vms.create({ name: 'b1', memory: '64M', diskImage: raw, shared: true });
      assert.equal(boots.spec.boot.kind, 'disk', 'alone, the shared disk is what the VM boots');
      assert.deepEqual(boots.spec.disks, [
        { id: 'vda', sizeBytes: 8 * MIB, shared: true, path: raw, format: 'raw' },
      ]);
      const data = await ctl.vms.create({
        name: 'd1',
        memory: '64M',
        image: 'tiny',
        diskImage: qcow,
        shared: true,
      });
      assert.deepEqual(
        data.spec.boot,
        { kind: 'kernel', image: 'tiny' },
        'with a kernel image it is a data disk',
      );
      assert.equal(data.spec.guestChannel, true);
      assert.deepEqual(data.spec.disks, [
        { id: 'vda', sizeBytes: 16 * MIB, shared: true, path: qcow, format: 'qcow2' },
      ]);

      assert.equal(
        await code(ctl.vms.create({ name: 'x1', shared: true })),
        'FERRY_E_USAGE',
        '--shared without --disk-image',
      );
      assert.equal(
        await code(ctl.vms.create({ name: 'x2', diskImage: qcow, shared: true, disk: '1G' })),
        'FERRY_E_USAGE',
        'a shared disk is never grown',
      );
      assert.equal(
        await code(ctl.vms.create({ name: 'x3', image: 'tiny', diskImage: qcow })),
        'FERRY_E_USAGE',
        'an image and a boot disk image, as before',
      );
      assert.deepEqual(
        ctl.vms.list().map((v) => v.name),
        ['b1', 'd1'],
        'the refusals created nothing',
      );
    } finally {
      await agent.stop().catch(() => undefined);
      await ctl?.close();
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
