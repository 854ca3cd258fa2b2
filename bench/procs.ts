/**
 * Processes for the server benchmarks: CPU time of a process tree (read from /proc), the Go
 * load generator (bench/loadgen/main.go, built at bench time into a temp directory), and a
 * `cfssl serve` with TLS, client-certificate verification and its SQLite certificate database.
 */
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  certificateToPem, generateKeyPair, issueCertificate, leafProfile, makeIssuer, makeSerial, privateKeyToPem, randomId, rootCaProfile,
  selfSignCertificate, spkiDer,
} from '../src/pki/index.js';
import { CFSSL_CERTDB_SCHEMA, freePort } from '../test/helpers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(here, '../..');
const TICK_MS = 1000 / 100; // USER_HZ: /proc reports CPU time in 1/100 s on Linux

/** CPU milliseconds (user + system) used so far by a process and all its descendants. */
export function treeCpuMs(root: number): number {
  const stats = new Map<number, { ppid: number; ticks: number }>();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      // fields after the name: state(0) ppid(1) ... utime(11) stime(12)
      stats.set(Number(d), { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) });
    } catch {
      /* exited meanwhile */
    }
  }
  let ticks = 0;
  const todo = [root];
  while (todo.length) {
    const pid = todo.pop()!;
    const st = stats.get(pid);
    if (!st) continue;
    ticks += st.ticks;
    for (const [c, s] of stats) if (s.ppid === pid) todo.push(c);
  }
  return ticks * TICK_MS;
}

