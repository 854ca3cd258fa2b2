/**
 * A backup's content read from a store (one consistent snapshot), and restored into one:
 * a full restore into an empty store, or a root-CA-only restore that makes this controller
 * share CA keys with the one the backup came from.
 */
import { certificateFromPem, rootDigest } from '../pki/index.js';
import type { CaTable, Store } from '../store/store.js';
import { CairnError } from '../util/errors.js';
import { VERSION } from '../version.js';
import { seal, unseal } from './seal.js';
import { moveToOwnBlock } from './serials.js';
import { mintJoinTokens } from './tokens.js';
import { BACKUP_FORMAT, BACKUP_VERSION, BackupCa, BackupContent, BackupKind, BackupManifest, EXCLUDED_TABLES } from './backup-archive.js';
import { checkStoreIntegrity } from './integrity.js';

type Row = Record<string, unknown>;

// ---------------------------------------------------------------- reading the store

/** Tables of the store a full backup holds (every table cairn's migrations made, less the excluded ones). */
async function backupTables(store: Store): Promise<string[]> {
  return (await store.tableNames()).filter((t) => !EXCLUDED_TABLES.includes(t));
}

/** Read what a backup holds, from one consistent snapshot of the store. CA keys are unsealed. */
export async function readSnapshot(store: Store, unlockKey: Buffer, kind: BackupKind): Promise<BackupContent> {
  const tableNames = kind === 'full' ? await backupTables(store) : [];
  return store.snapshot(async (tx) => {
    const cluster = await tx.getCluster();
    if (!cluster) throw new CairnError('not_initialized', 'the store holds no cluster: nothing to back up');
    const rows = await tx.listCas();
    const cas: BackupCa[] = rows.map((r) => {
      const { key_sealed, ...row } = r;
      return { row, keyPem: key_sealed ? unseal(unlockKey, key_sealed, r.id).toString() : null };
    });
    const tables: Record<string, Row[]> = {};
    for (const t of tableNames) {
      tables[t] = await tx.dumpTable(t);
    }
    const manifest: BackupManifest = {
      format: BACKUP_FORMAT,
      version: BACKUP_VERSION,
      kind,
      clusterId: cluster.id,
      clusterName: cluster.name,
      createdAt: new Date().toISOString(),
      cairnVersion: VERSION,
      migrations: await tx.appliedMigrations(),
      serialSequence: await tx.peekSequence('serial'),
      cas: cas.map((c) => c.row.id),
      tables: Object.fromEntries(Object.entries(tables).map(([k, v]) => [k, v.length])),
      files: {},
    };
    return { manifest, cas, tables };
  });
}

// ---------------------------------------------------------------- restoring

function caRows(content: BackupContent, unlockKey: Buffer): CaTable[] {
  return content.cas.map((c) => ({ ...c.row, key_sealed: c.keyPem ? seal(unlockKey, c.keyPem, c.row.id) : null }) as CaTable);
}

/** Refuse a backup whose schema is newer than this cairn's. */
async function checkMigrations(content: BackupContent, store: Store): Promise<void> {
  const mine = new Set(await store.appliedMigrations());
  const unknown = content.manifest.migrations.filter((m) => !mine.has(m));
  if (unknown.length) {
    throw new CairnError('unsupported_backup', `the backup was made by a newer cairn (schema ${unknown.join(', ')} is unknown here): restore it with cairn ${content.manifest.cairnVersion} or later`);
  }
}

/**
 * Full restore into an empty store, inside a transaction (`tx`): every table of the backup, the CA rows
 * with their keys sealed under this store's unlock key; then the integrity check. Throws
 * (and so rolls back) on any problem.
 */
