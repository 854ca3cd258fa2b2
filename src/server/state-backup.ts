/**
 * Backup, restore and clone preparation for a replica's state directory: where the store
 * is, the unlock key, and the files a restore rewrites. The store-level work is in
 * ../authority/backup.ts and ../authority/clone.ts.
 */
import { describeKeyLocation, parseKeyLocation } from '../authority/ca-keys.js';
import {  } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { BackupManifest, encodeArchive } from '../authority/backup-archive.js';
import { encryptBackup, openBackup } from '../authority/backup-crypto.js';
import { readSnapshot, refuseStaleBackup, restoreFullIn, restoreRootCaIn } from '../authority/backup-restore.js';
import { pkcs12EntriesFor } from '../authority/clone.js';
import { signingKeyPkcs12Entries } from '../authority/signing-keys.js';
import { certificatesFromPem, certificateInfo, randomId } from '../pki/index.js';
import { buildPkcs12, describePkcs12Entry, Pkcs12CertDescription } from '../pki/pkcs12.js';
import { openStore, redactUrl, resolveStoreUrl, type Store } from '../store/store.js';
import { CairnError } from '../util/errors.js';
import { exists, KEY_MODE, stageFiles, StagedFiles } from '../util/files.js';
import { VERSION } from '../version.js';
import { adminBundleFiles, authorityFor, pkcs11Paths, serverIdentityFiles, withNewStateDir } from './bootstrap.js';
import { isPkcs11Ref, type Pkcs11Config } from '../authority/pkcs11.js';
import { loadUnlockKey, parseHostPort, ReplicaConfig, readReplicaConfig, statePaths } from './state-dir.js';

export interface StateAccess {
  stateDir: string;
  /** store URL (default: CAIRN_STORE, then the state directory's) */
  store?: string;
  unlockKeyFile?: string;
}

/** Open the store of an initialized state directory, checking it holds this replica's cluster. */
async function openStateStore(o: StateAccess, migrate: boolean) {
  const cfg = readReplicaConfig(o.stateDir);
  const unlockKey = loadUnlockKey(o.stateDir, o.unlockKeyFile);
  const url = o.store ?? process.env.CAIRN_STORE ?? cfg.store;
  const { kind, location } = resolveStoreUrl(url, o.stateDir);
  if (kind === 'sqlite' && !exists(location)) throw new CairnError('store_unavailable', `the SQLite store ${location} does not exist`);
  const store = await openStore(kind, location, { migrate, poolSize: 2 });
  return { cfg, unlockKey, store, kind, location };
}

async function requireCluster(store: Store, cfg: ReplicaConfig, location: string) {
  const cluster = await store.getCluster();
  if (!cluster) throw new CairnError('not_initialized', `the store ${redactUrl(location)} holds no cluster`);
  if (cluster.id !== cfg.clusterId) throw new CairnError('wrong_cluster', `the store holds cluster ${cluster.id}, but this replica belongs to ${cfg.clusterId}`);
  return cluster;
}

// ---------------------------------------------------------------- backup

export interface BackupResult {
  data: Buffer;
  manifest: BackupManifest;
  /** CAs whose keys are not in the backup because the store does not hold them: where each is */
  keysElsewhere: string[];
}

/** Read one consistent snapshot of the store (the server may keep running) and encrypt it. */
export async function backupStateDir(o: StateAccess & { rootCaOnly: boolean; passphrase: string }): Promise<BackupResult> {
  const { cfg, unlockKey, store, location } = await openStateStore(o, false);
  try {
    await requireCluster(store, cfg, location);
    const content = await readSnapshot(store, unlockKey, o.rootCaOnly ? 'root-ca-only' : 'full');
    const data = await encryptBackup(await encodeArchive(content), o.passphrase);
    // a key in a PKCS#11 token stays there: the backup holds its certificate and where it is
    const keysElsewhere = content.cas.filter((c) => !c.keyPem && c.row.key_location && c.row.status === 'active').map((c) => `${c.row.id}: ${describeKeyLocation({ ...c.row, key_sealed: null })}`);
    return { data, manifest: content.manifest, keysElsewhere };
  } finally {
    await store.close();
  }
}

// ---------------------------------------------------------------- restore

