import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError } from '../common/errors.ts';
import { defaultVmSpec, MIB } from '../common/spec.ts';
import { buildQemuArgv, kernelCmdline, type VmPaths } from './argv.ts';

const run = '/var/lib/ferry/agents/h1/vms/a1';
const paths = (over: Partial<VmPaths> = {}): VmPaths => ({
  qmpSocket: `${run}/qmp.sock`,
  observeSocket: `${run}/qmp-observe.sock`,
  guestSocket: `${run}/guest.sock`,
  serialLog: `${run}/serial.log`,
  pidfile: `${run}/qemu.pid`,
  kernel: '/cache/images/tiny/vmlinuz',
  initrd: '/cache/images/tiny/initramfs.gz',
  disks: { vda: `${run}/vda.qcow2` },
  taps: { net0: 'fa1n0' },
  ...over,
});

const common = [
  '-nodefaults', '-nographic', '-no-user-config',
  '-qmp', `unix:${run}/qmp.sock,server=on,wait=off`,
  '-chardev', `socket,id=qmpobs,path=${run}/qmp-observe.sock,server=on,wait=off`,
  '-mon', 'chardev=qmpobs,mode=control',
  '-serial', `file:${run}/serial.log`,
  '-pidfile', `${run}/qemu.pid`,
];

test('minimal tiny-guest VM: exact argv', () => {
  const spec = defaultVmSpec('a1');
  assert.deepEqual(buildQemuArgv(spec, paths(), { accel: 'tcg' }), [
    '-name', 'a1,debug-threads=on',
    '-machine', 'pc-q35-10.0,accel=tcg',
    '-cpu', 'qemu64',
    '-m', '256M',
    '-smp', '1',
    ...common,
    '-kernel', '/cache/images/tiny/vmlinuz',
    '-initrd', '/cache/images/tiny/initramfs.gz',
    '-append', 'console=ttyS0 quiet panic=-1 ferry.name=a1',
    '-chardev', `socket,id=guest0,path=${run}/guest.sock,server=on,wait=off`,
    '-device', 'virtio-serial-pci,id=vser0',
    '-device', 'virtserialport,bus=vser0.0,chardev=guest0,name=org.ferry.guest.0',
  ]);
});

test('disk and NIC: stable node names, tap netdev, MAC, ip on the kernel command line', () => {
  const spec = defaultVmSpec('a1', {
    vcpus: 2,
    memoryBytes: 128 * MIB,
    guestChannel: false,
    boot: { kind: 'kernel', image: 'tiny', cmdline: 'loglevel=3' },
    disks: [{ id: 'vda', sizeBytes: 64 * MIB, shared: false }],
    nics: [{ id: 'net0', mac: '52:54:00:12:34:56', network: 'vm0', ip: '10.0.3.7/24' }],
  });
  assert.deepEqual(buildQemuArgv(spec, paths(), { accel: 'kvm' }), [
    '-name', 'a1,debug-threads=on',
    '-machine', 'pc-q35-10.0,accel=kvm',
    '-cpu', 'qemu64',
    '-m', '128M',
    '-smp', '2',
    ...common,
    '-kernel', '/cache/images/tiny/vmlinuz',
    '-initrd', '/cache/images/tiny/initramfs.gz',
    '-append', 'console=ttyS0 quiet panic=-1 ferry.name=a1 ferry.ip=10.0.3.7/24 loglevel=3',
    '-blockdev', `driver=file,node-name=disk-vda,filename=${run}/vda.qcow2`,
    '-blockdev', 'driver=qcow2,node-name=fmt-vda,file=disk-vda',
    '-device', 'virtio-blk-pci,id=vda,drive=fmt-vda',
    '-netdev', 'tap,id=net0,ifname=fa1n0,script=no,downscript=no',
    '-device', 'virtio-net-pci,id=net0,netdev=net0,mac=52:54:00:12:34:56',
  ]);
});

