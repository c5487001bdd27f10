import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError } from '../common/errors.ts';
import { defaultVmSpec } from '../common/spec.ts';
import { checkAptPlan, domainXml, libvirtdConf, parseDomjobinfo, qemuConf } from './libvirt.ts';
import { LIBVIRT_VARIANT, SCENARIOS, parseWith, selectScenarios, withTools } from './scenarios.ts';

const xmlInput = {
  spec: defaultVmSpec('bench1', { memoryBytes: 256 * 1024 * 1024 }),
  accel: 'tcg' as const,
  kernel: '/cache/tiny/vmlinuz',
  initrd: '/cache/tiny/initramfs.gz',
  guestSocket: '/labs/b1/libvirt/h2/guest.sock',
  serialLog: '/labs/b1/libvirt/h2/serial.log',
  ipCidr: '10.99.0.251/24',
  uuid: '3f6d7c1e-0000-4000-8000-000000000001',
  emulator: '/usr/bin/qemu-system-x86_64',
};

test('domain XML: the guest Ferry boots, on this host’s paths, with ACPI and the same UUID everywhere', () => {
  const xml = domainXml(xmlInput);
  assert.match(xml, /<domain type='qemu'>/);
  assert.match(xml, /<memory unit='MiB'>256<\/memory>/);
  assert.match(xml, /<vcpu>1<\/vcpu>/);
  assert.match(xml, /machine='pc-q35-10.0'/);
  assert.match(xml, /<model fallback='forbid'>qemu64<\/model>/);
  assert.match(xml, /<kernel>\/cache\/tiny\/vmlinuz<\/kernel>/);
  assert.match(xml, /<initrd>\/cache\/tiny\/initramfs.gz<\/initrd>/);
  // The tiny guest takes its name and address from the command line, as under Ferry.
  assert.match(xml, /<cmdline>[^<]*ferry\.name=libvirt1 ferry\.ip=10\.99\.0\.251\/24[^<]*<\/cmdline>/);
  assert.match(xml, /<acpi\/>/);
  assert.match(xml, /<uuid>3f6d7c1e-0000-4000-8000-000000000001<\/uuid>/);
  assert.match(xml, /<emulator>\/usr\/bin\/qemu-system-x86_64<\/emulator>/);
  assert.match(xml, /<target dev='lvtap0' managed='no'\/>\s*<model type='virtio'\/>/);
  assert.match(xml, /<source mode='bind' path='\/labs\/b1\/libvirt\/h2\/guest.sock'\/>\s*<target type='virtio' name='org.ferry.guest.0'\/>/);
  assert.match(xml, /<memballoon model='none'\/>/);
  assert.equal(domainXml({ ...xmlInput, accel: 'kvm' }).startsWith("<domain type='kvm'>"), true);
});

test('domain XML escapes what XML would read as markup', () => {
  const xml = domainXml({ ...xmlInput, serialLog: "/tmp/a'b<c>&d" });
  assert.match(xml, /<source path='\/tmp\/a&apos;b&lt;c&gt;&amp;d'\/>/);
});

test('the daemon configs: plain TCP without auth, a UUID of its own, root without cgroups or namespaces', () => {
  const conf = libvirtdConf('11111111-2222-4333-8444-555555555555');
  assert.match(conf, /^listen_tls = 0$/m);
  assert.match(conf, /^listen_tcp = 1$/m);
  assert.match(conf, /^auth_tcp = "none"$/m);
  assert.match(conf, /^host_uuid = "11111111-2222-4333-8444-555555555555"$/m);
  const q = qemuConf();
  for (const line of ['user = "root"', 'security_driver = "none"', 'cgroup_controllers = [ ]', 'namespaces = [ ]']) {
    assert.ok(q.split('\n').includes(line), line);
  }
});

