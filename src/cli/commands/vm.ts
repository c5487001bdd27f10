/**
 * `ferry vm create | list | show | start | stop | pause | resume | delete | console | guest`: VM lifecycle through the
 * controller. The fields of `vm create` are declared once, in CREATE_FIELDS: that table makes the flags, reads a
 * VM file (`-f vm.yaml`, the same fields, flags given beside it win), and writes one back (`vm show -o yaml`,
 * from the spec the controller stores), so a field added there is a flag, a file key and a shown value at once.
 */
import type { Command } from 'commander';
import { readFileSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { Document, parse as parseYaml } from 'yaml';
import { FerryError } from '../../common/errors.ts';
import { formatBytes, parseDuration, validateName } from '../../common/units.ts';
import type { VmJson } from '../../common/api.ts';
import { MAX_USER_DATA_BYTES, type VmSpec } from '../../common/spec.ts';
import { enc, withClient, type ApiClient } from '../../client/api.ts';
import { renderTable, type Column } from '../../client/table.ts';
import { clusterOptions, durationFlag, intFlag, sizeFlag, type ClusterFlags } from '../flags.ts';
import { action } from '../output.ts';
import type { ImageDoc } from './image.ts';

/** How a field's value is checked before anything is sent, and what it becomes in the request body. */
type FieldKind =
  | 'size' // a size with a unit (`256M`)
  | 'count' // a whole number 1–64
  | 'name' // a Ferry name (host, network)
  | 'text' // passed as given; the server checks it
  | 'path' // a file: made absolute (the server resolves nothing relative), from the cwd or the VM file's folder
  | 'duration' // a duration with a unit (`90s`)
  | 'switch' // `--x` / `--no-x`; true / false in a file
  | 'fileText' // the flag names a file whose text is sent (size-limited); a VM file holds the text itself
  | 'keyFiles'; // repeatable flag, each a file of SSH public keys (one per line); a VM file holds the list of keys

/** What the stored VM says of a field, for `vm show -o yaml`; the images let a disk's base be named. */
type FromVm = (vm: VmJson, images: readonly ImageDoc[]) => string | number | boolean | string[] | undefined;

export interface CreateField {
  /** The field of the create body (POST /api/v1/vms), and its key in a VM file. */
  key: string;
  /** The long flag, when it is not the key in kebab case. */
  flag?: string;
  kind: FieldKind;
  /** `<size>` and the like, for the help. */
  arg?: string;
  help: string;
  /** A switch's `--no-…` help. */
  noHelp?: string;
  /** Where the stored VM holds it. Absent: the field says how to create, not what the VM is. */
  fromVm?: FromVm;
}

const kebab = (key: string): string => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
export const flagOf = (f: CreateField): string => f.flag ?? kebab(f.key);

const firstDisk = (v: VmJson): VmSpec['disks'][number] | undefined => v.spec.disks[0];
const imageAt = (path: string | undefined, images: readonly ImageDoc[]): ImageDoc | undefined =>
  path === undefined ? undefined : images.find((i) => i.path === path);
type Backing = NonNullable<VmSpec['disks'][number]['backing']>;
/** A base given by path (`--disk-image`, or a store image in a spec from before images were named). */
const basePath = (b: Backing | undefined): string | undefined => (b !== undefined && 'path' in b ? b.path : undefined);
/** The store image a disk sits on: named in the spec, or found by the path older specs held. */
const storeImage = (b: Backing | undefined, images: readonly ImageDoc[]): string | undefined =>
  b === undefined ? undefined : 'image' in b ? b.image : imageAt(b.path, images)?.name;
const directBoot = (v: VmJson): Extract<VmSpec['boot'], { kind: 'direct' }> | undefined => (v.spec.boot.kind === 'direct' ? v.spec.boot : undefined);

/** A size in the largest unit that holds it exactly, so that it reads back to the same bytes. */
export function exactSize(bytes: number): string {
  for (const [unit, n] of [['T', 1024 ** 4], ['G', 1024 ** 3], ['M', 1024 ** 2], ['K', 1024]] as const) if (bytes % n === 0) return `${bytes / n}${unit}`;
  return `${bytes}B`;
}

/**
 * The fields of `vm create`, in the order of its help. `host` is not read back: where a VM runs is the
 * scheduler's choice, not part of the VM (`status.host` in the file says where it ran).
 */
export const CREATE_FIELDS: readonly CreateField[] = [
  { key: 'memory', kind: 'size', arg: '<size>', help: 'memory, e.g. 256M (default 256M)', fromVm: (v) => exactSize(v.spec.memoryBytes) },
  { key: 'vcpus', kind: 'count', arg: '<n>', help: 'virtual CPUs (default 1)', fromVm: (v) => v.spec.vcpus },
  { key: 'disk', kind: 'size', arg: '<size>', help: 'a local disk of this size, e.g. 1G (with an image: grow its overlay)', fromVm: (v) => (firstDisk(v) ? exactSize(firstDisk(v)!.sizeBytes) : undefined) },
  {
    key: 'image',
    kind: 'text',
    arg: '<image>',
    help: '`tiny`, a directory with vmlinuz + initramfs.gz, or an imported disk image (`ferry image list`) to boot from (default tiny)',
    fromVm: (v, images) => (v.spec.boot.kind === 'kernel' ? v.spec.boot.image : storeImage(firstDisk(v)?.backing, images)),
  },
  { key: 'host', kind: 'name', arg: '<host>', help: 'place it on this host (default: the scheduler chooses)' },
  { key: 'network', flag: 'net', kind: 'name', arg: '<network>', help: 'VM network (default vm0 when the server has one)', fromVm: (v) => v.spec.nics[0]?.network },
  {
    key: 'diskImage',
    kind: 'path',
    arg: '<file>',
    help: 'boot from this qcow2 or raw disk (SeaBIOS), under a qcow2 overlay of the VM: nothing is copied',
    fromVm: (v, images) => {
      const d = firstDisk(v);
      if (d?.shared === true) return d.path;
      const base = basePath(d?.backing);
      return base !== undefined && imageAt(base, images) === undefined ? base : undefined;
    },
  },
  {
    key: 'shared',
    kind: 'switch',
    help: 'the --disk-image file is on shared storage (the same path on every host): the VM disk is that file, no overlay, never copied; with --image tiny a data disk',
    noHelp: 'an overlay on --disk-image (the default)',
    fromVm: (v) => (firstDisk(v)?.shared === true ? true : undefined),
  },
  { key: 'kernel', kind: 'path', arg: '<file>', help: 'direct kernel boot of this kernel (root disk: --disk-image)', fromVm: (v) => directBoot(v)?.kernel },
  { key: 'initrd', kind: 'path', arg: '<file>', help: 'direct kernel boot: its initrd', fromVm: (v) => directBoot(v)?.initrd },
  {
    key: 'append',
    kind: 'text',
    arg: '<cmdline>',
    help: 'direct kernel boot: the kernel command line, e.g. "root=/dev/vda rw console=ttyS0" (no quotes, ; $ or \\ inside)',
    fromVm: (v) => directBoot(v)?.append,
  },
  { key: 'ip', kind: 'text', arg: '<a.b.c.d/len>', help: 'reserve this address on the VM network (refused when taken or outside it)', fromVm: (v) => v.spec.nics[0]?.ip },
  { key: 'evacuation', kind: 'text', arg: '<policy>', help: 'how far a drain may go to move it: live (default), postcopy-ok, cold-ok (stopping the guest)', fromVm: (v) => v.spec.evacuation },
  { key: 'guestAgent', kind: 'switch', help: 'add a qemu-guest-agent port (default with --disk-image)', noHelp: 'no qemu-guest-agent port', fromVm: (v) => v.spec.guestAgent },
  {
    key: 'waitReady',
    kind: 'switch',
    help: 'wait until the guest answers (default for the tiny guest); exit 1 if it does not in time (the VM keeps running)',
    noHelp: 'return as soon as QEMU runs the guest',
  },
  { key: 'readyTimeout', kind: 'duration', arg: '<duration>', help: 'how long --wait-ready waits (default 60s)' },
  { key: 'cloudInit', kind: 'switch', help: 'attach a cloud-init NoCloud seed (hostname, SSH keys, user-data, the reserved address; implied by the three below)', noHelp: 'no seed', fromVm: (v) => (v.spec.cloudInit === undefined ? undefined : true) },
  { key: 'hostname', kind: 'name', arg: '<name>', help: "the guest's hostname in the seed (default: the VM name)", fromVm: (v) => v.spec.cloudInit?.hostname },
  {
    key: 'sshKeys',
    flag: 'ssh-key',
    kind: 'keyFiles',
    arg: '<file>',
    help: 'SSH public keys for the default user, from this file (repeatable)',
    fromVm: (v) => (v.spec.cloudInit?.sshAuthorizedKeys.length ? v.spec.cloudInit.sshAuthorizedKeys : undefined),
  },
  { key: 'userData', kind: 'fileText', arg: '<file>', help: 'cloud-init user-data, passed verbatim (at most 1 MiB)', fromVm: (v) => v.spec.cloudInit?.userData },
];

/** A file the user named for the seed, read whole; refused before anything is sent when it is too large. */
function readSeedFile(path: string, what: string, max: number, code: 'FERRY_E_USER_DATA_TOO_LARGE' | 'FERRY_E_BAD_SSH_KEY'): string {
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    throw new FerryError('FERRY_E_BAD_INPUT', `No ${what} at ${path}.`, { cause: err });
  }
  if (!st.isFile()) throw new FerryError('FERRY_E_BAD_INPUT', `The ${what} ${path} is not a file.`);
  if (st.size > max) throw new FerryError(code, `The ${what} ${path} is ${st.size} bytes; at most ${max}.`);
  return readFileSync(path, 'utf8');
}

