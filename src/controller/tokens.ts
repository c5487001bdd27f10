/**
 * Secrets the controller hands out: API tokens (the first admin token, and those of `ferry token create`)
 * and one-time join tokens. All are `<id>.<secret>`; only a SHA-256 of the secret is stored (the secrets are
 * 256 random bits, so a slow hash buys nothing), and comparison is constant-time. An API token has a role:
 * `admin` may do everything, `read-only` may read (GET, the event stream, /metrics) and nothing else
 * (app.ts refuses its writes with FERRY_E_READ_ONLY). Revoking deletes the token: it is refused at once.
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

export const TOKEN_ROLES = ['admin', 'read-only'] as const;
export type TokenRole = (typeof TOKEN_ROLES)[number];

export interface ApiTokenInfo {
  id: string;
  role: TokenRole;
  createdAt: string;
}

/** A new API token of `role`; the secret is in `token`, shown this once. */
export function createApiToken(store: Store, role: TokenRole): ApiTokenInfo & { token: string } {
  const t = mint();
  const createdAt = nowIso();
  store.sql.prepare('INSERT INTO api_tokens (id, secret_hash, role, created_at) VALUES (?, ?, ?, ?)').run(t.id, hash(t.secret), role, createdAt);
  return { id: t.id, role, createdAt, token: t.token };
}

export function listApiTokens(store: Store): ApiTokenInfo[] {
  const rows = store.sql.prepare('SELECT id, role, created_at FROM api_tokens ORDER BY created_at, id').all() as { id: string; role: string; created_at: string }[];
  return rows.map((r) => ({ id: r.id, role: r.role === 'admin' ? 'admin' : 'read-only', createdAt: r.created_at }));
}

/** Deletes the token `id` (its id, or the whole token); FERRY_E_TOKEN_NOT_FOUND when there is none. */
export function revokeApiToken(store: Store, id: string): ApiTokenInfo {
  const key = id.split('.')[0]!;
  const row = listApiTokens(store).find((t) => t.id === key);
  if (row === undefined) throw new FerryError('FERRY_E_TOKEN_NOT_FOUND', `No API token with id ${JSON.stringify(key)}: see \`ferry token list\`.`);
  store.sql.prepare('DELETE FROM api_tokens WHERE id = ?').run(key);
  return row;
}

/** Creates the admin token if there is none; returns it only when it was just created. */
export function ensureAdminToken(store: Store): string | null {
  const has = store.sql.prepare("SELECT 1 FROM api_tokens WHERE role = 'admin' LIMIT 1").get();
  if (has) return null;
  const t = mint();
  store.sql
    .prepare('INSERT INTO api_tokens (id, secret_hash, role, created_at) VALUES (?, ?, ?, ?)')
    .run(t.id, hash(t.secret), 'admin', nowIso());
  return t.token;
}

/** The token's role, or null when it is not a valid API token (unknown, wrong or revoked). */
export function checkApiToken(store: Store, token: string): TokenRole | null {
  const p = split(token);
  if (!p) return null;
  const row = store.sql.prepare('SELECT secret_hash, role FROM api_tokens WHERE id = ?').get(p.id) as
    | { secret_hash: string; role: string }
    | undefined;
  if (!row || !sameHash(p.secret, row.secret_hash)) return null;
  // An unknown role reads only: a token is never given more than its row says.
  return row.role === 'admin' ? 'admin' : 'read-only';
}

export function createJoinToken(store: Store, ttlMs = DEFAULT_JOIN_TOKEN_TTL_MS): { token: string; expiresAt: string } {
  const t = mint();
  const expiresAt = new Date(Date.now() + ttlMs).toISOString();
  store.sql
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
    ? (store.sql.prepare('SELECT secret_hash, expires_at, used_at FROM join_tokens WHERE id = ?').get(p.id) as
        | { secret_hash: string; expires_at: string; used_at: string | null }
        | undefined)
    : undefined;
  if (!p || !row || !sameHash(p.secret, row.secret_hash)) {
    throw new FerryError('FERRY_E_JOIN_TOKEN', 'The join token is unknown: get a new one (`ferry server join-token` or POST /api/v1/join-tokens).');
  }
  if (row.used_at !== null) throw new FerryError('FERRY_E_JOIN_TOKEN', 'The join token was used already: get a new one.');
  if (Date.parse(row.expires_at) <= Date.now()) throw new FerryError('FERRY_E_JOIN_TOKEN', 'The join token has expired: get a new one.');
  if (opts.dryRun) return;
  const res = store.sql
    .prepare('UPDATE join_tokens SET used_at = ?, used_by = ? WHERE id = ? AND used_at IS NULL')
    .run(nowIso(), hostName, p.id);
  if (res.changes !== 1) throw new FerryError('FERRY_E_JOIN_TOKEN', 'The join token was used already: get a new one.');
}
