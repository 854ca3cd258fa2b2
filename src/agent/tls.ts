/**
 * Mutual TLS between nodes: a TLS context made of the node's key, certificate chain and trust
 * bundle (TLS 1.2 minimum), reloaded when the agent renews or the trust bundle changes, with
 * peers identified by role rather than by address.
 *
 * A node certificate says who its holder is: CN = node ID, OU = role, O = cluster ID, and
 * carries SANs DNS:<role> and DNS:<node id>. A client that wants a manager connects with
 * server name "manager" and checks DNS:manager, OU=manager and our cluster ID; a server checks
 * the client's OU against the roles it accepts.
 *
 * Revocation works without the CA: the cluster CRL the agent keeps in NODEDIR/crl.pem is
 * loaded with the rest (and reloaded when it changes); a peer whose certificate serial is on
 * it is refused, as a server (checkPeer, attach) and as a client (clientOptions). The serials
 * are checked here rather than through OpenSSL's CRL option, which would demand a CRL for
 * every CA of every chain (and so break chains through a rotation's cross-signed certificate).
 */
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import tls from 'node:tls';
import { normalizeSerialHex, ROLES, Role, ID_RE } from '../pki/index.js';
import { CairnError } from '../util/errors.js';
import { nodePaths, NodeIdentity, readNodeIdentity } from './node-state.js';

export type PeerRole = Role;

export interface NodeTlsOptions {
  /** Roles accepted from peers by checkPeer() and attach(); default both worker and manager. */
  peerRoles?: PeerRole[];
  /** How often the files are checked for changes (stat only), default 5 s. */
  pollIntervalMs?: number;
}

/** Who is at the other end of a verified connection. */
export interface PeerIdentity {
  nodeId: string;
  role: PeerRole;
  clusterId: string;
}

/** This node's own identity, as in its current certificate. */
export interface LocalIdentity extends PeerIdentity {
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

export interface ClientTarget {
  host: string;
  port: number;
  /** the role the server must have; used as the TLS server name */
  role: PeerRole;
  /** optionally, the one node the server must be */
  nodeId?: string;
}

interface Material {
  key: string;
  cert: string;
  ca: string;
  identity: LocalIdentity;
  context: tls.SecureContext;
  /** revoked serials from crl.pem (empty without one) */
  revoked: ReadonlySet<string>;
  /** crl.pem's CRL number, or null without one */
  crlNumber: bigint | null;
  crlDer: Buffer | null;
}

const MIN_VERSION: tls.SecureVersion = 'TLSv1.2';
const one = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? (v.length === 1 ? v[0] : undefined) : v);

function material(id: NodeIdentity): Material {
  const s = id.leaf.subjectAttrs;
  if (!ROLES.includes(s.OU as PeerRole)) {
    throw new CairnError('bad_state', `${nodePaths(id.dir).cert} is not a node certificate (OU=${s.OU})`);
  }
  const context = tls.createSecureContext({ key: id.keyPem, cert: id.sentPem, ca: id.caPem, minVersion: MIN_VERSION });
  return {
    key: id.keyPem,
    cert: id.sentPem,
    ca: id.caPem,
    identity: { nodeId: s.CN!, role: s.OU as PeerRole, clusterId: s.O!, serial: id.leaf.serialHex, notBefore: id.leaf.notBefore, notAfter: id.leaf.notAfter },
    context,
    revoked: id.crl?.revoked ?? new Set(),
    crlNumber: id.crl?.number ?? null,
    crlDer: id.crl?.der ?? null,
  };
}

/** A fingerprint of the files' metadata: any rename or rewrite changes it. */
function filesSignature(dir: string): string {
  const p = nodePaths(dir);
  return [p.key, p.cert, p.ca, p.config, p.crl]
    .map((f) => {
      try {
        const st = fs.statSync(f);
        return `${st.ino}:${st.size}:${st.mtimeMs}`;
      } catch {
        return '-';
      }
    })
    .join('|');
}

