/**
 * A newc ("070701") cpio writer and reader, the format the Linux kernel unpacks as an initramfs. Written
 * in-house because no cpio binary is on a fresh machine and the archive must be byte-for-byte
 * reproducible: mtimes are 0, uid/gid 0, inode numbers follow entry order, entries keep the given order.
 */
import { FerryError } from '../common/errors.ts';

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Uint8Array; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'chardev'; path: string; major: number; minor: number; mode?: number };

/** What parseCpio gives back: the same entries, with the full mode (type bits included) and inode. */
export interface ParsedCpioEntry {
  path: string;
  mode: number;
  ino: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  rdevMajor: number;
  rdevMinor: number;
  data: Buffer;
}

const MAGIC = '070701';
const HEADER_LEN = 110;
const TRAILER = 'TRAILER!!!';

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
export const S_IFMT = 0o170000;

const pad4 = (n: number): number => (4 - (n % 4)) % 4;

function hex8(n: number, what: string): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) {
    throw new FerryError('FERRY_E_BAD_INPUT', `cpio: ${what} ${n} does not fit in a newc header field.`);
  }
  return n.toString(16).padStart(8, '0');
}

function checkPath(path: string): void {
  // The kernel takes names relative to the root; a leading slash, `..` or an empty part is a mistake.
  if (path === '' || path.startsWith('/') || path.split('/').some((p) => p === '' || p === '..' || p === '.')) {
    throw new FerryError('FERRY_E_BAD_INPUT', `cpio: bad path ${JSON.stringify(path)} (relative, no . or ..).`);
  }
}

function record(
  name: string,
  fields: { ino: number; mode: number; nlink: number; rdevMajor?: number; rdevMinor?: number },
  data: Uint8Array,
): Buffer[] {
  const nameBytes = Buffer.from(name + '\0', 'utf8');
  const header =
    MAGIC +
    hex8(fields.ino, 'inode') +
    hex8(fields.mode, 'mode') +
    hex8(0, 'uid') +
    hex8(0, 'gid') +
    hex8(fields.nlink, 'nlink') +
    hex8(0, 'mtime') +
    hex8(data.length, 'size') +
    hex8(0, 'devmajor') +
    hex8(0, 'devminor') +
    hex8(fields.rdevMajor ?? 0, 'rdevmajor') +
    hex8(fields.rdevMinor ?? 0, 'rdevminor') +
    hex8(nameBytes.length, 'namesize') +
    hex8(0, 'check');
  return [
    Buffer.from(header, 'ascii'),
    nameBytes,
    Buffer.alloc(pad4(HEADER_LEN + nameBytes.length)),
    Buffer.from(data.buffer, data.byteOffset, data.byteLength),
    Buffer.alloc(pad4(data.length)),
  ];
}

/** Serialises the entries, in the order given, followed by the trailer. Same entries → same bytes. */
export function writeCpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const seen = new Set<string>();
  let ino = 1;
  for (const e of entries) {
    checkPath(e.path);
    if (seen.has(e.path)) throw new FerryError('FERRY_E_BAD_INPUT', `cpio: duplicate path ${e.path}.`);
    seen.add(e.path);
    switch (e.type) {
      case 'dir':
        parts.push(...record(e.path, { ino: ino++, mode: S_IFDIR | (e.mode ?? 0o755), nlink: 2 }, new Uint8Array()));
        break;
      case 'file':
        parts.push(...record(e.path, { ino: ino++, mode: S_IFREG | (e.mode ?? 0o644), nlink: 1 }, e.data));
        break;
      case 'symlink':
        parts.push(...record(e.path, { ino: ino++, mode: S_IFLNK | 0o777, nlink: 1 }, Buffer.from(e.target, 'utf8')));
        break;
      case 'chardev':
        parts.push(
          ...record(
            e.path,
            { ino: ino++, mode: S_IFCHR | (e.mode ?? 0o600), nlink: 1, rdevMajor: e.major, rdevMinor: e.minor },
            new Uint8Array(),
          ),
        );
        break;
      default: {
        const never: never = e;
        throw new FerryError('FERRY_E_INTERNAL', `cpio: unknown entry ${JSON.stringify(never)}`);
      }
    }
  }
  parts.push(...record(TRAILER, { ino: 0, mode: 0, nlink: 1 }, new Uint8Array()));
  return Buffer.concat(parts);
}

/** Reads a newc archive back (up to its trailer). Used by tests and to inspect built images. */
export function parseCpio(buf: Buffer): ParsedCpioEntry[] {
  const out: ParsedCpioEntry[] = [];
  let off = 0;
  for (;;) {
    if (off + HEADER_LEN > buf.length) throw new FerryError('FERRY_E_BAD_INPUT', 'cpio: truncated header');
    const h = buf.toString('ascii', off, off + HEADER_LEN);
    if (!h.startsWith(MAGIC)) throw new FerryError('FERRY_E_BAD_INPUT', `cpio: bad magic at ${off}`);
    const f = (i: number): number => Number.parseInt(h.slice(6 + i * 8, 14 + i * 8), 16);
    const nameSize = f(11);
    const size = f(6);
    const nameStart = off + HEADER_LEN;
    const path = buf.toString('utf8', nameStart, nameStart + nameSize - 1);
    const dataStart = nameStart + nameSize + pad4(HEADER_LEN + nameSize);
    if (dataStart + size > buf.length) throw new FerryError('FERRY_E_BAD_INPUT', `cpio: truncated data of ${path}`);
    if (path === TRAILER) return out;
    out.push({
      path,
      ino: f(0),
      mode: f(1),
      uid: f(2),
      gid: f(3),
      nlink: f(4),
      mtime: f(5),
      rdevMajor: f(9),
      rdevMinor: f(10),
      data: buf.subarray(dataStart, dataStart + size),
    });
    off = dataStart + size + pad4(size);
  }
}