export function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** Build the Go load generator into `dir`; returns the binary's path. */
export function buildLoadgen(dir: string): string {
  if (!hasCommand('go')) throw new Error('the server benchmarks need Go (apt-get install golang-go) to build their load generator');
  const out = path.join(dir, 'loadgen');
  const r = spawnSync('go', ['build', '-o', out, path.join(REPO, 'bench/loadgen/main.go')], {
    env: { ...process.env, GO111MODULE: 'off', GOCACHE: path.join(dir, 'gocache'), GOPATH: path.join(dir, 'gopath') },
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`go build of the load generator failed: ${r.stderr}`);
  return out;
}

export interface LoadResult {
  ops: number;
  errors: number;
  firstError?: string;
  seconds: number;
  rate: number;
  p50: number;
  p99: number;
  clientCpuMs: number;
  /** CPU ms the server's process tree used in the measured window */
  serverCpuMs: number;
  /** server CPU ms per operation */
  cpuPerOp: number;
  /** CPU ms per operation of a second process tree (`also`: e.g. PostgreSQL's), when given */
  alsoPerOp?: number;
}

/**
 * Run the load generator against a server whose process tree is rooted at `serverPid`; the
 * server's CPU is read when the generator starts measuring and when it reports. `during` runs
 * alongside the measured window (e.g. revocations).
 */
export async function runLoadgen(bin: string, args: string[], serverPid: number, during?: () => Promise<void>, also?: number): Promise<LoadResult> {
  const p = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let cpu0 = NaN;
  let cpu1 = NaN;
  let also0 = NaN;
  let also1 = NaN;
  let side: Promise<void> | undefined;
  p.stdout.on('data', (d) => {
    out += d;
    if (out.includes('\n') && Number.isNaN(cpu1)) {
      cpu1 = treeCpuMs(serverPid);
      if (also !== undefined) also1 = treeCpuMs(also);
    }
  });
  p.stderr.on('data', (d) => {
    err += d;
    if (Number.isNaN(cpu0) && err.includes('loadgen: measuring')) {
      cpu0 = treeCpuMs(serverPid);
      if (also !== undefined) also0 = treeCpuMs(also);
      side = during?.();
    }
  });
  const code = await new Promise<number | null>((resolve) => p.on('close', resolve));
  await side;
  if (code !== 0) throw new Error(`load generator ${args.join(' ')} failed (${code}): ${err.trim()}`);
  const r = JSON.parse(out) as Omit<LoadResult, 'serverCpuMs' | 'cpuPerOp'>;
  if (r.errors > 0) process.stderr.write(`  load generator: ${r.errors} errors, first: ${r.firstError}\n`);
  if (r.ops === 0) throw new Error(`no operation succeeded: ${r.firstError ?? err.trim()}`);
  const serverCpuMs = cpu1 - cpu0;
  return { ...r, serverCpuMs, cpuPerOp: serverCpuMs / r.ops, ...(also !== undefined ? { alsoPerOp: (also1 - also0) / r.ops } : {}) };
}

/** Wait until something accepts TCP connections on 127.0.0.1:port. */
export async function waitForPort(port: number, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`nothing listens on port ${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface Cfssl extends BenchServer {
  /** certificates recorded in cfssl's database */
  recorded(): Promise<number>;
}

/**
 * A P-256 CA, a server certificate for localhost and a client certificate under it, written to
 * `dir` as ca.pem, ca-key.pem, server.pem, server-key.pem, client.pem, client-key.pem.
 */
function writeTlsMaterial(dir: string): void {
  const f = (n: string) => path.join(dir, n);
  const ca = generateKeyPair('ec-p256');
  const caDer = selfSignCertificate(rootCaProfile({ O: 'bench', CN: 'cfssl-bench-ca' }, spkiDer(ca.publicKey), makeSerial(1n)), ca.privateKey);
  const issuer = makeIssuer(caDer, ca.privateKey);
  const leaf = (cn: string, eku: ('serverAuth' | 'clientAuth')[], sans: { dns?: string; ip?: string }[]) => {
    const k = generateKeyPair('ec-p256');
    const der = issueCertificate(
      leafProfile({ subject: { O: 'bench', CN: cn }, publicKeyDer: spkiDer(k.publicKey), publicKey: k.publicKey, serial: makeSerial(BigInt(Date.now())), lifetimeMs: 86_400_000, extKeyUsage: eku, sans: sans as never }),
      issuer,
    );
    return { cert: certificateToPem(der), key: privateKeyToPem(k.privateKey) };
  };
  const server = leaf('localhost', ['serverAuth'], [{ dns: 'localhost' }, { ip: '127.0.0.1' }]);
  const client = leaf(`client-${randomId()}`, ['clientAuth'], []);
  fs.writeFileSync(f('ca.pem'), certificateToPem(caDer));
  fs.writeFileSync(f('ca-key.pem'), privateKeyToPem(ca.privateKey), { mode: 0o600 });
  fs.writeFileSync(f('server.pem'), server.cert);
  fs.writeFileSync(f('server-key.pem'), server.key, { mode: 0o600 });
  fs.writeFileSync(f('client.pem'), client.cert);
  fs.writeFileSync(f('client-key.pem'), client.key, { mode: 0o600 });
}

/** Load generator arguments for the client certificate of writeTlsMaterial (its `cfssl` mode). */
const clientArgsOf = (dir: string) => ['-cert', path.join(dir, 'client.pem'), '-key', path.join(dir, 'client-key.pem'), '-ca', path.join(dir, 'ca.pem')];

/** A server process on a port: started, and stopped when its row is measured. */
export interface BenchServer {
  url: string;
  pid: number;
  /** client certificate, key and the server's CA, for the load generator */
  clientArgs: string[];
  stop(): Promise<void>;
}

/** Spawn a server listening on `port`; reject with its stderr when it exits before listening. */
async function spawnListening(what: string, cmd: string, args: string[], port: number): Promise<{ p: ChildProcess; stop(): Promise<void> }> {
  const p: ChildProcess = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  p.stderr!.on('data', (d) => (log = (log + d).slice(-4000)));
  const exited = new Promise<void>((resolve) => p.on('exit', () => resolve()));
  try {
    await Promise.race([waitForPort(port), exited.then(() => Promise.reject(new Error(`${what} exited: ${log}`)))]);
  } catch (e) {
    p.kill('SIGKILL');
    throw e;
  }
  return {
    p,
    async stop() {
      if (p.exitCode === null && p.signalCode === null) {
        p.kill('SIGTERM');
        await exited;
      }
    },
  };
}

/**
 * The floor (bench/bare-tls.ts): a minimal Node HTTPS server with cairn's TLS settings and no
 * cairn code, answering the load generator's `cfssl` mode with a fixed body.
 */
export async function startBareTls(dir: string): Promise<BenchServer> {
  writeTlsMaterial(dir);
  const port = await freePort();
  const s = await spawnListening('the bare TLS server', process.execPath, [path.join(here, 'bare-tls.js'), dir, String(port)], port);
  return { url: `https://127.0.0.1:${port}`, pid: s.p.pid!, clientArgs: clientArgsOf(dir), stop: s.stop };
}

/** `cfssl serve` signing P-256 leaves with a P-256 CA, over TLS requiring a client certificate. */
export async function startCfssl(dir: string): Promise<Cfssl> {
  const f = (n: string) => path.join(dir, n);
  writeTlsMaterial(dir);
  // a 90-day node profile like cairn's: server + client auth
  fs.writeFileSync(f('config.json'), JSON.stringify({ signing: { default: { expiry: '2160h', usages: ['signing', 'digital signature', 'server auth', 'client auth'] } } }));
  const { default: Database } = await import('better-sqlite3');
  const db = new Database(f('certs.db'));
  db.exec(CFSSL_CERTDB_SCHEMA);
  db.close();
  fs.writeFileSync(f('db.json'), JSON.stringify({ driver: 'sqlite3', data_source: f('certs.db') }));
  const port = await freePort();
  const args = [
    'serve', '-address', '127.0.0.1', '-port', String(port), '-ca', f('ca.pem'), '-ca-key', f('ca-key.pem'), '-config', f('config.json'),
    '-db-config', f('db.json'), '-tls-cert', f('server.pem'), '-tls-key', f('server-key.pem'), '-mutual-tls-ca', f('ca.pem'), '-loglevel', '4',
  ];
  const { p, stop } = await spawnListening('cfssl serve', 'cfssl', args, port);
  return {
    url: `https://127.0.0.1:${port}`,
    pid: p.pid!,
    clientArgs: clientArgsOf(dir),
    async recorded() {
      const d = new Database(f('certs.db'), { readonly: true });
      try {
        return (d.prepare('SELECT count(*) AS n FROM certificates').get() as { n: number }).n;
      } finally {
        d.close();
      }
    },
    stop,
  };
}

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}
