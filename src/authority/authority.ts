/**
 * The certificate authority: issuance policy, join, renewal, node administration, tokens,
 * configuration. Routes and commands call this; it calls the store and the pki core.
 */
import { KeyObject } from 'node:crypto';
import {
  certificateToPem, csrDerFrom, DAY_MS, ExtKeyUsageName, HOUR_MS, ID_RE, issueCertificate, Issuer, leafProfile,
  makeIssuer, makeSerial, NameAttrs, parseCsr, PkiError, privateKeyFromPem, randomId, rootDigest, serialHex, SubjectAltName,
  certificateFromPem, isRevocationReason, REVOCATION_REASONS,
} from '../pki/index.js';
import { RangeAllocator } from '../store/ranges.js';
import type { CaTable, NodeTable } from '../store/schema.js';
import { Db, Store } from '../store/store.js';
import { CairnError } from '../util/errors.js';
import { admitRenewal } from './admission.js';
import { adoptNodeCertificate } from './clone.js';
import { page, PageRequest } from './pages.js';
import { unseal } from './seal.js';
import { formatToken, hashSecret, isRole, matchSecret, newSecret, parseToken, Role } from './tokens.js';

export const DEFAULT_CERT_EXPIRY_MS = 90 * DAY_MS;
export const MIN_CERT_EXPIRY_MS = HOUR_MS;

export interface ClusterConfig {
  /** lifetime of node certificates */
  certExpiryMs: number;
  /** serial numbers a replica claims from the store at a time */
  serialRangeIncrement: number;
  /** claim the next range when fewer than this many are left */
  serialRangeLowWater: number;
  /** CRL validity (nextUpdate - thisUpdate) */
  crlValidityMs: number;
  /** CRL leader lease duration */
  crlLeaseMs: number;
  /** CRL leader cycle: revocations within one cycle are coalesced into one CRL */
  crlCycleMs: number;
  /** how long after a renewal the certificate it replaced may still renew (a node that crashed before saving) */
  renewalGraceMs: number;
  /** renewals a node may make in a burst */
  renewalBurst: number;
  /** then one renewal per node every this many ms (0 = no limit) */
  renewalIntervalMs: number;
}

export const DEFAULT_CONFIG: ClusterConfig = {
  certExpiryMs: DEFAULT_CERT_EXPIRY_MS,
  serialRangeIncrement: 1000,
  serialRangeLowWater: 200,
  crlValidityMs: 24 * HOUR_MS,
  crlLeaseMs: 15_000,
  crlCycleMs: 1_000,
  renewalGraceMs: HOUR_MS,
  renewalBurst: 5,
  renewalIntervalMs: 60_000,
};

/** Bounds of every setting a user may change: [min, max, what]. */
const CONFIG_BOUNDS: Record<keyof ClusterConfig, [number, number, string]> = {
  certExpiryMs: [HOUR_MS, 20 * 365 * DAY_MS, 'certificate expiry must be between 1h and 20 years'],
  serialRangeIncrement: [1, 1_000_000, 'serialRangeIncrement must be between 1 and 1000000'],
  serialRangeLowWater: [0, 1_000_000, 'serialRangeLowWater must be between 0 and 1000000'],
  crlValidityMs: [10 * 60_000, 365 * DAY_MS, 'crlValidityMs must be between 10 minutes and 365 days'],
  crlLeaseMs: [1_000, HOUR_MS, 'crlLeaseMs must be between 1s and 1h'],
  crlCycleMs: [100, 10 * 60_000, 'crlCycleMs must be between 100ms and 10 minutes'],
  renewalGraceMs: [0, 7 * DAY_MS, 'renewalGraceMs must be between 0 and 7 days'],
  renewalBurst: [1, 1_000_000, 'renewalBurst must be between 1 and 1000000'],
  renewalIntervalMs: [0, DAY_MS, 'renewalIntervalMs must be between 0 (no limit) and 1 day'],
};

