/**
 * `ferry server`: the controller in the foreground until SIGTERM/SIGINT. On the first start over a data
 * dir it prints the admin token (shown once; --no-show-token leaves it in the data dir's admin-token file
 * only, for a supervisor whose stdout is a log file). With --json, one JSON line once listening, so a
 * supervisor (the lab) can read the URL. Logs are JSON lines on stderr (src/controller/log.ts). `ferry server join-token` writes a join token straight into the store.
 * `--config FILE` takes the flags from a YAML file (keys: the flags in camelCase, lists for the repeatable
 * ones; a flag given wins), e.g. deploy/server.yaml; `--san NAME` adds DNS names (or addresses) to the HTTPS
 * certificate, for clients that reach the server by name; `--tls-cert FILE --tls-key FILE` serve the API
 * with the operator's own certificate instead (src/controller/server-cert.ts).
 */
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { fromFile, loadConfigFile } from '../../common/config-file.ts';
import { FerryError } from '../../common/errors.ts';
import { parseBandwidth } from '../../common/policy.ts';
import { DEFAULT_LIMITS, type QueueLimits } from '../../controller/migrations/queue.ts';
import { intFlag, rateFlag } from '../flags.ts';
import { parseDuration, validateName } from '../../common/units.ts';
import { randomBytes } from 'node:crypto';
import { action, printError } from '../output.ts';

export function defaultServerDir(): string {
  if (process.env.FERRY_SERVER_DIR) return process.env.FERRY_SERVER_DIR;
  return process.getuid?.() === 0 ? '/var/lib/ferry/server' : join(homedir(), '.local', 'share', 'ferry', 'server');
}

const collect = (v: string, prev: string[]): string[] => [...prev, v];

/** The keys of `ferry server --config FILE`: its flags in camelCase. */
export const SERVER_CONFIG_KEYS = {
  data: 'string',
  listen: 'string',
  vmNetwork: 'list',
  vmGateway: 'string',
  heartbeat: 'string',
  agentCertDays: 'string',
  san: 'list',
  maxOutbound: 'string',
  maxInbound: 'string',
  maxConcurrent: 'string',
  linkCapacity: 'string',
  minLinkShare: 'string',
  store: 'string',
  id: 'string',
  tlsCert: 'string',
  tlsKey: 'string',
} as const;

const SAN_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** A DNS name (or an IP address) for the server certificate. */
export function parseSan(text: string): string {
  if (!SAN_RE.test(text) && !/^[0-9a-fA-F:.]+$/.test(text)) {
    throw new FerryError('FERRY_E_USAGE', `Bad --san ${JSON.stringify(text)}: a DNS name such as ferry.example.org, or an IP address.`);
  }
  return text.toLowerCase();
}

/** The flags over the file's keys (a list flag given replaces the file's list). */
export function serverOptions(flags: ServerFlags): { opts: ServerFlags; fromFlag: (k: string) => boolean } {
  if (flags.config === undefined) return { opts: flags, fromFlag: () => true };
  const file = loadConfigFile(flags.config, SERVER_CONFIG_KEYS);
  const given = new Set(
    Object.entries(flags)
      .filter(([, v]) => v !== undefined && !(Array.isArray(v) && v.length === 0))
      .map(([k]) => k),
  );
  const opts: ServerFlags = { ...flags };
  for (const [k, v] of Object.entries(file)) if (!given.has(k)) (opts as unknown as Record<string, unknown>)[k] = v;
  return { opts, fromFlag: (k) => given.has(k) };
}

interface ServerFlags {
  config?: string;
  san: string[];
  data?: string;
  listen?: string;
  vmNetwork: string[];
  vmGateway?: string;
  heartbeat?: string;
  agentCertDays?: string;
  maxOutbound?: string;
  maxInbound?: string;
  maxConcurrent?: string;
  linkCapacity?: string;
  minLinkShare?: string;
  store?: string;
  ha?: boolean;
  id?: string;
  tlsCert?: string;
  tlsKey?: string;
  showToken: boolean;
  json?: boolean;
}

/** The queue's limits from the flags, each checked (bad input exits 2 before anything starts). */
function queueLimits(f: ServerFlags): QueueLimits {
  const l: QueueLimits = { ...DEFAULT_LIMITS };
  if (f.maxOutbound !== undefined) l.maxOutbound = intFlag('--max-outbound', f.maxOutbound, 1, 1000);
  if (f.maxInbound !== undefined) l.maxInbound = intFlag('--max-inbound', f.maxInbound, 1, 1000);
  if (f.maxConcurrent !== undefined) l.maxConcurrent = intFlag('--max-concurrent', f.maxConcurrent, 1, 100_000);
  if (f.linkCapacity !== undefined) l.linkCapacityBytesPerSec = parseBandwidth(rateFlag('--link-capacity', f.linkCapacity));
  if (f.minLinkShare !== undefined) l.minShareBytesPerSec = parseBandwidth(rateFlag('--min-link-share', f.minLinkShare));
  return l;
}

