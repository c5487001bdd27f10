/**
 * Secrets the controller hands out: the admin API token and one-time join tokens. Both are
 * `<id>.<secret>`; only a SHA-256 of the secret is stored (the secrets are 256 random bits, so a slow
 * hash buys nothing), and comparison is constant-time.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { FerryError } from '../common/errors.ts';
import { nowIso, type Store } from './store/db.ts';

export const DEFAULT_JOIN_TOKEN_TTL_MS = 60 * 60_000;

const hash = (secret: string): string => createHash('sha256').update(secret).digest('hex');

function split(token: string): { id: string; secret: string } | null {
  const m = /^([a-z0-9]{8,32})\.([A-Za-z0-9_-]{16,128})$/.exec(token);
  return m ? { id: m[1]!, secret: m[2]! } : null;
}

function sameHash(secret: string, stored: string): boolean {
  const a = Buffer.from(hash(secret), 'hex');
  const b = Buffer.from(stored, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

function mint(): { id: string; secret: string; token: string } {
  const id = randomBytes(8).toString('hex');
  const secret = randomBytes(32).toString('base64url');
  return { id, secret, token: `${id}.${secret}` };
}

/** Creates the admin token if there is none; returns it only when it was just created. */
export function ensureAdminToken(store: Store): string | null {
  const has = store.sqlite.prepare("SELECT 1 FROM api_tokens WHERE role = 'admin' LIMIT 1").get();
  if (has) return null;
  const t = mint();
  store.sqlite
    .prepare('INSERT INTO api_tokens (id, secret_hash, role, created_at) VALUES (?, ?, ?, ?)')
    .run(t.id, hash(t.secret), 'admin', nowIso());
  return t.token;
}

/** The token's role, or null when it is not a valid API token. */
export function checkApiToken(store: Store, token: string): string | null {
  const p = split(token);
  if (!p) return null;
  const row = store.sqlite.prepare('SELECT secret_hash, role FROM api_tokens WHERE id = ?').get(p.id) as
    | { secret_hash: string; role: string }
    | undefined;
  return row && sameHash(p.secret, row.secret_hash) ? row.role : null;
}

export function createJoinToken(store: Store, ttlMs = DEFAULT_JOIN_TOKEN_TTL_MS): { token: string; expiresAt: string } {
  const t = mint();
  const expiresAt = new Date(Date.now() + ttlMs).toISOString();
  store.sqlite
    .prepare('INSERT INTO join_tokens (id, secret_hash, created_at, expires_at) VALUES (?, ?, ?, ?)')
    .run(t.id, hash(t.secret), nowIso(), expiresAt);
  return { token: t.token, expiresAt };
}

/**
 * Marks a join token used by `hostName`, atomically: of two joins racing with the same token, one wins.
 * Unknown, wrong, expired or used tokens all give FERRY_E_JOIN_TOKEN. `dryRun` checks without using it.
 */
export function consumeJoinToken(store: Store, token: string, hostName: string, opts: { dryRun?: boolean } = {}): void {
  const p = split(token);
  const row = p
    ? (store.sqlite.prepare('SELECT secret_hash, expires_at, used_at FROM join_tokens WHERE id = ?').get(p.id) as
        | { secret_hash: string; expires_at: string; used_at: string | null }
        | undefined)
    : undefined;
  if (!p || !row || !sameHash(p.secret, row.secret_hash)) {
    throw new FerryError('FERRY_E_JOIN_TOKEN', 'The join token is unknown: get a new one (`ferry server join-token` or POST /api/v1/join-tokens).');
  }
  if (row.used_at !== null) throw new FerryError('FERRY_E_JOIN_TOKEN', 'The join token was used already: get a new one.');
  if (Date.parse(row.expires_at) <= Date.now()) throw new FerryError('FERRY_E_JOIN_TOKEN', 'The join token has expired: get a new one.');
  if (opts.dryRun) return;
  const res = store.sqlite
    .prepare('UPDATE join_tokens SET used_at = ?, used_by = ? WHERE id = ? AND used_at IS NULL')
    .run(nowIso(), hostName, p.id);
  if (res.changes !== 1) throw new FerryError('FERRY_E_JOIN_TOKEN', 'The join token was used already: get a new one.');
}
