/**
 * Reading the controller's event stream (`GET /api/v1/events`, SSE) through the API client: events as an
 * async iterable, the end of the replay marked, reconnects resumed with Last-Event-ID so nothing is missed;
 * and a migration followed as a sequence of fresh job documents, one per event about it.
 */
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { FerryError } from '../common/errors.ts';
import { LIVE_COMMENT, type FerryEventJson } from '../common/events.ts';
import type { MigrationJson } from '../common/migration.ts';
import { isFinal } from '../common/states.ts';
import { enc, type ApiClient } from './api.ts';

/** What the stream yields: an event, or the mark that the replay is over and what follows is live. */
export type StreamItem = { kind: 'event'; event: FerryEventJson } | { kind: 'live' };

export interface StreamOptions {
  /** Replay events after this seq first (0: all the server kept); without it, only what happens from now. */
  after?: number;
  /** Reconnect when the connection drops (resuming after the last event seen); else the error ends it. */
  reconnect?: boolean;
  signal?: AbortSignal;
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });

/** Events from the server, oldest first. Ends only on abort, or on a connection error without `reconnect`. */
export async function* streamEvents(c: ApiClient, opts: StreamOptions = {}): AsyncGenerator<StreamItem> {
  let last = opts.after;
  for (let attempt = 0; ; attempt++) {
    const queue: StreamItem[] = [];
    const parser = createParser({
      onEvent: (m: EventSourceMessage) => {
        const e = JSON.parse(m.data) as FerryEventJson;
        queue.push({ kind: 'event', event: e });
      },
      onComment: (text: string) => {
        if (text.trim() === LIVE_COMMENT) queue.push({ kind: 'live' });
      },
    });
    try {
      const headers: Record<string, string> = last === undefined ? {} : { 'last-event-id': String(last) };
      const body = await c.stream('/api/v1/events', headers, opts.signal);
      attempt = 0;
      for await (const chunk of body) {
        parser.feed(chunk.toString('utf8'));
        while (queue.length > 0) {
          const item = queue.shift()!;
          if (item.kind === 'event') last = item.event.seq;
          yield item;
        }
      }
      // The server ended the stream (it is shutting down): like a dropped connection.
      if (!opts.reconnect) return;
    } catch (err) {
      if (opts.signal?.aborted) return;
      if (!opts.reconnect) throw err;
    }
    if (opts.signal?.aborted) return;
    // A restarting server or a blip on the link: retry, backing off to 5 s, resuming after `last`.
    await sleep(Math.min(5_000, 250 * 2 ** attempt), opts.signal);
    if (opts.signal?.aborted) return;
  }
}

/** Which events a user asked for: `--type` (exact, or a dotted prefix: `migration` is `migration.*`) and `--vm`. */
export interface EventFilter {
  types?: readonly string[];
  vm?: string;
}

export function eventMatches(e: FerryEventJson, f: EventFilter): boolean {
  if (f.types && f.types.length > 0 && !f.types.some((t) => e.type === t || e.type.startsWith(t.endsWith('.') ? t : `${t}.`))) return false;
  if (f.vm !== undefined) {
    const aboutVm = e.type.startsWith('vm.') && e.subject === f.vm;
    if (!aboutVm && e.data.vm !== f.vm) return false;
  }
  return true;
}

/**
 * A migration as successive job documents: one read once subscribed (so no change can fall between the
 * read and the stream), then one more per event about the job (and after every reconnect), up to its end.
 */
export async function* migrationFrames(c: ApiClient, id: string, signal?: AbortSignal): AsyncGenerator<MigrationJson> {
  const read = (): Promise<MigrationJson> => c.get<MigrationJson>(`/api/v1/migrations/${enc(id)}`);
  for await (const item of streamEvents(c, { reconnect: true, signal })) {
    if (item.kind === 'event' && !(item.event.subject === id && item.event.type.startsWith('migration.'))) continue;
    const m = await read();
    yield m;
    if (isFinal(m.state)) return;
  }
  if (!signal?.aborted) throw new FerryError('FERRY_E_SERVER_UNREACHABLE', `The event stream ended before migration ${id} did.`);
}
