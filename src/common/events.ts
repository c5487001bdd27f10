/**
 * The wire shape of the controller's event stream (`GET /api/v1/events`, Server-Sent Events), declared once
 * for the server that writes it and the client that reads it.
 */

/** One event as the stream carries it in `data:` (its `id:` is `seq`, its `event:` is `type`). */
export interface FerryEventJson {
  seq: number;
  at: string;
  /** Dotted, noun first: `migration.progress`, `vm.state`, `host.unreachable`, ... */
  type: string;
  /** What the event is about: a migration id, a VM or host name. */
  subject: string;
  data: Record<string, unknown>;
}

/**
 * The SSE comment the server sends once the replay of missed events is over and live events follow: a
 * client that asked for history knows it has all of it, and one that follows a job knows it is subscribed
 * (so a fresh read of the job cannot miss a change).
 */
export const LIVE_COMMENT = 'live';
