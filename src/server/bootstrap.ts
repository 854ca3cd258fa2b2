/**
 * Bootstrapping a replica: `init` (create the cluster and this replica's state directory)
 * and `serve` (load the authority from the store and run the HTTPS API).
 */
import { driveRotations, DRIVE_INTERVAL_MS, ROTATION_LEASE } from '../authority/rotation.js';
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import pino, { Logger } from 'pino';
import { Authority } from '../authority/authority.js';
import { initCluster } from '../authority/init.js';
import type { ProvidedCas } from '../authority/clone.js';
import { CrlPublisher } from '../authority/crl.js';
import { AuditSealer } from '../authority/audit-log.js';
import { KeyAccess, keyResolver, keySources, tokenCas } from '../authority/ca-keys.js';
import type { ExternalCa } from '../authority/external-ca.js';
import type { Pkcs11Config } from '../authority/pkcs11.js';
import { formatUnlockKey, newUnlockKey } from '../authority/seal.js';
import {
  certificatesFromPem, certificateInfo, certificateToPem, createCsr, generateKeyPair, KeyType, privateKeyToPem, randomId, sanFor, spkiDer,
  SubjectAltName,
} from '../pki/index.js';
import { openStore, redactUrl, replicationWarning, resolveStoreUrl, type Store } from '../store/store.js';
import { CairnError, fromPki } from '../util/errors.js';
import { ensureDir, exists, FILE_MODE, KEY_MODE, PlannedFile, readKeyFile, readText, writeFilesAtomic } from '../util/files.js';
import { VERSION } from '../version.js';
import { buildServer } from './server.js';
import { DEFAULT_LISTEN, loadUnlockKey, parseHostPort, ReplicaConfig, readReplicaConfig, statePaths } from './state-dir.js';

/** A PKCS#11 setting as replica.json keeps it: absolute paths, never the PIN. */
export const pkcs11Paths = (c: Pkcs11Config): Pkcs11Config => ({ module: path.resolve(c.module), token: c.token, pinFile: path.resolve(c.pinFile) });

/**
 * The authority of this replica, reaching CA keys the store does not seal (ca-keys.ts): its
 * PKCS#11 token, and the external CAs the cluster's settings list (asked with this replica's
 * server certificate when they want a client certificate).
 */
export function authorityFor(store: Store, replicaId: string, unlockKey: Buffer, pkcs11: Pkcs11Config | undefined, stateDir: string): Authority {
  const access: KeyAccess = { pkcs11 };
  const auth = new Authority(store, replicaId, unlockKey, keyResolver(access));
  const p = statePaths(stateDir);
  access.externalCas = () => ({ urls: auth.config.externalCas ?? [] });
  access.clientIdentity = () => (exists(p.serverKey) && exists(p.serverCert) ? { key: readKeyFile(p.serverKey), cert: readText(p.serverCert) } : null);
  auth.keySources = keySources(access);
  return auth;
}

/** The leaf of a PEM chain (a certificate issued during a rotation is followed by the cross-signed one). */
const leafOf = (pem: string, what: string) => certificatesFromPem(pem, what)[0];

export function sansFor(advertise: string, extra: string[]): SubjectAltName[] {
  const names = [advertise, ...extra];
  const out: SubjectAltName[] = [];
  for (const n of names) {
    const s = fromPki(() => sanFor(n)); // bad_hostname: a usage error (exit 2)
    if (!out.some((o) => JSON.stringify(o) === JSON.stringify(s))) out.push(s);
  }
  return out;
}

/**
 * Check that the server key parses and belongs to the server certificate, so a damaged or
 * swapped file gives one line naming it instead of an OpenSSL decoder string.
 */
