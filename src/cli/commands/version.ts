/**
 * `ferry version`: this CLI's version, the server's (GET /api/v1/version) and each agent's version and protocol
 * range as the controller last heard them (the host list). `--client` needs no cluster.
 */
import type { Command } from 'commander';
import type { HostJson } from '../../common/api.ts';
import { ferryVersion } from '../../common/version.ts';
import { withClient } from '../../client/api.ts';
import { clusterOptions, type ClusterFlags } from '../flags.ts';
import { action } from '../output.ts';

interface ServerVersionDoc {
  version: string;
  apiVersion: string;
  agentProtocol: { current: number; min: number };
}

export interface VersionDoc {
  client: { version: string };
  server?: ServerVersionDoc & { url: string };
  agents?: { host: string; state: string; version: string | null; protocol: { current: number; min: number } | null }[];
}

const range = (p: { current: number; min: number } | null): string => (p === null ? '?' : p.min === p.current ? String(p.current) : `${p.min}–${p.current}`);

export function registerVersion(program: Command): void {
  clusterOptions(
    program.command('version').option('--client', 'only the CLI, no cluster asked').description("Versions: this CLI, the server, and every host's agent"),
  ).action(
    action(async (f: ClusterFlags & { client?: boolean }) => {
      const doc: VersionDoc = { client: { version: ferryVersion() } };
      if (!f.client) {
        await withClient(f, async (c) => {
          const [server, hosts] = await Promise.all([c.get<ServerVersionDoc>('/api/v1/version'), c.get<HostJson[]>('/api/v1/hosts')]);
          doc.server = { ...server, url: c.server };
          doc.agents = hosts.map((h) => ({ host: h.name, state: h.state, version: h.agent?.agentVersion ?? null, protocol: h.agent ? { ...h.agent.protocol } : null }));
        });
      }
      const lines = [`client   ${doc.client.version}`];
      if (doc.server) lines.push(`server   ${doc.server.version} at ${doc.server.url} (API ${doc.server.apiVersion}, agent protocol ${range(doc.server.agentProtocol)})`);
      for (const a of doc.agents ?? []) lines.push(`agent    ${a.host}: ${a.version ?? 'not heard yet'} (protocol ${range(a.protocol)}, ${a.state})`);
      return { json: doc, human: lines.join('\n') };
    }),
  );
}
