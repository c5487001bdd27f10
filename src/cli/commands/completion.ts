/** `ferry completion bash|zsh`: prints the shell completion script, generated from this very program. */
import { Argument, type Command } from 'commander';
import { bashCompletion, zshCompletion } from '../completion.ts';

export function registerCompletion(program: Command): void {
  program
    .command('completion')
    .addArgument(new Argument('<shell>', 'bash or zsh').choices(['bash', 'zsh']))
    .description('Print shell completion: source <(ferry completion bash)')
    .action((shell: 'bash' | 'zsh') => {
      process.stdout.write(shell === 'bash' ? bashCompletion(program) : zshCompletion(program));
    });
}
