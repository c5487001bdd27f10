/** `ferry image build tiny`: the default guest image (kernel + Ferry-written initramfs + manifest). */
import type { Command } from 'commander';
import { FerryError } from '../../common/errors.ts';
import { action } from '../output.ts';

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
}
