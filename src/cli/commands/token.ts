/** `ferry token create --role admin|read-only | list | revoke ID`: the controller's API tokens and their roles. */
import { Option, type Command } from 'commander';
import { enc, withClient } from '../../client/api.ts';
import { renderTable, type Column } from '../../client/table.ts';
import { clusterOptions, type ClusterFlags } from '../flags.ts';
import { action } from '../output.ts';

interface TokenJson {
  id: string;
  role: 'admin' | 'read-only';
  createdAt: string;
}

const COLUMNS: readonly Column<TokenJson>[] = [
  { header: 'ID', cell: (t) => t.id },
  { header: 'ROLE', cell: (t) => t.role },
  { header: 'CREATED', cell: (t) => t.createdAt },
];

export function registerToken(program: Command): void {
  const token = program.command('token').description('API tokens: admin, or read-only (dashboards, metrics scraping)');
  clusterOptions(
    token
      .command('create')
      .description('Create an API token; its secret is printed this once')
      .addOption(new Option('--role <role>', 'what the token may do').choices(['admin', 'read-only']).makeOptionMandatory()),
  ).action(
    action(async (flags: ClusterFlags & { role: 'admin' | 'read-only' }) => {
      const t = await withClient(flags, (c) => c.post<TokenJson & { token: string }>('/api/v1/tokens', { role: flags.role }));
      return { json: t, human: () => `${t.token}\n(token ${t.id}, role ${t.role}: shown this once; \`ferry token revoke ${t.id}\` revokes it)` };
    }),
  );
  clusterOptions(token.command('list').description('List API tokens (ids and roles, never secrets)'), 'view').action(
    action(async (flags: ClusterFlags) => {
      const list = await withClient(flags, (c) => c.get<TokenJson[]>('/api/v1/tokens'));
      return { json: list, names: list.map((t) => t.id), table: (o) => renderTable(COLUMNS, list, o) };
    }),
  );
  clusterOptions(token.command('revoke').argument('<id>', "the token's id (the part before the dot)").description('Revoke an API token: refused from now on')).action(
    action(async (id: string, flags: ClusterFlags) => {
      const t = await withClient(flags, (c) => c.delete<TokenJson>(`/api/v1/tokens/${enc(id.split('.')[0]!)}`));
      return { json: t, human: `token ${t.id} (${t.role}) revoked` };
    }),
  );
}