export interface LoadedCa {
  row: CaTable;
  certDer: Buffer;
  issuer: Issuer | null;
}

interface SignRequest {
  subject: NameAttrs;
  publicKeyDer: Buffer;
  publicKey: KeyObject;
  lifetimeMs: number;
  extKeyUsage: ExtKeyUsageName[];
  sans?: SubjectAltName[];
}

export interface IssuedNode {
  nodeId: string;
  role: Role;
  clusterId: string;
  /** leaf followed by any CA certificates between it and a root */
  certificate: string;
  trustBundle: string;
  serial: string;
  notAfter: Date;
}

/** What the TLS layer tells about a verified client certificate. */
export interface PeerCertificate {
  serialHex: string;
  /** the subject's O */
  clusterId: string | undefined;
  /** the certificate (DER): lets a controller sharing our CA keys adopt a node it does not know */
  raw?: Buffer;
}

export interface PeerIdentity {
  kind: 'node' | 'admin' | 'server';
  nodeId: string | null;
  role: string | null;
  serial: string;
}

export interface NodeView {
  id: string;
  role: string;
  status: string;
  createdAt: string;
  updatedAt: string;
  certificate: { serial: string; notBefore: string; notAfter: string; issuerKeyId: string } | null;
}

/** How many revoked serials an answer (and the audit record) lists; the count is always exact. */
export const MAX_LISTED_SERIALS = 1000;

const denied = (code: string, message: string) => new CairnError(code, message);

function pkiToCairn<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof PkiError) throw new CairnError(e.code, e.message);
    throw e;
  }
}

export class Authority {
  clusterId = '';
  clusterName = '';
  config: ClusterConfig = { ...DEFAULT_CONFIG };
  private cas: LoadedCa[] = [];
  private clusterCa!: LoadedCa;
  private clientCa!: LoadedCa;
  /** derived from the CAs once per load(): every join and renewal answers with them */
  private cached = { digest: '', trustBundle: '' };
  private serials: RangeAllocator;

  constructor(
    readonly store: Store,
    readonly replicaId: string,
    private readonly unlockKey: Buffer,
  ) {
    this.serials = new RangeAllocator(
      store,
      'serial',
      () => this.config.serialRangeIncrement,
      () => this.config.serialRangeLowWater,
    );
  }

  /** Load cluster identity, CA material (unsealed with the unlock key) and configuration. */
  async load(): Promise<void> {
    const cluster = await this.store.getCluster();
    if (!cluster) throw new CairnError('not_initialized', 'the store holds no cluster: run "cairn init" first');
    this.clusterId = cluster.id;
    this.clusterName = cluster.name;
    const rows = await this.store.listCas();
    this.cas = rows.map((row) => {
      const certDer = certificateFromPem(row.cert_pem, `CA ${row.id}`);
      let issuer: Issuer | null = null;
      if (row.key_sealed && row.status === 'active') {
        const pem = unseal(this.unlockKey, row.key_sealed, row.id).toString();
        const key: KeyObject = privateKeyFromPem(pem, `CA ${row.id} key`);
        issuer = makeIssuer(certDer, key);
      }
      return { row, certDer, issuer };
    });
    const active = (name: string) => this.cas.filter((c) => c.row.name === name && c.row.status === 'active' && c.issuer).at(-1);
    const cc = active('cluster');
    const cl = active('client');
    if (!cc || !cl) throw new CairnError('store_corrupt', 'the store has no active cluster or client CA');
    this.clusterCa = cc;
    this.clientCa = cl;
    this.cached = {
      digest: rootDigest(cc.certDer),
      trustBundle: this.cas.filter((c) => c.row.name === 'cluster' && c.row.status === 'active').map((c) => certificateToPem(c.certDer)).join(''),
    };
    await this.refreshConfig();
  }

