/** Join tokens as a node reads them: `CAIRN-1-<root digest, 50 base36>-<secret, 25 base36>`. */
import { CairnError } from '../util/errors.js';

export interface JoinToken {
  /** base36 SHA-256 of the cluster root certificate's DER, 50 characters */
  digest: string;
  /** 128 random bits in base36, 25 characters */
  secret: string;
}

const bad = (why: string) => new CairnError('bad_token', `malformed join token: ${why} (expected CAIRN-1-<50-character digest>-<25-character secret>, as printed by "cairn token")`);

/**
 * Parse a join token, refusing a malformed one with a message that says what is wrong (before
 * any network I/O). Surrounding whitespace is ignored; nothing else is forgiven.
 */
export function parseJoinToken(input: string): JoinToken {
  const token = input.trim();
  if (token.length === 0) throw bad('the token is empty');
  const parts = token.split('-');
  if (parts[0] !== 'CAIRN') throw bad('it does not start with "CAIRN-"');
  if (parts.length < 2 || !/^[0-9]+$/.test(parts[1])) throw bad('no version after "CAIRN-"');
  if (parts[1] !== '1') throw new CairnError('bad_token', `join token version ${parts[1]} is not supported by this cairn (it knows version 1); upgrade cairn`);
  if (parts.length !== 4) throw bad(`it has ${parts.length} dash-separated parts instead of 4`);
  const [, , digest, secret] = parts;
  if (!/^[0-9a-z]*$/.test(digest)) throw bad('the digest part must be lowercase letters and digits');
  if (digest.length !== 50) throw bad(`the digest part has ${digest.length} characters instead of 50`);
  if (!/^[0-9a-z]*$/.test(secret)) throw bad('the secret part must be lowercase letters and digits');
  if (secret.length !== 25) throw bad(`the secret part has ${secret.length} characters instead of 25`);
  return { digest, secret };
}
