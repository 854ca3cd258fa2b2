/**
 * `cairn bundle`: client bundles in UCP's layout — a zip of ca.pem, cert.pem, key.pem,
 * cert.pub and env.sh / env.ps1 / env.cmd setting CAIRN_SERVER, CAIRN_CA, CAIRN_CERT and
 * CAIRN_KEY — created through the API (the key is generated here and never sent), listed,
 * revoked, and unpacked with the key 0600 in a 0700 directory.
 */
import path from 'node:path';
import { Command, Option } from 'commander';
import { certificateFromPem, certificateInfo, certificatesFromPem, createCsr, csrToPem, generateKeyPair, keysMatch, privateKeyFromPem, privateKeyToPem, REVOCATION_REASONS, spkiDer, toPem } from '../pki/index.js';
import { CairnError, fromPki } from '../util/errors.js';
import { ensureDir, exists, FILE_MODE, KEY_MODE, readBytes, writeFilesAtomic } from '../util/files.js';
import { readZip, writeZip, ZipEntry } from '../util/zip.js';
import { addAdminOptions, adminCall, AdminFlags, adminTarget } from './admin-client.js';
import { jsonOption, keyTypeOption, out, parseDurationArg, printJson, table } from './common.js';

/** The files of a bundle, in the order they are zipped, and their modes once unpacked. */
export const BUNDLE_FILES: Record<string, number> = {
  'ca.pem': FILE_MODE,
  'cert.pem': FILE_MODE,
  'key.pem': KEY_MODE,
  'cert.pub': FILE_MODE,
  'env.sh': FILE_MODE,
  'env.ps1': FILE_MODE,
  'env.cmd': FILE_MODE,
  'README.txt': FILE_MODE,
};

interface BundleInfo {
  user: string;
  admin: boolean;
  serial: string;
  notAfter: string;
  clusterId: string;
  server: string;
}

function envSh(b: BundleInfo): string {
  return `# cairn client bundle: ${b.admin ? 'admin' : 'client (read-only)'} "${b.user}" of cluster ${b.clusterId}, certificate ${b.serial}
# Load it from the bundle's directory:  . ./env.sh   (bash, zsh, sh)
if [ -n "\${BASH_SOURCE:-}" ]; then CAIRN_BUNDLE_DIR="$(cd "$(dirname "\${BASH_SOURCE[0]}")" && pwd)"
elif [ -n "\${ZSH_VERSION:-}" ]; then CAIRN_BUNDLE_DIR="$(cd "$(dirname "$0")" && pwd)"
else CAIRN_BUNDLE_DIR="$(pwd)"; fi
export CAIRN_SERVER='${b.server}'
export CAIRN_CA="$CAIRN_BUNDLE_DIR/ca.pem"
export CAIRN_CERT="$CAIRN_BUNDLE_DIR/cert.pem"
export CAIRN_KEY="$CAIRN_BUNDLE_DIR/key.pem"
unset CAIRN_BUNDLE_DIR
`;
}

function envPs1(b: BundleInfo): string {
  return [
    `# cairn client bundle: ${b.admin ? 'admin' : 'client (read-only)'} "${b.user}" of cluster ${b.clusterId}, certificate ${b.serial}`,
    '# Load it:  . .\\env.ps1',
    `$env:CAIRN_SERVER = '${b.server}'`,
    "$env:CAIRN_CA = Join-Path $PSScriptRoot 'ca.pem'",
    "$env:CAIRN_CERT = Join-Path $PSScriptRoot 'cert.pem'",
    "$env:CAIRN_KEY = Join-Path $PSScriptRoot 'key.pem'",
    '',
  ].join('\r\n');
}

function envCmd(b: BundleInfo): string {
  return [
    '@echo off',
    `rem cairn client bundle: ${b.admin ? 'admin' : 'client (read-only)'} "${b.user}" of cluster ${b.clusterId}, certificate ${b.serial}`,
    `set "CAIRN_SERVER=${b.server}"`,
    'set "CAIRN_CA=%~dp0ca.pem"',
    'set "CAIRN_CERT=%~dp0cert.pem"',
    'set "CAIRN_KEY=%~dp0key.pem"',
    '',
  ].join('\r\n');
}

