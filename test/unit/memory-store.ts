/**
 * An in-process Store for unit tests of the authority's rules: every table is an array in
 * memory; transactions run one at a time (so row locks hold trivially) and roll back by
 * restoring a copy taken when they began. It implements the same interface as the SQL store
 * and is used where a test is about cairn's rules, not about the database; the integration
 * tests run the same rules on real SQLite and PostgreSQL.
 */
import { auditEntryHash, GENESIS_HASH } from '../../src/store/audit-chain.js';
import type {
  AuditHeadTable, AuditOptions, AuditSealTable, AuditTable, SigningKeyTable, CaTable, CertificateFilter, CertificateTable, ClusterTable, CrlTable, FailureTable, JoinTokenTable, LeaseTable, NodePageQuery, NodeTable, NodeWithCertificate,
  PageKey, ReplicaTable, RotationTable, Store, TableRow,
} from '../../src/store/store.js';

interface Tables {
  cluster: ClusterTable[];
  config: { key: string; value: string; updated_at: number }[];
  cas: CaTable[];
  certificates: CertificateTable[];
  nodes: NodeTable[];
  tokens: { role: string; secret_hash: string; created_at: number }[];
  join_tokens: JoinTokenTable[];
  sequences: { name: string; next: number }[];
  replicas: ReplicaTable[];
  leases: LeaseTable[];
  audit: AuditTable[];
  audit_head: AuditHeadTable[];
  audit_seals: AuditSealTable[];
  signing_keys: SigningKeyTable[];
  crls: CrlTable[];
  failures: FailureTable[];
  rotations: RotationTable[];
}

const empty = (): Tables => ({
  cluster: [], config: [], cas: [], certificates: [], nodes: [], tokens: [], join_tokens: [], sequences: [], replicas: [], leases: [], audit: [], audit_head: [], audit_seals: [], signing_keys: [], crls: [], failures: [], rotations: [],
});
const copy = <T>(x: T): T => structuredClone(x);
const after = (a: PageKey | undefined, t: number, k: string) => !a || t > a.t || (t === a.t && k > a.k);
const byCreated = <R extends { created_at: number }>(key: (r: R) => string) => (x: R, y: R) => x.created_at - y.created_at || (key(x) < key(y) ? -1 : key(x) > key(y) ? 1 : 0);

export class MemoryStore implements Store {
  readonly kind = 'memory' as const;
  readonly location = 'memory';
  origin = '';
  t: Tables = empty();
  private queue: Promise<unknown> = Promise.resolve();
  private inTx = false;
  /** every audit record, for assertions */
  get auditLog() {
    return this.t.audit.map((a) => ({ ...a, detail: JSON.parse(a.detail) as Record<string, unknown> }));
  }

  async close() {}
  async ping() {}

  async replication() {
    return null;
  }

  transaction<T>(fn: (tx: Store) => Promise<T>): Promise<T> {
    if (this.inTx) return fn(this);
    const run = async () => {
      const saved = copy(this.t);
      this.inTx = true;
      try {
        return await fn(this);
      } catch (e) {
        this.t = saved;
        throw e;
      } finally {
        this.inTx = false;
      }
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => {});
    return p;
  }

  snapshot<T>(fn: (tx: Store) => Promise<T>): Promise<T> {
    return this.transaction(fn);
  }

  // ---- cluster and configuration
  async getCluster() {
    return copy(this.t.cluster[0]);
  }
  async listClusters() {
    return copy(this.t.cluster);
  }
  async insertCluster(c: ClusterTable) {
    if (this.t.cluster.some((x) => x.id === c.id)) throw new Error('duplicate cluster');
    this.t.cluster.push(copy(c));
  }
  async setClusterId(from: string, to: string) {
    for (const c of this.t.cluster) if (c.id === from) c.id = to;
  }
  async getConfig() {
    return Object.fromEntries(this.t.config.map((r) => [r.key, JSON.parse(r.value)]));
  }
  async setConfig(values: Record<string, unknown>) {
    for (const [key, v] of Object.entries(values)) {
      this.t.config = this.t.config.filter((r) => r.key !== key);
      this.t.config.push({ key, value: JSON.stringify(v), updated_at: Date.now() });
    }
  }

