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
import { registerVm } from './commands/vm.ts';
import { registerMigration } from './commands/migration.ts';
import { registerEvents } from './commands/events.ts';
import { registerDemo } from './commands/demo.ts';
import { registerBench } from './commands/bench.ts';
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
  registerVm(program);
  registerMigration(program);
  registerEvents(program);
  registerDemo(program);
  registerBench(program);
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

export async function main(argv: string[]): Promise<number> {
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
