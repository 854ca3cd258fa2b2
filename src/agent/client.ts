/**
 * A small HTTPS JSON client for the CA's API (node:https, no other dependency).
 *
 * The server is verified against a trust bundle, and as a CA replica: only a replica's server
 * certificate speaks for the CA, so it must carry subject OU=ca-replica AND the SAN DNS:ca,
 * both (a node certificate never passes, whatever its SANs), O=<cluster ID> when the caller
 * knows the cluster, and a serial that is not on the node's stored CRL when one is given.
 * Addresses are not checked, so replicas can move freely. Only the first contact of a join
 * (`insecure`) skips verification, and the caller then checks the root it got against the
 * digest in its token. Keep-alive agents are pooled per endpoint and TLS
 * identity, so a node (or a benchmark) renewing over mutual TLS reuses its connections.
 */
import { createHash, X509Certificate } from 'node:crypto';
import https from 'node:https';
import tls, { TLSSocket } from 'node:tls';
import { normalizeSerialHex } from '../pki/index.js';
import { CairnError, ErrorCode, isErrorCode } from '../util/errors.js';

/** How to authenticate the server, and ourselves. */
export interface ClientTls {
  /** PEM trust bundle the server's certificate must chain to. */
  ca?: string;
  /** PEM client certificate chain (leaf first), for mutual TLS. */
  cert?: string;
  /** PEM private key of `cert`. */
  key?: string;
  /** Skip server verification: only for a join's first `GET /v1/ca`, whose answer is checked against the token's digest. */
  insecure?: boolean;
  /** The cluster the CA replica must belong to (its certificate's O), when the caller knows it. */
  clusterId?: string;
  /** The node's stored CRL: a replica whose certificate serial is on it is refused. */
  crl?: { number: bigint; revoked: ReadonlySet<string> } | null;
}

export interface RequestOptions {
  /** Deadline for the whole exchange: connect, TLS handshake, request, complete response. Default 10 s. */
  timeoutMs?: number;
  /** Largest response body accepted. Default 1 MiB. */
  maxResponseBytes?: number;
  /** Reuse connections through a pooled keep-alive agent (default true). */
  keepAlive?: boolean;
  /** Resolve a 2xx answer to its raw bytes instead of parsed JSON (e.g. a DER CRL). */
  raw?: boolean;
  signal?: AbortSignal;
  /** Send it on this one connection (see SingleConnection); overrides keepAlive and the TLS options. */
  connection?: SingleConnection;
}

export const DEFAULT_TIMEOUT_MS = 10_000;
export const MAX_RESPONSE_BYTES = 1024 * 1024;
/** Server name used to verify a CA replica: its certificate carries `DNS:ca`. */
export const CA_SERVER_NAME = 'ca';
/** The OU of a CA replica's server certificate (Authority.issueServerCertificate). */
export const CA_REPLICA_OU = 'ca-replica';

const one = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? (v.length === 1 ? v[0] : undefined) : v);

/**
 * Whether a (chain-verified) server certificate is a CA replica's: DNS:ca and OU=ca-replica
 * together, O = the expected cluster, not revoked. Returns the reason it is not, or undefined.
 */
export function checkCaServer(cert: tls.PeerCertificate, t: Pick<ClientTls, 'clusterId' | 'crl'> = {}): CairnError | undefined {
  const untrusted = (why: string) => new CairnError('untrusted_server', `the server is not a CA replica of this cluster: ${why}`);
  const nameErr = tls.checkServerIdentity(CA_SERVER_NAME, cert);
  if (nameErr) return untrusted(`its certificate does not carry DNS:${CA_SERVER_NAME} (${nameErr.message})`);
  const ou = one(cert.subject?.OU);
  if (ou !== CA_REPLICA_OU) return untrusted(`its certificate has OU=${String(cert.subject?.OU)}, not OU=${CA_REPLICA_OU} (a node certificate never speaks for the CA)`);
  const o = one(cert.subject?.O);
  if (t.clusterId && o !== t.clusterId) return untrusted(`its certificate is of cluster ${String(cert.subject?.O)}, not ${t.clusterId}`);
  if (t.crl && cert.serialNumber && t.crl.revoked.has(normalizeSerialHex(cert.serialNumber))) {
    return untrusted(`its certificate (serial ${cert.serialNumber.toUpperCase()}) is revoked (CRL number ${t.crl.number})`);
  }
  return undefined;
}