  // ---- CAs
  async listCas() {
    return copy([...this.t.cas].sort((a, b) => a.generation - b.generation));
  }
  async insertCa(ca: CaTable) {
    this.t.cas.push(copy(ca));
  }
  async replaceCas(rows: CaTable[]) {
    this.t.cas = copy(rows);
  }
  async updateCa(id: string, set: Partial<Pick<CaTable, 'status' | 'retired_at' | 'key_sealed'>>) {
    const c = this.t.cas.find((x) => x.id === id);
    if (c) Object.assign(c, copy(set));
  }

  // ---- rotations
  async listRotations() {
    return copy([...this.t.rotations].sort((a, b) => a.started_at - b.started_at));
  }
  async insertRotation(r: RotationTable) {
    this.t.rotations.push(copy(r));
  }
  async updateRotation(id: string, set: Partial<Pick<RotationTable, 'state' | 'finished_at'>>) {
    const r = this.t.rotations.find((x) => x.id === id);
    if (r) Object.assign(r, copy(set));
  }
  private withIssuer() {
    return this.t.nodes
      .filter((n) => n.status === 'active')
      .map((n) => ({ n, issuer: this.t.certificates.find((c) => c.serial === n.current_serial)?.issuer_key_id ?? null }));
  }
  async rotationProgress(keyId: string) {
    const all = this.withIssuer();
    return { total: all.length, converged: all.filter((x) => x.issuer === keyId).length };
  }
  async unconvergedNodes(keyId: string, limit: number) {
    return this.withIssuer()
      .filter((x) => x.issuer !== keyId)
      .sort((a, b) => (a.n.renewed_at ?? 0) - (b.n.renewed_at ?? 0) || (a.n.id < b.n.id ? -1 : 1))
      .slice(0, limit)
      .map((x) => ({ id: x.n.id, role: x.n.role, renewed_at: x.n.renewed_at, issuer_key_id: x.issuer }));
  }
  async requestRenewals(keyId: string, limit: number, now: number) {
    const pick = this.withIssuer()
      .filter((x) => x.issuer !== keyId && x.n.renew_requested_at === null)
      .sort((a, b) => (a.n.id < b.n.id ? -1 : 1))
      .slice(0, limit);
    for (const x of pick) x.n.renew_requested_at = now;
    return pick.map((x) => x.n.id);
  }
  async renewalRequestsSince(t: number) {
    return this.t.nodes.filter((n) => (n.renew_requested_at ?? 0) > t).map((n) => n.id);
  }
  async clearRenewalRequests() {
    for (const n of this.t.nodes) n.renew_requested_at = null;
  }

  // ---- certificates
  async insertCertificate(c: CertificateTable) {
    if (this.t.certificates.some((x) => x.serial === c.serial)) throw new Error(`duplicate serial ${c.serial}`);
    this.t.certificates.push(copy(c));
  }
  async insertCertificateIfAbsent(c: CertificateTable) {
    if (!this.t.certificates.some((x) => x.serial === c.serial)) this.t.certificates.push(copy(c));
  }
  async getCertificate(serial: string) {
    return copy(this.t.certificates.find((c) => c.serial === serial));
  }
  async listCertificateOwners() {
    return this.t.certificates.map(({ serial, kind, node_id }) => ({ serial, kind, node_id }));
  }
  private filtered(f: CertificateFilter) {
    return this.t.certificates
      .filter((c) => (!f.nodeId || c.node_id === f.nodeId) && (!f.status || c.status === f.status) && (!f.kind || c.kind === f.kind) && (!f.subject || c.subject === f.subject))
      .sort(byCreated((c) => c.serial));
  }
  async findCertificates(f: CertificateFilter & { limit?: number }) {
    return copy(this.filtered(f).slice(0, f.limit ?? Infinity));
  }
  async findCertificatesPage(f: CertificateFilter & { notAfterBetween?: [number, number]; after?: PageKey; limit: number }) {
    const w = f.notAfterBetween;
    return copy(this.filtered(f).filter((c) => (!w || (c.not_after > w[0] && c.not_after <= w[1])) && after(f.after, c.created_at, c.serial)).slice(0, f.limit));
  }
  async countGoodByExpiry(now: number, bounds: number[]) {
    const counts: number[] = [];
    let lo = now;
    for (const b of [...bounds, Number.MAX_SAFE_INTEGER]) {
      const hi = b === Number.MAX_SAFE_INTEGER ? b : now + b;
      counts.push(this.t.certificates.filter((c) => c.status === 'good' && c.not_after > lo && c.not_after <= hi).length);
      lo = hi;
    }
    return counts;
  }
  async lockGoodAdminCertificates(now: number) {
    return this.t.certificates.filter((c) => c.kind === 'admin' && c.status === 'good' && c.not_after > now).map((c) => c.serial);
  }