/** Whether a cairn server answers on this replica's listen address. */
function serverAnswers(listen: string): Promise<boolean> {
  const { host, port } = parseHostPort(listen);
  const h = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return new Promise((resolve) => {
    const req = https.request({ host: h, port, path: '/healthz', method: 'GET', rejectUnauthorized: false, timeout: 1500, agent: false }, (res) => {
      res.resume();
      resolve(true);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(false));
    req.end();
  });
}

export interface RestoreOptions extends StateAccess {
  data: Buffer;
  passphrase: string;
  rootCaOnly: boolean;
  /** root-CA-only: replace the CAs even though nodes joined under the current ones */
  force?: boolean;
  /** full restore into a new state directory: like init */
  listen?: string;
  advertiseAddr?: string;
  sans?: string[];
  /** the PKCS#11 token this replica reaches, when the backup's CA keys are in one (else replica.json's) */
  pkcs11?: Pkcs11Config;
}

/**
 * The token a restore needs: when the backup's active CA rows point into a PKCS#11 token, the
 * one given (or this replica's); refused with one line when none is. The keys are then opened
 * (Authority.load) before anything is committed: a token that is missing, refuses the PIN or
 * lacks the key stops the restore with that error, and nothing changes.
 */
function tokenFor(content: Awaited<ReturnType<typeof openBackup>>, given: Pkcs11Config | undefined): Pkcs11Config | undefined {
  const inToken = content.cas.filter((c) => c.row.status === 'active').map((c) => ({ id: c.row.id, loc: parseKeyLocation(c.row) })).filter((c) => isPkcs11Ref(c.loc));
  if (inToken.length && !given) {
    const loc = inToken[0].loc as { token: string; label: string };
    throw new CairnError(
      'hsm_token_missing',
      `the key of CA ${inToken[0].id} in this backup is in the PKCS#11 token "${loc.token}" (key "${loc.label}"): give --pkcs11-module, --pkcs11-token and --pkcs11-pin-file so that this replica reaches it`,
    );
  }
  return inToken.length ? given : undefined;
}

export interface RestoreResult {
  kind: 'root-ca-only' | 'full';
  clusterId: string;
  stateDir: string;
  /** root-CA-only: the cluster ID the controller had before */
  previousClusterId?: string;
  /** new join tokens (root-CA-only restore) */
  tokens?: Record<string, string>;
  /** certificates of the replaced CAs recorded as revoked */
  superseded?: number;
  /** full restore: whether a new state directory was created (with new server and admin certificates) */
  created?: boolean;
  replicaId: string;
  /** full restore into an existing state directory: whether its admin certificate is among the restored records */
  adminCertificateRestored?: boolean;
  manifest: BackupManifest;
}

/**
 * Restore a backup. Everything is checked (passphrase, archive, CA keys) before anything is
 * touched; the store changes in one transaction; files are staged first and put in place
 * only after the transaction commits.
 */
export async function restoreStateDir(o: RestoreOptions): Promise<RestoreResult> {
  // the target's cheap checks come before the passphrase's (scrypt takes a second)
  if (o.rootCaOnly) await checkRootCaTarget(o.stateDir);
  const content = await openBackup(o.data, o.passphrase);
  if (o.rootCaOnly) return restoreRootCa(o, content);
  if (content.manifest.kind !== 'full') {
    throw new CairnError('usage', 'this is a root-CA-only backup: restore it with --root-ca-only into an initialized controller');
  }
  if (exists(statePaths(o.stateDir).replica)) return restoreFullExisting(o, content);
  return restoreFullNew(o, content);
}

/** restore --root-ca-only goes into an initialized controller whose server is stopped. */
async function checkRootCaTarget(stateDir: string): Promise<void> {
  if (!exists(statePaths(stateDir).replica)) throw new CairnError('not_initialized', `${stateDir} is not an initialized controller: restore --root-ca-only replaces the CAs of one (run "cairn init" first)`);
  const cfg = readReplicaConfig(stateDir);
  if (await serverAnswers(cfg.listen)) {
    throw new CairnError('server_running', `the cairn server of ${stateDir} is running on ${cfg.listen}: stop it before restoring (it loads the CAs when it starts), then start it again`);
  }
}

async function restoreRootCa(o: RestoreOptions, content: Awaited<ReturnType<typeof openBackup>>): Promise<RestoreResult> {
  const p = statePaths(o.stateDir);
  await checkRootCaTarget(o.stateDir);
  const { cfg, unlockKey, store, location } = await openStateStore(o, true);
  try {
    await requireCluster(store, cfg, location);
    const others = (await store.listReplicas()).filter((r) => r.id !== cfg.replicaId && Date.now() - Number(r.heartbeat_at) < 15_000);
    if (others.length) {
      throw new CairnError('server_running', `replica ${others[0].id} (${others[0].address}) of this cluster is running: stop every replica sharing the store before restoring (a stopped replica's last heartbeat ages out in 15 s)`);
    }
    if (!o.force) await refuseStaleBackup(store, content);
    const pkcs11 = tokenFor(content, o.pkcs11 ?? cfg.pkcs11);
    const active = (await store.listNodes()).filter((n) => n.status === 'active').length;
    if (active && !o.force) {
      throw new CairnError('has_nodes', `${active} node(s) joined this controller under its current CAs; their certificates would no longer verify: give --force to replace the CAs anyway (those nodes must join again)`);
    }
    const stage: { files: StagedFiles | null } = { files: null };
    let result: Awaited<ReturnType<typeof restoreRootCaIn>>;
    try {
      result = await store.transaction(async (tx) => {
        const r = await restoreRootCaIn(tx, content, unlockKey, { force: o.force });
        const auth = authorityFor(tx, cfg.replicaId, unlockKey, pkcs11, o.stateDir);
        await auth.load();
        const newCfg: ReplicaConfig = { ...cfg, clusterId: r.clusterId, ...(pkcs11 ? { pkcs11: pkcs11Paths(pkcs11) } : {}) };
        const files = [...(await serverIdentityFiles(auth, o.stateDir, newCfg)), ...(await adminBundleFiles(auth, o.stateDir))];
        files.push(
          { path: p.adminTokens, data: JSON.stringify(r.tokens, null, 2) + '\n', mode: KEY_MODE },
          { path: p.replica, data: JSON.stringify(newCfg, null, 2) + '\n', mode: KEY_MODE },
        );
        stage.files = stageFiles(files, { overwrite: true });
        return r;
      });
    } catch (e) {
      stage.files?.abort();
      throw e;
    }
    stage.files!.commit();
    return {
      kind: 'root-ca-only',
      clusterId: result.clusterId,
      previousClusterId: result.previousClusterId,
      tokens: result.tokens,
      superseded: result.superseded,
      stateDir: o.stateDir,
      replicaId: cfg.replicaId,
      manifest: content.manifest,
    };
  } finally {
    await store.close();
  }
}

/** Full restore into the (empty) store of an existing state directory: its files stay as they are. */
async function restoreFullExisting(o: RestoreOptions, content: Awaited<ReturnType<typeof openBackup>>): Promise<RestoreResult> {
  const cfg0 = readReplicaConfig(o.stateDir);
  if (cfg0.clusterId !== content.manifest.clusterId) {
    throw new CairnError('wrong_cluster', `the backup is of cluster ${content.manifest.clusterId}, but ${o.stateDir} belongs to ${cfg0.clusterId}: restore into a new state directory instead`);
  }
  const unlockKey = loadUnlockKey(o.stateDir, o.unlockKeyFile);
  const { kind, location } = resolveStoreUrl(o.store ?? process.env.CAIRN_STORE ?? cfg0.store, o.stateDir);
  const createdFile = kind === 'sqlite' && !exists(location);
  let store: Store | undefined;
  try {
    store = await openStore(kind, location, { poolSize: 2 });
    const s = store;
    const pkcs11 = tokenFor(content, o.pkcs11 ?? cfg0.pkcs11);
    await s.transaction(async (tx) => {
      await restoreFullIn(tx, content, unlockKey);
      if (pkcs11) await authorityFor(tx, cfg0.replicaId, unlockKey, pkcs11, o.stateDir).load(); // the token's keys are reachable
    });
    if (o.pkcs11) {
      const p0 = statePaths(o.stateDir);
      const staged = stageFiles([{ path: p0.replica, data: JSON.stringify({ ...cfg0, pkcs11: pkcs11Paths(o.pkcs11) }, null, 2) + '\n', mode: KEY_MODE }], { overwrite: true });
      staged.commit();
    }
    const admin = await s.findCertificates({ kind: 'admin' });
    const p = statePaths(o.stateDir);
    let adminCertificateRestored = false;
    if (exists(p.adminCert)) {
      const serial = certificateInfo(certificatesFromPem(fs.readFileSync(p.adminCert, 'utf8'), p.adminCert)[0]).serialHex;
      adminCertificateRestored = admin.some((a) => a.serial === serial);
    }
    return { kind: 'full', clusterId: content.manifest.clusterId, stateDir: o.stateDir, created: false, replicaId: cfg0.replicaId, adminCertificateRestored, manifest: content.manifest };
  } catch (e) {
    await store?.close().catch(() => {});
    store = undefined;
    if (createdFile) for (const f of [location, `${location}-wal`, `${location}-shm`]) fs.rmSync(f, { force: true });
    throw e;
  } finally {
    await store?.close();
  }
}

/** Full restore into a new state directory: like init, but the cluster is the backup's. */
async function restoreFullNew(o: RestoreOptions, content: Awaited<ReturnType<typeof openBackup>>): Promise<RestoreResult> {
  const p = statePaths(o.stateDir);
  for (const f of [p.unlockKey, path.join(o.stateDir, 'cairn.db'), p.serverKey, p.adminDir]) {
    if (exists(f)) throw new CairnError('exists', `${o.stateDir} is not empty (${f} exists): a full restore creates a new state directory, or fills the empty store of an initialized one`);
  }
  const storeUrl = o.store ?? process.env.CAIRN_STORE;
  const pkcs11 = tokenFor(content, o.pkcs11);
  return withNewStateDir({ ...o, store: storeUrl, poolSize: 2 }, async ({ store: s, unlockKey, listen, advertiseAddr, sans, created }) => {
    const stage: { files: StagedFiles | null } = { files: null };
    try {
      const replicaId = randomId();
      const cfg: ReplicaConfig = { version: 1, replicaId, clusterId: content.manifest.clusterId, listen, advertiseAddr, sans, ...(storeUrl ? { store: storeUrl } : {}), ...(pkcs11 ? { pkcs11: pkcs11Paths(pkcs11) } : {}) };
      created(p.adminDir);
      await s.transaction(async (ts) => {
        await restoreFullIn(ts, content, unlockKey);
        await ts.upsertReplica({ id: replicaId, address: advertiseAddr, version: VERSION });
        const auth = authorityFor(ts, replicaId, unlockKey, pkcs11, o.stateDir);
        await auth.load();
        const files = [...(await serverIdentityFiles(auth, o.stateDir, cfg)), ...(await adminBundleFiles(auth, o.stateDir))];
        await ts.audit('cli', 'store.restore', { from: content.manifest.createdAt, cluster: content.manifest.clusterId, replica: replicaId });
        files.push({ path: p.replica, data: JSON.stringify(cfg, null, 2) + '\n', mode: KEY_MODE });
        stage.files = stageFiles(files, { overwrite: true });
      });
      stage.files!.commit();
      return { kind: 'full', clusterId: content.manifest.clusterId, stateDir: o.stateDir, created: true, replicaId, manifest: content.manifest };
    } catch (e) {
      stage.files?.abort();
      throw e;
    }
  });
}

// ---------------------------------------------------------------- PKCS#12 export for a clone

export interface ClonePrepareResult {
  der: Buffer;
  entries: Pkcs12CertDescription[];
}

/** Every CA certificate of the cluster with its key, as one PKCS#12 file. */
export async function clonePrepare(o: StateAccess & { password: string }): Promise<ClonePrepareResult> {
  const { cfg, unlockKey, store, location } = await openStateStore(o, false);
  try {
    await requireCluster(store, cfg, location);
    const rows = await store.listCas();
    const held = rows.find((r) => r.status === 'active' && !r.key_sealed && r.key_location);
    if (held) {
      throw new CairnError(
        'key_in_hsm',
        `the key of CA ${held.id} is ${describeKeyLocation(held)}: it cannot be exported for a clone; another replica reaches the same token with "cairn replica add --pkcs11-module … --pkcs11-token … --pkcs11-pin-file …"`,
      );
    }
    // the CA signing certificates, then the OCSP and audit signing ones (Dogtag's nicknames)
    const inputs = [...pkcs12EntriesFor(rows, unlockKey), ...signingKeyPkcs12Entries(rows, await store.listSigningKeys(), unlockKey)];
    const der = await buildPkcs12(inputs, o.password);
    const entries = inputs.map((e) => describePkcs12Entry({ certDer: e.certDer, friendlyName: e.friendlyName, localKeyId: null, key: e.key ?? null }));
    return { der, entries };
  } finally {
    await store.close();
  }
}
