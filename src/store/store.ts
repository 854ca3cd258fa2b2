/**
 * The store: what cairn records (cluster, CAs, certificates, nodes, tokens, sequences,
 * replicas, leases, CRLs, audit), as one interface. The SQL implementation is in
 * sql-store.ts (SQLite or PostgreSQL); nothing outside src/store sees SQL or Kysely.
 *
 * Atomicity: `transaction(fn)` runs `fn` with a Store bound to one transaction (all of it is
 * recorded, or none); `snapshot(fn)` with a read-only one that sees a single point in time.
 * Failures to reach the store raise StoreUnavailableError, whatever the backend.
 */
import path from 'node:path';
import { CairnError } from '../util/errors.js';
import type { AuditHeadTable, AuditSealTable, AuditTable, CaTable, CertificateTable, ClusterTable, CrlTable, FailureTable, JoinTokenTable, LeaseTable, NodeTable, ReplicaTable, RotationTable, SigningKeyTable } from './schema.js';

export { StoreUnavailableError } from './unavailable.js';
export { openStore, SqlStore } from './sql-store.js';
export type { AuditHeadTable, AuditSealTable, AuditTable, CaTable, CertificateTable, ClusterTable, CrlTable, FailureTable, JoinTokenTable, LeaseTable, NodeTable, ReplicaTable, RotationTable, SigningKeyTable } from './schema.js';
export { auditEntryHash, GENESIS_HASH, type ChainedEntry } from './audit-chain.js';

export type StoreKind = 'sqlite' | 'postgres' | 'memory';

/** Where a page of a listing starts: after the row with this (created_at, key). */
export interface PageKey {
  t: number;
  k: string;
}

export type NodeWithCertificate = Pick<NodeTable, 'id' | 'role' | 'status' | 'created_at' | 'updated_at' | 'current_serial' | 'renewed_at'> & {
  /** the value the page is ordered by (see NodePageQuery.sort) */
  sort_t: number;
  cert_serial: string | null;
  cert_not_before: number | null;
  cert_not_after: number | null;
  cert_issuer_key_id: string | null;
  cert_status: string | null;
};

/** Orders a node listing can be paged in (then by ID): creation, current certificate's expiry, last renewal, ID alone. */
export const NODE_SORTS = ['created', 'expiry', 'renewed', 'id'] as const;
export type NodeSort = (typeof NODE_SORTS)[number];

export interface NodePageQuery {
  after?: PageKey;
  limit: number;
  sort?: NodeSort;
  desc?: boolean;
  role?: string;
  status?: string;
  /** lowercase base36 */
  idPrefix?: string;
}

/** A row of any table, as backups carry it. */
export type TableRow = Record<string, unknown>;

export interface CertificateFilter {
  nodeId?: string;
  status?: string;
  kind?: string;
  /** the recorded subject, exactly (`CN=…,OU=…,O=…`) */
  subject?: string;
}

/** What an audit entry says beyond actor, action and detail. */
export interface AuditOptions {
  /** what it is about; default: the detail's node, serial, replica, user or role */
  subject?: string;
  /** default 'success' */
  outcome?: string;
}

export interface Store {
  readonly kind: StoreKind;
  /** the SQLite file or PostgreSQL URL it was opened with (another thread may open its own) */
  readonly location: string;
  /** the replica recording through this store: its audit entries name it (set by the Authority) */
  origin: string;

  // ---- lifetime and atomicity
  close(): Promise<void>;
  ping(): Promise<void>;
  /** PostgreSQL: how commits are replicated (null on SQLite and in memory). */
  replication(): Promise<ReplicationStatus | null>;
  transaction<T>(fn: (tx: Store) => Promise<T>): Promise<T>;
  snapshot<T>(fn: (tx: Store) => Promise<T>): Promise<T>;

