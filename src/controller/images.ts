/**
 * The controller's image store (issue #9): disk images users import once and boot VMs from by name. Each
 * is copied into `<dataDir>/images/<name>.<format>` while its sha256 is computed, and recorded with what
 * `qemu-img info` says of the stored copy (format, virtual size) — never the file name, never the source,
 * which may change after it was checked. VMs boot from it under an overlay (VmSpec disk `backing`), so an
 * image in use is never deleted.
 *
 * A VM's spec names the image by identity (name, sha256, format), never by this store's path: each host
 * opens its own cached copy (src/agent/images.ts). Before a host runs a VM from an image — a create there,
 * or the destination of a migration — `ensureOn` makes sure it has it, streaming the stored file to the
 * agent (which checks the sha256 as it writes) when it has not; concurrent calls for one host and image
 * share one transfer.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, mkdirSync, statSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { FerryError } from '../common/errors.ts';
import type { ImageTransfer } from '../common/migration.ts';
import { baseImagesOf, type BackingImage, type VmSpec } from '../common/spec.ts';
import { validateName } from '../common/units.ts';
import { inspectDiskImage, type BaseFormat } from '../guest/disk-image.ts';
import type { AgentClient } from './agent-client.ts';
import { nowIso, type Store } from './store/db.ts';

export interface ImageJson {
  name: string;
  format: BaseFormat;
  virtualSizeBytes: number;
  /** Bytes of the stored file (a qcow2 is usually smaller than its virtual size). */
  fileBytes: number;
  sha256: string;
  /** Where the controller keeps it (hosts keep their own copies, by sha256). */
  path: string;
  createdAt: string;
  /** VMs whose disk is an overlay on it. */
  usedBy: string[];
  /** Hosts that have a copy, as their agents answer now (list and show through the API; a silent host is left out). */
  hosts?: string[];
}

interface ImageRow {
  name: string;
  format: string;
  virtual_size: number;
  file_bytes: number;
  sha256: string;
  path: string;
  created_at: string;
}

/** Names the `image` field of a create already gives a meaning to. */
const RESERVED = new Set(['tiny']);

export class ImageService {
  readonly dir: string;
  constructor(private readonly o: { store: Store; dataDir: string; agents?: () => { host: string; agent: AgentClient }[] }) {
    this.dir = join(o.dataDir, 'images');
  }

  private row(name: string): ImageRow {
    const r = this.o.store.sql.prepare('SELECT * FROM images WHERE name = ?').get(name) as ImageRow | undefined;
    if (!r) throw new FerryError('FERRY_E_IMAGE_NOT_FOUND', `No image named ${JSON.stringify(name)}: see \`ferry image list\`.`, { details: { name } });
    return r;
  }

  /** VMs on it: by name (specs of now), or by the stored path (specs from before images were named). */
  private usedBy(r: ImageRow): string[] {
    return (this.o.store.sql.prepare('SELECT name, spec FROM vms ORDER BY name').all() as { name: string; spec: string }[])
      .filter((v) =>
        ((JSON.parse(v.spec) as Partial<VmSpec>).disks ?? []).some((d) =>
          d.backing === undefined ? false : 'path' in d.backing ? d.backing.path === r.path : d.backing.image === r.name,
        ),
      )
      .map((v) => v.name);
  }

  private json(r: ImageRow): ImageJson {
    return {
      name: r.name,
      format: r.format as BaseFormat,
      virtualSizeBytes: r.virtual_size,
      fileBytes: r.file_bytes,
      sha256: r.sha256,
      path: r.path,
      createdAt: r.created_at,
      usedBy: this.usedBy(r),
    };
  }

  list(): ImageJson[] {
    return (this.o.store.sql.prepare('SELECT * FROM images ORDER BY name').all() as ImageRow[]).map((r) => this.json(r));
  }

  get(name: string): ImageJson {
    return this.json(this.row(validateName(name, 'image name')));
  }

