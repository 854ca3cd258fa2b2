/** Table types of the store, shared by the SQLite and PostgreSQL backends. Times are epoch milliseconds. */
export interface ClusterTable {
  id: string;
  name: string;
  created_at: number;
}

export interface ConfigTable {
  key: string;
  value: string;
  updated_at: number;
}

export interface CaTable {
  id: string;
  /** 'cluster' or 'client' */
  name: string;
  generation: number;
  cert_pem: string;
  /** AES-256-GCM sealed PKCS#8 key, or null when the key is held elsewhere (external CA) */
  key_sealed: string | null;
  /** subject key identifier, hex */
  key_id: string;
  /**
   * The generation's state: 'active' (trusted; the newest active generation of a CA signs)
   * or 'retired' (no longer trusted; signs CRLs for its unexpired certificates).
   */
  status: string;
  created_at: number;
  /** this generation's key certified by the generation it replaced (a rotation's cross-signed certificate) */
  cross_pem: string | null;
  /** when it was retired */
  retired_at: number | null;
  /**
   * Where the key is when the store does not seal it (JSON, authority/ca-keys.ts): a PKCS#11
   * token (`{"kind":"pkcs11",…}`) or an external CA (`{"kind":"external",…}`); null: sealed here.
   */
  key_location?: string | null;
  /** the CA certificates above this one up to its root (PEM), when it is an intermediate */
  chain_pem?: string | null;
}

export interface RotationTable {
  id: string;
  /** 'cluster' | 'client' */
  ca: string;
  /** 'running' | 'completed' | 'aborted' */
  state: string;
  /** CA row IDs: the generation replaced, and the new one */
  from_id: string;
  to_id: string;
  started_at: number;
  finished_at: number | null;
  actor: string;
}

export interface CertificateTable {
  /** uppercase hex */
  serial: string;
  /** 'node' | 'admin' | 'server' | 'client' */
  kind: string;
  node_id: string | null;
  role: string | null;
  subject: string;
  /** SKI of the signing CA, hex */
  issuer_key_id: string;
  not_before: number;
  not_after: number;
  /** 'good' | 'revoked' */
  status: string;
  revoked_at: number | null;
  revocation_reason: string | null;
  cert_pem: string;
  created_at: number;
  replica_id: string | null;
  /** revoked, issued by an external CA: when that CA recorded the revocation (null: not yet) */
  forwarded_at?: number | null;
}

export interface NodeTable {
  id: string;
  /** 'worker' | 'manager' */
  role: string;
  /** 'active' | 'removed' */
  status: string;
  created_at: number;
  updated_at: number;
  current_serial: string | null;
  /** the certificate current_serial was renewed from: it may renew within the grace window */
  previous_serial: string | null;
  /** when current_serial was issued (ms) */
  renewed_at: number | null;
  /** renewals left in the node's bucket (refilled over time), and when it was last computed */
  renew_budget: number | null;
  renew_budget_at: number | null;
  /** when a rotation asked this node to renew (null: not asked) */
  renew_requested_at: number | null;
}

export interface TokenTable {
  role: string;
  /** SHA-256 of the secret, hex: the secret itself is never stored */
  secret_hash: string;
  created_at: number;
}

/** A limited join token (`cairn token create`): valid until expires_at, for max_uses joins. */
export interface JoinTokenTable {
  id: string;
  role: string;
  /** SHA-256 of the secret, hex (tokens.ts hashSecret): the secret itself is never stored */
  secret_hash: string;
  max_uses: number;
  uses: number;
  expires_at: number;
  created_at: number;
  revoked_at: number | null;
}

export interface SequenceTable {
  name: string;
  next: number;
}

export interface ReplicaTable {
  id: string;
  address: string;
  version: string;
  started_at: number;
  heartbeat_at: number;
  /** set by `cairn replica rm`: the replica may not serve again */
  removed_at: number | null;
}

export interface LeaseTable {
  name: string;
  holder: string;
  term: number;
  expires_at: number;
}

export interface AuditTable {
  id: string;
  at: number;
  actor: string;
  action: string;
  /** JSON */
  detail: string;
  /** position in the hash chain (1, 2, …); null only before the entry is chained (an older store) */
  seq: number | null;
  /** the replica that recorded it */
  replica_id: string | null;
  /** what the action was about (a node, a serial, a user…) */
  subject: string | null;
  /** 'success' (state changes are recorded as they commit) */
  outcome: string | null;
  prev_hash: string | null;
  hash: string | null;
}

/** The chain's newest entry (one row). */
export interface AuditHeadTable {
  id: string;
  seq: number;
  hash: string;
}

/** A signature over the chain up to an entry, by an audit signing certificate. */
export interface AuditSealTable {
  id: string;
  /** the entry sealed (and every one before it) */
  seq: number;
  /** that entry's hash */
  hash: string;
  at: number;
  replica_id: string;
  /** the audit signing certificate (PEM) */
  signer_pem: string;
  /** base64 signature over auditSealMessage() */
  signature: string;
}

/** A subsystem certificate of the CA: OCSP signing (per CA generation) or audit signing. */
export interface SigningKeyTable {
  id: string;
  /** 'ocsp' | 'audit' */
  purpose: string;
  /** the key ID of the CA generation that issued it (and, for OCSP, whose certificates it answers for) */
  ca_key_id: string;
  serial: string;
  cert_pem: string;
  /** AES-256-GCM sealed PKCS#8 key */
  key_sealed: string;
  not_before: number;
  not_after: number;
  created_at: number;
}

/** A refused join or renewal (the newest few hundred are kept, for the dashboard). */
export interface FailureTable {
  id: string;
  at: number;
  /** 'join' | 'renew' */
  kind: string;
  /** the error code the client got */
  code: string;
  /** client address */
  client: string;
  /** the node, for a renewal whose certificate names one */
  node_id: string | null;
}

export interface CrlTable {
  /** 'cluster' | 'client' */
  ca_name: string;
  number: number;
  /** base64 DER */
  der: string;
  this_update: number;
  next_update: number;
  /** value of the 'revocation' sequence this CRL covers */
  revocation_mark: number;
  entries: number;
  replica_id: string;
  /** lease term of the leader that published it */
  term: number;
}

export interface Database {
  crls: CrlTable;
  cluster: ClusterTable;
  config: ConfigTable;
  cas: CaTable;
  certificates: CertificateTable;
  nodes: NodeTable;
  tokens: TokenTable;
  join_tokens: JoinTokenTable;
  sequences: SequenceTable;
  replicas: ReplicaTable;
  leases: LeaseTable;
  audit: AuditTable;
  rotations: RotationTable;
  audit_head: AuditHeadTable;
  audit_seals: AuditSealTable;
  signing_keys: SigningKeyTable;
  failures: FailureTable;
}
