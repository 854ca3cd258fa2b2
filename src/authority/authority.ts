/**
 * The certificate authority: join, renewal, issuance, node administration, revocation,
 * tokens, settings. Routes and commands call this; the rules it applies each have a module
 * of their own — who may do what (admission.ts), what certificates say (policy.ts), serials
 * (serials.ts), the CA generations and their keys (keyring.ts), settings (config.ts), how
 * records are shown (views.ts) — and it records through the Store interface.
 */
import { KeyObject, X509Certificate } from 'node:crypto';
import {
  certificateToPem, csrDerFrom, DAY_MS, ID_RE, NameAttrs, parseCsr, randomId, serialHex, spkiDer,
  SubjectAltName, isRevocationReason, REVOCATION_REASONS,
} from '../pki/index.js';
import type { JoinTokenTable, NodeTable, Store } from '../store/store.js';
import { CairnError, fromPki, RetryLater } from '../util/errors.js';
import { Adopter, admitJoin, admitRecovery, admitRenewal, identifyPeer, PeerCertificate, PeerIdentity, renewalHint, takeRenewalBudget, useAdmittedToken } from './admission.js';
import { adoptNodeCertificate } from './clone.js';
import { checkConfigPatch, ClusterConfig, configFrom, DEFAULT_CONFIG, DEFAULT_URL_SETTINGS, UrlSettings } from './config.js';
import type { KeySources } from './ca-keys.js';
import { CaKeyring, CaName, LoadedCa, type KeyResolver } from './keyring.js';
import type { IssuedCertificate } from './signer.js';
import { isRetiredIssuer, rotationView, type RotationView } from './rotation.js';
import { page, PageRequest } from './pages.js';
import { adminPolicy, LeafPolicy, nodePolicy, replicaPolicy, replicaSubject, revocationPointers, subjectString } from './policy.js';
import { SigningKeys } from './signing-keys.js';
import { SerialSource } from './serials.js';
import { checkTokenRequest, isRole, joinTokenState, mintJoinTokens, mintLimitedToken, Role } from './tokens.js';
import { certificateView, listedNodeView, nodeFilter, NodeListRequest, nodeView, NodeView } from './views.js';

export type { PeerCertificate, PeerIdentity } from './admission.js';
export { DEFAULT_CERT_EXPIRY_MS, DEFAULT_CONFIG, MIN_CERT_EXPIRY_MS, type ClusterConfig } from './config.js';
export type { LoadedCa } from './keyring.js';
export type { NodeListRequest, NodeView } from './views.js';

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

/** A limited join token as the API shows it (never its secret). */
function limitedTokenView(t: JoinTokenTable, now: number) {
  return {
    id: t.id,
    role: t.role,
    state: joinTokenState(t, now),
    uses: Number(t.uses),
    maxUses: Number(t.max_uses),
    expiresAt: new Date(Number(t.expires_at)).toISOString(),
    createdAt: new Date(Number(t.created_at)).toISOString(),
    revokedAt: t.revoked_at === null ? null : new Date(Number(t.revoked_at)).toISOString(),
  };
}

/** How many revoked serials an answer (and the audit record) lists; the count is always exact. */
export const MAX_LISTED_SERIALS = 1000;


export class Authority {
  clusterId = '';
  clusterName = '';
  config: ClusterConfig & UrlSettings = { ...DEFAULT_CONFIG, ...DEFAULT_URL_SETTINGS };
  private keyring!: CaKeyring;
  private serials: SerialSource;
  /** where a rotation can put a new generation's key (ca-keys.ts): carried, not looked into */
  keySources: KeySources = {};
  /** the OCSP and audit signing certificates (signing-keys.ts) */
  readonly signingKeys: SigningKeys;

  constructor(
    readonly store: Store,
    readonly replicaId: string,
    private readonly unlockKey: Buffer,
    /** reaches CA keys the store does not seal (ca-keys.ts): a PKCS#11 token, an external CA */
    private readonly resolveKey?: KeyResolver,
  ) {
    this.serials = new SerialSource(store, () => this.config);
    store.origin = replicaId;
    this.signingKeys = new SigningKeys(this, unlockKey);
  }

