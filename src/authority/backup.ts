/**
 * Backups of a cluster's store, and restoring them.
 *
 * A backup is a tar archive encrypted with a passphrase in the age format (scrypt
 * recipient: `age -d` opens it). Its members:
 *
 *   cairn-backup.json     the manifest: format "cairn-backup", version, kind (root-ca-only or
 *                         full), cluster, creation time, schema migrations, and the SHA-256 of
 *                         every other member
 *   ca/<id>.json          one CA row of the store (every column but the sealed key)
 *   ca/<id>.crt           its certificate (PEM)
 *   ca/<id>.key           its private key (PKCS#8 PEM, unsealed: the archive's encryption protects it)
 *   store/<table>.jsonl   full backups only: every row of every other table, one JSON object a line
 *
 * Per-replica and transient tables (replicas, leases) are left out. Everything is read in one
 * read transaction, so a backup taken while replicas keep issuing is a consistent snapshot.
 */
import { createCipheriv, createDecipheriv, createHash, KeyObject, randomBytes, scryptSync } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Identity, Recipient, Stanza } from 'age-encryption';
import {
  certificateFromPem, certificateInfo, ID_RE, keysMatch, parseSerial, PkiError, privateKeyFromPem, rootDigest, sequenceOf,
} from '../pki/index.js';
import type { CaTable, Store } from '../store/store.js';
import { CairnError } from '../util/errors.js';
import { VERSION } from '../version.js';
import { seal, unseal } from './seal.js';
import { moveToOwnBlock } from './serials.js';
import { mintJoinTokens, ROLES } from './tokens.js';

// age-encryption and tar-stream are loaded when a backup is made or read, not at every start
const loadAge = () => import('age-encryption');
const loadTar = async () => (await import('tar-stream')).default;

export const BACKUP_FORMAT = 'cairn-backup';
export const BACKUP_VERSION = 1;
export const MANIFEST_NAME = 'cairn-backup.json';
export type BackupKind = 'root-ca-only' | 'full';

/**
 * Tables not dumped as they are: per-replica state and leader leases (rebuilt at start), and
 * the CAs (written as ca/ members, their keys unsealed).
 */
export const EXCLUDED_TABLES = ['replicas', 'leases', 'cas'];

export interface BackupManifest {
  format: typeof BACKUP_FORMAT;
  version: typeof BACKUP_VERSION;
  kind: BackupKind;
  clusterId: string;
  clusterName: string;
  createdAt: string;
  cairnVersion: string;
  /** schema migrations applied to the store the backup was taken from */
  migrations: string[];
  /** the next free serial sequence number at the snapshot */
  serialSequence: number;
  /** CA row IDs, in generation order */
  cas: string[];
  /** table name -> row count (full backups) */
  tables: Record<string, number>;
  /** member name -> SHA-256 (hex) */
  files: Record<string, string>;
}

export interface BackupCa {
  /** the row as stored, without the sealed key */
  row: Omit<CaTable, 'key_sealed'> & Record<string, unknown>;
  keyPem: string | null;
}

export interface BackupContent {
  manifest: BackupManifest;
  cas: BackupCa[];
  /** full backups: table -> rows */
  tables: Record<string, Record<string, unknown>[]>;
}

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

