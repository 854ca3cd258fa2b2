/**
 * Shared test helpers: temp directories that clean themselves up, the real CLI in a child
 * process, external tools (openssl, certtool, go...), background processes that are always
 * killed, directory snapshots for "nothing was written" checks, and free loopback ports.
 *
 * Everything here is generic: no knowledge of what a test checks.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (this file runs as dist/test/helpers.js). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** The CLI entry point, as users run it. */
export const CAIRN_BIN = path.join(REPO_ROOT, 'bin', 'cairn.js');

// ---------------------------------------------------------------------------------------------
// Cleanup. Temp dirs and child processes are always removed/killed when the test process exits
// (node --test runs each file in its own process), and earlier when a test context is given.
// There is deliberately no implicit node:test `after()` here: called from inside a `before`
// hook it would attach to that hook and run as soon as the hook finished.

const tempDirs = new Set<string>();
const children = new Set<ChildProcess>();

process.on('exit', () => {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
  if (!process.env.CAIRN_KEEP_TMP) for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
});

/** Something with an `after` hook, such as the TestContext `t` a test function receives. */
export interface HasAfter {
  after(fn: () => unknown): void;
}

/**
 * Create a fresh empty directory under the OS temp dir (real path, no symlinks). It is removed
 * after the test `t` when given, and in any case when the process exits.
 * Set CAIRN_KEEP_TMP=1 to keep temp dirs for debugging.
 */
export function tmpDir(t?: HasAfter, prefix = 'cairn-test-'): string {
  const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), prefix)));
  tempDirs.add(dir);
  t?.after(() => {
    if (process.env.CAIRN_KEEP_TMP) return;
    fs.rmSync(dir, { recursive: true, force: true });
    tempDirs.delete(dir);
  });
  return dir;
}

// ---------------------------------------------------------------------------------------------
// Processes

export interface RunOptions {
  cwd?: string;
  /** Added to (and overriding) the current environment; a value of undefined removes a variable. */
  env?: Record<string, string | undefined>;
  /** Written to stdin, which is then closed. Without it, stdin is empty. */
  input?: string | Buffer;
  /** Kill the process (SIGKILL) and reject after this long. Default 60 s. */
  timeoutMs?: number;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function mergedEnv(env?: Record<string, string | undefined>): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...process.env };
  for (const [k, v] of Object.entries(env ?? {})) {
    if (v === undefined) delete out[k];
    else out[k] = v;
  }
  return out;
}

/**
 * Run a program to completion and collect its output. Never rejects because of a non-zero
 * exit: the caller asserts on `code`. Rejects if the program cannot be started (not
 * installed: the test must fail, not skip) or runs past the timeout.
 */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd: opts.cwd, env: mergedEnv(opts.env), stdio: ['pipe', 'pipe', 'pipe'] });
    children.add(p);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let settled = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      p.kill('SIGKILL');
      reject(
        new Error(
          `${cmd} ${args.join(' ')} did not finish within ${timeoutMs} ms\n` +
            `stdout: ${Buffer.concat(out).toString()}\nstderr: ${Buffer.concat(err).toString()}`,
        ),
      );
    }, timeoutMs);
    p.stdout.on('data', (d: Buffer) => out.push(d));
    p.stderr.on('data', (d: Buffer) => err.push(d));
    p.on('error', (e: NodeJS.ErrnoException) => {
      children.delete(p);
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const hint = e.code === 'ENOENT' ? ` (is ${cmd} installed and on PATH?)` : '';
      reject(new Error(`cannot run ${cmd}: ${e.message}${hint}`));
    });
    p.on('close', (code, signal) => {
      children.delete(p);
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
    p.stdin.on('error', () => {
      /* the program may exit without reading its input */
    });
    p.stdin.end(opts.input ?? '');
  });
}

/** Run the cairn CLI (bin/cairn.js under this Node) as a user would. */
export function runCli(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return run(process.execPath, [CAIRN_BIN, ...args], opts);
}

/** A long-running child process (a server) that is killed when the test ends, whatever happens. */
export interface Background {
  proc: ChildProcess;
  /** Everything written to stdout so far. */
  stdout(): string;
  /** Everything written to stderr so far. */
  stderr(): string;
  /** Resolve when stdout or stderr matches `re`; reject on timeout or if the process exits first. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<void>;
  /** Kill (SIGTERM, then SIGKILL) and wait for exit. Safe to call more than once. */
  stop(): Promise<void>;
}

/**
 * Start a long-running program. It is stopped after the test `t` when given, and killed when the
 * process exits in any case. Call stop() to end it earlier.
 */
