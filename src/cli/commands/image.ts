/**
 * `ferry image build tiny`: the default guest image (kernel + Ferry-written initramfs + manifest), built
 * locally. `ferry image import | list | show | delete`: the server's store of disk images (qcow2 or raw)
 * that VMs boot from by name (`ferry vm create NAME --image IMAGE`).
 */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { FerryError } from '../../common/errors.ts';
import { formatBytes } from '../../common/units.ts';
import { enc, withClient, type ApiClient } from '../../client/api.ts';
import type { DebianManifest } from '../../guest/debian.ts';
import { renderTable, type Column } from '../../client/table.ts';
import { clusterOptions, type ClusterFlags } from '../flags.ts';
import { action } from '../output.ts';

/** The server's image JSON (src/controller/images.ts ImageJson): the CLI speaks only the public API. */
export interface ImageDoc {
  name: string;
  format: string;
  virtualSizeBytes: number;
  fileBytes: number;
  sha256: string;
  path: string;
  createdAt: string;
  usedBy: string[];
  /** Hosts that have a copy (fetched on first use). */
  hosts?: string[];
}

/**
 * Puts the Debian build's two disks in the server's store (`debian-12`, `debian-12-rootfs`); an image of
 * that name with the same sha256 is kept, one with another is an error (never replaced silently).
 */
export async function importDebianImage(c: ApiClient, m: DebianManifest): Promise<ImageDoc[]> {
  const have = await c.get<ImageDoc[]>('/api/v1/images');
  const out: ImageDoc[] = [];
  for (const [imageName, a] of [['debian-12', m.disk], ['debian-12-rootfs', m.rootfs]] as const) {
    const old = have.find((i) => i.name === imageName);
    if (old?.sha256 === a.sha256) out.push(old);
    else if (old !== undefined) throw new FerryError('FERRY_E_IMAGE_EXISTS', `The server has another ${imageName} (sha256 ${old.sha256.slice(0, 12)}): delete it first (\`ferry image delete ${imageName}\`).`);
    else out.push(await c.post<ImageDoc>('/api/v1/images', { name: imageName, file: a.path }));
  }
  return out;
}

const IMAGE_COLUMNS: readonly Column<ImageDoc>[] = [
  { header: 'NAME', cell: (i) => i.name },
  { header: 'FORMAT', cell: (i) => i.format },
  { header: 'VIRTUAL', cell: (i) => formatBytes(i.virtualSizeBytes) },
  { header: 'FILE', cell: (i) => formatBytes(i.fileBytes) },
  { header: 'SHA256', cell: (i) => i.sha256.slice(0, 16) },
  { header: 'USED BY', cell: (i) => i.usedBy.join(',') || '-' },
  { header: 'ON HOSTS', cell: (i) => i.hosts?.join(',') || '-' },
  { header: 'PATH', cell: (i) => i.path, wide: true },
  { header: 'CREATED', cell: (i) => i.createdAt, wide: true },
];

export function registerImage(program: Command): void {
  const image = program.command('image').description('Guest images');
  clusterOptions(
    image
      .command('build')
      .argument('<name>', '`tiny` (Ferry\'s own guest) or `debian-12` (Debian 12 from Debian\'s packages: systemd, cloud-init, qemu-guest-agent, openssh-server)')
      .option('--out <dir>', 'output directory (default: Ferry cache)')
      .option('--import', 'debian-12: also import its disks into the server\'s store as debian-12 (GRUB, partitioned) and debian-12-rootfs (bare ext4, for --kernel)')
      .description('Build a guest image reproducibly (reused while its inputs are unchanged); prints its manifest'),
  ).action(
    action(async (name: string, opts: { out?: string; import?: boolean } & ClusterFlags) => {
      if (name === 'tiny') {
        const { buildTinyImage } = await import('../../guest/image.ts');
        const manifest = await buildTinyImage(opts.out === undefined ? {} : { outDir: opts.out });
        return {
          json: manifest,
          human: () => [`image tiny ${manifest.version} in ${manifest.dir}`, ...manifest.files.map((f) => `  ${f.sha256}  ${f.name}`)].join('\n'),
        };
      }
      if (name !== 'debian-12') throw new FerryError('FERRY_E_BAD_INPUT', `Unknown image ${JSON.stringify(name)}: \`tiny\` or \`debian-12\`.`);
      const { buildDebianImage } = await import('../../guest/debian.ts');
      const log = opts.json === true ? () => undefined : (step: string) => process.stderr.write(`${step}\n`);
      const m = await buildDebianImage({ ...(opts.out === undefined ? {} : { outDir: opts.out }), log });
      const imported = opts.import === true ? await withClient(opts, (c) => importDebianImage(c, m)) : [];
      return {
        json: { ...m, imported },
        human: () =>
          [
            `image debian-12 (kernel ${m.kernelVersion}) in ${m.dir}, built in ${m.buildSeconds} s`,
            ...[m.disk, m.rootfs, m.kernel, m.initrd].map((a) => `  ${a.sha256}  ${a.name}  ${formatBytes(a.bytes)}`),
            `direct kernel boot: --kernel ${m.kernel.path} --initrd ${m.initrd.path} --append "${m.directAppend}"`,
            ...imported.map((i) => `in the server's store: ${i.name}`),
          ].join('\n'),
      };
    }),
  );

  clusterOptions(
    image
      .command('import')
      .argument('<name>', 'image name')
      .argument('<file>', 'a qcow2 or raw image (qemu-img decides, not the name); the server reads and copies it')
      .description('Import a disk image into the server\'s store'),
  ).action(
    action(async (name: string, file: string, f: ClusterFlags) => {
      const img = await withClient(f, (c) => c.post<ImageDoc>('/api/v1/images', { name, file: resolve(file) }));
      return { json: img, human: `imported ${img.name}: ${img.format}, ${formatBytes(img.virtualSizeBytes)} virtual, sha256 ${img.sha256}` };
    }),
  );
  clusterOptions(image.command('list').description('List the server\'s disk images'), 'view').action(
    action(async (f: ClusterFlags) => {
      const imgs = await withClient(f, (c) => c.get<ImageDoc[]>('/api/v1/images'));
      return { json: imgs, names: imgs.map((i) => i.name), table: (o) => (imgs.length === 0 ? 'no images' : renderTable(IMAGE_COLUMNS, imgs, o)) };
    }),
  );
  clusterOptions(image.command('show').argument('<name>', 'image name').description('Show one disk image'), 'view').action(
    action(async (name: string, f: ClusterFlags) => {
      const i = await withClient(f, (c) => c.get<ImageDoc>(`/api/v1/images/${enc(name)}`));
      return { json: i, names: [i.name], human: () => Object.entries(i).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(', ') || '-' : String(v)}`).join('\n') };
    }),
  );
  clusterOptions(image.command('delete').argument('<name>', 'image name').description('Delete a disk image no VM boots from')).action(
    action(async (name: string, f: ClusterFlags) => {
      const r = await withClient(f, (c) => c.delete<{ deleted: boolean; name: string }>(`/api/v1/images/${enc(name)}`));
      return { json: r, human: `deleted image ${name}` };
    }),
  );
}
