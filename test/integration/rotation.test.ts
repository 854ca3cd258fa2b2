/**
 * Root CA rotation, end to end (issue 9's proof): three replicas on one real PostgreSQL
 * database, 24 real `cairn agent` processes, the `cairn ca rotate` CLI.
 *
 * 1. A generated root: the agents learn of it by their long-poll and renew; the replica driving
 *    the batches is killed mid-rotation; a node still on the old root and a node on the new
 *    root shake hands (mutual TLS, loadNodeTls) in a loop with zero failures from before the
 *    start to after the end; a stopped node is reported stuck until its agent starts; the
 *    rotation then completes by itself; the old root is gone from every ca.crt; old join
 *    tokens fail, new ones work; openssl -x509_strict, GnuTLS certtool and Go crypto/x509
 *    verify the chains during and after.
 * 2. An RSA root made by `openssl req -x509` (--ca-cert/--ca-key); a stopped agent keeps it
 *    open: --finish is refused, --status lists the node, --finish --force completes and says one
 *    node must rejoin; that node's agent then stops with the rejoin message.
 * 3. --abort.
 * 4. An intermediate signed by an outside root, with its chain: the old root certifies the outside
 *    root; openssl, GnuTLS, Go and real TLS handshakes accept the chain from peers trusting either
 *    root; after completion the outside root is the trust bundle and the token digest.
 *
 * PostgreSQL is used only through createDb() (a database of its own; the server is never
 * restarted here).
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import { certificatesFromPem, certificateToPem, rootDigest } from '../../src/pki/index.js';
import { loadNodeTls, NodeTls } from '../../src/agent/tls.js';
import { Background, CAIRN_BIN, REPO_ROOT, run, startBackground } from '../helpers.js';
import { close, listen, nodeTlsServer, talk } from '../unit/agent-fixtures.js';
import { addReplica, adminId, api, cliAsync, Cluster, mkTemp, startCluster } from './cluster.js';
import { createDb, TestDb } from './pg.js';

const AGENTS = 24;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, f: () => Promise<T | undefined | false> | T | undefined | false, ms = 30_000, every = 200): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    await sleep(every);
  }
}

const ok = <R extends { code: number | null; stdout: string; stderr: string }>(r: R, what: string): R => {
  assert.equal(r.code, 0, `${what} failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  return r;
};
const certs = (file: string) => certificatesFromPem(fs.readFileSync(file, 'utf8'), file).map((d) => new X509Certificate(d));
const pemOf = (c: X509Certificate) => certificateToPem(c.raw);

interface Node {
  name: string;
  dir: string;
  nodeId: string;
  agent: Background | null;
}

describe('root CA rotation: 3 replicas on PostgreSQL, real agents', () => {
  let db: TestDb;
  let a: Cluster;
  let replicas: Awaited<ReturnType<typeof addReplica>>[] = [];
  let endpoints: string[];
  let work: string;
  let chainverify: string;
  const nodes: Node[] = [];
  /** S: the node whose agent is stopped while a rotation starts; N: a node with a running agent */
  let S: Node;
  let N: Node;
  let firstTokens: { worker: string; manager: string };
  let rootCount = 0;
  const ctxs: NodeTls[] = [];
  const servers: tls.Server[] = [];

  const servers3 = () => [{ logs: a.server.logs, server: a.server, url: a.url }, ...replicas.map((r) => ({ logs: r.server.logs, server: r.server, url: r.url }))];
  const cairn = (args: string[], timeoutMs = 60_000) => cliAsync(args, { timeoutMs });
  /** a replica that is up (one of them is killed for a while) */
  const live = () => servers3().find((s) => s.server.running)!.url;
  const admin = (...args: string[]) => [...args, '--state-dir', a.dir, '--server', live()];
  const rotation = async (server = live()) => {
    const r = await api(server, 'GET', '/v1/ca/rotation?ca=cluster&stuck=100', undefined, adminId(a.dir));
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body as { rotation: any; stuck: { id: string; role: string; lastSeen: string | null; issuerKeyId: string | null }[] };
  };
  const startAgent = (n: Node) => {
    n.agent = startBackground(process.execPath, [CAIRN_BIN, 'agent', '--state-dir', n.dir]);
    return n.agent;
  };
  const roots = (n: Node) => certs(path.join(n.dir, 'ca.crt'));
  const chain = (n: Node) => certs(path.join(n.dir, 'node.crt'));
  const running = () => nodes.filter((n) => n.agent && n.agent.proc.exitCode === null && n.agent.proc.signalCode === null);
  /** every running agent's ca.crt is exactly `root` */
  const allTrustOnly = (root: X509Certificate) =>
    until(`every ca.crt holds only ${root.subject.replace(/\n/g, ',')}`, () => running().every((n) => {
      const r = roots(n);
      return r.length === 1 && r[0].raw.equals(root.raw);
    }), 30_000);
  const trustBundle = async () => {
    const r = await api(live(), 'GET', '/v1/ca');
    return certificatesFromPem(r.body.trustBundle, 'trust bundle').map((d) => new X509Certificate(d));
  };

  /** Verify `leaf` (+ `inter`) against `anchors` with openssl -x509_strict, GnuTLS certtool and Go crypto/x509. */
  async function verifyEverywhere(label: string, leaf: X509Certificate, inter: X509Certificate[], anchors: X509Certificate[]) {
    const d = fs.mkdtempSync(path.join(work, 'v-'));
    const f = (name: string, cs: X509Certificate[]) => {
      const p = path.join(d, name);
      fs.writeFileSync(p, cs.map(pemOf).join(''));
      return p;
    };
    const leafF = f('leaf.pem', [leaf]);
    const caF = f('ca.pem', anchors);
    const chainF = f('chain.pem', [leaf, ...inter]);
    const args = ['verify', '-x509_strict', '-purpose', 'sslclient', '-CAfile', caF, ...(inter.length ? ['-untrusted', f('inter.pem', inter)] : []), leafF];
    const o = ok(await run('openssl', args), `openssl verify ${label}`);
    assert.match(o.stdout, /: OK/);
    const g = ok(await run('certtool', ['--verify', '--load-ca-certificate', caF, '--infile', chainF]), `certtool --verify ${label}`);
    assert.match(g.stdout, /Chain verification output: Verified/);
    // the whole path down to a root, as one file: certtool --verify-chain
    const issuerRoot = anchors.find((r) => (inter.at(-1) ?? leaf).checkIssued(r) && (inter.at(-1) ?? leaf).verify(r.publicKey));
    if (issuerRoot && inter.length) {
      const full = f('full.pem', [leaf, ...inter, issuerRoot]);
      const c = ok(await run('certtool', ['--verify-chain', '--infile', full]), `certtool --verify-chain ${label}`);
      assert.match(c.stdout, /Chain verification output: Verified/);
    }
    const go = ok(await run(chainverify, [caF, chainF, 'clientAuth']), `go crypto/x509 ${label}`);
    assert.match(go.stdout, /^OK /);
  }

  before(async () => {
    work = mkTemp('cairn-rotation-');
    // Go verifier built while the cluster starts (standard library only: no network)
    const env: Record<string, string | undefined> = { GOTOOLCHAIN: 'local', GOPROXY: 'off', GOFLAGS: '', GO111MODULE: 'off' };
    if (!process.env.GOCACHE && !process.env.HOME && !process.env.XDG_CACHE_HOME) env.GOCACHE = path.join(work, 'gocache');
    chainverify = path.join(work, 'chainverify');
    const built = run('go', ['build', '-o', chainverify, path.join(REPO_ROOT, 'test', 'integration', 'chainverify', 'main.go')], { cwd: work, env, timeoutMs: 120_000 });

    db = await createDb();
    a = await startCluster('rotation', { store: db.url });
    firstTokens = a.tokens;
    replicas = await Promise.all([addReplica(db.url, path.join(a.dir, 'unlock.key')), addReplica(db.url, path.join(a.dir, 'unlock.key'))]);
    endpoints = [a.url, ...replicas.map((r) => r.url)];
    // joins, a few at a time; each node lists the replicas starting at a different one
    for (let i = 0; i < AGENTS + 1; i += 5) {
      await Promise.all(
        Array.from({ length: Math.min(5, AGENTS + 1 - i) }, async (_, k) => {
          const j = i + k;
          const dir = path.join(work, `node${j}`);
          const eps = [...endpoints.slice(j % 3), ...endpoints.slice(0, j % 3)];
          const r = ok(await cairn(['join', '--token', j % 4 === 0 ? a.tokens.manager : a.tokens.worker, '--state-dir', dir, '--json', ...eps]), `join ${j}`);
          nodes[j] = { name: `node${j}`, dir, nodeId: JSON.parse(r.stdout).nodeId, agent: null };
        }),
      );
    }
    S = nodes[AGENTS]; // joined, agent not started: a node that is down
    N = nodes[1];
    for (const n of nodes.slice(0, AGENTS)) startAgent(n);
    await Promise.all(nodes.slice(0, AGENTS).map((n) => n.agent!.waitFor(/agent started/, 30_000)));
    ok(await built, 'go build chainverify');
  });

  after(async () => {
    ctxs.forEach((c) => c.close());
    await Promise.all(servers.map((s) => close(s)));
    await Promise.all(nodes.map((n) => n.agent?.stop()));
    for (const r of replicas) await r.cleanup();
    await a?.cleanup();
    await db?.drop();
  });

  test('rotation to a generated root: driver killed mid-way, a stuck node reported, zero failed handshakes between old and new, chains verified by three stacks, old root gone, tokens changed', { timeout: 120_000 }, async () => {
    const oldRoot = roots(N)[0];
    assert.equal(roots(N).length, 1);
    // mutual TLS between S (stays on the old root: its agent is down) and N (moves to the new root)
    const ctxS = await loadNodeTls(S.dir, { pollIntervalMs: 100 });
    const ctxN = await loadNodeTls(N.dir, { pollIntervalMs: 100 });
    ctxs.push(ctxS, ctxN);
    const srvS = nodeTlsServer(ctxS);
    const srvN = nodeTlsServer(ctxN);
    servers.push(srvS, srvN);
    const [portS, portN] = [await listen(srvS), await listen(srvN)];
    const roleS = ctxS.identity.role;
    const roleN = ctxN.identity.role;
    let looping = true;
    const hs = { ok: 0, failed: [] as string[], sawNewN: 0 };
    const loop = (async () => {
      while (looping) {
        for (const [from, port, role] of [[ctxS, portN, roleN], [ctxN, portS, roleS]] as const) {
          try {
            assert.match(await talk(from, port, role), /^hello /);
            hs.ok++;
          } catch (e) {
            hs.failed.push(`${new Date().toISOString()} ${(e as Error).message}`);
          }
        }
        if (ctxN.identity.serial && chain(N).length === 2) hs.sawNewN++;
        await sleep(25);
      }
    })();

    try {
      // the CLI follows the rotation (plain lines: not a terminal)
      const follow = cairn(admin('ca', 'rotate', '--poll-interval', '300'), 120_000);
      // find the replica driving the batches and kill it
      const driver = await until('a replica drives the rotation', () => servers3().find((s) => /drives the rotation/.test(s.logs.join(''))), 15_000, 50);
      const other = servers3().find((s) => s !== driver)!.url;
      const stillRunning = await until('another replica sees the rotation', async () => (await rotation(other)).rotation, 5000, 50);
      assert.equal(stillRunning.state, 'running', 'killed mid-rotation');
      assert.ok(stillRunning.nodes.converged < stillRunning.nodes.total, 'killed mid-rotation');
      await driver.server.kill('SIGKILL');
      const killedAt = Date.now();

      // N renews from the new key: leaf + cross-signed certificate
      await until('N renewed from the new key', () => chain(N).length === 2, 30_000);
      const [leaf, cross] = chain(N);
      const tb = await trustBundle();
      assert.equal(tb.length, 2, 'during the rotation the trust bundle holds both roots');
      const newRoot = tb.find((r) => !r.raw.equals(oldRoot.raw))!;
      assert.ok(leaf.checkIssued(newRoot) && leaf.verify(newRoot.publicKey), 'the leaf is issued by the new key');
      assert.ok(cross.checkIssued(oldRoot) && cross.verify(oldRoot.publicKey), 'the cross-signed certificate is issued by the old root');
      assert.equal(cross.subject, newRoot.subject);
      // during: a peer trusting only the old root, one trusting only the new, one trusting both
      await verifyEverywhere('during, old root only', leaf, [cross], [oldRoot]);
      await verifyEverywhere('during, new root only', leaf, [], [newRoot]);
      await verifyEverywhere('during, both roots', leaf, [cross], [oldRoot, newRoot]);
      // S's certificate (old key) is still accepted by a peer that trusts both
      const sLeaf = chain(S)[0];
      await verifyEverywhere('during, a node on the old root', sLeaf, [], [oldRoot, newRoot]);

      // every running agent converges; S is stuck, and --status says so
      await until('all but S converged', async () => {
        const r = await rotation();
        return r.rotation && r.rotation.nodes.converged === r.rotation.nodes.total - 1 && r.stuck.length === 1 && r.stuck[0].id === S.nodeId;
      }, 60_000);
      const st = ok(await cairn(admin('ca', 'rotate', '--status')), 'ca rotate --status');
      assert.match(st.stdout, /: running/);
      assert.match(st.stdout, new RegExp(`${S.nodeId}\\s+(worker|manager)\\s+\\S+\\s+[0-9a-f]{16}`));
      assert.match(st.stdout, new RegExp(`${AGENTS} of ${AGENTS + 1} converged`));
      assert.match(st.stdout, /--finish --force/);
      const stJson = JSON.parse(ok(await cairn(admin('ca', 'rotate', '--status', '--json')), 'status --json').stdout);
      assert.deepEqual(stJson.stuck.map((n: any) => n.id), [S.nodeId]);
      assert.equal(stJson.stuck[0].issuerKeyId, stJson.rotation.from.keyId);

      // the killed replica comes back (the rotation went on without it); S's agent starts
      await sleep(Math.max(0, 6000 - (Date.now() - killedAt)));
      await driver.server.start();
      startAgent(S);
      const done = await follow;
      ok(done, 'ca rotate (following)');
      assert.match(done.stdout, /Started rotation .* of the cluster CA/);
      assert.match(done.stdout, /\d+\/25 nodes converged, [0-9.]+ nodes\/s, ETA/);
      assert.match(done.stdout, /Rotation of the cluster CA completed/);
      assert.match(done.stdout, /join tokens changed/);
      // every replica answers what the store holds at once, not what its watcher last loaded
      for (const s of servers3().filter((x) => x.server.running)) assert.equal((await rotation(s.url)).rotation.state, 'completed', `status from ${s.url} right after the rotation completed`);
      const fin = await rotation();
      assert.equal(fin.rotation.state, 'completed');
      assert.equal(fin.rotation.nodes.converged, fin.rotation.nodes.total);

      // the old root leaves every ca.crt (the long-poll brings the completion)
      await allTrustOnly(newRoot);
      assert.deepEqual((await trustBundle()).map((c) => c.fingerprint256), [newRoot.fingerprint256]);
      await until('S and N trust the new root only, in their TLS contexts too', () => !ctxS.serverOptions().ca!.toString().includes(pemOf(oldRoot).trim()) && !ctxN.serverOptions().ca!.toString().includes(pemOf(oldRoot).trim()));
      await sleep(500); // handshakes after the end
      looping = false;
      await loop;
      assert.deepEqual(hs.failed, [], 'no mutual-TLS handshake between the old-root and the new-root node failed');
      assert.ok(hs.ok > 100 && hs.sawNewN > 10, `handshakes: ${hs.ok}, with N on the new root: ${hs.sawNewN}`);
      rootCount = 1;

      // after: N's chain as kept (leaf + cross) and a fresh certificate verify against the new root alone
      await verifyEverywhere('after, kept chain', chain(N)[0], chain(N).slice(1), [newRoot]);
      // tokens: the old ones fail, the new ones (kept by the CLI, printed by cairn token) work
      const oldJoin = await cairn(['join', '--token', firstTokens.worker, '--state-dir', path.join(work, 'late-old'), ...endpoints]);
      assert.notEqual(oldJoin.code, 0);
      assert.match(oldJoin.stderr, /token/);
      const tok = ok(await cairn(['token', 'worker', '--state-dir', a.dir, '--server', live(), '-q']), 'token').stdout.trim();
      assert.notEqual(tok, firstTokens.worker);
      assert.equal(tok, JSON.parse(fs.readFileSync(path.join(a.dir, 'admin', 'tokens.json'), 'utf8')).worker, 'the CLI saved the new token');
      const late = path.join(work, 'late');
      const lateId = JSON.parse(ok(await cairn(['join', '--token', tok, '--state-dir', late, '--json', ...endpoints]), 'join with the new token').stdout).nodeId;
      const lateChain = certs(path.join(late, 'node.crt'));
      assert.equal(lateChain.length, 1, 'after completion a certificate comes alone');
      assert.equal(certs(path.join(late, 'ca.crt'))[0].fingerprint256, newRoot.fingerprint256);
      await verifyEverywhere('after, new certificate', lateChain[0], [], [newRoot]);
      // it runs no agent: removed, it does not hold the next rotation open
      ok(await cairn(admin('node', 'rm', lateId)), 'node rm');
    } finally {
      looping = false;
      await loop;
    }
  });

  test('--ca-cert/--ca-key with an RSA root from openssl req -x509; a stopped agent keeps it open; --finish --force; that node must rejoin', { timeout: 90_000 }, async () => {
    assert.equal(rootCount, 1, 'runs after the first rotation');
    await S.agent!.stop();
    const key = path.join(work, 'rsa.key');
    const crt = path.join(work, 'rsa.crt');
    ok(await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', crt, '-days', '3650', '-subj', '/O=Example Org/CN=Example Org Cluster Root',
      // without a key usage extension OpenSSL's -x509_strict refuses a CA (RFC 5280 4.2.1.3)
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign']), 'openssl req -x509');
    fs.chmodSync(key, 0o644);
    const loose = await cairn(admin('ca', 'rotate', '--ca-cert', crt, '--ca-key', key, '--detach'));
    assert.equal(loose.code, 1);
    assert.match(loose.stderr, /rsa\.key/, 'a key file others can read is refused');
    fs.chmodSync(key, 0o600);
    const half = await cairn(admin('ca', 'rotate', '--ca-cert', crt, '--detach'));
    assert.equal(half.code, 2);
    assert.match(half.stderr, /--ca-cert and --ca-key together/);

    const started = ok(await cairn(admin('ca', 'rotate', '--ca-cert', crt, '--ca-key', key, '--detach', '--json')), 'ca rotate --ca-cert');
    const view = JSON.parse(started.stdout).rotation;
    assert.match(view.to.subject, /Example Org Cluster Root/);
    const again = await cairn(admin('ca', 'rotate', '--detach'));
    assert.equal(again.code, 1);
    assert.match(again.stderr, /rotation_in_progress/);

    const rsaRoot = new X509Certificate(fs.readFileSync(crt));
    await until('all but S converged', async () => {
      const r = await rotation();
      return r.rotation.nodes.converged === r.rotation.nodes.total - 1;
    }, 60_000).catch(async (e) => {
      const r = await rotation();
      const stuck = nodes.find((n) => n !== S && r.stuck.some((x) => x.id === n.nodeId));
      throw new Error(`${e.message}: ${JSON.stringify(r)}\n${stuck?.name} agent: ${stuck?.agent?.stderr().split('\n').slice(-15).join('\n')}`);
    });
    // the store counts N converged when its renewal is recorded, a moment before N's agent writes node.crt
    await until('N wrote its certificate of the RSA root', () => chain(N)[0].checkIssued(rsaRoot), 10_000);
    const [leaf, cross] = chain(N);
    assert.ok(leaf.checkIssued(rsaRoot) && leaf.verify(rsaRoot.publicKey), 'N holds a certificate of the RSA root');
    const prevRoot = roots(S)[0];
    await verifyEverywhere('RSA root, during, previous root only', leaf, [cross], [prevRoot]);
    await verifyEverywhere('RSA root, during, RSA root only', leaf, [], [rsaRoot]);

    const refused = await cairn(admin('ca', 'rotate', '--finish'));
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /1 of \d+ nodes/);
    const st = ok(await cairn(admin('ca', 'rotate', '--status')), '--status');
    assert.match(st.stdout, new RegExp(S.nodeId));
    const forced = ok(await cairn(admin('ca', 'rotate', '--finish', '--force')), '--finish --force');
    assert.match(forced.stdout, /completed/);
    assert.match(forced.stdout, /1 node had not converged and will have to join again/);
    await allTrustOnly(rsaRoot);

    // S comes back: its agent stops with the rejoin message
    const back = startAgent(S);
    await until('S\'s agent stopped', () => back.proc.exitCode !== null || back.proc.signalCode !== null, 30_000);
    assert.equal(back.proc.exitCode, 1, back.stderr());
    assert.match(back.stderr(), /join again/);
    assert.match(back.stderr(), /rejoin_required|retired/);
    // and joins again with the current token
    const tok = ok(await cairn(['token', 'worker', '--state-dir', a.dir, '--server', live(), '-q']), 'token').stdout.trim();
    ok(await cairn(['join', '--force', '--token', tok, '--state-dir', S.dir, ...endpoints]), 'S joins again');
    assert.equal(roots(S)[0].fingerprint256, rsaRoot.fingerprint256);
    // it joined as a new node; the one it was was removed when the rotation was finished without it
    const old = JSON.parse(ok(await cairn(admin('node', 'inspect', S.nodeId, '--json')), 'node inspect of the node S was').stdout);
    assert.equal(old.status, 'removed');
    S.nodeId = JSON.parse(fs.readFileSync(path.join(S.dir, 'node.json'), 'utf8')).nodeId;
    startAgent(S);
    rootCount = 2;
  });

  test('--abort returns to the old root', { timeout: 60_000 }, async () => {
    assert.equal(rootCount, 2, 'runs after the RSA rotation');
    const rsaRoot = roots(N)[0];
    // a node that is down keeps the rotation open until the abort (else every node could converge and complete it first)
    await S.agent!.stop();
    ok(await cairn(admin('ca', 'rotate', '--detach')), 'start');
    await until('the agents see the new root', () => roots(N).length === 2, 15_000);
    const abr = await cairn(admin('ca', 'rotate', '--abort'));
    const tails = () => servers3().map((s) => s.logs.join('').split('\n').filter((l) => !/"level":(20|10)/.test(l)).slice(-8).join('\n')).join('\n---\n');
    const ab = ok(abr, `--abort\n${abr.code === 0 ? '' : tails()}`);
    assert.match(ab.stdout, /aborted/);
    const twice = await cairn(admin('ca', 'rotate', '--abort'));
    assert.equal(twice.code, 1);
    assert.match(twice.stderr, /no_rotation/);
    const st = JSON.parse(ok(await cairn(admin('ca', 'rotate', '--status', '--json')), 'status').stdout);
    assert.equal(st.rotation.state, 'aborted');
    await allTrustOnly(rsaRoot);
    startAgent(S);
    // what the aborted key issued meanwhile still verifies against the old root through its cross-signed certificate
    for (const n of running()) {
      const c = chain(n);
      await verifyEverywhere(`after abort, ${n.name}`, c[0], c.slice(1), [rsaRoot]).catch((e) => assert.fail(`${n.name}: ${e.message}`));
      break;
    }
  });

  /** A TLS handshake with a server presenting `chainPem` (and its key), by a client trusting only `anchors`: what a real peer builds from what a node sends. */
  async function handshake(keyPem: string, chainPem: string, anchors: X509Certificate[]): Promise<void> {
    const srv = tls.createServer({ key: keyPem, cert: chainPem, minVersion: 'TLSv1.2' }, (s) => s.end('ok\n'));
    const port = await listen(srv);
    try {
      await new Promise<void>((resolve, reject) => {
        const c = tls.connect({ host: '127.0.0.1', port, ca: anchors.map(pemOf), checkServerIdentity: () => undefined }, () => {
          c.once('data', () => {
            c.end();
            resolve();
          });
        });
        c.once('error', reject);
      });
    } finally {
      await close(srv);
    }
  }

  test('--ca-cert with an intermediate signed by an outside root (and its chain): the old root vouches for the outside root; peers trusting either accept the chain during; afterwards the outside root is the trust bundle and the token digest', { timeout: 120_000 }, async () => {
    const d = fs.mkdtempSync(path.join(work, 'ext-'));
    const p = (f: string) => path.join(d, f);
    ok(await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', p('outside.key'), '-out', p('outside.crt'), '-days', '3650', '-subj', '/C=NL/O=Outside/OU=PKI/CN=Outside Root', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']), 'outside root');
    const intermediate = async (name: string, ku: string) => {
      ok(await run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', p(`${name}.key`), '-out', p(`${name}.csr`), '-subj', `/O=Outside/CN=${name}`]), 'intermediate CSR');
      fs.writeFileSync(p(`${name}.cnf`), `basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,${ku}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n`);
      ok(await run('openssl', ['x509', '-req', '-in', p(`${name}.csr`), '-CA', p('outside.crt'), '-CAkey', p('outside.key'), '-CAcreateserial', '-out', p(`${name}.crt`), '-days', '1825', '-extfile', p(`${name}.cnf`)]), 'sign the intermediate');
      fs.writeFileSync(p(`${name}-chain.pem`), fs.readFileSync(p(`${name}.crt`), 'utf8') + fs.readFileSync(p('outside.crt'), 'utf8'));
      fs.chmodSync(p(`${name}.key`), 0o600);
    };
    // the checks of given CA material are init's (ca-material.ts): a key usage without keyCertSign is refused
    await intermediate('NoCertSign', 'digitalSignature,cRLSign');
    const refused = await cairn(admin('ca', 'rotate', '--ca-cert', p('NoCertSign-chain.pem'), '--ca-key', p('NoCertSign.key'), '--detach'));
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /bad_ca_material|key usage without keyCertSign/);
    assert.match(refused.stderr, /keyCertSign/);
    // an intermediate without its chain is refused too
    const alone = await cairn(admin('ca', 'rotate', '--ca-cert', p('NoCertSign.crt'), '--ca-key', p('NoCertSign.key'), '--detach'));
    assert.equal(alone.code, 1);

    await intermediate('Cluster Intermediate', 'keyCertSign,cRLSign,digitalSignature');
    if (!running().includes(S)) startAgent(S); // (when this test runs alone)
    const prevRoot = roots(N)[0];
    const outside = new X509Certificate(fs.readFileSync(p('outside.crt')));
    const inter = new X509Certificate(fs.readFileSync(p('Cluster Intermediate.crt')));
    ok(await cairn(admin('ca', 'rotate', '--ca-cert', p('Cluster Intermediate-chain.pem'), '--ca-key', p('Cluster Intermediate.key'), '--detach')), 'ca rotate with an intermediate');

    // during: N renewed from the intermediate's key, sent with the intermediate and the old root's certificate of the outside root
    await until('N renewed from the intermediate', () => chain(N).length === 3 && chain(N)[0].checkIssued(inter), 30_000);
    const [leaf, sentInter, cross] = chain(N);
    assert.ok(sentInter.raw.equals(inter.raw), 'the intermediate is sent after the leaf');
    assert.ok(cross.checkIssued(prevRoot) && cross.verify(prevRoot.publicKey), 'the cross-signed certificate is issued by the old root');
    assert.equal(cross.subject, outside.subject, 'with the outside root\'s exact subject');
    assert.ok(cross.publicKey.equals(outside.publicKey), 'and its key');
    assert.deepEqual((await trustBundle()).map((c) => c.fingerprint256).sort(), [prevRoot.fingerprint256, outside.fingerprint256].sort());
    // the agents accepted the outside root: the old root vouches for it
    await until('N trusts the old and the outside root', () => roots(N).some((r) => r.raw.equals(outside.raw)) && roots(N).some((r) => r.raw.equals(prevRoot.raw)), 15_000);
    await verifyEverywhere('intermediate, during, old root only', leaf, [sentInter, cross], [prevRoot]);
    await verifyEverywhere('intermediate, during, outside root only', leaf, [sentInter, cross], [outside]);
    await verifyEverywhere('intermediate, during, both', leaf, [sentInter, cross], [prevRoot, outside]);
    // a real TLS peer, from the chain exactly as the node sends it
    const keyN = fs.readFileSync(path.join(N.dir, 'node.key'), 'utf8');
    const chainN = fs.readFileSync(path.join(N.dir, 'node.crt'), 'utf8');
    await handshake(keyN, chainN, [prevRoot]);
    await handshake(keyN, chainN, [outside]);

    // completion (every agent runs: the driver completes it by itself)
    await until('the rotation completed', async () => (await rotation()).rotation.state === 'completed', 60_000).catch(async (e) => {
      const r = await rotation();
      const idOf = (n: Node) => JSON.parse(fs.readFileSync(path.join(n.dir, 'node.json'), 'utf8')).nodeId;
      const stuck = nodes.filter((n) => r.stuck.some((x) => x.id === idOf(n)));
      throw new Error(`${e.message}: ${JSON.stringify(r)}\n${stuck.map((n) => `${n.name} agent: ${n.agent?.stderr().split('\n').slice(-25).join('\n')}`).join('\n')}`);
    });
    await allTrustOnly(outside);
    const ca = (await api(live(), 'GET', '/v1/ca')).body;
    assert.deepEqual((await trustBundle()).map((c) => c.fingerprint256), [outside.fingerprint256], 'the trust bundle holds the chain\'s root');
    assert.equal(ca.digest, rootDigest(outside.raw), 'the join token digest is of the chain\'s root');
    const tok = ok(await cairn(['token', 'worker', '--state-dir', a.dir, '--server', live(), '-q']), 'token').stdout.trim();
    const late = path.join(work, 'late-inter');
    const lateId = JSON.parse(ok(await cairn(['join', '--token', tok, '--state-dir', late, '--json', ...endpoints]), 'join under the intermediate').stdout).nodeId;
    const lateChain = certs(path.join(late, 'node.crt'));
    assert.equal(lateChain.length, 2, 'after completion: leaf and intermediate');
    await verifyEverywhere('intermediate, after, new certificate', lateChain[0], lateChain.slice(1), [outside]);
    const c = chain(N);
    await verifyEverywhere('intermediate, after, kept chain', c[0], c.slice(1), [outside]);
    await handshake(fs.readFileSync(path.join(N.dir, 'node.key'), 'utf8'), fs.readFileSync(path.join(N.dir, 'node.crt'), 'utf8'), [outside]);
    ok(await cairn(admin('node', 'rm', lateId)), 'node rm');
  });
});
