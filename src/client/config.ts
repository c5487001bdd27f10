/**
 * The CLI's clusters, as kubectl's contexts: `$FERRY_CONFIG` or `~/.config/ferry/config.json` holds named
 * contexts `{server, token, caCertPem}` and the current one (`ferry context list|use|show`; `ferry lab up
 * --name X` adds or updates context X and makes it current, `lab down` removes it). A file of an older Ferry
 * — one `{server, token, caCertPem}` — is read as the single context `default`, and converted when a
 * context is written into it.
 *
 * Which context: `--context`, else `$FERRY_CONTEXT`, else the file's current one. Then field by field
 * `--server` / `$FERRY_SERVER`, `--token` / `$FERRY_TOKEN` and `--ca FILE` override it.
 *
 * A context may name several controllers of one cluster (docs/ha.md): `servers` lists them in the order
 * they are tried, and `server` stays their first, so that a CLI that knows only `server` still reads the
 * file. `--server` and `$FERRY_SERVER` take a comma-separated list too.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { FerryError } from '../common/errors.ts';

export interface ClientConfig {
  /** The first of `servers`. */
  server: string;
  /** Every controller URL of the cluster, tried in this order when one does not answer; never empty. */
  servers: string[];
  token: string;
  caCertPem: string;
}

/** A context as the file stores it: `servers` only when it names more than one controller. */
export interface StoredContext {
  server?: string;
  servers?: string[];
  token?: string;
  caCertPem?: string;
}

export interface ConfigOverrides {
  server?: string | undefined;
  token?: string | undefined;
  /** Path of a PEM file holding the cluster CA. */
  ca?: string | undefined;
  /** A context of the config file instead of its current one. */
  context?: string | undefined;
}

/** The config file as stored (version 2). */
export interface ContextFile {
  version: 2;
  current: string | null;
  contexts: Record<string, StoredContext>;
}

/** The name an older single-cluster file's cluster gets. */
export const LEGACY_CONTEXT = 'default';
const CONTEXT_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function configPath(): string {
  return process.env.FERRY_CONFIG ?? join(process.env.XDG_CONFIG_HOME ?? join(homedir(), '.config'), 'ferry', 'config.json');
}

function fields(o: Record<string, unknown>): StoredContext {
  const out: StoredContext = {};
  for (const k of ['server', 'token', 'caCertPem'] as const) if (typeof o[k] === 'string') out[k] = o[k];
  if (Array.isArray(o.servers) && o.servers.length > 0 && o.servers.every((u) => typeof u === 'string')) out.servers = o.servers as string[];
  return out;
}

/** A context's controllers: `servers` when the file has them, else its one `server`. */
export function contextServers(c: StoredContext): string[] {
  return c.servers ?? (c.server === undefined ? [] : [c.server]);
}

/** A comma-separated `--server`/`$FERRY_SERVER` as a list. */
export function splitServers(text: string): string[] {
  return text.split(',').map((u) => u.trim()).filter((u) => u !== '');
}

/** The file's contexts; a missing file has none, an old one has `default`. */
export function readContexts(file = configPath()): ContextFile {
  if (!existsSync(file)) return { version: 2, current: null, contexts: {} };
  try {
    const v = JSON.parse(readFileSync(file, 'utf8')) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    const o = v as Record<string, unknown>;
    if (typeof o.contexts !== 'object' || o.contexts === null) {
      const legacy = fields(o);
      return Object.keys(legacy).length === 0
        ? { version: 2, current: null, contexts: {} }
        : { version: 2, current: LEGACY_CONTEXT, contexts: { [LEGACY_CONTEXT]: legacy } };
    }
    const contexts: Record<string, StoredContext> = {};
    for (const [name, c] of Object.entries(o.contexts as Record<string, unknown>)) {
      if (typeof c === 'object' && c !== null) contexts[name] = fields(c as Record<string, unknown>);
    }
    const current = typeof o.current === 'string' && o.current in contexts ? o.current : null;
    return { version: 2, current, contexts };
  } catch (err) {
    throw new FerryError('FERRY_E_CONFIG', `The CLI config ${file} is not valid JSON: fix or remove it.`, { cause: err });
  }
}

/** Writes the file (0600: it holds tokens); a file left without contexts is removed. */
export function writeContexts(doc: ContextFile, file = configPath()): void {
  if (Object.keys(doc.contexts).length === 0) {
    rmSync(file, { force: true });
    return;
  }
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  writeFileSync(file, JSON.stringify(doc, null, 2) + '\n', { mode: 0o600 });
}

/** Which context applies, and where the name came from (for messages). */
export function currentContextName(over: ConfigOverrides = {}, doc: ContextFile = readContexts()): { name: string | null; from: string } {
  if (over.context !== undefined) return { name: over.context, from: '--context' };
  const env = process.env.FERRY_CONTEXT;
  if (env !== undefined && env !== '') return { name: env, from: 'FERRY_CONTEXT' };
  return { name: doc.current, from: 'the current context' };
}

