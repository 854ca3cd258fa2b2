/**
 * Unit tests of the node side (src/agent): join tokens, the renewal window and backoff, the
 * HTTPS client, the state directory journal, renewal and the agent loop against a small
 * in-process CA (real HTTPS on 127.0.0.1, certificates made with src/pki), and the node TLS
 * context with real TLS servers and clients.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import { generateKeyPair, privateKeyToPem, randomId, rootDigest } from '../../src/pki/index.js';
import { refreshTrustBundle, renewalTime, renewalWindow, runAgent } from '../../src/agent/agent.js';
import { ApiError, closeAgents, isRetryable, normalizeEndpoint, request } from '../../src/agent/client.js';
import { backoffDelay, isFatalRenewalError, renewOnce, RenewResult } from '../../src/agent/renew.js';
import { NodeConfig, nodePaths, readNodeIdentity, recoverPendingCommit, replaceIdentity } from '../../src/agent/node-state.js';
import { loadNodeTls, NodeTls } from '../../src/agent/tls.js';
import { parseJoinToken } from '../../src/agent/token.js';
import { CairnError } from '../../src/util/errors.js';
import { close, FakeCa, fakeCa, HOUR, issueLeaf, listen, makeNodeDir, makeRoot, rejectsWith } from './agent-fixtures.js';
import { fileMode, tmpDir } from '../helpers.js';

// ---------------------------------------------------------------------------------------------

describe('join tokens', () => {
  const digest = rootDigest(makeRoot().der);
  const secret = randomId();

  test('a well-formed token parses into digest and secret; surrounding whitespace is ignored', () => {
    assert.equal(digest.length, 50);
    assert.deepEqual(parseJoinToken(`CAIRN-1-${digest}-${secret}`), { digest, secret });
    assert.deepEqual(parseJoinToken(`  CAIRN-1-${digest}-${secret}\n`), { digest, secret });
  });

  test('malformed tokens are refused with a message saying what is wrong (usage error, exit 2)', () => {
    const cases: [string, RegExp][] = [
      ['', /empty/],
      [`SWMTKN-1-${digest}-${secret}`, /does not start with "CAIRN-"/],
      [`CAIRN-x-${digest}-${secret}`, /no version/],
      [`CAIRN-2-${digest}-${secret}`, /version 2 is not supported/],
      [`CAIRN-1-${digest}`, /3 dash-separated parts instead of 4/],
      [`CAIRN-1-${digest}-${secret}-extra`, /5 dash-separated parts/],
      [`CAIRN-1-${digest.slice(1)}-${secret}`, /digest part has 49 characters/],
      [`CAIRN-1-${digest.toUpperCase()}-${secret}`, /digest part must be lowercase/],
      [`CAIRN-1-${digest}-${secret}x`, /secret part has 26 characters/],
      [`CAIRN-1-${digest}-${secret.slice(0, 24)}!`, /secret part must be lowercase/],
    ];
    for (const [tok, re] of cases) {
      assert.throws(() => parseJoinToken(tok), (e: unknown) => {
        assert.ok(e instanceof CairnError);
        assert.equal(e.code, 'bad_token');
        assert.equal(e.exitCode, 2);
        assert.match(e.message, re, `token ${JSON.stringify(tok)}`);
        return true;
      });
    }
  });
});

describe('renewal schedule', () => {
  const nb = Date.parse('2030-01-01T00:00:00Z');
  const na = nb + 100 * HOUR;

  test('the window is 50% to 80% of notBefore → notAfter', () => {
    const w = renewalWindow(new Date(nb), new Date(na));
    assert.equal(w.start.getTime(), nb + 50 * HOUR);
    assert.equal(w.end.getTime(), nb + 80 * HOUR);
  });

  test('the renewal time is the random point in the window; out-of-range randoms are clamped', () => {
    assert.equal(renewalTime(nb, na, 0).getTime(), nb + 50 * HOUR);
    assert.equal(renewalTime(nb, na, 0.5).getTime(), nb + 65 * HOUR);
    assert.equal(renewalTime(nb, na, 1).getTime(), nb + 80 * HOUR);
    assert.equal(renewalTime(nb, na, -3).getTime(), nb + 50 * HOUR);
    for (let i = 0; i < 1000; i++) {
      const t = renewalTime(nb, na).getTime();
      assert.ok(t >= nb + 50 * HOUR && t <= nb + 80 * HOUR);
    }
  });

  test('a 90-day certificate renews between day 45 and day 72', () => {
    const day = 24 * HOUR;
    const w = renewalWindow(0, 90 * day);
    assert.equal(w.start.getTime(), 45 * day);
    assert.equal(w.end.getTime(), 72 * day);
  });

  test('backoff doubles from 1 s, is capped at 5 minutes, and is jittered between half and all of it', () => {
    assert.equal(backoffDelay(0, { random: () => 0 }), 500);
    assert.equal(backoffDelay(0, { random: () => 1 }), 1000);
    assert.equal(backoffDelay(3, { random: () => 1 }), 8000);
    assert.equal(backoffDelay(8, { random: () => 1 }), 256_000);
    assert.equal(backoffDelay(9, { random: () => 1 }), 300_000);
    assert.equal(backoffDelay(1000, { random: () => 0 }), 150_000);
    const seen = new Set(Array.from({ length: 50 }, () => backoffDelay(4)));
    assert.ok(seen.size > 10, 'jitter spreads retries');
  });

  test('removed, revoked and expired are fatal; network trouble, 5xx and 429 are retried', () => {
    for (const c of ['node_removed', 'certificate_revoked', 'certificate_expired', 'client_certificate_required', 'forbidden'] as const) {
      assert.equal(isFatalRenewalError(new ApiError(c, c, 403, 'https://x', null)), true, c);
    }
    assert.equal(isFatalRenewalError(new CairnError('unreachable', 'x')), false);
    assert.equal(isFatalRenewalError(new ApiError('unavailable', 'x', 503, 'https://x', 1000)), false);
    assert.equal(isFatalRenewalError(new ApiError('rate_limited', 'x', 429, 'https://x', 1000)), false);
    assert.equal(isFatalRenewalError(new ApiError('bad_csr', 'x', 400, 'https://x', null)), true);
  });
});

describe('endpoints', () => {
  test('addresses are normalized to https origins; plain HTTP and junk are refused', () => {
    assert.equal(normalizeEndpoint('ca.example:7443'), 'https://ca.example:7443');
    assert.equal(normalizeEndpoint('https://10.0.0.1:7443/some/path'), 'https://10.0.0.1:7443');
    assert.equal(normalizeEndpoint('https://[::1]:7443'), 'https://[::1]:7443');
    assert.throws(() => normalizeEndpoint('http://ca:7443'), /HTTPS only/);
    assert.throws(() => normalizeEndpoint('https://user:pw@ca:7443'), /credentials/);
    assert.throws(() => normalizeEndpoint('https://'), /not a valid CA address/);
  });
});

// ---------------------------------------------------------------------------------------------
// The HTTPS client against local servers

describe('HTTPS client', () => {
  const clusterId = randomId();
  const root = makeRoot();
  const other = makeRoot('other-root');
  const serverLeaf = issueLeaf(root, { cn: randomId(), ou: 'ca-replica', clusterId, sans: [{ dns: 'ca' }] });
  const noCaName = issueLeaf(root, { cn: randomId(), ou: 'ca-replica', clusterId, sans: [{ dns: 'not-ca' }] });
  let server: https.Server;
  let badName: https.Server;
  let url: string;
  let badNameUrl: string;
  let connections = 0;

  before(async () => {
    server = https.createServer({ key: privateKeyToPem(serverLeaf.kp!.privateKey), cert: serverLeaf.pem, minVersion: 'TLSv1.2' }, (req, res) => {
      const send = (status: number, body: string, headers: http.OutgoingHttpHeaders = {}) => {
        res.writeHead(status, { 'content-type': 'application/json', ...headers });
        res.end(body);
      };
      if (req.url === '/ok') return send(200, JSON.stringify({ hello: 'world' }));
      if (req.url === '/echo') {
        let b = '';
        req.on('data', (d) => (b += d));
        req.on('end', () => send(200, JSON.stringify({ method: req.method, type: req.headers['content-type'], body: JSON.parse(b) })));
        return;
      }
      if (req.url === '/refuse') return send(401, JSON.stringify({ error: { code: 'invalid_token', message: 'invalid token' } }));
      if (req.url === '/busy') return send(503, JSON.stringify({ error: { code: 'unavailable', message: 'retry' } }), { 'retry-after': '2' });
      if (req.url === '/html') return send(502, '<html>bad gateway</html>');
      if (req.url === '/huge') return send(200, JSON.stringify({ pad: 'x'.repeat(2 * 1024 * 1024) }));
      if (req.url === '/hang') return; // never answers
      send(404, JSON.stringify({ error: { code: 'not_found', message: 'no route' } }));
    });
    server.on('secureConnection', () => connections++);
    url = `https://127.0.0.1:${await listen(server)}`;
    badName = https.createServer({ key: privateKeyToPem(noCaName.kp!.privateKey), cert: noCaName.pem }, (_q, r) => r.end('{}'));
    badNameUrl = `https://127.0.0.1:${await listen(badName)}`;
  });
  after(async () => {
    closeAgents();
    await close(server);
    await close(badName);
  });

  test('a verified request succeeds, sends JSON, and reuses its keep-alive connection', async () => {
    const before = connections;
    assert.deepEqual(await request(url, 'GET', '/ok', undefined, { ca: root.pem }), { hello: 'world' });
    const r = await request(url, 'POST', '/echo', { a: 1 }, { ca: root.pem });
    assert.deepEqual(r, { method: 'POST', type: 'application/json', body: { a: 1 } });
    assert.equal(connections - before, 1, 'one TLS connection for two requests');
  });

  test('an error answer becomes an ApiError with the server code and a message naming the endpoint', async () => {
    await assert.rejects(request(url, 'POST', '/refuse', {}, { ca: root.pem }), (e: unknown) => {
      assert.ok(e instanceof ApiError);
      assert.equal(e.code, 'invalid_token');
      assert.equal(e.status, 401);
      assert.ok(e.message.includes(`${url}/refuse`), e.message);
      assert.equal(isRetryable(e), false);
      return true;
    });
    await assert.rejects(request(url, 'GET', '/busy', undefined, { ca: root.pem }), (e: unknown) => {
      assert.ok(e instanceof ApiError);
      assert.equal(e.retryAfterMs, 2000);
      assert.equal(isRetryable(e), true);
      return true;
    });
    await rejectsWith(request(url, 'GET', '/html', undefined, { ca: root.pem }), 'bad_response', /not JSON/);
  });

  test('a response over 1 MiB is refused', async () => {
    await rejectsWith(request(url, 'GET', '/huge', undefined, { ca: root.pem }), 'bad_response', /larger than 1048576 bytes/);
  });

  test('a server that does not answer in time is unreachable', async () => {
    await rejectsWith(request(url, 'GET', '/hang', undefined, { ca: root.pem }, { timeoutMs: 300 }), 'unreachable', /within/);
  });

  test('a closed port is unreachable', async () => {
    const s = net.createServer();
    const port = await listen(s);
    await close(s);
    await rejectsWith(request(`https://127.0.0.1:${port}`, 'GET', '/ok', undefined, { ca: root.pem }), 'unreachable', /connection refused/);
  });

  test('the server must chain to the trust bundle and carry DNS:ca; insecure skips both', async () => {
    await rejectsWith(request(url, 'GET', '/ok', undefined, { ca: other.pem }), 'untrusted_server');
    await rejectsWith(request(badNameUrl, 'GET', '/', undefined, { ca: root.pem }), 'untrusted_server', /ca/);
    assert.deepEqual(await request(url, 'GET', '/ok', undefined, { insecure: true }), { hello: 'world' });
  });
});

// ---------------------------------------------------------------------------------------------
// The state directory

describe('node state directory', () => {
  const clusterId = randomId();
  const root = makeRoot();

  test('a new identity is written 0600 key / 0644 files in a 0700 directory, and not over an existing one', (t) => {
    const dir = path.join(tmpDir(t), 'node');
    makeNodeDir(dir, root, { role: 'worker', clusterId });
    const p = nodePaths(dir);
    assert.equal(fileMode(dir), 0o700);
    assert.equal(fileMode(p.key), 0o600);
    assert.equal(fileMode(p.cert), 0o644);
    assert.throws(() => makeNodeDir(dir, root, { role: 'worker', clusterId }), /already exists/);
  });

  test('a key file readable by others, or a key that is not the certificate\'s, is refused', (t) => {
    const dir = path.join(tmpDir(t), 'node');
    makeNodeDir(dir, root, { role: 'worker', clusterId });
    const p = nodePaths(dir);
    fs.chmodSync(p.key, 0o644);
    assert.throws(() => readNodeIdentity(dir), (e: unknown) => e instanceof CairnError && e.code === 'key_permissions' && /chmod 600/.test(e.message));
    fs.chmodSync(p.key, 0o600);
    replaceIdentity(dir, { keyPem: privateKeyToPem(generateKeyPair().privateKey) });
    assert.throws(() => readNodeIdentity(dir), (e: unknown) => e instanceof CairnError && e.code === 'key_mismatch');
  });

  test('a committed journal interrupted by a crash is finished; an uncommitted one is discarded', (t) => {
    const dir = path.join(tmpDir(t), 'node');
    const first = makeNodeDir(dir, root, { role: 'worker', clusterId });
    const p = nodePaths(dir);
    const next = issueLeaf(root, { cn: first.config.nodeId, ou: 'manager', clusterId });
    const stage = (commit: boolean) => {
      fs.mkdirSync(p.pending, { mode: 0o700 });
      fs.writeFileSync(path.join(p.pending, 'node.key'), privateKeyToPem(next.kp!.privateKey), { mode: 0o600 });
      fs.writeFileSync(path.join(p.pending, 'node.crt'), next.pem);
      fs.writeFileSync(path.join(p.pending, 'node.json'), JSON.stringify({ ...first.config, role: 'manager' }));
      if (commit) fs.writeFileSync(path.join(p.pending, 'COMMIT'), '');
    };
    // crash before COMMIT: the old identity stays
    stage(false);
    assert.equal(recoverPendingCommit(dir), false);
    assert.equal(fs.existsSync(p.pending), false);
    assert.equal(readNodeIdentity(dir).leaf.serialHex, first.serial);
    // crash after COMMIT, with the key already renamed into place: finished
    stage(true);
    fs.renameSync(path.join(p.pending, 'node.key'), p.key);
    assert.throws(() => readNodeIdentity(dir), /do not belong together/);
    assert.equal(recoverPendingCommit(dir), true);
    const id = readNodeIdentity(dir);
    assert.equal(id.config.role, 'manager');
    assert.equal(id.leaf.subjectAttrs.OU, 'manager');
    assert.equal(fileMode(p.key), 0o600);
    assert.equal(fs.existsSync(p.pending), false);
  });
});

describe('renewal', () => {
  const clusterId = randomId();
  const root = makeRoot();
  const issueLeafCa = issueLeaf(root, { cn: randomId(), ou: 'ca-replica', clusterId, sans: [{ dns: 'ca' }] });
  let ca: FakeCa;
  let deadUrl: string;

  before(async () => {
    ca = await fakeCa(root, clusterId);
    const s = net.createServer();
    deadUrl = `https://127.0.0.1:${await listen(s)}`;
    await close(s);
  });
  after(async () => {
    closeAgents();
    await ca.close();
  });

  test('renewOnce: new key, new certificate, role change applied, endpoints tried in order', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    const first = makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [deadUrl, ca.url] });
    const oldKey = fs.readFileSync(nodePaths(dir).key, 'utf8');
    ca.role = 'manager';
    try {
      const r = await renewOnce(dir);
      assert.equal(r.endpoint, ca.url);
      assert.equal(r.role, 'manager');
      assert.equal(r.previousRole, 'worker');
      assert.equal(r.trustChanged, false);
      const id = readNodeIdentity(dir);
      assert.notEqual(id.leaf.serialHex, first.serial);
      assert.equal(id.leaf.serialHex, r.serial);
      assert.equal(id.config.role, 'manager');
      assert.deepEqual(id.config.endpoints, [deadUrl, ca.url]);
      assert.notEqual(id.keyPem, oldKey, 'a new key on each renewal');
      assert.equal(fileMode(nodePaths(dir).key), 0o600);
    } finally {
      ca.role = 'worker';
    }
  });

  test('renewOnce retries a busy CA with backoff, then succeeds', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [ca.url] });
    ca.failures.push([503, 'unavailable'], [503, 'unavailable']);
    const r = await renewOnce(dir, { rounds: 3, baseDelayMs: 10 });
    assert.equal(r.role, 'worker');
    assert.equal(ca.failures.length, 0);
  });

  test('renewOnce stops at once when the node was removed, and leaves the identity alone', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    const first = makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [ca.url, ca.url] });
    ca.failures.push([403, 'node_removed'], [403, 'node_removed']);
    await rejectsWith(renewOnce(dir, { rounds: 3, baseDelayMs: 10 }), 'node_removed', /removed from the cluster.*join again/);
    assert.equal(ca.failures.length, 1, 'no second attempt after a refusal');
    ca.failures.length = 0;
    assert.equal(readNodeIdentity(dir).leaf.serialHex, first.serial);
  });

  test('renewOnce refuses an expired certificate without asking the CA', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [ca.url], lifetimeMs: HOUR, now: new Date(Date.now() - 3 * HOUR) });
    const before = ca.renewals;
    await rejectsWith(renewOnce(dir), 'certificate_expired', /expired .*cairn join --recover --token <token>.*or join as a new node/);
    assert.equal(ca.renewals, before);
  });

  test('a CA answering with a certificate for another key is not believed, and nothing is written', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    const first = makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [ca.url] });
    // a CA that answers with the node's *current* certificate (not for the new key)
    const liar = https.createServer({ key: privateKeyToPem(issueLeafCa.kp!.privateKey), cert: issueLeafCa.pem }, (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ nodeId: first.config.nodeId, role: 'worker', clusterId, certificate: fs.readFileSync(nodePaths(dir).cert, 'utf8'), trustBundle: root.pem }));
    });
    const url = `https://127.0.0.1:${await listen(liar)}`;
    replaceIdentity(dir, { config: { ...first.config, endpoints: [url] } });
    try {
      await rejectsWith(renewOnce(dir, { rounds: 1 }), 'bad_response', /another key/);
      assert.equal(readNodeIdentity(dir).leaf.serialHex, first.serial);
    } finally {
      closeAgents();
      await close(liar);
    }
  });

  test('the trust bundle is polled from GET /v1/ca; a new root nobody vouches for is refused and ca.crt stays', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [ca.url] });
    assert.equal(await refreshTrustBundle(readNodeIdentity(dir)), 'unchanged');
    const before = fs.readFileSync(nodePaths(dir).ca, 'utf8');
    const extra = makeRoot('next-root');
    try {
      // a bundle that keeps our root: refused; one our certificate no longer chains to (a
      // rotation finished without this node): refused too, and the node asks for a renewal,
      // which brings a chain it may trust or the CA's "join again"
      for (const [bundle, result] of [[root.pem + extra.pem, 'refused'], [extra.pem, 'renew']]) {
        ca.bundle = bundle;
        assert.equal(await refreshTrustBundle(readNodeIdentity(dir)), result);
        assert.equal(fs.readFileSync(nodePaths(dir).ca, 'utf8'), before, 'ca.crt left alone');
      }
    } finally {
      ca.bundle = root.pem;
    }
  });

  test('the agent renews at once past the window, then schedules the next renewal and stops on abort', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    // 2 h lifetime, 1.5 h old: past the 50–80% window
    const first = makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [ca.url], lifetimeMs: 2 * HOUR, now: new Date(Date.now() - 1.5 * HOUR) });
    const ac = new AbortController();
    const renewed: RenewResult[] = [];
    const logs: any[] = [];
    const logger = (await import('pino')).default({ level: 'debug' }, { write: (s: string) => logs.push(JSON.parse(s)) });
    const done = runAgent(dir, {
      signal: ac.signal,
      logger,
      onRenew: (r) => {
        renewed.push(r);
        setTimeout(() => ac.abort(), 50);
      },
    });
    await done;
    assert.equal(renewed.length, 1);
    assert.notEqual(readNodeIdentity(dir).leaf.serialHex, first.serial);
    const scheduled = logs.filter((l) => l.msg === 'renewal scheduled');
    assert.equal(scheduled.length, 2);
    const at = Date.parse(scheduled[1].renewAt);
    const id = readNodeIdentity(dir);
    const w = renewalWindow(id.leaf.notBefore, id.leaf.notAfter);
    assert.ok(at >= w.start.getTime() && at <= w.end.getTime(), 'next renewal in the 50–80% window');
    assert.ok(logs.some((l) => l.msg === 'agent stopped'));
  });

  test('the agent retries failures with backoff and does not give up on a busy CA', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [ca.url] });
    ca.failures.push([503, 'unavailable'], [429, 'rate_limited'], [503, 'unavailable']);
    const ac = new AbortController();
    const logs: any[] = [];
    const logger = (await import('pino')).default({ level: 'debug' }, { write: (s: string) => logs.push(JSON.parse(s)) });
    await runAgent(dir, { signal: ac.signal, logger, renewNow: true, baseBackoffMs: 5, onRenew: () => ac.abort() });
    const retries = logs.filter((l) => l.msg === 'renewal failed; will retry');
    assert.equal(retries.length, 3);
    assert.deepEqual(retries.map((l) => l.failures), [1, 2, 3]);
  });

  test('the agent stops with a clear error when the certificate was revoked', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [ca.url] });
    ca.failures.push([403, 'certificate_revoked']);
    const logger = (await import('pino')).default({ level: 'silent' });
    await rejectsWith(runAgent(dir, { logger, renewNow: true, baseBackoffMs: 5 }), 'certificate_revoked', /revoked/);
  });
});

// ---------------------------------------------------------------------------------------------
// Node-to-node mutual TLS

function tlsServer(ctx: NodeTls, onPeer?: (s: tls.TLSSocket) => void): tls.Server {
  const server = tls.createServer(ctx.serverOptions(), (s) => {
    if (s.destroyed) return;
    onPeer?.(s);
    s.end(`hello ${ctx.checkPeer(s).nodeId}\n`);
  });
  ctx.attach(server);
  return server;
}

/** Connect and read what the server says; rejects on TLS errors or a closed connection. */
function talk(ctx: NodeTls, port: number, role: 'worker' | 'manager', extra: tls.ConnectionOptions = {}): Promise<{ text: string; serverSerial: string }> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ ...ctx.clientOptions({ host: '127.0.0.1', port, role }), ...extra });
    let text = '';
    let serverSerial = '';
    s.on('secureConnect', () => (serverSerial = s.getPeerCertificate().serialNumber));
    s.on('data', (d) => (text += d));
    s.on('error', reject);
    s.on('close', () => (text ? resolve({ text, serverSerial }) : reject(new Error('connection closed without an answer'))));
  });
}

