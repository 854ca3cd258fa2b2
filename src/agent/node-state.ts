/**
 * A node's state directory (NODEDIR, 0700):
 *
 *   node.key   the node's private key (PKCS#8 PEM, 0600); generated on the node, never sent
 *   node.crt   its certificate followed by any CA certificates between it and a root
 *   ca.crt     the trust bundle: every root the node trusts
 *   node.json  { nodeId, role, clusterId, endpoints }
 *   crl.pem    the newest cluster CRL the agent fetched and verified (optional; replaced
 *              atomically, never by an older one): peers and CA replicas on it are refused
 *
 * Replacing the identity (renewal, `join --force`) goes through a small journal so that key
 * and certificate are never left mismatched, even by a crash: the new files are written and
 * fsynced into NODEDIR/.pending, a COMMIT marker is written, then each file is renamed into
 * place. Whoever finds a committed .pending directory (the agent, the next renewal) finishes
 * the renames; an uncommitted one is discarded, leaving the old identity intact.
 */
import { KeyObject, X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { CertificateInfo, certificateInfo, certificatesFromPem, chainToSend, CrlInfo, keysMatch, parseCrl, pemBlockOf, PkiError, privateKeyFromPem, Role, ID_RE, ROLES } from '../pki/index.js';
import { CairnError, fromPki } from '../util/errors.js';
import type { ClientTls } from './client.js';
import { ensureDir, exists, FILE_MODE, KEY_MODE, PlannedFile, readKeyFile, readText, writeFilesAtomic } from '../util/files.js';


export interface NodeConfig {
  nodeId: string;
  role: Role;
  clusterId: string;
  /** CA API endpoints (https://host:port), tried in order */
  endpoints: string[];
}

export const NODE_FILES = ['node.key', 'node.crt', 'ca.crt', 'node.json'] as const;
const PENDING = '.pending';
const COMMIT = 'COMMIT';

export function nodePaths(dir: string) {
  return {
    dir,
    key: path.join(dir, 'node.key'),
    cert: path.join(dir, 'node.crt'),
    ca: path.join(dir, 'ca.crt'),
    config: path.join(dir, 'node.json'),
    crl: path.join(dir, 'crl.pem'),
    pending: path.join(dir, PENDING),
  };
}


export function parseNodeConfig(text: string, file: string): NodeConfig {
  let j: any;
  try {
    j = JSON.parse(text);
  } catch {
    throw new CairnError('bad_state', `${file} is not valid JSON`);
  }
  const bad = (why: string) => new CairnError('bad_state', `${file}: ${why}`);
  if (!j || typeof j !== 'object') throw bad('expected a JSON object');
  if (typeof j.nodeId !== 'string' || !ID_RE.test(j.nodeId)) throw bad('nodeId is missing or malformed');
  if (typeof j.clusterId !== 'string' || !ID_RE.test(j.clusterId)) throw bad('clusterId is missing or malformed');
  if (!ROLES.includes(j.role)) throw bad('role must be worker or manager');
  if (!Array.isArray(j.endpoints) || j.endpoints.length === 0 || !j.endpoints.every((e: unknown) => typeof e === 'string')) {
    throw bad('endpoints must be a non-empty list of https:// addresses');
  }
  return { nodeId: j.nodeId, role: j.role, clusterId: j.clusterId, endpoints: j.endpoints };
}

export function readNodeConfig(dir: string): NodeConfig {
  const p = nodePaths(dir);
  if (!exists(p.config)) throw new CairnError('not_joined', `${dir} holds no node identity (no node.json): run "cairn join" first`);
  return parseNodeConfig(readText(p.config), p.config);
}

/** A node's identity as found on disk, checked to be consistent (but not for validity in time). */
export interface NodeIdentity {
  dir: string;
  config: NodeConfig;
  keyPem: string;
  key: KeyObject;
  /** node.crt as stored: leaf first, then any CA certificates */
  certPem: string;
  /** DER of node.crt's certificates, leaf first */
  chain: Buffer[];
  /**
   * node.crt as this node's TLS endpoints send it: a lone certificate with the chain up to its
   * root from ca.crt (pki chainToSend), so that OpenSSL does not build it on every handshake
   */
  sentPem: string;
  leaf: CertificateInfo;
  /** ca.crt as stored */
  caPem: string;
  /** DER of ca.crt's certificates */
  trust: Buffer[];
  /** crl.pem, if the agent stored one (see readNodeCrl) */
  crl: CrlInfo | null;
}

/**
 * The stored CRL (crl.pem), or null if there is none. It was verified against the trust bundle
 * before it was written (agent/crl.ts). A file that cannot be parsed counts as none (the agent
 * replaces it at its next fetch) but `onError` hears about it.
 */
export function readNodeCrl(dir: string, onError?: (e: CairnError) => void): CrlInfo | null {
  const file = nodePaths(dir).crl;
  if (!exists(file)) return null;
  try {
    return parseCrl(pemBlockOf(readText(file), ['X509 CRL'], file));
  } catch (e) {
    if (e instanceof PkiError || e instanceof CairnError) {
      onError?.(new CairnError('bad_state', `${file} is not a usable CRL (${e.message}); it is ignored until the agent fetches a new one`));
      return null;
    }
    throw e;
  }
}

/**
 * Read and check the identity files: the key file must not be readable by group or others,
 * key and certificate must be a pair, the certificate must name this node of this cluster.
 */
export function readNodeIdentity(dir: string): NodeIdentity {
  const p = nodePaths(dir);
  const config = readNodeConfig(dir);
  const keyPem = readKeyFile(p.key);
  const key = fromPki(() => privateKeyFromPem(keyPem, p.key));
  const certPem = readText(p.cert);
  const chain = fromPki(() => certificatesFromPem(certPem, p.cert));
  const leaf = fromPki(() => certificateInfo(chain[0]));
  if (!keysMatch(key, leaf.publicKeyDer)) {
    throw new CairnError('key_mismatch', `${p.key} and ${p.cert} do not belong together (the key is not the certificate's)`);
  }
  const caPem = readText(p.ca);
  const trust = fromPki(() => certificatesFromPem(caPem, p.ca));
  const s = leaf.subjectAttrs;
  if (s.CN !== config.nodeId || s.O !== config.clusterId) {
    throw new CairnError('bad_state', `${p.cert} is not the certificate of node ${config.nodeId} of cluster ${config.clusterId} (it is CN=${s.CN}, O=${s.O})`);
  }
  const sentPem = chainToSend(certPem, trust.map((d) => new X509Certificate(d)));
  return { dir, config, keyPem, key, certPem, chain, sentPem, leaf, caPem, trust, crl: readNodeCrl(dir) };
}

/** Finish (or discard) an identity replacement interrupted by a crash. Returns true if one was finished. */
export function recoverPendingCommit(dir: string): boolean {
  const p = nodePaths(dir);
  if (!exists(p.pending)) return false;
  const committed = exists(path.join(p.pending, COMMIT));
  if (committed) {
    for (const f of NODE_FILES) {
      const src = path.join(p.pending, f);
      if (exists(src)) fs.renameSync(src, path.join(dir, f));
    }
    fsyncDir(dir);
  }
  fs.rmSync(p.pending, { recursive: true, force: true });
  return committed;
}

function fsyncDir(dir: string): void {
  try {
    const fd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // best effort, as in writeFilesAtomic
  }
}

export interface IdentityFiles {
  keyPem?: string;
  certPem?: string;
  caPem?: string;
  config?: NodeConfig;
}

function planned(dir: string, f: IdentityFiles): PlannedFile[] {
  const out: PlannedFile[] = [];
  if (f.keyPem !== undefined) out.push({ path: path.join(dir, 'node.key'), data: f.keyPem, mode: KEY_MODE });
  if (f.certPem !== undefined) out.push({ path: path.join(dir, 'node.crt'), data: f.certPem, mode: FILE_MODE });
  if (f.caPem !== undefined) out.push({ path: path.join(dir, 'ca.crt'), data: f.caPem, mode: FILE_MODE });
  if (f.config !== undefined) out.push({ path: path.join(dir, 'node.json'), data: JSON.stringify(f.config, null, 2) + '\n', mode: FILE_MODE });
  return out;
}

/** Write a first identity into a directory that holds none: refuses to overwrite any file. */
export function writeNewIdentity(dir: string, f: Required<IdentityFiles>): void {
  ensureDir(dir);
  writeFilesAtomic(planned(dir, f));
}

/**
 * Replace (part of) an identity, all or nothing, crash-safe: see the journal described at
 * the top of this file.
 */
export function replaceIdentity(dir: string, f: IdentityFiles): void {
  ensureDir(dir);
  recoverPendingCommit(dir);
  const p = nodePaths(dir);
  const staged = planned(p.pending, f);
  if (staged.length === 0) return;
  ensureDir(p.pending);
  try {
    writeFilesAtomic(staged, { overwrite: true });
    writeFilesAtomic([{ path: path.join(p.pending, COMMIT), data: '', mode: FILE_MODE }], { overwrite: true });
  } catch (e) {
    fs.rmSync(p.pending, { recursive: true, force: true });
    throw e;
  }
  recoverPendingCommit(dir);
}

/**
 * The TLS identity a node uses to call the CA: its trust bundle, certificate and key; the
 * replica must be of the node's cluster and not on its stored CRL.
 */
export function clientTlsOf(id: NodeIdentity): ClientTls {
  return { ca: id.caPem, cert: id.sentPem, key: id.keyPem, clusterId: id.config.clusterId, crl: id.crl };
}
