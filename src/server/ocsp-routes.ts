/**
 * The OCSP routes (RFC 6960 Appendix A, RFC 5019): `POST /v1/ocsp/<ca>` with the DER request
 * as the body (application/ocsp-request), and `GET /v1/ocsp/<ca>/<base64 request>`. Every
 * answer is an OCSP response (application/ocsp-response), refusals included: a body too large,
 * of another type, or not a request is `malformedRequest`, never a JSON error or a 500.
 * A GET answer without a nonce carries HTTP caching headers up to its nextUpdate.
 */
import { createHash } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { MAX_OCSP_REQUEST_BYTES, OcspAnswer, OcspResponder } from '../authority/ocsp.js';
import { ocspErrorResponse } from '../pki/index.js';
import type { Authority } from '../authority/authority.js';
import type { Metrics } from './metrics.js';

const OCSP_RESPONSE = 'application/ocsp-response';

function send(reply: FastifyReply, a: OcspAnswer, cache: boolean) {
  reply.header('content-type', OCSP_RESPONSE);
  if (cache && a.status === 'successful' && !a.nonce && a.thisUpdate && a.nextUpdate) {
    const maxAge = Math.max(0, Math.floor((a.nextUpdate.getTime() - Date.now()) / 1000));
    reply.header('cache-control', `max-age=${maxAge}, public, no-transform, must-revalidate`);
    reply.header('last-modified', a.thisUpdate.toUTCString());
    reply.header('expires', a.nextUpdate.toUTCString());
    reply.header('etag', `"${createHash('sha1').update(a.der).digest('hex')}"`);
  } else {
    reply.header('cache-control', 'no-cache, no-store');
  }
  return reply.code(200).send(a.der);
}

/** Register the OCSP routes in their own scope (their own body parser and error answers). */
export function ocspRoutes(authority: Authority, metrics: Metrics, log: Logger) {
  const responder = new OcspResponder(authority);
  const count = (a: OcspAnswer) => {
    if (a.statuses) for (const s of a.statuses) metrics.ocsp.inc({ status: s });
    else metrics.ocsp.inc({ status: a.status });
  };
  return async (scope: FastifyInstance) => {
    scope.removeAllContentTypeParsers();
    // any body is read as bytes (up to a little over the largest request; larger is malformed)
    scope.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: MAX_OCSP_REQUEST_BYTES * 2 }, (_req, body, done) => done(null, body));
    scope.setErrorHandler((err, req, reply) => {
      const e = err as { code?: string; statusCode?: number };
      if (e.code === 'FST_ERR_CTP_BODY_TOO_LARGE' || (e.statusCode !== undefined && e.statusCode < 500)) {
        metrics.ocsp.inc({ status: 'malformedRequest' });
        return reply.code(200).header('content-type', OCSP_RESPONSE).header('cache-control', 'no-cache, no-store').send(ocspErrorResponse('malformedRequest'));
      }
      const unavailable = (err as { code?: string }).code === 'store_unavailable';
      req.log.warn({ err }, 'OCSP request failed');
      metrics.ocsp.inc({ status: unavailable ? 'tryLater' : 'internalError' });
      return reply.code(200).header('content-type', OCSP_RESPONSE).header('cache-control', 'no-cache, no-store').send(ocspErrorResponse(unavailable ? 'tryLater' : 'internalError'));
    });

    scope.post<{ Params: { ca: string } }>('/v1/ocsp/:ca', async (req, reply) => {
      const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      const a = await responder.respond(req.params.ca, body);
      count(a);
      return send(reply, a, false);
    });

    // the base64 request may hold "/" (RFC 6960 A.1: URL-encoded, but not every client encodes it)
    scope.get<{ Params: { ca: string; '*': string } }>('/v1/ocsp/:ca/*', async (req: FastifyRequest<{ Params: { ca: string; '*': string } }>, reply) => {
      const prefix = `/v1/ocsp/${req.params.ca}/`;
      const rawPath = req.url.split('?')[0];
      let b64 = rawPath.startsWith(prefix) ? rawPath.slice(prefix.length) : req.params['*'];
      let der: Buffer;
      try {
        b64 = decodeURIComponent(b64);
        if (b64.length > MAX_OCSP_REQUEST_BYTES * 2 || !/^[A-Za-z0-9+/=_-]*$/.test(b64)) throw new Error('not base64');
        der = Buffer.from(b64.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
      } catch {
        der = Buffer.alloc(0);
      }
      const a = await responder.respond(req.params.ca, der);
      count(a);
      return send(reply, a, true);
    });
    log.debug('OCSP responder ready');
  };
}
