/**
 * The HTTPS API. Routes are thin: parse, authenticate, call the authority, answer.
 */
import type net from 'node:net';
import type { TLSSocket } from 'node:tls';
import Fastify, { FastifyInstance, FastifyReply, FastifyRequest, LogController } from 'fastify';
import type { Logger } from 'pino';
import { Authority, PeerCertificate, PeerIdentity } from '../authority/authority.js';
import { mayReadCertificate, requireKind } from '../authority/admission.js';
import { createBundle, listBundles, revokeBundle } from '../authority/bundles.js';
import { abortRotation, finishRotation, rotationStatus, startRotation } from '../authority/rotation.js';
import { CaWatcher } from './ca-watcher.js';
import { auditLog, FailureRecorder, overview } from '../authority/overview.js';
import { isRole } from '../authority/tokens.js';
import { CairnError, ErrorCode, ERRORS, RetryLater } from '../util/errors.js';
import { ocspErrorResponse, toPem } from '../pki/index.js';
import { RangeAllocator } from '../store/ranges.js';
import { createMetrics, Metrics } from './metrics.js';
import { ocspRoutes } from './ocsp-routes.js';
import { requireProxyProtocol } from './proxy-protocol.js';
import { tlsContextOptions } from './tls-context.js';
import { auditChainRoutes } from './audit-routes.js';

export const BODY_LIMIT = 64 * 1024;

declare module 'fastify' {
  interface FastifyContextConfig {
    /** the query parameters a route takes: any other, or one given twice, is a 400 */
    query?: readonly string[];
  }
}

export interface ServerOptions {
  authority: Authority;
  logger: Logger;
  tls: { key: string; cert: string; ca: string[] };
  /** every connection starts with a PROXY protocol header (v1 or v2) giving the real client address */
  proxyProtocol?: boolean;
  /** failed joins allowed per client address per minute */
  joinFailuresPerMinute?: number;
  /** the /metrics answer, when it is not this process's own registry (serve --workers: all workers summed) */
  metricsText?: () => Promise<string>;
  /** told of every failed join (serve --workers: the other workers count it too) */
  onJoinFailure?: (addr: string) => void;
  /** after a configuration change, before answering it (serve --workers: every worker reloads it) */
  onConfigChange?: () => Promise<void>;
  /**
   * The CA generations changed (a rotation started, finished or was aborted): bring this
   * process's TLS identity and trust up to date. Returns false to be asked again next tick.
   */
  onKeyringChange?: (setContext: (c: { key: string; cert: string; ca: string[] }) => void) => Promise<boolean>;
}

/** Failed-join limiter: a fixed one-minute window per client address. */
class FailureLimiter {
  private readonly windows = new Map<string, { start: number; count: number }>();
  constructor(private readonly limit: number) {}
  blocked(addr: string): number {
    const w = this.windows.get(addr);
    if (!w) return 0;
    const left = w.start + 60_000 - Date.now();
    if (left <= 0) {
      this.windows.delete(addr);
      return 0;
    }
    return w.count >= this.limit ? Math.ceil(left / 1000) : 0;
  }
  fail(addr: string): void {
    const now = Date.now();
    const w = this.windows.get(addr);
    if (!w || now - w.start >= 60_000) this.windows.set(addr, { start: now, count: 1 });
    else w.count++;
    if (this.windows.size > 100_000) this.windows.clear(); // bounded memory under address spraying
  }
}

/**
 * The client certificate of a connection, read once per TLS connection (keep-alive requests
 * reuse it): renegotiation is disabled on every connection (buildServer), so it cannot change.
 */
const peers = new WeakMap<TLSSocket, PeerCertificate | null>();

/** The verified client certificate of a request, as the TLS layer parsed it (natively). */
function peerCert(req: FastifyRequest): PeerCertificate | undefined {
  const sock = req.raw.socket as TLSSocket;
  let p = peers.get(sock);
  if (p === undefined) {
    p = readPeer(sock);
    peers.set(sock, p);
  }
  return p ?? undefined;
}

