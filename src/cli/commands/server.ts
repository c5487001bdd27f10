/**
 * `ferry server`: the controller in the foreground until SIGTERM/SIGINT. On the first start over a data
 * dir it prints the admin token (shown once; --no-show-token leaves it in the data dir's admin-token file
 * only, for a supervisor whose stdout is a log file). With --json, one JSON line once listening, so a
 * supervisor (the lab) can read the URL. Logs are JSON lines on stderr (src/controller/log.ts). `ferry server join-token` writes a join token straight into the store.
 */
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { FerryError } from '../../common/errors.ts';
import { parseDuration } from '../../common/units.ts';
import { action, printError } from '../output.ts';

export function defaultServerDir(): string {
  if (process.env.FERRY_SERVER_DIR) return process.env.FERRY_SERVER_DIR;
  return process.getuid?.() === 0 ? '/var/lib/ferry/server' : join(homedir(), '.local', 'share', 'ferry', 'server');
}

const collect = (v: string, prev: string[]): string[] => [...prev, v];

interface ServerFlags {
  data?: string;
  listen?: string;
  vmNetwork: string[];
  vmGateway?: string;
  heartbeat?: string;
  showToken: boolean;
  json?: boolean;
}

async function runServer(flags: ServerFlags): Promise<void> {
  const json = flags.json === true;
  try {
    const { startServer, DEFAULT_LISTEN, ADMIN_TOKEN_FILE } = await import('../../controller/server.ts');
    const { parseNetworkArg } = await import('../../controller/networks.ts');
    if (flags.vmGateway !== undefined && flags.vmNetwork.length !== 1) {
      throw new FerryError('FERRY_E_USAGE', '--vm-gateway needs exactly one --vm-network.');
    }
    const vmNetworks = flags.vmNetwork.map((n) => parseNetworkArg(n, flags.vmGateway));
    const dataDir = flags.data ?? defaultServerDir();
    const { controllerLogger } = await import('../../controller/log.ts');
    const log = controllerLogger();
    const srv = await startServer({
      dataDir,
      listen: flags.listen ?? DEFAULT_LISTEN,
      vmNetworks,
      ...(flags.heartbeat === undefined ? {} : { heartbeatMs: parseDuration(flags.heartbeat, '--heartbeat') }),
      log,
    });
    const adminToken = flags.showToken ? srv.adminToken : null;
    log.info({ url: srv.url, dataDir, caFingerprint: srv.caFingerprint, firstStart: srv.adminToken !== null }, `listening on ${srv.url}`);
    if (json) {
      const doc: Record<string, unknown> = { url: srv.url, caFingerprint: srv.caFingerprint, caHash: srv.caHash, dataDir };
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
    .option('--no-show-token', 'print no admin token on the first start: read it from DATA/admin-token (mode 0600)')
    .option('--json', 'print one JSON line {url, caFingerprint, caHash, adminToken?} once listening')
    // Options after a subcommand are the subcommand's: `server join-token --data D --json` prints JSON.
    // commander needs this on every parent up to the root, else the root hands them back to `server`.
    .enablePositionalOptions()
    .action((flags: ServerFlags) => runServer(flags));

  server
    .command('join-token')
    .description('Create a one-time join token directly in the store (no HTTP)')
    .option('--data <dir>', 'data directory of the server')
    .option('--ttl <duration>', 'validity (default 1h)')
    .option('--json', 'print one JSON document')
    .action(
      action(async (flags: { data?: string; ttl?: string }) => {
        // `ferry server --data D join-token` puts `--data` on the parent: accept it there too.
        const dataDir = flags.data ?? (server.opts() as { data?: string }).data ?? defaultServerDir();
        const { STORE_FILE } = await import('../../controller/controller.ts');
        const file = join(dataDir, STORE_FILE);
        if (!existsSync(file)) throw new FerryError('FERRY_E_CONFIG', `No server store in ${dataDir}: start \`ferry server --data ${dataDir}\` once first.`);
        const { openStore } = await import('../../controller/store/db.ts');
        const { createJoinToken } = await import('../../controller/tokens.ts');
        const store = openStore(file);
        try {
          const t = createJoinToken(store, flags.ttl === undefined ? undefined : parseDuration(flags.ttl, '--ttl'));
          return { json: t, human: t.token };
        } finally {
          await store.close();
        }
      }),
    );
}