/** An error answer of the API: `{ error: { code, message } }`, with the HTTP status. */
export class ApiError extends CairnError {
  readonly status: number;
  readonly endpoint: string;
  /** from Retry-After, when the server gave one */
  readonly retryAfterMs: number | null;
  constructor(code: ErrorCode, message: string, status: number, endpoint: string, retryAfterMs: number | null) {
    super(code, message);
    this.name = 'ApiError';
    this.status = status;
    this.endpoint = endpoint;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * Normalize an endpoint given by a user: `https://host:port` (a path is ignored); a bare
 * `host:port` gets `https://`. Plain HTTP is refused: the API is HTTPS only.
 */
export function normalizeEndpoint(input: string): string {
  const s = input.trim();
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(s) ? s : `https://${s}`;
  let u: URL;
  try {
    u = new URL(withScheme);
  } catch {
    throw new CairnError('bad_endpoint', `"${input}" is not a valid CA address (expected https://host:port)`);
  }
  if (u.protocol !== 'https:') throw new CairnError('bad_endpoint', `"${input}": the CA API is HTTPS only (use https://)`);
  if (!u.hostname) throw new CairnError('bad_endpoint', `"${input}" has no host name`);
  if (u.username || u.password) throw new CairnError('bad_endpoint', `"${input}": credentials in the address are not supported`);
  return u.origin;
}

// ---- keep-alive agents, one per endpoint and TLS identity

const MAX_AGENTS = 256;
const agents = new Map<string, https.Agent>();

function identityKey(t: ClientTls): string {
  const h = createHash('sha256');
  const crl = t.crl ? `${t.crl.number}:${t.crl.revoked.size}` : '';
  for (const part of [t.insecure ? 'insecure' : 'verify', t.ca ?? '', t.cert ?? '', t.key ?? '', t.clusterId ?? '', crl]) h.update(part).update('\0');
  return h.digest('hex');
}

function tlsOptions(t: ClientTls): https.AgentOptions {
  const o: https.AgentOptions = {
    minVersion: 'TLSv1.2',
    servername: CA_SERVER_NAME,
    ca: t.ca,
    cert: t.cert,
    key: t.key,
  };
  if (t.insecure) {
    o.rejectUnauthorized = false;
    o.checkServerIdentity = () => undefined;
  } else {
    if (!t.ca) throw new CairnError('internal', 'a trust bundle is required to verify the CA server');
    o.rejectUnauthorized = true;
    o.checkServerIdentity = (_host, cert) => checkCaServer(cert, t);
  }
  return o;
}

function agentFor(endpoint: string, t: ClientTls): https.Agent {
  const k = `${endpoint}\0${identityKey(t)}`;
  let a = agents.get(k);
  if (a) {
    agents.delete(k); // keep the map in least-recently-used order
    agents.set(k, a);
    return a;
  }
  a = new https.Agent({ keepAlive: true, keepAliveMsecs: 10_000, maxSockets: 64, maxFreeSockets: 16, timeout: 60_000, ...tlsOptions(t) });
  agents.set(k, a);
  if (agents.size > MAX_AGENTS) {
    const [oldest, old] = agents.entries().next().value as [string, https.Agent];
    agents.delete(oldest);
    retire(old);
  }
  return a;
}

/**
 * Drop an agent that may still have requests in flight: its idle connections are closed now;
 * busy ones finish their request, then close when idle (the agent's socket timeout).
 */
function retire(a: https.Agent): void {
  for (const list of Object.values(a.freeSockets)) for (const s of list ?? []) s.destroy();
}

/** Close the pooled connections of one TLS identity (e.g. after a renewal replaced it), or all of them. */
export function closeAgents(identity?: ClientTls): void {
  const id = identity ? identityKey(identity) : null;
  for (const [k, a] of agents) {
    if (id === null || k.endsWith(`\0${id}`)) {
      agents.delete(k);
      a.destroy();
    }
  }
}

// ---- one connection for a join's two requests

/**
 * One TLS connection to an endpoint, opened unverified (a join's first contact) and kept for
 * the requests that follow once `verify` has checked, on this very connection, the server's
 * certificate against the root the caller trusts. A request that would go out on any other
 * connection (the server closed this one meanwhile) is refused with a dropped-connection
 * error instead: nothing is sent over a connection that was not verified.
 */
export class SingleConnection {
  readonly agent: https.Agent;
  socket: TLSSocket | null = null;
  verified = false;
  constructor() {
    this.agent = new https.Agent({ keepAlive: true, maxSockets: 1, maxFreeSockets: 1, timeout: 30_000, ...tlsOptions({ insecure: true }) });
  }

  /** Called with the socket a request goes out on: false when it may not be used. */
  accept(s: TLSSocket): boolean {
    if (!this.socket) {
      this.socket = s;
      return true;
    }
    return s === this.socket && !s.destroyed;
  }

  /**
   * Check the server certificate of this connection: it chains (through the certificates the
   * server presented) to `root`, every link within its validity, and it is a CA replica's
   * (checkCaServer). Returns the reason it is not, or undefined.
   */
  verify(root: Buffer, t: Pick<ClientTls, 'clusterId' | 'crl'> = {}): CairnError | undefined {
    const untrusted = (why: string) => new CairnError('untrusted_server', `the server is not a CA of this cluster: ${why}`);
    const s = this.socket;
    if (!s || s.destroyed) return untrusted('the connection is gone');
    const peer = s.getPeerCertificate(true);
    if (!peer?.raw) return untrusted('it presented no certificate');
    const presented: X509Certificate[] = [];
    for (let c: tls.DetailedPeerCertificate | undefined = peer; c?.raw && presented.length < 8; c = c.issuerCertificate === c ? undefined : c.issuerCertificate) {
      presented.push(new X509Certificate(c.raw));
    }
    const anchor = new X509Certificate(root);
    const now = Date.now();
    const valid = (c: X509Certificate) => Date.parse(c.validFrom) <= now && now <= Date.parse(c.validTo);
    const signedBy = (c: X509Certificate, by: X509Certificate) => c.checkIssued(by) && c.verify(by.publicKey);
    let cur = presented[0];
    for (let depth = 0; ; depth++) {
      if (!valid(cur)) return untrusted(`certificate ${cur.subject.replace(/\n/g, ',')} is not within its validity`);
      if (signedBy(cur, anchor)) break;
      const next = presented.slice(1).find((i) => i.ca && i !== cur && signedBy(cur, i));
      if (!next || depth >= 6) return untrusted("its certificate does not chain to the token's root");
      cur = next;
    }
    const err = checkCaServer(peer, t);
    if (err) return err;
    this.verified = true;
    return undefined;
  }

  close(): void {
    this.agent.destroy();
  }
}

// ---- errors

const TLS_VERIFY_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED', 'CERT_REJECTED', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID',
  'ERR_TLS_CERT_ALTNAME_INVALID', 'INVALID_CA', 'INVALID_PURPOSE', 'PATH_LENGTH_EXCEEDED',
]);