  // ---- revocation
  private revokeWhere(pred: (c: CertificateTable) => boolean, reason: string): string[] {
    const out: string[] = [];
    for (const c of this.t.certificates) {
      if (c.status === 'good' && pred(c)) {
        Object.assign(c, { status: 'revoked', revoked_at: Date.now(), revocation_reason: reason });
        out.push(c.serial);
      }
    }
    if (out.length) this.bumpSync();
    return out;
  }
  private bumpSync() {
    const s = this.t.sequences.find((x) => x.name === 'revocation');
    if (s) s.next += 1;
    else this.t.sequences.push({ name: 'revocation', next: 1 });
  }
  async revokeCertificates(serials: string[], reason: string) {
    return serials.length ? this.revokeWhere((c) => serials.includes(c.serial), reason) : [];
  }
  async revokeNodeCertificates(nodeId: string, reason: string, only: { role?: string } = {}) {
    return this.revokeWhere((c) => c.node_id === nodeId && (only.role === undefined || c.role === only.role), reason);
  }
  async revokeIssuedBy(ids: string[], reason: string) {
    return ids.length ? this.revokeWhere((c) => ids.includes(c.issuer_key_id), reason).length : 0;
  }
  async bumpRevocationMark() {
    this.bumpSync();
  }
  async revokedFor(ids: string[], now: number) {
    return this.t.certificates
      .filter((c) => c.status === 'revoked' && ids.includes(c.issuer_key_id) && c.not_after > now)
      .sort((a, b) => (a.serial < b.serial ? -1 : 1))
      .map(({ serial, revoked_at, revocation_reason, not_after }) => ({ serial, revoked_at, revocation_reason, not_after }));
  }
  async revokedSince(ids: string[], now: number, since: number) {
    return (await this.revokedFor(ids, now)).filter((c) => Number(c.revoked_at) >= since);
  }
  async countRevoked(ids: string[], now: number) {
    return (await this.revokedFor(ids, now)).length;
  }

  async unforwardedRevocations(ids: string[], now: number, limit: number) {
    return this.t.certificates
      .filter((c) => c.status === 'revoked' && ids.includes(c.issuer_key_id) && c.not_after > now && c.forwarded_at == null)
      .sort((a, b) => Number(a.revoked_at) - Number(b.revoked_at) || (a.serial < b.serial ? -1 : 1))
      .slice(0, limit)
      .map(({ serial, revoked_at, revocation_reason }) => ({ serial, revoked_at, revocation_reason }));
  }

  async markForwarded(serials: string[], at: number) {
    for (const c of this.t.certificates) if (serials.includes(c.serial) && c.status === 'revoked') c.forwarded_at = at;
  }

