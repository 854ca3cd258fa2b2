/**
 * The offline CA (flocker-ca parity): a root CA and leaf certificates as files in a
 * directory, no server. Policy (subjects, usages, lifetimes) is decided here; the
 * certificate bytes come from the pure `pki` core.
 */
import fs from 'node:fs';
import path from 'node:path';
import {
  certificateFromPem, certificateInfo, certificateToPem, DAY_MS, ExtKeyUsageName, generateKeyPair, ID_RE, issueCertificate,
  Issuer, KeyType, leafProfile, makeIssuer, makeSerial, NameAttrs, privateKeyFromPem, privateKeyToPem, randomId,
  randomUuid, rootCaProfile, sanFor, selfSignCertificate, spkiDer, SubjectAltName,
} from '../pki/index.js';
import { CairnError, fromPki } from '../util/errors.js';
import { ensureDir, exists, FILE_MODE, KEY_MODE, readKeyFile, readText, writeFilesAtomic } from '../util/files.js';

export const CA_CERT_FILE = 'cluster.crt';
export const CA_KEY_FILE = 'cluster.key';
export const SERIAL_FILE = 'cluster.serial';
export const DEFAULT_LEAF_LIFETIME_MS = 365 * DAY_MS;

export interface OfflineCa {
  dir: string;
  clusterId: string;
  clusterName: string;
  issuer: Issuer;
}

export interface IssuedFiles {
  certPath: string;
  keyPath: string;
  serialHex: string;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._ -]{0,62}[A-Za-z0-9._-]$|^[A-Za-z0-9]$/;
const USER_RE = /^[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}$/;

export function validateClusterName(name: string): void {
  if (!NAME_RE.test(name)) {
    throw new CairnError('bad_name', `invalid cluster name "${name}": use 1 to 64 letters, digits, spaces, ".", "_" or "-", starting with a letter or digit`);
  }
}

export function validateUserName(name: string): void {
  if (!USER_RE.test(name)) {
    throw new CairnError('bad_name', `invalid user name "${name}": use 1 to 64 letters, digits, ".", "_", "@" or "-", not starting with "." or "-"`);
  }
}

/**
 * Next sequence number from the local counter file, under a lock directory so that two
 * concurrent invocations never hand out the same number. The counter is advanced before
 * the number is used: a crash wastes a number, never repeats one.
 */
function nextSequence(dir: string): bigint {
  const counter = path.join(dir, SERIAL_FILE);
  const lock = counter + '.lock';
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      fs.mkdirSync(lock, { mode: 0o700 });
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new CairnError('io', `cannot lock ${counter}: ${(e as Error).message}`);
      try {
        if (Date.now() - fs.statSync(lock).mtimeMs > 30_000) fs.rmdirSync(lock); // stale lock from a crash
      } catch {
        /* raced with its owner */
      }
      if (Date.now() > deadline) throw new CairnError('locked', `${counter} is locked by another cairn process (remove ${lock} if none is running)`);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    }
  }
  try {
    let n = 1n;
    if (exists(counter)) {
      const t = readText(counter).trim();
      if (!/^\d+$/.test(t)) throw new CairnError('corrupt', `${counter} is corrupt: expected a number`);
      n = BigInt(t);
    }
    writeFilesAtomic([{ path: counter, data: `${n + 1n}\n`, mode: FILE_MODE }], { overwrite: true });
    return n;
  } finally {
    fs.rmdirSync(lock);
  }
}

export interface InitializeOptions {
  dir: string;
  keyType?: KeyType;
  force?: boolean;
}

/** Create the root CA: `cluster.crt` and `cluster.key` (0600) in `dir` (0700 if created). */
export function initializeCa(clusterName: string, o: InitializeOptions): { certPath: string; keyPath: string; clusterId: string } {
  validateClusterName(clusterName);
  ensureDir(o.dir);
  const certPath = path.join(o.dir, CA_CERT_FILE);
  const keyPath = path.join(o.dir, CA_KEY_FILE);
  if (!o.force) {
    for (const p of [certPath, keyPath]) if (exists(p)) throw new CairnError('exists', `${p} already exists; use --force to overwrite it`);
  }
  const clusterId = randomId();
  const kp = generateKeyPair(o.keyType);
  const subject: NameAttrs = { O: clusterId, OU: 'cairn cluster CA', CN: clusterName };
  const cert = fromPki(() => selfSignCertificate(rootCaProfile(subject, spkiDer(kp.publicKey), makeSerial(0n)), kp.privateKey));
  writeFilesAtomic(
    [
      { path: keyPath, data: privateKeyToPem(kp.privateKey), mode: KEY_MODE },
      { path: certPath, data: certificateToPem(cert), mode: FILE_MODE },
    ],
    { overwrite: o.force },
  );
  writeFilesAtomic([{ path: path.join(o.dir, SERIAL_FILE), data: '1\n', mode: FILE_MODE }], { overwrite: true });
  return { certPath, keyPath, clusterId };
}

