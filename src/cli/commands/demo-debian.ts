/**
 * `npm run demo -- --guest debian`: the demo's story with a real distribution. Builds (or reuses) the
 * Debian 12 image, puts it in the server's store, boots a VM from it with a cloud-init seed whose user-data
 * starts a small key-value service (guest/kv-user-data.yaml), stores a value, live-migrates the VM there
 * and back with its disk copied, and checks after each hop that the guest agent reports the same boot id
 * and the service still answers with the value.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FerryError } from '../../common/errors.ts';
import type { VmJson } from '../../common/api.ts';
import { migrationFigures, type MigrationFigures, type MigrationJson } from '../../common/migration.ts';
import { PACKAGE_ROOT } from '../../common/paths.ts';
import { formatBytes, formatDuration } from '../../common/units.ts';
import { enc, type ApiClient } from '../../client/api.ts';
import { formatTable } from '../../client/table.ts';
import { watchMigration } from '../progress.ts';
import { importDebianImage } from './image.ts';
import { askKv, KV_PORT } from '../../guest/kv.ts';

export const DEBIAN_VM = 'demo-deb';

export interface DebianHop extends MigrationFigures {
  migration: string;
  from: string;
  to: string;
  state: string;
  bootIdKept: boolean;
  valueKept: boolean;
  diskBytes: number | null;
  error: { code: string; message: string } | null;
}

export async function debianDemo(
  c: ApiClient,
  hosts: readonly [string, string],
  o: { memory: string; json: boolean; say: (s: string) => void },
): Promise<{ json: unknown; human: () => string; exitCode: number }> {
  const { say } = o;
  const [a, b] = hosts;
  say('== 2. the Debian 12 image: built from Debian\'s own packages (reused when it exists), put in the server\'s store');
  const { buildDebianImage } = await import('../../guest/debian.ts');
  const m = await buildDebianImage({ log: (l) => say(`   build: ${l}`) });
  await importDebianImage(c, m);
  say(`== 3. a VM: ${DEBIAN_VM}, ${o.memory}, booted by SeaBIOS and GRUB from an overlay on debian-12, configured by cloud-init`);
  const old = await c.get<VmJson>(`/api/v1/vms/${DEBIAN_VM}`).catch(() => null);
  if (old) {
    say(`   removing the ${DEBIAN_VM} of an earlier run`);
    await c.delete(`/api/v1/vms/${DEBIAN_VM}`);
  }
  const t0 = Date.now();
  const vm = await c.post<VmJson>('/api/v1/vms', {
    name: DEBIAN_VM,
    memory: o.memory,
    host: a,
    image: 'debian-12',
    userData: readFileSync(join(PACKAGE_ROOT, 'guest', 'kv-user-data.yaml'), 'utf8'),
    waitReady: true,
    readyTimeout: '15m',
  }, { timeoutMs: 18 * 60_000 });
  if (vm.ip === null) throw new FerryError('FERRY_E_LAB', `${DEBIAN_VM} got no address: the demo needs the lab's VM network.`);
  const ip = vm.ip;
  say(`   the guest agent answered after ${formatDuration(Date.now() - t0)}: boot id ${vm.bootId}, address ${ip}`);
  const deadline = Date.now() + 10 * 60_000;
  for (;;) {
    const r = await askKv(ip, 'GET demo').catch(() => '');
    if (r.startsWith('NONE') || r.startsWith('VAL')) break;
    if (Date.now() > deadline) throw new FerryError('FERRY_E_GUEST_TIMEOUT', `The key-value service of ${DEBIAN_VM} did not answer at ${ip}:${KV_PORT}.`);
    await new Promise((r2) => setTimeout(r2, 1000));
  }
  const value = `stored-${Date.now()}`;
  await askKv(ip, `SET demo ${value}`);
  say(`   cloud-init started the key-value service at ${ip}:${KV_PORT} after ${formatDuration(Date.now() - t0)}; it stored demo=${value} on its disk`);

  const hops: DebianHop[] = [];
  for (const [from, to] of [
    [a, b],
    [b, a],
  ] as const) {
    say(`== ${hops.length + 4}. live migration ${from} → ${to}, memory and disk (the overlay; the destination opens its own debian-12 base)`);
    const started = await c.post<MigrationJson>(`/api/v1/vms/${DEBIAN_VM}/migrate`, { to, storage: 'copy' });
    const mig = await watchMigration(() => c.get<MigrationJson>(`/api/v1/migrations/${enc(started.id)}`), { json: o.json });
    const now = await c.get<VmJson>(`/api/v1/vms/${DEBIAN_VM}`).catch(() => null);
    const got = await askKv(ip, 'GET demo').catch(() => '');
    const hop: DebianHop = {
      migration: mig.id,
      from,
      to,
      state: mig.state,
      ...migrationFigures(mig),
      bootIdKept: now?.bootId === vm.bootId && vm.bootId !== null,
      valueKept: got === `VAL demo ${value}`,
      diskBytes: mig.progress?.disk?.transferredBytes ?? null,
      error: mig.error,
    };
    hops.push(hop);
    say(`   ${mig.state}: guest on ${to}, boot id ${hop.bootIdKept ? 'unchanged' : 'CHANGED'}, the service answers demo=${hop.valueKept ? value : `"${got}" (WRONG)`}`);
    if (mig.state !== 'completed') break;
  }
  const ok = hops.length === 2 && hops.every((h) => h.state === 'completed' && h.bootIdKept && h.valueKept);
  const ms = (v: number | null): string => (v === null ? '-' : formatDuration(v));
  const table = formatTable(
    ['HOP', 'STATE', 'TOTAL', 'DOWNTIME (QEMU)', 'GUEST GAP', 'MEMORY MOVED', 'DISK MOVED', 'BOOT ID', 'SERVICE'],
    hops.map((h) => [`${h.from}→${h.to}`, h.state, ms(h.totalMs), ms(h.downtimeMs), ms(h.guestDowntimeMs), h.transferredBytes === null ? '-' : formatBytes(h.transferredBytes), h.diskBytes === null ? '-' : formatBytes(h.diskBytes), h.bootIdKept ? 'kept' : 'changed', h.valueKept ? 'ok' : 'wrong']),
  );
  return {
    json: { ok, vm: DEBIAN_VM, guest: 'debian', bootId: vm.bootId, ip, hops },
    human: () =>
      [
        '',
        'Summary',
        table,
        '',
        ok ? `Debian kept its boot id (${vm.bootId}) and its key-value service kept its data across both hops.` : 'Something went wrong: see the table.',
        '',
        'The lab is still up. Next:',
        `  npx ferry vm show ${DEBIAN_VM}`,
        `  npx ferry vm migrate ${DEBIAN_VM} --to ${b} --mode cold --wait`,
        `  npx ferry vm console ${DEBIAN_VM}`,
        '  npx ferry lab down',
      ].join('\n'),
    exitCode: ok ? 0 : 1,
  };
}