export function checkServerKey(keyPem: string, certPem: string, keyFile: string, certFile: string): void {
  const fix = `remove ${keyFile} and ${certFile} to have a new server identity issued at start`;
  let pub: Buffer;
  try {
    pub = createPublicKey(createPrivateKey(keyPem)).export({ type: 'spki', format: 'der' });
  } catch {
    throw new CairnError('bad_server_key', `${keyFile} is not a readable private key (PEM): ${fix}`);
  }
  let certPub: Buffer;
  try {
    certPub = new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' });
  } catch {
    throw new CairnError('bad_server_key', `${certFile} is not a readable certificate (PEM): ${fix}`);
  }
  if (!pub.equals(certPub)) throw new CairnError('bad_server_key', `${keyFile} does not match ${certFile}: ${fix}`);
}

/** Issue this replica's server key and certificate, and the files that hold them. */
export async function serverIdentityFiles(auth: Authority, dir: string, cfg: ReplicaConfig): Promise<PlannedFile[]> {
  const p = statePaths(dir);
  const kp = generateKeyPair();
  // with its request: an external CA signs requests, not bare keys
  const s = await auth.issueServerCertificate(kp.publicKey, spkiDer(kp.publicKey), sansFor(cfg.advertiseAddr, cfg.sans), undefined, createCsr(kp.privateKey));
  return [
    { path: p.serverKey, data: privateKeyToPem(kp.privateKey), mode: KEY_MODE },
    { path: p.serverCert, data: s.certificate, mode: FILE_MODE },
    { path: p.caCert, data: auth.trustBundle(), mode: FILE_MODE },
  ];
}

/** A fresh admin client bundle (ca.pem, cert.pem, key.pem) for the state directory's admin/. */
export async function adminBundleFiles(auth: Authority, dir: string, name = 'admin'): Promise<PlannedFile[]> {
  const p = statePaths(dir);
  const kp = generateKeyPair();
  const admin = await auth.issueAdminCertificate(kp.publicKey, spkiDer(kp.publicKey), name, undefined, createCsr(kp.privateKey));
  ensureDir(p.adminDir);
  return [
    { path: p.adminCa, data: auth.trustBundle(), mode: FILE_MODE },
    { path: p.adminCert, data: admin.certificate, mode: FILE_MODE },
    { path: p.adminKey, data: privateKeyToPem(kp.privateKey), mode: KEY_MODE },
  ];
}

export interface InitOptions {
  stateDir: string;
  clusterName: string;
  advertiseAddr?: string;
  sans?: string[];
  listen?: string;
  store?: string;
  keyType?: KeyType;
  /** CA material to create the cluster with (init --from-pkcs12, --ca-cert) instead of new roots */
  ca?: ProvidedCas;
  /** CA keys in this PKCS#11 token (generated there, or `pkcs11KeyLabel` used) */
  pkcs11?: Pkcs11Config;
  pkcs11KeyLabel?: string;
  /** an external CA holds the cluster CA's key (`ca.cluster` is its certificate): tried in order */
  externalCas?: ExternalCa[];
}

export interface InitOutcome {
  clusterId: string;
  replicaId: string;
  tokens: Record<string, string>;
  listen: string;
  stateDir: string;
}

export interface NewStateDirOptions {
  stateDir: string;
  listen?: string;
  advertiseAddr?: string;
  sans?: string[];
  /** store URL; default the SQLite file in the state directory */
  store?: string;
  poolSize?: number;
}

export interface NewStateDir {
  store: Store;
  location: string;
  unlockKey: Buffer;
  listen: string;
  advertiseAddr: string;
  sans: string[];
  /** something `fn` created that must go if it fails */
  created(path: string): void;
  /** something else to undo if it fails */
  undo(fn: () => void): void;
}

/**
 * The common part of creating a state directory (init, full restore): validate the
 * addresses before anything is created, make the directory, a new unlock key and the store,
 * run `fn`, and if anything fails remove again whatever was created.
 */