  // ---- cluster and configuration
  getCluster(): Promise<ClusterTable | undefined>;
  listClusters(): Promise<ClusterTable[]>;
  insertCluster(c: ClusterTable): Promise<void>;
  setClusterId(from: string, to: string): Promise<void>;
  getConfig(): Promise<Record<string, unknown>>;
  setConfig(values: Record<string, unknown>): Promise<void>;

  // ---- certificate authorities
  listCas(): Promise<CaTable[]>;
  insertCa(ca: CaTable): Promise<void>;
  replaceCas(rows: CaTable[]): Promise<void>;
  updateCa(id: string, set: Partial<Pick<CaTable, 'status' | 'retired_at' | 'key_sealed'>>): Promise<void>;

  // ---- root CA rotations
  listRotations(): Promise<RotationTable[]>;
  insertRotation(r: RotationTable): Promise<void>;
  updateRotation(id: string, set: Partial<Pick<RotationTable, 'state' | 'finished_at'>>): Promise<void>;
  /** Active nodes, and those whose current certificate was issued by this key. */
  rotationProgress(keyId: string): Promise<{ total: number; converged: number }>;
  /** Active nodes whose current certificate is not from this key, least recently renewed first. */
  unconvergedNodes(keyId: string, limit: number): Promise<{ id: string; role: string; renewed_at: number | null; issuer_key_id: string | null }[]>;
  /** Ask up to `limit` unconverged nodes not asked yet to renew (renew_requested_at = now); returns their IDs. */
  requestRenewals(keyId: string, limit: number, now: number): Promise<string[]>;
  /** Nodes asked to renew after `t`. */
  renewalRequestsSince(t: number): Promise<string[]>;
  clearRenewalRequests(): Promise<void>;

  // ---- certificates
  insertCertificate(c: CertificateTable): Promise<void>;
  insertCertificateIfAbsent(c: CertificateTable): Promise<void>;
  getCertificate(serial: string): Promise<CertificateTable | undefined>;
  listCertificateOwners(): Promise<Pick<CertificateTable, 'serial' | 'kind' | 'node_id'>[]>;
  findCertificates(f: CertificateFilter & { limit?: number }): Promise<CertificateTable[]>;
  findCertificatesPage(f: CertificateFilter & { notAfterBetween?: [number, number]; after?: PageKey; limit: number }): Promise<CertificateTable[]>;
  countGoodByExpiry(now: number, bounds: number[]): Promise<number[]>;
  /** Serials of the good, unexpired admin certificates, locked until the transaction ends. */
  lockGoodAdminCertificates(now: number): Promise<string[]>;

  // ---- revocation (each returns what it revoked, and bumps the revocation mark when any)
  revokeCertificates(serials: string[], reason: string): Promise<string[]>;
  revokeNodeCertificates(nodeId: string, reason: string, only?: { role?: string }): Promise<string[]>;
  revokeIssuedBy(issuerKeyIds: string[], reason: string): Promise<number>;
  bumpRevocationMark(): Promise<void>;
  /** Revoked, unexpired certificates issued by these CA keys: the entries of a CRL. */
  revokedFor(issuerKeyIds: string[], now: number): Promise<Pick<CertificateTable, 'serial' | 'revoked_at' | 'revocation_reason' | 'not_after'>[]>;
  /** Those of them revoked at or after `since` (by `revoked_at`): what a CRL builder that keeps its list adds to it. */
  revokedSince(issuerKeyIds: string[], now: number, since: number): Promise<Pick<CertificateTable, 'serial' | 'revoked_at' | 'revocation_reason' | 'not_after'>[]>;
  /** How many certificates `revokedFor` lists (a CRL builder checks the list it keeps against it). */
  countRevoked(issuerKeyIds: string[], now: number): Promise<number>;
  /** Revoked, unexpired certificates of these CA keys (an external CA's) it has not recorded yet, oldest revocation first. */
  unforwardedRevocations(issuerKeyIds: string[], now: number, limit: number): Promise<Pick<CertificateTable, 'serial' | 'revoked_at' | 'revocation_reason'>[]>;
  /** The external CA recorded these revocations. */
  markForwarded(serials: string[], at: number): Promise<void>;

