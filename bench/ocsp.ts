/**
 * The OCSP responder: single-certificate POST requests (a good node certificate, with a
 * nonce each, so nothing is cached) over keep-alive connections from 50 concurrent clients in
 * this process, against `cairn serve --workers 1` on SQLite. Each answer is checked to be
 * `successful`.
 *
 *  ocsp.responses_per_s   answers a second (one ECDSA P-256 signature each)
 */
import https from 'node:https';
import { randomBytes } from 'node:crypto';
import { buildOcspRequest, certificateFromPem } from '../src/pki/index.js';
import { adminId, api, ServeProcess, startCluster } from '../test/integration/cluster.js';
import { BenchContext, BenchGroup, Row } from './harness.js';
import { CONCURRENCY, load } from './https.js';

function post(agent: https.Agent, url: string, body: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method: 'POST', agent, rejectUnauthorized: false, headers: { 'content-type': 'application/ocsp-request', 'content-length': body.length } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => resolve(Buffer.concat(chunks)));
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function run(ctx: BenchContext): Promise<Row[]> {
  const c = await startCluster('bench-ocsp');
  let server: ServeProcess | undefined;
  try {
    await c.kill('SIGTERM');
    server = new ServeProcess(c.dir, {}, ['--workers', '1']);
    await server.start();
    const root = certificateFromPem((await api(c.url, 'GET', '/v1/ca')).body.roots.cluster, 'root');
    const admin = (await api(c.url, 'GET', '/v1/whoami', undefined, adminId(c.dir))).body.serial as string;
    const requests = Array.from({ length: 256 }, () => buildOcspRequest(root, admin, { nonce: randomBytes(16) }));
    const agent = new https.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
    const url = `${c.url}/v1/ocsp/cluster`;
    const op = async (_w: number, i: number) => {
      const r = await post(agent, url, requests[i % requests.length]);
      if (r[4] !== 0x0a) throw new Error(`OCSP answer status ${r[4]}`); // [0x30, len, 0x0a, 1, 0] for successful
    };
    ctx.log('OCSP: warm-up');
    await load(Math.max(1, ctx.warmupSeconds), CONCURRENCY, op);
    ctx.log('OCSP: measuring');
    const r = await load(Math.max(3, ctx.seconds * 2), CONCURRENCY, op);
    agent.destroy();
    return [
      { name: 'ocsp.responses_per_s', value: Math.round(r.perSecond), unit: 'responses/s', note: `single requests with a nonce, keep-alive, ${CONCURRENCY} concurrent, --workers 1; p50 ${r.p50.toFixed(1)} ms, p99 ${r.p99.toFixed(1)} ms` },
    ];
  } finally {
    await server?.kill('SIGTERM');
    await c.cleanup();
  }
}

const group: BenchGroup = {
  name: 'ocsp',
  benches: [{ name: 'ocsp.responses_per_s', description: 'OCSP answers a second: single requests, keep-alive, 50 concurrent', run }],
};
export default group;