  async refreshConfig(db: Db = this.store.db): Promise<ClusterConfig> {
    const stored = await this.store.getConfig(db);
    this.config = { ...DEFAULT_CONFIG, ...(stored as Partial<ClusterConfig>) };
    return this.config;
  }

  // ---- public CA information

  get clusterRootDer(): Buffer {
    return this.clusterCa.certDer;
  }

  get clusterRootKeyId(): string {
    return this.clusterCa.row.key_id;
  }

  /** Digest carried by join tokens: of the current cluster root. */
  get digest(): string {
    return this.cached.digest;
  }

  /** Every certificate a node must trust. */
  trustBundle(): string {
    return this.cached.trustBundle;
  }

  /** Certificates a TLS server accepts client certificates from (cluster and client roots). */
  clientTrust(): Buffer[] {
    return this.cas.filter((c) => c.row.status === 'active').map((c) => c.certDer);
  }

  caInfo() {
    return {
      clusterId: this.clusterId,
      roots: { cluster: certificateToPem(this.clusterCa.certDer), client: certificateToPem(this.clientCa.certDer) },
      trustBundle: this.trustBundle(),
      digest: this.digest,
      rotation: null,
    };
  }

  /** The issuer that signs a CA's CRLs (its current active key). */
  crlIssuer(ca: 'cluster' | 'client'): Issuer {
    return (ca === 'cluster' ? this.clusterCa : this.clientCa).issuer!;
  }

  /** Key IDs of every generation of a CA whose certificates a CRL covers. */
  caKeyIds(ca: 'cluster' | 'client'): string[] {
    return this.cas.filter((c) => c.row.name === ca).map((c) => c.row.key_id);
  }

  // ---- issuance

  private async nextSerial(): Promise<Buffer> {
    return makeSerial(BigInt(await this.serials.take()));
  }

  /** Sign a leaf under a CA; nothing is recorded here (callers record in their transaction). */
  private async sign(ca: LoadedCa, o: SignRequest) {
    return this.signWith(ca, await this.nextSerial(), o);
  }

  /** Sign a leaf with a serial already taken (synchronous: usable inside a transaction). */
  private signWith(ca: LoadedCa, serial: Buffer, o: SignRequest) {
    const profile = leafProfile({ ...o, serial });
    const der = pkiToCairn(() => issueCertificate(profile, ca.issuer!));
    // issueCertificate clamps notAfter to the CA's own (no need to parse what we just built)
    const notAfter = profile.notAfter > ca.issuer!.notAfter ? ca.issuer!.notAfter : profile.notAfter;
    const notBefore = new Date(Math.floor(profile.notBefore.getTime() / 1000) * 1000);
    return { der, serial: serialHex(serial), notBefore, notAfter: new Date(Math.floor(notAfter.getTime() / 1000) * 1000), issuerKeyId: ca.row.key_id };
  }

  private nodeSubject(nodeId: string, role: Role): { subject: NameAttrs; sans: SubjectAltName[] } {
    // never DNS:ca: only a CA replica's certificate (OU=ca-replica) speaks for the CA
    const sans: SubjectAltName[] = [{ dns: role }, { dns: nodeId }];
    return { subject: { O: this.clusterId, OU: role, CN: nodeId }, sans };
  }

  private parseRequest(csr: unknown) {
    if (typeof csr !== 'string' || csr.length === 0) throw new CairnError('bad_request', 'missing field "csr" (a PEM certificate request)');
    return pkiToCairn(() => parseCsr(csrDerFrom(csr)));
  }

  private issued(nodeId: string, role: Role, c: { der: Buffer; serial: string; notAfter: Date }): IssuedNode {
    return {
      nodeId,
      role,
      clusterId: this.clusterId,
      certificate: certificateToPem(c.der),
      trustBundle: this.trustBundle(),
      serial: c.serial,
      notAfter: c.notAfter,
    };
  }

