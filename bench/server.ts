/**
 * cairn and CFSSL over HTTPS on loopback, driven by one load generator (bench/loadgen, Go,
 * 50 clients, keys and CSRs made before the clock starts), with the server's CPU time per
 * operation read from /proc over the measured window (`<row>.cpu_ms`): the figure that
 * survives a noisy, shared machine. Every rate is measured in 3 rounds, interleaved, and
 * reported as the median with min–max in the note.
 *
 *  tls.new_conn_ceiling  GET /healthz on a new TLS connection each (no resumption)
 *  tls.new_conn_mtls     the same presenting a node certificate (the handshake of a renewal)
 *  join.https            a real join as `cairn join` makes it (GET /v1/ca + POST /v1/join)
 *  renew.https           a renewal over mutual TLS, new connection each (the certificate changes)
 *  *.w1                  the same with `cairn serve --workers 1`
 *  tls.floor_node_mtls   a minimal Node HTTPS server with cairn's TLS settings and no cairn code,
 *                        a client certificate and a new connection per request: the floor
 *  cfssl.sign_mtls       `cfssl serve` (TLS + client certificates + its SQLite certdb): a sign,
 *                        new connection each; cfssl.sign_mtls_keepalive reuses connections
 *  node_ls_10k_ms        `cairn node ls --json` with 10,000 nodes (end to end, CLI included)
 *  crl.publish_100k_ms   one CRL publication with 100,000 revoked entries, after one more revocation
 *  crl.publish_100k_first_ms  the same, the leader's first read of the 100,000 entries
 *  renew.p99_paced_ms    renewal p99 at a steady 200/s (latency from when each was due)
 *  renew.p99_during_crl_ms  the same while 3 revocations make the leader publish that CRL
 *                        (and `_saturated_`: flat out, where p99 is the clients' queue)
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { adminId, cliAsync, Cluster, seededSerial, seedRows, ServeProcess, startCluster } from '../test/integration/cluster.js';
import { BenchContext, BenchGroup, Derived, Row } from './harness.js';
import { post } from './https.js';
import { buildLoadgen, hasCommand, LoadResult, runLoadgen, startBareTls, startCfssl, tempDir } from './procs.js';

const CLIENTS = 50;
const ROUNDS = 3;
/** renewals per second for the latency rows: well under what the server sustains, so they measure stalls, not a queue */
const PACED_RATE = 200;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** A rate row and its .cpu_ms row from the rounds of one measurement. */
function rows(name: string, unit: string, rs: LoadResult[], note: string, extra: Partial<Row> = {}): Row[] {
  if (rs.length === 0) return [];
  const rates = rs.map((r) => r.rate);
  const cpu = rs.map((r) => r.cpuPerOp);
  const range = (xs: number[], d: number) => `${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)}`;
  return [
    { name, value: Math.round(median(rates)), unit, ...extra, note: `${range(rates, 0)}; p99 ${median(rs.map((r) => r.p99)).toFixed(1)} ms; ${note}` },
    { name: `${name}.cpu_ms`, value: Math.round(median(cpu) * 1000) / 1000, unit: 'ms/op', note: `server CPU per op, ${range(cpu, 3)}` },
  ];
}

/** `cairn serve --workers n` on a cluster's state directory (or without the flag when unsupported). */
async function serve(dir: string, workers: number | undefined): Promise<ServeProcess> {
  const s = new ServeProcess(dir, {}, workers === undefined ? [] : ['--workers', String(workers)]);
  await s.start();
  return s;
}

async function supportsWorkers(): Promise<boolean> {
  return (await cliAsync(['serve', '--help'])).stdout.includes('--workers');
}