describe('node TLS context', () => {
  const clusterId = randomId();
  const root = makeRoot();
  let base: string;
  const dirs: Record<string, string> = {};
  const ids: Record<string, NodeConfig> = {};
  const ctxs: NodeTls[] = [];
  const servers: tls.Server[] = [];

  const load = async (name: string, opts: Parameters<typeof loadNodeTls>[1] = {}) => {
    const c = await loadNodeTls(dirs[name], opts);
    ctxs.push(c);
    return c;
  };
  const serve = async (ctx: NodeTls, onPeer?: (s: tls.TLSSocket) => void) => {
    const s = tlsServer(ctx, onPeer);
    servers.push(s);
    return listen(s);
  };

  before(() => {
    base = tmpDir(undefined, 'cairn-agent-tls-');
    for (const [name, role] of [['manager', 'manager'], ['manager2', 'manager'], ['worker', 'worker']] as const) {
      dirs[name] = path.join(base, name);
      ids[name] = makeNodeDir(dirs[name], root, { role, clusterId }).config;
    }
    // same root, another cluster ID (a misissued or foreign certificate)
    dirs.foreign = path.join(base, 'foreign');
    const fc = randomId();
    ids.foreign = makeNodeDir(dirs.foreign, root, { role: 'manager', clusterId: fc }).config;
  });
  after(async () => {
    ctxs.forEach((c) => c.close());
    await Promise.all(servers.map((s) => close(s)));
    fs.rmSync(base, { recursive: true, force: true });
  });

  test('the context knows its identity and asks for TLS 1.2 at least, with client certificates required', async () => {
    const m = await load('manager');
    assert.deepEqual({ nodeId: m.identity.nodeId, role: m.identity.role, clusterId: m.identity.clusterId }, { nodeId: ids.manager.nodeId, role: 'manager', clusterId });
    const so = m.serverOptions();
    assert.equal(so.minVersion, 'TLSv1.2');
    assert.equal(so.requestCert, true);
    assert.equal(so.rejectUnauthorized, true);
    const co = m.clientOptions({ host: '127.0.0.1', port: 1, role: 'worker' });
    assert.equal(co.servername, 'worker');
    assert.equal(co.minVersion, 'TLSv1.2');
  });

  test('a manager-only server accepts a manager and tells who it is; it refuses a worker', async () => {
    const server = await load('manager', { peerRoles: ['manager'] });
    const refused: CairnError[] = [];
    server.on('peerRefused', (e) => refused.push(e));
    const port = await serve(server);
    const m2 = await load('manager2');
    const r = await talk(m2, port, 'manager');
    assert.equal(r.text, `hello ${ids.manager2.nodeId}\n`);
    const w = await load('worker');
    await assert.rejects(talk(w, port, 'manager'));
    assert.equal(refused.length, 1);
    assert.equal(refused[0].code, 'peer_role_not_allowed');
    assert.match(refused[0].message, /is a worker; only manager nodes are allowed/);
  });

  test('checkPeer reports the peer and refuses a role it is not given', async () => {
    const server = await load('worker');
    let seen: unknown;
    const port = await serve(server, (s) => {
      seen = server.checkPeer(s);
      assert.throws(() => server.checkPeer(s, ['worker']), /only worker nodes/);
    });
    const m = await load('manager');
    await talk(m, port, 'worker');
    assert.deepEqual(seen, { nodeId: ids.manager.nodeId, role: 'manager', clusterId });
  });

  test('a client that wants a manager refuses a worker server (server name = role)', async () => {
    const server = await load('worker');
    const port = await serve(server);
    const m = await load('manager');
    await assert.rejects(talk(m, port, 'manager'), (e: NodeJS.ErrnoException) => e.code === 'ERR_TLS_CERT_ALTNAME_INVALID');
    // and may pin one node
    const ok = await talk(m, port, 'worker');
    assert.match(ok.text, /hello/);
    await assert.rejects(
      new Promise((resolve, reject) => {
        const s = tls.connect(m.clientOptions({ host: '127.0.0.1', port, role: 'worker', nodeId: ids.manager2.nodeId }));
        s.on('secureConnect', resolve);
        s.on('error', reject);
      }),
      /not .*[0-9a-z]{25}/,
    );
  });

  test('a certificate of another cluster is refused both ways, even under the same root', async () => {
    const foreign = await load('foreign');
    const server = await load('manager', { peerRoles: ['manager'] });
    const refused: CairnError[] = [];
    server.on('peerRefused', (e) => refused.push(e));
    const port = await serve(server);
    await assert.rejects(talk(foreign, port, 'manager'), /cluster/);
    const fport = await serve(foreign);
    const m2 = await load('manager2');
    await assert.rejects(talk(m2, fport, 'manager'), (e: CairnError) => e.code === 'peer_wrong_cluster');
  });

  test('TLS below 1.2 is refused', async () => {
    const server = await load('manager');
    const port = await serve(server);
    const m2 = await load('manager2');
    await assert.rejects(talk(m2, port, 'manager', { minVersion: 'TLSv1', maxVersion: 'TLSv1.1' }));
  });

  test('a renewal on disk is picked up: new connections see the new certificate, attached servers present it', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    const first = makeNodeDir(dir, root, { role: 'manager', clusterId });
    const ctx = await loadNodeTls(dir, { pollIntervalMs: 20 });
    ctxs.push(ctx);
    const port = await serve(ctx);
    const client = await load('manager2');
    assert.equal((await talk(client, port, 'manager')).serverSerial.toUpperCase(), first.serial);
    const reloaded = new Promise((resolve) => ctx.once('reload', resolve));
    const next = issueLeaf(root, { cn: first.config.nodeId, ou: 'manager', clusterId });
    replaceIdentity(dir, { keyPem: privateKeyToPem(next.kp!.privateKey), certPem: next.pem });
    await reloaded;
    const newSerial = readNodeIdentity(dir).leaf.serialHex;
    assert.notEqual(newSerial, first.serial);
    assert.equal(ctx.identity.serial, newSerial);
    assert.equal((await talk(client, port, 'manager')).serverSerial.toUpperCase(), newSerial);
  });

  test('files caught mid-update (key and certificate not a pair) keep the old material until they settle', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    const first = makeNodeDir(dir, root, { role: 'worker', clusterId });
    const ctx = await loadNodeTls(dir, { pollIntervalMs: 0 });
    ctxs.push(ctx);
    const next = issueLeaf(root, { cn: first.config.nodeId, ou: 'worker', clusterId });
    replaceIdentity(dir, { keyPem: privateKeyToPem(next.kp!.privateKey) });
    assert.throws(() => ctx.reload(), /do not belong together/);
    assert.equal(ctx.identity.serial, first.serial);
    replaceIdentity(dir, { certPem: next.pem });
    assert.equal(ctx.reload(), true);
    assert.notEqual(ctx.identity.serial, first.serial);
  });

  test('a key file others can read is refused', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    makeNodeDir(dir, root, { role: 'worker', clusterId });
    fs.chmodSync(nodePaths(dir).key, 0o640);
    await assert.rejects(loadNodeTls(dir), (e: CairnError) => e.code === 'key_permissions');
  });
});
