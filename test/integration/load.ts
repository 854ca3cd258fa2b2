/**
 * Load for the HA tests: clients that join, then renew in a loop like agents would, retrying on
 * 5xx, 429 and network errors; and the check that nothing they received was lost.
 */
import { X509Certificate } from 'node:crypto';
import { createCsr, csrToPem, generateKeyPair, privateKeyToPem } from '../../src/pki/index.js';
import { api, type TlsIdentity } from './cluster.js';
import { query } from './pg-pair.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function csr() {
  const kp = generateKeyPair();
  return { key: privateKeyToPem(kp.privateKey), csr: csrToPem(createCsr(kp.privateKey)) };
}

/** What the clients of a load saw. */
export interface LoadStats {
  received: { serial: string; pem: string }[];
  ok: number;
  /** answers by status (5xx and 429 retried) */
  statuses: Record<number, number>;
  /** 503 answers without a Retry-After header */
  noRetryAfter: number;
  networkErrors: number;
  /** successes, by time (for the longest time without service) */
  okTimes: number[];
}

/**
 * `clients` nodes that join, then renew in a loop, each request to the next endpoint, retrying
 * on 5xx, 429 and network errors, until stop() — like agents would.
 */
export function startLoad(endpoints: string[], token: string, clients: number, pauseMs = 30) {
  const stats: LoadStats = { received: [], ok: 0, statuses: {}, noRetryAfter: 0, networkErrors: 0, okTimes: [] };
  let stopping = false;
  let rr = 0;
  const serialOf = (pem: string) => new X509Certificate(pem).serialNumber;
  const one = async (fn: (url: string) => Promise<{ status: number; body: any; headers: Record<string, unknown> }>, expect: number) => {
    while (!stopping) {
      const url = endpoints[rr++ % endpoints.length];
      try {
        const r = await fn(url);
        stats.statuses[r.status] = (stats.statuses[r.status] ?? 0) + 1;
        if (r.status === expect) {
          stats.ok++;
          stats.okTimes.push(Date.now());
          stats.received.push({ serial: serialOf(r.body.certificate), pem: r.body.certificate });
          return r.body;
        }
        if (r.status === 503 && !r.headers['retry-after']) stats.noRetryAfter++;
        if (r.status < 500 && r.status !== 429) throw new Error(`refused: ${r.status} ${JSON.stringify(r.body)}`);
      } catch (e) {
        if (/^refused/.test((e as Error).message)) throw e;
        stats.networkErrors++;
      }
      await sleep(100);
    }
    return null;
  };
  const client = async () => {
    let k = csr();
    const joined = await one((url) => api(url, 'POST', '/v1/join', { token, csr: k.csr }), 201);
    if (!joined) return;
    let id: TlsIdentity = { key: k.key, cert: joined.certificate };
    while (!stopping) {
      await sleep(pauseMs);
      const next = csr();
      const b = await one((url) => api(url, 'POST', '/v1/renew', { csr: next.csr }, id), 200);
      if (!b) return;
      k = next;
      id = { key: k.key, cert: b.certificate };
    }
  };
  const running = Promise.all(Array.from({ length: clients }, () => client()));
  return {
    stats,
    async stop() {
      stopping = true;
      await running;
      return stats;
    },
  };
}

/** The high 8 bytes of a serial: the sequence number from a claimed range. */
const sequenceOfHex = (serial: string) => serial.padStart(32, '0').slice(0, 16);

/** Every received certificate is stored; no serial, and no sequence number, twice. */
export async function checkNothingLost(url: string, received: { serial: string; pem: string }[]) {
  const rows = await query<{ serial: string; cert_pem: string }>(url, 'select serial, cert_pem from certificates');
  const stored = new Map(rows.map((r) => [r.serial, r.cert_pem.trim()]));
  const missing = received.filter((c) => stored.get(c.serial.toUpperCase()) !== c.pem.trim());
  const seqs = new Set(rows.map((r) => sequenceOfHex(r.serial)));
  const receivedSerials = new Set(received.map((c) => c.serial));
  return { stored: rows.length, received: received.length, missing: missing.length, duplicateSerials: received.length - receivedSerials.size, duplicateSequences: rows.length - seqs.size };
}