/** Load the CA from `dir`, checking the key file's permissions and that certificate and key match. */
export function loadCa(dir: string): OfflineCa {
  const certPath = path.join(dir, CA_CERT_FILE);
  const keyPath = path.join(dir, CA_KEY_FILE);
  if (!exists(certPath)) throw new CairnError('no_ca', `no CA in ${dir}: ${certPath} not found (run "cairn ca initialize <name>" first, or give --ca-dir)`);
  const certDer = fromPki(() => certificateFromPem(readText(certPath), certPath), certPath);
  const keyPem = readKeyFile(keyPath);
  const key = fromPki(() => privateKeyFromPem(keyPem, keyPath));
  const issuer = fromPki(() => makeIssuer(certDer, key), `${certPath} and ${keyPath}`);
  const info = certificateInfo(certDer);
  const clusterId = info.subjectAttrs.O ?? '';
  if (!ID_RE.test(clusterId)) throw new CairnError('bad_ca', `${certPath} is not a cairn cluster CA (its subject has no cluster ID)`);
  return { dir, clusterId, clusterName: info.subjectAttrs.CN ?? '', issuer };
}

interface LeafRequest {
  outDir: string;
  baseName: string;
  subject: NameAttrs;
  extKeyUsage: ExtKeyUsageName[];
  sans?: SubjectAltName[];
  keyType?: KeyType;
  lifetimeMs?: number;
  force?: boolean;
}

function issueLeafFiles(ca: OfflineCa, r: LeafRequest): IssuedFiles {
  ensureDir(r.outDir);
  const certPath = path.join(r.outDir, `${r.baseName}.crt`);
  const keyPath = path.join(r.outDir, `${r.baseName}.key`);
  if (!r.force) {
    for (const p of [certPath, keyPath]) if (exists(p)) throw new CairnError('exists', `${p} already exists; use --force to overwrite it`);
  }
  const kp = generateKeyPair(r.keyType);
  const serial = makeSerial(nextSequence(ca.dir));
  const der = fromPki(() =>
    issueCertificate(
      leafProfile({
        subject: r.subject,
        publicKeyDer: spkiDer(kp.publicKey),
        publicKey: kp.publicKey,
        serial,
        lifetimeMs: r.lifetimeMs ?? DEFAULT_LEAF_LIFETIME_MS,
        extKeyUsage: r.extKeyUsage,
        sans: r.sans,
      }),
      ca.issuer,
    ),
  );
  writeFilesAtomic(
    [
      { path: keyPath, data: privateKeyToPem(kp.privateKey), mode: KEY_MODE },
      { path: certPath, data: certificateToPem(der), mode: FILE_MODE },
    ],
    { overwrite: r.force },
  );
  return { certPath, keyPath, serialHex: serial.toString('hex').toUpperCase() };
}

export interface LeafOptions {
  outDir: string;
  keyType?: KeyType;
  lifetimeMs?: number;
  force?: boolean;
}

/** `control-<hostname>.crt/.key`: server and client auth, SAN with the host name or IP. */
export function createControlCertificate(ca: OfflineCa, hostname: string, o: LeafOptions): IssuedFiles {
  // an invalid host name (bad_hostname) is a bad argument, like an invalid cluster or user name: exit 2
  const san: SubjectAltName = fromPki(() => sanFor(hostname));
  const name = 'dns' in san ? san.dns : san.ip;
  return issueLeafFiles(ca, {
    ...o,
    baseName: `control-${name.replace(/:/g, '_')}`,
    subject: { O: ca.clusterId, OU: 'control-service', CN: 'control-service' },
    extKeyUsage: ['serverAuth', 'clientAuth'],
    sans: [san],
  });
}

/** `<uuid>.crt/.key`: a node identity named by a fresh UUID (CN), server and client auth. */
export function createNodeCertificate(ca: OfflineCa, o: LeafOptions): IssuedFiles & { uuid: string } {
  const uuid = randomUuid();
  const files = issueLeafFiles(ca, {
    ...o,
    baseName: uuid,
    subject: { O: ca.clusterId, OU: 'node', CN: uuid },
    extKeyUsage: ['serverAuth', 'clientAuth'],
    sans: [{ dns: uuid }],
  });
  return { ...files, uuid };
}

/** `<username>.crt/.key`: an API client certificate, client auth only. */
export function createApiCertificate(ca: OfflineCa, username: string, o: LeafOptions): IssuedFiles {
  validateUserName(username);
  return issueLeafFiles(ca, {
    ...o,
    baseName: username,
    subject: { O: ca.clusterId, OU: 'api-user', CN: username },
    extKeyUsage: ['clientAuth'],
  });
}