  // ---- nodes
  insertNode(n: NodeTable, o?: { ifAbsent?: boolean }): Promise<void>;
  getNode(id: string): Promise<NodeTable | undefined>;
  /** Read a node and lock its row until the transaction ends (every change to a node takes it first). */
  lockNode(id: string): Promise<NodeTable | undefined>;
  listNodes(): Promise<NodeTable[]>;
  /** One page of nodes in the query's order, each with its current certificate joined in (one query). */
  listNodesPage(o: NodePageQuery): Promise<NodeWithCertificate[]>;
  countNodes(): Promise<{ role: string; status: string; n: number }[]>;
  updateNode(id: string, set: Partial<Omit<NodeTable, 'id'>>): Promise<void>;
  /** IDs of active nodes whose newest certificate expired at or before `before` (oldest expiry first). */
  expiredNodes(before: number, limit: number): Promise<string[]>;

  // ---- join tokens (hashes only)
  getTokenHashes(): Promise<Record<string, string>>;
  setTokenHash(role: string, secretHash: string): Promise<void>;

  // ---- limited join tokens (a lifetime and a number of uses)
  insertJoinToken(t: JoinTokenTable): Promise<void>;
  getJoinTokenByHash(secretHash: string): Promise<JoinTokenTable | undefined>;
  /** Count one use, atomically: only while unrevoked, unexpired and uses < max_uses. Returns the token, or undefined when none was left. */
  useJoinToken(secretHash: string, now: number): Promise<JoinTokenTable | undefined>;
  listJoinTokens(): Promise<JoinTokenTable[]>;
  /** Revoke a token; false when there is no such token (or it was revoked already). */
  revokeJoinToken(id: string, now: number): Promise<boolean>;

  // ---- sequences
  ensureSequence(name: string, start: number): Promise<void>;
  /** Claim `[start, start+increment)` atomically. */
  claimRange(name: string, increment: number): Promise<{ start: number; end: number }>;
  peekSequence(name: string): Promise<number>;
  setSequence(name: string, next: number): Promise<void>;
  listSequenceNames(): Promise<string[]>;

  // ---- replicas
  upsertReplica(r: { id: string; address: string; version: string }): Promise<void>;
  heartbeat(id: string): Promise<void>;
  listReplicas(): Promise<ReplicaTable[]>;
  getReplica(id: string): Promise<ReplicaTable | undefined>;
  /** Mark a replica removed and revoke its server certificates (by subject). */
  removeReplica(id: string, serverSubject: string): Promise<string[]>;

  // ---- CRLs
  latestCrl(caName: string): Promise<CrlTable | undefined>;
  /** The newest CRL's row without its DER (cheap: the CRL leader reads it every cycle, whatever the CRL's size). */
  latestCrlHead(caName: string): Promise<Omit<CrlTable, 'der'> | undefined>;
  /** The number of a CA's newest CRL (cheap: tells whether a cached CRL is still the newest). */
  latestCrlNumber(caName: string): Promise<number | undefined>;
  insertCrl(c: CrlTable): Promise<void>;
  pruneCrls(caName: string, keep: number): Promise<void>;
  deleteCrls(): Promise<void>;

  // ---- leases
  acquireLease(name: string, holder: string, ttlMs: number): Promise<number | null>;
  holdsLease(name: string, holder: string, term: number): Promise<boolean>;
  releaseLease(name: string, holder: string): Promise<void>;
  getLease(name: string): Promise<LeaseTable | undefined>;

  // ---- audit: one hash chain (audit-chain.ts), appended in the caller's transaction
  audit(actor: string, action: string, detail: Record<string, unknown>, o?: AuditOptions): Promise<void>;
  /** Chained entries after position `afterSeq`, oldest first. */
  auditChain(f: { afterSeq: number; limit: number }): Promise<AuditTable[]>;
  /** Entries not (yet) in the chain (recorded before it existed, or inserted behind its back). */
  countUnchainedAudit(): Promise<number>;
  /** The chain's newest entry, as its head row records it. */
  auditHead(): Promise<AuditHeadTable | undefined>;
  insertAuditSeal(s: AuditSealTable): Promise<void>;
  /** Seals after position `afterSeq`, oldest first. */
  auditSeals(f: { afterSeq: number; limit: number }): Promise<AuditSealTable[]>;
  latestAuditSeal(): Promise<AuditSealTable | undefined>;