  private certRecord(c: { der: Buffer; serial: string; notBefore: Date; notAfter: Date; issuerKeyId: string }, kind: string, subject: NameAttrs, nodeId: string | null, role: string | null) {
    return {
      serial: c.serial,
      kind,
      node_id: nodeId,
      role,
      subject: `CN=${subject.CN},OU=${subject.OU},O=${subject.O}`,
      issuer_key_id: c.issuerKeyId,
      not_before: c.notBefore.getTime(),
      not_after: c.notAfter.getTime(),
      status: 'good',
      revoked_at: null,
      revocation_reason: null,
      cert_pem: certificateToPem(c.der),
      created_at: Date.now(),
      replica_id: this.replicaId,
    };
  }

  /**
   * Join: check the token (constant time, never saying which part was wrong), check the
   * CSR's proof of possession, issue a node certificate, record node and certificate in
   * one transaction, and only then return it.
   */
  async join(token: unknown, csr: unknown): Promise<IssuedNode> {
    if (typeof token !== 'string' || token.length === 0) throw new CairnError('bad_request', 'missing field "token"');
    const parsed = parseToken(token);
    // same answer for a malformed token, another cluster's digest and a wrong secret
    if (!parsed) throw denied('invalid_token', 'invalid token');
    const hashes = await this.store.getTokenHashes();
    const role = matchSecret(parsed.secret, hashes);
    if (parsed.digest !== this.digest || !role) throw denied('invalid_token', 'invalid token');
    const req = this.parseRequest(csr);
    const nodeId = randomId();
    const { subject, sans } = this.nodeSubject(nodeId, role);
    const c = await this.sign(this.clusterCa, { subject, sans, publicKeyDer: req.publicKeyDer, publicKey: req.publicKey, lifetimeMs: this.config.certExpiryMs, extKeyUsage: ['serverAuth', 'clientAuth'] });
    const now = Date.now();
    await this.store.transaction(async (trx) => {
      await this.store.insertNode(
        { id: nodeId, role, status: 'active', created_at: now, updated_at: now, current_serial: c.serial, previous_serial: null, renewed_at: now, renew_budget: null, renew_budget_at: null },
        trx,
      );
      await this.store.insertCertificate(this.certRecord(c, 'node', subject, nodeId, role), trx);
    });
    return this.issued(nodeId, role, c);
  }

  /**
   * Identify the holder of a TLS client certificate (already chain-verified by the TLS
   * layer): it must be from this cluster, recorded by this CA, good and unexpired.
   */
  async identifyPeer(peer: PeerCertificate | undefined): Promise<PeerIdentity> {
    if (!peer) throw denied('client_certificate_required', 'a client certificate is required');
    if (peer.clusterId !== this.clusterId) throw denied('forbidden', 'the client certificate is not of this cluster');
    const serial = peer.serialHex.toUpperCase().replace(/^(00)+(?=[0-9A-F]{2})/, '');
    const rec = await this.store.getCertificate(serial);
    if (!rec) {
      // a node that joined through another controller holding the same CA (see clone.ts)
      const adopted = peer.raw ? await adoptNodeCertificate(this, peer.raw, serial) : null;
      if (adopted) return adopted;
      throw denied('forbidden', 'the client certificate was not issued by this cluster');
    }
    if (rec.status !== 'good') {
      // a removed node's certificates are revoked: say what happened to the node
      const n = rec.kind === 'node' && rec.node_id ? await this.store.getNode(rec.node_id) : undefined;
      if (n && n.status !== 'active') throw denied('node_removed', `node ${n.id} has been removed from the cluster`);
      throw denied('certificate_revoked', 'the client certificate is revoked');
    }
    if (rec.not_after <= Date.now()) throw denied('certificate_expired', 'the client certificate has expired');
    if (rec.kind !== 'node' && rec.kind !== 'admin' && rec.kind !== 'server') throw denied('forbidden', 'this certificate cannot use the API');
    return { kind: rec.kind as PeerIdentity['kind'], nodeId: rec.node_id, role: rec.role, serial };
  }