type Value = string | number | boolean | string[];

/** One field's value, checked by its kind; `base` is the folder relative paths start from. */
function checkField(f: CreateField, raw: unknown, where: string, base: string): Value {
  const what = where === 'flag' ? `--${flagOf(f)}` : `${f.key} (in ${where})`;
  if (f.kind === 'switch') {
    if (typeof raw !== 'boolean') throw new FerryError('FERRY_E_BAD_MANIFEST', `${what} is true or false, not ${JSON.stringify(raw)}.`);
    return raw;
  }
  if (f.kind === 'keyFiles') {
    if (where === 'flag') {
      const files = Array.isArray(raw) ? (raw as unknown[]) : [raw];
      return files.flatMap((file) => readSeedFile(resolve(base, String(file)), 'SSH key file', 64 * 1024, 'FERRY_E_BAD_SSH_KEY').split('\n')).filter((l) => l.trim() !== '');
    }
    if (!Array.isArray(raw) || raw.some((k) => typeof k !== 'string')) throw new FerryError('FERRY_E_BAD_MANIFEST', `${what} is a list of SSH public keys.`);
    return raw as string[];
  }
  if (f.kind === 'fileText') {
    if (typeof raw !== 'string') throw new FerryError('FERRY_E_BAD_MANIFEST', `${what} is text, not ${JSON.stringify(raw)}.`);
    if (where === 'flag') return readSeedFile(resolve(base, raw), 'user-data file', MAX_USER_DATA_BYTES, 'FERRY_E_USER_DATA_TOO_LARGE');
    if (Buffer.byteLength(raw) > MAX_USER_DATA_BYTES) throw new FerryError('FERRY_E_USER_DATA_TOO_LARGE', `${what} is ${Buffer.byteLength(raw)} bytes; at most ${MAX_USER_DATA_BYTES}.`);
    return raw;
  }
  if (typeof raw !== 'string' && typeof raw !== 'number') {
    throw new FerryError('FERRY_E_BAD_MANIFEST', `${what} is a ${f.kind}, not ${JSON.stringify(raw)}.`);
  }
  const text = String(raw);
  switch (f.kind) {
    case 'size':
      return sizeFlag(what, text);
    case 'duration':
      return durationFlag(what, text);
    case 'count':
      return intFlag(what, text, 1, 64);
    case 'name':
      return validateName(text, what);
    case 'path':
      return resolve(base, text);
    case 'text':
      return text;
  }
}

