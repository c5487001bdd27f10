/** The flags every cluster command takes: output and where the cluster is (overriding the config file). */
import type { Command } from 'commander';
import type { ConfigOverrides } from '../client/config.ts';

/** The flags every cluster command takes. */
export function clusterOptions<C extends Command>(cmd: C): C {
  return cmd
    .option('--json', 'print one JSON document')
    .option('--server <url>', 'controller URL (overrides the config)')
    .option('--token <token>', 'API token (overrides the config)')
    .option('--ca <file>', 'cluster CA certificate, PEM (overrides the config)') as C;
}

export interface ClusterFlags extends ConfigOverrides {
  json?: boolean;
}
