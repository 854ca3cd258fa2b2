/**
 * The dashboard's web server (node:http; loopback by default). Everything that guards it is
 * here: the one-time login secret, the session cookie (HttpOnly, SameSite=Strict), the CSRF
 * token every POST must carry, the Host check (a page of another site cannot reach a
 * loopback dashboard through DNS rebinding), and the headers of every answer (a CSP that
 * allows only the dashboard's own script and style, no framing, no referrer to other sites, no caching).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import { isIP } from 'node:net';
import { CairnError } from '../util/errors.js';
import { APP_CSS, APP_JS } from './assets.js';
import { ClusterApi } from './api.js';
import { errorPage, route, type PageResult, type TokenSource } from './pages.js';

export const SESSION_COOKIE = 'cairn_session';
const SESSION_IDLE_MS = 8 * 3600_000;
const MAX_SESSIONS = 64;
const MAX_FORM_BYTES = 16 * 1024;

export const CSP = [
  "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self'", "connect-src 'self'",
  "form-action 'self'", "frame-ancestors 'none'", "base-uri 'none'",
].join('; ');

const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': CSP,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  // same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on form posts
  'referrer-policy': 'same-origin',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'cache-control': 'no-store',
};

export interface DashboardOptions {
  api: ClusterApi;
  /** listen address (default 127.0.0.1) and port (0: any free one) */
  host?: string;
  port?: number;
  tokens: TokenSource;
  /** told the login URL at start and, since a secret works once, after every login */
  onLoginUrl?: (url: string) => void;
}

export interface RunningDashboard {
  /** http://host:port */
  url: string;
  /** the current one-time login URL */
  loginUrl(): string;
  close(): Promise<void>;
}

const sha256 = (s: string) => createHash('sha256').update(s).digest();
const sameSecret = (a: string, bHash: Buffer) => timingSafeEqual(sha256(a), bHash);

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

interface Session {
  csrf: string;
  seen: number;
}