/**
 * Network trouble (code `unreachable`). `dropped` says the server accepted the connection and
 * then lost it (reset, closed mid-handshake or mid-answer): a replica dying behind a load
 * balancer looks like this, and the same address may well answer the next attempt.
 */
export class NetworkError extends CairnError {
  readonly dropped: boolean;
  constructor(message: string, dropped: boolean) {
    super('unreachable', message);
    this.name = 'NetworkError';
    this.dropped = dropped;
  }
}

const DROPPED_CODES = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED']);

function networkError(endpoint: string, e: NodeJS.ErrnoException): CairnError {
  if (e instanceof CairnError) {
    if (e.code === 'untrusted_server') return new CairnError(e.code, e.message.replace('the server is', `the server at ${endpoint} is`));
    return e;
  }
  const code = String(e.code ?? '');
  if (TLS_VERIFY_CODES.has(code)) {
    return new CairnError('untrusted_server', `the server at ${endpoint} is not a CA of this cluster: its certificate does not verify (${e.message})`);
  }
  const why = code === 'ECONNREFUSED' ? 'connection refused' : code === 'ENOTFOUND' ? 'host not found' : e.message;
  return new NetworkError(`cannot reach the CA at ${endpoint}: ${why}`, DROPPED_CODES.has(code));
}

/** Whether an error is a connection the server accepted and then dropped (worth the same address again). */
export function isDroppedConnection(e: unknown): boolean {
  return e instanceof NetworkError && e.dropped;
}

function retryAfter(h: string | string[] | undefined): number | null {
  const v = Array.isArray(h) ? h[0] : h;
  if (!v) return null;
  const s = Number(v);
  if (Number.isFinite(s) && s >= 0) return Math.min(s, 3600) * 1000;
  const d = Date.parse(v);
  return Number.isFinite(d) ? Math.max(0, d - Date.now()) : null;
}