/** Reads a VM file: a YAML mapping of CREATE_FIELDS keys (plus the `name` and the ignored `status` of `vm show -o yaml`). */
export function readVmFile(file: string): { name?: string; body: Record<string, Value> } {
  let text: string;
  try {
    text = readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (err) {
    throw new FerryError('FERRY_E_BAD_MANIFEST', `Cannot read the VM file ${file}.`, { cause: err });
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new FerryError('FERRY_E_BAD_MANIFEST', `The VM file ${file} is not YAML: ${(err as Error).message}`, { cause: err });
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new FerryError('FERRY_E_BAD_MANIFEST', `The VM file ${file} is not a mapping of vm create's fields.`);
  const base = file === '-' ? process.cwd() : dirname(resolve(file));
  const body: Record<string, Value> = {};
  let name: string | undefined;
  for (const [key, raw] of Object.entries(doc)) {
    if (key === 'status' || raw === null) continue; // what the controller observed; an empty key says nothing
    if (key === 'name') {
      name = validateName(raw, `name (in ${file})`);
      continue;
    }
    const f = CREATE_FIELDS.find((x) => x.key === key);
    if (!f) {
      throw new FerryError('FERRY_E_BAD_MANIFEST', `Unknown key ${JSON.stringify(key)} in ${file}: the keys are name, ${CREATE_FIELDS.map((x) => x.key).join(', ')}.`);
    }
    body[key] = checkField(f, raw, file, base);
  }
  return name === undefined ? { body } : { name, body };
}

/** The create body from the VM file (if any) and the flags, the flags winning; every value checked. */
export function createBody(name: string, flags: Record<string, unknown>, file?: string): Record<string, Value> {
  validateName(name, 'VM name');
  const fromFile = file === undefined ? {} : readVmFile(file).body;
  const body: Record<string, Value> = { name, ...fromFile };
  for (const f of CREATE_FIELDS) {
    // commander names an option after its flag in camelCase (`--net` → net, `--disk-image` → diskImage).
    const raw = flags[flagOf(f).replace(/-([a-z])/g, (_, c: string) => c.toUpperCase())];
    if (raw !== undefined) body[f.key] = checkField(f, raw, 'flag', process.cwd());
  }
  return body;
}

/** The file that recreates a VM (`vm create NAME -f FILE`), and what the controller observed under `status`. */
export function vmManifest(v: VmJson, images: readonly ImageDoc[]): Record<string, unknown> {
  const m: Record<string, unknown> = { name: v.name };
  for (const f of CREATE_FIELDS) {
    const value = f.fromVm?.(v, images);
    if (value !== undefined) m[f.key] = value;
  }
  m.status = {
    host: v.host,
    state: v.state,
    ready: v.ready,
    ip: v.ip,
    bootId: v.bootId,
    boot: bootLine(v.spec),
    firmware: firmwareOf(v.spec),
    disks: v.spec.disks.map((d) => diskLine(d, v.host, images)),
    ...(seedOf(v.spec) === undefined ? {} : { seed: seedOf(v.spec) }),
    createdAt: v.createdAt,
  };
  return m;
}

function manifestDocument(v: VmJson, images: readonly ImageDoc[]): Document {
  const doc = new Document(vmManifest(v, images));
  doc.commentBefore = ` ferry vm create ${v.name} -f FILE recreates this VM; status is what the controller saw (create ignores it).`;
  return doc;
}

function bootLine(spec: VmSpec): string {
  const b = spec.boot;
  if (b.kind === 'kernel') return `kernel: image ${b.image}`;
  if (b.kind === 'direct') return `direct kernel ${b.kernel}${b.initrd ? ` + ${b.initrd}` : ''}: ${b.append}`;
  return 'disk: the first disk (bootindex=0)';
}

/**
 * Firmware and seed are read when the stored spec has them (the cloud-init and UEFI work adds them), so
 * `vm show` shows them as soon as specs carry them; a spec without firmware boots SeaBIOS.
 */
const firmwareOf = (spec: VmSpec): string => {
  const fw = (spec as { firmware?: unknown }).firmware;
  return typeof fw === 'string' ? fw : 'bios (SeaBIOS)';
};
const seedOf = (spec: VmSpec): string | undefined => {
  const ci = spec.cloudInit;
  if (ci === undefined) return undefined;
  const parts = [`cloud-init NoCloud (instance ${ci.instanceId}, hostname ${ci.hostname}`, `${ci.sshAuthorizedKeys.length} SSH key(s)`, ci.userData === undefined ? 'no user-data' : `user-data ${Buffer.byteLength(ci.userData)} bytes`];
  return `${parts.join(', ')})`;
};

function diskLine(d: VmSpec['disks'][number], host: string, images: readonly ImageDoc[]): string {
  const size = formatBytes(d.sizeBytes);
  const own = d.path ?? `qcow2 in the VM's directory on ${host}`;
  if (d.shared) return `${d.id} ${size} shared: ${d.path ?? '-'} (${d.format ?? 'qcow2'}, the file itself, never copied)`;
  if (!d.backing) return `${d.id} ${size} ${own}`;
  const image = storeImage(d.backing, images);
  const base = basePath(d.backing) ?? `the host's cached copy (sha256 ${'sha256' in d.backing ? d.backing.sha256.slice(0, 12) : '?'})`;
  return `${d.id} ${size} overlay (${own}) → base ${base} (${d.backing.format}${image ? `, image ${image}` : ''})`;
}

const VM_COLUMNS: readonly Column<VmJson>[] = [
  { header: 'NAME', cell: (v) => v.name },
  { header: 'HOST', cell: (v) => v.host },
  { header: 'STATE', cell: (v) => v.state },
  { header: 'READY', cell: (v) => (v.ready ? 'yes' : 'no') },
  { header: 'MEMORY', cell: (v) => (v.spec.memoryBytes ? formatBytes(v.spec.memoryBytes) : '-') },
  { header: 'VCPUS', cell: (v) => String(v.spec.vcpus ?? '-') },
  { header: 'IP', cell: (v) => v.ip ?? '-' },
  { header: 'BOOT ID', cell: (v) => v.bootId ?? '-' },
  { header: 'BOOT', cell: (v) => v.spec.boot.kind, wide: true },
  { header: 'DISKS', cell: (v) => v.spec.disks.map((d) => `${d.id}:${formatBytes(d.sizeBytes)}${d.backing ? '+base' : ''}`).join(',') || '-', wide: true },
  { header: 'NETWORK', cell: (v) => v.spec.nics.map((n) => n.network).join(',') || '-', wide: true },
  { header: 'CREATED', cell: (v) => v.createdAt, wide: true },
];

function vmDetail(v: VmJson, images: readonly ImageDoc[]): string {
  const rows: [string, string][] = [
    ['name', v.name],
    ['host', v.host],
    ['state', v.state],
    ['ready', v.ready ? 'yes (the guest answered)' : 'no'],
    ['memory', formatBytes(v.spec.memoryBytes)],
    ['vcpus', String(v.spec.vcpus)],
    ['ip', v.ip ?? '-'],
    ['boot id', v.bootId ?? '-'],
    ['boot', bootLine(v.spec)],
    ['firmware', firmwareOf(v.spec)],
    ...(v.spec.disks.length === 0 ? ([['disks', '-']] as [string, string][]) : v.spec.disks.map((d): [string, string] => ['disk', diskLine(d, v.host, images)])),
    ...(seedOf(v.spec) === undefined ? [] : ([['seed', seedOf(v.spec)!]] as [string, string][])),
    ['guest agent', v.spec.guestAgent === true ? 'qemu-guest-agent port' : '-'],
    ['nics', v.spec.nics.map((n) => `${n.id} ${n.mac} on ${n.network}`).join(', ') || '-'],
    ['created', v.createdAt],
  ];
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, val]) => `${k.padEnd(width)}  ${val}`).join('\n');
}