export async function withNewStateDir<T>(o: NewStateDirOptions, fn: (d: NewStateDir) => Promise<T>): Promise<T> {
  const p = statePaths(o.stateDir);
  const listen = o.listen ?? DEFAULT_LISTEN;
  const advertiseAddr = o.advertiseAddr ?? parseHostPort(listen).host;
  parseHostPort(listen);
  const sans = o.sans ?? [];
  sansFor(advertiseAddr, sans); // validate before creating anything
  const { kind, location } = resolveStoreUrl(o.store, o.stateDir);
  const createdDir = !exists(o.stateDir);
  ensureDir(o.stateDir);
  const created: string[] = [];
  const undos: (() => void)[] = [];
  let store: Store | undefined;
  try {
    const unlockKey = newUnlockKey();
    writeFilesAtomic([{ path: p.unlockKey, data: formatUnlockKey(unlockKey) + '\n', mode: KEY_MODE }]);
    created.push(p.unlockKey);
    if (kind === 'sqlite') created.push(location, `${location}-wal`, `${location}-shm`);
    store = await openStore(kind, location, o.poolSize ? { poolSize: o.poolSize } : {});
    return await fn({ store, location, unlockKey, listen, advertiseAddr, sans, created: (f) => created.push(f), undo: (u) => undos.push(u) });
  } catch (e) {
    for (const u of undos.reverse()) u();
    await store?.close().catch(() => {});
    store = undefined;
    for (const f of created.reverse()) fs.rmSync(f, { force: true, recursive: true });
    if (createdDir) fs.rmSync(o.stateDir, { force: true, recursive: true });
    throw e;
  } finally {
    await store?.close();
  }
}

/**
 * Create a cluster and this replica's state directory. Refuses an initialized directory.
 * On failure, whatever this call created is removed again.
 */
export async function initReplica(o: InitOptions): Promise<InitOutcome> {
  const p = statePaths(o.stateDir);
  for (const f of [p.replica, p.unlockKey, path.join(o.stateDir, 'cairn.db'), p.serverKey, p.adminDir]) {
    if (exists(f)) throw new CairnError('exists', `${o.stateDir} is already initialized (${f} exists); refusing to overwrite it`);
  }
  return withNewStateDir(o, async ({ store, location, unlockKey, listen, advertiseAddr, sans, created, undo }) => {
    const existing = await store.getCluster();
    if (existing) throw new CairnError('exists', `the store ${redactUrl(location)} already holds cluster ${existing.id}`);
    // CA keys in a PKCS#11 token: made (or found) and the roots signed there before the store records them
    const inToken = o.pkcs11 ? await tokenCas(o.pkcs11, { keyType: o.keyType, label: o.pkcs11KeyLabel, clusterCert: o.ca?.cluster }) : undefined;
    if (inToken) undo(inToken.undo); // keys generated for a cluster that was not created are deleted again
    const { clusterId, tokens } = await initCluster(store, o.clusterName, unlockKey, o.keyType, inToken ?? o.ca, o.externalCas ? { externalCas: o.externalCas } : {});
    const replicaId = randomId();
    const cfg: ReplicaConfig = { version: 1, replicaId, clusterId, listen, advertiseAddr, sans, ...(o.store ? { store: o.store } : {}), ...(o.pkcs11 ? { pkcs11: pkcs11Paths(o.pkcs11) } : {}) };
    await store.upsertReplica({ id: replicaId, address: advertiseAddr, version: VERSION });
    const auth = authorityFor(store, replicaId, unlockKey, cfg.pkcs11, o.stateDir);
    await auth.load();
    created(p.adminDir);
    const files = [...(await serverIdentityFiles(auth, o.stateDir, cfg)), ...(await adminBundleFiles(auth, o.stateDir))];
    files.push(
      { path: p.adminTokens, data: JSON.stringify(tokens, null, 2) + '\n', mode: KEY_MODE },
      { path: p.replica, data: JSON.stringify(cfg, null, 2) + '\n', mode: KEY_MODE },
    );
    writeFilesAtomic(files);
    return { clusterId, replicaId, tokens, listen, stateDir: o.stateDir };
  });
}

export interface AddReplicaOptions {
  stateDir: string;
  store: string;
  unlockKeyFile?: string;
  advertiseAddr: string;
  sans?: string[];
  listen?: string;
  /** this replica reaches the PKCS#11 token holding the CA keys through this module */
  pkcs11?: Pkcs11Config;
}

/**
 * Prepare another replica of an existing cluster: it needs only the store URL, the unlock
 * key and its own addresses. Writes its state directory (server identity, admin bundle).
 */