  /**
   * For a node calling with its certificate: its current role, and whether it should renew now
   * because the role in its certificate is no longer its role. Null for anything else.
   */
  async nodeRenewalHint(peer: PeerCertificate): Promise<{ id: string; role: string; renew: boolean } | null> {
    let id: PeerIdentity;
    try {
      id = await this.identifyPeer(peer);
    } catch (e) {
      if (e instanceof CairnError) return null; // not a node in good standing: it learns why when it renews
      throw e;
    }
    if (id.kind !== 'node' || !id.nodeId) return null;
    const n = await this.store.getNode(id.nodeId);
    if (!n || n.status !== 'active') return null;
    return { id: n.id, role: n.role, renew: n.role !== id.role };
  }

  /**
   * Renewal: same node ID, the node's current role, a fresh key from the CSR. The rules of who
   * may renew are in admission.ts; they are applied under the node's row lock, from reading
   * the node to recording the new certificate, so a removal or revocation committed before
   * wins and one committed after also revokes what this renewal issued.
   */
  async renew(peer: PeerIdentity, csr: unknown): Promise<IssuedNode> {
    if (peer.kind !== 'node' || !peer.nodeId) throw denied('forbidden', 'only node certificates can renew');
    const req = this.parseRequest(csr);
    const nodeId = peer.nodeId;
    const serial = await this.nextSerial();
    const issued = await this.store.transaction(async (trx) => {
      const node = await this.store.lockNode(nodeId, trx);
      const now = Date.now();
      const presented = await this.store.getCertificate(peer.serial, trx);
      const newest = node?.current_serial && node.current_serial !== peer.serial ? await this.store.getCertificate(node.current_serial, trx) : undefined;
      const admitted = admitRenewal(nodeId, node, presented, newest, now, this.config);
      const role = node!.role as Role;
      const { subject, sans } = this.nodeSubject(nodeId, role);
      const c = this.signWith(this.clusterCa, serial, { subject, sans, publicKeyDer: req.publicKeyDer, publicKey: req.publicKey, lifetimeMs: this.config.certExpiryMs, extKeyUsage: ['serverAuth', 'clientAuth'] });
      await this.store.insertCertificate(this.certRecord(c, 'node', subject, nodeId, role), trx);
      await this.store.updateNode(nodeId, { current_serial: c.serial, previous_serial: peer.serial, renewed_at: now, renew_budget: admitted.budget, renew_budget_at: now }, trx);
      // the grace path: the newest certificate never reached the node (or someone else holds it)
      if (admitted.abandoned) await this.store.revokeCertificates([admitted.abandoned], 'superseded', trx);
      // a demoted node's manager certificates lose their privilege once its worker certificate exists
      const withdrawn = role === 'worker' ? await this.store.revokeNodeCertificates(nodeId, 'privilegeWithdrawn', trx, { role: 'manager' }) : [];
      if (admitted.abandoned || withdrawn.length) {
        await this.store.audit(`node:${nodeId}`, 'node.renew.revoked', { node: nodeId, superseded: admitted.abandoned, privilegeWithdrawn: withdrawn }, trx);
      }
      return { role, c };
    });
    return this.issued(nodeId, issued.role, issued.c);
  }

  /** A certificate for a CA replica's HTTPS server: `DNS:ca` plus the names given. */
  async issueServerCertificate(publicKey: KeyObject, publicKeyDer: Buffer, names: SubjectAltName[], lifetimeMs = 365 * DAY_MS) {
    const subject = { O: this.clusterId, OU: 'ca-replica', CN: this.replicaId };
    const c = await this.sign(this.clusterCa, { subject, sans: [{ dns: 'ca' }, ...names], publicKey, publicKeyDer, lifetimeMs, extKeyUsage: ['serverAuth', 'clientAuth'] });
    await this.store.insertCertificate(this.certRecord(c, 'server', subject, null, null));
    return { certificate: certificateToPem(c.der), serial: c.serial, notAfter: c.notAfter };
  }