/** The store's images, to name a disk's base; only asked for when a VM has a base at all. */
async function imagesFor(c: ApiClient, vms: readonly VmJson[]): Promise<ImageDoc[]> {
  return vms.some((v) => v.spec.disks.some((d) => d.backing)) ? c.get<ImageDoc[]>('/api/v1/images') : [];
}

export function registerVm(program: Command): void {
  const vm = program.command('vm').description('Virtual machines');

  const create = vm
    .command('create')
    .argument('<name>', 'VM name')
    .option('-f, --file <file>', 'a VM file (YAML) with the fields of these flags (`vm show NAME -o yaml` writes one; - reads stdin); flags given beside it win');
  for (const f of CREATE_FIELDS) {
    if (f.kind === 'switch') create.option(`--${flagOf(f)}`, f.help).option(`--no-${flagOf(f)}`, f.noHelp ?? `not --${flagOf(f)}`);
    else if (f.kind === 'keyFiles') create.option(`--${flagOf(f)} ${f.arg ?? '<value>'}`, f.help, (v: string, acc: string[] = []) => [...acc, v]);
    else create.option(`--${flagOf(f)} ${f.arg ?? '<value>'}`, f.help);
  }
  clusterOptions(create.description('Create and boot a VM, from flags or a VM file')).action(
    action(async (name: string, f: ClusterFlags & { file?: string } & Record<string, unknown>) => {
      const body = createBody(name, f, f.file); // every value checked before the config is read
      // The server answers a create only once the guest is ready (or the wait timed out): wait that long, and more.
      const readyMs = typeof body.readyTimeout === 'string' ? parseDuration(body.readyTimeout, '--ready-timeout') : 60_000;
      const v = await withClient(f, (c) => c.post<VmJson>('/api/v1/vms', body, { timeoutMs: readyMs + 180_000 }));
      if (body.waitReady === true && !v.ready) {
        // Asked to wait, and the guest did not answer: the operation failed, but the VM exists and runs.
        throw new FerryError('FERRY_E_GUEST_TIMEOUT', `VM ${v.name} runs on ${v.host} (${v.state}), but its guest did not answer within ${String(body.readyTimeout ?? '60s')}: see \`ferry vm console ${v.name}\`.`, {
          details: { vm: v },
        });
      }
      return { json: v, human: `created ${v.name} on ${v.host}: ${v.state}, ${v.ready ? 'ready' : 'not ready yet'}${v.ip ? `, ${v.ip}` : ''}` };
    }),
  );

  clusterOptions(vm.command('list').description('List VMs'), 'view').action(
    action(async (f: ClusterFlags) => {
      const [vms, images] = await withClient(f, async (c) => {
        const list = await c.get<VmJson[]>('/api/v1/vms');
        return [list, f.output === 'yaml' ? await imagesFor(c, list) : []] as const;
      });
      return {
        json: vms,
        yaml: vms.map((v) => vmManifest(v, images)),
        names: vms.map((v) => v.name),
        table: (o) => (vms.length === 0 ? 'no VMs' : renderTable(VM_COLUMNS, vms, o)),
      };
    }),
  );

  clusterOptions(vm.command('show').argument('<name>', 'VM name').description('Show one VM: boot, firmware, disks with their backing chain; -o yaml is a file that recreates it'), 'view').action(
    action(async (name: string, f: ClusterFlags) => {
      const [v, images] = await withClient(f, async (c) => {
        const one = await c.get<VmJson>(`/api/v1/vms/${enc(name)}`);
        return [one, await imagesFor(c, [one])] as const;
      });
      return { json: v, yaml: manifestDocument(v, images), names: [v.name], human: () => vmDetail(v, images) };
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
    if (verb === 'stop') {
      cmd.option('--force', 'quit QEMU at once, no ACPI power-down');
      cmd.option('--timeout <duration>', 'how long the guest may take to power down before QEMU is quit, e.g. 2m (default 10s)');
    }
    clusterOptions(cmd).action(
      action(async (name: string, f: ClusterFlags & { force?: boolean; timeout?: string }) => {
        const body: Record<string, unknown> = {};
        if (verb === 'stop' && f.force) body.force = true;
        if (verb === 'stop' && f.timeout !== undefined) body.timeoutMs = parseDuration(durationFlag('--timeout', f.timeout), '--timeout');
        const v = await withClient(f, (c) => c.post<VmJson>(`/api/v1/vms/${enc(name)}/${verb}`, body));
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