// `virsh domjobinfo libvirt1 --completed` on the destination, libvirt 9.0, this machine.
const DOMJOBINFO = `Job type:         Completed
Operation:        Incoming migration
Time elapsed:     937          ms
Time elapsed w/o network: 935          ms
Data processed:   215.797 MiB
Data remaining:   0.000 B
Data total:       256.134 MiB
Memory processed: 215.797 MiB
Memory remaining: 0.000 B
Memory total:     256.134 MiB
Memory bandwidth: 240.148 MiB/s
Dirty rate:       0            pages/s
Page size:        4096         bytes
Iteration:        3
Postcopy requests: 0
Constant pages:   10283
Normal pages:     55127
Normal data:      215.340 MiB
Total downtime:   255          ms
Downtime w/o network: 253          ms
Setup time:       4            ms
`;

test('domjobinfo: QEMU total, downtime, bytes and passes; a job without them gives nulls', () => {
  assert.deepEqual(parseDomjobinfo(DOMJOBINFO), {
    elapsedMs: 937,
    downtimeMs: 255,
    memoryBytes: Math.round(215.797 * 1024 * 1024),
    dataBytes: Math.round(215.797 * 1024 * 1024),
    iterations: 3,
  });
  assert.deepEqual(parseDomjobinfo('Job type:         None        \n'), {
    elapsedMs: null,
    downtimeMs: null,
    memoryBytes: null,
    dataBytes: null,
    iterations: null,
  });
});

test('the apt plan is refused when it would install or remove a QEMU package, accepted otherwise', () => {
  const ok = [
    'Inst libvirt0 (9.0.0-4+deb12u2 Debian:12.15/oldstable [amd64])',
    'Inst libvirt-daemon-driver-qemu (9.0.0-4+deb12u2 Debian:12.15/oldstable [amd64])',
    'Conf libvirt0 (9.0.0-4+deb12u2 Debian:12.15/oldstable [amd64])',
  ].join('\n');
  checkAptPlan(ok);
  for (const bad of [
    'Inst qemu-system-x86 [1:10.0.2+ds-2~bpo12+1] (1:7.2+dfsg-7+deb12u7 Debian:12.15/oldstable [amd64])',
    'Remv qemu-system-common [1:10.0.2+ds-2~bpo12+1]',
    'Inst qemu-utils (1:7.2+dfsg-7 Debian:12.15/oldstable [amd64])',
  ]) {
    assert.throws(
      () => checkAptPlan(`${ok}\n${bad}`),
      (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_LIBVIRT_SETUP' && e.message.includes(bad.slice(5, 20)),
    );
  }
});

test('--with: libvirt joins the scenario with other tools only; anything else is bad usage (exit 2)', () => {
  assert.deepEqual(parseWith(undefined), []);
  assert.deepEqual(parseWith('libvirt'), ['libvirt']);
  assert.deepEqual(parseWith('libvirt,libvirt'), ['libvirt']);
  for (const bad of ['', 'proxmox', 'libvirt,xen']) {
    assert.throws(() => parseWith(bad), (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_USAGE' && e.exit === 2);
  }
  const all = withTools(selectScenarios('all'), ['libvirt']);
  for (const s of all) {
    const has = s.variants.some((v) => v.libvirt === true);
    assert.equal(has, s.name === 'baselines', s.name);
  }
  const baselines = all.find((s) => s.name === 'baselines')!;
  assert.equal(baselines.variants.at(-1), LIBVIRT_VARIANT);
  // Its baseline stays raw QMP (cap lifted + 20 ms): libvirt gets a ratio like the others.
  assert.equal(baselines.baseline, 'raw-fast');
  // Without --with, nothing changes.
  assert.deepEqual(withTools(selectScenarios('all'), []), [...SCENARIOS]);
  assert.ok(!SCENARIOS.some((s) => s.variants.some((v) => v.libvirt === true)));
  assert.throws(
    () => withTools(selectScenarios('idle,tls'), ['libvirt']),
    (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_USAGE' && /baselines/.test(e.message),
  );
});