  // ---- nodes
  async insertNode(n: NodeTable, o: { ifAbsent?: boolean } = {}) {
    if (this.t.nodes.some((x) => x.id === n.id)) {
      if (o.ifAbsent) return;
      throw new Error(`duplicate node ${n.id}`);
    }
    this.t.nodes.push(copy(n));
  }
  async getNode(id: string) {
    return copy(this.t.nodes.find((n) => n.id === id));
  }
  async lockNode(id: string) {
    return this.getNode(id);
  }
  async listNodes() {
    return copy([...this.t.nodes].sort(byCreated((n) => n.id)));
  }
  async listNodesPage(o: NodePageQuery): Promise<NodeWithCertificate[]> {
    const rows = this.t.nodes
      .filter((n) => (!o.role || n.role === o.role) && (!o.status || n.status === o.status) && (!o.idPrefix || n.id.startsWith(o.idPrefix)))
      .map((n) => {
        const c = this.t.certificates.find((x) => x.serial === n.current_serial);
        const sort_t = o.sort === 'expiry' ? (c?.not_after ?? 0) : o.sort === 'renewed' ? (n.renewed_at ?? n.created_at) : o.sort === 'id' ? 0 : n.created_at;
        return {
          id: n.id, role: n.role, status: n.status, created_at: n.created_at, updated_at: n.updated_at, current_serial: n.current_serial, renewed_at: n.renewed_at, sort_t,
          cert_serial: c?.serial ?? null, cert_not_before: c?.not_before ?? null, cert_not_after: c?.not_after ?? null, cert_issuer_key_id: c?.issuer_key_id ?? null, cert_status: c?.status ?? null,
        };
      });
    const sign = o.desc ? -1 : 1;
    rows.sort((x, y) => sign * (x.sort_t - y.sort_t || (x.id < y.id ? -1 : x.id > y.id ? 1 : 0)));
    const a = o.after;
    const past = (r: { sort_t: number; id: string }) => !a || sign * (r.sort_t - a.t) > 0 || (r.sort_t === a.t && sign * (r.id < a.k ? -1 : r.id > a.k ? 1 : 0) > 0);
    return copy(rows.filter(past).slice(0, o.limit));
  }
  async countNodes() {
    const m = new Map<string, { role: string; status: string; n: number }>();
    for (const n of this.t.nodes) {
      const k = `${n.role}/${n.status}`;
      m.set(k, { role: n.role, status: n.status, n: (m.get(k)?.n ?? 0) + 1 });
    }
    return [...m.values()].sort((x, y) => (x.role + x.status < y.role + y.status ? -1 : 1));
  }
  async updateNode(id: string, set: Partial<Omit<NodeTable, 'id'>>) {
    const n = this.t.nodes.find((x) => x.id === id);
    if (n) Object.assign(n, copy(set), { updated_at: Date.now() });
  }

  async expiredNodes(before: number, limit: number) {
    const rows: { id: string; at: number }[] = [];
    for (const n of this.t.nodes) {
      const c = n.status === 'active' && n.current_serial ? this.t.certificates.find((x) => x.serial === n.current_serial) : undefined;
      if (c && c.not_after <= before) rows.push({ id: n.id, at: c.not_after });
    }
    return rows.sort((x, y) => x.at - y.at || (x.id < y.id ? -1 : 1)).slice(0, limit).map((r) => r.id);
  }

  // ---- limited join tokens
  async insertJoinToken(t: JoinTokenTable) {
    if (this.t.join_tokens.some((x) => x.id === t.id || x.secret_hash === t.secret_hash)) throw new Error('UNIQUE constraint failed: join_tokens');
    this.t.join_tokens.push({ ...t });
  }
  async getJoinTokenByHash(h: string) {
    const t = this.t.join_tokens.find((x) => x.secret_hash === h);
    return t && { ...t };
  }
  async useJoinToken(h: string, now: number) {
    const t = this.t.join_tokens.find((x) => x.secret_hash === h && x.revoked_at === null && x.expires_at > now && x.uses < x.max_uses);
    if (!t) return undefined;
    t.uses++;
    return { ...t };
  }
  async listJoinTokens() {
    return [...this.t.join_tokens].sort(byCreated((x) => x.id)).map((x) => ({ ...x }));
  }
  async revokeJoinToken(id: string, now: number) {
    const t = this.t.join_tokens.find((x) => x.id === id && x.revoked_at === null);
    if (t) t.revoked_at = now;
    return !!t;
  }