  /** An admin client certificate (issued by the cluster root, OU=admin). */
  async issueAdminCertificate(publicKey: KeyObject, publicKeyDer: Buffer, name = 'admin', lifetimeMs = 365 * DAY_MS) {
    const subject = { O: this.clusterId, OU: 'admin', CN: name };
    const c = await this.sign(this.clusterCa, { subject, publicKey, publicKeyDer, lifetimeMs, extKeyUsage: ['clientAuth'] });
    await this.store.insertCertificate(this.certRecord(c, 'admin', subject, null, null));
    await this.store.audit('cli', 'admin_certificate.issue', { serial: c.serial, name });
    return { certificate: certificateToPem(c.der), serial: c.serial, notAfter: c.notAfter };
  }

  // ---- tokens

  /** Replace the secret of a role's join token; the old one stops working at once. */
  async rotateToken(role: string, actor = 'admin'): Promise<string> {
    if (!isRole(role)) throw new CairnError('bad_request', `unknown role "${role}": use worker or manager`);
    const secret = newSecret();
    await this.store.transaction(async (trx) => {
      await this.store.setTokenHash(role, hashSecret(secret), trx);
      await this.store.audit(actor, 'token.rotate', { role }, trx);
    });
    return formatToken(this.digest, secret);
  }

  // ---- nodes

  async nodeView(n: NodeTable, db: Db = this.store.db): Promise<NodeView> {
    const cert = n.current_serial ? await this.store.getCertificate(n.current_serial, db) : undefined;
    return {
      id: n.id,
      role: n.role,
      status: n.status,
      createdAt: new Date(n.created_at).toISOString(),
      updatedAt: new Date(n.updated_at).toISOString(),
      certificate: cert
        ? { serial: cert.serial, notBefore: new Date(cert.not_before).toISOString(), notAfter: new Date(cert.not_after).toISOString(), issuerKeyId: cert.issuer_key_id }
        : null,
    };
  }

  /** One page of nodes, oldest first, with their current certificate (one query per page). */
  async listNodes(req: PageRequest = {}): Promise<{ nodes: NodeView[]; next: string | null }> {
    const r = await page(
      req,
      (after, limit) => this.store.listNodesPage({ after, limit }),
      (n) => ({ t: Number(n.created_at), k: n.id }),
      (n): NodeView => ({
        id: n.id,
        role: n.role,
        status: n.status,
        createdAt: new Date(Number(n.created_at)).toISOString(),
        updatedAt: new Date(Number(n.updated_at)).toISOString(),
        certificate: n.cert_serial
          ? { serial: n.cert_serial, notBefore: new Date(Number(n.cert_not_before)).toISOString(), notAfter: new Date(Number(n.cert_not_after)).toISOString(), issuerKeyId: n.cert_issuer_key_id! }
          : null,
      }),
    );
    return { nodes: r.items, next: r.next };
  }

  /** The node, or not_found; with `lock`, its row stays locked until the transaction ends. */
  private async requireNode(id: string, db: Db = this.store.db, lock = false): Promise<NodeTable> {
    if (!ID_RE.test(id)) throw new CairnError('not_found', `no node "${id}"`);
    const n = lock ? await this.store.lockNode(id, db) : await this.store.getNode(id, db);
    if (!n) throw new CairnError('not_found', `no node ${id}`);
    return n;
  }

  async getNode(id: string): Promise<NodeView> {
    return this.nodeView(await this.requireNode(id));
  }

  /** Change a node's role; it takes effect at the node's next renewal. */
  async setRole(id: string, role: Role, actor = 'admin'): Promise<NodeView> {
    return this.store.transaction(async (trx) => {
      const n = await this.requireNode(id, trx, true);
      if (n.status !== 'active') throw new CairnError('node_removed', `node ${id} has been removed`);
      if (n.role !== role) {
        await this.store.updateNode(id, { role }, trx);
        await this.store.audit(actor, role === 'manager' ? 'node.promote' : 'node.demote', { node: id }, trx);
      }
      return this.nodeView({ ...n, role }, trx);
    });
  }