// ---------------------------------------------------------------- the archive

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** The plaintext tar archive of a backup. */
export async function encodeArchive(content: BackupContent): Promise<Buffer> {
  const members: { name: string; data: Buffer; mode: number }[] = [];
  for (const c of content.cas) {
    members.push({ name: `ca/${c.row.id}.json`, data: Buffer.from(JSON.stringify({ ...c.row, has_key: c.keyPem !== null }, null, 2) + '\n'), mode: 0o644 });
    members.push({ name: `ca/${c.row.id}.crt`, data: Buffer.from(c.row.cert_pem), mode: 0o644 });
    if (c.keyPem) members.push({ name: `ca/${c.row.id}.key`, data: Buffer.from(c.keyPem), mode: 0o600 });
  }
  for (const [t, rows] of Object.entries(content.tables)) {
    members.push({ name: `store/${t}.jsonl`, data: Buffer.from(rows.map((r) => JSON.stringify(r) + '\n').join('')), mode: 0o600 });
  }
  const manifest: BackupManifest = { ...content.manifest, files: Object.fromEntries(members.map((m) => [m.name, sha256(m.data)])) };
  const tar = await loadTar();
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (d: Buffer) => chunks.push(d));
  const done = new Promise<void>((resolve, reject) => {
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  const mtime = new Date(manifest.createdAt);
  const all = [{ name: MANIFEST_NAME, data: Buffer.from(JSON.stringify(manifest, null, 2) + '\n'), mode: 0o644 }, ...members];
  for (const m of all) {
    await new Promise<void>((resolve, reject) => pack.entry({ name: m.name, size: m.data.length, mode: m.mode, mtime, uname: 'cairn', gname: 'cairn' }, m.data, (err) => (err ? reject(err) : resolve())));
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

const notABackup = (why: string) => new CairnError('not_a_backup', `not a cairn backup: ${why}`);

/** Members of a tar archive (regular files only). */
async function untar(data: Buffer): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  const tar = await loadTar();
  const ex = tar.extract();
  await new Promise<void>((resolve, reject) => {
    ex.on('entry', (header, stream, next) => {
      const chunks: Buffer[] = [];
      stream.on('data', (d: Buffer) => chunks.push(d));
      stream.on('end', () => {
        if (header.type === 'file') {
          if (files.has(header.name)) return reject(notABackup(`the archive holds ${header.name} twice`));
          files.set(header.name, Buffer.concat(chunks));
        }
        next();
      });
      stream.on('error', reject);
    });
    ex.on('finish', resolve);
    ex.on('error', () => reject(notABackup('the decrypted content is not a tar archive')));
    Readable.from([data]).pipe(ex);
  });
  if (files.size === 0) throw notABackup('the decrypted content is not a tar archive');
  return files;
}

function parseJson(b: Buffer, what: string): unknown {
  try {
    return JSON.parse(b.toString('utf8'));
  } catch {
    throw notABackup(`${what} is not valid JSON`);
  }
}

function checkManifest(m: unknown): BackupManifest {
  const o = m as Partial<BackupManifest> | null;
  if (!o || typeof o !== 'object' || o.format !== BACKUP_FORMAT) throw notABackup(`${MANIFEST_NAME} does not name the format "${BACKUP_FORMAT}"`);
  if (o.version !== BACKUP_VERSION) throw new CairnError('unsupported_backup', `this backup has format version ${String(o.version)}; this cairn reads version ${BACKUP_VERSION}`);
  if (o.kind !== 'root-ca-only' && o.kind !== 'full') throw notABackup(`unknown backup kind "${String(o.kind)}"`);
  if (typeof o.clusterId !== 'string' || !ID_RE.test(o.clusterId)) throw notABackup('the manifest has no valid cluster ID');
  const okList = (v: unknown) => Array.isArray(v) && v.every((x) => typeof x === 'string');
  if (typeof o.clusterName !== 'string' || !okList(o.migrations) || !okList(o.cas) || typeof o.serialSequence !== 'number') throw notABackup('the manifest is incomplete');
  if (!o.files || typeof o.files !== 'object' || !o.tables || typeof o.tables !== 'object') throw notABackup('the manifest is incomplete');
  return o as BackupManifest;
}

/**
 * Parse and check a decrypted archive: the manifest, the digest of every member, no member
 * missing or extra, and every CA certificate with its key. Touches nothing.
 */
export async function decodeArchive(data: Buffer): Promise<BackupContent> {
  const files = await untar(data);
  const mb = files.get(MANIFEST_NAME);
  if (!mb) throw notABackup(`the archive has no ${MANIFEST_NAME}`);
  const manifest = checkManifest(parseJson(mb, MANIFEST_NAME));
  for (const [name, digest] of Object.entries(manifest.files)) {
    const f = files.get(name);
    if (!f) throw new CairnError('corrupt_backup', `the backup is incomplete: ${name} is missing`);
    if (sha256(f) !== digest) throw new CairnError('corrupt_backup', `the backup is damaged: ${name} does not match its digest`);
  }
  for (const name of files.keys()) {
    if (name !== MANIFEST_NAME && !(name in manifest.files)) throw new CairnError('corrupt_backup', `the backup holds an unexpected member ${name}`);
  }
  const cas: BackupCa[] = [];
  for (const id of manifest.cas) {
    const rowFile = files.get(`ca/${id}.json`);
    if (!rowFile) throw new CairnError('corrupt_backup', `the backup is incomplete: CA ${id} is missing`);
    const { has_key, ...row } = parseJson(rowFile, `ca/${id}.json`) as BackupCa['row'] & { has_key?: boolean };
    if (row.id !== id || (row.name !== 'cluster' && row.name !== 'client') || typeof row.cert_pem !== 'string') throw new CairnError('corrupt_backup', `CA ${id} in the backup is malformed`);
    const keyFile = files.get(`ca/${id}.key`);
    if (!!has_key !== !!keyFile) throw new CairnError('corrupt_backup', `the backup is incomplete: the key of CA ${id} is missing`);
    const keyPem = keyFile ? keyFile.toString('utf8') : null;
    checkCaMaterial(row.cert_pem, keyPem, row.key_id, id);
    cas.push({ row, keyPem });
  }
  if (!cas.some((c) => c.row.name === 'cluster' && c.row.status === 'active') || !cas.some((c) => c.row.name === 'client' && c.row.status === 'active')) {
    throw new CairnError('corrupt_backup', 'the backup has no active cluster or client CA');
  }
  const tables: Record<string, Row[]> = {};
  if (manifest.kind === 'full') {
    for (const [t, count] of Object.entries(manifest.tables)) {
      const f = files.get(`store/${t}.jsonl`);
      if (!f) throw new CairnError('corrupt_backup', `the backup is incomplete: table ${t} is missing`);
      const lines = f.toString('utf8').split('\n').filter((l) => l.length > 0);
      const rows = lines.map((l, i) => {
        const r = parseJson(Buffer.from(l), `store/${t}.jsonl line ${i + 1}`);
        if (!r || typeof r !== 'object' || Array.isArray(r)) throw new CairnError('corrupt_backup', `store/${t}.jsonl line ${i + 1} is not a row`);
        return r as Row;
      });
      if (rows.length !== count) throw new CairnError('corrupt_backup', `the backup is damaged: table ${t} has ${rows.length} rows, the manifest says ${count}`);
      tables[t] = rows;
    }
    if (!tables.cluster || tables.cluster.length !== 1 || tables.cluster[0].id !== manifest.clusterId) throw new CairnError('corrupt_backup', 'the backup\'s cluster table does not match its manifest');
  }
  return { manifest, cas, tables };
}

/** A CA certificate parses, its key belongs to it, and its key ID is its subject key identifier. */
function checkCaMaterial(certPem: string, keyPem: string | null, keyId: string, id: string): { certDer: Buffer; key: KeyObject | null } {
  try {
    const certDer = certificateFromPem(certPem, `CA ${id}`);
    const info = certificateInfo(certDer);
    if (!info.isCA) throw new CairnError('corrupt_backup', `CA ${id} in the backup is not a CA certificate`);
    if (info.subjectKeyId?.toString('hex') !== keyId) throw new CairnError('corrupt_backup', `CA ${id} in the backup: key ID does not match the certificate`);
    const key = keyPem ? privateKeyFromPem(keyPem, `the key of CA ${id}`) : null;
    if (key && !keysMatch(key, info.publicKeyDer)) throw new CairnError('corrupt_backup', `the key of CA ${id} in the backup does not belong to its certificate`);
    return { certDer, key };
  } catch (e) {
    if (e instanceof PkiError) throw new CairnError('corrupt_backup', `CA ${id} in the backup: ${e.message}`);
    throw e;
  }
}

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
export async function restoreRootCaIn(tx: Store, content: BackupContent, unlockKey: Buffer): Promise<RootCaRestoreResult> {
  const cluster = await tx.getCluster();
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

// ---------------------------------------------------------------- integrity

/**
 * Check that a store is whole: one cluster; CA certificates that parse with keys that the
 * unlock key opens and that belong to them; an active cluster and client CA; every node's
 * current certificate recorded, and every node certificate's node; the serial sequence
 * past every recorded serial; both join tokens and the sequences present. Returns the
 * problems found (none: the store is whole).
 */
export async function checkStoreIntegrity(store: Store, unlockKey: Buffer): Promise<string[]> {
  const problems: string[] = [];
  const clusters = await store.listClusters();
  if (clusters.length !== 1) problems.push(`${clusters.length} cluster rows (expected 1)`);
  const cas = await store.listCas();
  for (const c of cas) {
    try {
      const keyPem = c.key_sealed ? unseal(unlockKey, c.key_sealed, c.id).toString() : null;
      checkCaMaterial(c.cert_pem, keyPem, c.key_id, c.id);
      if (clusters[0] && certificateInfo(certificateFromPem(c.cert_pem, c.id)).subjectAttrs.O !== clusters[0].id) problems.push(`CA ${c.id} is not of cluster ${clusters[0].id}`);
    } catch (e) {
      problems.push(`CA ${c.id}: ${(e as Error).message}`);
    }
  }
  for (const name of ['cluster', 'client']) {
    if (!cas.some((c) => c.name === name && c.status === 'active' && c.key_sealed)) problems.push(`no active ${name} CA with a key`);
  }
  const certs = await store.listCertificateOwners();
  const bySerial = new Map(certs.map((c) => [c.serial, c]));
  const nodes = await store.listNodes();
  const nodeIds = new Set(nodes.map((n) => n.id));
  for (const n of nodes) {
    if (n.current_serial) {
      const c = bySerial.get(n.current_serial);
      if (!c) problems.push(`node ${n.id}: its current certificate ${n.current_serial} is not recorded`);
      else if (c.node_id !== n.id) problems.push(`node ${n.id}: its current certificate ${n.current_serial} belongs to ${c.node_id}`);
    }
  }
  let maxSeq = 0n;
  for (const c of certs) {
    if (c.kind === 'node' && (!c.node_id || !nodeIds.has(c.node_id))) problems.push(`certificate ${c.serial}: its node ${c.node_id} is not recorded`);
    try {
      const s = parseSerial(c.serial);
      if (s.length === 16) {
        const q = sequenceOf(s);
        if (q > maxSeq) maxSeq = q;
      }
    } catch {
      problems.push(`certificate ${c.serial}: malformed serial`);
    }
  }
  const next = await store.peekSequence('serial');
  if (certs.length && BigInt(next) <= maxSeq) problems.push(`the serial sequence (${next}) is not past the highest recorded serial sequence (${maxSeq})`);
  const seqs = new Set(await store.listSequenceNames());
  for (const s of ['serial', 'request', 'revocation']) if (!seqs.has(s)) problems.push(`sequence ${s} is missing`);
  const tokens = await store.getTokenHashes();
  for (const r of ROLES) if (!tokens[r]) problems.push(`the ${r} join token is missing`);
  if (problems.length > 20) return [...problems.slice(0, 20), `and ${problems.length - 20} more`];
  return problems;
}

/** A CA's private key, unsealed (for PKCS#12 exports); null when the store holds none (external CA). */
export function unsealCaKey(row: CaTable, unlockKey: Buffer): KeyObject | null {
  return row.key_sealed ? privateKeyFromPem(unseal(unlockKey, row.key_sealed, row.id).toString(), `CA ${row.id} key`) : null;
}