/**
 * The agent certificates' lifetime: `--agent-cert-days`, or FERRY_AGENT_CERT_SECONDS (tests, which must see
 * a renewal within a minute; not an operator's setting, so not a flag).
 */
function agentCertLifetime(days: number | undefined): number | undefined {
  const seconds = process.env.FERRY_AGENT_CERT_SECONDS;
  if (seconds !== undefined && seconds !== '') return intFlag('FERRY_AGENT_CERT_SECONDS', seconds, 10, 86_400 * 3650) * 1000;
  return days === undefined ? undefined : days * 86_400_000;
}

async function runServer(cli: ServerFlags): Promise<void> {
  const json = cli.json === true;
  try {
    const { opts: flags, fromFlag } = serverOptions(cli);
    const checked = <T>(key: string, parse: () => T): T => fromFile(flags.config, key, fromFlag(key), parse);
    const sans = checked('san', () => flags.san.map(parseSan));
    const { startServer, DEFAULT_LISTEN, ADMIN_TOKEN_FILE } = await import('../../controller/server.ts');
    const { parseNetworkArg } = await import('../../controller/networks.ts');
    if (flags.vmGateway !== undefined && flags.vmNetwork.length !== 1) {
      throw new FerryError('FERRY_E_USAGE', '--vm-gateway needs exactly one --vm-network.');
    }
    const vmNetworks = checked('vmNetwork', () => flags.vmNetwork.map((n) => parseNetworkArg(n, flags.vmGateway)));
    const heartbeatMs = flags.heartbeat === undefined ? undefined : checked('heartbeat', () => parseDuration(flags.heartbeat!, '--heartbeat'));
    const agentCertMs = agentCertLifetime(flags.agentCertDays === undefined ? undefined : checked('agentCertDays', () => intFlag('--agent-cert-days', flags.agentCertDays!, 1, 3650)));
    const { parseListen } = await import('../../controller/server.ts');
    if (flags.listen !== undefined) checked('listen', () => parseListen(flags.listen!));
    const limits = queueLimits(flags);
    if (flags.store !== undefined) (await import('../../controller/store/open.ts')).parseStoreLocation(flags.store);
    if (flags.id !== undefined && flags.ha !== true) throw new FerryError('FERRY_E_USAGE', '--id names this controller among those sharing a store: it needs --ha.');
    if (flags.id !== undefined) validateName(flags.id);
    if ((flags.tlsCert === undefined) !== (flags.tlsKey === undefined)) throw new FerryError('FERRY_E_USAGE', '--tls-cert and --tls-key go together: the certificate and its key.');
    const dataDir = flags.data ?? defaultServerDir();
    const haId = flags.id ?? `c-${randomBytes(4).toString('hex')}`;
    const { controllerLogger } = await import('../../controller/log.ts');
    const log = controllerLogger();
    const srv = await startServer({
      dataDir,
      listen: flags.listen ?? DEFAULT_LISTEN,
      vmNetworks,
      ...(heartbeatMs === undefined ? {} : { heartbeatMs }),
      ...(agentCertMs === undefined ? {} : { agentCertMs }),
      sans,
      limits,
      ...(flags.tlsCert === undefined || flags.tlsKey === undefined ? {} : { ownCert: { certFile: flags.tlsCert, keyFile: flags.tlsKey } }),
      ...(flags.store === undefined ? {} : { store: flags.store }),
      ...(flags.ha !== true
        ? {}
        : {
            ha: {
              id: haId,
              onDeposed: () => {
                // Whatever this process was doing belongs to a term that is over: stop at once, and let the
                // supervisor start it again as a follower (docs/ha.md).
                process.exit(1);
              },
            },
          }),
      log,
    });
    const adminToken = flags.showToken ? srv.adminToken : null;
    log.info({ url: srv.url, dataDir, caFingerprint: srv.caFingerprint, firstStart: srv.adminToken !== null }, `listening on ${srv.url}`);
    if (json) {
      const doc: Record<string, unknown> = { url: srv.url, caFingerprint: srv.caFingerprint, caHash: srv.caHash, dataDir };
      if (flags.ha === true) doc.ha = { id: haId };
      if (adminToken !== null) doc.adminToken = adminToken;
      process.stdout.write(JSON.stringify(doc) + '\n');
    } else {
      const lines = [
        `ferry server listening on ${srv.url}`,
        `data dir        ${dataDir}`,
        `CA fingerprint  ${srv.caFingerprint}`,
        `CA hash         ${srv.caHash}   (ferry agent --ca-hash)`,
        `CA certificate  ${join(dataDir, 'pki', 'ca.crt')}`,
      ];
      if (srv.adminToken !== null && adminToken === null) {
        lines.push(`admin token     in ${join(dataDir, ADMIN_TOKEN_FILE)} (mode 0600)`);
      } else if (adminToken !== null) {
        lines.push(`admin token     ${adminToken}`, `                (shown once; also in ${join(dataDir, ADMIN_TOKEN_FILE)}, mode 0600)`);
      }
      process.stdout.write(lines.join('\n') + '\n');
    }
    await new Promise<void>((resolve) => {
      const stop = (sig: string): void => {
        process.off('SIGINT', onInt);
        process.off('SIGTERM', onTerm);
        log.info({ signal: sig }, `${sig}: closing`);
        resolve();
      };
      const onInt = (): void => stop('SIGINT');
      const onTerm = (): void => stop('SIGTERM');
      process.on('SIGINT', onInt);
      process.on('SIGTERM', onTerm);
    });
    await srv.close();
    process.exitCode = 0;
  } catch (err) {
    process.exitCode = printError(err, { json });
  }
}

