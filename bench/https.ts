/**
 * The CA over HTTPS on loopback: a real `cairn serve` in its own process (SQLite store),
 * 50 concurrent clients in this process.
 *
 *  join.https      joins per second, a new TLS connection per join (handshake included)
 *  join.p99_ms     99th percentile latency of those joins
 *  renew.https     renewals per second, each with the node's newest certificate on a new
 *                  mutual-TLS connection (only the newest certificate may renew, so a
 *                  connection made with the old one is of no further use after a renewal)
 *  tls.new_conn_ceiling  GET /healthz with a new TLS connection each: what the machine allows
 *                  for any request that needs its own handshake (the ceiling of join.https)
 *
 * CSRs are made before the clock starts (a node makes one per renewal; the CA's cost is
 * what is measured). The client shares the machine's two cores with the server.
 */
import https from 'node:https';
import { performance } from 'node:perf_hooks';
import { createCsr, csrToPem, generateKeyPair, privateKeyToPem } from '../src/pki/index.js';
import { adminId, startCluster } from '../test/integration/cluster.js';
import { BenchContext, BenchGroup, Row } from './harness.js';

export const CONCURRENCY = 50;

export function post(url: string, path: string, body: unknown, opts: https.RequestOptions): Promise<{ status: number; body: any }> {
  const payload = Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = https.request(
      url + path,
      { method: 'POST', rejectUnauthorized: false, headers: { 'content-type': 'application/json', 'content-length': payload.length }, ...opts },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString()) }));
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

export function csrPool(n: number) {
  return Array.from({ length: n }, () => {
    const k = generateKeyPair();
    return { key: privateKeyToPem(k.privateKey), csr: csrToPem(createCsr(k.privateKey)) };
  });
}

export interface LoadResult {
  perSecond: number;
  p50: number;
  p99: number;
  ops: number;
}

/** Run `op` from `concurrency` workers for `seconds`; each worker has its own index. */
export async function load(seconds: number, concurrency: number, op: (worker: number, i: number) => Promise<void>): Promise<LoadResult> {
  const lat: number[] = [];
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  let i = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, w) => {
      while (performance.now() < end) {
        const s = performance.now();
        await op(w, i++);
        lat.push(performance.now() - s);
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  return { perSecond: lat.length / elapsed, p50: lat[Math.floor(lat.length * 0.5)], p99: lat[Math.floor(lat.length * 0.99)], ops: lat.length };
}

async function run(ctx: BenchContext): Promise<Row[]> {
  const c = await startCluster('bench');
  try {
    const pool = csrPool(200);
    const seconds = Math.max(3, ctx.seconds * 2);
    const token = c.tokens.worker;
    const join = async (_w: number, i: number) => {
      const r = await post(c.url, '/v1/join', { token, csr: pool[i % pool.length].csr }, { agent: false });
      if (r.status !== 201) throw new Error(`join: ${r.status} ${JSON.stringify(r.body)}`);
    };
    const healthz = () =>
      new Promise<void>((resolve, reject) => {
        const req = https.request(c.url + '/healthz', { rejectUnauthorized: false, agent: false }, (res) => {
          res.resume();
          res.on('end', resolve);
        });
        req.on('error', reject);
        req.end();
      });
    ctx.log(`tls.new_conn_ceiling: ${seconds}s with ${CONCURRENCY} clients`);
    await load(ctx.warmupSeconds, CONCURRENCY, healthz);
    const ceiling = await load(seconds, CONCURRENCY, healthz);
    ctx.log(`join.https: warm-up, then ${seconds}s with ${CONCURRENCY} clients`);
    await load(ctx.warmupSeconds, CONCURRENCY, join);
    const j = await load(seconds, CONCURRENCY, join);

    // the benchmark renews far more often than the per-node budget allows a real node
    const admin = adminId(c.dir);
    const cfg = await post(c.url, '/v1/config', { renewalIntervalMs: 0 }, { method: 'PATCH', agent: false, key: admin.key, cert: admin.cert });
    if (cfg.status !== 200) throw new Error(`config: ${cfg.status} ${JSON.stringify(cfg.body)}`);
    const nodes = await Promise.all(
      Array.from({ length: CONCURRENCY }, async (_, w) => {
        const k = pool[w];
        const r = await post(c.url, '/v1/join', { token, csr: k.csr }, { agent: false });
        return { key: k.key, cert: r.body.certificate as string, n: 0 };
      }),
    );
    const renew = async (w: number) => {
      const node = nodes[w];
      const next = pool[(w + CONCURRENCY * ++node.n) % pool.length];
      const r = await post(c.url, '/v1/renew', { csr: next.csr }, { agent: false, key: node.key, cert: node.cert });
      if (r.status !== 200) throw new Error(`renew: ${r.status} ${JSON.stringify(r.body)}`);
      node.key = next.key;
      node.cert = r.body.certificate;
    };
    ctx.log(`renew.https: warm-up, then ${seconds}s with ${CONCURRENCY} mTLS clients, a new connection per renewal`);
    await load(ctx.warmupSeconds, CONCURRENCY, renew);
    const rn = await load(seconds, CONCURRENCY, renew);
    return [
      { name: 'tls.new_conn_ceiling', value: Math.round(ceiling.perSecond), unit: 'req/s', note: `GET /healthz, new TLS connection each, ${CONCURRENCY} clients, p99 ${ceiling.p99.toFixed(1)} ms` },
      { name: 'join.https', value: Math.round(j.perSecond), unit: 'joins/s', baseline: 'tls.new_conn_ceiling', note: `goal ≥ 1000; ${CONCURRENCY} clients, new TLS connection each, p50 ${j.p50.toFixed(1)} ms` },
      { name: 'join.p99_ms', value: Math.round(j.p99 * 10) / 10, unit: 'ms', note: 'goal < 50' },
      { name: 'renew.https', value: Math.round(rn.perSecond), unit: 'renewals/s', note: `goal ≥ 2000; ${CONCURRENCY} mTLS clients, new connection per renewal, p50 ${rn.p50.toFixed(1)} ms, p99 ${rn.p99.toFixed(1)} ms` },
    ];
  } finally {
    await c.cleanup();
  }
}

const group: BenchGroup = {
  name: 'https',
  benches: [{ name: 'join.https', description: 'join and renew over HTTPS against a cairn serve process (SQLite)', run }],
};
export default group;
