/**
 * Fixtures of the node-side tests: a small test PKI made with src/pki, node state directories,
 * and a small in-process CA (real HTTPS on 127.0.0.1) that answers the node API: GET /v1/ca,
 * POST /v1/join, POST /v1/renew and GET /v1/crl/cluster.
 */
import assert from 'node:assert/strict';
import { KeyObject, X509Certificate } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import {
  buildCrl, certificateToPem, csrDerFrom, generateKeyPair, Issuer, issueCertificate, KeyPair, leafProfile, makeIssuer, makeSerial, parseCsr,
  privateKeyToPem, randomId, RevokedEntry, rootCaProfile, rootDigest, selfSignCertificate, spkiDer, SubjectAltName, toPem,
} from '../../src/pki/index.js';
import { NodeConfig, readNodeIdentity, writeNewIdentity } from '../../src/agent/node-state.js';
import type { NodeTls } from '../../src/agent/tls.js';
import { CairnError } from '../../src/util/errors.js';

// ---------------------------------------------------------------------------------------------
// A small test PKI

export let seq = 1n;
export const HOUR = 3600_000;

export interface TestCa {
  der: Buffer;
  pem: string;
  issuer: Issuer;
}

/** A cross-signed certificate: `next`'s subject and public key, issued by `by` (the shape of a root rotation). */
export function crossSign(next: TestCa, by: TestCa, o: { ca?: boolean; key?: Buffer } = {}): Buffer {
  return issueCertificate(
    {
      serial: makeSerial(seq++),
      subject: { CN: new X509Certificate(next.der).subject.replace(/^CN=/, '') },
      notBefore: new Date(Date.now() - HOUR),
      notAfter: new Date(Date.now() + 1000 * HOUR),
      publicKey: o.key ?? spkiDer(next.issuer.key),
      ...(o.ca === false ? {} : { ca: {} }),
      keyUsage: o.ca === false ? ['digitalSignature'] : ['digitalSignature', 'keyCertSign', 'cRLSign'],
    },
    by.issuer,
  );
}

export function makeRoot(cn = 'test-root'): TestCa {
  const kp = generateKeyPair();
  const der = selfSignCertificate(rootCaProfile({ CN: cn }, spkiDer(kp.publicKey), makeSerial(seq++)), kp.privateKey);
  return { der, pem: certificateToPem(der), issuer: makeIssuer(der, kp.privateKey) };
}

export function issueLeaf(
  ca: TestCa,
  o: { cn: string; ou: string; clusterId: string; sans?: SubjectAltName[]; pub?: { der: Buffer; key: KeyObject }; lifetimeMs?: number; now?: Date },
): { kp: KeyPair | undefined; der: Buffer; pem: string } {
  const kp = o.pub ? undefined : generateKeyPair();
  const publicKeyDer = o.pub?.der ?? spkiDer(kp!.publicKey);
  const publicKey = o.pub?.key ?? kp!.publicKey;
  const der = issueCertificate(
    leafProfile({
      subject: { O: o.clusterId, OU: o.ou, CN: o.cn },
      publicKeyDer,
      publicKey,
      serial: makeSerial(seq++),
      lifetimeMs: o.lifetimeMs ?? 90 * 24 * HOUR,
      extKeyUsage: ['serverAuth', 'clientAuth'],
      sans: o.sans ?? [{ dns: o.ou }, { dns: o.cn }],
      now: o.now,
    }),
    ca.issuer,
  );
  return { kp, der, pem: certificateToPem(der) };
}

/** Write a node state directory for a node certificate issued by `ca`. */
export function makeNodeDir(
  dir: string,
  ca: TestCa,
  o: { role: 'worker' | 'manager'; clusterId: string; nodeId?: string; endpoints?: string[]; lifetimeMs?: number; now?: Date; ou?: string; trust?: string },
): { config: NodeConfig; serial: string } {
  const nodeId = o.nodeId ?? randomId();
  const leaf = issueLeaf(ca, { cn: nodeId, ou: o.ou ?? o.role, clusterId: o.clusterId, lifetimeMs: o.lifetimeMs, now: o.now });
  const config: NodeConfig = { nodeId, role: o.role, clusterId: o.clusterId, endpoints: o.endpoints ?? ['https://127.0.0.1:1'] };
  writeNewIdentity(dir, { keyPem: privateKeyToPem(leaf.kp!.privateKey), certPem: leaf.pem, caPem: o.trust ?? ca.pem, config });
  return { config, serial: readNodeIdentity(dir).leaf.serialHex };
}