test('disk boot: no kernel, first disk gets bootindex', () => {
  const spec = defaultVmSpec('d1', { boot: { kind: 'disk' }, guestChannel: false, disks: [{ id: 'vda', sizeBytes: MIB, shared: true, path: '/shared/d1.qcow2' }] });
  const argv = buildQemuArgv(spec, paths({ kernel: undefined, initrd: undefined, disks: { vda: '/shared/d1.qcow2' } }), { accel: 'tcg' });
  assert.ok(!argv.includes('-kernel'));
  assert.ok(argv.includes('virtio-blk-pci,id=vda,drive=fmt-vda,bootindex=0'));
  assert.throws(() => buildQemuArgv({ ...spec, disks: [] }, paths(), { accel: 'tcg' }), { code: 'FERRY_E_BAD_SPEC' });
});

test('a shared disk opens its own file in the format qemu-img said, locks on (no share-rw)', () => {
  const raw = defaultVmSpec('d2', { disks: [{ id: 'vda', sizeBytes: MIB, shared: true, path: '/shared/d2.raw', format: 'raw' }] });
  const argv = buildQemuArgv(raw, paths({ disks: { vda: '/shared/d2.raw' } }), { accel: 'tcg' });
  assert.ok(argv.includes('driver=file,node-name=disk-vda,filename=/shared/d2.raw'));
  assert.ok(argv.includes('driver=raw,node-name=fmt-vda,file=disk-vda'));
  assert.ok(!argv.some((a) => /share-rw|locking=off/.test(a)), 'QEMU image locking stays on');
});

test('destination argv is the source argv plus -S -incoming defer (it never runs the guest by itself)', () => {
  const spec = defaultVmSpec('a1', {
    disks: [{ id: 'vda', sizeBytes: 64 * MIB, shared: false }],
    nics: [{ id: 'net0', mac: '52:54:00:00:00:01', network: 'vm0' }],
  });
  const src = buildQemuArgv(spec, paths(), { accel: 'tcg' });
  const dst = buildQemuArgv(spec, paths(), { accel: 'tcg', incoming: 'defer' });
  assert.deepEqual(dst, [...src, '-S', '-incoming', 'defer']);
});

test('TLS credentials object for the migration stream', () => {
  const argv = buildQemuArgv(defaultVmSpec('a1'), paths(), { accel: 'tcg', tlsCredsDir: { dir: '/etc/ferry/tls', endpoint: 'server' }, incoming: 'defer' });
  assert.deepEqual(argv.slice(-5), ['-object', 'tls-creds-x509,id=tls0,endpoint=server,dir=/etc/ferry/tls,verify-peer=on', '-S', '-incoming', 'defer']);
});

