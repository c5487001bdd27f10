/**
 * `ferry vm create | list | show | start | stop | pause | resume | delete | console | guest`: VM lifecycle through the
 * controller. Creation waits until the agent reports the guest up.
 */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { FerryError } from '../../common/errors.ts';
import { formatBytes } from '../../common/units.ts';
import type { VmJson } from '../../common/api.ts';
import { enc, withClient } from '../../client/api.ts';
import { formatTable } from '../../client/table.ts';
import { clusterOptions, type ClusterFlags } from '../flags.ts';
import { action } from '../output.ts';

export function vmTable(vms: VmJson[]): string {
  return formatTable(
    ['NAME', 'HOST', 'STATE', 'READY', 'MEMORY', 'VCPUS', 'IP', 'BOOT ID'],
    vms.map((v) => [
      v.name,
      v.host,
      v.state,
      v.ready ? 'yes' : 'no',
      v.spec.memoryBytes ? formatBytes(v.spec.memoryBytes) : '-',
      String(v.spec.vcpus ?? '-'),
      v.ip ?? '-',
      v.bootId ?? '-',
    ]),
  );
}

function vmDetail(v: VmJson): string {
  const rows: [string, string][] = [
    ['name', v.name],
    ['host', v.host],
    ['state', v.state],
    ['ready', v.ready ? 'yes (the guest answered)' : 'no'],
    ['memory', formatBytes(v.spec.memoryBytes)],
    ['vcpus', String(v.spec.vcpus)],
    ['ip', v.ip ?? '-'],
    ['boot id', v.bootId ?? '-'],
    [
      'boot',
      v.spec.boot.kind === 'kernel'
        ? `kernel, image ${v.spec.boot.image}`
        : v.spec.boot.kind === 'direct'
          ? `direct kernel ${v.spec.boot.kernel}${v.spec.boot.initrd ? ` + ${v.spec.boot.initrd}` : ''}: ${v.spec.boot.append}`
          : 'disk (SeaBIOS, first disk)',
    ],
    ['disks', v.spec.disks.map((d) => `${d.id} ${formatBytes(d.sizeBytes)}${d.shared ? ' shared' : ''}${d.backing ? ` overlay on ${'path' in d.backing ? d.backing.path : `image ${d.backing.image}`} (${d.backing.format})` : ''}`).join(', ') || '-'],
    ['guest agent', v.spec.guestAgent === true ? 'qemu-guest-agent port' : '-'],
    ['nics', v.spec.nics.map((n) => `${n.id} ${n.mac} on ${n.network}`).join(', ') || '-'],
    ['created', v.createdAt],
  ];
  return formatTable(['FIELD', 'VALUE'], rows).split('\n').slice(1).join('\n');
}

interface CreateFlags extends ClusterFlags {
  memory?: string;
  vcpus?: string;
  disk?: string;
  image?: string;
  host?: string;
  net?: string;
  waitReady?: boolean;
  readyTimeout?: string;
  diskImage?: string;
  guestAgent?: boolean;
  kernel?: string;
  initrd?: string;
  append?: string;
  ip?: string;
}