/** A TLS server with a node's context that answers "hello <peer node id>" to accepted peers. */
export function nodeTlsServer(ctx: NodeTls): tls.Server {
  const server = tls.createServer(ctx.serverOptions(), (s) => {
    if (s.destroyed) return;
    s.end(`hello ${ctx.checkPeer(s).nodeId}\n`);
  });
  ctx.attach(server);
  return server;
}

/** Connect with a node's context to a server that must have `role`; resolves to its answer. */
export function talk(ctx: NodeTls, port: number, role: 'worker' | 'manager'): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect(ctx.clientOptions({ host: '127.0.0.1', port, role }));
    let text = '';
    s.on('data', (d) => (text += d));
    s.on('error', reject);
    s.on('close', () => (text ? resolve(text) : reject(new Error('connection closed without an answer'))));
  });
}

export function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port)));
}

export function close(server: net.Server): Promise<void> {
  return new Promise((resolve) => {
    (server as http.Server).closeAllConnections?.();
    server.close(() => resolve());
  });
}

export const rejectsWith = async (p: Promise<unknown>, code: string, re?: RegExp) =>
  assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof CairnError, `expected a CairnError, got ${e}`);
    assert.equal(e.code, code, e.message);
    if (re) assert.match(e.message, re);
    return true;
  });


// ---------------------------------------------------------------------------------------------
// Renewal and the agent loop against an in-process CA

export interface FakeCa {
  url: string;
  clusterId: string;
  root: TestCa;
  /** what GET /v1/ca says the trust bundle is */
  bundle: string;
  /** extra fields of GET /v1/ca (e.g. crossSigned) */
  caExtra: Record<string, unknown>;
  /** role given at the next renewals */
  role: 'worker' | 'manager';
  lifetimeMs: number;
  /** answers to give to the next renewals before issuing: [status, code] */
  failures: [number, string][];
  renewals: number;
  caCalls: number;
  /** every request seen: "METHOD /path" */
  requests: string[];
  /** join tokens accepted by POST /v1/join, and the role each gives */
  tokens: Map<string, 'worker' | 'manager'>;
  /** the DER CRL served at GET /v1/crl/cluster (404 without one) */
  crl: Buffer | null;
  /** the CA that signs renewals and joins (default: root), and PEM sent after the leaf (a cross-signed certificate) */
  issuer: TestCa;
  chainExtra: string;
  /** whether GET /v1/ca has a version and answers ?wait=<version> as a long-poll (default true; false: a server of before, 400 on ?wait) */
  longPoll: boolean;
  /** GET /v1/ca's version; bump() changes it and answers every waiting long-poll */
  version: number;
  bump(): void;
  /** answer every waiting long-poll now, version unchanged (after askRenew.add: "within about a second") */
  poke(): void;
  /** how long a long-poll is held without a change (default 25 s) */
  waitMs: number;
  /** node IDs whose long-polls answer node.renew = true (removed when the node renews) */
  askRenew: Set<string>;
  /** long-polls being held now */
  waiting: number;
  /** the server certificate's serial (hex) */
  serverSerial: string;
  close(): Promise<void>;
}

/** A CRL of `ca` listing `serials` (hex), with the given CRL number. */
export function makeCrl(ca: TestCa, serials: string[], number: bigint): Buffer {
  const revoked: RevokedEntry[] = serials.map((s) => ({ serial: Buffer.from(s, 'hex'), revokedAt: new Date(), reason: 'privilegeWithdrawn' }));
  return buildCrl({ issuer: ca.issuer, number, thisUpdate: new Date(Date.now() - 60_000), nextUpdate: new Date(Date.now() + 24 * HOUR), revoked });
}

/**
 * An in-process CA. `server` overrides its TLS certificate (default: a proper CA replica
 * certificate, OU=ca-replica, DNS:ca, O=<cluster>, issued by `root`).
 */