export async function restoreFullIn(tx: Store, content: BackupContent, unlockKey: Buffer): Promise<void> {
  if (content.manifest.kind !== 'full') throw new CairnError('usage', 'this is a root-CA-only backup: restore it with --root-ca-only into an initialized controller');
  await checkMigrations(content, tx);
  for (const t of Object.keys(content.tables)) {
    const n = await tx.countRows(t);
    if (n === null) throw new CairnError('unsupported_backup', `the backup holds table ${t}, which this cairn's store does not have`);
    if (n > 0) throw new CairnError('store_not_empty', `the store is not empty (table ${t} has rows): a full restore needs an empty store`);
  }
  const existing = await tx.getCluster();
  if (existing) throw new CairnError('store_not_empty', `the store already holds cluster ${existing.id}: a full restore needs an empty store`);
  for (const [t, rows] of Object.entries(content.tables)) await tx.insertRows(t, rows);
  await tx.insertRows('cas', caRows(content, unlockKey));
  const problems = await checkStoreIntegrity(tx, unlockKey);
  if (problems.length) throw new CairnError('corrupt_backup', `the restored store fails the integrity check: ${problems.slice(0, 5).join('; ')}`);
}

export interface RootCaRestoreResult {
  clusterId: string;
  previousClusterId: string;
  tokens: Record<string, string>;
  /** certificates of the replaced CAs, now recorded as revoked (superseded) */
  superseded: number;
}

/**
 * Root-CA-only restore into an initialized store, inside a transaction (`tx`): the CA rows are replaced by
 * the backup's (keys sealed under this store's unlock key), the cluster takes the backup's
 * cluster ID (node certificates carry it), certificates of the replaced CAs are recorded as
 * revoked (superseded), their CRLs are dropped, the serial sequence moves to a random block
 * far from the other controller's, and both join tokens get new secrets (their digest
 * changed with the root).
 */
/**
 * A backup of this cluster's CAs taken before one of its root CA rotations completed holds the
 * retired root: restoring it would bring that root back (and every node would have to join
 * again). Refused, unless the operator insists (--force).
 */
export async function refuseStaleBackup(store: Store, content: BackupContent): Promise<void> {
  const cluster = await store.getCluster();
  const taken = Date.parse(content.manifest.createdAt);
  const rotatedSince = (await store.listRotations()).find((r) => r.state === 'completed' && Number(r.finished_at) > taken);
  if (cluster && cluster.id === content.manifest.clusterId && rotatedSince) {
    throw new CairnError(
      'stale_backup',
      `the backup was taken on ${content.manifest.createdAt}, before the ${rotatedSince.ca} root CA rotation that completed on ${new Date(Number(rotatedSince.finished_at)).toISOString()}: ` +
        'it holds the retired root, and restoring it would bring that root back (every node would have to join again); give --force to restore it anyway',
    );
  }
}

export async function restoreRootCaIn(tx: Store, content: BackupContent, unlockKey: Buffer, o: { force?: boolean } = {}): Promise<RootCaRestoreResult> {
  const cluster = await tx.getCluster();
  if (!o.force) await refuseStaleBackup(tx, content);
  if (!cluster) throw new CairnError('not_initialized', 'the store holds no cluster: run "cairn init" first, or restore a full backup');
  const previous = await tx.listCas();
  const rows = caRows(content, unlockKey);
  const newKeyIds = new Set(rows.map((r) => r.key_id));
  await tx.replaceCas(rows);
  if (cluster.id !== content.manifest.clusterId) await tx.setClusterId(cluster.id, content.manifest.clusterId);
  const oldKeyIds = previous.map((p) => p.key_id).filter((k) => !newKeyIds.has(k));
  const superseded = await tx.revokeIssuedBy(oldKeyIds, 'superseded');
  // CRLs signed by the replaced keys are worthless; the CRL leader publishes new ones
  await tx.deleteCrls();
  await moveToOwnBlock(tx, content.manifest.serialSequence);
  const rootDer = certificateFromPem(rows.filter((r) => r.name === 'cluster' && r.status === 'active').at(-1)!.cert_pem, 'the cluster CA');
  const digest = rootDigest(rootDer);
  const tokens = (await mintJoinTokens(tx, digest)) as Record<string, string>;
  await tx.audit('cli', 'ca.restore', { from: content.manifest.clusterId, previousCluster: cluster.id, cas: content.manifest.cas, superseded });
  return { clusterId: content.manifest.clusterId, previousClusterId: cluster.id, tokens, superseded };
}

