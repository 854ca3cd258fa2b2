import { Command, CommanderError } from 'commander';
import { PkiError } from '../pki/index.js';
import { CairnError, fromPki } from '../util/errors.js';
import { caCommand } from './ca.js';
import { backupCommand, clonePrepareCommand, pkcs12CertFindCommand, restoreCommand } from './backup-commands.js';
import { adminBundleCommand, certCommand, crlCommand, replicaCommand, revokeCommand } from './admin.js';
import { initCommand, nodeCommand, serveCommand, tokenCommand, updateCommand } from './server-side.js';
import { agentCommand, joinCommand } from './node-side.js';
import { ExitStatus } from './common.js';
import { dashboardCommand } from './dashboard.js';
import { bundleCommand } from './bundle.js';
import { auditCommand } from './audit.js';
import { VERSION } from '../version.js';

export function buildProgram(): Command {
  const program = new Command('cairn')
    .description('cairn: a highly available certificate authority for clusters')
    .version(VERSION, '-V, --version')
    .exitOverride()
    .enablePositionalOptions() // `cairn agent status --state-dir D`: the flags after a subcommand are its own
    .showSuggestionAfterError()
    .configureOutput({
      // one line: commander puts its "(Did you mean ...?)" suggestion on a line of its own
      outputError: (str, write) => write(`cairn: ${str.trim().replace(/\s*\n\s*/g, ' ')}\n`),
    })
    .addHelpText('after', '\nExit codes: 0 success, 1 failure, 2 usage error.\nRun "cairn <command> --help" for the flags of a command.');
  program.addCommand(initCommand());
  program.addCommand(serveCommand());
  program.addCommand(tokenCommand());
  program.addCommand(nodeCommand());
  program.addCommand(updateCommand());
  program.addCommand(certCommand());
  program.addCommand(revokeCommand());
  program.addCommand(adminBundleCommand());
  program.addCommand(crlCommand());
  program.addCommand(replicaCommand());
  program.addCommand(bundleCommand());
  program.addCommand(auditCommand());
  program.addCommand(dashboardCommand());
  program.addCommand(caCommand());
  program.addCommand(backupCommand());
  program.addCommand(restoreCommand());
  program.addCommand(clonePrepareCommand());
  program.addCommand(pkcs12CertFindCommand());
  program.addCommand(joinCommand());
  program.addCommand(agentCommand());
  // settings set on the program are copied to commands created with .command(), not to added ones
  const inherit = (c: Command) => {
    c.exitOverride().showSuggestionAfterError().configureOutput(program.configureOutput());
    c.commands.forEach(inherit);
  };
  program.commands.forEach(inherit);
  return program;
}

let stdoutGuarded = false;

/**
 * A reader that stops reading (`cairn … | head -1`) closes our stdout: the next write fails
 * with EPIPE, emitted as an 'error' event that would otherwise crash the process with a stack
 * trace. A closed stdout is not an error of the command: what follows is not written, and the
 * command ends with its own exit code. Other stdout errors get one line on stderr.
 */
function guardStdout(): void {
  if (stdoutGuarded) return;
  stdoutGuarded = true;
  let reported = false;
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE' || e.code === 'ERR_STREAM_DESTROYED') return;
    if (reported) return;
    reported = true;
    try {
      process.stderr.write(`cairn: error: cannot write to standard output: ${e.message}\n`);
    } catch {
      /* nowhere left to say it */
    }
  });
}

/** Run the CLI; resolves to the process exit code. Never lets a stack trace reach the user. */
export async function main(argv: string[]): Promise<number> {
  guardStdout();
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return 0;
      // help shown because a subcommand is missing (`cairn ca`) is a usage error; `cairn help` is not
      if (e.code === 'commander.help') return e.exitCode === 0 ? 0 : 2;
      if (e.code === 'commander.executeSubCommandAsync') return e.exitCode;
      return 2;
    }
    if (e instanceof ExitStatus) return e.exitCode;
    if (e instanceof CairnError || e instanceof PkiError) {
      const err = e instanceof PkiError ? fromPki(e) : e;
      process.stderr.write(`cairn: error: ${err.message}\n`);
      return err.exitCode; // from the table in src/util/errors.ts
    }
    process.stderr.write(`cairn: internal error: ${(e as Error)?.message ?? String(e)}\n`);
    if (process.env.CAIRN_DEBUG) process.stderr.write(`${(e as Error)?.stack}\n`);
    return 70;
  }
}
