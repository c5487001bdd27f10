/**
 * The NoCloud seed of a VM: the ISO 9660 volume labelled `cidata` that cloud-init reads at boot, with
 * `meta-data` (instance id, hostname, SSH keys), `user-data` (the user's file, verbatim) and
 * `network-config` (version 2: the address Ferry reserved, on the NIC with the VM's MAC).
 *
 * The files are a pure function of the VmSpec, and the ISO is made with xorriso with every date pinned
 * (SOURCE_DATE_EPOCH, file times), so the source and the destination of a migration each make the same
 * bytes from the same spec: the seed is part of the VM without ever being copied. meta-data and
 * network-config are written as JSON, which is YAML too, so no value needs YAML quoting.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rename, rm, utimes, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { FerryError } from '../common/errors.ts';
import type { VmSpec } from '../common/spec.ts';

const run = promisify(execFile);

/** cloud-init's NoCloud label. */
export const SEED_LABEL = 'cidata';

export interface SeedFiles {
  'meta-data': string;
  'user-data': string;
  'network-config': string;
}

/** The seed's three files for a spec with `cloudInit`. */
export function seedFiles(spec: VmSpec): SeedFiles {
  const ci = spec.cloudInit;
  if (ci === undefined) throw new FerryError('FERRY_E_INTERNAL', `VM ${spec.name} has no cloud-init seed.`);
  const meta = {
    'instance-id': ci.instanceId,
    'local-hostname': ci.hostname,
    ...(ci.sshAuthorizedKeys.length > 0 ? { 'public-keys': ci.sshAuthorizedKeys } : {}),
  };
  const ethernets: Record<string, unknown> = {};
  spec.nics.forEach((nic, i) => {
    ethernets[nic.id] = {
      match: { macaddress: nic.mac },
      'set-name': `eth${i}`,
      ...(nic.ip === undefined ? { dhcp4: false } : { addresses: [nic.ip] }),
      ...(i === 0 && ci.gateway !== undefined ? { routes: [{ to: '0.0.0.0/0', via: ci.gateway }] } : {}),
    };
  });
  return {
    'meta-data': JSON.stringify(meta, null, 2) + '\n',
    'user-data': ci.userData ?? '#cloud-config\n{}\n',
    'network-config': JSON.stringify({ version: 2, ethernets }, null, 2) + '\n',
  };
}

/** Writes the seed ISO of `spec` at `path` (atomically); returns its sha256. */
export async function writeSeedIso(spec: VmSpec, path: string): Promise<string> {
  const files = seedFiles(spec);
  const dir = await mkdtemp(join(dirname(path), '.seed-'));
  try {
    for (const [name, text] of Object.entries(files)) {
      await writeFile(join(dir, name), text, { mode: 0o644 });
      await utimes(join(dir, name), 0, 0);
    }
    await utimes(dir, 0, 0);
    const tmp = `${path}.tmp-${process.pid}`;
    try {
      await run(
        'xorriso',
        ['-as', 'genisoimage', '-quiet', '-output', tmp, '-volid', SEED_LABEL, '-joliet', '-rock', ...Object.keys(files).map((f) => join(dir, f))],
        { env: { ...process.env, SOURCE_DATE_EPOCH: '0' }, timeout: 30_000 },
      );
    } catch (err) {
      const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
      throw new FerryError(
        missing ? 'FERRY_E_MISSING_TOOL' : 'FERRY_E_INTERNAL',
        missing ? 'xorriso is needed to make cloud-init seeds: run `npm run setup`.' : `xorriso could not make the seed of ${spec.name}: ${String((err as { stderr?: unknown }).stderr ?? err)}`,
        { cause: err },
      );
    }
    await rename(tmp, path);
    return createHash('sha256').update(await readFile(path)).digest('hex');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
