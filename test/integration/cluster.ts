/**
 * Test fixtures for the CA server: a real `cairn init` + `cairn serve` in child processes on
 * a loopback port chosen at run time, and a raw HTTPS client for the API.
 */
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import { CAIRN_BIN, freePort, RunOptions, runCli, tmpDir } from '../helpers.js';

export const CAIRN = CAIRN_BIN;
export { freePort };

/** A temp directory (helpers.ts tmpDir: removed when the process exits at the latest). */
export function mkTemp(prefix = 'cairn-test-'): string {
  return tmpDir(undefined, prefix);
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function cli(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): CliResult {
  const r = spawnSync(process.execPath, [CAIRN, ...args], { cwd: opts.cwd, env: { ...process.env, ...opts.env }, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** The CLI in a child process without blocking the event loop (servers in this process keep answering). */
export async function cliAsync(args: string[], opts: RunOptions = {}): Promise<CliResult> {
  const r = await runCli(args, opts);
  return { code: r.code ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Child processes of a process (from /proc). */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      if (Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(d));
    } catch {
      /* gone */
    }
  }
  return out;
}

/** Those of `pids` still running (not gone, not zombies). */
export function stillRunning(pids: number[]): number[] {
  return pids.filter((p) => {
    try {
      return !/\) Z /.test(fs.readFileSync(`/proc/${p}/stat`, 'utf8'));
    } catch {
      return false;
    }
  });
}

/** One `cairn serve` child process, restartable. */
export class ServeProcess {
  proc: ChildProcess | null = null;
  logs: string[] = [];
  constructor(
    readonly dir: string,
    readonly env: NodeJS.ProcessEnv = {},
    readonly extraArgs: string[] = [],
    /** the cairn executable: this checkout's, or a copy of it */
    readonly bin: string = CAIRN,
  ) {}

  get running(): boolean {
    return !!this.proc && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async start(): Promise<void> {
    const p = spawn(process.execPath, [this.bin, 'serve', '--state-dir', this.dir, '--log-level', 'info', ...this.extraArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...this.env },
    });
    this.proc = p;
    p.stderr!.on('data', (d) => this.logs.push(String(d)));
    await new Promise<void>((resolve, reject) => {
      let out = '';
      // a start that does not finish is killed: a process left behind would keep the test file from exiting
      const t = setTimeout(() => {
        p.off('exit', onExit);
        p.kill('SIGKILL');
        reject(new Error(`cairn serve did not start within 45 s: ${this.logs.join('')}`));
      }, 45_000);
      const onExit = (code: number | null) => {
        clearTimeout(t);
        reject(new Error(`cairn serve exited with ${code}: ${this.logs.join('')}`));
      };
      p.once('exit', onExit);
      p.stdout!.on('data', (d) => {
        out += d;
        if (out.includes('cairn serving on')) {
          clearTimeout(t);
          p.off('exit', onExit);
          resolve();
        }
      });
    });
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<number | null> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return p?.exitCode ?? null;
    const done = new Promise<number | null>((resolve) => p.once('exit', (code) => resolve(code)));
    p.kill(signal);
    const code = await done;
    this.proc = null;
    return code;
  }
}

export interface Cluster {
  dir: string;
  port: number;
  url: string;
  tokens: { worker: string; manager: string };
  clusterId: string;
  server: ServeProcess;
  logs: string[];
  start(): Promise<void>;
  kill(signal?: NodeJS.Signals): Promise<number | null>;
  cleanup(): Promise<void>;
}

/** `cairn init` in a fresh temp dir, then `cairn serve` on a free loopback port. */
export async function startCluster(name = 'test', opts: { store?: string; initArgs?: string[]; env?: NodeJS.ProcessEnv; serveArgs?: string[] } = {}): Promise<Cluster> {
  const root = mkTemp();
  const dir = path.join(root, 'state');
  const port = await freePort();
  const init = cli(['init', name, '--state-dir', dir, '--listen', `127.0.0.1:${port}`, '--json', ...(opts.store ? ['--store', opts.store] : []), ...(opts.initArgs ?? [])], { env: opts.env });
  if (init.code !== 0) throw new Error(`cairn init failed: ${init.stderr}`);
  const j = JSON.parse(init.stdout);
  const server = new ServeProcess(dir, opts.env ?? {}, opts.serveArgs ?? []);
  const c: Cluster = {
    dir,
    port,
    url: `https://127.0.0.1:${port}`,
    tokens: j.tokens,
    clusterId: j.clusterId,
    server,
    logs: server.logs,
    start: () => server.start(),
    kill: (signal = 'SIGKILL') => server.kill(signal),
    async cleanup() {
      await server.kill('SIGKILL');
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
  try {
    await c.start();
  } catch (e) {
    await c.cleanup();
    throw e;
  }
  return c;
}

/** Another replica of a cluster on a shared store: `cairn replica add`, then serve. */
export async function addReplica(store: string, unlockKeyFile: string, serveArgs: string[] = []): Promise<{ dir: string; url: string; port: number; server: ServeProcess; cleanup(): Promise<void> }> {
  const root = mkTemp();
  const dir = path.join(root, 'state');
  const port = await freePort();
  const r = cli(['replica', 'add', '--state-dir', dir, '--store', store, '--unlock-key-file', unlockKeyFile, '--advertise-addr', '127.0.0.1', '--listen', `127.0.0.1:${port}`, '--json']);
  if (r.code !== 0) throw new Error(`cairn replica add failed: ${r.stderr}`);
  const server = new ServeProcess(dir, {}, ['--unlock-key-file', unlockKeyFile, ...serveArgs]);
  await server.start();
  return {
    dir,
    url: `https://127.0.0.1:${port}`,
    port,
    server,
    async cleanup() {
      await server.kill('SIGKILL');
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}

export interface ApiResponse {
  status: number;
  body: any;
  headers: Record<string, string | string[] | undefined>;
}

export interface TlsIdentity {
  key?: string;
  cert?: string;
  ca?: string;
}

/** The admin client bundle of a replica state directory, as an API identity. */
export function adminId(dir: string): TlsIdentity {
  return {
    key: fs.readFileSync(path.join(dir, 'admin/key.pem'), 'utf8'),
    cert: fs.readFileSync(path.join(dir, 'admin/cert.pem'), 'utf8'),
    ca: fs.readFileSync(path.join(dir, 'admin/ca.pem'), 'utf8'),
  };
}

/** One HTTPS request. Without `ca`, the server is not verified (like a node's first contact). */
export function api(url: string, method: string, p: string, body?: unknown, id: TlsIdentity = {}, rawBody?: Buffer): Promise<ApiResponse> {
  const payload = rawBody ?? (body === undefined ? undefined : Buffer.from(JSON.stringify(body)));
  return new Promise((resolve, reject) => {
    const req = https.request(
      new URL(p, url),
      {
        method,
        key: id.key,
        cert: id.cert,
        ca: id.ca,
        rejectUnauthorized: !!id.ca,
        servername: 'ca',
        checkServerIdentity: () => undefined,
        agent: false,
        headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {},
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            /* not JSON */
          }
          resolve({ status: res.statusCode ?? 0, body: parsed, headers: res.headers });
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/**
 * Send a request with a large body over a raw TLS socket and return the status line's code.
 * The server answers (413) and closes before the body is sent, so write errors (EPIPE,
 * ECONNRESET) are expected and ignored; only the response counts.
 */
export function rawPost(url: string, p: string, body: Buffer): Promise<{ status: number; text: string }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host: u.hostname, port: Number(u.port), rejectUnauthorized: false, servername: 'ca' }, () => {
      sock.write(`POST ${p} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`);
      // like a client waiting for 100-continue: a server that refuses on the declared length
      // answers before any byte of the body; otherwise the body follows
      setTimeout(() => {
        if (!text) sock.write(body, () => {});
      }, 500);
    });
    let text = '';
    sock.setEncoding('utf8');
    sock.on('data', (d) => (text += d));
    sock.on('error', () => {
      /* EPIPE / ECONNRESET once the server has answered and closed */
    });
    sock.on('close', () => {
      const m = text.match(/^HTTP\/1\.1 (\d{3})/);
      if (m) resolve({ status: Number(m[1]), text });
      else reject(new Error(`no HTTP response: ${JSON.stringify(text.slice(0, 200))}`));
    });
    setTimeout(() => sock.destroy(), 15_000).unref();
  });
}

/** Open the SQLite store read-only and run a query. */
export async function query<T = any>(dir: string, sql: string, ...params: unknown[]): Promise<T[]> {
  const { default: Database } = await import('better-sqlite3');
  const db = new Database(path.join(dir, 'cairn.db'), { readonly: true, fileMustExist: true });
  try {
    return db.prepare(sql).all(...params) as T[];
  } finally {
    db.close();
  }
}

/**
 * Rows written straight into a SQLite store, for tests and benchmarks of scale (not the API):
 * `nodes` active workers, each with a good certificate, and `revoked` revoked, unexpired
 * certificates of the cluster CA (entries of its next CRL). Serials: 7E… and 7F… followed by
 * the index in hex; `seededSerial(i)` names the i-th node's certificate.
 */
export async function seedRows(dir: string, o: { nodes?: number; revoked?: number }): Promise<void> {
  const { default: Database } = await import('better-sqlite3');
  const db = new Database(path.join(dir, 'cairn.db'));
  db.pragma('busy_timeout = 10000');
  try {
    const keyId = (db.prepare("SELECT key_id FROM cas WHERE name = 'cluster' AND status = 'active'").get() as { key_id: string }).key_id;
    const now = Date.now();
    const node = db.prepare("INSERT INTO nodes (id, role, status, created_at, updated_at, current_serial, previous_serial, renewed_at) VALUES (?, 'worker', 'active', ?, ?, ?, NULL, ?)");
    const cert = db.prepare(
      "INSERT INTO certificates (serial, kind, node_id, role, subject, issuer_key_id, not_before, not_after, status, revoked_at, revocation_reason, cert_pem, created_at, replica_id) VALUES (?, 'node', ?, 'worker', ?, ?, ?, ?, ?, ?, ?, '', ?, NULL)",
    );
    db.transaction(() => {
      for (let i = 0; i < (o.nodes ?? 0); i++) {
        const id = `seed${i.toString(36).padStart(21, '0')}`;
        node.run(id, now + i, now + i, seededSerial(i), now);
        cert.run(seededSerial(i), id, `CN=${id}`, keyId, now, now + 90 * 86_400_000, 'good', null, null, now + i);
      }
      for (let i = 0; i < (o.revoked ?? 0); i++) {
        // revoked over the past day, as a list of this size would be
        cert.run(`7F${i.toString(16).toUpperCase().padStart(30, '0')}`, null, 'CN=revoked', keyId, now - 86_400_000, now + 90 * 86_400_000, 'revoked', now - 86_400_000 + i, 'keyCompromise', now - 86_400_000);
      }
    })();
  } finally {
    db.close();
  }
}

export const seededSerial = (i: number) => `7E${i.toString(16).toUpperCase().padStart(30, '0')}`;
