/**
 * The host side of a VM's NICs: one persistent tap per NIC, enslaved to the VM bridge this agent was given
 * (`--vm-bridge`). Tap names are derived from (vm, nic) so that a restarted agent, a stopped VM started
 * again, or a delete after a crash all find the same interface without any state file.
 * Every call is `execFile('ip', …)`: no shell ever sees a name (names are validated anyway).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { FerryError } from '../common/errors.ts';
import type { VmSpec } from '../common/spec.ts';

/** Linux interface names are at most 15 bytes (IFNAMSIZ − 1). */
const IFNAME_MAX = 15;

export interface TapOptions {
  /** The bridge the taps join (in the lab: the host namespace's VM bridge). */
  bridge: string | undefined;
  /** Run `ip` inside this named network namespace (`ip -n NS`); tests use it to stay off the host. */
  netns?: string;
}

/** `ft-` + 12 hex digits of sha256(vm/nic): unique enough per host, stable, always ≤ 15 chars. */
export function tapName(vm: string, nicId: string): string {
  const name = `ft-${createHash('sha256').update(`${vm}/${nicId}`).digest('hex').slice(0, 12)}`;
  if (name.length > IFNAME_MAX) throw new FerryError('FERRY_E_INTERNAL', `tap name ${name} too long`);
  return name;
}

/** NIC id → tap name, for every NIC of the spec. */
export function tapsFor(spec: VmSpec): Record<string, string> {
  return Object.fromEntries(spec.nics.map((n) => [n.id, tapName(spec.name, n.id)]));
}

function ip(args: string[], netns: string | undefined, input?: string): Promise<string> {
  const argv = netns === undefined ? args : ['-n', netns, ...args];
  return new Promise((resolve, reject) => {
    const child = execFile('ip', argv, { timeout: 10_000 }, (err, stdout, stderr) => {
      if (err) {
        const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
        reject(
          new FerryError(
            missing ? 'FERRY_E_MISSING_TOOL' : 'FERRY_E_INTERNAL',
            missing
              ? 'iproute2 (`ip`) is not installed.'
              : `ip ${argv.join(' ')}: ${stderr.trim() || err.message}`,
            { cause: err },
          ),
        );
      } else resolve(stdout);
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

/** The names of every link of the namespace. */
async function linkNames(netns: string | undefined): Promise<Set<string>> {
  const links = JSON.parse(await ip(['-j', 'link', 'show'], netns)) as { ifname: string }[];
  return new Set(links.map((l) => l.ifname));
}

async function linkExists(name: string, netns: string | undefined): Promise<boolean> {
  try {
    await ip(['-j', 'link', 'show', 'dev', name], netns);
    return true;
  } catch {
    return false;
  }
}

/**
 * Makes sure every NIC of the spec has its tap, up and on the bridge; returns NIC id → tap name.
 * Idempotent, so it serves create, start after stop, and re-attach alike.
 */
export async function ensureTaps(spec: VmSpec, opts: TapOptions): Promise<Record<string, string>> {
  const taps = tapsFor(spec);
  if (spec.nics.length === 0) return taps;
  if (opts.bridge === undefined) {
    throw new FerryError(
      'FERRY_E_BAD_SPEC',
      `VM ${spec.name} has NICs (${spec.nics.map((n) => `${n.id} on ${n.network}`).join(', ')}) but this agent has no VM bridge: start \`ferry agent\` with --vm-bridge BRIDGE, or create the VM without NICs.`,
    );
  }
  // Two `ip` calls whatever the number of NICs (each costs a process start, paid while a migration's
  // destination prepares): one listing of the links, one batch for what is missing or not yet on the bridge.
  const links = await linkNames(opts.netns);
  // An existing link's name has no white space, so the bridge's name cannot add a line to the batch.
  if (!links.has(opts.bridge)) {
    throw new FerryError(
      'FERRY_E_BAD_SPEC',
      `The VM bridge ${opts.bridge} given with --vm-bridge does not exist on this host.`,
    );
  }
  const made = Object.values(taps).filter((name) => !links.has(name));
  const batch = [
    ...made.map((name) => `tuntap add dev ${name} mode tap`),
    ...Object.values(taps).map((name) => `link set dev ${name} master ${opts.bridge} up`),
  ];
  try {
    await ip(['-batch', '-'], opts.netns, batch.join('\n') + '\n');
  } catch (err) {
    // Leave nothing half made: a later create of the same VM must start clean.
    for (const name of made) await ip(['link', 'del', 'dev', name], opts.netns).catch(() => undefined);
    throw err;
  }
  return taps;
}

/** Deletes the spec's taps; ones already gone are fine. */
export async function removeTaps(spec: VmSpec, opts: Pick<TapOptions, 'netns'> = {}): Promise<void> {
  for (const name of Object.values(tapsFor(spec))) {
    if (await linkExists(name, opts.netns)) await ip(['link', 'del', 'dev', name], opts.netns);
  }
}