function readPeer(sock: TLSSocket): PeerCertificate | null {
  const c = sock.getPeerX509Certificate();
  if (!c) return null;
  // the subject's O when it has exactly one (one RDN a line; OpenSSL escapes control characters)
  const os = c.subject.split('\n').filter((l) => l.startsWith('O='));
  const o = os.length === 1 ? os[0].slice(2) : undefined;
  // one that does not chain to our roots is passed on marked untrusted (admission.ts says why it is refused)
  return { serialHex: c.serialNumber, clusterId: o, raw: c.raw, ...(sock.authorized ? {} : { untrusted: true }) };
}

/** The node ID (CN) of a chain-verified client certificate, for logs; undefined without one. */
function peerCn(req: FastifyRequest): string | undefined {
  const sock = req.raw.socket as TLSSocket;
  if (!sock.authorized) return undefined;
  const cn = sock.getPeerCertificate(false)?.subject?.CN;
  return typeof cn === 'string' ? cn : undefined;
}

/** A decimal integer query parameter (absent: undefined). */
function intParam(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^[0-9]{1,9}$/.test(v)) throw new CairnError('bad_request', `${name} must be a positive integer`);
  return Number(v);
}

/** An error answer: `{ error: { code, message } }` with the code's status from src/util/errors.ts. */
const answer = (reply: FastifyReply, code: ErrorCode, message: string, status: number = ERRORS[code].status) => reply.code(status).send({ error: { code, message } });

const isUnavailable = (e: unknown) => e instanceof CairnError && e.code === 'store_unavailable';

/** Refuse unknown or repeated query parameters (the route's config.query lists those it takes). */
function checkQuery(req: FastifyRequest): void {
  const i = req.url.indexOf('?');
  if (i < 0 || !req.routeOptions.url) return; // no query, or no route (404 answers that)
  const allowed = req.routeOptions.config?.query ?? [];
  const seen = new Set<string>();
  for (const k of new URLSearchParams(req.url.slice(i + 1)).keys()) {
    if (!allowed.includes(k)) {
      throw new CairnError('bad_request', allowed.length ? `unknown query parameter "${k.slice(0, 64)}": use ${allowed.join(', ')}` : `${req.routeOptions.url} takes no query parameters`);
    }
    if (seen.has(k)) throw new CairnError('bad_request', `query parameter "${k}" is given more than once`);
    seen.add(k);
  }
}