/**
 * One JSON request to the CA API. Resolves to the parsed body of a 2xx answer. Rejects with
 * an ApiError carrying the server's `code` for an error answer, CairnError('unreachable')
 * for network trouble and timeouts, CairnError('untrusted_server') when the server's
 * certificate does not verify, CairnError('bad_response') for an answer that is not JSON or
 * too large.
 */
export function request<T = any>(endpoint: string, method: string, path: string, body: unknown, t: ClientTls, opts: RequestOptions = {}): Promise<T> {
  const base = normalizeEndpoint(endpoint);
  const url = new URL(path, base + '/');
  const where = `${base}${url.pathname}`;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const maxBytes = opts.maxResponseBytes ?? MAX_RESPONSE_BYTES;
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  const reqOpts: https.RequestOptions = {
    method,
    headers: { accept: 'application/json', ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}) },
  };
  if (opts.connection) reqOpts.agent = opts.connection.agent;
  else if (opts.keepAlive === false) Object.assign(reqOpts, tlsOptions(t), { agent: false });
  else reqOpts.agent = agentFor(base, t);

  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const finish = (err: Error | null, v?: T) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve(v as T);
    };
    const req = https.request(url, reqOpts, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > maxBytes) {
          finish(new CairnError('bad_response', `the answer of ${where} is larger than ${maxBytes} bytes`));
          req.destroy();
          return;
        }
        chunks.push(c);
      });
      res.on('error', (e) => finish(networkError(base, e)));
      res.on('aborted', () => finish(new NetworkError(`the connection to ${base} was closed during the answer`, true)));
      res.on('end', () => {
        if (settled) return;
        const status = res.statusCode ?? 0;
        if (opts.raw && status >= 200 && status < 300) return finish(null, Buffer.concat(chunks) as T);
        const text = Buffer.concat(chunks).toString('utf8');
        let data: any;
        try {
          data = text.length ? JSON.parse(text) : null;
        } catch {
          return finish(new CairnError('bad_response', `${where} answered ${status} with a body that is not JSON`));
        }
        if (status >= 200 && status < 300) return finish(null, data as T);
        const e = data?.error;
        // the message keeps the server's code as sent; a code this version does not know
        // (a newer server) is carried as server_error (5xx) or bad_response
        const sent = typeof e?.code === 'string' && /^[a-z0-9_]{1,64}$/.test(e.code) ? e.code : null;
        const code = sent !== null && isErrorCode(sent) ? sent : status >= 500 ? 'server_error' : 'bad_response';
        const message = typeof e?.message === 'string' ? e.message.slice(0, 500) : `HTTP ${status}`;
        finish(new ApiError(code, `${where} refused: ${message} (${sent ?? code})`, status, base, retryAfter(res.headers['retry-after'])));
      });
    });
    const timer = setTimeout(() => {
      finish(new CairnError('unreachable', `no answer from the CA at ${base} within ${Math.round(timeoutMs / 1000)}s`));
      req.destroy();
    }, timeoutMs);
    const onAbort = () => {
      finish(new CairnError('aborted', `request to ${where} aborted`));
      req.destroy();
    };
    if (opts.signal?.aborted) return onAbort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    req.on('error', (e: NodeJS.ErrnoException) => finish(networkError(base, e)));
    const conn = opts.connection;
    if (conn) {
      req.on('socket', (s) => {
        if (!conn.accept(s as TLSSocket)) {
          finish(new NetworkError(`the connection to ${base} was closed before the request`, true));
          req.destroy();
        }
      });
    }
    req.end(payload);
  });
}

/** Several attempts failed, each for a reason worth retrying later (see isRetryable). */
export class RetryableError extends CairnError {
  /** the longest Retry-After among the failures, if any */
  readonly retryAfterMs: number | null;
  constructor(code: ErrorCode, message: string, retryAfterMs: number | null = null) {
    super(code, message);
    this.name = 'RetryableError';
    this.retryAfterMs = retryAfterMs;
  }
}

/** Whether an error is worth retrying (another endpoint, or later): network trouble, 5xx, 429. */
export function isRetryable(e: unknown): boolean {
  if (e instanceof RetryableError) return true;
  // renewal_conflict: the node's role changed while its renewal was being signed; asking again settles it
  if (e instanceof ApiError) return e.status >= 500 || e.status === 429 || e.status === 408 || e.code === 'renewal_conflict';
  if (e instanceof CairnError) return ['unreachable', 'untrusted_server', 'bad_response'].includes(e.code);
  return false;
}
