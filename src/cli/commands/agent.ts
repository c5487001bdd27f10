/**
 * `ferry agent`: joins the cluster on first start (one-time token → certificates in the data dir), then
 * serves this host's VMs to the controller over mutual TLS until SIGTERM. With --json it prints exactly one
 * line `{name, url, pid}` once listening (the lab waits for it); logs go to stderr as JSON lines
 * (src/agent/log.ts). Stopping the agent never
 * stops its VMs: they run on, and the next agent re-attaches them.
 */
import type { Command } from 'commander';
import { hostname } from 'node:os';
import { isIP } from 'node:net';
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
  json?: boolean;
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
export async function runAgent(o: AgentCliOptions): Promise<number> {
  const json = o.json === true;
  try {
    const name = validateName(o.name ?? defaultName(), 'host name');
    const listen = parseListen(o.listen);
    const migrationAddress = o.migrationAddress ?? listen.host;
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
    const { ensureIdentity } = await import('../../agent/identity.ts');
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
    if (joined && listen.port === 0) {
      log.warn('joined with port 0; the controller was given a URL without the real port');
    }
    log.info(
      joined
        ? `joined the cluster as ${name}; certificates in ${dataDir}`
        : `using the certificates in ${dataDir}`,
    );

    const agent = await startAgent({
      name,
      dataDir,
      migrationAddress,
      listen,
      tls: identity,
      log,
      ...(o.vmBridge === undefined ? {} : { vmBridge: o.vmBridge }),
    });
    const url = isUnspecified(listen.host) ? agentUrl.replace(/:\d+$/, `:${agent.port}`) : agent.url;
    log.info({ url: agent.url, dataDir }, `listening on ${agent.url} (host ${name}, data ${dataDir})`);
    if (json) process.stdout.write(JSON.stringify({ name, url, pid: process.pid }) + '\n');
    else process.stdout.write(`agent ${name} listening on ${url} (pid ${process.pid})\n`);

    await new Promise<void>((resolve) => {
      const stop = (sig: NodeJS.Signals): void => {
        process.off('SIGTERM', stop);
        process.off('SIGINT', stop);
        log.info({ signal: sig }, `${sig}: closing the API; VMs keep running`);
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
    .option('--vm-bridge <bridge>', 'bridge that VM NIC taps join')
    .option('--ca-hash <sha256:hex>', 'pin the cluster CA at join (else trust on first use)')
    .option('--json', 'print one JSON line {name, url, pid} once listening')
    .action(async (opts: AgentCliOptions) => {
      process.exitCode = await runAgent(opts);
    });
}