export function registerVm(program: Command): void {
  const vm = program.command('vm').description('Virtual machines');

  clusterOptions(
    vm
      .command('create')
      .argument('<name>', 'VM name')
      .option('--memory <size>', 'memory, e.g. 256M (default 256M)')
      .option('--vcpus <n>', 'virtual CPUs (default 1)')
      .option('--disk <size>', 'a local disk of this size, e.g. 1G')
      .option('--image <image>', '`tiny`, a directory with vmlinuz + initramfs.gz, or an imported disk image (`ferry image list`) to boot from (default tiny)')
      .option('--host <host>', 'place it on this host (default: the scheduler chooses)')
      .option('--net <network>', 'VM network (default vm0 when the server has one)')
      .option('--disk-image <file>', 'boot from this qcow2 or raw disk (SeaBIOS), under a qcow2 overlay of the VM: nothing is copied')
      .option('--kernel <file>', 'direct kernel boot of this kernel (root disk: --disk-image)')
      .option('--initrd <file>', 'direct kernel boot: its initrd')
      .option('--append <cmdline>', 'direct kernel boot: the kernel command line, e.g. "root=/dev/vda rw console=ttyS0" (no quotes, ; $ or \\ inside)')
      .option('--ip <a.b.c.d/len>', 'reserve this address on the VM network (refused when taken or outside it)')
      .option('--guest-agent', 'add a qemu-guest-agent port (default with --disk-image)')
      .option('--no-guest-agent', 'no qemu-guest-agent port')
      .option('--wait-ready', 'wait until the guest answers (default for the tiny guest); exit 1 if it does not in time (the VM keeps running)')
      .option('--no-wait-ready', 'return as soon as QEMU runs the guest')
      .option('--ready-timeout <duration>', 'how long --wait-ready waits (default 60s)')
      .description('Create and boot a VM'),
  ).action(
    action(async (name: string, f: CreateFlags) => {
      const body: Record<string, unknown> = { name };
      if (f.memory !== undefined) body.memory = f.memory;
      if (f.vcpus !== undefined) {
        const n = Number(f.vcpus);
        if (!Number.isInteger(n) || n < 1) throw new FerryError('FERRY_E_BAD_INPUT', `Bad --vcpus ${JSON.stringify(f.vcpus)}: a whole number ≥ 1.`);
        body.vcpus = n;
      }
      if (f.disk !== undefined) body.disk = f.disk;
      if (f.image !== undefined) body.image = f.image;
      if (f.host !== undefined) body.host = f.host;
      if (f.net !== undefined) body.network = f.net;
      if (f.waitReady !== undefined) body.waitReady = f.waitReady;
      if (f.diskImage !== undefined) body.diskImage = resolve(f.diskImage); // the server resolves nothing relative
      if (f.guestAgent !== undefined) body.guestAgent = f.guestAgent;
      if (f.kernel !== undefined) body.kernel = resolve(f.kernel);
      if (f.initrd !== undefined) body.initrd = resolve(f.initrd);
      if (f.append !== undefined) body.append = f.append;
      if (f.ip !== undefined) body.ip = f.ip;
      if (f.readyTimeout !== undefined) body.readyTimeout = f.readyTimeout;
      const v = await withClient(f, (c) => c.post<VmJson>('/api/v1/vms', body));
      if (f.waitReady === true && !v.ready) {
        // Asked to wait, and the guest did not answer: the operation failed, but the VM exists and runs.
        throw new FerryError('FERRY_E_GUEST_TIMEOUT', `VM ${v.name} runs on ${v.host} (${v.state}), but its guest did not answer within ${f.readyTimeout ?? '60s'}: see \`ferry vm console ${v.name}\`.`, {
          details: { vm: v },
        });
      }
      return { json: v, human: `created ${v.name} on ${v.host}: ${v.state}, ${v.ready ? 'ready' : 'not ready yet'}${v.ip ? `, ${v.ip}` : ''}` };
    }),
  );

  clusterOptions(vm.command('list').description('List VMs')).action(
    action(async (f: ClusterFlags) => {
      const vms = await withClient(f, (c) => c.get<VmJson[]>('/api/v1/vms'));
      return { json: vms, human: () => (vms.length === 0 ? 'no VMs' : vmTable(vms)) };
    }),
  );

  clusterOptions(vm.command('show').argument('<name>', 'VM name').description('Show one VM')).action(
    action(async (name: string, f: ClusterFlags) => {
      const v = await withClient(f, (c) => c.get<VmJson>(`/api/v1/vms/${enc(name)}`));
      return { json: v, human: () => vmDetail(v) };
    }),
  );

  const verbs = {
    start: 'Start a stopped VM',
    stop: 'Stop a VM (ACPI power-down, then quit)',
    pause: 'Pause a running VM',
    resume: "Resume a paused VM (a source left paused by a failed migration: against the destination's discard receipt)",
  } as const;
  for (const verb of ['start', 'stop', 'pause', 'resume'] as const) {
    const cmd = vm.command(verb).argument('<name>', 'VM name').description(verbs[verb]);
    if (verb === 'stop') cmd.option('--force', 'quit QEMU at once, no ACPI power-down');
    clusterOptions(cmd).action(
      action(async (name: string, f: ClusterFlags & { force?: boolean }) => {
        const v = await withClient(f, (c) => c.post<VmJson>(`/api/v1/vms/${enc(name)}/${verb}`, verb === 'stop' && f.force ? { force: true } : {}));
        return { json: v, human: `${v.name}: ${v.state}` };
      }),
    );
  }

  clusterOptions(vm.command('delete').argument('<name>', 'VM name').description('Stop and remove a VM and its disks')).action(
    action(async (name: string, f: ClusterFlags) => {
      const r = await withClient(f, (c) => c.delete<{ deleted: boolean; name: string }>(`/api/v1/vms/${enc(name)}`));
      return { json: r, human: `deleted ${name}` };
    }),
  );

  clusterOptions(vm.command('console').argument('<name>', 'VM name').description("Print the VM's serial console log")).action(
    action(async (name: string, f: ClusterFlags) => {
      const text = await withClient(f, (c) => c.get<string>(`/api/v1/vms/${enc(name)}/console`, { as: 'text' }));
      return { json: { name, console: text }, human: text.replace(/\n$/, '') };
    }),
  );

  clusterOptions(
    vm
      .command('guest')
      .argument('<name>', 'VM name')
      .argument('<command...>', 'the guest tool command (after --)')
      .description("Pass a command to the guest tool; prints the guest's JSON reply"),
  ).action(
    action(async (name: string, command: string[], f: ClusterFlags) => {
      const r = await withClient(f, (c) => c.post<{ reply: unknown }>(`/api/v1/vms/${enc(name)}/guest`, { command: command.join(' ') }));
      return { json: r.reply, human: JSON.stringify(r.reply) };
    }),
  );
}
