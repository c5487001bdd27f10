/**
 * What the console knows, as signals: hosts, VMs, migrations (with the chart samples each collected from
 * its progress events), drains and the event feed. Filled by reads of the API when the event stream is live
 * and kept current by the stream's events — a read follows an event, never a timer.
 */
import { signal } from '@preact/signals';
import type { DrainJson, HostSummaryJson, VmJson } from '../../src/common/api.ts';
import type { FerryEventJson } from '../../src/common/events.ts';
import type { MigrationJson, MigrationProgress } from '../../src/common/migration.ts';
import { api } from './api.ts';
import { addSample, sampleOf, type Sample } from './logic.ts';

export const hosts = signal<HostSummaryJson[]>([]);
export const vms = signal<VmJson[]>([]);
export const migrations = signal<Record<string, MigrationJson>>({});
export const samples = signal<Record<string, Sample[]>>({});
export const drains = signal<Record<string, DrainJson>>({});
export const events = signal<FerryEventJson[]>([]);
export const connected = signal(false);
export const loadError = signal<string | null>(null);

const FEED = 300;

function keep(m: MigrationJson): void {
  migrations.value = { ...migrations.value, [m.id]: m };
  if (m.progress) record(m.id, m.progress);
}

function record(id: string, p: MigrationProgress): void {
  const list = samples.value[id] ?? [];
  const next = addSample(list, sampleOf(p));
  if (next.length !== list.length) samples.value = { ...samples.value, [id]: next };
}

async function guarded(what: Promise<void>): Promise<void> {
  try {
    await what;
    loadError.value = null;
  } catch (err) {
    loadError.value = String((err as Error).message ?? err);
  }
}

export const reloadHosts = () => guarded(api.hosts().then((h) => void (hosts.value = h)));
export const reloadVms = () => guarded(api.vms().then((v) => void (vms.value = v)));
export const reloadMigration = (id: string) => guarded(api.migration(id).then(keep));
export const reloadMigrations = () =>
  guarded(
    api.migrations().then((list) => {
      const next = { ...migrations.value };
      for (const m of list) next[m.id] = m;
      migrations.value = next;
      for (const m of list) if (m.progress) record(m.id, m.progress);
    }),
  );
export const reloadDrain = (host: string) =>
  guarded(
    api.drainStatus(host).then((d) => {
      if (d.state !== 'none') drains.value = { ...drains.value, [host]: d };
    }),
  );

export function reloadAll(): void {
  void reloadHosts();
  void reloadVms();
  void reloadMigrations();
  for (const host of Object.keys(drains.value)) void reloadDrain(host);
}

/** One event of the stream: into the feed, then whatever it changed is read again (or taken from it). */
export function onEvent(e: FerryEventJson): void {
  events.value = [e, ...events.value].slice(0, FEED);
  const [noun] = e.type.split('.');
  if (noun === 'migration') {
    const known = migrations.value[e.subject];
    const d = e.data as Partial<MigrationJson>;
    if (known && e.type === 'migration.progress' && d.progress) {
      // Progress comes about once a second: taken from the event itself, no read.
      keep({ ...known, state: d.state ?? known.state, phase: d.phase ?? known.phase, progress: d.progress });
    } else {
      if (d.progress) record(e.subject, d.progress);
      void reloadMigration(e.subject);
    }
    // A drain's items say `migrating` only in a read: follow its VMs' migrations.
    for (const d of Object.values(drains.value)) {
      if (d.state === 'draining' && d.items.some((i) => i.vm === e.data.vm)) void reloadDrain(d.host);
    }
    return;
  }
  if (noun === 'vm') {
    void reloadVms();
    void reloadHosts();
  }
  if (noun === 'host') {
    void reloadHosts();
    if (e.type.startsWith('host.drain.')) void reloadDrain(e.subject);
  }
}
