/** The live feed of the controller's events, newest first, filterable by type. */
import { useState } from 'preact/hooks';
import { events } from '../store.ts';

export function EventsView() {
  const [filter, setFilter] = useState('');
  const shown = events.value.filter((e) => !filter || e.type.startsWith(filter) || e.subject.includes(filter));
  return (
    <section aria-labelledby="events-title">
      <h1 id="events-title">Events</h1>
      <label for="events-filter">Filter by type or subject</label>
      <input id="events-filter" type="search" value={filter} onInput={(e) => setFilter((e.currentTarget as HTMLInputElement).value)} placeholder="migration, vm.state, h1…" />
      {shown.length === 0 && <p class="muted">No events since this page opened.</p>}
      <ol class="feed" aria-live="polite">
        {shown.map((e) => (
          <li key={e.seq}>
            <time dateTime={e.at}>{new Date(e.at).toLocaleTimeString()}</time> <code>{e.type}</code> <strong>{e.subject}</strong>{' '}
            <span class="muted">{summary(e.data)}</span>
          </li>
        ))}
      </ol>
    </section>
  );
}

function summary(d: Record<string, unknown>): string {
  const parts: string[] = [];
  for (const k of ['vm', 'state', 'phase', 'host', 'status', 'to']) if (typeof d[k] === 'string') parts.push(`${k} ${d[k] as string}`);
  const p = d.progress as { percent?: number } | null | undefined;
  if (p && typeof p.percent === 'number') parts.push(`${p.percent.toFixed(0)} %`);
  const err = d.error as { code?: string } | null | undefined;
  if (err?.code) parts.push(err.code);
  return parts.join(' · ');
}
