/**
 * `ferry agent`: joins the cluster on first start (one-time token → certificates in the data dir), then
 * serves this host's VMs to the controller over mutual TLS until SIGTERM. With --json it prints exactly one
 * line `{name, url, pid}` once listening (the lab waits for it); logs go to stderr as JSON lines
 * (src/agent/log.ts). Stopping the agent never
 * stops its VMs: they run on, and the next agent re-attaches them. `--config FILE` takes every flag from a
 * YAML file (keys: the flags in camelCase; a flag given wins), e.g. deploy/agent.yaml. The migration stream
 * and NBD listen on the address of this host inside `--migration-cidr` (not the management one) and on
 * ports of `--migration-ports`. `--protocol N` plays an agent of an older protocol version (rolling-upgrade
 * tests): it advertises N and serves only the routes N has.
 */
import type { Command } from 'commander';
import { hostname, networkInterfaces } from 'node:os';
import { isIP } from 'node:net';
import { AGENT_PROTOCOL, AGENT_PROTOCOL_MIN } from '../../common/protocol.ts';
import { rangeOf } from '../../common/agent-routes.ts';
import { fromFile, inCidr4, loadConfigFile, parseCidr4, parsePortRange, type PortRange } from '../../common/config-file.ts';
import { FerryError } from '../../common/errors.ts';
import { defaultAgentDir } from '../../common/paths.ts';
import { validateName } from '../../common/units.ts';
import { printError } from '../output.ts';

export const DEFAULT_AGENT_PORT = 7443;

export interface AgentCliOptions {
  server?: string;
  joinToken?: string;
  name?: string;
  listen?: string;
  data?: string;
  migrationAddress?: string;
  vmBridge?: string;
  caHash?: string;
  migrationCidr?: string;
  migrationPorts?: string;
  protocol?: string;
  config?: string;
  json?: boolean;
}

/** The keys of `ferry agent --config FILE`: its flags in camelCase (not --config, --json, --protocol). */
export const AGENT_CONFIG_KEYS = {
  server: 'string',
  joinToken: 'string',
  name: 'string',
  listen: 'string',
  data: 'string',
  migrationAddress: 'string',
  migrationCidr: 'string',
  migrationPorts: 'string',
  vmBridge: 'string',
  caHash: 'string',
} as const;

/** The flags over the config file's keys, and for each value whether a flag gave it. */
export function agentOptions(o: AgentCliOptions): { opts: AgentCliOptions; fromFlag: (k: keyof AgentCliOptions) => boolean } {
  if (o.config === undefined) return { opts: o, fromFlag: () => true };
  const file = loadConfigFile(o.config, AGENT_CONFIG_KEYS);
  const given = new Set(Object.keys(o).filter((k) => o[k as keyof AgentCliOptions] !== undefined));
  return { opts: { ...file, ...Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) }, fromFlag: (k) => given.has(k) };
}

/** This host's address inside the migration network: the one the stream and NBD listen on. */
export function migrationAddressIn(cidr: string, addresses: string[] = localAddresses()): string {
  parseCidr4(cidr);
  const found = addresses.find((a) => inCidr4(a, cidr));
  if (found === undefined) {
    throw new FerryError(
      'FERRY_E_NO_MIGRATION_ADDRESS',
      `No address of this host is inside the migration network ${cidr} (it has ${addresses.join(', ') || 'none'}): add one, or fix --migration-cidr.`,
      { details: { cidr, addresses } },
    );
  }
  return found;
}

function localAddresses(): string[] {
  return Object.values(networkInterfaces())
    .flatMap((l) => l ?? [])
    .filter((a) => a.family === 'IPv4' && !a.internal)
    .map((a) => a.address);
}

/** `--protocol N`: a version this Ferry can still play (its current or previous one). */
export function parseProtocolFlag(text: string): { current: number; min: number } {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < AGENT_PROTOCOL_MIN || n > AGENT_PROTOCOL) {
    throw new FerryError('FERRY_E_USAGE', `Bad --protocol ${JSON.stringify(text)}: ${AGENT_PROTOCOL_MIN}–${AGENT_PROTOCOL} (this agent speaks ${AGENT_PROTOCOL}; ${AGENT_PROTOCOL_MIN} plays the previous version).`);
  }
  return rangeOf(n);
}

