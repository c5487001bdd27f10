/**
 * Leadership among controllers that share one store: a lease row (`controller_lease`) with a holder, a
 * term and an expiry on the store's clock. The holder renews it every `renewMs`; when it lapses
 * (`ttlMs` without a renewal) another controller takes it with a compare-and-set that also raises the
 * term. The term is what agents fence on (TERM_HEADER): once an agent has seen term N it refuses N-1, so
 * a deposed leader that still believes it leads cannot give orders.
 *
 * A controller believes it leads only until `ttlMs - marginMs` after the start of its last successful
 * renewal, measured on its own monotonic clock: it stops before the store would let another take over,
 * whatever its process was doing meanwhile (a pause, a lost connection).
 */
import { performance } from 'node:perf_hooks';
import { sql, type RawBuilder } from 'kysely';
import type { SqlStore } from './store/db.ts';

export interface LeaseParams {
  /** How long a lease lasts without renewal. */
  ttlMs: number;
  /** How often the holder renews it and the others try to take it. */
  renewMs: number;
  /** Subtracted from ttlMs for the holder's own belief (clock drift between controller and store). */
  marginMs: number;
}

export const DEFAULT_LEASE: LeaseParams = { ttlMs: 5_000, renewMs: 1_000, marginMs: 1_000 };

export interface LeaseHolder {
  holder: string;
  url: string;
  term: number;
  /** Whether the lease is still within its time, on the store's clock. */
  live: boolean;
}

export interface LeaderLeaseOptions {
  store: SqlStore;
  /** This controller's id (unique among those sharing the store). */
  id: string;
  /** Its public API URL (followers point writers there); a function when it is known only once listening. */
  url: string | (() => string);
  params?: LeaseParams;
  /** Called once per term won, as `term()` starts answering it; long work belongs in the background. */
  onElected?: (term: number) => void;
  /** Called when a held term is lost (taken, or lapsed); not on stop. */
  onDeposed?: (term: number) => void;
  onError?: (err: unknown) => void;
}

/** Milliseconds since the epoch on the store's own clock (controllers' clocks may differ). */
function storeNowMs(store: SqlStore): RawBuilder<number> {
  return store.dialect === 'postgres'
    ? sql<number>`(extract(epoch from clock_timestamp()) * 1000)::bigint`
    : sql<number>`CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)`;
}

export class LeaderLease {
  private held: { term: number; validUntil: number } | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stepping: Promise<void> | undefined;
  private readonly p: LeaseParams;

  constructor(private readonly o: LeaderLeaseOptions) {
    this.p = o.params ?? DEFAULT_LEASE;
  }

  /** The term this controller leads in, while it may act on it; undefined otherwise. */
  term(): number | undefined {
    if (this.held === undefined) return undefined;
    if (performance.now() >= this.held.validUntil) {
      this.depose();
      return undefined;
    }
    return this.held.term;
  }

  /** Who holds the lease, as the store says (for followers). */
  async current(): Promise<LeaseHolder> {
    const r = await this.o.store.db
      .selectFrom('controller_lease')
      .select(['holder', 'url', 'term', sql<number>`CASE WHEN expires_at > ${storeNowMs(this.o.store)} THEN 1 ELSE 0 END`.as('live')])
      .where('id', '=', 1)
      .executeTakeFirstOrThrow();
    return { holder: r.holder, url: r.url, term: Number(r.term), live: Number(r.live) === 1 };
  }

  /** One round: renew a held lease, or take a lapsed one. Answers the term led after it. */
  async step(): Promise<number | undefined> {
    const { db } = this.o.store;
    const now = storeNowMs(this.o.store);
    const started = performance.now();
    if (this.held !== undefined) {
      const { term } = this.held;
      // Renewing needs only that nobody took it: no other term can exist while holder and term are ours.
      const r = await db
        .updateTable('controller_lease')
        .set({ expires_at: sql<number>`${now} + ${this.p.ttlMs}` })
        .where('id', '=', 1)
        .where('holder', '=', this.o.id)
        .where('term', '=', term)
        .returning('term')
        .executeTakeFirst();
      if (r !== undefined && this.held?.term === term) this.held.validUntil = started + this.p.ttlMs - this.p.marginMs;
      else this.depose();
    }
    if (this.held === undefined) {
      const r = await db
        .updateTable('controller_lease')
        .set({ holder: this.o.id, url: typeof this.o.url === 'string' ? this.o.url : this.o.url(), term: sql<number>`term + 1`, expires_at: sql<number>`${now} + ${this.p.ttlMs}` })
        .where('id', '=', 1)
        .where('expires_at', '<', now)
        .returning('term')
        .executeTakeFirst();
      if (r !== undefined) {
        const term = Number(r.term);
        this.held = { term, validUntil: started + this.p.ttlMs - this.p.marginMs };
        this.o.onElected?.(term);
      }
    }
    return this.term();
  }

  /** Runs `step` every renewMs until stop. */
  start(): void {
    const tick = (): void => {
      this.stepping = this.step()
        .then(() => undefined, (err: unknown) => {
          this.o.onError?.(err);
          this.term(); // a lease not renewed in time is given up here
        })
        .finally(() => {
          this.stepping = undefined;
          if (this.timer !== undefined) this.timer = setTimeout(tick, this.p.renewMs);
        });
    };
    this.timer = setTimeout(tick, 0);
  }

  /** Stops renewing; a held lease is released so that another controller need not wait for it to lapse. */
  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.stepping;
    const held = this.held;
    if (held === undefined) return;
    // Given up, not lost: no onDeposed (the controller is closing already).
    this.held = undefined;
    await this.o.store.db
      .updateTable('controller_lease')
      .set({ expires_at: 0 })
      .where('id', '=', 1)
      .where('holder', '=', this.o.id)
      .where('term', '=', held.term)
      .execute();
  }

  private depose(): void {
    const held = this.held;
    if (held === undefined) return;
    this.held = undefined;
    this.o.onDeposed?.(held.term);
  }
}
