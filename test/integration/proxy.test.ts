/**
 * The failed-join limit behind a real HAProxy (mode tcp, send-proxy-v2): with
 * `cairn serve --proxy-protocol` it keys on each client's own address; a connection without a
 * valid PROXY header is dropped; without the flag nothing changes. Clients get distinct
 * source addresses from the loopback range (127.0.0.2, 127.0.0.3, …).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { createCsr, csrToPem, generateKeyPair } from '../../src/pki/index.js';
import { Background, startBackground, tmpDir } from '../helpers.js';
import { Cluster, freePort, ServeProcess, startCluster } from './cluster.js';

const csr = () => csrToPem(createCsr(generateKeyPair().privateKey, { CN: 'x' }));

interface Answer {
  status: number;
  body: any;
}

/** POST /v1/join from a given local (source) address. */
function join(port: number, from: string, body: unknown): Promise<Answer> {
  const payload = Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port, path: '/v1/join', method: 'POST', localAddress: from, rejectUnauthorized: false, servername: 'ca', agent: false, headers: { 'content-type': 'application/json', 'content-length': payload.length } },
      (res) => {
        let t = '';
        res.on('data', (d) => (t += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(t) }));
      },
    );
    req.on('error', reject);
    req.setTimeout(15_000, () => req.destroy(new Error('timeout')));
    req.end(payload);
  });
}

/** A join over a raw TCP socket that first writes `prefix` (e.g. a PROXY v1 line), then TLS. */
function joinWithPrefix(port: number, prefix: Buffer, body: unknown): Promise<Answer> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const raw = net.connect({ host: '127.0.0.1', port }, () => {
      raw.write(prefix);
      const s = tls.connect({ socket: raw, rejectUnauthorized: false, servername: 'ca' }, () => {
        s.write(`POST /v1/join HTTP/1.1\r\nHost: ca\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\nConnection: close\r\n\r\n${payload}`);
      });
      let text = '';
      s.setEncoding('utf8');
      s.on('data', (d) => (text += d));
      s.on('error', reject);
      s.on('close', () => {
        const m = text.match(/^HTTP\/1\.1 (\d{3})[\s\S]*?\r\n\r\n([\s\S]*)$/);
        if (!m) return reject(new Error(`no HTTP answer: ${JSON.stringify(text.slice(0, 200))}`));
        resolve({ status: Number(m[1]), body: JSON.parse(m[2]) });
      });
    });
    raw.on('error', reject);
  });
}

async function waitPort(port: number, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`nothing listens on ${port}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Restart a cluster's server with extra `cairn serve` flags. */
async function restartWith(c: Cluster, args: string[]): Promise<ServeProcess> {
  await c.kill('SIGKILL');
  const s = new ServeProcess(c.dir, {}, args);
  await s.start();
  return s;
}

describe('behind HAProxy with send-proxy-v2 and cairn serve --proxy-protocol', () => {
  let c: Cluster;
  let serve: ServeProcess;
  let lbPort: number;
  let hap: Background | undefined;
  before(async () => {
    c = await startCluster();
    serve = await restartWith(c, ['--proxy-protocol']);
    lbPort = await freePort();
    const dir = tmpDir();
    const cfg = path.join(dir, 'haproxy.cfg');
    fs.writeFileSync(
      cfg,
      [
        'global',
        '  maxconn 200',
        'defaults',
        '  mode tcp',
        '  timeout connect 5s',
        '  timeout client 30s',
        '  timeout server 30s',
        'frontend cairn',
        `  bind 127.0.0.1:${lbPort}`,
        '  default_backend cas',
        'backend cas',
        '  option httpchk GET /healthz',
        // as docs/operations.md shows it: health checks carry the PROXY header too
        `  server ca1 127.0.0.1:${c.port} send-proxy-v2 check check-ssl check-send-proxy verify none inter 200ms`,
        '',
      ].join('\n'),
    );
    hap = startBackground('haproxy', ['-f', cfg, '-db']);
    await waitPort(lbPort);
    await new Promise((r) => setTimeout(r, 1000)); // a few health checks
  });
  after(async () => {
    await hap?.stop();
    await serve?.kill('SIGKILL');
    await c?.cleanup();
  });

  test('25 bad joins from one client do not block a valid join from another; the logs name the real client', async () => {
    assert.doesNotMatch(serve.logs.join(''), /connection dropped/, 'health checks were dropped');
    let limited = 0;
    for (let i = 0; i < 25; i++) {
      const r = await join(lbPort, '127.0.0.2', { token: 'nope', csr: 'x' });
      if (r.status === 429) limited++;
      else assert.equal(r.status, 401, JSON.stringify(r.body));
    }
    assert.ok(limited > 0, 'the client sending bad joins was not limited');
    const other = await join(lbPort, '127.0.0.3', { token: c.tokens.worker, csr: csr() });
    assert.equal(other.status, 201, JSON.stringify(other.body));
    // the limited client is still limited, even with a good token
    assert.equal((await join(lbPort, '127.0.0.2', { token: c.tokens.worker, csr: csr() })).status, 429);
    const logs = serve.logs.join('');
    assert.match(logs, /"client":"127\.0\.0\.2"[^\n]*"msg":"join refused"/);
    assert.match(logs, /"client":"127\.0\.0\.2"[^\n]*"msg":"join rate limited"/);
  });

  test('a PROXY v1 header is honoured too', async () => {
    const r = await joinWithPrefix(c.port, Buffer.from('PROXY TCP4 192.0.2.7 127.0.0.1 40000 7443\r\n'), { token: 'nope', csr: 'x' });
    assert.equal(r.status, 401);
    await new Promise((r) => setTimeout(r, 200));
    assert.match(serve.logs.join(''), /"client":"192\.0\.2\.7"[^\n]*"msg":"join refused"/);
  });

  test('a connection without a valid PROXY header is dropped', async () => {
    await assert.rejects(join(c.port, '127.0.0.4', { token: c.tokens.worker, csr: csr() }));
    await assert.rejects(joinWithPrefix(c.port, Buffer.from('PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n'), { token: 'nope', csr: 'x' }));
    // and the server keeps serving
    assert.equal((await join(lbPort, '127.0.0.5', { token: c.tokens.worker, csr: csr() })).status, 201);
    assert.match(serve.logs.join(''), /connection dropped: no valid PROXY protocol header/);
  });
});

describe('without --proxy-protocol', () => {
  let c: Cluster;
  before(async () => {
    c = await startCluster();
  });
  after(async () => {
    await c?.cleanup();
  });

  test('direct clients are limited by their own address, and a PROXY header is not trusted', async () => {
    // a PROXY line is not TLS: the connection fails, the address in it is never used
    await assert.rejects(joinWithPrefix(c.port, Buffer.from('PROXY TCP4 192.0.2.9 127.0.0.1 40000 7443\r\n'), { token: 'nope', csr: 'x' }));
    let limited = 0;
    for (let i = 0; i < 25; i++) if ((await join(c.port, '127.0.0.2', { token: 'nope', csr: 'x' })).status === 429) limited++;
    assert.ok(limited > 0);
    assert.equal((await join(c.port, '127.0.0.3', { token: c.tokens.worker, csr: csr() })).status, 201);
    assert.equal((await join(c.port, '127.0.0.2', { token: c.tokens.worker, csr: csr() })).status, 429);
    assert.doesNotMatch(c.logs.join(''), /192\.0\.2\.9/);
  });
});
