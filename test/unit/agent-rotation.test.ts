/**
 * The node side of a root CA rotation, against an in-process CA over real TLS: the agent's
 * long-poll of GET /v1/ca learns of a rotation at once (not at its 10-minute poll), renews
 * when the CA asks, takes the new root only through the cross-signed certificate, keeps
 * node-to-node mutual TLS working through the whole rotation (loadNodeTls reloads ca.crt
 * without a restart), drops the old root at completion or the new one at an abort, and stops
 * with a clear "join again" message when a forced finish left it behind.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import pino from 'pino';
import { certificateToPem, randomId } from '../../src/pki/index.js';
import { runAgent } from '../../src/agent/agent.js';
import { closeAgents } from '../../src/agent/client.js';
import { readNodeIdentity } from '../../src/agent/node-state.js';
import { renewOnce } from '../../src/agent/renew.js';
import { loadNodeTls, NodeTls } from '../../src/agent/tls.js';
import { Waker, watchCa } from '../../src/agent/watch.js';
import { tmpDir } from '../helpers.js';
import { close, crossSign, fakeCa, FakeCa, issueLeaf, listen, makeNodeDir, makeRoot, nodeTlsServer, rejectsWith, talk, TestCa } from './agent-fixtures.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean, ms = 5000): Promise<number> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    await sleep(20);
  }
  return Date.now() - t0;
}

const subjects = (dir: string, file: 'trust' | 'chain') => readNodeIdentity(dir)[file].map((d) => new X509Certificate(d).subject);
const logsOf = () => {
  const logs: any[] = [];
  return { logs, logger: pino({ level: 'debug' }, { write: (s: string) => logs.push(JSON.parse(s)) }) };
};

describe('root rotation, node side', () => {
  const clusterId = randomId();
  let oldRoot: TestCa;
  let newRoot: TestCa;
  let cross: string;
  let ca: FakeCa;
  const ctxs: NodeTls[] = [];
  const servers: tls.Server[] = [];

  before(() => {
    oldRoot = makeRoot('cluster-root-old');
    newRoot = makeRoot('cluster-root-new');
    cross = certificateToPem(crossSign(newRoot, oldRoot));
  });
  /** a CA whose server certificate comes from the new key, sent with the cross-signed certificate: nodes on either root accept it */
  const startCa = async () => {
    const leaf = issueLeaf(newRoot, { cn: randomId(), ou: 'ca-replica', clusterId, sans: [{ dns: 'ca' }] });
    ca = await fakeCa(oldRoot, clusterId, { server: { ...leaf, pem: leaf.pem + cross }, clientCa: oldRoot.pem + newRoot.pem });
    return ca;
  };
  const beginRotation = () => {
    ca.bundle = oldRoot.pem + newRoot.pem;
    ca.caExtra = { crossSigned: [cross] };
    ca.issuer = newRoot;
    ca.chainExtra = cross;
    ca.bump();
  };
  after(async () => {
    ctxs.forEach((c) => c.close());
    await Promise.all(servers.map((s) => close(s)));
    closeAgents();
  });

  test('the long-poll brings the rotation within seconds; the agent renews when asked; mutual TLS between old and new never fails; completion drops the old root', async (t) => {
    await startCa();
    t.after(() => ca.close());
    const base = tmpDir(t);
    const a = path.join(base, 'a');
    const b = path.join(base, 'b');
    const aId = makeNodeDir(a, oldRoot, { role: 'worker', clusterId, endpoints: [ca.url] });
    makeNodeDir(b, oldRoot, { role: 'manager', clusterId, endpoints: [ca.url] });
    const ctxA = await loadNodeTls(a, { pollIntervalMs: 50 });
    const ctxB = await loadNodeTls(b, { pollIntervalMs: 50 });
    ctxs.push(ctxA, ctxB);
    const srvA = nodeTlsServer(ctxA);
    const srvB = nodeTlsServer(ctxB);
    servers.push(srvA, srvB);
    const [portA, portB] = [await listen(srvA), await listen(srvB)];

    // B stays on the old root (no agent: it trusts the old root only, its certificate is from
    // the old key); A goes through the rotation. Handshakes both ways, all the time.
    let loop = true;
    const stats = { ok: 0, failed: [] as string[] };
    const handshakes = (async () => {
      while (loop) {
        for (const [from, port, role] of [[ctxA, portB, 'manager'], [ctxB, portA, 'worker']] as const) {
          try {
            assert.match(await talk(from, port, role), /^hello /);
            stats.ok++;
          } catch (e) {
            stats.failed.push((e as Error).message);
          }
        }
        await sleep(10);
      }
    })();

    const ac = new AbortController();
    const { logs, logger } = logsOf();
    const renewed: string[] = [];
    const agent = runAgent(a, { signal: ac.signal, logger, renewJitterMs: 100, onRenew: (r) => renewed.push(r.serial) });
    try {
      await until('the long-poll is held', () => ca.waiting === 1);
      const callsBefore = ca.caCalls;

      beginRotation();
      const learned = await until('ca.crt holds both roots', () => readNodeIdentity(a).trust.length === 2, 3000);
      assert.ok(learned < 3000, `learned of the rotation after ${learned} ms`);
      assert.deepEqual(subjects(a, 'trust'), ['CN=cluster-root-old', 'CN=cluster-root-new']);
      assert.equal(renewed.length, 0, 'no renewal before the CA asks');

      // the CA asks A to renew (a batch): the held long-poll answers at once with node.renew
      ca.askRenew.add(aId.config.nodeId);
      ca.poke();
      await until('A renewed', () => renewed.length === 1, 3000);
      const chain = readNodeIdentity(a).chain.map((d) => new X509Certificate(d));
      assert.equal(chain.length, 2, 'leaf followed by the cross-signed certificate');
      assert.equal(chain[0].issuer, 'CN=cluster-root-new');
      assert.equal(chain[1].subject, 'CN=cluster-root-new');
      assert.equal(chain[1].issuer, 'CN=cluster-root-old');
      await until('A serves its new certificate', () => ctxA.identity.serial === renewed[0]);
      await sleep(300); // handshakes with A on the new root while B is still on the old one
      assert.equal(renewed.length, 1, 'asked once, renewed once');
      assert.ok(ca.caCalls - callsBefore < 10, `a handful of GET /v1/ca, not a busy loop (${ca.caCalls - callsBefore})`);
      loop = false;
      await handshakes;
      assert.deepEqual(stats.failed, [], 'no handshake failed during the rotation');
      assert.ok(stats.ok >= 6, `handshakes made: ${stats.ok}`);

      // completion: the bundle holds the new root only
      ca.bundle = newRoot.pem;
      ca.caExtra = {};
      ca.bump();
      await until('the old root left ca.crt', () => readNodeIdentity(a).trust.length === 1, 3000);
      assert.deepEqual(subjects(a, 'trust'), ['CN=cluster-root-new']);
      // loadNodeTls reloaded ca.crt without a restart: a peer still on the old root is refused now
      await until('A reloaded its trust', () => !ctxA.serverOptions().ca!.toString().includes(oldRoot.pem.trim()));
      await assert.rejects(talk(ctxB, portA, 'worker'));
      // ... and a node of the new root is accepted
      const c = path.join(base, 'c');
      makeNodeDir(c, newRoot, { role: 'manager', clusterId, endpoints: [ca.url] });
      const ctxC = await loadNodeTls(c, { pollIntervalMs: 0 });
      ctxs.push(ctxC);
      assert.match(await talk(ctxC, portA, 'worker'), /^hello /);
      assert.equal(renewed.length, 1, 'completion does not make a converged node renew');
      assert.ok(logs.some((l) => l.msg === 'renewal requested by the CA'));
      assert.ok(logs.some((l) => l.msg === 'trust bundle updated' && l.removed === 1));
    } finally {
      loop = false;
      await handshakes;
      ac.abort();
      await agent;
    }
  });

  test('an abort takes the new root out again; a node renewed meanwhile keeps verifying through the cross-signed certificate', async (t) => {
    await startCa();
    t.after(() => ca.close());
    const a = path.join(tmpDir(t), 'a');
    const aId = makeNodeDir(a, oldRoot, { role: 'worker', clusterId, endpoints: [ca.url] });
    const ac = new AbortController();
    const renewed: string[] = [];
    const agent = runAgent(a, { signal: ac.signal, logger: pino({ level: 'silent' }), renewJitterMs: 0, onRenew: (r) => renewed.push(r.serial) });
    try {
      await until('the long-poll is held', () => ca.waiting === 1);
      ca.askRenew.add(aId.config.nodeId);
      beginRotation();
      await until('A renewed', () => renewed.length === 1, 3000);
      assert.equal(readNodeIdentity(a).trust.length, 2);
      // abort: back to the old root alone, and the old key signs again
      ca.bundle = oldRoot.pem;
      ca.caExtra = {};
      ca.issuer = oldRoot;
      ca.chainExtra = '';
      ca.bump();
      await until('ca.crt is the old root again', () => readNodeIdentity(a).trust.length === 1, 3000);
      assert.deepEqual(subjects(a, 'trust'), ['CN=cluster-root-old']);
      assert.equal(readNodeIdentity(a).chain.length, 2, 'the certificate of the new key stays, chained to the old root');
      assert.equal(renewed.length, 1);
    } finally {
      ac.abort();
      await agent;
    }
  });

  test('the long-poll goes to the next endpoint when one is down, and a renewal needs no version change', async (t) => {
    await startCa();
    t.after(() => ca.close());
    const s = net.createServer();
    const dead = `https://127.0.0.1:${await listen(s)}`;
    await close(s);
    const a = path.join(tmpDir(t), 'a');
    const aId = makeNodeDir(a, oldRoot, { role: 'worker', clusterId, endpoints: [dead, ca.url] });
    const ac = new AbortController();
    const renewed: string[] = [];
    const agent = runAgent(a, { signal: ac.signal, logger: pino({ level: 'silent' }), baseBackoffMs: 10, renewJitterMs: 0, onRenew: (r) => renewed.push(r.serial) });
    try {
      await until('the long-poll is held at the second endpoint', () => ca.waiting === 1);
      const v = ca.version;
      ca.askRenew.add(aId.config.nodeId);
      ca.poke();
      await until('A renewed', () => renewed.length === 1, 3000);
      assert.equal(ca.version, v);
    } finally {
      ac.abort();
      await agent;
    }
  });

  test('against a CA without the long-poll the watch stops and the periodic poll carries on', async (t) => {
    await startCa();
    t.after(() => ca.close());
    ca.longPoll = false;
    const a = path.join(tmpDir(t), 'a');
    makeNodeDir(a, oldRoot, { role: 'worker', clusterId, endpoints: [ca.url] });
    const { logs, logger } = logsOf();
    const ac = new AbortController();
    const watched = await watchCa({ signal: ac.signal, logger, identity: async () => readNodeIdentity(a), onAnswer: () => assert.fail('no answer without a version') });
    assert.equal(watched, 'unsupported');
    assert.ok(logs.some((l) => /does not offer the long-poll/.test(l.msg)));

    const agent = runAgent(a, { signal: ac.signal, logger: pino({ level: 'silent' }), caRefreshMs: 100 });
    try {
      beginRotation();
      await until('the periodic poll brought the new root', () => readNodeIdentity(a).trust.length === 2, 3000);
    } finally {
      ac.abort();
      await agent;
    }
  });

  test('a node left behind by a forced finish is told to join again, and the agent stops', async (t) => {
    await startCa();
    t.after(() => ca.close());
    const a = path.join(tmpDir(t), 'a');
    makeNodeDir(a, oldRoot, { role: 'worker', clusterId, endpoints: [ca.url] });
    ca.failures.push([403, 'rejoin_required']);
    await rejectsWith(renewOnce(a, { rounds: 1, fetchCrl: false }), 'rejoin_required', /retired.*join again with a token: cairn join --force/);
    ca.failures.push([403, 'rejoin_required']);
    await rejectsWith(runAgent(a, { logger: pino({ level: 'silent' }), renewNow: true }), 'rejoin_required', /join again/);
  });

  test('a node down during a whole rotation finds, when it comes back, a bundle it cannot check: it renews, and stops when told to rejoin', async (t) => {
    await startCa();
    t.after(() => ca.close());
    const a = path.join(tmpDir(t), 'a');
    makeNodeDir(a, oldRoot, { role: 'worker', clusterId, endpoints: [ca.url] });
    // completed without this node: the new root alone, no cross-signed certificate offered any more
    ca.bundle = newRoot.pem;
    ca.issuer = newRoot;
    ca.failures.push([403, 'rejoin_required']);
    const { logs, logger } = logsOf();
    const t0 = Date.now();
    await rejectsWith(runAgent(a, { logger, renewJitterMs: 0 }), 'rejoin_required', /retired.*join again/);
    assert.ok(Date.now() - t0 < 5000, 'at once, not at the next scheduled renewal');
    assert.deepEqual(subjects(a, 'trust'), ['CN=cluster-root-old'], 'ca.crt untouched');
    assert.ok(logs.some((l) => /does not verify against it: renewing/.test(l.msg)));
  });
});

describe('Waker', () => {
  test('a wake before the sleep is not lost; a wake ends a running sleep; the timer still ends one', async () => {
    const w = new Waker();
    w.wake();
    let t0 = Date.now();
    await w.sleep(10_000);
    assert.ok(Date.now() - t0 < 100);
    t0 = Date.now();
    setTimeout(() => w.wake(), 30);
    await w.sleep(10_000);
    assert.ok(Date.now() - t0 < 1000);
    t0 = Date.now();
    await w.sleep(30);
    assert.ok(Date.now() - t0 >= 25);
  });
});