export function startBackground(cmd: string, args: string[], opts: Omit<RunOptions, 'input' | 'timeoutMs'> & { t?: HasAfter } = {}): Background {
  const p = spawn(cmd, args, { cwd: opts.cwd, env: mergedEnv(opts.env), stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(p);
  let out = '';
  let err = '';
  let startError: Error | null = null;
  const exited = new Promise<void>((resolve) => {
    p.on('close', () => {
      children.delete(p);
      resolve();
    });
    p.on('error', (e) => {
      startError = new Error(`cannot run ${cmd}: ${e.message}`);
      children.delete(p);
      resolve();
    });
  });
  const listeners = new Set<() => void>();
  const notify = () => listeners.forEach((l) => l());
  p.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    notify();
  });
  p.stderr.on('data', (d: Buffer) => {
    err += d.toString();
    notify();
  });
  const isRunning = () => p.exitCode === null && p.signalCode === null && !startError;
  const stop = async () => {
    if (isRunning()) {
      p.kill('SIGTERM');
      const t = setTimeout(() => p.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
    }
  };
  opts.t?.after(stop);
  return {
    proc: p,
    stdout: () => out,
    stderr: () => err,
    stop,
    waitFor(re: RegExp, timeoutMs = 15_000) {
      return new Promise<void>((resolve, reject) => {
        const check = () => {
          if (re.test(out) || re.test(err)) done(null);
          else if (!isRunning()) done(startError ?? new Error(`${cmd} exited (code ${p.exitCode}) before printing ${re}\nstdout: ${out}\nstderr: ${err}`));
        };
        const timer = setTimeout(() => done(new Error(`${cmd} did not print ${re} within ${timeoutMs} ms\nstdout: ${out}\nstderr: ${err}`)), timeoutMs);
        const done = (e: Error | null) => {
          clearTimeout(timer);
          listeners.delete(check);
          if (e) reject(e);
          else resolve();
        };
        listeners.add(check);
        exited.then(check);
        check();
      });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Files

/**
 * A snapshot of a directory tree, one sorted line per entry: relative path, type, permission
 * bits, and for files the size and SHA-256 of the contents. Equal snapshots mean nothing was
 * created, removed, changed or re-moded (temp files included). Symbolic links are not followed.
 */
export function listTree(dir: string): string[] {
  const lines: string[] = [];
  const walk = (abs: string, rel: string) => {
    for (const name of fs.readdirSync(abs).sort()) {
      const a = path.join(abs, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = fs.lstatSync(a);
      const mode = (st.mode & 0o7777).toString(8).padStart(4, '0');
      if (st.isDirectory()) {
        lines.push(`${r}/ dir ${mode}`);
        walk(a, r);
      } else if (st.isFile()) {
        const sum = createHash('sha256').update(fs.readFileSync(a)).digest('hex').slice(0, 16);
        lines.push(`${r} file ${mode} ${st.size} ${sum}`);
      } else if (st.isSymbolicLink()) {
        lines.push(`${r} link -> ${fs.readlinkSync(a)}`);
      } else {
        lines.push(`${r} other ${mode}`);
      }
    }
  };
  walk(dir, '');
  return lines;
}

/** Permission bits of a path, e.g. 0o600. */
export function fileMode(p: string): number {
  return fs.statSync(p).mode & 0o777;
}

// ---------------------------------------------------------------------------------------------
// Network

/** A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * CFSSL's SQLite certificate database (certdb/sqlite/migrations: 001, and the columns 002 adds
 * in CFSSL 1.3+, which 1.2 leaves empty), for `cfssl serve -db-config` in tests and benches.
 */
export const CFSSL_CERTDB_SCHEMA = `
CREATE TABLE certificates (
  serial_number            blob NOT NULL,
  authority_key_identifier blob NOT NULL,
  ca_label                 blob,
  status                   blob NOT NULL,
  reason                   int,
  expiry                   timestamp,
  revoked_at               timestamp,
  pem                      blob NOT NULL,
  issued_at                timestamp,
  not_before               timestamp,
  metadata                 text,
  sans                     text,
  common_name              text,
  PRIMARY KEY(serial_number, authority_key_identifier)
);
CREATE TABLE ocsp_responses (
  serial_number            blob NOT NULL,
  authority_key_identifier blob NOT NULL,
  body                     blob NOT NULL,
  expiry                   timestamp,
  PRIMARY KEY(serial_number, authority_key_identifier),
  FOREIGN KEY(serial_number, authority_key_identifier) REFERENCES certificates(serial_number, authority_key_identifier)
);`;