async function run(ctx: BenchContext): Promise<Row[]> {
  const tmp = tempDir('cairn-bench-');
  const out: Row[] = [];
  let server: ServeProcess | undefined;
  let f: Cluster | undefined;
  const c = await startCluster('bench');
  try {
    const loadgen = buildLoadgen(tmp);
    const seconds = Math.max(3, ctx.seconds * 2);
    const lg = (url: string, mode: string, more: string[] = []) => ['-url', url, '-mode', mode, '-c', String(CLIENTS), '-seconds', String(seconds), '-warmup', String(Math.max(1, ctx.warmupSeconds)), ...more];
    const multi = await supportsWorkers();
    const cores = os.availableParallelism();
    await c.kill('SIGTERM');
    // renewals far more often than the per-node budget allows a real node
    const admin = adminId(c.dir);

    const configs: { suffix: string; workers: number | undefined }[] = multi ? [{ suffix: '.w1', workers: 1 }, { suffix: '', workers: undefined }] : [{ suffix: '', workers: undefined }];
    const res: Record<string, LoadResult[]> = {};
    const add = (k: string, r: LoadResult) => (res[k] ??= []).push(r);
    const cfsslOk = hasCommand('cfssl');
    if (!cfsslOk) ctx.log('cfssl is not installed: the cfssl rows are skipped (apt-get install golang-cfssl)');

    for (let round = 1; round <= ROUNDS; round++) {
      for (const cfg of configs) {
        server = await serve(c.dir, cfg.workers);
        const pid = server.proc!.pid!;
        if (round === 1 && cfg === configs[0]) {
          const r = await post(c.url, '/v1/config', { renewalIntervalMs: 0 }, { method: 'PATCH', agent: false, key: admin.key, cert: admin.cert });
          if (r.status !== 200) throw new Error(`config: ${r.status} ${JSON.stringify(r.body)}`);
        }
        ctx.log(`round ${round}, cairn ${cfg.workers === undefined ? 'default workers' : `--workers ${cfg.workers}`}: healthz, join, renew`);
        add(`tls.new_conn_ceiling${cfg.suffix}`, await runLoadgen(loadgen, lg(c.url, 'healthz'), pid));
        add(`join.https${cfg.suffix}`, await runLoadgen(loadgen, lg(c.url, 'join', ['-token', c.tokens.worker]), pid));
        add(`renew.https${cfg.suffix}`, await runLoadgen(loadgen, lg(c.url, 'renew', ['-token', c.tokens.worker]), pid));
        add(`tls.new_conn_mtls${cfg.suffix}`, await runLoadgen(loadgen, lg(c.url, 'healthz-mtls', ['-token', c.tokens.worker]), pid));
        await server.kill('SIGTERM');
        server = undefined;
      }
      {
        const bare = await startBareTls(fs.mkdtempSync(path.join(tmp, 'bare-')));
        try {
          ctx.log(`round ${round}, a bare Node HTTPS server with cairn's TLS settings: the floor`);
          add('tls.floor_node_mtls', await runLoadgen(loadgen, lg(bare.url, 'cfssl', bare.clientArgs), bare.pid));
        } finally {
          await bare.stop();
        }
      }
      if (cfsslOk) {
        const dir = fs.mkdtempSync(path.join(tmp, 'cfssl-'));
        const cf = await startCfssl(dir);
        try {
          ctx.log(`round ${round}, cfssl serve: sign over mutual TLS`);
          add('cfssl.sign_mtls', await runLoadgen(loadgen, lg(cf.url, 'cfssl', cf.clientArgs), cf.pid));
          add('cfssl.sign_mtls_keepalive', await runLoadgen(loadgen, lg(cf.url, 'cfssl', [...cf.clientArgs, '-keepalive']), cf.pid));
          if ((await cf.recorded()) === 0) throw new Error('cfssl recorded no certificate in its database');
        } finally {
          await cf.stop();
        }
      }
    }
    const wl = (s: string) => (s === '.w1' ? ', --workers 1' : multi ? `, default workers (${cores})` : '');
    for (const cfg of configs) {
      const ceil = res[`tls.new_conn_ceiling${cfg.suffix}`];
      const clientMs = median(ceil.map((r) => r.clientCpuMs / r.ops));
      out.push(...rows(`tls.new_conn_ceiling${cfg.suffix}`, 'req/s', ceil, `GET /healthz, new TLS connection each; load generator CPU ${clientMs.toFixed(2)} ms/conn${wl(cfg.suffix)}`));
      out.push(...rows(`join.https${cfg.suffix}`, 'joins/s', res[`join.https${cfg.suffix}`], `real join (one TLS connection per join when cairn join does so)${wl(cfg.suffix)}`));
      out.push(...rows(`renew.https${cfg.suffix}`, 'renewals/s', res[`renew.https${cfg.suffix}`], `mTLS, new connection per renewal${wl(cfg.suffix)}`));
      out.push(...rows(`tls.new_conn_mtls${cfg.suffix}`, 'req/s', res[`tls.new_conn_mtls${cfg.suffix}`], `GET /healthz presenting a node certificate, new connection each: the handshake a renewal pays${wl(cfg.suffix)}`));
    }
    out.push(
      ...rows('tls.floor_node_mtls', 'req/s', res['tls.floor_node_mtls'], "a minimal Node HTTPS server with cairn's TLS settings and no cairn code (bench/bare-tls.ts), client certificate, new connection per request: what any Node server here pays before its own work"),
    );
    out.push({ name: 'join.p99_ms', value: Math.round(median(res['join.https'].map((r) => r.p99)) * 10) / 10, unit: 'ms', note: "50 clients flat out: mostly the clients' queue (50 / rate); renew.p99_paced_ms is the latency figure" });
    out.push({ name: 'renew.p99_ms', value: Math.round(median(res['renew.https'].map((r) => r.p99)) * 10) / 10, unit: 'ms' });
    if (cfsslOk) {
      out.push(...rows('cfssl.sign_mtls', 'certs/s', res['cfssl.sign_mtls'], 'cfssl serve, mTLS, new connection per sign, SQLite certdb'));
      out.push(...rows('cfssl.sign_mtls_keepalive', 'certs/s', res['cfssl.sign_mtls_keepalive'], 'cfssl serve, mTLS, connections reused'));
    }

    // ---- stalls: a 10k-node listing, a 100k-entry CRL, renewals during its publication
    // on a cluster of their own: the rounds above joined thousands of nodes into the first
    const fc = await startCluster('bench-stalls');
    f = fc;
    await fc.kill('SIGTERM');
    const fAdmin = adminId(fc.dir);
    server = await serve(fc.dir, multi ? 1 : undefined);
    const cfg = await post(fc.url, '/v1/config', { renewalIntervalMs: 0 }, { method: 'PATCH', agent: false, key: fAdmin.key, cert: fAdmin.cert });
    if (cfg.status !== 200) throw new Error(`config: ${cfg.status} ${JSON.stringify(cfg.body)}`);
    await seedRows(fc.dir, { nodes: 10_000, revoked: 100_000 });
    const lsTimes: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      const t0 = performance.now();
      const r = await cliAsync(['node', 'ls', '--json', '--state-dir', fc.dir]);
      lsTimes.push(performance.now() - t0);
      if (r.code !== 0) throw new Error(`node ls: ${r.stderr}`);
      const n = JSON.parse(r.stdout).length;
      if (n !== 10_000) throw new Error(`node ls listed ${n} nodes, not the 10,000 seeded`);
    }
    out.push({ name: 'node_ls_10k_ms', value: Math.round(median(lsTimes)), unit: 'ms', note: `cairn node ls --json, 10,000 nodes, CLI start included; ${Math.round(Math.min(...lsTimes))}–${Math.round(Math.max(...lsTimes))}; goal < 500` });

    // the publication the seeded rows call for, timed from the server's log (start of the cycle to "published")
    const published = async (after: number): Promise<{ ms: number; read?: string }> => {
      const end = Date.now() + 30_000;
      while (Date.now() < end) {
        for (const line of server!.logs.join('').split('\n')) {
          if (!line.includes('published CRL') || !line.includes('"ca":"cluster"')) continue;
          const m = JSON.parse(line) as { time: number; ms?: number; entries: number; read?: string };
          if (m.time > after && m.entries >= 100_000) return { ms: m.ms ?? NaN, read: m.read };
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error('the CRL leader did not publish the 100k-entry CRL within 30 s');
    };
    const revokeOne = async (serial: string) => {
      const r = await post(fc.url, `/v1/certificates/${serial}/revoke`, { reason: 'keyCompromise' }, { agent: false, key: fAdmin.key, cert: fAdmin.cert });
      if (r.status !== 200) throw new Error(`revoke: ${r.status} ${JSON.stringify(r.body)}`);
    };
    // the first publication after the seeding reads the 100,000 rows (the leader's list had
    // none); each later one reads the one revocation that made it (crl-publish.ts)
    const pubs: { ms: number; read?: string }[] = [];
    for (let i = 0; i <= ROUNDS; i++) {
      const t = Date.now();
      await revokeOne(seededSerial(i));
      pubs.push(await published(t));
    }
    const [first, ...later] = pubs;
    out.push({ name: 'crl.publish_100k_ms', value: Math.round(median(later.map((p) => p.ms))), unit: 'ms', note: `one more revocation on a 100,000-entry list: one CRL publication as the leader logs it (${later.map((p) => `${Math.round(p.ms)} ${p.read}`).join(', ')})` });
    out.push({ name: 'crl.publish_100k_first_ms', value: Math.round(first.ms), unit: 'ms', note: `the publication that first reads the 100,000 entries (${first.read} read)` });
    await server.kill('SIGTERM');
    server = await serve(fc.dir, undefined);
    let k = ROUNDS + 1;
    const burst = async () => {
      for (let i = 0; i < 3; i++) {
        await new Promise((r) => setTimeout(r, (seconds * 1000) / 4));
        await revokeOne(seededSerial(k++));
      }
    };
    // at a steady PACED_RATE (latency from the time each renewal was due, so a stall shows in
    // full), without and with the publications; and flat out, where p99 is mostly the queue of
    // 50 clients waiting on a saturated server
    const paced = ['-token', fc.tokens.worker, '-rate', String(PACED_RATE)];
    const quiet = await runLoadgen(loadgen, lg(fc.url, 'renew', paced), server.proc!.pid!);
    const during = await runLoadgen(loadgen, lg(fc.url, 'renew', paced), server.proc!.pid!, burst);
    const flat = await runLoadgen(loadgen, lg(fc.url, 'renew', ['-token', fc.tokens.worker]), server.proc!.pid!, burst);
    const p99 = (r: LoadResult) => Math.round(r.p99 * 10) / 10;
    out.push({ name: 'renew.p99_paced_ms', value: p99(quiet), unit: 'ms', note: `renewals at ${PACED_RATE}/s (${Math.round(quiet.rate)}/s done), new connection each, no CRL publication; p50 ${quiet.p50.toFixed(1)} ms` });
    out.push({ name: 'renew.p99_during_crl_ms', value: p99(during), unit: 'ms', note: `the same while 3 revocations each make the leader publish a 100k-entry CRL; p50 ${during.p50.toFixed(1)} ms; goal < 100` });
    out.push({ name: 'renew.p99_during_crl_saturated_ms', value: p99(flat), unit: 'ms', note: `flat out (${Math.round(flat.rate)}/s) during the same publications: p50 ${flat.p50.toFixed(1)} ms is the 50 clients' queue` });
    return out;
  } finally {
    await server?.kill('SIGTERM');
    await c.cleanup();
    await f?.cleanup();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

const ratio = (name: string, a: string, b: string): Derived => ({
  name,
  inputs: [a, b],
  compute: (r) => ({
    name,
    value: r[a] && r[b] && r[b].value > 0 ? Math.round((r[a].value / r[b].value) * 100) / 100 : NaN,
    unit: '×',
    note: `${a} / ${b} (rates, same load generator)`,
  }),
});

/** What a renewal costs cairn's server above the floor of a bare Node HTTPS server (both one process). */
const aboveFloor: Derived = {
  name: 'renew.above_floor_cpu_ms',
  inputs: ['renew.https.w1.cpu_ms', 'tls.floor_node_mtls.cpu_ms'],
  compute: (r) => {
    const a = r['renew.https.w1.cpu_ms'];
    const b = r['tls.floor_node_mtls.cpu_ms'];
    return {
      name: 'renew.above_floor_cpu_ms',
      value: a && b ? Math.round((a.value - b.value) * 1000) / 1000 : NaN,
      unit: 'ms/op',
      note: 'renew.https.w1.cpu_ms − tls.floor_node_mtls.cpu_ms: server CPU of a renewal beyond a bare mutual-TLS request',
    };
  },
};

const group: BenchGroup = {
  name: 'server',
  benches: [
    {
      name: 'join.https',
      description: 'cairn serve (SQLite) and cfssl serve over HTTPS, Go load generator, server CPU per op',
      produces: ['tls.', 'renew.', 'cfssl.', 'node_ls', 'crl.publish'],
      run,
    },
  ],
  derived: [ratio('renew.vs_cfssl', 'renew.https', 'cfssl.sign_mtls'), ratio('join.vs_cfssl', 'join.https', 'cfssl.sign_mtls'), aboveFloor],
};
export default group;