  /** Load cluster identity, CA material (unsealed with the unlock key) and configuration. */
  async load(): Promise<void> {
    const cluster = await this.store.getCluster();
    if (!cluster) throw new CairnError('not_initialized', 'the store holds no cluster: run "cairn init" first');
    this.clusterId = cluster.id;
    this.clusterName = cluster.name;
    await this.refreshConfig();
    this.keyring = CaKeyring.load(await this.store.listCas(), await this.store.listRotations(), this.unlockKey, this.resolveKey);
  }

  /**
   * Reload the keyring when the stored generations or rotations changed (another replica
   * rotated, finished or aborted). Returns whether anything changed.
   */
  async reloadKeyring(): Promise<boolean> {
    const rows = await this.store.listCas();
    const rotations = await this.store.listRotations();
    const same = CaKeyring.versionOf(rows, rotations) === this.keyring.version;
    // a key this process could not reach last time is tried again
    if (same && !this.keyring.retryUnreachable) return false;
    await this.refreshConfig(); // a rotation to an external CA records its URLs with it
    this.keyring = CaKeyring.load(rows, rotations, this.unlockKey, this.resolveKey, true);
    return !same;
  }

  /** The next serial (rotation.ts: the new root and its cross-signed certificate). */
  nextSerial(): Promise<Buffer> {
    return this.serials.next();
  }

  /** The unlock key, to seal a new generation's key (rotation.ts). */
  unlockKeyForRotation(): Buffer {
    return this.unlockKey;
  }

  /** The CA generations, as loaded (rotation.ts, CRLs, GET /v1/ca). */
  get cas(): CaKeyring {
    return this.keyring;
  }

  async refreshConfig(s: Store = this.store): Promise<ClusterConfig & UrlSettings> {
    this.config = configFrom(await s.getConfig());
    return this.config;
  }

  // ---- public CA information

  get clusterRootDer(): Buffer {
    return this.keyring.signer('cluster').certDer;
  }

  get clusterRootKeyId(): string {
    return this.keyring.signer('cluster').row.key_id;
  }

  /** Digest carried by join tokens: of the current cluster root. */
  get digest(): string {
    return this.keyring.digest;
  }

  /** Every certificate a node must trust. */
  trustBundle(): string {
    return this.keyring.trustBundle;
  }

  /** Certificates a TLS server accepts client certificates from (cluster and client roots). */
  clientTrust(): Buffer[] {
    return this.keyring.clientTrust();
  }

  caInfo() {
    // asked by every join and every node's long poll: built once per CA version and rotation view
    const m = this.caInfoMemo;
    if (m && m.version === this.keyring.version && m.rotation === this.rotationCache && m.digest === this.digest) return m.info;
    const info = Object.freeze(this.buildCaInfo()); // shared by every caller: none may change it
    this.caInfoMemo = { version: this.keyring.version, rotation: this.rotationCache, digest: this.digest, info };
    return info;
  }

  /** caInfo() as JSON, serialized once per CA version (GET /v1/ca of every join). */
  caInfoJson(): string {
    const info = this.caInfo();
    const m = this.caInfoMemo!;
    return (m.json ??= JSON.stringify(info));
  }

  private caInfoMemo: { version: string; rotation: RotationView | null; digest: string; info: Readonly<ReturnType<Authority['buildCaInfo']>>; json?: string } | null = null;

  private buildCaInfo() {
    return {
      clusterId: this.clusterId,
      // the roots peers anchor in: an intermediate's own root (its certificate is in `intermediates`)
      roots: { cluster: certificateToPem(this.keyring.signer('cluster').anchorDer), client: certificateToPem(this.keyring.signer('client').anchorDer) },
      intermediates: this.keyring.signer('cluster').intermediates.map((d) => certificateToPem(d)),
      trustBundle: this.trustBundle(),
      digest: this.digest,
      crossSigned: this.keyring.crossSigned(),
      rotation: this.rotationCache,
      version: this.keyring.version,
    };
  }

  /** The cluster CA's rotation as GET /v1/ca shows it; refreshed by the replica's CA watcher (progress is a count). */
  private rotationCache: RotationView | null = null;

