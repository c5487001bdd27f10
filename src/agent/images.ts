/**
 * This host's cache of base images (issue #9): the controller's store images that VM overlays on this host
 * sit on, each in `<agentDir>/images/<sha256>`, named by its content so that two names of one image are one
 * file and a VM's spec (which records the image's sha256, never a path) resolves to it on any host.
 *
 * A file is only ever there complete and checked: the bytes are hashed as they are written to a temporary
 * file of their own (unique per write), and only a matching sha256 is renamed into place (rename is atomic on
 * one filesystem); a mismatch removes the temporary file and keeps nothing. Concurrent writes of one image in
 * this process wait for each other, and the later ones find it present and drop their bytes; a write of
 * another process racing this one renames identical bytes over identical bytes.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { FerryError } from '../common/errors.ts';
import type { CachedImage, ImageReceived } from '../common/protocol.ts';
import type { DiskSpec } from '../common/spec.ts';

const execFileP = promisify(execFile);
const SHA_RE = /^[0-9a-f]{64}$/;

export function imagesDir(agentDir: string): string {
  return join(agentDir, 'images');
}

/** Where this host keeps (or would keep) the image of that sha256. */
export function cachedImagePath(agentDir: string, sha256: string): string {
  if (!SHA_RE.test(sha256))
    throw new FerryError(
      'FERRY_E_BAD_INPUT',
      `Bad image sha256 ${JSON.stringify(sha256)}: 64 lower-case hex digits.`,
    );
  return join(imagesDir(agentDir), sha256);
}

/**
 * The file a disk's overlay names as its base on this host: the user's own path, or this host's cached copy
 * of the store image (refused when the host has none: the controller fetches it before it asks for the VM).
 */
export function basePathOf(agentDir: string, d: DiskSpec): string | undefined {
  const b = d.backing;
  if (b === undefined) return undefined;
  if ('path' in b) return b.path;
  const path = cachedImagePath(agentDir, b.sha256);
  if (!existsSync(path)) {
    throw new FerryError(
      'FERRY_E_IMAGE_NOT_ON_HOST',
      `Disk ${d.id}: this host has no copy of image ${b.image} (sha256 ${b.sha256}).`,
      {
        details: { disk: d.id, image: b.image, sha256: b.sha256 },
      },
    );
  }
  return path;
}

/**
 * Points an overlay copied from another host (a cold migration: its header names the source host's base)
 * at this host's copy, without touching its data (`rebase -u`: the base is the same image), and checks it.
 */
export async function rebaseOverlay(file: string, base: string, format: 'qcow2' | 'raw'): Promise<void> {
  await execFileP('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', base, '-F', format, file], {
    timeout: 30_000,
  });
  const { stdout } = await execFileP('qemu-img', ['info', '--output=json', '-f', 'qcow2', file], {
    timeout: 30_000,
  });
  const info = JSON.parse(stdout) as { 'backing-filename'?: string; 'backing-filename-format'?: string };
  if (info['backing-filename'] !== base || info['backing-filename-format'] !== format) {
    throw new FerryError(
      'FERRY_E_VERIFY_FAILED',
      `The overlay ${file} names ${String(info['backing-filename'])} as its base after the rebase, not ${base}.`,
    );
  }
}

let tmpSeq = 0;

export class ImageCache {
  readonly dir: string;
  /** The write in progress per sha256: later writes of the same image wait for it. */
  readonly #writing = new Map<string, Promise<unknown>>();

  constructor(private readonly agentDir: string) {
    this.dir = imagesDir(agentDir);
  }

  async list(): Promise<CachedImage[]> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const out: CachedImage[] = [];
    for (const n of names.sort()) {
      if (!SHA_RE.test(n)) continue; // temporary files of writes in progress
      const st = await stat(join(this.dir, n)).catch(() => undefined);
      if (st?.isFile()) out.push({ sha256: n, bytes: st.size });
    }
    return out;
  }

  /** Writes `body` as the image of `sha256` unless it is here already; a mismatch keeps nothing. */
  async receive(sha256: string, body: Readable): Promise<ImageReceived> {
    const final = cachedImagePath(this.agentDir, sha256);
    const before = this.#writing.get(sha256);
    const mine = (async () => {
      await before?.catch(() => undefined);
      const had = await stat(final).catch(() => undefined);
      if (had?.isFile()) {
        body.resume(); // drain what was sent: the request ends cleanly and nothing is written
        return { sha256, bytes: had.size, action: 'present' as const };
      }
      return this.#write(sha256, final, body);
    })();
    this.#writing.set(sha256, mine);
    try {
      return await mine;
    } finally {
      if (this.#writing.get(sha256) === mine) this.#writing.delete(sha256);
    }
  }

  async #write(sha256: string, final: string, body: Readable): Promise<ImageReceived> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const tmp = `${final}.${process.pid}.${++tmpSeq}.part`;
    const h = createHash('sha256');
    let bytes = 0;
    try {
      await pipeline(
        body,
        async function* (src: AsyncIterable<Buffer>) {
          for await (const chunk of src) {
            h.update(chunk);
            bytes += chunk.length;
            yield chunk;
          }
        },
        // Read-only: a VM's overlay must never write its base.
        createWriteStream(tmp, { mode: 0o400, flags: 'wx' }),
      );
      const got = h.digest('hex');
      if (got !== sha256) {
        throw new FerryError(
          'FERRY_E_IMAGE_CHECKSUM',
          `Image ${sha256}: ${bytes} bytes arrived with sha256 ${got}; nothing was kept.`,
          {
            details: { expected: sha256, got, bytes },
          },
        );
      }
      await rename(tmp, final);
      return { sha256, bytes, action: 'fetched' };
    } finally {
      await rm(tmp, { force: true });
    }
  }
}
