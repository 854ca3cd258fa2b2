/**
 * The backup archive: what a backup holds and how it is laid out, written and checked.
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
import { createHash, KeyObject } from 'node:crypto';
import { Readable } from 'node:stream';
import { certificateFromPem, certificateInfo, ID_RE, keysMatch, PkiError, privateKeyFromPem } from '../pki/index.js';
import type { CaTable } from '../store/store.js';
import { CairnError } from '../util/errors.js';

// tar-stream is loaded when a backup is made or read, not at every start
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

export const notABackup = (why: string) => new CairnError('not_a_backup', `not a cairn backup: ${why}`);

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
export function checkCaMaterial(certPem: string, keyPem: string | null, keyId: string, id: string): { certDer: Buffer; key: KeyObject | null } {
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