/** The context `name`, or FERRY_E_CONTEXT_NOT_FOUND listing those there are. */
export function requireContext(doc: ContextFile, name: string, file = configPath()): StoredContext {
  const c = doc.contexts[name];
  if (c === undefined) {
    const names = Object.keys(doc.contexts);
    throw new FerryError('FERRY_E_CONTEXT_NOT_FOUND', `No context ${JSON.stringify(name)} in ${file} (there are: ${names.join(', ') || 'none'}).`, { details: { context: name, contexts: names } });
  }
  return c;
}

/** The effective configuration; FERRY_E_CONFIG names what is missing and where it was looked for. */
export function loadConfig(over: ConfigOverrides = {}, file = configPath()): ClientConfig {
  const doc = readContexts(file);
  const { name } = currentContextName(over, doc);
  const base = name === null ? {} : requireContext(doc, name, file);
  let caCertPem = base.caCertPem;
  if (over.ca !== undefined) {
    try {
      caCertPem = readFileSync(over.ca, 'utf8');
    } catch (err) {
      throw new FerryError('FERRY_E_CONFIG', `Cannot read the CA file ${over.ca}.`, { cause: err });
    }
  }
  const env = (k: string): string | undefined => (process.env[k] === '' ? undefined : process.env[k]);
  const given = over.server ?? env('FERRY_SERVER');
  const servers = given === undefined ? contextServers(base) : splitServers(given);
  const token = over.token ?? env('FERRY_TOKEN') ?? base.token;
  const missing = [...(servers.length === 0 ? ['server'] : []), ...(token ? [] : ['token']), ...(caCertPem ? [] : ['caCertPem'])];
  if (missing.length > 0) {
    throw new FerryError(
      'FERRY_E_CONFIG',
      `No cluster configured (missing ${missing.join(', ')} in ${name === null ? file : `context ${name} of ${file}`}): run \`ferry lab up\`, or pass --server URL --token T --ca FILE (the server's data dir has pki/ca.crt and admin-token).`,
    );
  }
  for (const server of servers) checkServerUrl(server);
  return { server: servers[0]!, servers, token: token!, caCertPem: caCertPem! };
}

/** A controller URL the CLI may use: https, with a host (FERRY_E_CONFIG otherwise). */
export function checkServerUrl(server: string): URL {
  let url: URL;
  try {
    url = new URL(server);
  } catch (err) {
    throw new FerryError('FERRY_E_CONFIG', `Bad server URL ${JSON.stringify(server)}: use https://HOST:PORT.`, { cause: err });
  }
  if (url.protocol !== 'https:') throw new FerryError('FERRY_E_CONFIG', `The server URL must be https: ${server}.`);
  return url;
}

/** What a context is made of: one server URL, or several (`servers`, tried in order). */
export interface ContextInput {
  server: string;
  servers?: string[] | undefined;
  token: string;
  caCertPem: string;
}

/** Adds or replaces context `name` and makes it current; the other contexts stay. Returns the file. */
export function writeContext(name: string, cfg: ContextInput, file = configPath()): string {
  if (!CONTEXT_RE.test(name)) throw new FerryError('FERRY_E_BAD_NAME', `Bad context name ${JSON.stringify(name)}: letters, digits, . _ - (at most 63).`);
  const servers = cfg.servers ?? [cfg.server];
  for (const server of servers) checkServerUrl(server);
  const doc = readContexts(file);
  doc.contexts[name] = { server: servers[0]!, ...(servers.length > 1 ? { servers } : {}), token: cfg.token, caCertPem: cfg.caCertPem };
  doc.current = name;
  writeContexts(doc, file);
  return file;
}

/**
 * Removes context `name` when it still points at `server` (a context repointed since is someone else's);
 * the current context moves to another one, or none. Returns whether it was removed.
 */
export function removeContext(name: string, server: string, file = configPath()): boolean {
  const doc = readContexts(file);
  // An older file's only cluster is named `default`: it is the lab's when it points at the lab.
  const has = (n: string): boolean => doc.contexts[n] !== undefined && contextServers(doc.contexts[n]).includes(server);
  const key = has(name) ? name : has(LEGACY_CONTEXT) ? LEGACY_CONTEXT : null;
  if (key === null) return false;
  delete doc.contexts[key];
  if (doc.current === key) doc.current = Object.keys(doc.contexts)[0] ?? null;
  writeContexts(doc, file);
  return true;
}

/** Makes `name` the current context. */
export function useContext(name: string, file = configPath()): ContextFile {
  const doc = readContexts(file);
  requireContext(doc, name, file);
  doc.current = name;
  writeContexts(doc, file);
  return doc;
}
