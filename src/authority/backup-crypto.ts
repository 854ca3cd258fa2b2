/**
 * A backup's encryption: the age format with a passphrase (scrypt recipient), so that
 * `age -d` opens a cairn backup with the same passphrase.
 */
import { createCipheriv, createDecipheriv, randomBytes, scryptSync } from 'node:crypto';
import type { Identity, Recipient, Stanza } from 'age-encryption';
import { CairnError } from '../util/errors.js';
import { BackupContent, decodeArchive, notABackup } from './backup-archive.js';

// age-encryption is loaded when a backup is made or read, not at every start
const loadAge = () => import('age-encryption');

// ---------------------------------------------------------------- encryption (age, scrypt recipient)

const AGE_MAGIC = 'age-encryption.org/v1\n';
const AGE_ARMOR = '-----BEGIN AGE ENCRYPTED FILE-----';

function checkPassphrase(passphrase: string): void {
  if (typeof passphrase !== 'string' || passphrase.length === 0) throw new CairnError('usage', 'the backup passphrase must not be empty');
}

/**
 * age's scrypt recipient and identity (age-encryption.org/v1/scrypt), with Node's native
 * scrypt and ChaCha20-Poly1305: the same stanza the library's own makes (and `age` reads),
 * about twice as fast as its pure-JS scrypt. The checks mirror the library's and the spec's.
 */
const SCRYPT_LABEL = Buffer.from('age-encryption.org/v1/scrypt');
export const SCRYPT_WORK_FACTOR = 18;
const MAX_SCRYPT_WORK_FACTOR = 20;

function scryptKey(passphrase: string, salt: Buffer, logN: number): Buffer {
  const N = 2 ** logN;
  return scryptSync(Buffer.from(passphrase, 'utf8'), Buffer.concat([SCRYPT_LABEL, salt]), 32, { N, r: 8, p: 1, maxmem: 256 * N * 8 });
}

class ScryptRecipient implements Recipient {
  constructor(
    private readonly StanzaClass: typeof Stanza,
    private readonly passphrase: string,
    private readonly logN = SCRYPT_WORK_FACTOR,
  ) {}
  wrapFileKey(fileKey: Uint8Array): Stanza[] {
    const salt = randomBytes(16);
    const c = createCipheriv('chacha20-poly1305', scryptKey(this.passphrase, salt, this.logN), Buffer.alloc(12), { authTagLength: 16 });
    const body = Buffer.concat([c.update(fileKey), c.final(), c.getAuthTag()]);
    return [new this.StanzaClass(['scrypt', salt.toString('base64').replace(/=+$/, ''), String(this.logN)], body)];
  }
}

class ScryptIdentity implements Identity {
  constructor(private readonly passphrase: string) {}
  unwrapFileKey(stanzas: Stanza[]): Uint8Array | null {
    for (const s of stanzas) {
      if (s.args[0] !== 'scrypt') continue;
      if (stanzas.length !== 1) throw new Error('scrypt recipient is not the only one in the header');
      if (s.args.length !== 3 || !/^[1-9][0-9]*$/.test(s.args[2]) || !/^[A-Za-z0-9+/]{22}$/.test(s.args[1])) throw new Error('invalid scrypt stanza');
      const logN = Number(s.args[2]);
      if (logN > MAX_SCRYPT_WORK_FACTOR) throw new Error('scrypt work factor is too high');
      if (s.body.length !== 32) throw new Error('invalid stanza');
      const d = createDecipheriv('chacha20-poly1305', scryptKey(this.passphrase, Buffer.from(s.args[1], 'base64'), logN), Buffer.alloc(12), { authTagLength: 16 });
      d.setAuthTag(s.body.subarray(16));
      try {
        return Buffer.concat([d.update(s.body.subarray(0, 16)), d.final()]);
      } catch {
        return null;
      }
    }
    return null;
  }
}

/** Encrypt with age's scrypt passphrase recipient (work factor 2^18, age's default). */
export async function encryptBackup(plain: Buffer, passphrase: string, opts: { workFactor?: number } = {}): Promise<Buffer> {
  checkPassphrase(passphrase);
  const age = await loadAge();
  const e = new age.Encrypter();
  e.addRecipient(new ScryptRecipient(age.Stanza, passphrase, opts.workFactor));
  return Buffer.from(await e.encrypt(plain));
}

/** Decrypt an age file (binary or ASCII-armored) with a passphrase; every failure is a clear CairnError. */
export async function decryptBackup(data: Buffer, passphrase: string): Promise<Buffer> {
  checkPassphrase(passphrase);
  const age = await loadAge();
  let bytes: Uint8Array = data;
  const head = data.subarray(0, 64).toString('latin1');
  if (head.trimStart().startsWith(AGE_ARMOR)) {
    try {
      bytes = age.armor.decode(data.toString('latin1'));
    } catch {
      throw new CairnError('corrupt_backup', 'the backup is damaged: its ASCII armor is malformed');
    }
  } else if (!head.startsWith(AGE_MAGIC)) {
    if (data.length === 0) throw notABackup('the input is empty');
    throw notABackup('the input is not an age-encrypted file (a cairn backup starts with "age-encryption.org/v1")');
  }
  const d = new age.Decrypter();
  d.addIdentity(new ScryptIdentity(passphrase));
  try {
    return Buffer.from(await d.decrypt(bytes));
  } catch (e) {
    const msg = (e as Error)?.message ?? String(e);
    if (/no identity matched/.test(msg)) throw new CairnError('wrong_passphrase', 'wrong passphrase (or the file was not encrypted with a passphrase)');
    throw new CairnError('corrupt_backup', `the backup is truncated or damaged: it fails age's integrity check (${msg})`);
  }
}

/** Decrypt, then decode and check: nothing is touched until all of this has passed. */
export async function openBackup(data: Buffer, passphrase: string): Promise<BackupContent> {
  return decodeArchive(await decryptBackup(data, passphrase));
}