function readme(b: BundleInfo): string {
  return `cairn client bundle
===================

User:        ${b.user} (${b.admin ? 'admin: everything an administrator may do' : 'client: read-only calls'})
Cluster:     ${b.clusterId}
Certificate: ${b.serial}, valid until ${b.notAfter}
Server:      ${b.server}

Files: ca.pem (the cluster roots the API's server certificates chain to), cert.pem (this
bundle's client certificate), key.pem (its private key: keep it secret), cert.pub (the public
key), env.sh / env.ps1 / env.cmd (set CAIRN_SERVER, CAIRN_CA, CAIRN_CERT, CAIRN_KEY).

Unpack it with "cairn bundle unpack <file>.zip": the key is written 0600 in a 0700 directory.
A zip file does not reliably keep file modes (many unzip tools ignore them): if you unpack it
another way, run "chmod 600 key.pem" and "chmod 700 ." yourself; cairn refuses a key file that
others can read.

Then:
  . ./env.sh                                   (PowerShell: . .\\env.ps1   cmd: env.cmd)
  cairn node ls                                (the CLI reads CAIRN_* when no --state-dir or --bundle is given)
  curl --cacert "$CAIRN_CA" --cert "$CAIRN_CERT" --key "$CAIRN_KEY" "$CAIRN_SERVER/v1/nodes"
`;
}

function defaultZip(user: string): string {
  return `cairn-bundle-${user.replace(/[^A-Za-z0-9._-]/g, '_')}.zip`;
}

