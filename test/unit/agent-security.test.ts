/**
 * The node side's security rules, with real TLS on 127.0.0.1 and certificates made with
 * src/pki: only a CA replica speaks for the CA; trust only widens through a chain; peers
 * check revocation with the stored CRL; renewal and join stay on course through refusals and
 * dropped connections; and two CLI defects (/proc state dir, closed stdout).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import {
  certificateToPem, fingerprint256, issueCertificate, makeIssuer, makeSerial, randomId, rootDigest, spkiDer,
} from '../../src/pki/index.js';
import { refreshTrustBundle } from '../../src/agent/agent.js';
import { closeAgents, request } from '../../src/agent/client.js';
import { checkCrl, refreshCrl } from '../../src/agent/crl.js';
import { join } from '../../src/agent/join.js';
import { renewOnce } from '../../src/agent/renew.js';
import { nodePaths, readNodeIdentity } from '../../src/agent/node-state.js';
import { loadNodeTls, NodeTls } from '../../src/agent/tls.js';
import { acceptTrustBundle } from '../../src/agent/trust.js';
import { CairnError } from '../../src/util/errors.js';
import { CAIRN_BIN, runCli, tmpDir } from '../helpers.js';
import { close, crossSign, fakeCa, FakeCa, issueLeaf, listen, makeCrl, makeNodeDir, makeRoot, nodeTlsServer, rejectsWith, talk, tokenFor } from './agent-fixtures.js';

const silent = async () => {
  const logs: any[] = [];
  const logger = (await import('pino')).default({ level: 'debug' }, { write: (s: string) => logs.push(JSON.parse(s)) });
  return { logs, logger };
};

// ---------------------------------------------------------------------------------------------

describe('only a CA replica speaks for the CA', () => {
  const clusterId = randomId();
  const root = makeRoot();
  // what a manager certificate looked like: OU=manager with DNS:ca, signed by the cluster root
  const managerLike = issueLeaf(root, { cn: randomId(), ou: 'manager', clusterId, sans: [{ dns: 'manager' }, { dns: 'ca' }] });
  const otherCluster = issueLeaf(root, { cn: randomId(), ou: 'ca-replica', clusterId: randomId(), sans: [{ dns: 'ca' }] });
  let impostor: FakeCa;
  let foreign: FakeCa;
  let real: FakeCa;

  before(async () => {
    impostor = await fakeCa(root, clusterId, { server: managerLike });
    foreign = await fakeCa(root, clusterId, { server: otherCluster });
    real = await fakeCa(root, clusterId);
  });
  after(async () => {
    closeAgents();
    await Promise.all([impostor.close(), foreign.close(), real.close()]);
  });

  test('a manager-style certificate (OU=manager, DNS:ca, cluster root) is refused: untrusted_server, no request reaches it', async () => {
    await rejectsWith(request(impostor.url, 'GET', '/v1/ca', undefined, { ca: root.pem }), 'untrusted_server', /OU=manager, not OU=ca-replica/);
    assert.deepEqual(impostor.requests, []);
    // a replica certificate of another cluster, when the cluster is known
    await rejectsWith(request(foreign.url, 'GET', '/v1/ca', undefined, { ca: root.pem, clusterId }), 'untrusted_server', /of cluster/);
    // the real thing passes
    assert.equal((await request<any>(real.url, 'GET', '/v1/ca', undefined, { ca: root.pem, clusterId })).clusterId, clusterId);
  });

  test('join refuses a manager-style server after the digest check, and never sends it the token', async (t) => {
    const token = tokenFor(root);
    impostor.tokens.set(token, 'worker');
    impostor.requests.length = 0;
    const dir = path.join(tmpDir(t), 'node');
    await rejectsWith(join(token, [impostor.url], dir), 'untrusted_server', /not a CA replica/);
    assert.deepEqual(impostor.requests, ['GET /v1/ca'], 'only the unverified first contact; no POST /v1/join');
    assert.equal(fs.existsSync(path.join(dir, 'node.key')), false);
  });

  test('join refuses a server that relays the right root but whose own certificate does not chain to it, and never sends it the token', async (t) => {
    // a man in the middle with its own CA: a replica-shaped certificate, the real /v1/ca answer
    const mitmRoot = makeRoot('mitm-root');
    const mitm = await fakeCa(root, clusterId, { server: issueLeaf(mitmRoot, { cn: randomId(), ou: 'ca-replica', clusterId, sans: [{ dns: 'ca' }] }) });
    try {
      const token = tokenFor(root);
      mitm.tokens.set(token, 'worker');
      const dir = path.join(tmpDir(t), 'node');
      await rejectsWith(join(token, [mitm.url], dir), 'untrusted_server', /does not chain to the token's root/);
      assert.deepEqual(mitm.requests, ['GET /v1/ca'], 'only the unverified first contact; no POST /v1/join');
      assert.equal(fs.existsSync(path.join(dir, 'node.key')), false);
    } finally {
      await mitm.close();
    }
  });

  test('the agent (trust refresh, renewal) refuses a manager-style server and sends it nothing', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [impostor.url] });
    impostor.requests.length = 0;
    await rejectsWith(refreshTrustBundle(readNodeIdentity(dir)), 'untrusted_server', /not a CA replica/);
    await rejectsWith(renewOnce(dir, { rounds: 1, fetchCrl: false }), 'untrusted_server');
    assert.deepEqual(impostor.requests, []);
  });
});

// ---------------------------------------------------------------------------------------------

describe('trust only widens through a chain (acceptTrustBundle)', () => {
  const old = makeRoot('cluster-root-ca');
  const next = makeRoot('cluster-root-ca-next');
  const stranger = makeRoot('stranger');
  const clusterId = randomId();
  const leaf = issueLeaf(old, { cn: randomId(), ou: 'worker', clusterId });
  const leafNext = issueLeaf(next, { cn: randomId(), ou: 'worker', clusterId });

  test('a rotation away from an intermediate: the old root vouches through that intermediate, sent along; never through an intermediate no trusted root issued, or one whose path length forbids it', () => {
    const interKey = makeRoot('cluster-intermediate'); // its key; its certificate below is issued by `old`
    const interDer = crossSign(interKey, old);
    const inter = { der: interDer, pem: certificateToPem(interDer), issuer: makeIssuer(interDer, interKey.issuer.key) };
    const x = crossSign(next, inter); // the new root, certified by the old generation (the intermediate)
    const viaInter = acceptTrustBundle([old.der], [old.der, next.der], { vouchers: [x, interDer] });
    assert.equal(viaInter.ok, true, JSON.stringify(viaInter));
    assert.deepEqual(viaInter.ok && viaInter.how, ['vouched']);
    // without the intermediate nothing links it to the old root
    assert.equal(acceptTrustBundle([old.der], [old.der, next.der], { vouchers: [x] }).ok, false);
    // an intermediate a stranger issued does not speak for the old root
    const strangeDer = crossSign(interKey, stranger);
    assert.equal(acceptTrustBundle([old.der], [old.der, next.der], { vouchers: [x, strangeDer] }).ok, false);
    // an intermediate with pathlen 0 may not have issued a CA certificate
    const tightDer = issueCertificate(
      { serial: makeSerial(77n), subject: { CN: 'cluster-intermediate' }, notBefore: new Date(Date.now() - 3600_000), notAfter: new Date(Date.now() + 3600_000 * 100), publicKey: spkiDer(interKey.issuer.key), ca: { pathLength: 0 }, keyUsage: ['keyCertSign', 'cRLSign'] },
      old.issuer,
    );
    const tight = { der: tightDer, pem: certificateToPem(tightDer), issuer: makeIssuer(tightDer, interKey.issuer.key) };
    assert.equal(acceptTrustBundle([old.der], [old.der, next.der], { vouchers: [crossSign(next, tight), tightDer] }).ok, false);
  });

  test('the same bundle is no change', () => {
    const d = acceptTrustBundle([old.der], [old.der], { chain: [leaf.der] });
    assert.ok(d.ok);
    assert.equal(d.changed, false);
  });

  test('a new root nobody vouches for is refused, with its fingerprint', () => {
    const d = acceptTrustBundle([old.der], [old.der, stranger.der], { chain: [leaf.der] });
    assert.equal(d.ok, false);
    assert.ok(!d.ok && d.reason === 'unvouched_root');
    assert.ok(!d.ok && /^[0-9A-F]{2}(:[0-9A-F]{2}){31}$/.test(d.refused[0].fingerprint));
  });

  test('a new root cross-signed by a trusted root is accepted (from the vouchers or from the bundle itself)', () => {
    const cross = crossSign(next, old);
    const d = acceptTrustBundle([old.der], [old.der, next.der], { vouchers: [cross], chain: [leaf.der] });
    assert.ok(d.ok && d.changed && d.added[0].equals(next.der) && d.how[0] === 'vouched');
    const inBundle = acceptTrustBundle([old.der], [old.der, next.der, cross], { chain: [leaf.der] });
    assert.ok(inBundle.ok);
    assert.equal(inBundle.bundle.length, 2, 'the cross-signed certificate vouches; it is not written as a root');
  });

  test('a voucher that is not by a trusted root, not for the same key, or not a CA vouches for nothing', () => {
    for (const cross of [crossSign(next, stranger), crossSign(next, old, { key: spkiDer(stranger.issuer.key) }), crossSign(next, old, { ca: false })]) {
      const d = acceptTrustBundle([old.der], [old.der, next.der], { vouchers: [cross], chain: [leaf.der] });
      assert.equal(d.ok, false);
    }
  });

  test('a root named by an operator-given digest is accepted', () => {
    const d = acceptTrustBundle([old.der], [old.der, next.der], { digests: [rootDigest(next.der)], chain: [leaf.der] });
    assert.ok(d.ok && d.how[0] === 'digest');
  });

  test('a root may be dropped only if our certificate still verifies', () => {
    const cross = crossSign(next, old);
    // our certificate is under the old root: dropping it is refused
    const d = acceptTrustBundle([old.der, next.der], [next.der], { chain: [leaf.der] });
    assert.ok(!d.ok && d.reason === 'breaks_own_chain');
    // under the new root (chained through the cross-signed certificate): the old root may go
    const ok = acceptTrustBundle([old.der, next.der], [next.der], { chain: [leafNext.der, cross] });
    assert.ok(ok.ok && ok.removed.length === 1);
  });
});

describe('trust bundle updates from a CA endpoint', () => {
  const clusterId = randomId();
  const root = makeRoot('cluster-root-ca');
  const extra = makeRoot('cluster-root-ca');
  let ca: FakeCa;
  before(async () => {
    ca = await fakeCa(root, clusterId);
  });
  after(async () => {
    closeAgents();
    await ca.close();
  });

  test('a proper CA replica offering an extra root: refused and logged (endpoint, fingerprint), ca.crt unchanged, by refresh and by renewal', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    const first = makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [ca.url] });
    const caFile = nodePaths(dir).ca;
    const before = fs.readFileSync(caFile);
    ca.bundle = root.pem + extra.pem;
    try {
      const { logs, logger } = await silent();
      assert.equal(await refreshTrustBundle(readNodeIdentity(dir), { logger }), 'refused');
      assert.deepEqual(fs.readFileSync(caFile), before);
      const warn = logs.find((l) => l.level === 40 && /trust bundle .*refused/.test(l.msg));
      assert.ok(warn, JSON.stringify(logs));
      assert.equal(warn.endpoint, ca.url);
      assert.ok(warn.fingerprints.length === 1 && warn.fingerprints[0] === fingerprint256(extra.der));

      const r = await renewOnce(dir, { rounds: 1, logger, fetchCrl: false });
      assert.notEqual(r.serial, first.serial, 'the certificate itself was renewed');
      assert.equal(r.trustChanged, false);
      assert.match(r.trustRefused ?? '', /no trusted root vouches/);
      assert.deepEqual(fs.readFileSync(caFile), before);
    } finally {
      ca.bundle = root.pem;
    }
  });

  test('a rotation-shaped answer (new root plus its cross-signed certificate in GET /v1/ca crossSigned) is accepted', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [ca.url] });
    ca.bundle = root.pem + extra.pem;
    ca.caExtra = { crossSigned: [certificateToPem(crossSign(extra, root))] };
    try {
      assert.equal(await refreshTrustBundle(readNodeIdentity(dir)), 'updated');
      assert.equal(readNodeIdentity(dir).trust.length, 2);
    } finally {
      ca.bundle = root.pem;
      ca.caExtra = {};
    }
  });

  test('a root given with --trust-token (its digest) is accepted', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [ca.url] });
    ca.bundle = root.pem + extra.pem;
    try {
      assert.equal(await refreshTrustBundle(readNodeIdentity(dir), { trustDigests: [rootDigest(extra.der)] }), 'updated');
    } finally {
      ca.bundle = root.pem;
    }
  });
});

// ---------------------------------------------------------------------------------------------

describe('revocation without the CA: crl.pem', () => {
  const clusterId = randomId();
  const root = makeRoot();
  const stranger = makeRoot();
  let ca: FakeCa;
  let base: string;
  const ctxs: NodeTls[] = [];
  const servers: tls.Server[] = [];
  before(async () => {
    ca = await fakeCa(root, clusterId);
    base = tmpDir(undefined, 'cairn-crl-');
  });
  after(async () => {
    closeAgents();
    ctxs.forEach((c) => c.close());
    await Promise.all(servers.map((s) => close(s)));
    await ca.close();
    fs.rmSync(base, { recursive: true, force: true });
  });

  test('a CRL must be signed by a trusted root and not older than the stored one', () => {
    const good = makeCrl(root, ['0A'], 5n);
    const stored = checkCrl(good, [root.der], null, 'x');
    assert.equal(stored.number, 5n);
    assert.ok(stored.revoked.has('A'));
    assert.throws(() => checkCrl(makeCrl(stranger, [], 9n), [root.der], null, 'x'), (e: CairnError) => e.code === 'bad_crl');
    assert.throws(() => checkCrl(makeCrl(root, [], 4n), [root.der], stored, 'x'), (e: CairnError) => e.code === 'stale_crl');
    assert.throws(() => checkCrl(Buffer.from('nonsense'), [root.der], null, 'x'), (e: CairnError) => e.code === 'bad_crl');
  });

  test('the agent stores a newer CRL, refuses an older one, and the library then refuses a revoked peer both ways', async () => {
    const dirs: Record<string, string> = {};
    const serials: Record<string, string> = {};
    for (const name of ['a', 'b', 'revoked']) {
      dirs[name] = path.join(base, name);
      serials[name] = makeNodeDir(dirs[name], root, { role: 'manager', clusterId, endpoints: [ca.url] }).serial;
    }
    const a = await loadNodeTls(dirs.a, { pollIntervalMs: 20 });
    const bad = await loadNodeTls(dirs.revoked, { pollIntervalMs: 0 });
    ctxs.push(a, bad);
    const aServer = nodeTlsServer(a);
    servers.push(aServer);
    const aPort = await listen(aServer);
    const badServer = nodeTlsServer(bad);
    servers.push(badServer);
    const badPort = await listen(badServer);
    // before: all is well
    assert.match(await talk(bad, aPort, 'manager'), /hello/);
    assert.match(await talk(a, badPort, 'manager'), /hello/);

    ca.crl = makeCrl(root, [serials.revoked], 7n);
    const reloaded = new Promise((r) => a.once('reload', r));
    assert.equal(await refreshCrl(readNodeIdentity(dirs.a)), 'updated');
    assert.match(fs.readFileSync(nodePaths(dirs.a).crl, 'utf8'), /BEGIN X509 CRL/);
    await reloaded;
    assert.equal(a.crlNumber, 7n);
    // as a server: the revoked client is refused
    const refused: CairnError[] = [];
    a.on('peerRefused', (e) => refused.push(e));
    await assert.rejects(talk(bad, aPort, 'manager'));
    assert.equal(refused[0]?.code, 'peer_revoked');
    // as a client: the revoked server is refused
    await assert.rejects(talk(a, badPort, 'manager'), (e: CairnError) => e.code === 'peer_revoked');
    // another peer is still fine
    const b = await loadNodeTls(dirs.b, { pollIntervalMs: 0 });
    ctxs.push(b);
    assert.match(await talk(b, aPort, 'manager'), /hello/);

    // an older CRL (lower number) is not taken
    ca.crl = makeCrl(root, [], 6n);
    assert.equal(await refreshCrl(readNodeIdentity(dirs.a)), 'unavailable');
    assert.equal((await loadNodeTls(dirs.a, { pollIntervalMs: 0 })).crlNumber, 7n);
  });

  test('a CA replica whose certificate is on the stored CRL is not trusted by the agent', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [ca.url] });
    ca.crl = makeCrl(root, [ca.serverSerial], 8n);
    assert.equal(await refreshCrl(readNodeIdentity(dir)), 'updated');
    await rejectsWith(refreshTrustBundle(readNodeIdentity(dir)), 'untrusted_server', /revoked/);
    ca.crl = null;
  });
});

// ---------------------------------------------------------------------------------------------

describe('renewal and join stay on course', () => {
  const clusterId = randomId();
  const root = makeRoot();
  let ca: FakeCa;
  let wrong: FakeCa;
  before(async () => {
    ca = await fakeCa(root, clusterId);
    wrong = await fakeCa(root, clusterId);
  });
  after(async () => {
    closeAgents();
    await ca.close();
    await wrong.close();
  });

  test('renewOnce: a 403 from the first endpoint sends it to the next, which renews', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    const first = makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [wrong.url, ca.url] });
    wrong.failures.push([403, 'forbidden']);
    const r = await renewOnce(dir, { rounds: 1, fetchCrl: false });
    assert.equal(r.endpoint, ca.url);
    assert.notEqual(r.serial, first.serial);
    assert.equal(wrong.failures.length, 0, 'the first endpoint was asked');
  });

  test('renewOnce: when every endpoint refuses (404, 403), it fails after trying each once, without more rounds', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [wrong.url, ca.url] });
    wrong.failures.push([404, 'not_found'], [404, 'not_found']);
    ca.failures.push([403, 'forbidden'], [403, 'forbidden']);
    try {
      await rejectsWith(renewOnce(dir, { rounds: 3, baseDelayMs: 10, fetchCrl: false }), 'not_found', /every CA endpoint/);
      assert.equal(wrong.failures.length, 1);
      assert.equal(ca.failures.length, 1);
    } finally {
      wrong.failures.length = 0;
      ca.failures.length = 0;
    }
  });

  test('renewOnce: a refusal that names this node (renewal_superseded) is final at once', async (t) => {
    const dir = path.join(tmpDir(t), 'node');
    makeNodeDir(dir, root, { role: 'worker', clusterId, endpoints: [wrong.url, ca.url] });
    wrong.failures.push([409, 'renewal_superseded']);
    const before = ca.renewals;
    await rejectsWith(renewOnce(dir, { rounds: 1, fetchCrl: false }), 'renewal_superseded', /newer certificate/);
    assert.equal(ca.renewals, before, 'the second endpoint was not asked');
  });

  for (const drop of [[], [1]]) {
  test(`join sends GET /v1/ca and POST /v1/join on one TLS connection${drop.length ? ', after trying the same address again when a connection is accepted and dropped' : ''}`, async (t) => {
    const token = tokenFor(root);
    ca.tokens.set(token, 'worker');
    let n = 0;
    const [host, port] = [new URL(ca.url).hostname, Number(new URL(ca.url).port)];
    const open = new Set<net.Socket>();
    // a load balancer whose first connection (when asked) lands on a dying replica
    const lb = net.createServer((c) => {
      n++;
      if (drop.includes(n)) return c.destroy();
      const up = net.connect(port, host);
      open.add(c).add(up);
      c.pipe(up).pipe(c);
      up.on('error', () => c.destroy());
      c.on('error', () => up.destroy());
    });
    const lbUrl = `https://127.0.0.1:${await listen(lb)}`;
    try {
      const dir = path.join(tmpDir(t), 'node');
      ca.requests.length = 0;
      const r = await join(token, [lbUrl], dir, { retryDelayMs: 10 });
      assert.equal(r.role, 'worker');
      // the dropped one, one for the join, one for the CRL fetch tried after it
      assert.equal(n, drop.length + 2, 'one connection for GET /v1/ca and POST /v1/join');
      assert.deepEqual(ca.requests.slice(0, 2), ['GET /v1/ca', 'POST /v1/join']);
      assert.equal(readNodeIdentity(dir).config.nodeId, r.nodeId);
    } finally {
      open.forEach((s) => s.destroy());
      await close(lb);
    }
  });
  }

  test('join does not retry an answer (401 invalid token) on the same address', async (t) => {
    ca.requests.length = 0;
    await rejectsWith(join(tokenFor(root), [ca.url], path.join(tmpDir(t), 'node')), 'invalid_token');
    assert.deepEqual(ca.requests, ['GET /v1/ca', 'POST /v1/join']);
  });
});

// ---------------------------------------------------------------------------------------------

describe('CLI defects', () => {
  const clusterId = randomId();
  const root = makeRoot();
  let ca: FakeCa;
  before(async () => {
    ca = await fakeCa(root, clusterId);
  });
  after(async () => {
    closeAgents();
    await ca.close();
  });

  test('cairn join --state-dir under /proc fails at once with a clear message (it used to spin at 100% CPU)', async () => {
    const r = await runCli(['join', '--token', tokenFor(root), '--state-dir', '/proc/cairn-x/node', ca.url], { timeoutMs: 15_000 });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^cairn: error: cannot create directory \/proc\/cairn-x\/node: .*\/proc.*\n$/);
  });

  test('cairn join with its stdout closed (| head -1): the join succeeds, exit 0, no stack trace', async (t) => {
    const token = tokenFor(root);
    ca.tokens.set(token, 'worker');
    const dir = path.join(tmpDir(t), 'node');
    const p = spawn(process.execPath, [CAIRN_BIN, 'join', '--token', token, '--state-dir', dir, ca.url], { stdio: ['ignore', 'pipe', 'pipe'] });
    p.stdout.destroy(); // the reader is gone before the first line
    let stderr = '';
    p.stderr.on('data', (d) => (stderr += d));
    const code = await new Promise<number | null>((resolve) => p.on('close', resolve));
    assert.equal(stderr, '');
    assert.equal(code, 0);
    assert.ok(fs.existsSync(path.join(dir, 'node.key')));
  });
});
