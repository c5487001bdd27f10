/**
 * The `ferry` command line: noun first (`ferry vm create`), commands declared one file per noun in
 * commands/. Every command takes `--json` (`-o json`).
 */
import { Command, CommanderError } from 'commander';
import { FerryError } from '../common/errors.ts';
import { printError, structuredFormatIn } from './output.ts';
import { ferryVersion } from '../common/version.ts';
import { registerImage } from './commands/image.ts';
import { registerLab } from './commands/lab.ts';
import { registerAgent } from './commands/agent.ts';
import { registerServer } from './commands/server.ts';
import { registerHost } from './commands/host.ts';
import { registerToken } from './commands/token.ts';
import { registerContext } from './commands/context.ts';
import { registerVm } from './commands/vm.ts';
import { registerMigration } from './commands/migration.ts';
import { registerEvents } from './commands/events.ts';
import { registerDemo } from './commands/demo.ts';
import { registerBench } from './commands/bench.ts';
import { registerSim } from './commands/sim.ts';
import { registerCluster } from './commands/cluster.ts';
import { registerVersion } from './commands/version.ts';
import { registerCompletion } from './commands/completion.ts';

export function buildProgram(): Command {
  const program = new Command('ferry')
    .description('Moves virtual machines between hosts, cold and live, by driving QEMU.')
    .version(ferryVersion())
    .exitOverride()
    .showHelpAfterError(false)
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  registerImage(program);
  registerLab(program);
  registerAgent(program);
  registerServer(program);
  registerHost(program);
  registerToken(program);
  registerContext(program);
  registerVm(program);
  registerMigration(program);
  registerEvents(program);
  registerDemo(program);
  registerBench(program);
  registerSim(program);
  registerCluster(program);
  registerVersion(program);
  // Last: it describes every command registered before it.
  registerCompletion(program);
  // Subcommands inherit exitOverride so that usage errors come back to main() as CommanderError.
  const walk = (c: Command): void => {
    c.exitOverride();
    c.commands.forEach(walk);
  };
  walk(program);
  return program;
}

let quietOnClosedStdout = false;

export async function main(argv: string[]): Promise<number> {
  // `ferry … | head`: a reader that stopped reading is not an error of ferry's; end quietly, as cat does.
  if (!quietOnClosedStdout) {
    quietOnClosedStdout = true;
    process.stdout.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(0);
      throw err;
    });
  }
  const program = buildProgram();
  const format = structuredFormatIn(argv);
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
      // commander already printed its message to stderr; with -o json|yaml, also one document.
      const msg = err.message.replace(/^error: /, '');
      if (format) return printError(new FerryError('FERRY_E_USAGE', msg), { output: format });
      return 2;
    }
    return printError(err, format ? { output: format } : {});
  }
}