export function bundleCommand(): Command {
  const bundle = new Command('bundle').description('client bundles (UCP\'s layout): create, list, revoke, unpack');
  addAdminOptions(bundle.command('create'))
    .description('issue a client bundle for a user: a zip of ca.pem, cert.pem, key.pem, cert.pub, env.sh, env.ps1, env.cmd (the key is generated here and never sent)')
    .argument('<user>', 'who the bundle is for (the certificate\'s CN): letters, digits, ".", "_", "@", "-"')
    .option('--admin', 'an admin bundle (cluster-root-ca, OU=admin: everything admin); default a read-only client bundle (client-root-ca, OU=client)')
    .addOption(new Option('--expiry <duration>', 'lifetime, e.g. 720h, 90d (default 365d, minimum 1h)').argParser(parseDurationArg))
    .option('-o, --out <file.zip>', 'where to write the zip (default ./cairn-bundle-<user>.zip, 0600)')
    .option('--public-url <url>', 'the API address the bundle\'s env files name (default: the server this command calls)')
    .option('--force', 'overwrite an existing zip file')
    .addOption(keyTypeOption())
    .addOption(jsonOption())
    .action(async (user: string, f: AdminFlags & { admin?: boolean; expiry?: number; out?: string; publicUrl?: string; force?: boolean; keyType: any; json?: boolean }) => {
      const { validateUserName } = await import('../authority/policy.js');
      validateUserName(user);
      const file = f.out ?? defaultZip(user);
      if (!file.endsWith('.zip')) throw new CairnError('usage', `-o ${file}: the bundle is a zip file, name it <something>.zip`);
      if (!f.force && exists(file)) throw new CairnError('exists', `${file} exists; refusing to overwrite it (use --force)`);
      const target = adminTarget(f);
      const server = (f.publicUrl ?? target.server).replace(/\/+$/, '');
      if (!/^https:\/\/[A-Za-z0-9.:[\]_-]+(\/[A-Za-z0-9._~/-]*)?$/.test(server)) throw new CairnError('usage', `the server address "${server}" cannot go into the bundle's env files: give --public-url https://host:port`);
      const kp = generateKeyPair(f.keyType);
      const csr = csrToPem(createCsr(kp.privateKey, { CN: user }));
      const r = await adminCall(target, 'POST', 'v1/bundles', { user, admin: !!f.admin, csr, ...(f.expiry !== undefined ? { expiryMs: f.expiry } : {}) });
      const info = fromPki(() => certificateInfo(certificateFromPem(r.certificate, 'the bundle certificate')));
      if (!keysMatch(kp.privateKey, info.publicKeyDer)) throw new CairnError('bad_response', 'the server answered with a certificate for another key');
      const b: BundleInfo = { user, admin: !!r.admin, serial: r.serial, notAfter: r.notAfter, clusterId: info.subjectAttrs.O ?? '', server };
      const files: Record<string, string> = {
        'ca.pem': r.ca,
        'cert.pem': r.certificate,
        'key.pem': privateKeyToPem(kp.privateKey),
        'cert.pub': toPem('PUBLIC KEY', spkiDer(kp.publicKey)),
        'env.sh': envSh(b),
        'env.ps1': envPs1(b),
        'env.cmd': envCmd(b),
        'README.txt': readme(b),
      };
      const zip = writeZip(Object.entries(files).map(([name, data]) => ({ name, data: Buffer.from(data), mode: BUNDLE_FILES[name] })));
      writeFilesAtomic([{ path: file, data: zip, mode: KEY_MODE }], { overwrite: !!f.force });
      if (f.json) return printJson({ ...b, file });
      out(`Issued ${b.admin ? 'an admin' : 'a read-only client'} bundle for "${user}" (certificate ${b.serial}, valid until ${b.notAfter}) into ${file}.`);
      out(`Unpack it with: cairn bundle unpack ${file}   then: . ./env.sh`);
    });

  addAdminOptions(bundle.command('ls'))
    .description('list client bundles: user, admin or not, serial, expiry, status')
    .option('--user <user>', 'only this user\'s bundles')
    .addOption(jsonOption())
    .action(async (f: AdminFlags & { user?: string; json?: boolean }) => {
      const q = f.user ? `?user=${encodeURIComponent(f.user)}` : '';
      const r = await adminCall(adminTarget(f), 'GET', `v1/bundles${q}`);
      if (f.json) return printJson(r.bundles);
      table([['USER', 'ADMIN', 'SERIAL', 'NOT AFTER', 'STATUS'], ...r.bundles.map((x: any) => [x.user, x.admin ? 'yes' : 'no', x.serial, x.notAfter, x.status])]);
    });

  addAdminOptions(bundle.command('revoke'))
    .description('revoke a bundle by serial, or every good bundle of a user: every replica refuses it at once, and the issuing CA\'s next CRL lists it')
    .argument('<user|serial>', 'a user name, or a bundle certificate\'s serial (hex)')
    .addOption(new Option('--reason <reason>', 'revocation reason').choices(Object.keys(REVOCATION_REASONS)).default('unspecified'))
    .option('--force', 'also revoke the last good admin certificate (locks every administrator out until "cairn admin-bundle")')
    .addOption(jsonOption())
    .action(async (who: string, f: AdminFlags & { reason: string; force?: boolean; json?: boolean }) => {
      const r = await adminCall(adminTarget(f), 'POST', `v1/bundles/${encodeURIComponent(who)}/revoke`, { reason: f.reason, ...(f.force ? { force: true } : {}) });
      if (f.json) return printJson(r);
      out(`Revoked ${r.revoked} bundle${r.revoked === 1 ? '' : 's'} of "${r.user}": ${r.serials.join(', ')} (${r.reason}).`);
    });

  bundle
    .command('unpack')
    .description('unpack a bundle zip into a directory (0700; key.pem 0600): what --bundle and env.sh expect')
    .argument('<file.zip>', 'a bundle made by "cairn bundle create"')
    .option('-d, --dir <dir>', 'where to unpack (default: the zip\'s name without .zip)')
    .option('--force', 'overwrite the bundle files of an existing directory')
    .action((file: string, f: { dir?: string; force?: boolean }) => {
      const dir = f.dir ?? (file.endsWith('.zip') ? file.slice(0, -4) : `${file}.d`);
      const entries = readZip(readBytes(file), { maxEntries: 32, maxEntryBytes: 1024 * 1024 }, file);
      const byName = new Map(entries.map((e): [string, ZipEntry] => [e.name, e]));
      for (const n of ['ca.pem', 'cert.pem', 'key.pem']) if (!byName.has(n)) throw new CairnError('bad_zip', `${file} is not a cairn bundle: it holds no ${n}`);
      const key = fromPki(() => privateKeyFromPem(byName.get('key.pem')!.data.toString(), `${file}: key.pem`));
      const cert = fromPki(() => certificateInfo(certificateFromPem(byName.get('cert.pem')!.data.toString(), `${file}: cert.pem`)));
      fromPki(() => certificatesFromPem(byName.get('ca.pem')!.data.toString(), `${file}: ca.pem`));
      if (!keysMatch(key, cert.publicKeyDer)) throw new CairnError('bad_zip', `${file}: key.pem does not belong to cert.pem`);
      const known = entries.filter((e) => Object.hasOwn(BUNDLE_FILES, e.name));
      const skipped = entries.filter((e) => !Object.hasOwn(BUNDLE_FILES, e.name)).map((e) => e.name);
      ensureDir(dir);
      writeFilesAtomic(known.map((e) => ({ path: path.join(dir, e.name), data: e.data, mode: BUNDLE_FILES[e.name], exactMode: true })), { overwrite: !!f.force });
      out(`Unpacked the bundle of ${cert.subjectAttrs.CN} (certificate ${cert.serialHex}, valid until ${cert.notAfter.toISOString()}) into ${dir}; key.pem is 0600.`);
      if (skipped.length) out(`Not unpacked (not bundle files): ${skipped.join(', ')}`);
      out(`Use it: cd ${dir} && . ./env.sh   or: cairn <command> --bundle ${dir}`);
    });
  return bundle;
}