/** `ADDR:PORT`, `[v6]:PORT`, `ADDR` or `:PORT`. */
export function parseListen(text: string | undefined): { host: string; port: number } {
  if (text === undefined) return { host: '0.0.0.0', port: DEFAULT_AGENT_PORT };
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*))(?::(\d{1,5}))?$/.exec(text.trim());
  const host = m?.[1] ?? m?.[2] ?? '';
  const port = m?.[3] === undefined ? DEFAULT_AGENT_PORT : Number(m[3]);
  if (m === null || (host !== '' && isIP(host) === 0) || port > 65535) {
    throw new FerryError(
      'FERRY_E_USAGE',
      `Bad --listen ${JSON.stringify(text)}: use ADDR:PORT with an IP address, e.g. 10.0.0.1:7443.`,
    );
  }
  return { host: host === '' ? '0.0.0.0' : host, port };
}

function defaultName(): string {
  const n = hostname()
    .toLowerCase()
    .split('.')[0]!
    .replace(/[^a-z0-9-]/g, '-')
    .replace(/^-+/, '');
  return n === '' ? 'host' : n.slice(0, 63);
}

const isUnspecified = (addr: string): boolean => addr === '0.0.0.0' || addr === '::';

/** Runs the agent until SIGTERM/SIGINT; resolves with the exit code. */
export async function runAgent(flags: AgentCliOptions): Promise<number> {
  const json = flags.json === true;
  try {
    const { opts: o, fromFlag } = agentOptions(flags);
    const checked = <T>(key: keyof AgentCliOptions, parse: () => T): T => fromFile(o.config, key, fromFlag(key), parse);
    const name = checked('name', () => validateName(o.name ?? defaultName(), 'host name'));
    const listen = checked('listen', () => parseListen(o.listen));
    const protocol = o.protocol === undefined ? undefined : parseProtocolFlag(o.protocol);
    const migrationPorts: PortRange | undefined = o.migrationPorts === undefined ? undefined : checked('migrationPorts', () => parsePortRange(o.migrationPorts!));
    if (o.migrationCidr !== undefined && o.migrationAddress !== undefined) {
      throw new FerryError('FERRY_E_USAGE', '--migration-cidr picks the migration address: give it or --migration-address, not both.');
    }
    const migrationAddress =
      o.migrationCidr !== undefined
        ? checked('migrationCidr', () => migrationAddressIn(o.migrationCidr!))
        : (o.migrationAddress ?? listen.host);
    if (isIP(migrationAddress) === 0 || isUnspecified(migrationAddress)) {
      throw new FerryError(
        'FERRY_E_USAGE',
        `The migration address ${JSON.stringify(migrationAddress)} must be one IP address of this host: pass --migration-address or --listen ADDR:PORT.`,
      );
    }
    if (o.vmBridge !== undefined && !/^[A-Za-z0-9_.-]{1,15}$/.test(o.vmBridge)) {
      throw new FerryError(
        'FERRY_E_USAGE',
        `Bad --vm-bridge ${JSON.stringify(o.vmBridge)}: an interface name of at most 15 characters.`,
      );
    }
    const dataDir = o.data ?? defaultAgentDir(name);
    // The URL the controller will call; an unspecified listen address is reached at the migration address.
    const advertised = isUnspecified(listen.host) ? migrationAddress : listen.host;
    const agentUrl = `https://${isIP(advertised) === 6 ? `[${advertised}]` : advertised}:${listen.port}`;

    const { agentLogger } = await import('../../agent/log.ts');
    const log = agentLogger(name);
    const { ensureIdentity, loadJoinRecord } = await import('../../agent/identity.ts');
    const { startAgent } = await import('../../agent/server.ts');
    const { identity, joined } = await ensureIdentity({
      dataDir,
      name,
      agentUrl,
      log,
      ...(o.server === undefined ? {} : { server: o.server }),
      ...(o.joinToken === undefined ? {} : { token: o.joinToken }),
      ...(o.caHash === undefined ? {} : { caHash: o.caHash }),
    });
    const { CertificateRenewer, requestRenewal, saveRenewal, renewalStep, certificateView } = await import('../../agent/renewal.ts');
    const record = await loadJoinRecord(dataDir);
    if (!joined && renewalStep(certificateView(identity.certPem), Date.now()).kind === 'expired') {
      // Offline past its certificate's validity: only the operator's new join token lets it back in.
      const notAfter = certificateView(identity.certPem).notAfter;
      const serverUrl = o.server ?? record?.serverUrl;
      if (o.joinToken === undefined || serverUrl === undefined) {
        throw new FerryError(
          'FERRY_E_CERT_EXPIRED',
          `The certificate in ${dataDir} expired at ${notAfter}: ask the controller for a join token (ferry server join-token, or POST /api/v1/join-tokens) and start once with --join-token T${serverUrl === undefined ? ' --server URL' : ''} to re-join as ${name}.`,
        );
      }
      const pair = await requestRenewal({ serverUrl, name, identity, joinToken: o.joinToken });
      await saveRenewal(dataDir, pair, new Date().toISOString());
      Object.assign(identity, pair);
      log.info({ notAfter: certificateView(pair.certPem).notAfter }, `re-joined as ${name} with the join token: the certificate had expired at ${notAfter}`);
    }
    if (joined && listen.port === 0) {
      log.warn('joined with port 0; the controller was given a URL without the real port');
    }
    log.info(
      joined
        ? `joined the cluster as ${name}; certificates in ${dataDir}`
        : `using the certificates in ${dataDir}`,
    );

    // The renewer is made before the server it reloads (the server serves its view): it finds it here.
    const served: { agent?: Awaited<ReturnType<typeof startAgent>> } = {};
    const renewer =
      record === undefined
        ? undefined
        : new CertificateRenewer({
            dataDir,
            name,
            serverUrl: record.serverUrl,
            identity,
            apply: () => served.agent?.reloadCertificate(),
            renewedAt: (await loadJoinRecord(dataDir))?.renewedAt ?? null, // a re-join above just wrote it
            log,
          });
    if (renewer === undefined) log.warn(`no ${dataDir}/agent.json: the certificate will not be renewed (re-join the host before it expires)`);
    const agent = await startAgent({
      name,
      dataDir,
      migrationAddress,
      listen,
      tls: identity,
      log,
      ...(o.vmBridge === undefined ? {} : { vmBridge: o.vmBridge }),
      ...(migrationPorts === undefined ? {} : { migrationPorts }),
      ...(protocol === undefined ? {} : { protocol }),
      ...(renewer === undefined ? {} : { certificate: () => renewer.view() }),
    });
    served.agent = agent;
    renewer?.start();
    const url = isUnspecified(listen.host) ? agentUrl.replace(/:\d+$/, `:${agent.port}`) : agent.url;
    log.info({ url: agent.url, dataDir }, `listening on ${agent.url} (host ${name}, data ${dataDir})`);
    if (json) process.stdout.write(JSON.stringify({ name, url, pid: process.pid }) + '\n');
    else process.stdout.write(`agent ${name} listening on ${url} (pid ${process.pid})\n`);

    await new Promise<void>((resolve) => {
      const stop = (sig: NodeJS.Signals): void => {
        process.off('SIGTERM', stop);
        process.off('SIGINT', stop);
        log.info({ signal: sig }, `${sig}: closing the API; VMs keep running`);
        renewer?.stop();
        // Closing must not hang the exit on a stuck request: the VMs are safe either way.
        const hard = setTimeout(() => resolve(), 5000);
        hard.unref();
        agent.close().then(
          () => resolve(),
          (err: unknown) => {
            log.warn({ err }, `close: ${String(err)}`);
            resolve();
          },
        );
      };
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
    });
    return 0;
  } catch (err) {
    return printError(err, { json });
  }
}