export function registerServer(program: Command): void {
  program.enablePositionalOptions();
  const server = program
    .command('server')
    .description('Run the controller (REST API, scheduler, heartbeats) in the foreground')
    .option('--data <dir>', 'data directory (store, CA, admin token)')
    .option('--listen <host:port>', 'address to listen on (default 127.0.0.1:7440; port 0 = any free port)')
    .option('--vm-network <name=cidr>', 'a VM network whose addresses the controller hands out (repeatable)', collect, [])
    .option('--vm-gateway <ip>', 'gateway of the VM network (kept out of allocation)')
    .option('--heartbeat <duration>', 'interval of agent heartbeats (default 2s)')
    .option('--agent-cert-days <n>', 'lifetime of the agent certificates issued at join and renewal; agents renew after 2/3 of it (default 825)')
    .option('--max-outbound <n>', 'migrations leaving one host at a time; more wait queued (default 2)')
    .option('--max-inbound <n>', 'migrations arriving at one host at a time (default 2)')
    .option('--max-concurrent <n>', 'migrations in the whole cluster at a time (default 5)')
    .option('--link-capacity <rate>', "each host's migration link, shared by its migrations, e.g. 1G (= 1 GiB/s; 0 = not limited; default 1G)")
    .option('--min-link-share <rate>', 'no migration gets less of a link than this: one more waits (default 64M; 0 = no floor)')
    .option('--store <location>', 'the store: a SQLite file, PATH or sqlite:PATH (default DATA/ferry.db), or a PostgreSQL database, postgres://USER@HOST:PORT/DB')
    .option('--ha', 'share the store with other controllers: one leads (lease + term), the others answer reads and redirect writes')
    .option('--id <name>', 'this controller among those sharing the store (with --ha; default random)')
    .option('--san <name>', "a DNS name (or address) clients use for the server, added to its certificate (repeatable)", collect, [])
    .option('--tls-cert <file>', "serve the API with this certificate chain (PEM, leaf first, serverAuth only) instead of the cluster CA's; agents keep the cluster CA")
    .option('--tls-key <file>', 'the private key of --tls-cert (PEM, unencrypted)')
    .option('--config <file>', 'YAML file of these options (keys in camelCase; flags win), e.g. deploy/server.yaml')
    .option('--no-show-token', 'print no admin token on the first start: read it from DATA/admin-token (mode 0600)')
    .option('--json', 'print one JSON line {url, caFingerprint, caHash, adminToken?, ha?} once listening')
    // Options after a subcommand are the subcommand's: `server join-token --data D --json` prints JSON.
    // commander needs this on every parent up to the root, else the root hands them back to `server`.
    .enablePositionalOptions()
    .action((flags: ServerFlags) => runServer(flags));

  server
    .command('join-token')
    .description('Create a one-time join token directly in the store (no HTTP)')
    .option('--data <dir>', 'data directory of the server')
    .option('--store <location>', "the server's store, when it is not DATA/ferry.db (as `ferry server --store`)")
    .option('--ttl <duration>', 'validity (default 1h)')
    .option('--json', 'print one JSON document')
    .action(
      action(async (flags: { data?: string; store?: string; ttl?: string }) => {
        // `ferry server --data D join-token` puts `--data` (and `--store`) on the parent: accept them there too.
        const parent = server.opts() as { data?: string; store?: string };
        const dataDir = flags.data ?? parent.data ?? defaultServerDir();
        const { STORE_FILE } = await import('../../controller/controller.ts');
        const { openControllerStore, parseStoreLocation } = await import('../../controller/store/open.ts');
        const location = flags.store ?? parent.store ?? join(dataDir, STORE_FILE);
        const where = parseStoreLocation(location);
        if (where.kind === 'sqlite' && !existsSync(where.file)) {
          throw new FerryError('FERRY_E_CONFIG', `No server store in ${dataDir}: start \`ferry server --data ${dataDir}\` once first.`);
        }
        const { createJoinToken } = await import('../../controller/tokens.ts');
        const store = await openControllerStore(location);
        try {
          const t = createJoinToken(store, flags.ttl === undefined ? undefined : parseDuration(flags.ttl, '--ttl'));
          return { json: t, human: t.token };
        } finally {
          await store.close();
        }
      }),
    );
}