export function buildServer(o: ServerOptions): { app: FastifyInstance<any, any, any, any>; metrics: Metrics; recordJoinFailure(addr: string): void } {
  const { authority } = o;
  const metrics = createMetrics(authority.store);
  const limiter = new FailureLimiter(o.joinFailuresPerMinute ?? 20);
  // request IDs come from store-claimed ranges, like serials: unique across replicas
  const requestIds = new RangeAllocator(authority.store, 'request', () => 1000, () => 200);
  let fallbackId = 0;
  const app = Fastify({
    loggerInstance: o.logger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_LIMIT,
    return503OnClosing: true,
    // a URL the router cannot decode: the one-line JSON error, or an OCSP answer to an OCSP client
    frameworkErrors: (err, req, r) => {
      const reply = r as unknown as FastifyReply;
      if (req.url.startsWith('/v1/ocsp/')) return reply.code(200).header('content-type', 'application/ocsp-response').header('cache-control', 'no-cache, no-store').send(ocspErrorResponse('malformedRequest'));
      return answer(reply, 'bad_request', err.message);
    },
    forceCloseConnections: 'idle',
    genReqId: () => {
      const n = requestIds.takeSync();
      return n === null ? `${authority.replicaId}-${++fallbackId}` : String(n);
    },
    https: {
      ...tlsContextOptions(o.tls),
      requestCert: true,
      rejectUnauthorized: false, // join and /v1/ca are unauthenticated; routes check peers themselves
    },
  });

  // behind a TCP load balancer speaking the PROXY protocol, the client is the address in the
  // header, not the balancer: the failed-join limiter and the logs key on it
  const realAddress = o.proxyProtocol
    ? requireProxyProtocol(app.server as unknown as net.Server, {
        onDrop: (reason, peer) => o.logger.warn({ peer, reason }, 'connection dropped: no valid PROXY protocol header'),
      })
    : null;
  // a TLS 1.2 renegotiation could present another client certificate on the same connection:
  // refused, so what peerCert read once holds for the connection's life
  app.server.on('secureConnection', (sock: TLSSocket) => sock.disableRenegotiation());
  const clientAddr = (req: FastifyRequest): string => (realAddress ? realAddress(req.raw.socket) ?? req.ip : req.ip);

  app.setErrorHandler((err: unknown, req, reply) => {
    const e = err as { code?: string; statusCode?: number; message?: string };
    if (isUnavailable(err)) {
      req.log.warn({ code: 'store_unavailable', err: (err as Error).message }, 'store unavailable');
      return answer(reply.header('retry-after', '1'), 'unavailable', 'the store is unavailable; retry');
    }
    if (err instanceof CairnError) {
      if (err instanceof RetryLater) reply.header('retry-after', String(Math.max(1, Math.ceil(err.retryAfterMs / 1000))));
      // a fault of the server (a corrupt store, an expired CA) is the operator's to see
      if (ERRORS[err.code].status >= 500 && !(err instanceof RetryLater)) req.log.error({ code: err.code, err: err.message }, 'server fault');
      return answer(reply, err.code, err.message);
    }
    if (e.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return answer(reply, 'body_too_large', `request body is larger than ${BODY_LIMIT} bytes`);
    if (e.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return answer(reply, 'unsupported_media_type', 'request body must be application/json');
    if (e.statusCode && e.statusCode >= 400 && e.statusCode < 500) {
      // an OCSP client gets an OCSP answer (a URL the router cannot decode never reaches the OCSP scope)
      if (req.url.startsWith('/v1/ocsp/')) return reply.code(200).header('content-type', 'application/ocsp-response').header('cache-control', 'no-cache, no-store').send(ocspErrorResponse('malformedRequest'));
      return answer(reply, 'bad_request', e.message ?? 'bad request', e.statusCode);
    }
    req.log.error({ err }, 'internal error');
    return answer(reply, 'internal', 'internal error');
  });
  app.addHook('onRequest', async (req) => checkQuery(req));
  // bodies are JSON only: a text/plain body is a 415 like any other media type
  app.removeContentTypeParser('text/plain');
  app.setNotFoundHandler((req, reply) => answer(reply, 'not_found', `no route ${req.method} ${req.url}`));

  const body = (req: FastifyRequest): Record<string, unknown> => {
    const b = req.body;
    if (b === null || typeof b !== 'object' || Array.isArray(b)) throw new CairnError('bad_request', 'request body must be a JSON object');
    return b as Record<string, unknown>;
  };

  const node = async (req: FastifyRequest): Promise<PeerIdentity> => requireKind(await authority.identifyPeer(peerCert(req)), 'node');
  const admin = async (req: FastifyRequest): Promise<PeerIdentity> => requireKind(await authority.identifyPeer(peerCert(req)), 'admin');
  // read-only calls: an admin or a client bundle (admission.ts)
  const reader = async (req: FastifyRequest): Promise<PeerIdentity> => requireKind(await authority.identifyPeer(peerCert(req)), 'reader');
  const actor = (p: PeerIdentity) => `admin:${p.serial}`;
  // refused joins and renewals are kept in the store for the overview; never in the way of the answer
  const failures = new FailureRecorder(authority);
  const recordFailure = (kind: 'join' | 'renew', code: string, client: string, nodeId: string | null = null) => {
    failures.record(kind, code, client, nodeId).catch((err) => o.logger.debug({ err }, 'could not record a refused request'));
  };

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    try {
      await authority.store.ping();
      return { status: 'ready' };
    } catch {
      return reply.code(503).send({ status: 'unavailable' });
    }
  });
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', metrics.registry.contentType);
    return o.metricsText ? o.metricsText() : metrics.registry.metrics();
  });

  // a node calling with its certificate (the agent's trust poll) also learns whether to renew
  // now: its role changed (a demotion takes effect, and its manager certificate is revoked, at once)
  // GET /v1/ca?wait=<version>: a long-poll, answered when the CA's version changes, when this
  // node is asked to renew, or after LONG_POLL_MS
  const watcher = new CaWatcher(authority, app, o);
  app.get<{ Querystring: { wait?: string } }>('/v1/ca', { config: { query: ['wait'] } }, async (req, reply) => {
    const pc = peerCert(req);
    let node = pc && !pc.untrusted ? await authority.nodeRenewalHint(pc) : null;
    const wait = req.query.wait;
    if (wait !== undefined && wait === authority.caInfo().version && !node?.renew) {
      await watcher.wait(node?.id ?? null, req.raw);
      node = pc && !pc.untrusted ? await authority.nodeRenewalHint(pc) : null;
    }
    if (node) return { ...authority.caInfo(), node };
    return reply.type('application/json; charset=utf-8').send(authority.caInfoJson());
  });

  // ---- root CA rotation (rotation.ts)
  /**
   * After this process reloaded the CA generations (a rotation changed them, or a status request
   * read them): every other process of this replica reloads before the answer, and this one's
   * watcher acts on a version it has not seen (TLS identity, long-polls).
   */
  const caChanged = async () => {
    await o.onConfigChange?.();
    watcher.catchUp();
  };
  app.post('/v1/ca/rotate', async (req, reply) => {
    const p = await admin(req);
    const r = await startRotation(authority, body(req), actor(p));
    await caChanged();
    req.log.info({ rotation: r.id, ca: r.ca, to: r.to.keyId }, 'CA rotation started');
    return reply.code(202).send({ rotation: r });
  });
  app.get<{ Querystring: { ca?: string; stuck?: string } }>('/v1/ca/rotation', { config: { query: ['ca', 'stuck'] } }, async (req) => {
    await admin(req);
    // what the store holds, not what this replica's watcher last loaded (another replica, or
    // another process of this one, may have just completed it); every other process of this
    // replica reloads before the answer too (this one may have reloaded already while the others
    // have not), so GET /v1/ca agrees with it from then on
    await authority.reloadKeyring();
    await caChanged();
    return rotationStatus(authority, req.query.ca, intParam(req.query.stuck, 'stuck') ?? 100);
  });
  app.post('/v1/ca/rotation/finish', async (req) => {
    const p = await admin(req);
    const b = body(req);
    const r = await finishRotation(authority, { ca: b.ca, force: b.force }, actor(p));
    await caChanged();
    req.log.info({ rotation: r.rotation.id, unconverged: r.unconverged }, 'CA rotation finished');
    return { rotation: r.rotation, ...(r.digest ? { digest: r.digest } : {}), unconverged: r.unconverged };
  });
  app.post('/v1/ca/rotation/abort', async (req) => {
    const p = await admin(req);
    const r = await abortRotation(authority, body(req), actor(p));
    await caChanged();
    req.log.info({ rotation: r.id }, 'CA rotation aborted');
    return { rotation: r };
  });
  const reply429 = (req: FastifyRequest, wait: number, addr: string): never => {
    metrics.joinRejected.inc({ reason: 'rate_limited' });
    req.log.warn({ code: 'rate_limited', client: addr, retryAfter: wait }, 'join rate limited');
    throw new RetryLater('rate_limited', `too many failed joins from ${addr}; retry in ${wait}s`, wait * 1000);
  };

  app.post('/v1/join', async (req, reply) => {
    const addr = clientAddr(req);
    const wait = limiter.blocked(addr);
    if (wait) reply429(req, wait, addr);
    try {
      const b = body(req);
      const r = await authority.join(b.token, b.csr);
      metrics.issued.inc({ kind: 'join' });
      req.log.info({ node: r.nodeId, role: r.role, serial: r.serial }, 'node joined');
      return reply.code(201).send({ nodeId: r.nodeId, role: r.role, clusterId: r.clusterId, certificate: r.certificate, trustBundle: r.trustBundle });
    } catch (e) {
      if (e instanceof CairnError && !isUnavailable(e)) {
        limiter.fail(addr);
        o.onJoinFailure?.(addr);
        metrics.joinRejected.inc({ reason: e.code });
        req.log.warn({ code: e.code, client: addr }, 'join refused');
        recordFailure('join', e.code, addr);
      }
      throw e;
    }
  });

  // recovery after expiry: a join token and a CSR signed with the node's old key; limited like joins
  app.post('/v1/recover', async (req) => {
    const addr = clientAddr(req);
    const wait = limiter.blocked(addr);
    if (wait) {
      reply429(req, wait, addr);
    }
    try {
      const b = body(req);
      const r = await authority.recover(b.nodeId, b.token, b.csr);
      metrics.issued.inc({ kind: 'recover' });
      req.log.info({ node: r.nodeId, role: r.role, serial: r.serial }, 'node recovered its identity');
      return { nodeId: r.nodeId, role: r.role, clusterId: r.clusterId, certificate: r.certificate, trustBundle: r.trustBundle };
    } catch (e) {
      if (e instanceof CairnError && !isUnavailable(e)) {
        limiter.fail(addr);
        o.onJoinFailure?.(addr);
        req.log.warn({ code: e.code, client: addr, err: e.message }, 'recovery refused');
        recordFailure('join', e.code, addr);
      }
      throw e;
    }
  });

  app.post('/v1/renew', async (req) => {
    let peer: PeerIdentity | undefined;
    let r;
    try {
      peer = await node(req);
      r = await authority.renew(peer, body(req).csr);
    } catch (e) {
      if (e instanceof CairnError && !isUnavailable(e)) {
        req.log.warn({ code: e.code, client: clientAddr(req), node: peer?.nodeId ?? peerCn(req) }, 'renewal refused');
        recordFailure('renew', e.code, clientAddr(req), peer?.nodeId ?? peerCn(req) ?? null);
      }
      throw e;
    }
    metrics.issued.inc({ kind: 'renew' });
    metrics.renewed.inc();
    req.log.debug({ node: r.nodeId, role: r.role, serial: r.serial }, 'node renewed');
    return { nodeId: r.nodeId, role: r.role, clusterId: r.clusterId, certificate: r.certificate, trustBundle: r.trustBundle };
  });

  app.post<{ Params: { role: string } }>('/v1/tokens/:role/rotate', async (req) => {
    const p = await admin(req);
    if (!isRole(req.params.role)) throw new CairnError('not_found', `no token role "${req.params.role}": use worker or manager`);
    const token = await authority.rotateToken(req.params.role, actor(p));
    req.log.info({ role: req.params.role }, 'join token rotated');
    return { role: req.params.role, token };
  });

  // limited join tokens: a lifetime and a number of uses
  app.post('/v1/tokens', async (req, reply) => {
    const p = await admin(req);
    const t = await authority.createToken(body(req), actor(p));
    req.log.info({ token: t.id, role: t.role, uses: t.maxUses, expiresAt: t.expiresAt }, 'join token created');
    return reply.code(201).send(t);
  });
  app.get('/v1/tokens', async (req) => {
    await admin(req);
    return authority.listTokens();
  });
  app.delete<{ Params: { id: string } }>('/v1/tokens/:id', async (req) => {
    const p = await admin(req);
    const r = await authority.revokeToken(req.params.id, actor(p));
    req.log.info({ token: r.id }, 'join token revoked');
    return r;
  });

  app.post('/v1/nodes/prune', async (req) => {
    const p = await admin(req);
    const r = await authority.pruneNodes(body(req).expiredForMs, actor(p));
    req.log.info({ removed: r.removed.length }, 'nodes pruned');
    return r;
  });

  app.get<{ Querystring: { limit?: string; after?: string; sort?: string; order?: string; role?: string; status?: string; q?: string } }>(
    '/v1/nodes',
    { config: { query: ['limit', 'after', 'sort', 'order', 'role', 'status', 'q'] } },
    async (req) => {
      await reader(req);
      const q = req.query;
      return authority.listNodes({ limit: intParam(q.limit, 'limit'), after: q.after, sort: q.sort, order: q.order, role: q.role, status: q.status, q: q.q });
    },
  );
  app.get<{ Params: { id: string } }>('/v1/nodes/:id', async (req) => {
    await reader(req);
    return authority.getNode(req.params.id);
  });
  app.post<{ Params: { id: string } }>('/v1/nodes/:id/promote', async (req) => authority.setRole(req.params.id, 'manager', actor(await admin(req))));
  app.post<{ Params: { id: string } }>('/v1/nodes/:id/demote', async (req) => authority.setRole(req.params.id, 'worker', actor(await admin(req))));
  app.delete<{ Params: { id: string } }>('/v1/nodes/:id', async (req) => {
    const p = await admin(req);
    const n = await authority.removeNode(req.params.id, actor(p));
    req.log.info({ node: n.id }, 'node removed');
    return n;
  });

  // CRLs: every replica (and worker) serves the newest stored CRL; the DER is kept while its
  // number is still the newest (a cheap query), so every process serves a new CRL at once
  const crlCache = new Map<string, { number: number | null; der: Buffer | null }>();
  app.get<{ Params: { ca: string }; Querystring: { format?: string } }>('/v1/crl/:ca', { config: { query: ['format'] } }, async (req, reply) => {
    const number = await authority.latestCrlNumber(req.params.ca);
    let hit = crlCache.get(req.params.ca);
    if (!hit || hit.number !== number) {
      hit = { number, der: number === null ? null : await authority.latestCrl(req.params.ca) };
      crlCache.set(req.params.ca, hit);
    }
    if (!hit.der) throw new CairnError('not_found', `no CRL has been published for ${req.params.ca} yet`);
    reply.header('cache-control', 'max-age=5');
    if (req.query.format === 'pem') {
      reply.header('content-type', 'application/x-pem-file');
      return toPem('X509 CRL', hit.der);
    }
    reply.header('content-type', 'application/pkix-crl');
    return hit.der;
  });

  app.get<{ Querystring: { node?: string; status?: string; kind?: string; expiring?: string; limit?: string; after?: string } }>(
    '/v1/certificates',
    { config: { query: ['node', 'status', 'kind', 'expiring', 'limit', 'after'] } },
    async (req) => {
      await admin(req);
      const q = req.query;
      return authority.findCertificates({ nodeId: q.node, status: q.status, kind: q.kind, expiringDays: intParam(q.expiring, 'expiring'), limit: intParam(q.limit, 'limit'), after: q.after });
    },
  );
  app.get<{ Params: { serial: string } }>('/v1/certificates/:serial', async (req) => {
    mayReadCertificate(await reader(req), req.params.serial);
    return authority.getCertificate(req.params.serial);
  });

  // who the caller is, and its certificate: any certificate this CA issued and holds good
  app.get('/v1/whoami', async (req) => {
    const p = await authority.identifyPeer(peerCert(req));
    const c = await authority.getCertificate(p.serial);
    return { kind: p.kind, nodeId: p.nodeId, role: p.role, serial: p.serial, subject: c.subject, notAfter: c.notAfter, certificate: c.pem };
  });

  // client bundles: issued for a CSR (the key stays where the command runs), listed, revoked
  app.post('/v1/bundles', async (req, reply) => {
    const p = await admin(req);
    const b = body(req);
    const r = await createBundle(authority, { user: b.user, admin: b.admin, expiryMs: b.expiryMs, csr: b.csr }, actor(p));
    metrics.issued.inc({ kind: r.admin ? 'admin' : 'client' });
    req.log.info({ user: r.user, admin: r.admin, serial: r.serial }, 'client bundle issued');
    return reply.code(201).send(r);
  });
  app.get<{ Querystring: { user?: string } }>('/v1/bundles', { config: { query: ['user'] } }, async (req) => {
    await admin(req);
    return listBundles(authority, { user: req.query.user });
  });
  app.post<{ Params: { target: string } }>('/v1/bundles/:target/revoke', async (req) => {
    const p = await admin(req);
    const b = (req.body ?? {}) as { reason?: unknown; force?: unknown };
    const r = await revokeBundle(authority, req.params.target, b.reason, actor(p), b.force === true);
    req.log.info(r, 'client bundle revoked');
    return r;
  });
  app.post<{ Params: { serial: string } }>('/v1/certificates/:serial/revoke', async (req) => {
    const p = await admin(req);
    const b = (req.body ?? {}) as { reason?: unknown; force?: unknown };
    const r = await authority.revoke({ serial: req.params.serial }, b.reason, actor(p), { force: b.force === true });
    req.log.info(r, 'certificate revoked');
    return r;
  });
  app.post<{ Params: { id: string } }>('/v1/nodes/:id/revoke', async (req) => {
    const p = await admin(req);
    const r = await authority.revoke({ nodeId: req.params.id }, (req.body as { reason?: unknown } | null)?.reason, actor(p));
    req.log.info({ ...r, node: req.params.id }, 'node certificates revoked');
    return r;
  });

  app.get('/v1/replicas', async (req) => {
    await admin(req);
    const rows = await authority.store.listReplicas();
    return {
      replicas: rows.map((r) => ({ id: r.id, address: r.address, version: r.version, startedAt: new Date(Number(r.started_at)).toISOString(), heartbeatAt: new Date(Number(r.heartbeat_at)).toISOString() })),
    };
  });

  app.delete<{ Params: { id: string } }>('/v1/replicas/:id', async (req) => {
    const p = await admin(req);
    const r = await authority.removeReplica(req.params.id, actor(p));
    req.log.info({ replica: r.id, revoked: r.revoked.length }, 'replica removed');
    return r;
  });

  app.get('/v1/overview', async (req) => {
    await admin(req);
    return overview(authority);
  });
  app.get<{ Querystring: { action?: string; actor?: string; limit?: string; after?: string; since?: string } }>(
    '/v1/audit',
    { config: { query: ['action', 'actor', 'limit', 'after', 'since'] } },
    async (req) => {
      await admin(req);
      const q = req.query;
      const since = q.since === undefined ? undefined : Date.parse(q.since);
      if (since !== undefined && !Number.isFinite(since)) throw new CairnError('bad_request', 'since must be a time such as 2024-05-01T00:00:00Z');
      return auditLog(authority, { action: q.action, actor: q.actor, limit: intParam(q.limit, 'limit'), after: q.after, since });
    },
  );
  auditChainRoutes(app, authority, admin, intParam);

  // OCSP (RFC 6960): unauthenticated, answers in OCSP's own format (ocsp-routes.ts)
  app.register(ocspRoutes(authority, metrics, o.logger));

  app.get('/v1/config', async (req) => {
    await admin(req);
    return authority.config;
  });
  app.patch('/v1/config', async (req) => {
    const p = await admin(req);
    const c = await authority.updateConfig(body(req), actor(p));
    await o.onConfigChange?.();
    return c;
  });

  app.addHook('onClose', async () => watcher.stop());
  return { app, metrics, recordJoinFailure: (addr) => limiter.fail(addr) };
}