  // ---- subsystem certificates (OCSP signing, audit signing)
  listSigningKeys(): Promise<SigningKeyTable[]>;
  insertSigningKey(k: SigningKeyTable): Promise<void>;
  deleteSigningKeys(ids: string[]): Promise<void>;
  /** Newest first; `action` matches exactly or, ending in ".", as a prefix. */
  auditPage(f: { after?: PageKey; limit: number; action?: string; actor?: string; since?: number }): Promise<AuditTable[]>;

  // ---- refused joins and renewals (a bounded record for the dashboard)
  insertFailure(f: Omit<FailureTable, 'id'>): Promise<void>;
  recentFailures(limit: number): Promise<FailureTable[]>;
  pruneFailures(keep: number): Promise<void>;

  // ---- whole tables (backup and restore)
  appliedMigrations(): Promise<string[]>;
  tableNames(): Promise<string[]>;
  dumpTable(table: string): Promise<TableRow[]>;
  /** Rows in a table; null when the store has no such table. */
  countRows(table: string): Promise<number | null>;
  insertRows(table: string, rows: object[]): Promise<void>;
}

/** How a PostgreSQL primary replicates commits (what `replicationWarning` judges). */
export interface ReplicationStatus {
  synchronousCommit: string;
  synchronousStandbyNames: string;
  /** standbys streaming from this server */
  standbys: number;
  /** of those, the synchronous ones; null when the role may not see it (needs pg_read_all_stats) */
  synchronousStandbys: number | null;
}

/**
 * Why a certificate returned to a client could be lost in a failover, or null: cairn's promise
 * (nothing lost, no serial range handed out twice) holds only when every commit waits for a
 * synchronous standby — synchronous_commit on (or remote_apply) with synchronous_standby_names
 * set and a synchronous standby connected.
 */
export function replicationWarning(r: ReplicationStatus): string | null {
  if (!['on', 'remote_apply'].includes(r.synchronousCommit)) {
    return `synchronous_commit is "${r.synchronousCommit}": a commit does not wait for a standby, so a failover can lose certificates already returned and hand out serial ranges twice; set synchronous_commit = on`;
  }
  if (r.synchronousStandbyNames.trim() === '') {
    return 'synchronous_standby_names is empty: commits are replicated asynchronously (if at all), so a failover can lose certificates already returned and hand out serial ranges twice; name a synchronous standby';
  }
  if (r.synchronousStandbys === 0) {
    return `no synchronous standby is connected (synchronous_standby_names = '${r.synchronousStandbyNames}', ${r.standbys} standby(s) streaming): commits wait until one is`;
  }
  return null;
}

export const SQLITE_FILE = 'cairn.db';

/** Where the store lives: `postgres://…` URLs, or a SQLite file (default: <state dir>/cairn.db). */
export function resolveStoreUrl(url: string | undefined, stateDir: string): { kind: 'sqlite' | 'postgres'; location: string } {
  if (!url) return { kind: 'sqlite', location: path.join(stateDir, SQLITE_FILE) };
  if (/^postgres(ql)?:\/\//.test(url)) return { kind: 'postgres', location: url };
  if (url.startsWith('sqlite:')) return { kind: 'sqlite', location: url.slice('sqlite:'.length) };
  throw new CairnError('bad_store', `unsupported store "${redactUrl(url)}": use postgres://… or sqlite:<file>`);
}

/** A URL with any password replaced, safe to log. */
export function redactUrl(url: string): string {
  return url.replace(/(\/\/[^:/@]+:)[^@]*@/, '$1***@');
}
