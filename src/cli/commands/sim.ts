/**
 * `ferry sim --hosts 1000 --vms 20000 --drain 50`: the drain planner, the scheduler's judgement and the
 * fluid model (src/controller/fleet/) over a generated fleet, no cluster needed. Reports the makespan of
 * the evacuation under the limits, the same moves one at a time, and the lower bound.
 */
import type { Command } from 'commander';
import { parseDuration } from '../../common/units.ts';
import { DEFAULT_LIMITS } from '../../controller/fleet/fluid.ts';
import { runSim } from '../../controller/fleet/sim.ts';
import { durationFlag, intFlag } from '../flags.ts';
import { action } from '../output.ts';

const s = (ms: number | null): string => (ms === null ? 'never (a move cannot converge)' : `${(ms / 1000).toFixed(1)} s`);

export function registerSim(program: Command): void {
  program
    .command('sim')
    .description('Plan and simulate evacuating hosts of a generated fleet with the real planner')
    .option('--hosts <n>', 'hosts in the fleet', '1000')
    .option('--vms <n>', 'VMs placed on them', '20000')
    .option('--drain <n>', 'hosts evacuated at once', '50')
    .option('--seed <n>', 'the fleet generator seed', '1')
    .option('--deadline <duration>', 'the evacuation deadline', '1h')
    .option('--max-out <n>', 'migrations at once out of one host', String(DEFAULT_LIMITS.outPerHost))
    .option('--max-in <n>', 'migrations at once into one host', String(DEFAULT_LIMITS.inPerHost))
    .option('--max-cluster <n>', 'migrations at once in the cluster', String(DEFAULT_LIMITS.cluster))
    .option('--json', 'one JSON document')
    .action(
      action(async (f: { hosts: string; vms: string; drain: string; seed: string; deadline: string; maxOut: string; maxIn: string; maxCluster: string; json?: boolean }) => {
        const hosts = intFlag('--hosts', f.hosts, 2, 100_000);
        const o = {
          hosts,
          vms: intFlag('--vms', f.vms, 0, 2_000_000),
          drain: intFlag('--drain', f.drain, 1, hosts - 1),
          seed: intFlag('--seed', f.seed, 0, 2 ** 31),
          deadlineMs: parseDuration(durationFlag('--deadline', f.deadline), '--deadline'),
          limits: { outPerHost: intFlag('--max-out', f.maxOut, 1, 64), inPerHost: intFlag('--max-in', f.maxIn, 1, 64), cluster: intFlag('--max-cluster', f.maxCluster, 1, 100_000) },
        };
        await Promise.resolve();
        const { report: r } = runSim(o);
        return {
          json: r,
          human: () =>
            [
              `${r.hosts} hosts, ${r.vms} VMs; evacuating ${r.drainedHosts} hosts: ${r.moves} moves (${Object.entries(r.byStrategy).map(([k, v]) => `${v} ${k}`).join(', ')}), planned in ${r.planMs} ms`,
              `limits: ${r.limits.outPerHost} out / ${r.limits.inPerHost} in per host, ${r.limits.cluster} in the cluster (peak ${r.peakConcurrency})`,
              `makespan     ${s(r.makespanMs)}${r.feasible ? '' : ` (deadline ${s(r.deadlineMs)} NOT met, or VMs cannot move: ${r.notMovable})`}`,
              `one at a time ${s(r.baselineMs)}${r.speedupOverBaseline === null ? '' : ` (${r.speedupOverBaseline}× slower)`}`,
              `lower bound  ${s(r.lowerBoundMs)}${r.overLowerBound === null ? '' : ` (makespan is ${r.overLowerBound}× it)`}`,
            ].join('\n'),
        };
      }),
    );
}
