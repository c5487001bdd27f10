/**
 * `ferry context list | use NAME | show [NAME] | set NAME`: the clusters of the CLI config
 * (src/client/config.ts), like kubectl's contexts. `show` never prints a token, only its id.
 */
import { Option, type Command } from 'commander';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { checkServerUrl, configPath, contextServers, currentContextName, readContexts, requireContext, splitServers, useContext, writeContext, type StoredContext } from '../../client/config.ts';
import { renderTable, type Column } from '../../client/table.ts';
import { FerryError } from '../../common/errors.ts';
import { action, LIST_FORMATS } from '../output.ts';

interface ContextJson {
  name: string;
  current: boolean;
  server: string | null;
  /** Every controller of the context, tried in this order (docs/ha.md). */
  servers: string[];
  /** The token's id (before the dot): which token, without its secret. */
  tokenId: string | null;
  caFingerprint: string | null;
}

function view(name: string, c: StoredContext, current: string | null): ContextJson {
  let caFingerprint: string | null = null;
  try {
    caFingerprint = c.caCertPem === undefined ? null : new X509Certificate(c.caCertPem).fingerprint256;
  } catch {
    caFingerprint = null;
  }
  return { name, current: name === current, server: c.server ?? null, servers: contextServers(c), tokenId: c.token?.split('.')[0] ?? null, caFingerprint };
}

const COLUMNS: readonly Column<ContextJson>[] = [
  { header: 'CURRENT', cell: (c) => (c.current ? '*' : '') },
  { header: 'NAME', cell: (c) => c.name },
  { header: 'SERVER', cell: (c) => (c.servers.length === 0 ? '-' : c.servers.join(',')) },
  { header: 'TOKEN', cell: (c) => c.tokenId ?? '-', wide: true },
];

const outputs = <C extends Command>(cmd: C, list: boolean): C => {
  cmd.option('--json', 'print one JSON document (as -o json)');
  cmd.addOption(new Option('-o, --output <format>', 'output format').choices(list ? LIST_FORMATS : ['json', 'yaml']));
  if (list) cmd.option('--no-headers', 'tables without their header line');
  return cmd;
};

export function registerContext(program: Command): void {
  const context = program.command('context').description(`The clusters the CLI knows (${'$'}FERRY_CONFIG or ~/.config/ferry/config.json)`);
  outputs(context.command('list').description('List the contexts; * marks the one in use'), true).action(
    action(async () => {
      const doc = readContexts();
      const { name } = currentContextName({}, doc);
      const list = Object.entries(doc.contexts).map(([n, c]) => view(n, c, name));
      return {
        json: list,
        names: list.map((c) => c.name),
        table: (o) => (list.length === 0 ? `no contexts in ${configPath()} (\`ferry lab up\` adds one)` : renderTable(COLUMNS, list, o)),
      };
    }),
  );
  outputs(context.command('use').argument('<name>', 'context name').description('Make a context the current one'), false).action(
    action(async (name: string) => {
      const doc = useContext(name);
      return { json: view(name, doc.contexts[name]!, name), human: `now using context ${name} (${doc.contexts[name]!.server ?? '-'})` };
    }),
  );
  outputs(context.command('show').argument('[name]', 'context name (default: the one in use)').description('Show a context: server, token id, CA'), false).action(
    action(async (name: string | undefined) => {
      const doc = readContexts();
      const using = currentContextName({}, doc);
      const n = name ?? using.name;
      if (n === null) throw new FerryError('FERRY_E_CONTEXT_NOT_FOUND', `No current context in ${configPath()}: \`ferry context use NAME\` or \`ferry lab up\`.`);
      const v = view(n, requireContext(doc, n), using.name);
      return {
        json: v,
        human: [`context   ${v.name}${v.current ? ` (in use: ${using.from})` : ''}`, `servers   ${v.servers.join(', ') || '-'}`, `token id  ${v.tokenId ?? '-'}`, `CA        ${v.caFingerprint ?? '-'}`, `file      ${configPath()}`].join('\n'),
      };
    }),
  );
  outputs(context.command('set').argument('<name>', 'context name').description('Add or change a context and make it current; several --server for several controllers (tried in order)'), false)
    .option('--server <url>', 'a controller URL, https://HOST:PORT (repeatable, or comma-separated)', (v: string, prev: string[] = []) => [...prev, ...splitServers(v)])
    .option('--token <token>', 'API token (default: the context\'s)')
    .option('--ca <file>', 'CA certificate(s) the servers are checked against, PEM (default: the context\'s)')
    .action(
      action(async (name: string, f: { server?: string[]; token?: string; ca?: string }) => {
        const old = readContexts().contexts[name] ?? {};
        const servers = f.server ?? contextServers(old);
        let caCertPem = old.caCertPem;
        if (f.ca !== undefined) {
          try {
            caCertPem = readFileSync(f.ca, 'utf8');
            new X509Certificate(caCertPem);
          } catch (err) {
            throw new FerryError('FERRY_E_USAGE', `Cannot read a PEM certificate from the CA file ${f.ca}.`, { cause: err });
          }
        }
        const token = f.token ?? old.token;
        const missing = [...(servers.length === 0 ? ['--server'] : []), ...(token === undefined ? ['--token'] : []), ...(caCertPem === undefined ? ['--ca'] : [])];
        if (missing.length > 0) throw new FerryError('FERRY_E_USAGE', `A new context needs ${missing.join(', ')}.`);
        for (const server of servers) {
          try {
            checkServerUrl(server);
          } catch (err) {
            throw new FerryError('FERRY_E_USAGE', (err as Error).message, { cause: err });
          }
        }
        writeContext(name, { server: servers[0]!, servers, token: token!, caCertPem: caCertPem! });
        const doc = readContexts();
        return { json: view(name, doc.contexts[name]!, name), human: `context ${name} (${servers.join(', ')}) is now in use` };
      }),
    );
}
