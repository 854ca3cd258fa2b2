/**
 * backup, restore, clone-prepare, pkcs12-cert-find, and the PKCS#12 options of init.
 * Passphrases and passwords are never echoed, printed or logged.
 */
import fs from 'node:fs';
import tty from 'node:tty';
import { Command, Option } from 'commander';
import type { ProvidedCas } from '../authority/clone.js';
import { DEFAULT_LISTEN } from '../server/state-dir.js';
import { CairnError } from '../util/errors.js';
import { KEY_MODE, refuseExisting, readBytes, readKeyFile, writeFilesAtomic } from '../util/files.js';
import { jsonOption, out, printJson, stateDirOption } from './common.js';
import { addPkcs11Options, Pkcs11Flags, pkcs11FromFlags } from './ca-key-flags.js';

export const PASSPHRASE_ENV = 'CAIRN_BACKUP_PASSPHRASE';
export const PKCS12_PASSWORD_ENV = 'CAIRN_PKCS12_PASSWORD';

const usage = (m: string) => new CairnError('usage', m);
const storeOption = () => new Option('--store <url>', 'store URL (default: CAIRN_STORE, then the one in the state directory, then its SQLite file)');
const unlockKeyOption = () => new Option('--unlock-key-file <file>', 'unlock key file (default: CAIRN_UNLOCK_KEY, then <state-dir>/unlock.key)');

// ---------------------------------------------------------------- secrets

/** A secret from a file: its content less one trailing newline; the file must be private (0600). */
function secretFromFile(file: string, what: string): string {
  const text = readKeyFile(file).replace(/\r?\n$/, '');
  if (text.length === 0) throw usage(`${what} file ${file} is empty`);
  return text;
}

/**
 * Read lines from the controlling terminal with echo off (raw mode), one per prompt. The
 * prompts go to the terminal too, so standard input and output stay free for the archive.
 */
export async function promptHidden(prompts: string[]): Promise<string[]> {
  let fd: number;
  try {
    fd = fs.openSync('/dev/tty', 'r+');
  } catch {
    throw usage('--interactive needs a terminal to read the passphrase from, and there is none: use --passphrase-file or ' + PASSPHRASE_ENV);
  }
  if (!tty.isatty(fd)) {
    fs.closeSync(fd);
    throw usage('--interactive needs a terminal to read the passphrase from, and there is none');
  }
  const input = new tty.ReadStream(fd);
  input.setRawMode(true);
  const answers: string[] = [];
  let current = '';
  fs.writeSync(fd, prompts[0]);
  try {
    await new Promise<void>((resolve, reject) => {
      const onData = (buf: Buffer) => {
        for (const ch of buf.toString('utf8')) {
          if (ch === '\r' || ch === '\n') {
            fs.writeSync(fd, '\r\n');
            answers.push(current);
            current = '';
            if (answers.length === prompts.length) {
              input.off('data', onData);
              return resolve();
            }
            fs.writeSync(fd, prompts[answers.length]);
          } else if (ch === '\u0003' || (ch === '\u0004' && current === '')) {
            fs.writeSync(fd, '\r\n');
            input.off('data', onData);
            return reject(new CairnError('cancelled', 'cancelled'));
          } else if (ch === '\u007f' || ch === '\b') {
            current = [...current].slice(0, -1).join('');
          } else if (ch === '\u0015') {
            current = '';
          } else if (ch >= ' ') {
            current += ch;
          }
        }
      };
      input.on('data', onData);
      input.on('error', reject);
      input.on('end', () => reject(new CairnError('cancelled', 'the terminal closed before the passphrase was entered')));
    });
  } finally {
    try {
      input.setRawMode(false);
    } catch {
      /* the terminal went away */
    }
    input.destroy();
  }
  return answers;
}

interface SecretFlags {
  value?: string;
  file?: string;
  interactive?: boolean;
}

/** One secret from exactly one source: the flag, a file, the terminal, or the environment. */
async function resolveSecret(f: SecretFlags, o: { env: string; what: string; flag: string; confirm: boolean }): Promise<string> {
  const given = [f.value !== undefined, f.file !== undefined, !!f.interactive].filter(Boolean).length;
  const interactive = o.flag === '--passphrase';
  if (given > 1) throw usage(`give the ${o.what} one way only: ${o.flag}-file, ${o.flag}${interactive ? ' or --interactive' : ''}`);
  let secret: string | undefined;
  if (f.value !== undefined) secret = f.value;
  else if (f.file !== undefined) secret = secretFromFile(f.file, o.what);
  else if (f.interactive) {
    const prompts = o.confirm ? [`Enter the ${o.what}: `, `Enter the ${o.what} again: `] : [`Enter the ${o.what}: `];
    const answers = await promptHidden(prompts);
    if (o.confirm && answers[0] !== answers[1]) throw usage(`the two ${o.what}s do not match`);
    secret = answers[0];
  } else secret = process.env[o.env];
  if (secret === undefined) throw usage(`give the ${o.what} with ${o.flag}-file <file>, ${o.env}${interactive ? ', --interactive' : ''} or ${o.flag}`);
  if (secret.length === 0) throw usage(`the ${o.what} must not be empty`);
  return secret;
}