export function registerAgent(program: Command): void {
  program
    .command('agent')
    .description(
      "Run this host's agent: join the cluster (first start), then serve its VMs to the controller",
    )
    .option('--server <url>', 'controller URL, https://HOST:PORT (first start)')
    .option('--join-token <token>', 'one-time join token (first start)')
    .option('--name <name>', 'host name in the cluster (default: the hostname)')
    .option('--listen <addr:port>', `address to serve on (default 0.0.0.0:${DEFAULT_AGENT_PORT})`)
    .option(
      '--data <dir>',
      'state directory: certificates and VM run dirs (default /var/lib/ferry/agents/NAME)',
    )
    .option(
      '--migration-address <addr>',
      'address for migration streams and NBD (default: the listen address)',
    )
    .option('--migration-cidr <cidr>', "the migration network: streams and NBD use this host's address in it")
    .option('--migration-ports <first-last>', 'ports for migration streams and NBD, for a firewall (default: any free port)')
    .option('--vm-bridge <bridge>', 'bridge that VM NIC taps join')
    .option('--config <file>', 'YAML file of these options (keys in camelCase; flags win), e.g. deploy/agent.yaml')
    .option('--protocol <n>', 'play an agent of this older protocol version (rolling-upgrade tests)')
    .option('--ca-hash <sha256:hex>', 'pin the cluster CA at join (else trust on first use)')
    .option('--json', 'print one JSON line {name, url, pid} once listening')
    .action(async (opts: AgentCliOptions) => {
      process.exitCode = await runAgent(opts);
    });
}