export async function addReplica(o: AddReplicaOptions): Promise<{ replicaId: string; clusterId: string; listen: string }> {
  const p = statePaths(o.stateDir);
  for (const f of [p.replica, p.serverKey, p.adminDir]) {
    if (exists(f)) throw new CairnError('exists', `${o.stateDir} is already initialized (${f} exists); refusing to overwrite it`);
  }
  const listen = o.listen ?? DEFAULT_LISTEN;
  parseHostPort(listen);
  const sans = o.sans ?? [];
  sansFor(o.advertiseAddr, sans);
  if (!o.unlockKeyFile && !process.env.CAIRN_UNLOCK_KEY) throw new CairnError('usage', 'give the cluster unlock key with --unlock-key-file or CAIRN_UNLOCK_KEY');
  const unlockKey = loadUnlockKey(o.stateDir, o.unlockKeyFile);
  const { kind, location } = resolveStoreUrl(o.store, o.stateDir);
  if (kind === 'sqlite') throw new CairnError('usage', 'replicas share a PostgreSQL store: give --store postgres://…');
  const store = await openStore(kind, location);
  const createdDir = !exists(o.stateDir);
  try {
    const cluster = await store.getCluster();
    if (!cluster) throw new CairnError('not_initialized', `the store ${redactUrl(location)} holds no cluster: run "cairn init --store …" first`);
    const replicaId = randomId();
    const auth = authorityFor(store, replicaId, unlockKey, o.pkcs11, o.stateDir);
    await auth.load(); // proves the unlock key opens the CA keys (and this replica reaches a token holding them)
    const cfg: ReplicaConfig = { version: 1, replicaId, clusterId: cluster.id, listen, advertiseAddr: o.advertiseAddr, sans, store: o.store, ...(o.pkcs11 ? { pkcs11: pkcs11Paths(o.pkcs11) } : {}) };
    await store.upsertReplica({ id: replicaId, address: o.advertiseAddr, version: VERSION });
    ensureDir(o.stateDir);
    const files = [...(await serverIdentityFiles(auth, o.stateDir, cfg)), ...(await adminBundleFiles(auth, o.stateDir))];
    files.push(
      { path: p.replica, data: JSON.stringify(cfg, null, 2) + '\n', mode: KEY_MODE },
    );
    writeFilesAtomic(files);
    return { replicaId, clusterId: cluster.id, listen };
  } catch (e) {
    if (createdDir) fs.rmSync(o.stateDir, { force: true, recursive: true });
    throw e;
  } finally {
    await store.close();
  }
}

/**
 * Open the store of an initialized replica (its state directory's, or the one given) and load
 * its authority: the store must hold this replica's cluster, and the unlock key must open the
 * CA keys. The store is closed again if anything fails.
 */
async function openReplica(
  o: { stateDir: string; store?: string; unlockKeyFile?: string },
  cfg: ReplicaConfig,
  migrate: (kind: 'sqlite' | 'postgres', location: string) => boolean,
  poolSize?: number,
  onSwitch?: (host: string, previous: string | null) => void,
): Promise<{ store: Store; auth: Authority; kind: 'sqlite' | 'postgres'; location: string }> {
  const unlockKey = loadUnlockKey(o.stateDir, o.unlockKeyFile);
  const { kind, location } = resolveStoreUrl(o.store ?? process.env.CAIRN_STORE ?? cfg.store, o.stateDir);
  const store = await openStore(kind, location, { migrate: migrate(kind, location), onSwitch, ...(poolSize ? { poolSize } : {}) });
  try {
    const cluster = await store.getCluster();
    if (!cluster) throw new CairnError('not_initialized', 'the store holds no cluster: run "cairn init" first');
    if (cluster.id !== cfg.clusterId) throw new CairnError('wrong_cluster', `the store holds cluster ${cluster.id}, but this replica belongs to ${cfg.clusterId}`);
    const auth = authorityFor(store, cfg.replicaId, unlockKey, cfg.pkcs11, o.stateDir);
    await auth.load(); // proves the unlock key opens the CA keys
    return { store, auth, kind, location };
  } catch (e) {
    await store.close().catch(() => {});
    throw e;
  }
}