const passphraseOptions = (c: Command) =>
  c
    .option('--passphrase-file <file>', `read the passphrase from this file (mode 0600; one trailing newline is ignored)`)
    .option('--interactive', 'ask for the passphrase on the terminal, without echo')
    .option('--passphrase <passphrase>', `the passphrase itself (visible to other local users in the process list: prefer --passphrase-file, ${PASSPHRASE_ENV} or --interactive)`);

interface PassphraseFlags {
  passphrase?: string;
  passphraseFile?: string;
  interactive?: boolean;
}

const backupPassphrase = (f: PassphraseFlags, confirm: boolean) =>
  resolveSecret({ value: f.passphrase, file: f.passphraseFile, interactive: f.interactive }, { env: PASSPHRASE_ENV, what: 'backup passphrase', flag: '--passphrase', confirm });

interface Pkcs12PasswordFlags {
  pkcs12Password?: string;
  pkcs12PasswordFile?: string;
}

const pkcs12PasswordOptions = (c: Command) =>
  c
    .option('--pkcs12-password-file <file>', 'read the PKCS#12 password from this file (mode 0600; one trailing newline is ignored)')
    .option('--pkcs12-password <password>', `the PKCS#12 password itself (visible in the process list: prefer --pkcs12-password-file or ${PKCS12_PASSWORD_ENV})`);

const pkcs12Password = (f: Pkcs12PasswordFlags) =>
  resolveSecret({ value: f.pkcs12Password, file: f.pkcs12PasswordFile }, { env: PKCS12_PASSWORD_ENV, what: 'PKCS#12 password', flag: '--pkcs12-password', confirm: false });

// ---------------------------------------------------------------- backup and restore

async function writeStdout(data: Buffer): Promise<void> {
  await new Promise<void>((resolve, reject) => process.stdout.write(data, (err) => (err ? reject(err) : resolve())));
}