  async refreshRotationView(): Promise<RotationView | null> {
    const r = this.keyring.runningRotation('cluster') ?? this.keyring.rotations.filter((x) => x.ca === 'cluster').at(-1);
    // a finished rotation shows until the next one; progress is counted only while one runs
    this.rotationCache = r && (r.state === 'running' || this.rotationCache?.id !== r.id || this.rotationCache.state !== r.state) ? await rotationView(this.store, this, r) : this.rotationCache;
    return this.rotationCache;
  }

  /** Key IDs of every generation of a CA. */
  caKeyIds(ca: CaName): string[] {
    return this.keyring.keyIds(ca);
  }

  /** The generation that signs for a CA now. */
  signingCa(ca: CaName): { keyId: string; generation: number } {
    const s = this.keyring.signer(ca);
    return { keyId: s.row.key_id, generation: s.row.generation };
  }

  /** Every CA generation (OCSP answers for each; signing-keys.ts issues a responder per active one). */
  caGenerations(): readonly LoadedCa[] {
    return this.keyring.cas;
  }

  /**
   * Sign a leaf of `policy` under a CA's signing generation for a key, and the record that
   * says so; nothing is recorded here (bundles.ts and signing-keys.ts record it in their
   * transaction).
   */
  async signLeaf(ca: CaName, kind: string, policy: LeafPolicy, publicKey: KeyObject) {
    const c = await this.issue(policy, { publicKey, publicKeyDer: spkiDer(publicKey) }, ca);
    return { ...c, record: this.certRecord(c, kind, policy.subject, null, null) };
  }

  // ---- issuance

  /**
   * Issue under the cluster CA's signing generation, through the signer seam (signer.ts):
   * the serial is reserved first, then the certificate signed; nothing is recorded here and
   * nothing signs inside a transaction (callers record in a short one afterwards).
   */
  private async issue(policy: LeafPolicy, key: { publicKeyDer: Buffer; publicKey: KeyObject; csrDer?: Buffer }, ca: CaName = 'cluster'): Promise<IssuedCertificate> {
    // revocation pointers (cairn update --ocsp-url/--crl-url) on every leaf but an OCSP responder's
    const withPointers = policy.ocspNoCheck ? policy : { ...policy, ...revocationPointers(this.config, ca) };
    const serial = await this.serials.next();
    const c = await this.keyring.signer(ca).issuer.issue({ policy: withPointers, ...key, serial });
    // a serial cairn did not make (an external CA's) must still be unique in the store
    if (c.serial !== serialHex(serial) && (await this.store.getCertificate(c.serial))) {
      throw new RetryLater('unavailable', `the external CA issued serial ${c.serial} a second time: refused`, 1000);
    }
    return c;
  }

  /** A leaf and the CA certificates sent after it (PEM). */
  private chainPem(c: IssuedCertificate): string {
    return [c.der, ...c.chain].map((d) => certificateToPem(d)).join('');
  }

  private parseRequest(csr: unknown) {
    if (typeof csr !== 'string' || csr.length === 0) throw new CairnError('bad_request', 'missing field "csr" (a PEM certificate request)');
    const csrDer = fromPki(() => csrDerFrom(csr));
    return { ...fromPki(() => parseCsr(csrDer)), csrDer };
  }

  private issued(nodeId: string, role: Role, c: IssuedCertificate): IssuedNode {
    return {
      nodeId,
      role,
      clusterId: this.clusterId,
      certificate: this.chainPem(c),
      trustBundle: this.trustBundle(),
      serial: c.serial,
      notAfter: c.notAfter,
    };
  }

