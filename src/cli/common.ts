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

export const jsonOption = () => new Option('--json', 'print JSON instead of text');

/** Print a line to stdout. */
export function out(line = ''): void {
  process.stdout.write(line + '\n');
}

export function printJson(v: unknown): void {
  process.stdout.write(JSON.stringify(v, null, 2) + '\n');
}

export function requireMinDuration(ms: number, minMs: number, what: string): void {
  if (ms < minMs) throw new CairnError('bad_duration', `${what} must be at least ${minMs / 3600_000}h`, 2);
}

export type { Command };