export interface AdminBundleOptions {
  stateDir: string;
  /** default: CAIRN_STORE, then the state directory's store */
  store?: string;
  unlockKeyFile?: string;
  /** CN of the admin certificate */
  name?: string;
}

/**
 * Issue a new admin client bundle into the state directory's admin/ (ca.pem, cert.pem,
 * key.pem; tokens.json is kept) with the store and the unlock key alone: no running server
 * and no admin certificate needed. The way back in when every admin certificate is revoked,
 * lost or expired. The bundle it replaces is not revoked.
 */
export async function issueAdminBundle(o: AdminBundleOptions): Promise<{ serial: string; notAfter: Date; clusterId: string; dir: string }> {
  const cfg = readReplicaConfig(o.stateDir);
  const name = o.name ?? 'admin';
  if (!/^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/.test(name)) throw new CairnError('usage', `--name "${name}" must be 1-64 letters, digits, ".", "_", "@" or "-"`);
  const { store, auth } = await openReplica(o, cfg, (kind, location) => {
    if (kind === 'sqlite' && !exists(location)) throw new CairnError('not_initialized', `no store at ${location}: is ${o.stateDir} a replica state directory?`);
    return false;
  });
  try {
    const files = await adminBundleFiles(auth, o.stateDir, name);
    writeFilesAtomic(files, { overwrite: true });
    const info = certificateInfo(leafOf(files.find((f) => f.path.endsWith('cert.pem'))!.data.toString(), 'the admin certificate'));
    return { serial: info.serialHex, notAfter: info.notAfter, clusterId: auth.clusterId, dir: statePaths(o.stateDir).adminDir };
  } finally {
    await store.close();
  }
}

export interface ServeOptions {
  stateDir: string;
  listen?: string;
  store?: string;
  unlockKeyFile?: string;
  logLevel?: string;
  logger?: Logger;
  /** require a PROXY protocol header on every connection (default: replica.json's proxyProtocol) */
  proxyProtocol?: boolean;
  /**
   * Server processes sharing the listening socket (node:cluster). 1 (the default here; the
   * CLI defaults to the number of cores) serves from this process.
   */
  workers?: number;
}

export interface RunningServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

/** What serving needs, once the store, the authority and this replica's TLS identity are ready. */
interface Prepared {
  stateDir: string;
  cfg: ReplicaConfig;
  logger: Logger;
  store: Store;
  auth: Authority;
  kind: string;
  key: string;
  certPem: string;
  proxyProtocol: boolean;
}

/**
 * Open the store and load the authority. The first process of a replica (`primary`) also
 * migrates, checks the replica is not removed, records it, and renews its server certificate;
 * a worker process only reads.
 */
