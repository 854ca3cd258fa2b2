/**
 * Node HTTPS client helpers for benchmarks that drive cairn from this process (bench/ha.ts).
 * The server benchmarks (bench/server.ts) use the Go load generator instead: a Node client
 * costs more CPU per new TLS connection than the server it measures.
 */
import https from 'node:https';
import { performance } from 'node:perf_hooks';
import { createCsr, csrToPem, generateKeyPair, privateKeyToPem } from '../src/pki/index.js';

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