  private certRecord(c: IssuedCertificate, kind: string, subject: NameAttrs, nodeId: string | null, role: string | null) {
    return {
      serial: c.serial,
      kind,
      node_id: nodeId,
      role,
      subject: subjectString(subject),
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
    const admitted = await admitJoin(this.store, this.digest, token);
    const role = admitted.role;
    const req = this.parseRequest(csr);
    const nodeId = randomId();
    const policy = nodePolicy(this.clusterId, nodeId, role, this.config.certExpiryMs);
    const c = await this.issue(policy, req);
    const now = Date.now();
    await this.store.transaction(async (tx) => {
      // a limited token's use is counted with the join: a join refused later does not spend it
      await useAdmittedToken(tx, admitted, now);
      await tx.insertNode({ id: nodeId, role, status: 'active', created_at: now, updated_at: now, current_serial: c.serial, previous_serial: null, renewed_at: now, renew_budget: null, renew_budget_at: null, renew_requested_at: null });
      await tx.insertCertificate(this.certRecord(c, 'node', policy.subject, nodeId, role));
      await tx.audit(`token:${role}`, 'node.join', { node: nodeId, role, serial: c.serial });
    });
    return this.issued(nodeId, role, c);
  }

  /**
   * Identify the holder of a TLS client certificate (already chain-verified by the TLS
   * layer): it must be from this cluster, recorded by this CA, good and unexpired.
   */
  async identifyPeer(peer: PeerCertificate | undefined): Promise<PeerIdentity> {
    return identifyPeer(this.store, this.clusterId, peer, this.adopt, this.untrusted);
  }

  /** A node certificate issued by another controller holding the same CA keys (see clone.ts). */
  private adopt: Adopter = (der, serial) => adoptNodeCertificate(this, der, serial);

  /** A certificate the TLS layer did not accept: one of a retired generation must join again. */
  private untrusted = (der: Buffer) => isRetiredIssuer(this, der);

  /** For a node calling with its certificate: its role, and whether it should renew now (admission.ts). */
  async nodeRenewalHint(peer: PeerCertificate): Promise<{ id: string; role: string; renew: boolean } | null> {
    const hint = await renewalHint(this.store, () => this.identifyPeer(peer));
    if (!hint || hint.renew) return hint;
    // a running rotation asked this node to renew, and its current certificate is not from the new key
    const rotation = this.keyring.runningRotation('cluster');
    if (rotation) {
      const n = await this.store.getNode(hint.id);
      if (n?.renew_requested_at && n.current_serial) {
        const c = await this.store.getCertificate(n.current_serial);
        if (c && c.issuer_key_id !== this.keyring.signer('cluster').row.key_id) return { ...hint, renew: true };
      }
    }
    return hint;
  }

  /**
   * Renewal: same node ID, the node's current role, a fresh key from the CSR. The rules of who
   * may renew are in admission.ts; they are applied under the node's row lock, from reading
   * the node to recording the new certificate, so a removal or revocation committed before
   * wins and one committed after also revokes what this renewal issued.
   */
  async renew(peer: PeerIdentity, csr: unknown): Promise<IssuedNode> {
    if (peer.kind !== 'node' || !peer.nodeId) throw new CairnError('forbidden', 'only node certificates can renew');
    const req = this.parseRequest(csr);
    const nodeId = peer.nodeId;
    // the cheap rules once before signing (a removed or over-budget node costs no signature)...
    const before = await this.precheckRenewal(nodeId);
    const policy = nodePolicy(this.clusterId, nodeId, before.role, this.config.certExpiryMs);
    const c = await this.issue(policy, req);
    // ...and again under the node's row lock, where the certificate is recorded
    await this.store.transaction(async (tx) => {
      const { admitted, role } = await this.admitRenewalIn(tx, nodeId, peer.serial);
      // a role change between the two reads: the certificate just signed says the old role
      if (role !== before.role) throw new RetryLater('renewal_conflict', `node ${nodeId} changed role during its renewal; renew again`, 1000);
      const now = Date.now();
      await tx.insertCertificate(this.certRecord(c, 'node', policy.subject, nodeId, role));
      await tx.updateNode(nodeId, { current_serial: c.serial, previous_serial: peer.serial, renewed_at: now, renew_budget: admitted.budget, renew_budget_at: now, renew_requested_at: null });
      // the grace path: the newest certificate never reached the node (or someone else holds it)
      if (admitted.abandoned) await tx.revokeCertificates([admitted.abandoned], 'superseded');
      // a demoted node's manager certificates lose their privilege once its worker certificate exists
      const withdrawn = role === 'worker' ? await tx.revokeNodeCertificates(nodeId, 'privilegeWithdrawn', { role: 'manager' }) : [];
      if (admitted.abandoned || withdrawn.length) {
        await tx.audit(`node:${nodeId}`, 'node.renew.revoked', { node: nodeId, superseded: admitted.abandoned, privilegeWithdrawn: withdrawn });
      }
      await tx.audit(`node:${peer.serial}`, 'node.renew', { node: nodeId, role, serial: c.serial, from: peer.serial });
    });
    return this.issued(nodeId, before.role, c);
  }

  /** Before signing: the node is active and has renewal budget left (one read; admission.ts decides again under the lock). */
  private async precheckRenewal(nodeId: string): Promise<{ role: Role }> {
    const node = await this.store.getNode(nodeId);
    if (!node || node.status !== 'active') throw new CairnError('node_removed', `node ${nodeId} has been removed from the cluster`);
    takeRenewalBudget(node, Date.now(), this.config);
    return { role: node.role as Role };
  }

  /** Who may renew (admission.ts), read in the transaction `tx` under the node's row lock. */
  private async admitRenewalIn(tx: Store, nodeId: string, serial: string) {
    const node = await tx.lockNode(nodeId);
    const presented = await tx.getCertificate(serial);
    const newest = node?.current_serial && node.current_serial !== serial ? await tx.getCertificate(node.current_serial) : undefined;
    const admitted = admitRenewal(nodeId, node, presented, newest, Date.now(), this.config);
    return { admitted, role: node!.role as Role };
  }

  /**
   * Recovery after expiry (`join --recover`): a node whose certificate expired while it was
   * down gets a new one with the same node ID and role, when the rules of admission.ts
   * (`admitRecovery`) allow it — applied under the node's row lock, like a renewal.
   */
  async recover(nodeIdIn: unknown, token: unknown, csr: unknown): Promise<IssuedNode> {
    if (typeof nodeIdIn !== 'string' || !ID_RE.test(nodeIdIn)) throw new CairnError('bad_request', 'field "nodeId" must be a node ID');
    const nodeId = nodeIdIn;
    const admitted = await admitJoin(this.store, this.digest, token);
    const req = this.parseRequest(csr);
    // the rules once before signing, and again under the node's row lock where it is recorded
    // (the first read takes no lock: the row lock is taken, and everything read again, in the transaction)
    const check = async (s: Store, lock: boolean) => {
      const node = lock ? await s.lockNode(nodeId) : await s.getNode(nodeId);
      const newest = node?.current_serial ? await s.getCertificate(node.current_serial) : undefined;
      const newestKey = newest ? { status: newest.status, not_after: Number(newest.not_after), publicKeyDer: new X509Certificate(newest.cert_pem).publicKey.export({ type: 'spki', format: 'der' }) } : undefined;
      admitRecovery(nodeId, node, newestKey, req.publicKeyDer, admitted.role, Date.now(), this.config.recoveryWindowMs);
      return { role: node!.role as Role, expired: newest!.serial };
    };
    const before = await check(this.store, false);
    const policy = nodePolicy(this.clusterId, nodeId, before.role, this.config.certExpiryMs);
    const c = await this.issue(policy, req);
    await this.store.transaction(async (tx) => {
      const { role, expired } = await check(tx, true);
      if (role !== before.role) throw new RetryLater('renewal_conflict', `node ${nodeId} changed role during its recovery; try again`, 1000);
      const now = Date.now();
      await useAdmittedToken(tx, admitted, now);
      await tx.insertCertificate(this.certRecord(c, 'node', policy.subject, nodeId, role));
      await tx.updateNode(nodeId, { current_serial: c.serial, previous_serial: null, renewed_at: now, renew_budget: null, renew_budget_at: null, renew_requested_at: null });
      await tx.audit(`node:${nodeId}`, 'node.recover', { node: nodeId, expired, serial: c.serial });
    });
    return this.issued(nodeId, before.role, c);
  }

  /** A certificate for a CA replica's HTTPS server: `DNS:ca` plus the names given. */
  async issueServerCertificate(publicKey: KeyObject, publicKeyDer: Buffer, names: SubjectAltName[], lifetimeMs?: number, csrDer?: Buffer) {
    const policy = replicaPolicy(this.clusterId, this.replicaId, names, lifetimeMs);
    const c = await this.issue(policy, { publicKey, publicKeyDer, csrDer });
    await this.store.transaction(async (tx) => {
      await tx.insertCertificate(this.certRecord(c, 'server', policy.subject, null, null));
      await tx.audit(`replica:${this.replicaId}`, 'replica.certificate', { replica: this.replicaId, serial: c.serial });
    });
    return { certificate: this.chainPem(c), serial: c.serial, notAfter: c.notAfter, issuerKeyId: c.issuerKeyId };
  }

  /** An admin client certificate (issued by the cluster root, OU=admin). */
  async issueAdminCertificate(publicKey: KeyObject, publicKeyDer: Buffer, name = 'admin', lifetimeMs?: number, csrDer?: Buffer) {
    const policy = adminPolicy(this.clusterId, name, lifetimeMs);
    const c = await this.issue(policy, { publicKey, publicKeyDer, csrDer });
    await this.store.transaction(async (tx) => {
      await tx.insertCertificate(this.certRecord(c, 'admin', policy.subject, null, null));
      await tx.audit('cli', 'admin_certificate.issue', { serial: c.serial, name });
    });
    return { certificate: this.chainPem(c), serial: c.serial, notAfter: c.notAfter };
  }

  // ---- tokens

  /** Replace the secret of a role's join token; the old one stops working at once. */
  async rotateToken(role: string, actor = 'admin'): Promise<string> {
    if (!isRole(role)) throw new CairnError('bad_request', `unknown role "${role}": use worker or manager`);
    return this.store.transaction(async (tx) => {
      const tokens = await mintJoinTokens(tx, this.digest, [role]);
      await tx.audit(actor, 'token.rotate', { role });
      return tokens[role]!;
    });
  }

  /** A join token with a lifetime and a number of uses (counted atomically across replicas); returned this once. */
  async createToken(body: { role?: unknown; ttlMs?: unknown; uses?: unknown }, actor = 'admin') {
    const r = checkTokenRequest(body);
    const now = Date.now();
    const { row, token } = mintLimitedToken(this.digest, r, now);
    await this.store.transaction(async (tx) => {
      await tx.insertJoinToken(row);
      await tx.audit(actor, 'token.create', { id: row.id, role: row.role, uses: row.max_uses, expiresAt: row.expires_at });
    });
    return { ...limitedTokenView(row, now), token };
  }

  async listTokens() {
    const now = Date.now();
    return { tokens: (await this.store.listJoinTokens()).map((t) => limitedTokenView(t, now)) };
  }

  async revokeToken(id: string, actor = 'admin') {
    if (!ID_RE.test(id)) throw new CairnError('not_found', `no token "${id}"`);
    return this.store.transaction(async (tx) => {
      if (!(await tx.revokeJoinToken(id, Date.now()))) throw new CairnError('not_found', `no token ${id} (or it is revoked already)`);
      await tx.audit(actor, 'token.revoke', { id });
      return { id, state: 'revoked' as const };
    });
  }

  // ---- nodes

  /**
   * Remove the active nodes whose newest certificate expired more than `expiredForMs` ago
   * (they can no longer renew, nor recover once past the recovery window): the same removal
   * as `node rm`, so they cannot come back. Also what becomes of a join whose answer never
   * reached its node. Returns the IDs removed.
   */
  async pruneNodes(expiredForMs: unknown, actor = 'admin'): Promise<{ removed: string[] }> {
    if (typeof expiredForMs !== 'number' || !Number.isInteger(expiredForMs) || expiredForMs < 0) throw new CairnError('bad_request', 'expiredForMs must be a non-negative integer');
    const cutoff = Date.now() - expiredForMs;
    const removed: string[] = [];
    for (;;) {
      const batch = await this.store.expiredNodes(cutoff, 500);
      if (batch.length === 0) break;
      const done = await this.store.transaction(async (tx) => {
        const out: string[] = [];
        for (const id of batch) {
          const n = await tx.lockNode(id);
          const c = n?.current_serial ? await tx.getCertificate(n.current_serial) : undefined;
          // as it is now that we hold the lock: a node that renewed or recovered meanwhile stays
          if (!n || n.status !== 'active' || (c && Number(c.not_after) > cutoff)) continue;
          await this.removeNodeIn(tx, id);
          out.push(id);
        }
        if (out.length) await tx.audit(actor, 'node.prune', { expiredForMs, count: out.length, nodes: out.slice(0, MAX_LISTED_SERIALS) });
        return out;
      });
      removed.push(...done);
      if (done.length < batch.length || batch.length < 500) break;
    }
    return { removed };
  }

  async nodeView(n: NodeTable, s: Store = this.store): Promise<NodeView> {
    return nodeView(n, (n.current_serial ? await s.getCertificate(n.current_serial) : undefined) ?? null);
  }

  /**
   * One page of nodes with their current certificate (one query per page): oldest first, or
   * in the order `sort` names (then by ID), filtered by role, status and ID prefix.
   */
  async listNodes(req: NodeListRequest = {}): Promise<{ nodes: NodeView[]; next: string | null }> {
    const f = nodeFilter(req);
    const r = await page(
      req,
      (after, limit) => this.store.listNodesPage({ ...f, after, limit }),
      (n) => ({ t: Number(n.sort_t), k: n.id }),
      listedNodeView,
    );
    return { nodes: r.items, next: r.next };
  }

  /** The node, or not_found; with `lock`, its row stays locked until the transaction ends. */
  private async requireNode(id: string, s: Store = this.store, lock = false): Promise<NodeTable> {
    if (!ID_RE.test(id)) throw new CairnError('not_found', `no node "${id}"`);
    const n = lock ? await s.lockNode(id) : await s.getNode(id);
    if (!n) throw new CairnError('not_found', `no node ${id}`);
    return n;
  }

  async getNode(id: string): Promise<NodeView> {
    return this.nodeView(await this.requireNode(id));
  }

  /** Change a node's role; it takes effect at the node's next renewal. */
  async setRole(id: string, role: Role, actor = 'admin'): Promise<NodeView> {
    return this.store.transaction(async (tx) => {
      const n = await this.requireNode(id, tx, true);
      if (n.status !== 'active') throw new CairnError('node_removed', `node ${id} has been removed`);
      if (n.role !== role) {
        await tx.updateNode(id, { role });
        await tx.audit(actor, role === 'manager' ? 'node.promote' : 'node.demote', { node: id });
      }
      return this.nodeView({ ...n, role }, tx);
    });
  }

  /**
   * What removing a node is, in the caller's transaction (node rm, prune, a rotation finished
   * without it): it can no longer renew, and its certificates are recorded as revoked. Returns
   * the serials revoked.
   */
  async removeNodeIn(tx: Store, id: string): Promise<string[]> {
    await tx.updateNode(id, { status: 'removed' });
    return tx.revokeNodeCertificates(id, 'cessationOfOperation');
  }

  /** Remove a node: it can no longer renew, and its certificates are recorded as revoked. */
  async removeNode(id: string, actor = 'admin'): Promise<NodeView> {
    return this.store.transaction(async (tx) => {
      const n = await this.requireNode(id, tx, true); // waits for a renewal in flight, whose certificate is then revoked too
      const revoked = await this.removeNodeIn(tx, id);
      await tx.audit(actor, 'node.remove', { node: id, revoked: revoked.length });
      return this.nodeView({ ...n, status: 'removed' }, tx);
    });
  }

  // ---- replicas

  /**
   * Remove another replica: it may not serve again, and its server certificates are revoked
   * (agents holding the CRL stop trusting it). Not the replica answering: ask another one.
   */
  async removeReplica(id: string, actor = 'admin'): Promise<{ id: string; revoked: string[] }> {
    if (id === this.replicaId) throw new CairnError('bad_request', `replica ${id} is the one answering this request: remove it through another replica`);
    return this.store.transaction(async (tx) => {
      const r = ID_RE.test(id) ? await tx.getReplica(id) : undefined;
      if (!r || r.removed_at !== null) throw new CairnError('not_found', `no replica "${id}"`);
      const revoked = await tx.removeReplica(id, subjectString(replicaSubject(this.clusterId, id)));
      await tx.audit(actor, 'replica.remove', { replica: id, revoked });
      return { id, revoked };
    });
  }

  // ---- certificates and revocation

  /** One page of certificates, oldest first; `expiringDays`: unexpired, expiring within that many days. */
  async findCertificates(f: { nodeId?: string; status?: string; kind?: string; expiringDays?: number } & PageRequest) {
    if (f.status && !['good', 'revoked'].includes(f.status)) throw new CairnError('bad_request', 'status must be good or revoked');
    if (f.expiringDays !== undefined && (f.expiringDays < 1 || f.expiringDays > 36_500)) throw new CairnError('bad_request', 'expiring must be a number of days between 1 and 36500');
    const now = Date.now();
    const notAfterBetween: [number, number] | undefined = f.expiringDays === undefined ? undefined : [now, now + f.expiringDays * DAY_MS];
    const r = await page(
      f,
      (after, limit) => this.store.findCertificatesPage({ nodeId: f.nodeId, status: f.status, kind: f.kind, notAfterBetween, after, limit }),
      (c) => ({ t: Number(c.created_at), k: c.serial }),
      certificateView,
    );
    return { certificates: r.items, next: r.next };
  }

  async getCertificate(serial: string) {
    const r = await this.getCertificateIn(serial, this.store);
    return { ...certificateView(r), pem: r.cert_pem };
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
    return this.store.transaction(async (tx) => {
      let revoked: string[];
      if (target.serial) {
        let c = await this.getCertificateIn(target.serial, tx);
        if (c.node_id) {
          await tx.lockNode(c.node_id);
          c = await this.getCertificateIn(c.serial, tx); // as it is now that we hold the lock
        }
        if (c.status === 'revoked') throw new CairnError('already_revoked', `certificate ${c.serial} is already revoked`);
        if (c.kind === 'admin' && !opts.force) {
          const admins = await tx.lockGoodAdminCertificates(Date.now());
          if (admins.length === 1 && admins[0] === c.serial) {
            throw new CairnError(
              'last_admin',
              `certificate ${c.serial} is the last good admin certificate: revoking it would lock every administrator out; ` +
                'issue another first ("cairn admin-bundle"), or use --force',
            );
          }
        }
        revoked = await tx.revokeCertificates([c.serial], why);
      } else if (target.nodeId) {
        await this.requireNode(target.nodeId, tx, true);
        revoked = await tx.revokeNodeCertificates(target.nodeId, why);
      } else {
        throw new CairnError('bad_request', 'give a serial or a node');
      }
      await tx.audit(actor, 'certificate.revoke', { count: revoked.length, serials: revoked.slice(0, MAX_LISTED_SERIALS), reason: why, node: target.nodeId ?? null });
      return { revoked: revoked.length, serials: revoked.slice(0, MAX_LISTED_SERIALS), reason: why };
    });
  }

  private async getCertificateIn(serial: string, store: Store) {
    const s = serial.replace(/:/g, '').toUpperCase();
    const r = /^[0-9A-F]{2,40}$/.test(s) ? await store.getCertificate(s) : undefined;
    if (!r) throw new CairnError('not_found', `no certificate with serial ${serial}`);
    return r;
  }

  /** The newest CRL of a CA, as stored by the CRL leader. */
  async latestCrl(ca: string): Promise<Buffer | null> {
    this.checkCrlName(ca);
    const r = await this.store.latestCrl(ca);
    return r ? Buffer.from(r.der, 'base64') : null;
  }

  /** CRLs are named `cluster` and `client` (the signing generations), or after an older generation's row (keyring.ts crlScopes). */
  private checkCrlName(ca: string): void {
    if (!this.keyring.crlScopes().some((s) => s.name === ca) && ca !== 'cluster' && ca !== 'client') {
      throw new CairnError('not_found', `no CA "${ca}": use cluster or client (or a CA generation, e.g. cluster-root-ca-1)`);
    }
  }

  /** The number of the newest CRL of a CA, or null before the first. */
  async latestCrlNumber(ca: string): Promise<number | null> {
    this.checkCrlName(ca);
    return (await this.store.latestCrlNumber(ca)) ?? null;
  }

  // ---- configuration

  async updateConfig(patch: Record<string, unknown>, actor = 'admin'): Promise<ClusterConfig & UrlSettings> {
    const allowed = checkConfigPatch(patch);
    await this.store.transaction(async (tx) => {
      await tx.setConfig(allowed);
      await tx.audit(actor, 'config.update', allowed);
    });
    return this.refreshConfig();
  }
}