async function readInput(file: string | undefined): Promise<Buffer> {
  if (file) return readBytes(file);
  if (process.stdin.isTTY) throw usage('give the backup on standard input (cairn restore … < backup.tar.age) or with --in <file>');
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export function backupCommand(): Command {
  const c = new Command('backup')
    .description('write an encrypted backup (age format, passphrase) of the root CAs, or of the whole store, to standard output')
    .option('--root-ca-only', 'only the CA certificates and keys (both CAs, and any rotation material)')
    .addOption(stateDirOption())
    .addOption(storeOption())
    .addOption(unlockKeyOption())
    .option('-o, --out <file>', 'write to this file (mode 0600) instead of standard output')
    .option('--force', 'overwrite the --out file');
  passphraseOptions(c);
  return c
    .addHelpText('after', `
The backup is a tar archive encrypted with age's scrypt passphrase recipient: "age -d" opens
it. It is read as one consistent snapshot while the server keeps running. Give the passphrase
with --passphrase-file, ${PASSPHRASE_ENV}, --interactive (asked twice) or --passphrase.
Standard output must not be a terminal. See docs/backup.md.`)
    .action(async (f: PassphraseFlags & { rootCaOnly?: boolean; stateDir: string; store?: string; unlockKeyFile?: string; out?: string; force?: boolean }) => {
      if (!f.out && process.stdout.isTTY) throw usage('refusing to write the backup to a terminal: redirect standard output (cairn backup … > backup.tar.age) or give --out <file>');
      if (!f.force) refuseExisting([f.out]);
      const passphrase = await backupPassphrase(f, true);
      const { backupStateDir } = await import('../server/state-backup.js'); // heavy: loaded only when used
      const r = await backupStateDir({ stateDir: f.stateDir, store: f.store, unlockKeyFile: f.unlockKeyFile, rootCaOnly: !!f.rootCaOnly, passphrase });
      if (f.out) writeFilesAtomic([{ path: f.out, data: r.data, mode: KEY_MODE }], { overwrite: !!f.force });
      else await writeStdout(r.data);
      const m = r.manifest;
      const what = m.kind === 'root-ca-only'
        ? `${m.cas.length} CA certificates and keys`
        : `${m.cas.length} CAs, ${m.tables.nodes ?? 0} nodes, ${m.tables.certificates ?? 0} certificates`;
      process.stderr.write(`Backed up cluster ${m.clusterId} (${m.kind}: ${what}) to ${f.out ?? 'standard output'}.\n`);
      for (const k of r.keysElsewhere) process.stderr.write(`Not in the backup: the key of CA ${k} (the HSM keeps it; back the token up with its own tools).\n`);
    });
}

export function restoreCommand(): Command {
  const c = new Command('restore')
    .description('restore an encrypted backup read from standard input: the root CAs into an initialized controller (--root-ca-only), or a whole store into an empty one')
    .option('--root-ca-only', 'replace the CAs of this initialized controller with the backup\'s: both controllers then have interchangeable CAs')
    .addOption(stateDirOption())
    .addOption(storeOption())
    .addOption(unlockKeyOption())
    .option('-i, --in <file>', 'read the backup from this file instead of standard input')
    .option('--force', 'with --root-ca-only: replace the CAs even though nodes joined under the current ones, or though the backup predates a completed root CA rotation')
    .option('--listen <host:port>', 'full restore into a new state directory: address "cairn serve" listens on', DEFAULT_LISTEN)
    .option('--advertise-addr <host>', 'full restore into a new state directory: host name or IP address nodes use to reach this replica')
    .option('--san <name>', 'full restore into a new state directory: extra DNS name or IP address for the server certificate (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .addOption(jsonOption());
  passphraseOptions(c);
  addPkcs11Options(c, { label: false });
  return c
    .addHelpText('after', `
--root-ca-only: the controller's server must be stopped (it loads the CAs at start); its
server and admin certificates are reissued under the restored root and its join tokens
change (written to <state-dir>/admin/tokens.json). Start it again afterwards.
CA keys in a PKCS#11 token: a backup holds where they are, not the keys; the restore opens them
in the token (--pkcs11-module/--pkcs11-token/--pkcs11-pin-file, or the ones of this replica's
replica.json), and refuses with one line when it cannot reach them.
Full restore: into a new state directory (created like "cairn init" does), or into the empty
store of an initialized state directory of the same cluster. Nothing changes unless the whole
restore succeeds. See docs/backup.md.`)
    .action(async (f: PassphraseFlags & {
      rootCaOnly?: boolean; stateDir: string; store?: string; unlockKeyFile?: string; in?: string; force?: boolean; listen: string; advertiseAddr?: string; san: string[]; json?: boolean;
    } & Pkcs11Flags) => {
      if (f.force && !f.rootCaOnly) throw usage('--force goes with --root-ca-only');
      const data = await readInput(f.in);
      const pkcs11 = await pkcs11FromFlags(f);
      const passphrase = await backupPassphrase(f, false);
      const { restoreStateDir } = await import('../server/state-backup.js');
      const r = await restoreStateDir({
        stateDir: f.stateDir, store: f.store, unlockKeyFile: f.unlockKeyFile, data, passphrase, rootCaOnly: !!f.rootCaOnly, force: f.force,
        listen: f.listen, advertiseAddr: f.advertiseAddr, sans: f.san, pkcs11,
      });
      if (f.json) {
        const { manifest, ...rest } = r;
        return printJson({ ...rest, backup: { kind: manifest.kind, clusterId: manifest.clusterId, createdAt: manifest.createdAt } });
      }
      if (r.kind === 'root-ca-only') {
        out(`Restored the root CAs of cluster ${r.clusterId} (backup of ${r.manifest.createdAt}) into ${r.stateDir}.`);
        if (r.previousClusterId !== r.clusterId) out(`This controller's cluster ID changed from ${r.previousClusterId} to ${r.clusterId}.`);
        if (r.superseded) out(`${r.superseded} certificate(s) issued under the replaced CAs are now recorded as revoked (superseded).`);
        out('Its server and admin certificates were reissued under the restored root; the join tokens changed:');
        out(`  worker:  ${r.tokens!.worker}`);
        out(`  manager: ${r.tokens!.manager}`);
        out(`Start the server again: cairn serve --state-dir ${r.stateDir}`);
        return;
      }
      out(`Restored cluster ${r.clusterId} (backup of ${r.manifest.createdAt}: ${r.manifest.tables.nodes ?? 0} nodes, ${r.manifest.tables.certificates ?? 0} certificates) into ${r.stateDir}.`);
      if (r.created) {
        out(`Replica ${r.replicaId} was created with a new unlock key, server certificate and admin bundle.`);
        out('The join tokens of the backed-up cluster keep working; "cairn token <role> --rotate" makes new ones.');
      } else if (!r.adminCertificateRestored) {
        out('Note: the admin certificate of this state directory is not in the backup; it will not be accepted by the server.');
      }
      out(`Start the server: cairn serve --state-dir ${r.stateDir}`);
    });
}

// ---------------------------------------------------------------- PKCS#12

export function clonePrepareCommand(): Command {
  const c = new Command('clone-prepare')
    .description('export the CA signing, OCSP signing and audit signing certificates and their keys into one PKCS#12 file (AES-256-CBC, PBKDF2, SHA-256 MAC) for a clone')
    .addOption(stateDirOption())
    .addOption(storeOption())
    .addOption(unlockKeyOption())
    .requiredOption('--pkcs12-file <file>', 'the PKCS#12 file to write (mode 0600)')
    .option('--force', 'overwrite the PKCS#12 file')
    .addOption(jsonOption());
  pkcs12PasswordOptions(c);
  return c
    .addHelpText('after', `
Nicknames (friendly names): cluster-root-ca and client-root-ca for the CAs that sign now; any
other CA certificate (a root rotation's) is named by its ID. The subsystem certificates are
named as Dogtag names them: "ocspSigningCert cert-cluster-root-ca",
"ocspSigningCert cert-client-root-ca", "auditSigningCert cert-cluster-root-ca" (a CA generation
after the first adds its number). A new controller is created from
the file with: cairn init <name> --from-pkcs12 <file> --pkcs12-password-file <file> …`)
    .action(async (f: Pkcs12PasswordFlags & { stateDir: string; store?: string; unlockKeyFile?: string; pkcs12File: string; force?: boolean; json?: boolean }) => {
      if (!f.force) refuseExisting([f.pkcs12File]);
      const password = await pkcs12Password(f);
      const { clonePrepare } = await import('../server/state-backup.js');
      const r = await clonePrepare({ stateDir: f.stateDir, store: f.store, unlockKeyFile: f.unlockKeyFile, password });
      writeFilesAtomic([{ path: f.pkcs12File, data: r.der, mode: KEY_MODE }], { overwrite: !!f.force });
      if (f.json) return printJson({ file: f.pkcs12File, entries: r.entries });
      for (const e of r.entries) out(`Added certificate "${e.nickname}"${e.hasKey ? ' with its key' : ' (no key held)'}: ${e.subject}`);
    });
}

export function pkcs12CertFindCommand(): Command {
  const c = new Command('pkcs12-cert-find')
    .description('list the certificates in a PKCS#12 file: certificate ID (SHA-1 fingerprint), serial, nickname, subject, issuer, key present')
    .requiredOption('--pkcs12-file <file>', 'the PKCS#12 file')
    .addOption(jsonOption());
  pkcs12PasswordOptions(c);
  return c.action(async (f: Pkcs12PasswordFlags & { pkcs12File: string; json?: boolean }) => {
    const password = await pkcs12Password(f);
    const { describePkcs12Entry, parsePkcs12 } = await import('../pki/pkcs12.js');
    const entries = (await parsePkcs12(readBytes(f.pkcs12File), password)).map(describePkcs12Entry);
    if (f.json) return printJson(entries);
    out(`${entries.length} ${entries.length === 1 ? 'entry' : 'entries'} found`);
    for (const e of entries) {
      out('');
      out(`  Certificate ID: ${e.id}`);
      out(`  Serial Number:  ${e.serial}`);
      out(`  Nickname:       ${e.nickname ?? '-'}`);
      out(`  Subject DN:     ${e.subject}`);
      out(`  Issuer DN:      ${e.issuer}`);
      out(`  Key:            ${e.hasKey ? 'present' : 'absent'}`);
    }
  });
}

/** init's --from-pkcs12 options. */
export function addPkcs12InitOptions(c: Command): Command {
  c.option('--from-pkcs12 <file>', 'create the cluster with the CAs of this PKCS#12 file (from "cairn clone-prepare", or your own, any subject): the cluster ID of roots cairn made is kept');
  return pkcs12PasswordOptions(c);
}

/** The CA material init --from-pkcs12 asks for, or undefined without the option. */
export async function casFromInitFlags(f: Pkcs12PasswordFlags & { fromPkcs12?: string }): Promise<ProvidedCas | undefined> {
  if (!f.fromPkcs12) {
    if (f.pkcs12Password !== undefined || f.pkcs12PasswordFile !== undefined) throw usage('--pkcs12-password goes with --from-pkcs12');
    return undefined;
  }
  const password = await pkcs12Password(f);
  const { parsePkcs12 } = await import('../pki/pkcs12.js');
  const { casFromPkcs12 } = await import('../authority/clone.js');
  const { DEFAULT_CONFIG } = await import('../authority/config.js');
  return casFromPkcs12(await parsePkcs12(readBytes(f.fromPkcs12), password), DEFAULT_CONFIG.certExpiryMs);
}
