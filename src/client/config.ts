/**
 * The CLI's cluster configuration: `{server, token, caCertPem}` in `$FERRY_CONFIG` or
 * `~/.config/ferry/config.json` (written by `ferry lab up`, or by hand from what `ferry server` printed).
 * `--server`, `--token` and `--ca FILE` override it field by field.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { FerryError } from '../common/errors.ts';

export interface ClientConfig {
  server: string;
  token: string;
  caCertPem: string;
}

export interface ConfigOverrides {
  server?: string | undefined;
  token?: string | undefined;
  /** Path of a PEM file holding the cluster CA. */
  ca?: string | undefined;
}

export function configPath(): string {
  return process.env.FERRY_CONFIG ?? join(process.env.XDG_CONFIG_HOME ?? join(homedir(), '.config'), 'ferry', 'config.json');
}

function readFile(file: string): Partial<ClientConfig> {
  if (!existsSync(file)) return {};
  try {
    const v = JSON.parse(readFileSync(file, 'utf8')) as unknown;
    if (typeof v !== 'object' || v === null) throw new Error('not a JSON object');
    const o = v as Record<string, unknown>;
    const str = (k: string): string | undefined => (typeof o[k] === 'string' ? (o[k] as string) : undefined);
    const out: Partial<ClientConfig> = {};
    const server = str('server');
    const token = str('token');
    const ca = str('caCertPem');
    if (server !== undefined) out.server = server;
    if (token !== undefined) out.token = token;
    if (ca !== undefined) out.caCertPem = ca;
    return out;
  } catch (err) {
    throw new FerryError('FERRY_E_CONFIG', `The CLI config ${file} is not valid JSON: fix or remove it.`, { cause: err });
  }
}

/** The effective configuration; FERRY_E_CONFIG names what is missing and where it was looked for. */
export function loadConfig(over: ConfigOverrides = {}, file = configPath()): ClientConfig {
  const base = readFile(file);
  let caCertPem = base.caCertPem;
  if (over.ca !== undefined) {
    try {
      caCertPem = readFileSync(over.ca, 'utf8');
    } catch (err) {
      throw new FerryError('FERRY_E_CONFIG', `Cannot read the CA file ${over.ca}.`, { cause: err });
    }
  }
  const cfg = { server: over.server ?? base.server, token: over.token ?? base.token, caCertPem };
  const missing = (['server', 'token', 'caCertPem'] as const).filter((k) => !cfg[k]);
  if (missing.length > 0) {
    throw new FerryError(
      'FERRY_E_CONFIG',
      `No cluster configured (missing ${missing.join(', ')} in ${file}): run \`ferry lab up\`, or pass --server URL --token T --ca FILE (the server's data dir has pki/ca.crt and admin-token).`,
    );
  }
  let url: URL;
  try {
    url = new URL(cfg.server!);
  } catch (err) {
    throw new FerryError('FERRY_E_CONFIG', `Bad server URL ${JSON.stringify(cfg.server)}: use https://HOST:PORT.`, { cause: err });
  }
  if (url.protocol !== 'https:') throw new FerryError('FERRY_E_CONFIG', `The server URL must be https: ${cfg.server}.`);
  return cfg as ClientConfig;
}

/** Writes the config (0600: it holds the admin token). */
export function writeConfig(cfg: ClientConfig, file = configPath()): string {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  writeFileSync(file, JSON.stringify(cfg, null, 2) + '\n', { mode: 0o600 });
  return file;
}