  // ---- tokens
  async getTokenHashes() {
    return Object.fromEntries(this.t.tokens.map((r) => [r.role, r.secret_hash]));
  }
  async setTokenHash(role: string, secret_hash: string) {
    this.t.tokens = this.t.tokens.filter((r) => r.role !== role);
    this.t.tokens.push({ role, secret_hash, created_at: Date.now() });
  }

  // ---- sequences
  async ensureSequence(name: string, start: number) {
    if (!this.t.sequences.some((s) => s.name === name)) this.t.sequences.push({ name, next: start });
  }
  async claimRange(name: string, increment: number) {
    const s = this.t.sequences.find((x) => x.name === name);
    if (!s) throw new Error(`sequence ${name} is missing`);
    s.next += increment;
    return { start: s.next - increment, end: s.next };
  }
  async peekSequence(name: string) {
    return this.t.sequences.find((x) => x.name === name)?.next ?? 0;
  }
  async setSequence(name: string, next: number) {
    const s = this.t.sequences.find((x) => x.name === name);
    if (s) s.next = next;
  }
  async listSequenceNames() {
    return this.t.sequences.map((s) => s.name);
  }

  // ---- replicas
  async upsertReplica(r: { id: string; address: string; version: string }) {
    const now = Date.now();
    const old = this.t.replicas.find((x) => x.id === r.id);
    if (old) Object.assign(old, r, { started_at: now, heartbeat_at: now });
    else this.t.replicas.push({ ...r, started_at: now, heartbeat_at: now, removed_at: null });
  }
  async heartbeat(id: string) {
    const r = this.t.replicas.find((x) => x.id === id);
    if (r) r.heartbeat_at = Date.now();
  }
  async listReplicas() {
    return copy(this.t.replicas.filter((r) => r.removed_at === null));
  }
  async getReplica(id: string) {
    return copy(this.t.replicas.find((r) => r.id === id));
  }
  async removeReplica(id: string, subject: string) {
    const r = this.t.replicas.find((x) => x.id === id);
    if (r) r.removed_at = Date.now();
    return this.revokeWhere((c) => c.kind === 'server' && c.subject === subject, 'cessationOfOperation');
  }

  // ---- CRLs
  async latestCrl(ca: string) {
    return copy(this.t.crls.filter((c) => c.ca_name === ca).sort((a, b) => b.number - a.number)[0]);
  }
  async latestCrlHead(ca: string) {
    const r = await this.latestCrl(ca);
    if (!r) return undefined;
    const { der: _der, ...head } = r;
    return head;
  }
  async latestCrlNumber(ca: string) {
    return (await this.latestCrl(ca))?.number;
  }
  async insertCrl(c: CrlTable) {
    this.t.crls.push(copy(c));
  }
  async pruneCrls(ca: string, keep: number) {
    const mine = this.t.crls.filter((c) => c.ca_name === ca).sort((a, b) => b.number - a.number);
    const drop = new Set(mine.slice(keep));
    this.t.crls = this.t.crls.filter((c) => !drop.has(c));
  }
  async deleteCrls() {
    this.t.crls = [];
  }

  // ---- leases
  async acquireLease(name: string, holder: string, ttlMs: number) {
    const now = Date.now();
    let l = this.t.leases.find((x) => x.name === name);
    if (!l) this.t.leases.push((l = { name, holder: '', term: 0, expires_at: 0 }));
    if (l.holder === holder && l.expires_at > now) {
      l.expires_at = now + ttlMs;
      return l.term;
    }
    if (l.expires_at <= now) {
      Object.assign(l, { holder, term: l.term + 1, expires_at: now + ttlMs });
      return l.term;
    }
    return null;
  }
  async holdsLease(name: string, holder: string, term: number) {
    return this.t.leases.some((l) => l.name === name && l.holder === holder && l.term === term && l.expires_at > Date.now());
  }
  async releaseLease(name: string, holder: string) {
    for (const l of this.t.leases) if (l.name === name && l.holder === holder) l.expires_at = 0;
  }
  async getLease(name: string) {
    return copy(this.t.leases.find((l) => l.name === name));
  }

