/**
 * The whole single-replica flow on loopback, as a user runs it: init → serve → join a
 * worker and a manager → certificate fields (openssl) → node-to-node mutual TLS with the
 * library and with openssl s_client → renew → promote → remove → token rotation; and a CA
 * that does not match the token.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { loadNodeTls } from '../../src/index.js';
import { certificatesFromPem } from '../../src/pki/index.js';
import { run } from '../helpers.js';
import { cli, cliAsync, Cluster, mkTemp, startCluster } from './cluster.js';

const openssl = (args: string[], input?: string) => spawnSync('openssl', args, { encoding: 'utf8', input, timeout: 20_000 });

function subjectOf(certFile: string): Record<string, string> {
  const r = openssl(['x509', '-in', certFile, '-noout', '-subject', '-nameopt', 'sep_multiline,utf8']);
  const out: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const m = line.trim().match(/^(\w+)=(.*)$/);
    if (m && m[1] !== 'subject') out[m[1]] = m[2];
  }
  return out;
}

const readJson = (f: string) => JSON.parse(fs.readFileSync(f, 'utf8'));
const serialOf = (certFile: string) => openssl(['x509', '-in', certFile, '-noout', '-serial']).stdout.trim().split('=')[1];

describe('single-replica flow: join, mutual TLS, renew, promote, remove, rotate', () => {
  let c: Cluster;
  let tmp: string;
  let worker: string;
  let manager: string;
  before(async () => {
    c = await startCluster('flow');
    tmp = mkTemp();
    worker = path.join(tmp, 'worker');
    manager = path.join(tmp, 'manager');
  });
  after(async () => {
    await c.cleanup();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('a worker and a manager join with their tokens', async () => {
    const w = await cliAsync(['join', '--token', c.tokens.worker, '--state-dir', worker, c.url]);
    assert.equal(w.code, 0, w.stderr);
    assert.match(w.stdout, /Joined cluster .* as worker/);
    const m = await cliAsync(['join', '--token', c.tokens.manager, '--state-dir', manager, c.url]);
    assert.equal(m.code, 0, m.stderr);
    for (const d of [worker, manager]) {
      assert.equal(fs.statSync(d).mode & 0o777, 0o700);
      assert.equal(fs.statSync(path.join(d, 'node.key')).mode & 0o777, 0o600);
      const j = readJson(path.join(d, 'node.json'));
      assert.equal(j.clusterId, c.clusterId);
      assert.deepEqual(j.endpoints, [c.url]);
    }
    assert.equal(readJson(path.join(worker, 'node.json')).role, 'worker');
    assert.equal(readJson(path.join(manager, 'node.json')).role, 'manager');
  });

  test('certificate fields, checked with openssl x509 and openssl verify -x509_strict', () => {
    for (const [d, role] of [[worker, 'worker'], [manager, 'manager']] as const) {
      const crt = path.join(d, 'node.crt');
      const { nodeId } = readJson(path.join(d, 'node.json'));
      assert.deepEqual(subjectOf(crt), { O: c.clusterId, OU: role, CN: nodeId });
      const text = openssl(['x509', '-in', crt, '-noout', '-ext', 'subjectAltName,extendedKeyUsage,basicConstraints,keyUsage']).stdout;
      assert.match(text, new RegExp(`DNS:${role}, DNS:${nodeId}`));
      // only a CA replica's certificate carries DNS:ca; a manager's never does
      assert.doesNotMatch(text, /DNS:ca\b/);
      assert.match(text, /TLS Web Server Authentication, TLS Web Client Authentication/);
      assert.match(text, /CA:FALSE/);
      assert.match(text, /Digital Signature/);
      const v = openssl(['verify', '-x509_strict', '-CAfile', path.join(d, 'ca.crt'), crt]);
      assert.equal(v.status, 0, v.stdout + v.stderr);
      // backdated notBefore, 90-day default lifetime
      const dates = openssl(['x509', '-in', crt, '-noout', '-startdate', '-enddate']).stdout;
      const nb = Date.parse(dates.match(/notBefore=(.*)/)![1]);
      const na = Date.parse(dates.match(/notAfter=(.*)/)![1]);
      assert.ok(nb < Date.now() - 30 * 60_000);
      assert.equal(Math.round((na - nb) / 3_600_000), 90 * 24 + 1);
    }
  });

  test('node-to-node mutual TLS with the library context, and with openssl s_client', async () => {
    const srvCtx = await loadNodeTls(manager, { peerRoles: ['worker'] });
    const cliCtx = await loadNodeTls(worker);
    const server = tls.createServer(srvCtx.serverOptions(), (socket) => {
      if (socket.destroyed) return;
      const peer = srvCtx.checkPeer(socket);
      socket.end(`hello ${peer.role} ${peer.nodeId}\n`);
    });
    srvCtx.attach(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    try {
      const reply = await new Promise<string>((resolve, reject) => {
        const s = tls.connect(cliCtx.clientOptions({ host: '127.0.0.1', port, role: 'manager' }));
        let data = '';
        s.on('data', (d) => (data += d));
        s.on('end', () => resolve(data));
        s.on('error', reject);
      });
      assert.equal(reply.trim(), `hello worker ${readJson(path.join(worker, 'node.json')).nodeId}`);
      // a worker-only client that wants a worker refuses the manager
      await assert.rejects(
        new Promise((resolve, reject) => {
          const s = tls.connect(cliCtx.clientOptions({ host: '127.0.0.1', port, role: 'worker' }));
          s.on('secureConnect', resolve);
          s.on('error', reject);
        }),
      );
      // openssl s_client with the worker's files, asking for a manager by name
      // async (not spawnSync): the server under test lives in this process's event loop
      const r = await run(
        'openssl',
        ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'manager', '-verify_hostname', 'manager', '-verify_return_error',
          '-CAfile', path.join(worker, 'ca.crt'), '-cert', path.join(worker, 'node.crt'), '-key', path.join(worker, 'node.key'), '-tls1_2', '-showcerts'],
        { input: '', timeoutMs: 20_000 },
      );
      assert.match(r.stdout, /Verify return code: 0 \(ok\)/, r.stdout + r.stderr);
      assert.match(r.stdout, /hello worker/);
      // the node's server sends its certificate and the root (handed over by the library, not built per handshake)
      const sent = certificatesFromPem(r.stdout, 's_client output');
      const roots = certificatesFromPem(fs.readFileSync(path.join(manager, 'ca.crt'), 'utf8'), 'ca.crt');
      assert.equal(sent.length, 2, r.stdout);
      assert.ok(roots.some((d) => d.equals(sent[1])), 'the second certificate sent is the cluster root');
    } finally {
      srvCtx.close();
      cliCtx.close();
      server.close();
    }
  });

  test('agent --renew-now renews and keeps the node ID', async () => {
    const before = readJson(path.join(worker, 'node.json'));
    const s0 = serialOf(path.join(worker, 'node.crt'));
    const key0 = fs.readFileSync(path.join(worker, 'node.key'), 'utf8');
    const r = await cliAsync(['agent', '--state-dir', worker, '--renew-now']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(readJson(path.join(worker, 'node.json')).nodeId, before.nodeId);
    assert.notEqual(serialOf(path.join(worker, 'node.crt')), s0);
    assert.notEqual(fs.readFileSync(path.join(worker, 'node.key'), 'utf8'), key0, 'a renewal makes a new key');
    assert.equal(subjectOf(path.join(worker, 'node.crt')).CN, before.nodeId);
  });

  test('promote the worker: after its renewal the OU is manager', async () => {
    const { nodeId } = readJson(path.join(worker, 'node.json'));
    const p = cli(['node', 'promote', nodeId, '--state-dir', c.dir]);
    assert.equal(p.code, 0, p.stderr);
    assert.equal(subjectOf(path.join(worker, 'node.crt')).OU, 'worker', 'the role changes at the next renewal, not before');
    const r = await cliAsync(['agent', '--state-dir', worker, '--renew-now']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(subjectOf(path.join(worker, 'node.crt')).OU, 'manager');
    assert.equal(readJson(path.join(worker, 'node.json')).role, 'manager');
    const ls = JSON.parse(cli(['node', 'ls', '--json', '--state-dir', c.dir]).stdout);
    assert.equal(ls.find((n: { id: string }) => n.id === nodeId).role, 'manager');
  });

  test('rm a node: its renewal is refused and its certificates are revoked', async () => {
    const { nodeId } = readJson(path.join(manager, 'node.json'));
    const rm = cli(['node', 'rm', nodeId, '--state-dir', c.dir]);
    assert.equal(rm.code, 0, rm.stderr);
    const r = await cliAsync(['agent', '--state-dir', manager, '--renew-now']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /removed|revoked/);
    const certs = JSON.parse(cli(['cert', 'ls', '--node', nodeId, '--json', '--state-dir', c.dir]).stdout);
    assert.ok(certs.length > 0 && certs.every((x: { status: string }) => x.status === 'revoked'));
  });

  test('rotate the worker token: the old one fails, the new one works', async () => {
    const rot = cli(['token', 'worker', '--rotate', '-q', '--state-dir', c.dir]);
    assert.equal(rot.code, 0, rot.stderr);
    const fresh = rot.stdout.trim();
    const old = await cliAsync(['join', '--token', c.tokens.worker, '--state-dir', path.join(tmp, 'old'), c.url]);
    assert.notEqual(old.code, 0);
    assert.match(old.stderr, /invalid token/);
    assert.ok(!fs.existsSync(path.join(tmp, 'old', 'node.key')));
    const ok = await cliAsync(['join', '--token', fresh, '--state-dir', path.join(tmp, 'new'), c.url]);
    assert.equal(ok.code, 0, ok.stderr);
  });
});

describe('a CA that does not match the token', () => {
  test('join refuses on the digest: another cluster\'s CA behind the right address', async () => {
    const real = await startCluster('real');
    const impostor = await startCluster('impostor');
    const tmp = mkTemp();
    try {
      const r = await cliAsync(['join', '--token', real.tokens.worker, '--state-dir', path.join(tmp, 'n'), impostor.url]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /does not match/i);
      assert.match(r.stderr, /man in the middle/i);
      assert.ok(!fs.existsSync(path.join(tmp, 'n', 'node.key')));
      // nothing was recorded by the impostor either
      const ls = JSON.parse(cli(['node', 'ls', '--json', '--state-dir', impostor.dir]).stdout);
      assert.equal(ls.length, 0);
    } finally {
      await real.cleanup();
      await impostor.cleanup();
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});

