/**
 * Disk images users bring (a distribution's cloud image, a disk they already have): what they are is what
 * `qemu-img info --output=json` says, never the file name. Ferry boots qcow2 and raw bases, each under a
 * qcow2 overlay of the VM's own (the base is never written and never copied at create). A base must be
 * self-contained: a qcow2 that has a backing file of its own would make the VM depend on a path Ferry does
 * not know about on every host.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { FerryError } from '../common/errors.ts';

const execFileP = promisify(execFile);

export const BASE_FORMATS = ['qcow2', 'raw'] as const;
export type BaseFormat = (typeof BASE_FORMATS)[number];

export interface DiskImageInfo {
  format: BaseFormat;
  virtualSizeBytes: number;
}

/** What qemu-img says of `path`; FERRY_E_BAD_IMAGE_FORMAT for anything but a self-contained qcow2 or raw. */
export async function inspectDiskImage(path: string): Promise<DiskImageInfo> {
  let out: string;
  try {
    // -U: reading the header of an image a running QEMU holds (a VM's base) is safe; its lock says "in use".
    ({ stdout: out } = await execFileP('qemu-img', ['info', '-U', '--output=json', path], { timeout: 30_000, maxBuffer: 4 * 1024 * 1024 }));
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new FerryError('FERRY_E_MISSING_TOOL', 'qemu-img is missing: run `npm run setup`.', { cause: err });
    throw new FerryError('FERRY_E_BAD_IMAGE_FORMAT', `qemu-img cannot read ${path}: ${(e.stderr ?? e.message).trim().slice(0, 300)}`, { cause: err });
  }
  const info = JSON.parse(out) as { format?: unknown; 'virtual-size'?: unknown; 'backing-filename'?: unknown };
  const format = info.format;
  if (format !== 'qcow2' && format !== 'raw') {
    throw new FerryError('FERRY_E_BAD_IMAGE_FORMAT', `${path} is a ${String(format)} image; Ferry takes qcow2 or raw (convert it: qemu-img convert -O qcow2 …).`, {
      details: { format },
    });
  }
  if (info['backing-filename'] !== undefined) {
    throw new FerryError('FERRY_E_BAD_IMAGE_FORMAT', `${path} has a backing file of its own (${String(info['backing-filename'])}): flatten it first (qemu-img convert -O qcow2 …).`);
  }
  const size = info['virtual-size'];
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0) {
    throw new FerryError('FERRY_E_BAD_IMAGE_FORMAT', `qemu-img reports no virtual size for ${path}.`);
  }
  return { format, virtualSizeBytes: size };
}