  // ---- audit
  async audit(actor: string, action: string, detail: Record<string, unknown>, o: AuditOptions = {}) {
    const head = this.t.audit_head[0] ?? { id: 'chain', seq: 0, hash: GENESIS_HASH };
    const d = detail as Record<string, unknown>;
    const about = o.subject ?? [d.node, d.serial, d.replica, d.user, d.role].find((v) => typeof v === 'string');
    const e = {
      seq: head.seq + 1, id: `${this.t.audit.length}`, at: Date.now(), replica_id: this.origin, actor, action,
      subject: typeof about === 'string' ? about : '', outcome: o.outcome ?? 'success', detail: JSON.stringify(detail),
    };
    const hash = auditEntryHash(head.hash, e);
    this.t.audit.push({ ...e, prev_hash: head.hash, hash });
    this.t.audit_head = [{ id: 'chain', seq: e.seq, hash }];
  }
  async auditChain(f: { afterSeq: number; limit: number }) {
    return copy(this.t.audit.filter((a) => a.seq !== null && a.seq > f.afterSeq).sort((x, y) => x.seq! - y.seq!).slice(0, f.limit));
  }
  async countUnchainedAudit() {
    return this.t.audit.filter((a) => a.seq === null).length;
  }
  async auditHead() {
    return copy(this.t.audit_head[0]);
  }
  async insertAuditSeal(s: AuditSealTable) {
    this.t.audit_seals.push(copy(s));
  }
  async auditSeals(f: { afterSeq: number; limit: number }) {
    return copy(this.t.audit_seals.filter((s) => s.seq > f.afterSeq).sort((x, y) => x.seq - y.seq || x.at - y.at).slice(0, f.limit));
  }
  async latestAuditSeal() {
    return copy([...this.t.audit_seals].sort((x, y) => y.seq - x.seq || y.at - x.at)[0]);
  }
  async listSigningKeys() {
    return copy([...this.t.signing_keys].sort((x, y) => x.created_at - y.created_at));
  }
  async insertSigningKey(k: SigningKeyTable) {
    this.t.signing_keys.push(copy(k));
  }
  async deleteSigningKeys(ids: string[]) {
    this.t.signing_keys = this.t.signing_keys.filter((k) => !ids.includes(k.id));
  }

  async auditPage(f: { after?: PageKey; limit: number; action?: string; actor?: string; since?: number }) {
    const a = f.after;
    return copy(
      this.t.audit
        .filter((r) => (f.since === undefined || r.at >= f.since) && (!f.action || (f.action.endsWith('.') ? r.action.startsWith(f.action) : r.action === f.action)) && (!f.actor || r.actor === f.actor))
        .sort((x, y) => y.at - x.at || (y.id < x.id ? -1 : 1))
        .filter((r) => !a || r.at < a.t || (r.at === a.t && r.id < a.k))
        .slice(0, f.limit),
    );
  }

  // ---- refused joins and renewals
  async insertFailure(f: Omit<FailureTable, 'id'>) {
    this.t.failures.push({ id: `${f.at}-${this.t.failures.length}`, ...f });
  }
  async recentFailures(limit: number) {
    return copy([...this.t.failures].sort((x, y) => y.at - x.at).slice(0, limit));
  }
  async pruneFailures(keep: number) {
    this.t.failures = [...this.t.failures].sort((x, y) => y.at - x.at).slice(0, keep);
  }

  // ---- whole tables
  async appliedMigrations() {
    return [];
  }
  async tableNames() {
    return Object.keys(this.t).sort();
  }
  async dumpTable(table: string) {
    return copy((this.t as unknown as Record<string, TableRow[]>)[table] ?? []);
  }
  async countRows(table: string) {
    const rows = (this.t as unknown as Record<string, TableRow[]>)[table];
    return rows ? rows.length : null;
  }
  async insertRows(table: string, rows: object[]) {
    const t = (this.t as unknown as Record<string, object[]>)[table];
    if (!t) throw new Error(`no table ${table}`);
    t.push(...copy(rows));
  }
}