test('commas, relative paths and missing paths are refused, never escaped', () => {
  const spec = defaultVmSpec('a1', { disks: [{ id: 'vda', sizeBytes: MIB, shared: false }], nics: [{ id: 'net0', mac: '52:54:00:00:00:01', network: 'vm0' }] });
  const bad: Partial<VmPaths>[] = [
    { qmpSocket: '/tmp/x,server=off' },
    { serialLog: 'relative/serial.log' },
    { disks: { vda: '/tmp/a,file.driver=ssh' } },
    { disks: {} },
    { taps: { net0: 'tap0,script=/bin/sh' } },
    { taps: {} },
    { kernel: undefined },
    { guestSocket: '/tmp/a\nb' },
  ];
  for (const over of bad) {
    assert.throws(() => buildQemuArgv(spec, paths(over), { accel: 'tcg' }), (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_BAD_INPUT', JSON.stringify(over));
  }
  assert.throws(() => buildQemuArgv({ ...spec, cpuModel: 'qemu64,+vmx' }, paths(), { accel: 'tcg' }), { code: 'FERRY_E_BAD_INPUT' });
  assert.throws(() => buildQemuArgv({ ...spec, memoryBytes: 100 * MIB + 1 }, paths(), { accel: 'tcg' }), { code: 'FERRY_E_BAD_SPEC' });
});

test('argv is data: no shell, no element is a shell command line', () => {
  const argv = buildQemuArgv(defaultVmSpec('a1'), paths(), { accel: 'tcg' });
  assert.ok(argv.every((a) => typeof a === 'string'));
  assert.ok(!argv.some((a) => /^(sh|bash|-c)$/.test(a) || a.includes('exec:')));
  assert.equal(kernelCmdline(defaultVmSpec('x9')), 'console=ttyS0 quiet panic=-1 ferry.name=x9');
});

test('qemu-guest-agent port: one virtio-serial controller for both channels; the guest agent alone also gets one', () => {
  const both = buildQemuArgv(defaultVmSpec('a1', { guestAgent: true }), paths({ qgaSocket: '/run/ferry/a1/qga.sock' }), { accel: 'tcg' });
  assert.equal(both.filter((a) => a === 'virtio-serial-pci,id=vser0').length, 1);
  assert.ok(both.includes('socket,id=qga0,path=/run/ferry/a1/qga.sock,server=on,wait=off'));
  assert.ok(both.includes('virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0'));
  const alone = buildQemuArgv(defaultVmSpec('a1', { guestChannel: false, guestAgent: true }), paths({ qgaSocket: '/q.sock' }), { accel: 'tcg' });
  assert.ok(alone.includes('virtio-serial-pci,id=vser0') && !alone.some((a) => a.includes('guest0')));
  const none = buildQemuArgv(defaultVmSpec('a1', { guestChannel: false }), paths(), { accel: 'tcg' });
  assert.ok(!none.some((a) => a.includes('vser0')));
  assert.throws(() => buildQemuArgv(defaultVmSpec('a1', { guestAgent: true }), paths(), { accel: 'tcg' }), { code: 'FERRY_E_BAD_INPUT' });
});

test('direct kernel boot: the files and the command line exactly as the spec gives them; no bootindex; bad lines refused', () => {
  const spec = defaultVmSpec('k1', {
    boot: { kind: 'direct', kernel: '/img/vmlinuz-6.1', initrd: '/img/initrd.img-6.1', append: 'root=/dev/vda rw console=ttyS0 net.ifnames=0' },
    guestChannel: false,
    disks: [{ id: 'vda', sizeBytes: MIB, shared: false, backing: { path: '/img/root.raw', format: 'raw' } }],
  });
  const argv = buildQemuArgv(spec, paths({ kernel: undefined, initrd: undefined }), { accel: 'tcg' });
  const at = argv.indexOf('-kernel');
  assert.deepEqual(argv.slice(at, at + 6), ['-kernel', '/img/vmlinuz-6.1', '-initrd', '/img/initrd.img-6.1', '-append', 'root=/dev/vda rw console=ttyS0 net.ifnames=0']);
  assert.ok(argv.includes('virtio-blk-pci,id=vda,drive=fmt-vda'), 'a kernel boot gives no disk a bootindex');
  for (const append of ['root=/dev/vda init="/bin/sh"', 'a; reboot', 'x=$(id)', 'a\\b']) {
    assert.throws(() => buildQemuArgv({ ...spec, boot: { ...spec.boot, append } as typeof spec.boot }, paths(), { accel: 'tcg' }), { code: 'FERRY_E_BAD_CMDLINE' }, append);
  }
  const noInitrd = buildQemuArgv({ ...spec, boot: { kind: 'direct', kernel: '/k', append: '' } }, paths(), { accel: 'tcg' });
  assert.ok(!noInitrd.includes('-initrd'));
});

test('a cloud-init seed is a read-only CD on virtio-scsi, outside the spec\'s disks; no seed path, no argv', () => {
  const spec = defaultVmSpec('a1', { cloudInit: { instanceId: 'a1-1', hostname: 'a1', sshAuthorizedKeys: [] } });
  const argv = buildQemuArgv(spec, paths({ seed: `${run}/seed.iso` }), { accel: 'tcg' });
  const i = argv.indexOf(`driver=file,node-name=seed-file,filename=${run}/seed.iso,read-only=on`);
  assert.ok(i > 0, argv.join(' '));
  assert.deepEqual(argv.slice(i - 1, i + 7), ['-blockdev', `driver=file,node-name=seed-file,filename=${run}/seed.iso,read-only=on`, '-blockdev', 'driver=raw,node-name=seed,file=seed-file,read-only=on', '-device', 'virtio-scsi-pci,id=scsi0', '-device', 'scsi-cd,id=seed0,drive=seed,bus=scsi0.0']);
  assert.ok(!buildQemuArgv(defaultVmSpec('a1'), paths({ seed: `${run}/seed.iso` }), { accel: 'tcg' }).some((a) => a.includes('seed')));
  assert.throws(() => buildQemuArgv(spec, paths(), { accel: 'tcg' }), { code: 'FERRY_E_BAD_INPUT' });
});
