/**
 * `ferry bench [SCENARIO] [--runs N] [--with libvirt] [--json] [--markdown FILE]`: runs the benchmark scenarios of
 * src/bench/ in labs of their own and prints, per scenario and variant, medians, ranges and ratios to the
 * baseline (with `--markdown FILE`, also FILE-SCENARIO-ratios.svg and FILE-SCENARIO-remaining.svg charts). Exit 1 when any run failed or lost
 * guest memory.
 */
import { writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { FerryError } from '../../common/errors.ts';
import { SCENARIOS, parseWith, selectScenarios, withTools } from '../../bench/scenarios.ts';
import { intFlag } from '../flags.ts';
import { action } from '../output.ts';

function writeMarkdown(file: string, text: string): void {
  try {
    writeFileSync(file, text);
  } catch (err) {
    throw new FerryError('FERRY_E_BAD_INPUT', `Cannot write ${file}: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

interface BenchFlags {
  runs: string;
  markdown?: string;
  json?: boolean;
  with?: string;
  hosts: string;
  vms: string;
  rate: string;
  duration: string;
  heartbeatWrites?: string;
}

/** The goal of the fleet issue: p99 under this at 200 requests/s with 1,000 hosts and 10,000 VMs. */
const API_GOAL_MS = 50;

/**
 * `ferry bench api`: a synthetic fleet seeded into a fresh store, a real `ferry server` (HTTPS, token, JSON
 * logs; heartbeats find the synthetic hosts unreachable) started over it as a child process, and each route
 * driven at a fixed rate. The composition root does the seeding (the bench part never touches the controller).
 */
async function benchApi(opts: BenchFlags): Promise<{ json: unknown; human: () => string; exitCode: number }> {
  const hosts = intFlag('--hosts', opts.hosts, 1, 100_000);
  const vms = intFlag('--vms', opts.vms, 0, 1_000_000);
  const rate = intFlag('--rate', opts.rate, 1, 100_000);
  const durationS = intFlag('--duration', opts.duration, 1, 3600);
  // A live fleet's heartbeats: each host's row rewritten every 2 s (the default interval).
  const heartbeatWrites = opts.heartbeatWrites === undefined ? Math.ceil(hosts / 2) : intFlag('--heartbeat-writes', opts.heartbeatWrites, 0, 100_000);
  const { mkdtempSync, readFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { spawn } = await import('node:child_process');
  const { createInterface } = await import('node:readline');
  const { createController, STORE_FILE } = await import('../../controller/controller.ts');
  const { seedSyntheticFleet, startSyntheticHeartbeats, syntheticHostName, syntheticVmName } = await import('../../controller/fleet/synthetic.ts');
  const { runApiLoad, renderApiLoad } = await import('../../bench/api-load.ts');
  const { PACKAGE_ROOT } = await import('../../common/paths.ts');
  const dataDir = mkdtempSync(join(tmpdir(), 'ferry-bench-api-'));
  const say = opts.json ? (): void => undefined : (l: string): void => void process.stderr.write(`bench api: ${l}\n`);
  try {
    const seeding = await createController({ dataDir, heartbeats: false, recover: false });
    const t0 = Date.now();
    seedSyntheticFleet(seeding.store, { hosts, vms });
    say(`seeded ${hosts} hosts and ${vms} VMs in ${Date.now() - t0} ms`);
    await seeding.close();
    const token = readFileSync(join(dataDir, 'admin-token'), 'utf8').trim();
    const child = spawn(process.execPath, [join(PACKAGE_ROOT, 'bin', 'ferry.js'), 'server', '--data', dataDir, '--listen', '127.0.0.1:0', '--heartbeat', '1h', '--no-show-token', '--json'], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    // Ctrl-C (or a TERM) mid-run: the server it started and the synthetic store go with it, as on a normal end.
    const onSignal = (sig: NodeJS.Signals): void => {
      child.kill('SIGTERM');
      rmSync(dataDir, { recursive: true, force: true });
      process.exit(sig === 'SIGINT' ? 130 : 143);
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    try {
      const line = await new Promise<string>((resolve, reject) => {
        const rl = createInterface({ input: child.stdout });
        rl.once('line', resolve);
        child.once('exit', (code) => reject(new FerryError('FERRY_E_INTERNAL', `ferry server exited (${code}) before listening.`)));
      });
      const { url } = JSON.parse(line) as { url: string };
      // The first heartbeat round (every synthetic host refuses at once) is over before measuring.
      await new Promise((r) => setTimeout(r, 3000));
      const mid = (n: number, name: (i: number) => string): string => name(Math.floor(n / 2));
      const routes = [
        { label: 'GET /vms?limit=100 (a page)', path: '/api/v1/vms?limit=100', rate },
        { label: `GET /vms/${mid(vms, syntheticVmName)}`, path: `/api/v1/vms/${mid(vms, syntheticVmName)}`, rate },
        { label: 'GET /hosts?limit=100 (a page)', path: '/api/v1/hosts?limit=100', rate },
        // What `ferry host list` and the console's cluster view ask for: the same page, each inventory summarised.
        { label: 'GET /hosts?limit=100&view=summary', path: '/api/v1/hosts?limit=100&view=summary', rate },
        { label: `GET /hosts/${mid(hosts, syntheticHostName)}`, path: `/api/v1/hosts/${mid(hosts, syntheticHostName)}`, rate },
        { label: 'GET /migrations (newest 100)', path: '/api/v1/migrations', rate },
        { label: 'GET /health', path: '/api/v1/health', rate },
        // Whole lists are megabytes at this size: measured at a rate a dashboard would use.
        { label: `GET /hosts (all ${hosts})`, path: '/api/v1/hosts', rate: 2 },
        { label: `GET /vms (all ${vms})`, path: '/api/v1/vms', rate: 2 },
      ].filter((r) => vms > 0 || !r.path.startsWith('/api/v1/vms/'));
      say(`${url}: ${routes.length} routes, ${durationS} s each; heartbeats rewrite ${heartbeatWrites} host rows/s meanwhile`);
      const beats = heartbeatWrites > 0 ? startSyntheticHeartbeats(join(dataDir, STORE_FILE), { hosts, perSecond: heartbeatWrites }) : null;
      const began = Date.now();
      let results: Awaited<ReturnType<typeof runApiLoad>>;
      let written = 0;
      try {
        results = await runApiLoad({ url, token, routes, durationS, connections: 10 });
      } finally {
        written = (await beats?.stop()) ?? 0;
      }
      const heartbeats = { perSecond: heartbeatWrites, written, achievedPerSecond: Math.round(written / ((Date.now() - began) / 1000)) };
      const paced = results.filter((r) => r.rate === rate && r.path !== '/api/v1/health');
      const ok = results.every((r) => r.non2xx === 0 && r.errors === 0) && paced.every((r) => r.p99Ms < API_GOAL_MS);
      const fleet = { hosts, vms };
      return {
        json: { fleet, goalMs: API_GOAL_MS, rate, durationS, heartbeats, results, ok },
        human: () => `${renderApiLoad(results, fleet, API_GOAL_MS)}\nheartbeat writes meanwhile: ${heartbeats.achievedPerSecond} host rows/s (${written} in all)\n`,
        exitCode: ok ? 0 : 1,
      };
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      child.kill('SIGTERM');
      await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
    }
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
}

export function registerBench(program: Command): void {
  program
    .command('bench')
    .description(
      'Benchmark live migration in labs of its own (needs root); scenarios: ' +
        SCENARIOS.map((s) => `${s.name} (${s.variants.map((v) => v.label).join(' vs ')})`).join(', '),
    )
    .argument('[scenario]', `one of ${SCENARIOS.map((s) => s.name).join(', ')} (or several, comma-separated), or all; or api (the controller's API under load, a synthetic fleet)`, 'all')
    .option('--runs <n>', 'migrations per variant', '3')
    .option('--with <tools>', 'also run other tools side by side in the baselines scenario: libvirt (installs its Debian packages if missing)')
    .option('--markdown <file>', 'also write the results as a Markdown section to FILE')
    .option('--json', 'print one JSON document')
    .option('--hosts <n>', 'api: hosts in the synthetic fleet', '1000')
    .option('--vms <n>', 'api: VMs in the synthetic fleet', '10000')
    .option('--rate <n>', 'api: requests per second against each route', '200')
    .option('--duration <seconds>', 'api: seconds per route', '10')
    .option('--heartbeat-writes <n>', "api: host rows rewritten per second meanwhile, as live heartbeats do (default: hosts / 2, each host every 2 s; 0 for none)")
    .action(
      action(async (scenario: string, opts: BenchFlags) => {
        if (scenario === 'api') {
          if (opts.with !== undefined) throw new FerryError('FERRY_E_USAGE', '--with is for the migration scenarios, not api.');
          return benchApi(opts);
        }
        const scenarios = withTools(selectScenarios(scenario), parseWith(opts.with));
        const { runBench, validateRuns } = await import('../../bench/runner.ts');
        const { renderMarkdown, renderTables } = await import('../../bench/report.ts');
        const runs = validateRuns(opts.runs);
        // Find out now, not after minutes of benchmarking, that the file can't be written.
        if (opts.markdown !== undefined) writeMarkdown(opts.markdown, '');
        const t0 = Date.now();
        const result = await runBench(scenarios, {
          runs,
          log: opts.json
            ? undefined
            : (l) => process.stderr.write(`bench +${Math.round((Date.now() - t0) / 1000)}s: ${l}\n`),
          // Installing packages is said on stderr even with --json (stdout keeps its one document).
          notice: (l) => process.stderr.write(`bench: ${l}\n`),
        });
        if (opts.markdown !== undefined) {
          writeMarkdown(opts.markdown, renderMarkdown(result) + '\n');
          // The charts go next to the Markdown: FILE without .md, then -SCENARIO-ratios.svg and -remaining.svg.
          const { ratioBarsSvg, remainingSvg } = await import('../../bench/charts.ts');
          for (const sc of result.scenarios) {
            const stem = `${opts.markdown.replace(/\.md$/, '')}-${sc.name}`;
            const bars = ratioBarsSvg(sc);
            if (bars !== null) writeMarkdown(`${stem}-ratios.svg`, bars);
            const left = remainingSvg(sc);
            if (left !== null) writeMarkdown(`${stem}-remaining.svg`, left);
          }
        }
        return {
          json: result,
          human: () =>
            '\n' +
            renderTables(result) +
            (opts.markdown ? `\nMarkdown section written to ${opts.markdown}` : ''),
          exitCode: result.ok ? 0 : 1,
        };
      }),
    );
}
