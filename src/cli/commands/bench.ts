/**
 * `ferry bench [SCENARIO] [--runs N] [--json] [--markdown FILE]`: runs the benchmark scenarios of
 * src/bench/ in labs of their own and prints, per scenario and variant, medians, ranges and ratios to the
 * baseline. Exit 1 when any run failed or lost guest memory.
 */
import { writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { FerryError } from '../../common/errors.ts';
import { SCENARIOS, selectScenarios } from '../../bench/scenarios.ts';
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

export function registerBench(program: Command): void {
  program
    .command('bench')
    .description(
      'Benchmark live migration in labs of its own (needs root); scenarios: ' +
        SCENARIOS.map((s) => `${s.name} (${s.variants.map((v) => v.label).join(' vs ')})`).join(', '),
    )
    .argument('[scenario]', `one of ${SCENARIOS.map((s) => s.name).join(', ')}, or all`, 'all')
    .option('--runs <n>', 'migrations per variant', '3')
    .option('--markdown <file>', 'also write the results as a Markdown section to FILE')
    .option('--json', 'print one JSON document')
    .action(
      action(async (scenario: string, opts: { runs: string; markdown?: string; json?: boolean }) => {
        const scenarios = selectScenarios(scenario);
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
        });
        if (opts.markdown !== undefined) writeMarkdown(opts.markdown, renderMarkdown(result) + '\n');
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
