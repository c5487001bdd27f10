/**
 * The controller's event stream (`GET /api/v1/events`) read with fetch, because EventSource cannot send the
 * Authorization header. On a broken connection it reconnects with Last-Event-ID, so nothing is missed nor
 * seen twice; `onLive` fires each time the server's replay is over (`: live`), when a fresh read of the
 * resources cannot miss a change.
 */
import { createParser } from 'eventsource-parser';
import type { FerryEventJson } from '../../src/common/events.ts';

/** The server's LIVE_COMMENT (src/common/events.ts; web/ imports only types from it, a unit test holds them equal). */
export const LIVE_COMMENT = 'live';

export interface StreamHandlers {
  onEvent(e: FerryEventJson): void;
  onLive(): void;
  onState(connected: boolean): void;
  onUnauthorized(): void;
}

export function followEvents(token: string, h: StreamHandlers): () => void {
  const stop = new AbortController();
  let lastId: string | null = null;
  let delay = 500;
  const run = async (): Promise<void> => {
    while (!stop.signal.aborted) {
      try {
        const headers: Record<string, string> = { authorization: `Bearer ${token}`, accept: 'text/event-stream' };
        if (lastId !== null) headers['last-event-id'] = lastId;
        const res = await fetch('/api/v1/events', { headers, signal: stop.signal, cache: 'no-store' });
        if (res.status === 401) {
          h.onUnauthorized();
          return;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        h.onState(true);
        delay = 500;
        const parser = createParser({
          onEvent: (m) => {
            if (m.id) lastId = m.id;
            h.onEvent(JSON.parse(m.data) as FerryEventJson);
          },
          onComment: (c) => {
            if (c.trim() === LIVE_COMMENT) h.onLive();
          },
        });
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        while (true) {
          const { value, done } = await reader.read();
          if (done) break;
          parser.feed(value);
        }
      } catch {
        if (stop.signal.aborted) return;
      }
      h.onState(false);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10_000);
    }
  };
  void run();
  return () => stop.abort();
}
