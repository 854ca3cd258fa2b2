/**
 * Peers check revocation without the CA, against a real `cairn serve`: a worker and two
 * managers join with the CLI; a manager is removed with `cairn node rm`; the worker's agent
 * fetches the published CRL into crl.pem; the library then refuses the removed node's
 * certificate in real TLS handshakes, as a server and as a client.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { runAgent } from '../../src/agent/agent.js';
import { closeAgents } from '../../src/agent/client.js';
import { loadNodeTls, NodeTls } from '../../src/agent/tls.js';
import { CairnError } from '../../src/util/errors.js';
import { listen, nodeTlsServer, talk } from '../unit/agent-fixtures.js';
import { cli, cliAsync, Cluster, mkTemp, startCluster } from './cluster.js';

const readJson = (f: string) => JSON.parse(fs.readFileSync(f, 'utf8'));

async function serve(ctx: NodeTls): Promise<{ server: tls.Server; port: number }> {
  const server = nodeTlsServer(ctx);
  return { server, port: await listen(server) };
}

describe('revocation reaches peers through the agent\'s CRL', () => {
  let c: Cluster;
  let tmp: string;
  const dirs: Record<string, string> = {};
  before(async () => {
    c = await startCluster('revocation');
    tmp = mkTemp();
    for (const [name, role] of [['worker', 'worker'], ['m1', 'manager'], ['m2', 'manager']] as const) {
      dirs[name] = path.join(tmp, name);
      const r = await cliAsync(['join', '--token', c.tokens[role], '--state-dir', dirs[name], c.url]);
      assert.equal(r.code, 0, r.stderr);
    }
  });
  after(async () => {
    closeAgents();
    await c.cleanup();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('join stores a verified CRL; after `cairn node rm` the peer\'s agent fetches the new one and the library refuses the removed node both ways', async () => {
    assert.match(fs.readFileSync(path.join(dirs.worker, 'crl.pem'), 'utf8'), /BEGIN X509 CRL/, 'join fetched the CRL');
    const w = await loadNodeTls(dirs.worker, { pollIntervalMs: 50 });
    const m2 = await loadNodeTls(dirs.m2, { pollIntervalMs: 0 });
    const m1 = await loadNodeTls(dirs.m1, { pollIntervalMs: 0 });
    const ws = await serve(w);
    const m2s = await serve(m2);
    const ac = new AbortController();
    try {
      // before: the manager talks to the worker, and the worker to the manager
      assert.match(await talk(m2, ws.port, 'worker'), /hello/);
      assert.match(await talk(w, m2s.port, 'manager'), /hello/);
      const before = w.crlNumber;

      const { nodeId } = readJson(path.join(dirs.m2, 'node.json'));
      const rm = await cliAsync(['node', 'rm', nodeId, '--state-dir', c.dir]);
      assert.equal(rm.code, 0, rm.stderr);

      // the worker's agent polls the CA (every 300 ms here) and stores the newer CRL
      const logger = (await import('pino')).default({ level: 'silent' });
      let updates = 0;
      const reloaded = new Promise<void>((resolve) => {
        const onReload = () => {
          if (w.crlNumber !== null && w.crlNumber !== before) {
            w.off('reload', onReload);
            resolve();
          }
        };
        w.on('reload', onReload);
      });
      const agent = runAgent(dirs.worker, { signal: ac.signal, logger, caRefreshMs: 300, onCrlUpdate: () => updates++ });
      await Promise.race([reloaded, new Promise((_, rej) => setTimeout(() => rej(new Error('no new CRL within 20 s')), 20_000))]);
      assert.ok(updates >= 1);

      // as a server: the removed manager is refused
      const refused: CairnError[] = [];
      w.on('peerRefused', (e) => refused.push(e));
      await assert.rejects(talk(m2, ws.port, 'worker'));
      assert.equal(refused[0]?.code, 'peer_revoked', String(refused[0]));
      // as a client: the removed manager's server is refused
      await assert.rejects(talk(w, m2s.port, 'manager'), (e: CairnError) => e.code === 'peer_revoked');
      // the other manager is still welcome
      assert.match(await talk(m1, ws.port, 'worker'), /hello/);
      ac.abort();
      await agent;
    } finally {
      ac.abort();
      for (const x of [w, m1, m2]) x.close();
      ws.server.close();
      m2s.server.close();
    }
    // the served CRL lists the removed node's certificate, as openssl sees it
    const certs = JSON.parse(cli(['cert', 'ls', '--node', readJson(path.join(dirs.m2, 'node.json')).nodeId, '--json', '--state-dir', c.dir]).stdout);
    assert.ok(certs.every((x: { status: string }) => x.status === 'revoked'));
  });

  test('a demoted manager: its agent renews at its next trust poll, and peers then refuse its old manager certificate', async () => {
    const old = path.join(tmp, 'm1-before-demotion');
    fs.cpSync(dirs.m1, old, { recursive: true });
    const { nodeId } = readJson(path.join(dirs.m1, 'node.json'));
    const d = await cliAsync(['node', 'demote', nodeId, '--state-dir', c.dir]);
    assert.equal(d.code, 0, d.stderr);
    const logger = (await import('pino')).default({ level: 'silent' });
    const ac = new AbortController();
    // m1's agent: its certificate is far from its renewal window; only the CA's hint makes it renew
    const agent = runAgent(dirs.m1, { signal: ac.signal, logger, caRefreshMs: 300 });
    try {
      for (let i = 0; i < 100 && readJson(path.join(dirs.m1, 'node.json')).role !== 'worker'; i++) await new Promise((r) => setTimeout(r, 100));
      assert.equal(readJson(path.join(dirs.m1, 'node.json')).role, 'worker', 'the demoted node did not renew');
    } finally {
      ac.abort();
      await agent;
    }
    const certs = JSON.parse(cli(['cert', 'ls', '--node', nodeId, '--json', '--state-dir', c.dir]).stdout);
    const managerCerts = certs.filter((x: { role: string }) => x.role === 'manager');
    assert.ok(managerCerts.length >= 1 && managerCerts.every((x: { status: string; revocationReason: string }) => x.status === 'revoked' && x.revocationReason === 'privilegeWithdrawn'));

    // the worker's agent brings the new CRL; its library refuses the old manager certificate
    const w = await loadNodeTls(dirs.worker, { pollIntervalMs: 50 });
    const stale = await loadNodeTls(old, { pollIntervalMs: 0 });
    const ws = await serve(w);
    const wa = new AbortController();
    const wagent = runAgent(dirs.worker, { signal: wa.signal, logger, caRefreshMs: 300 });
    try {
      let refused = false;
      for (let i = 0; i < 100 && !refused; i++) {
        refused = await talk(stale, ws.port, 'worker').then(() => false, () => true);
        if (!refused) await new Promise((r) => setTimeout(r, 200));
      }
      assert.ok(refused, 'the old manager certificate was still accepted');
    } finally {
      wa.abort();
      await wagent;
      for (const x of [w, stale]) x.close();
      ws.server.close();
    }
  });
});
