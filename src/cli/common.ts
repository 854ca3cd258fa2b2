import { Command, InvalidArgumentError, Option } from 'commander';
import { isKeyType, KEY_TYPES, KeyType } from '../pki/index.js';
import { parseDuration } from '../util/duration.js';
import { CairnError } from '../util/errors.js';

export function parseKeyType(v: string): KeyType {
  if (!isKeyType(v)) throw new InvalidArgumentError(`must be one of ${KEY_TYPES.join(', ')}`);
  return v;
}

export function parseDurationArg(v: string): number {
  try {
    return parseDuration(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

export const keyTypeOption = () =>
  new Option('--key-type <type>', `key algorithm: ${KEY_TYPES.join(', ')}`).argParser(parseKeyType).default('ec-p256');

/** --state-dir of a replica (mandatory); admin commands use its admin bundle. */
export const stateDirOption = (description = 'the replica state directory') =>
  new Option('--state-dir <dir>', description).makeOptionMandatory();

/** --server for admin commands that call the API. */
export const serverOption = () => new Option('--server <url>', 'API address (default: https://<listen address> from the state directory)');

/** Print rows as aligned columns; the first row is the header. */
export function table(rows: string[][]): void {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  for (const r of rows) out(r.map((c, i) => (c ?? '').padEnd(widths[i])).join('  ').trimEnd());
}

/**
 * Print rows as they come, in columns of fixed widths (a long value widens its own row only):
 * the header first, then `row()` for each row.
 */
export function streamTable(header: string[], widths: number[]): (row: string[]) => void {
  const line = (r: string[]) => out(r.map((c, i) => (c ?? '').padEnd(i < widths.length ? widths[i] : 0)).join('  ').trimEnd());
  line(header);
  return line;
}

/**
 * Print a JSON array element by element (one element per line) as they come: valid JSON
 * once `end()` is called, readable line by line before.
 */
export function streamJsonArray(): { push(v: unknown): void; end(): void } {
  let n = 0;
  process.stdout.write('[');
  return {
    push(v) {
      process.stdout.write((n++ ? ',\n' : '\n') + JSON.stringify(v));
    },
    end() {
      process.stdout.write(n ? '\n]\n' : ']\n');
    },
  };
}

export const jsonOption = () => new Option('--json', 'print JSON instead of text');

/** Print a line to stdout. */
export function out(line = ''): void {
  process.stdout.write(line + '\n');
}

export function printJson(v: unknown): void {
  process.stdout.write(JSON.stringify(v, null, 2) + '\n');
}

/** Thrown to end a command with an exit status and nothing more to say (it printed its answer): `cairn agent status`. */
export class ExitStatus extends Error {
  constructor(readonly exitCode: number) {
    super(`exit ${exitCode}`);
    this.name = 'ExitStatus';
  }
}

export function requireMinDuration(ms: number, minMs: number, what: string): void {
  if (ms < minMs) throw new CairnError('bad_duration', `${what} must be at least ${minMs / 3600_000}h`);
}

export type { Command };

/** Run until SIGTERM or SIGINT: `run` gets a signal that aborts on the first of them; the handlers go when it settles. */
export async function untilSignal<T>(run: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  const stop = () => ac.abort();
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  try {
    return await run(ac.signal);
  } finally {
    process.off('SIGTERM', stop);
    process.off('SIGINT', stop);
  }
}

/**
 * Serve until SIGTERM or SIGINT, then close (a server's or the dashboard's shutdown). A close
 * that fails part-way is the command's error (reported, non-zero exit), and the process then
 * ends: what the close left running (timers, a store, sockets) would keep it alive for ever.
 */
export function closeOnSignal(close: () => Promise<void>): Promise<void> {
  return untilSignal(
    (signal) =>
      new Promise<void>((resolve, reject) =>
        signal.addEventListener(
          'abort',
          () =>
            close().then(resolve, (e) => {
              setTimeout(() => process.exit(), 1000).unref(); // after the error is reported and the exit code set
              reject(e);
            }),
          { once: true },
        ),
      ),
  );
}
