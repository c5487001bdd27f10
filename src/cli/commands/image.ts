/**
 * `ferry image build tiny`: the default guest image (kernel + Ferry-written initramfs + manifest), built
 * locally. `ferry image import | list | show | delete`: the server's store of disk images (qcow2 or raw)
 * that VMs boot from by name (`ferry vm create NAME --image IMAGE`).
 */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { FerryError } from '../../common/errors.ts';
import { formatBytes } from '../../common/units.ts';
import { enc, withClient } from '../../client/api.ts';
import { formatTable } from '../../client/table.ts';
import { clusterOptions, type ClusterFlags } from '../flags.ts';
import { action } from '../output.ts';

/** The server's image JSON (src/controller/images.ts ImageJson): the CLI speaks only the public API. */
interface ImageDoc {
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

export function registerImage(program: Command): void {
  const image = program.command('image').description('Guest images');
  image
    .command('build')
    .argument('<name>', 'image to build (only `tiny` for now)')
    .option('--json', 'print one JSON document')
    .option('--out <dir>', 'output directory (default: Ferry cache)')
    .description('Build a guest image reproducibly; prints its manifest')
    .action(
      action(async (name: string, opts: { out?: string }) => {
        if (name !== 'tiny') throw new FerryError('FERRY_E_BAD_INPUT', `Unknown image ${JSON.stringify(name)}: only "tiny".`);
        const { buildTinyImage } = await import('../../guest/image.ts');
        const manifest = await buildTinyImage(opts.out === undefined ? {} : { outDir: opts.out });
        return {
          json: manifest,
          human: () =>
            [`image tiny ${manifest.version} in ${manifest.dir}`, ...manifest.files.map((f) => `  ${f.sha256}  ${f.name}`)].join('\n'),
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
  clusterOptions(image.command('list').description('List the server\'s disk images')).action(
    action(async (f: ClusterFlags) => {
      const imgs = await withClient(f, (c) => c.get<ImageDoc[]>('/api/v1/images'));
      return {
        json: imgs,
        human: () =>
          imgs.length === 0
            ? 'no images'
            : formatTable(['NAME', 'FORMAT', 'VIRTUAL', 'FILE', 'SHA256', 'USED BY', 'ON HOSTS'], imgs.map((i) => [i.name, i.format, formatBytes(i.virtualSizeBytes), formatBytes(i.fileBytes), i.sha256.slice(0, 16), i.usedBy.join(',') || '-', i.hosts?.join(',') || '-'])),
      };
    }),
  );
  clusterOptions(image.command('show').argument('<name>', 'image name').description('Show one disk image')).action(
    action(async (name: string, f: ClusterFlags) => {
      const i = await withClient(f, (c) => c.get<ImageDoc>(`/api/v1/images/${enc(name)}`));
      return { json: i, human: () => Object.entries(i).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(', ') || '-' : String(v)}`).join('\n') };
    }),
  );
  clusterOptions(image.command('delete').argument('<name>', 'image name').description('Delete a disk image no VM boots from')).action(
    action(async (name: string, f: ClusterFlags) => {
      const r = await withClient(f, (c) => c.delete<{ deleted: boolean; name: string }>(`/api/v1/images/${enc(name)}`));
      return { json: r, human: `deleted image ${name}` };
    }),
  );
}