  /** Copies `file` (a path the controller reads) into the store; refuses anything but qcow2 or raw first. */
  async import(name: string, file: string): Promise<ImageJson> {
    validateName(name, 'image name');
    if (RESERVED.has(name)) throw new FerryError('FERRY_E_BAD_NAME', `The image name ${name} is reserved (Ferry's own guest): choose another.`);
    if (this.o.store.sql.prepare('SELECT 1 FROM images WHERE name = ?').get(name)) {
      throw new FerryError('FERRY_E_IMAGE_EXISTS', `An image named ${name} exists already: delete it first or choose another name.`);
    }
    if (!file.startsWith('/') || file.split('/').some((s) => s === '.' || s === '..')) {
      throw new FerryError('FERRY_E_BAD_IMAGE', `Bad image file ${JSON.stringify(file)}: an absolute path without . or .. segments.`);
    }
    let st;
    try {
      st = statSync(file);
    } catch (err) {
      throw new FerryError('FERRY_E_BAD_IMAGE', `No image file at ${file}.`, { cause: err });
    }
    if (!st.isFile()) throw new FerryError('FERRY_E_BAD_IMAGE', `${file} is not a regular file.`);
    const claimed = await inspectDiskImage(file); // refuses before a byte is copied
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const path = join(this.dir, `${name}.${claimed.format}`);
    const tmp = `${path}.${process.pid}.tmp`;
    const hash = createHash('sha256');
    let bytes = 0;
    try {
      await pipeline(
        createReadStream(file),
        new Transform({
          transform(chunk: Buffer, _enc, done) {
            hash.update(chunk);
            bytes += chunk.length;
            done(null, chunk);
          },
        }),
        createWriteStream(tmp, { mode: 0o600, flags: 'wx' }),
      );
      // The stored copy is what VMs will boot: it, not the source checked above, is the authority.
      const info = await inspectDiskImage(tmp);
      await rename(tmp, path);
      const row: ImageRow = { name, format: info.format, virtual_size: info.virtualSizeBytes, file_bytes: bytes, sha256: hash.digest('hex'), path, created_at: nowIso() };
      this.o.store.sql
        .prepare('INSERT INTO images (name, format, virtual_size, file_bytes, sha256, path, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
        .run(row.name, row.format, row.virtual_size, row.file_bytes, row.sha256, row.path, row.created_at);
      return this.json(row);
    } catch (err) {
      await rm(tmp, { force: true });
      if (err instanceof FerryError) throw err;
      throw new FerryError('FERRY_E_INTERNAL', `Importing ${file} as image ${name} failed: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Removes an image no VM boots from. */
  async delete(name: string): Promise<{ deleted: true; name: string }> {
    const r = this.row(validateName(name, 'image name'));
    const users = this.usedBy(r);
    if (users.length > 0) {
      throw new FerryError('FERRY_E_IMAGE_IN_USE', `Image ${name} is the base of ${users.join(', ')}: delete those VMs first.`, { details: { usedBy: users } });
    }
    this.o.store.sql.prepare('DELETE FROM images WHERE name = ?').run(name);
    await rm(r.path, { force: true });
    return { deleted: true, name };
  }

  /** The stored image a VM create names, as its overlay's base records it. */
  resolve(name: string): { backing: BackingImage; virtualSizeBytes: number } {
    const r = this.row(name);
    return { backing: { image: r.name, sha256: r.sha256, format: r.format as BaseFormat }, virtualSizeBytes: r.virtual_size };
  }

  readonly #inflight = new Map<string, Promise<ImageTransfer>>();

  /** Makes sure `host` has every store image `spec`'s disks sit on; what it did for each. */
  async ensureFor(host: string, agent: AgentClient, spec: VmSpec): Promise<ImageTransfer[]> {
    const out: ImageTransfer[] = [];
    for (const b of baseImagesOf(spec)) out.push(await this.ensureOn(host, agent, b));
    return out;
  }

  /** One image on one host: `present` when it has it, else `fetched` (streamed from the store, sha256 checked there). */
  ensureOn(host: string, agent: AgentClient, b: BackingImage): Promise<ImageTransfer> {
    const key = `${host}/${b.sha256}`;
    let p = this.#inflight.get(key);
    if (p === undefined) {
      p = this.#ensure(agent, b).finally(() => this.#inflight.delete(key));
      this.#inflight.set(key, p);
    }
    return p;
  }

  async #ensure(agent: AgentClient, b: BackingImage): Promise<ImageTransfer> {
    const cached = await agent.call('listImages');
    const had = cached.find((c) => c.sha256 === b.sha256);
    if (had !== undefined) return { name: b.image, sha256: b.sha256, action: 'present', bytes: 0 };
    // By content: the name may have been deleted and imported again with other bytes since the spec was made.
    const r = this.o.store.sql.prepare('SELECT * FROM images WHERE sha256 = ? ORDER BY name LIMIT 1').get(b.sha256) as ImageRow | undefined;
    if (r === undefined) {
      throw new FerryError('FERRY_E_IMAGE_NOT_FOUND', `The store has no image with sha256 ${b.sha256} (${b.image}) to give the host.`, { details: { image: b.image, sha256: b.sha256 } });
    }
    const got = await agent.upload('putImage', { params: { sha256: b.sha256 }, headers: undefined, body: createReadStream(r.path) });
    return { name: b.image, sha256: b.sha256, action: got.action, bytes: got.action === 'fetched' ? got.bytes : 0 };
  }

  /** The images with the hosts that hold a copy of each, as their agents answer (one that does not is left out). */
  async withHosts(images: ImageJson[]): Promise<ImageJson[]> {
    const bySha = new Map<string, string[]>();
    await Promise.all(
      (this.o.agents?.() ?? []).map(async ({ host, agent }) => {
        const cached = await agent.call('listImages', undefined, { timeoutMs: 3000 }).catch(() => []);
        for (const c of cached) bySha.set(c.sha256, [...(bySha.get(c.sha256) ?? []), host].sort());
      }),
    );
    return images.map((i) => ({ ...i, hosts: bySha.get(i.sha256) ?? [] }));
  }
}