  /** Remove a node: it can no longer renew, and its certificates are recorded as revoked. */
  async removeNode(id: string, actor = 'admin'): Promise<NodeView> {
    return this.store.transaction(async (trx) => {
      const n = await this.requireNode(id, trx, true); // waits for a renewal in flight, whose certificate is then revoked too
      await this.store.updateNode(id, { status: 'removed' }, trx);
      const revoked = await this.store.revokeNodeCertificates(id, 'cessationOfOperation', trx);
      await this.store.audit(actor, 'node.remove', { node: id, revoked: revoked.length }, trx);
      return this.nodeView({ ...n, status: 'removed' }, trx);
    });
  }

  // ---- replicas

  /**
   * Remove another replica: it may not serve again, and its server certificates are revoked
   * (agents holding the CRL stop trusting it). Not the replica answering: ask another one.
   */
  async removeReplica(id: string, actor = 'admin'): Promise<{ id: string; revoked: string[] }> {
    if (id === this.replicaId) throw new CairnError('bad_request', `replica ${id} is the one answering this request: remove it through another replica`);
    return this.store.transaction(async (trx) => {
      const r = ID_RE.test(id) ? await this.store.getReplica(id, trx) : undefined;
      if (!r || r.removed_at !== null) throw new CairnError('not_found', `no replica "${id}"`);
      const revoked = await this.store.removeReplica(id, `CN=${id},OU=ca-replica,O=${this.clusterId}`, trx);
      await this.store.audit(actor, 'replica.remove', { replica: id, revoked }, trx);
      return { id, revoked };
    });
  }

  // ---- certificates and revocation

  /** One page of certificates, oldest first. */
  async findCertificates(f: { nodeId?: string; status?: string; kind?: string } & PageRequest) {
    if (f.status && !['good', 'revoked'].includes(f.status)) throw new CairnError('bad_request', 'status must be good or revoked');
    const r = await page(
      f,
      (after, limit) => this.store.findCertificatesPage({ nodeId: f.nodeId, status: f.status, kind: f.kind, after, limit }),
      (c) => ({ t: Number(c.created_at), k: c.serial }),
      (c) => this.certificateView(c),
    );
    return { certificates: r.items, next: r.next };
  }

  certificateView(r: import('../store/schema.js').CertificateTable) {
    return {
      serial: r.serial,
      kind: r.kind,
      nodeId: r.node_id,
      role: r.role,
      subject: r.subject,
      issuerKeyId: r.issuer_key_id,
      notBefore: new Date(r.not_before).toISOString(),
      notAfter: new Date(r.not_after).toISOString(),
      status: r.status,
      revokedAt: r.revoked_at ? new Date(Number(r.revoked_at)).toISOString() : null,
      revocationReason: r.revocation_reason,
    };
  }

  async getCertificate(serial: string) {
    const r = await this.getCertificateIn(serial, this.store.db);
    return { ...this.certificateView(r), pem: r.cert_pem };
  }