export async function fakeCa(root: TestCa, clusterId: string, o: { server?: { der: Buffer; pem: string; kp: KeyPair | undefined }; clientCa?: string } = {}): Promise<FakeCa> {
  const serverLeaf = o.server ?? issueLeaf(root, { cn: randomId(), ou: 'ca-replica', clusterId, sans: [{ dns: 'ca' }] });
  const st: FakeCa = {
    url: '',
    clusterId,
    root,
    bundle: root.pem,
    caExtra: {},
    role: 'worker',
    lifetimeMs: 90 * 24 * HOUR,
    failures: [],
    renewals: 0,
    caCalls: 0,
    requests: [],
    tokens: new Map(),
    crl: null,
    issuer: root,
    chainExtra: '',
    longPoll: true,
    version: 1,
    bump() {
      st.version++;
      for (const w of [...waiters]) w();
    },
    poke() {
      for (const w of [...waiters]) w();
    },
    waitMs: 25_000,
    askRenew: new Set(),
    waiting: 0,
    serverSerial: new (await import('node:crypto')).X509Certificate(serverLeaf.der).serialNumber.toUpperCase(),
    close: async () => close(server),
  };
  const waiters = new Set<() => void>();
  const server = https.createServer(
    { key: privateKeyToPem(serverLeaf.kp!.privateKey), cert: serverLeaf.pem, ca: o.clientCa ?? root.pem, requestCert: true, rejectUnauthorized: false },
    (req, res) => {
      const send = (status: number, body: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      st.requests.push(`${req.method} ${req.url}`);
      let raw = '';
      req.on('data', (d) => (raw += d));
      req.on('end', () => {
        const u = new URL(req.url ?? '/', 'https://x');
        if (req.method === 'GET' && u.pathname === '/v1/ca') {
          st.caCalls++;
          const wait = u.searchParams.get('wait');
          if (u.search && (!st.longPoll || wait === null)) return send(400, { error: { code: 'bad_request', message: '/v1/ca takes no query parameters' } });
          const answer = () => {
            const sock = req.socket as tls.TLSSocket;
            const cn = sock.authorized ? String(sock.getPeerCertificate()?.subject?.CN ?? '') : '';
            const node = cn ? { node: { id: cn, role: st.role, renew: st.askRenew.has(cn) } } : {};
            const version = st.longPoll ? { version: String(st.version) } : {};
            send(200, { clusterId, roots: { cluster: root.pem, client: root.pem }, trustBundle: st.bundle, digest: rootDigest(root.der), rotation: null, ...version, ...node, ...st.caExtra });
          };
          if (wait === null || wait !== String(st.version) || (req.socket as tls.TLSSocket).authorized && st.askRenew.has(String((req.socket as tls.TLSSocket).getPeerCertificate()?.subject?.CN))) return answer();
          st.waiting++;
          const done = () => {
            waiters.delete(done);
            clearTimeout(t);
            st.waiting--;
            if (!res.destroyed) answer();
          };
          const t = setTimeout(done, st.waitMs);
          waiters.add(done);
          res.on('close', () => {
            if (waiters.has(done)) done();
          });
          return;
        }
        if (req.method === 'GET' && req.url?.startsWith('/v1/crl/cluster')) {
          if (!st.crl) return send(404, { error: { code: 'not_found', message: 'no CRL yet' } });
          if (req.url.includes('format=pem')) {
            res.writeHead(200, { 'content-type': 'application/x-pem-file' });
            return res.end(toPem('X509 CRL', st.crl));
          }
          res.writeHead(200, { 'content-type': 'application/pkix-crl' });
          return res.end(st.crl);
        }
        if (req.method === 'POST' && req.url === '/v1/join') {
          const body = JSON.parse(raw);
          const role = st.tokens.get(body.token);
          if (!role) return send(401, { error: { code: 'invalid_token', message: 'invalid token' } });
          const csr = parseCsr(csrDerFrom(body.csr));
          const nodeId = randomId();
          const leaf = issueLeaf(st.issuer, { cn: nodeId, ou: role, clusterId, pub: { der: csr.publicKeyDer, key: csr.publicKey }, lifetimeMs: st.lifetimeMs });
          return send(200, { nodeId, role, clusterId, certificate: leaf.pem + st.chainExtra, trustBundle: st.bundle });
        }
        if (req.method === 'POST' && req.url === '/v1/renew') {
          const sock = req.socket as tls.TLSSocket;
          if (!sock.authorized) return send(401, { error: { code: 'client_certificate_required', message: 'a client certificate is required' } });
          const f = st.failures.shift();
          if (f) return send(f[0], { error: { code: f[1], message: `refused: ${f[1]}` } });
          const peer = sock.getPeerCertificate();
          const nodeId = String(peer.subject.CN);
          const csr = parseCsr(csrDerFrom(JSON.parse(raw).csr));
          const leaf = issueLeaf(st.issuer, { cn: nodeId, ou: st.role, clusterId, pub: { der: csr.publicKeyDer, key: csr.publicKey }, lifetimeMs: st.lifetimeMs });
          st.renewals++;
          st.askRenew.delete(nodeId);
          return send(200, { nodeId, role: st.role, clusterId, certificate: leaf.pem + st.chainExtra, trustBundle: st.bundle });
        }
        send(404, { error: { code: 'not_found', message: 'no route' } });
      });
    },
  );
  st.url = `https://127.0.0.1:${await listen(server)}`;
  return st;
}

/** A join token for `root` (its digest) with a fresh secret. */
export function tokenFor(root: TestCa): string {
  return `CAIRN-1-${rootDigest(root.der)}-${randomId()}`;
}