/** Check a peer certificate's subject against our cluster and the roles allowed. */
function checkSubject(subject: tls.PeerCertificate['subject'] | undefined, clusterId: string, roles: readonly PeerRole[], what: string): PeerIdentity {
  const cn = one(subject?.CN);
  const ou = one(subject?.OU);
  const o = one(subject?.O);
  if (!cn || !ID_RE.test(cn) || !ou) throw new CairnError('peer_not_node', `the ${what} certificate is not a node certificate`);
  if (o !== clusterId) throw new CairnError('peer_wrong_cluster', `the ${what} (node ${cn}) is of cluster ${o}, not ${clusterId}`);
  if (!roles.includes(ou as PeerRole)) {
    throw new CairnError('peer_role_not_allowed', `the ${what} (node ${cn}) is a ${ou}; only ${roles.join(' or ')} nodes are allowed`);
  }
  return { nodeId: cn, role: ou as PeerRole, clusterId: o };
}

/** Refuse a peer certificate whose serial is on the CRL. */
function checkNotRevoked(cert: tls.PeerCertificate | undefined, m: Material, what: string): void {
  if (!cert?.serialNumber || !m.revoked.has(normalizeSerialHex(cert.serialNumber))) return;
  const cn = one(cert.subject?.CN);
  throw new CairnError('peer_revoked', `the ${what}${cn ? ` (node ${cn})` : ''} presents certificate ${cert.serialNumber.toUpperCase()}, which is revoked (CRL number ${m.crlNumber})`);
}

/**
 * A node's TLS context. Events: 'reload' (identity: LocalIdentity) after new files were
 * loaded; 'reloadError' (err) when changed files could not be loaded (the previous material
 * stays in use and loading is retried at the next poll).
 */
export class NodeTls extends EventEmitter {
  readonly stateDir: string;
  readonly peerRoles: readonly PeerRole[];
  private current: Material;
  private signature: string;
  private timer: NodeJS.Timeout | null = null;
  private readonly servers = new Set<tls.Server>();
  private readonly guards = new Map<tls.Server, (s: tls.TLSSocket) => void>();

  /** Use loadNodeTls(). */
  constructor(stateDir: string, first: NodeIdentity, signature: string, opts: NodeTlsOptions) {
    super();
    this.stateDir = stateDir;
    this.peerRoles = Object.freeze([...(opts.peerRoles ?? ROLES)]);
    for (const r of this.peerRoles) {
      if (!ROLES.includes(r)) throw new CairnError('usage', `unknown peer role "${r}": use worker or manager`);
    }
    this.current = material(first);
    this.signature = signature;
    const every = opts.pollIntervalMs ?? 5000;
    if (every > 0) {
      this.timer = setInterval(() => this.poll(), every);
      this.timer.unref();
    }
  }

  /** This node's identity (from its current certificate). */
  get identity(): LocalIdentity {
    return this.current.identity;
  }

  /** The current secure context (key, chain, trust bundle). */
  secureContext(): tls.SecureContext {
    return this.current.context;
  }

  /**
   * Options for tls.createServer / https.createServer: our identity, peers must present a
   * certificate that chains to the trust bundle. Roles are checked by attach() or checkPeer().
   */
  serverOptions(): tls.TlsOptions {
    const m = this.current;
    return { key: m.key, cert: m.cert, ca: m.ca, requestCert: true, rejectUnauthorized: true, minVersion: MIN_VERSION };
  }

  /**
   * Options for tls.connect / https.request to a node of the given role: server name = role,
   * and the server's certificate must carry DNS:<role>, OU=<role>, O=<our cluster> (and
   * CN=<nodeId> if one is given). Addresses are not checked: they may change freely.
   */
  clientOptions(target: ClientTarget): tls.ConnectionOptions {
    const m = this.current;
    const clusterId = m.identity.clusterId;
    if (!ROLES.includes(target.role)) throw new CairnError('usage', `unknown role "${target.role}": use worker or manager`);
    return {
      host: target.host,
      port: target.port,
      key: m.key,
      cert: m.cert,
      ca: m.ca,
      servername: target.role,
      minVersion: MIN_VERSION,
      rejectUnauthorized: true,
      checkServerIdentity: (_host: string, cert: tls.PeerCertificate): Error | undefined => {
        const err = tls.checkServerIdentity(target.role, cert);
        if (err) return err;
        try {
          const peer = checkSubject(cert.subject, clusterId, [target.role], 'server');
          checkNotRevoked(cert, this.current, 'server');
          if (target.nodeId && peer.nodeId !== target.nodeId) {
            return new CairnError('peer_wrong_node', `the server is node ${peer.nodeId}, not ${target.nodeId}`);
          }
        } catch (e) {
          return e as Error;
        }
        return undefined;
      },
    };
  }

