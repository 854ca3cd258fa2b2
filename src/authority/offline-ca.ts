/**
 * The offline CA (flocker-ca parity): a root CA and leaf certificates as files in a
 * directory, no server. What the certificates say is decided in policy.ts (as for the online
 * CA), serials come from serials.ts (a counter file), the bytes from the pure `pki` core.
 */
import type { KeyObject } from 'node:crypto';
import path from 'node:path';
import {
  certificateFromPem, certificateInfo, certificateToPem, generateKeyPair, ID_RE, issueCertificate,
  Issuer, KeyType, leafProfile, makeIssuer, makeSerial, privateKeyFromPem, privateKeyToPem, randomId,
  randomUuid, rootCaProfile, selfSignCertificate, spkiDer,
} from '../pki/index.js';
import { CairnError, fromPki } from '../util/errors.js';
import { ensureDir, exists, refuseExisting, FILE_MODE, KEY_MODE, readKeyFile, readText, writeFilesAtomic } from '../util/files.js';
import { LeafPolicy, offlineApiPolicy, offlineControlPolicy, offlineNodePolicy, offlineRootSubject, validateClusterName } from './policy.js';
import { nextOfflineSequence, startOfflineCounter } from './serials.js';

export const CA_CERT_FILE = 'cluster.crt';
export const CA_KEY_FILE = 'cluster.key';
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


/** A key (0600) and its certificate, written together or not at all. */
function writeKeyAndCertificate(keyPath: string, key: KeyObject, certPath: string, der: Buffer, overwrite?: boolean): void {
  writeFilesAtomic(
    [
      { path: keyPath, data: privateKeyToPem(key), mode: KEY_MODE },
      { path: certPath, data: certificateToPem(der), mode: FILE_MODE },
    ],
    { overwrite },
  );
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
  if (!o.force) refuseExisting([certPath, keyPath]);
  const clusterId = randomId();
  const kp = generateKeyPair(o.keyType);
  const cert = fromPki(() => selfSignCertificate(rootCaProfile(offlineRootSubject(clusterId, clusterName), spkiDer(kp.publicKey), makeSerial(0n)), kp.privateKey));
  writeKeyAndCertificate(keyPath, kp.privateKey, certPath, cert, o.force);
  startOfflineCounter(o.dir);
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
  policy: LeafPolicy;
  keyType?: KeyType;
  force?: boolean;
}

function issueLeafFiles(ca: OfflineCa, r: LeafRequest): IssuedFiles {
  ensureDir(r.outDir);
  const certPath = path.join(r.outDir, `${r.baseName}.crt`);
  const keyPath = path.join(r.outDir, `${r.baseName}.key`);
  if (!r.force) refuseExisting([certPath, keyPath]);
  const kp = generateKeyPair(r.keyType);
  const serial = makeSerial(nextOfflineSequence(ca.dir));
  const der = fromPki(() => issueCertificate(leafProfile({ ...r.policy, publicKeyDer: spkiDer(kp.publicKey), publicKey: kp.publicKey, serial }), ca.issuer));
  writeKeyAndCertificate(keyPath, kp.privateKey, certPath, der, r.force);
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
  const policy = offlineControlPolicy(ca.clusterId, hostname, o.lifetimeMs);
  return issueLeafFiles(ca, { ...o, baseName: `control-${policy.name.replace(/:/g, '_')}`, policy });
}

/** `<uuid>.crt/.key`: a node identity named by a fresh UUID (CN), server and client auth. */
export function createNodeCertificate(ca: OfflineCa, o: LeafOptions): IssuedFiles & { uuid: string } {
  const uuid = randomUuid();
  return { ...issueLeafFiles(ca, { ...o, baseName: uuid, policy: offlineNodePolicy(ca.clusterId, uuid, o.lifetimeMs) }), uuid };
}

/** `<username>.crt/.key`: an API client certificate, client auth only. */
export function createApiCertificate(ca: OfflineCa, username: string, o: LeafOptions): IssuedFiles {
  const policy = offlineApiPolicy(ca.clusterId, username, o.lifetimeMs);
  return issueLeafFiles(ca, { ...o, baseName: username, policy });
}