async function prepare(o: ServeOptions, primary: boolean, logBase: Record<string, unknown> = {}): Promise<Prepared> {
  const cfg = readReplicaConfig(o.stateDir);
  const p = statePaths(o.stateDir);
  const logger = o.logger ?? pino({ level: o.logLevel ?? 'info', base: { replica: cfg.replicaId, ...logBase } }, pino.destination({ fd: 2, sync: false }));
  // PostgreSQL connections: 10 for a single process; with workers, 5 per worker and 4 for the first process
  const poolSize = process.env.CAIRN_WORKER_ID ? 5 : (o.workers ?? 1) > 1 ? 4 : undefined;
  const { store, auth, kind } = await openReplica(
    o,
    cfg,
    (kind, location) => primary && (kind === 'postgres' || exists(location)),
    poolSize,
    (host, previous) => (previous ? logger.warn({ host, previous }, 'the store moved to a new PostgreSQL primary') : logger.info({ host }, 'connected to the PostgreSQL primary')),
  );
  try {
    if (primary) {
      if ((await store.getReplica(cfg.replicaId))?.removed_at) {
        throw new CairnError('replica_removed', `replica ${cfg.replicaId} was removed from the cluster ("cairn replica rm"); prepare a new one with "cairn replica add"`);
      }
      await store.upsertReplica({ id: cfg.replicaId, address: cfg.advertiseAddr, version: VERSION });
      await checkReplication(store, logger);
      // renew this replica's own server certificate when a third of its life is left
      let certPem = exists(p.serverCert) ? readText(p.serverCert) : '';
      let needNew = !certPem;
      if (certPem) {
        const info = certificateInfo(leafOf(certPem, p.serverCert));
        const life = info.notAfter.getTime() - info.notBefore.getTime();
        needNew = info.notAfter.getTime() - Date.now() < life / 3 || info.authorityKeyId?.toString('hex') !== auth.clusterRootKeyId;
      }
      if (needNew) {
        writeFilesAtomic(await serverIdentityFiles(auth, o.stateDir, cfg), { overwrite: true });
        logger.info('issued a new server certificate for this replica');
      }
      // the OCSP and audit signing certificates exist before the replica answers OCSP
      for (const k of await auth.signingKeys.ensure()) logger.info({ purpose: k.purpose, serial: k.serial }, 'issued a signing certificate');
    }
    const certPem = readText(p.serverCert);
    const key = readKeyFile(p.serverKey);
    checkServerKey(key, certPem, p.serverKey, p.serverCert);
    return { stateDir: o.stateDir, cfg, logger, store, auth, kind, key, certPem, proxyProtocol: o.proxyProtocol ?? cfg.proxyProtocol === true };
  } catch (e) {
    await store.close().catch(() => {});
    throw e;
  }
}

function serverCertificateCurrent(r: Prepared, certPem: string): boolean {
  const aki = certificateInfo(leafOf(certPem, 'the server certificate')).authorityKeyId?.toString('hex');
  return aki === r.auth.cas.signer('cluster').row.key_id;
}

/**
 * The first process of a replica re-issues, when the cluster CA's signing generation changed
 * (a rotation started, completed or was aborted), its server certificate and the admin bundle
 * of its state directory (same name), so that neither stops working when the old root is
 * retired. Admin bundles kept elsewhere are re-issued with `cairn admin-bundle`.
 */
let issuing: Promise<void> | null = null;
/** The signing generation and the files' modification times last found current: nothing is parsed again until one changes. */
let checked = '';
const mtimeOf = (file: string) => fs.statSync(file, { throwIfNoEntry: false })?.mtimeMs ?? 0;
async function ensureServerCertificate(r: Prepared): Promise<void> {
  const p = statePaths(r.stateDir);
  // called every second: parsing both certificates each time was most of an idle server's CPU
  const seen = `${r.auth.cas.signer('cluster').row.key_id}|${mtimeOf(p.serverCert)}|${mtimeOf(p.adminCert)}`;
  if (seen === checked) return;
  const adminStale = exists(p.adminCert) && !serverCertificateCurrent(r, readText(p.adminCert));
  if (serverCertificateCurrent(r, readText(p.serverCert)) && !adminStale) {
    checked = seen;
    return;
  }
  issuing ??= (async () => {
    try {
      if (!serverCertificateCurrent(r, readText(p.serverCert))) {
        writeFilesAtomic(await serverIdentityFiles(r.auth, r.stateDir, r.cfg), { overwrite: true });
        r.logger.info('issued a new server certificate for this replica (the signing CA generation changed)');
      }
      if (adminStale) {
        const name = leafOf(readText(p.adminCert), p.adminCert);
        writeFilesAtomic(await adminBundleFiles(r.auth, r.stateDir, certificateInfo(name).subjectAttrs.CN ?? 'admin'), { overwrite: true });
        r.logger.info({ dir: p.adminDir }, 'issued a new admin bundle in the state directory (the signing CA generation changed)');
      }
    } finally {
      issuing = null;
    }
  })();
  await issuing;
}

/**
 * After the CA generations changed: this replica's server certificate must come from the
 * signing generation (sent with its chain), and its TLS server must accept client
 * certificates of every trusted root. The first process re-issues the certificate; a worker
 * waits until it finds the new one in the state directory (false: ask again).
 */