  /**
   * Revoke one certificate (by serial) or every good certificate of a node (no limit on how
   * many). Takes effect for renewal at once. A node's certificates change under its row lock,
   * so a renewal in flight is either refused or has its new certificate revoked too. The last
   * good admin certificate is revoked only with `force` (else nobody could administer the
   * cluster until `cairn admin-bundle` issues a new one).
   */
  async revoke(target: { serial?: string; nodeId?: string }, reason: unknown, actor = 'admin', opts: { force?: boolean } = {}) {
    const why = reason === undefined ? 'unspecified' : reason;
    if (typeof why !== 'string' || !isRevocationReason(why)) {
      throw new CairnError('bad_request', `unknown revocation reason "${String(why)}": use one of ${Object.keys(REVOCATION_REASONS).join(', ')}`);
    }
    return this.store.transaction(async (trx) => {
      let revoked: string[];
      if (target.serial) {
        let c = await this.getCertificateIn(target.serial, trx);
        if (c.node_id) {
          await this.store.lockNode(c.node_id, trx);
          c = await this.getCertificateIn(c.serial, trx); // as it is now that we hold the lock
        }
        if (c.status === 'revoked') throw new CairnError('already_revoked', `certificate ${c.serial} is already revoked`);
        if (c.kind === 'admin' && !opts.force) {
          const admins = await this.store.lockGoodAdminCertificates(Date.now(), trx);
          if (admins.length === 1 && admins[0] === c.serial) {
            throw new CairnError(
              'last_admin',
              `certificate ${c.serial} is the last good admin certificate: revoking it would lock every administrator out; ` +
                'issue another first ("cairn admin-bundle"), or use --force',
            );
          }
        }
        revoked = await this.store.revokeCertificates([c.serial], why, trx);
      } else if (target.nodeId) {
        await this.requireNode(target.nodeId, trx, true);
        revoked = await this.store.revokeNodeCertificates(target.nodeId, why, trx);
      } else {
        throw new CairnError('bad_request', 'give a serial or a node');
      }
      await this.store.audit(actor, 'certificate.revoke', { count: revoked.length, serials: revoked.slice(0, MAX_LISTED_SERIALS), reason: why, node: target.nodeId ?? null }, trx);
      return { revoked: revoked.length, serials: revoked.slice(0, MAX_LISTED_SERIALS), reason: why };
    });
  }

  private async getCertificateIn(serial: string, db: Db) {
    const s = serial.replace(/:/g, '').toUpperCase();
    const r = /^[0-9A-F]{2,40}$/.test(s) ? await this.store.getCertificate(s, db) : undefined;
    if (!r) throw new CairnError('not_found', `no certificate with serial ${serial}`);
    return r;
  }

  /** The newest CRL of a CA, as stored by the CRL leader. */
  async latestCrl(ca: string): Promise<Buffer | null> {
    if (ca !== 'cluster' && ca !== 'client') throw new CairnError('not_found', `no CA "${ca}": use cluster or client`);
    const r = await this.store.latestCrl(ca);
    return r ? Buffer.from(r.der, 'base64') : null;
  }

  /** The number of the newest CRL of a CA, or null before the first. */
  async latestCrlNumber(ca: string): Promise<number | null> {
    if (ca !== 'cluster' && ca !== 'client') throw new CairnError('not_found', `no CA "${ca}": use cluster or client`);
    return (await this.store.latestCrlNumber(ca)) ?? null;
  }

  // ---- configuration

  async updateConfig(patch: Record<string, unknown>, actor = 'admin'): Promise<ClusterConfig> {
    const allowed: Partial<ClusterConfig> = {};
    for (const [k, v] of Object.entries(patch)) {
      // own keys only: "toString", "constructor" and the like are not settings
      const bounds = Object.hasOwn(CONFIG_BOUNDS, k) ? CONFIG_BOUNDS[k as keyof ClusterConfig] : undefined;
      if (!bounds) throw new CairnError('bad_request', `unknown configuration setting "${k}"`);
      if (typeof v !== 'number' || !Number.isInteger(v)) throw new CairnError('bad_request', `${k} must be an integer`);
      if (v < bounds[0] || v > bounds[1]) throw new CairnError('bad_request', bounds[2]);
      allowed[k as keyof ClusterConfig] = v;
    }
    if (Object.keys(allowed).length === 0) throw new CairnError('bad_request', 'no setting to change');
    await this.store.transaction(async (trx) => {
      await this.store.setConfig(allowed, trx);
      await this.store.audit(actor, 'config.update', allowed, trx);
    });
    return this.refreshConfig();
  }
}