export async function startDashboard(o: DashboardOptions): Promise<RunningDashboard> {
  const host = o.host ?? '127.0.0.1';
  const sessions = new Map<string, Session>(); // by SHA-256 of the cookie value
  let secretHash = Buffer.alloc(32);
  let secret = '';
  let base = '';
  const newSecret = () => {
    secret = randomBytes(24).toString('hex');
    secretHash = sha256(secret);
  };
  newSecret();
  const loginUrl = () => `${base}/login?secret=${secret}`;

  const server = http.createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) send(res, 500, errorPage(500, 'The dashboard failed to answer this request.'));
      else res.destroy();
    });
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;

  const allowedHosts = (port: number): Set<string> | null => {
    if (!isLoopback(host) && host !== '0.0.0.0' && host !== '::') return new Set([`${isIP(host) === 6 ? `[${host}]` : host}:${port}`]);
    if (!isLoopback(host)) return null; // every address: any Host (put it behind your own proxy)
    return new Set([`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`, `${isIP(host) === 6 ? `[${host}]` : host}:${port}`]);
  };
  let hosts: Set<string> | null = null;

  function send(res: http.ServerResponse, status: number, body: string | Buffer, headers: Record<string, string> = {}) {
    res.writeHead(status, { ...SECURITY_HEADERS, 'content-type': 'text/html; charset=utf-8', ...headers });
    res.end(body);
  }

  function sessionOf(req: http.IncomingMessage): Session | undefined {
    const cookie = req.headers.cookie ?? '';
    for (const part of cookie.split(';')) {
      const [k, v] = part.trim().split('=');
      if (k !== SESSION_COOKIE || !v) continue;
      const key = sha256(v).toString('hex');
      const s = sessions.get(key);
      if (!s) continue;
      if (Date.now() - s.seen > SESSION_IDLE_MS) {
        sessions.delete(key);
        continue;
      }
      s.seen = Date.now();
      return s;
    }
    return undefined;
  }

  async function readForm(req: http.IncomingMessage): Promise<URLSearchParams | null> {
    const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (type !== 'application/x-www-form-urlencoded') return null;
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req) {
      size += (c as Buffer).length;
      if (size > MAX_FORM_BYTES) return null;
      chunks.push(c as Buffer);
    }
    return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (hosts && !hosts.has(String(req.headers.host ?? '').toLowerCase())) {
      return send(res, 421, errorPage(421, 'This dashboard answers only to the address it printed.'));
    }
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://dashboard');
    } catch {
      return send(res, 400, errorPage(400, 'Bad request.'));
    }
    const method = req.method ?? 'GET';
    if (method === 'GET' && url.pathname === '/static/app.css') return send(res, 200, APP_CSS, { 'content-type': 'text/css; charset=utf-8', 'cache-control': 'max-age=300' });
    if (method === 'GET' && url.pathname === '/static/app.js') return send(res, 200, APP_JS, { 'content-type': 'text/javascript; charset=utf-8', 'cache-control': 'max-age=300' });
    if (method === 'GET' && url.pathname === '/favicon.ico') return send(res, 204, '');

    if (method === 'GET' && url.pathname === '/login') {
      const given = url.searchParams.get('secret') ?? '';
      if (!given || !sameSecret(given, secretHash)) {
        return send(res, 401, errorPage(401, 'This login link is not valid: it was used already, or it is not the one "cairn dashboard" printed. Use the newest login URL it printed.'));
      }
      newSecret(); // a login link works once
      o.onLoginUrl?.(loginUrl());
      const id = randomBytes(32).toString('base64url');
      if (sessions.size >= MAX_SESSIONS) sessions.delete(sessions.keys().next().value as string);
      sessions.set(sha256(id).toString('hex'), { csrf: randomBytes(32).toString('base64url'), seen: Date.now() });
      return send(res, 303, '', { location: '/', 'set-cookie': `${SESSION_COOKIE}=${id}; HttpOnly; SameSite=Strict; Path=/` });
    }

    const session = sessionOf(req);
    if (!session) {
      return send(res, 401, errorPage(401, 'Log in with the URL "cairn dashboard" printed (it carries a one-time secret).'));
    }
    let form: URLSearchParams | undefined;
    if (method === 'POST') {
      // a form of this dashboard: same origin, with the session's CSRF token
      const origin = req.headers.origin;
      if (origin !== undefined && origin !== `http://${req.headers.host}`) return send(res, 403, errorPage(403, 'Refused: the request did not come from this dashboard.'));
      const f = await readForm(req);
      const token = f?.get('_csrf') ?? '';
      if (!f || !token || !timingSafeEqual(sha256(token), sha256(session.csrf))) {
        return send(res, 403, errorPage(403, 'Refused: the form is missing its CSRF token or it is not this session\'s. Reload the page and try again.'));
      }
      form = f;
      if (url.pathname === '/logout') {
        for (const [k, s] of sessions) if (s === session) sessions.delete(k);
        return send(res, 303, '', { location: '/logged-out', 'set-cookie': `${SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0` });
      }
    } else if (method !== 'GET' && method !== 'HEAD') {
      return send(res, 405, errorPage(405, 'Method not allowed.'), { allow: 'GET, POST' });
    }
    const r: PageResult = await route({ method, url, form, csrf: session.csrf }, { api: o.api, tokens: o.tokens });
    if ('redirect' in r) return send(res, 303, '', { location: r.redirect });
    send(res, r.status, r.body.text);
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => {
      const why = e.code === 'EADDRINUSE' ? 'the address is in use' : e.code === 'EACCES' ? 'permission denied' : e.code === 'EADDRNOTAVAIL' ? 'no such local address' : e.message;
      reject(new CairnError('listen_failed', `cannot listen on ${host}:${o.port ?? 0}: ${why}`));
    });
    server.listen(o.port ?? 0, host, () => {
      server.removeAllListeners('error');
      resolve();
    });
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : (o.port ?? 0);
  hosts = allowedHosts(port);
  const shown = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
  base = `http://${isIP(shown) === 6 ? `[${shown}]` : shown}:${port}`;
  return {
    url: base,
    loginUrl,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