async function refreshServerTls(o: ServeOptions, r: Prepared, primary: boolean, setContext: (c: { key: string; cert: string; ca: string[] }) => void): Promise<boolean> {
  const p = statePaths(o.stateDir);
  if (primary) await ensureServerCertificate(r);
  const certPem = readText(p.serverCert);
  if (!serverCertificateCurrent(r, certPem)) return false; // the first process has not re-issued it yet
  const key = readKeyFile(p.serverKey);
  checkServerKey(key, certPem, p.serverKey, p.serverCert);
  setContext({ key, cert: certPem, ca: r.auth.clientTrust().map((d) => certificateToPem(d)) });
  return true;
}

/**
 * PostgreSQL: warn when commits are not synchronously replicated — a failover could then lose
 * certificates already returned to clients (docs/operations.md, "PostgreSQL high availability").
 */
async function checkReplication(store: Store, logger: Logger): Promise<void> {
  const r = await store.replication();
  if (!r) return;
  const warning = replicationWarning(r);
  if (warning) logger.warn({ replication: r }, `the store is not synchronously replicated: ${warning}`);
  else if (r.synchronousStandbys === null) logger.info({ replication: r }, 'cannot see whether a synchronous standby is connected (grant pg_read_all_stats to cairn\'s role to check)');
  else logger.info({ replication: r }, 'the store is synchronously replicated');
}

/** The HTTPS API of one process, listening; `metricsText` replaces its own /metrics answer. */
async function listen(o: ServeOptions, r: Prepared, metricsText?: () => Promise<string>, onJoinFailure?: (addr: string) => void, onConfigChange?: () => Promise<void>, primary = true) {
  const { app, metrics, recordJoinFailure } = buildServer({
    authority: r.auth,
    logger: r.logger,
    proxyProtocol: r.proxyProtocol,
    tls: { key: r.key, cert: r.certPem, ca: r.auth.clientTrust().map((d) => certificateToPem(d)) },
    metricsText,
    onJoinFailure,
    onConfigChange,
    onKeyringChange: (setContext) => refreshServerTls(o, r, primary, setContext),
  });
  const { host, port } = parseHostPort(o.listen ?? r.cfg.listen);
  await app.listen({ host, port });
  const addr = app.server.address();
  const boundPort = typeof addr === 'object' && addr ? addr.port : port;
  const url = `https://${isIP(host) === 6 ? `[${host}]` : host}:${boundPort}`;
  return { app, metrics, url, port: boundPort, recordJoinFailure };
}

/** The end of serving, once no request is answered any more: leader tasks, the store, the log. */
export async function stopReplica(r: Prepared, leader: { stop(): Promise<void> } | null | undefined): Promise<void> {
  await leader?.stop();
  await r.store.close();
  r.logger.info('cairn stopped');
  r.logger.flush?.();
}

/** Start serving. Resolves once listening; `close()` drains in-flight requests. */
export async function serveReplica(o: ServeOptions): Promise<RunningServer> {
  if ((o.workers ?? 1) > 1) {
    const { servePrimary } = await import('./workers.js');
    return servePrimary(o, prepare, startLeaderTasks, stopReplica);
  }
  const r = await prepare(o, true);
  try {
    const { app, url, port } = await listen(o, r);
    const leader = startLeaderTasks(r, { watched: true }); // this process's CA watcher reloads the keyring
    await leader.started;
    // the same RunningServer shape as servePrimary (workers.ts) returns, on purpose: one process or several
    r.logger.info({ url, store: r.kind, cluster: r.cfg.clusterId, proxyProtocol: r.proxyProtocol }, 'cairn serving');
    let closing: Promise<void> | null = null;
    return {
      url,
      port,
      close() {
        closing ??= (async () => {
          await app.close();
          await stopReplica(r, leader);
        })();
        return closing;
      },
    };
  } catch (e) {
    await r.store.close().catch(() => {});
    throw e;
  }
}

/**
 * What runs once per replica, not once per worker process: CRL publication under the lease,
 * the heartbeat, and the configuration refresh the CRL settings come from.
 */
