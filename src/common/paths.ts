/** Where Ferry keeps things on a host: the cache (kernel, images) and per-process state directories. */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository (package) root: the guest tool binary and scripts live below it. */
export const PACKAGE_ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));

/** Ferry's cache: the guest kernel (from setup.sh) and built images. `FERRY_CACHE` overrides it. */
export function cacheDir(): string {
  return process.env.FERRY_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'ferry');
}

/** The unpacked Debian cloud kernel package (boot/vmlinuz-*, lib/modules/*). */
export function kernelPackageDir(): string {
  return join(cacheDir(), 'kernel');
}

/** Built guest images: `<images>/<name>/{vmlinuz,initramfs.gz,manifest.json}`. */
export function imagesDir(): string {
  return join(cacheDir(), 'images');
}

/** The static guest tool built by setup.sh. */
export function guestToolPath(): string {
  return process.env.FERRY_GUEST_BIN ?? join(PACKAGE_ROOT, 'build', 'ferry-guest');
}

/** Default state directory of a host agent (VM run dirs, disks). */
export function defaultAgentDir(name = 'local'): string {
  return process.env.FERRY_AGENT_DIR ?? join('/var/lib/ferry/agents', name);
}
