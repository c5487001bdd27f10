/**
 * The controller's event log: every state change worth telling (host joined/unreachable, VM created,
 * state changed, ...) is appended to the `events` table and handed to live subscribers (SSE). The
 * table's `seq` is the SSE event id, so a client that reconnects with Last-Event-ID misses nothing.
 */
import type { FerryEventJson } from '../common/events.ts';
import type { Store } from './store/db.ts';

/** An event as stored and as streamed: the wire shape (src/common/events.ts). */
export type FerryEvent = FerryEventJson;

export type Listener = (e: FerryEvent) => void;

export class EventBus {
  private readonly listeners = new Set<Listener>();
  private readonly insert;
  constructor(private readonly store: Store) {
    // Synchronous insert: the seq must be known before the event is handed to anyone.
    this.insert = store.sql.prepare<[string, string, string, string], { seq: number }>(
      'INSERT INTO events (at, type, subject, data) VALUES (?, ?, ?, ?) RETURNING seq',
    );
  }

  publish(type: string, subject: string, data: Record<string, unknown> = {}): FerryEvent {
    const at = new Date().toISOString();
    const row = this.insert.get(at, type, subject, JSON.stringify(data));
    const e: FerryEvent = { seq: row!.seq, at, type, subject, data };
    for (const l of this.listeners) {
      try {
        l(e);
      } catch {
        // A broken subscriber must not stop the others or the publisher.
      }
    }
    return e;
  }

  subscribe(l: Listener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /** Events after `seq`, oldest first (for Last-Event-ID replay and `GET /events?after=`). */
  async since(seq: number, limit = 1000): Promise<FerryEvent[]> {
    const rows = await this.store.db
      .selectFrom('events')
      .selectAll()
      .where('seq', '>', seq)
      .orderBy('seq')
      .limit(limit)
      .execute();
    return rows.map((r) => ({ seq: r.seq, at: r.at, type: r.type, subject: r.subject, data: JSON.parse(r.data) as Record<string, unknown> }));
  }
}