/**
 * The tasks one process of a replica runs: CRL publication, settings refresh, heartbeat, the
 * rotation driver. `watched`: a CA watcher in this process already reloads the keyring every
 * second (serve with one process); the first process of `serve --workers` has none.
 */
function startLeaderTasks(r: Prepared, o: { watched?: boolean } = {}): { started: Promise<void>; stop(): Promise<void> } {
  const { auth, store, logger, cfg } = r;
  const crl = new CrlPublisher(auth, logger, () => ({ leaseMs: auth.config.crlLeaseMs, cycleMs: auth.config.crlCycleMs, validityMs: auth.config.crlValidityMs }));
  // the first CRL cycle (a new cluster's first CRLs) is over before the replica says it serves
  const started = crl.start();
  // the rotation driver: whoever holds the `rotation` lease asks the next batch of nodes to renew, and completes a converged rotation
  let driving = false;
  let holding = false;
  const holdsLease = async () => {
    const held = (await store.acquireLease(ROTATION_LEASE, cfg.replicaId, 5 * DRIVE_INTERVAL_MS)) !== null;
    if (held !== holding) logger.info({ replica: cfg.replicaId }, held ? 'this replica drives the rotation (holds the rotation lease)' : 'the rotation lease is held elsewhere');
    holding = held;
    return held;
  };
  const drive = async () => {
    if (driving) return;
    driving = true;
    try {
      if (!o.watched) await auth.reloadKeyring();
      await ensureServerCertificate(r);
      if (auth.cas.rotations.some((x) => x.state === 'running')) {
        await driveRotations(auth, holdsLease);
      }
    } catch (err) {
      logger.warn({ err }, 'rotation driver failed');
    } finally {
      driving = false;
    }
  };
  // sealing the audit log (and keeping the signing certificates fresh) under its own lease
  const sealer = new AuditSealer(auth, logger);
  sealer.start();
  const timers = [
    setInterval(() => auth.refreshConfig().catch((err) => logger.warn({ err }, 'config refresh failed')), 2000),
    setInterval(() => store.heartbeat(cfg.replicaId).catch((err) => logger.warn({ err }, 'heartbeat failed')), 5000),
    setInterval(() => void drive(), DRIVE_INTERVAL_MS),
  ];
  timers.forEach((t) => t.unref());
  return {
    started,
    async stop() {
      timers.forEach(clearInterval);
      await sealer.stop();
      await crl.stop();
    },
  };
}

/** A worker process of `serve --workers N`: the API only; the primary runs the leader tasks. */
export async function serveWorker(
  o: ServeOptions,
  send: (m: { cairn: 'listening'; url: string; port: number; kind: string; proxyProtocol: boolean }) => void,
  metricsText: () => Promise<string>,
  onJoinFailure: (addr: string) => void,
  onConfigChange: () => Promise<void>,
): Promise<{ close(): Promise<void>; registry: import('prom-client').Registry; recordJoinFailure(addr: string): void; refreshConfig(): Promise<unknown> }> {
  const r = await prepare(o, false, { worker: process.env.CAIRN_WORKER_ID });
  try {
    const { app, metrics, url, port, recordJoinFailure } = await listen(o, r, metricsText, onJoinFailure, onConfigChange, false);
    const refresh = setInterval(() => r.auth.refreshConfig().catch((err) => r.logger.warn({ err }, 'config refresh failed')), 2000);
    refresh.unref();
    send({ cairn: 'listening', url, port, kind: r.kind, proxyProtocol: r.proxyProtocol });
    return {
      registry: metrics.registry,
      recordJoinFailure,
      // a change of settings or of the CA generations (rotation) is broadcast to every worker this way
      refreshConfig: async () => {
        await r.auth.refreshConfig();
        await r.auth.reloadKeyring();
      },
      async close() {
        clearInterval(refresh);
        await app.close();
        await r.store.close();
        r.logger.flush?.();
      },
    };
  } catch (e) {
    await r.store.close().catch(() => {});
    throw e;
  }
}

export type { Prepared };
