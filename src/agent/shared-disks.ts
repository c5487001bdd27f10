/**
 * Shared disks as this host sees them: the fingerprint of each (size and the sha256 of its first MiB),
 * and the destination's check against the source's fingerprints before a migration starts anything. A
 * shared disk is one file that every host reaches at the same path; a host where the path is missing, or
 * leads to another file (another export mounted there, a stale local copy), must not run the VM, since
 * the guest would boot from — or write over — something else. The check compares what each host sees, so
 * it holds whatever makes the path shared (NFS, a cluster file system, the lab's one file system).
 *
 * The first MiB is a cheap, honest sample: it holds a raw disk's partition table and boot code, and a
 * qcow2 file's header and first tables. It is read while the guest may write (a live migration's source
 * runs), so a guest that rewrites it between the two readings makes the check fail: the safe side.
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { FerryError } from '../common/errors.ts';
import type { SharedDiskFingerprint } from '../common/protocol.ts';
import type { VmSpec } from '../common/spec.ts';

export const FINGERPRINT_BYTES = 1024 * 1024;

/** Size and head sha256 of the file at `path`; FERRY_E_SHARED_MISSING when there is no file there. */
export async function fingerprintFile(path: string): Promise<{ sizeBytes: number; headSha256: string }> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    throw new FerryError(
      'FERRY_E_SHARED_MISSING',
      `The shared disk ${path} is not on this host (${(err as NodeJS.ErrnoException).code ?? 'unreadable'}).`,
      {
        cause: err,
        details: { path },
      },
    );
  }
  try {
    const st = await fh.stat();
    if (!st.isFile() && !st.isBlockDevice()) {
      throw new FerryError(
        'FERRY_E_SHARED_MISSING',
        `The shared disk ${path} is not a file or a block device on this host.`,
        { details: { path } },
      );
    }
    const buf = Buffer.alloc(FINGERPRINT_BYTES);
    let got = 0;
    while (got < buf.length) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    // A block device's stat size is 0: what it holds is what was read, and its head says the rest.
    const sizeBytes = st.isFile() ? st.size : got;
    return { sizeBytes, headSha256: createHash('sha256').update(buf.subarray(0, got)).digest('hex') };
  } finally {
    await fh.close();
  }
}

/** The fingerprints of the spec's shared disks, in spec order. */
export async function fingerprintSharedDisks(spec: VmSpec): Promise<SharedDiskFingerprint[]> {
  const out: SharedDiskFingerprint[] = [];
  for (const d of spec.disks) {
    if (!d.shared || d.path === undefined) continue;
    out.push({ id: d.id, path: d.path, ...(await fingerprintFile(d.path)) });
  }
  return out;
}

/**
 * The destination's check, before anything is created or started: every shared disk of the spec is here,
 * and — for each fingerprint the source gave — it is the same file. FERRY_E_SHARED_MISSING or
 * FERRY_E_SHARED_DIFFERS name the disk and both views. Without fingerprints (an older controller) only
 * presence is checked.
 */
export async function checkSharedDisks(
  spec: VmSpec,
  expected: readonly SharedDiskFingerprint[] | undefined,
): Promise<void> {
  const seen = await fingerprintSharedDisks(spec);
  for (const want of expected ?? []) {
    const here = seen.find((s) => s.id === want.id);
    if (here === undefined || here.path !== want.path) {
      throw new FerryError(
        'FERRY_E_BAD_INPUT',
        `Shared disk ${want.id} at ${want.path} is not a shared disk of VM ${spec.name}.`,
      );
    }
    if (here.sizeBytes !== want.sizeBytes || here.headSha256 !== want.headSha256) {
      const what =
        here.sizeBytes !== want.sizeBytes
          ? `${here.sizeBytes} bytes here, ${want.sizeBytes} on the source`
          : "its first MiB differs from the source's";
      throw new FerryError(
        'FERRY_E_SHARED_DIFFERS',
        `The shared disk ${want.id} at ${want.path} is another file on this host: ${what}.`,
        {
          details: {
            disk: want.id,
            path: want.path,
            source: { sizeBytes: want.sizeBytes, headSha256: want.headSha256 },
            here: { sizeBytes: here.sizeBytes, headSha256: here.headSha256 },
          },
        },
      );
    }
  }
}
