/**
 * GET /api/v1/events: Server-Sent Events. Each event is `id: <seq>`, `event: <type>`, `data: <json>`.
 * A client reconnecting with Last-Event-ID (or `?after=`) first gets what it missed from the events
 * table, then live events, with no gap and no duplicate. The comment `: live` (LIVE_COMMENT) separates the two.
 */
import type { ServerResponse } from 'node:http';
import type { Controller } from '../controller.ts';
import type { FerryEvent } from '../events.ts';
import type { App } from './types.ts';
import Type from 'typebox';
import { EventsQuery } from './schemas.ts';
import { LIVE_COMMENT } from '../../common/events.ts';
import { failures } from './responses.ts';

const format = (e: FerryEvent): string =>
  `id: ${e.seq}\nevent: ${e.type}\ndata: ${JSON.stringify({ seq: e.seq, at: e.at, type: e.type, subject: e.subject, data: e.data })}\n\n`;

export function registerEventRoutes(app: App, ctl: Controller): void {
  const open = new Set<ServerResponse>();
  app.addHook('preClose', async () => {
    for (const res of open) res.end();
  });

  app.get('/api/v1/events', {
      schema: {
        operationId: 'streamEvents',
        tags: ['events'],
        summary: 'Live events (SSE); Last-Event-ID replays what was missed',
        querystring: EventsQuery,
        // Declared per content type so that the OpenAPI document (3.x has no `produces`) says it streams.
        response: {
          200: {
            description: 'An endless text/event-stream: `id: SEQ`, `event: TYPE`, `data: {seq, at, type, subject, data}` per event',
            content: { 'text/event-stream': { schema: Type.String() } },
          },
          ...failures({}),
        },
      },
    }, async (req, reply) => {
    const header = req.headers['last-event-id'];
    const fromHeader = typeof header === 'string' && /^\d+$/.test(header) ? Number(header) : undefined;
    // With neither, a client gets only what happens from now on.
    const after = fromHeader ?? req.query.after;
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    // fastify runs this handler for HEAD too: a HEAD gets the headers and ends, it does not stream.
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    open.add(res);
    // Subscribe before replaying, buffer live events meanwhile, then drop any the replay already sent.
    let last = 0;
    let buffer: FerryEvent[] | null = [];
    const send = (e: FerryEvent): void => {
      if (e.seq <= last) return;
      last = e.seq;
      res.write(format(e));
    };
    const unsubscribe = ctl.events.subscribe((e) => (buffer ? buffer.push(e) : send(e)));
    const ping = setInterval(() => res.write(': ping\n\n'), 15_000);
    const cleanup = (): void => {
      clearInterval(ping);
      unsubscribe();
      open.delete(res);
    };
    res.on('close', cleanup);
    res.write(': ferry events\n\n');
    try {
      if (after !== undefined) {
        let batch: FerryEvent[];
        let from = after;
        do {
          batch = await ctl.events.since(from, 500);
          for (const e of batch) send(e);
          from = batch.at(-1)?.seq ?? from;
        } while (batch.length === 500);
      }
    } finally {
      const pending = buffer;
      buffer = null;
      for (const e of pending) send(e);
      if (!res.destroyed) res.write(`: ${LIVE_COMMENT}\n\n`);
    }
  });
}