  /**
   * Identify the peer of a connection: its certificate must have verified against our trust
   * bundle, be of our cluster, and have one of `roles` (default: the context's peerRoles).
   * Throws a CairnError (code peer_unauthorized, peer_wrong_cluster, peer_role_not_allowed,
   * peer_revoked: its serial is on the stored CRL...).
   */
  checkPeer(socket: tls.TLSSocket, roles: readonly PeerRole[] = this.peerRoles): PeerIdentity {
    if (!socket.authorized) {
      throw new CairnError('peer_unauthorized', `the peer's certificate was not verified: ${socket.authorizationError ?? 'no certificate'}`);
    }
    const cert = socket.getPeerCertificate();
    const peer = checkSubject(cert?.subject, this.current.identity.clusterId, roles, 'peer');
    checkNotRevoked(cert, this.current, 'peer');
    return peer;
  }

  /** The CRL number of the loaded crl.pem, or null if the node holds no CRL. */
  get crlNumber(): bigint | null {
    return this.current.crlNumber;
  }

  /**
   * Keep a server's identity current (setSecureContext after every reload) and refuse peers
   * whose role is not allowed: their sockets are destroyed as soon as the handshake ends,
   * before any 'secureConnection' handler added earlier or later sees data (check
   * socket.destroyed in your own handler). Returns a function that detaches the server.
   */
  attach(server: tls.Server, opts: { enforcePeerRoles?: boolean } = {}): () => void {
    this.servers.add(server);
    if (opts.enforcePeerRoles !== false) {
      const guard = (s: tls.TLSSocket) => {
        try {
          this.checkPeer(s);
        } catch (e) {
          this.emit('peerRefused', e, s);
          s.destroy();
        }
      };
      this.guards.set(server, guard);
      server.prependListener('secureConnection', guard);
    }
    // the server may have been created from an older serverOptions()
    server.setSecureContext({ key: this.current.key, cert: this.current.cert, ca: this.current.ca, minVersion: MIN_VERSION });
    return () => this.detach(server);
  }

  detach(server: tls.Server): void {
    this.servers.delete(server);
    const g = this.guards.get(server);
    if (g) server.off('secureConnection', g);
    this.guards.delete(server);
  }

  /** Re-read the files now if they changed. Returns true if new material was loaded. Throws if they cannot be loaded. */
  reload(force = false): boolean {
    const sig = filesSignature(this.stateDir);
    if (!force && sig === this.signature) return false;
    const next = material(readNodeIdentity(this.stateDir));
    if (next.identity.clusterId !== this.current.identity.clusterId) {
      throw new CairnError('bad_state', `${this.stateDir} now holds an identity of cluster ${next.identity.clusterId}, not ${this.current.identity.clusterId}`);
    }
    const sameCrl = next.crlDer === this.current.crlDer || (!!next.crlDer && !!this.current.crlDer && next.crlDer.equals(this.current.crlDer));
    const changed = next.key !== this.current.key || next.cert !== this.current.cert || next.ca !== this.current.ca || !sameCrl;
    this.signature = sig;
    if (!changed) return false;
    this.current = next;
    for (const s of this.servers) s.setSecureContext({ key: next.key, cert: next.cert, ca: next.ca, minVersion: MIN_VERSION });
    this.emit('reload', next.identity);
    return true;
  }

  private poll(): void {
    try {
      this.reload();
    } catch (e) {
      // e.g. caught between the renames of a renewal: keep the old material, try again next time
      this.emit('reloadError', e);
    }
  }

  /** Stop watching the files and detach every server. */
  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const s of [...this.servers]) this.detach(s);
  }
}

/**
 * Load a node's TLS context from its state directory (as written by `cairn join` and kept
 * fresh by `cairn agent`). The key file must not be readable by group or others.
 */
export async function loadNodeTls(stateDir: string, opts: NodeTlsOptions = {}): Promise<NodeTls> {
  let lastErr: unknown;
  // A renewal replaces the files one rename at a time: a read that falls in between sees a
  // key and a certificate that do not match. Such a read is retried a few times.
  for (let attempt = 0; attempt < 5; attempt++) {
    const sig = filesSignature(stateDir);
    try {
      return new NodeTls(stateDir, readNodeIdentity(stateDir), sig, opts);
    } catch (e) {
      lastErr = e;
      if (!(e instanceof CairnError) || e.code !== 'key_mismatch') throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw lastErr;
}
