/**
 * Hooks: tell the programs that read the node's certificate files that they changed.
 * `cairn agent --exec CMD` runs CMD through /bin/sh -c; `--reload-signal SIG --pidfile F`
 * sends SIG to the process whose id is in F. One hook run does all of them (signals first,
 * then the command), after the output files were written.
 *
 * The rules:
 * - never two runs at once: an event that arrives while a run is going is kept (one at most:
 *   a later event replaces an earlier one, and "renewed" wins over "trust-changed") and runs
 *   when the current run ends;
 * - a run has a deadline (default 60 s): past it, the command's whole process group gets
 *   SIGTERM, then SIGKILL 5 s later, and the run counts as failed;
 * - a failed run (non-zero exit, killed, timed out, signal not sent) is logged with its exit
 *   status and the tail of its stderr, and tried again with exponential backoff (1 s doubling
 *   up to 5 minutes, jittered) until it succeeds or a newer event replaces it;
 * - nothing here blocks the renewal loop: trigger() returns at once.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import type { Logger } from 'pino';
import { usageError } from '../util/errors.js';
import { backoffDelay } from './renew.js';

export type HookEvent = 'renewed' | 'trust-changed';

export const DEFAULT_HOOK_TIMEOUT_MS = 60_000;
/** After SIGTERM at the deadline, SIGKILL follows this much later. */
export const HOOK_KILL_GRACE_MS = 5_000;
const TAIL = 1000;

export interface SignalTarget {
  signal: NodeJS.Signals;
  pidfile: string;
}

export interface HookConfig {
  /** a shell command (run with /bin/sh -c) */
  exec?: string;
  signals?: SignalTarget[];
  /** deadline of one run, default 60 s */
  timeoutMs?: number;
  /** first retry pause after a failed run, default 1 s (doubling up to maxBackoffMs) */
  baseBackoffMs?: number;
  maxBackoffMs?: number;
  /** retry failed runs (default true); `cairn agent --renew-now` runs the hook once */
  retry?: boolean;
  logger?: Logger;
  random?: () => number;
  /** called after every run */
  onResult?: (r: HookResult) => void;
}

/** What a run is told, in its environment. */
export interface HookContext {
  event: HookEvent;
  nodeId: string;
  role: string;
  serial: string;
  notAfter: Date;
  stateDir: string;
  cert: string;
  key: string;
  ca: string;
}

export interface HookResult {
  event: HookEvent;
  serial: string;
  ok: boolean;
  /** the command's exit code (null if it was killed or did not run) */
  exitCode: number | null;
  /** the signal that ended the command */
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  durationMs: number;
  /** the last bytes of the command's stderr */
  stderrTail: string;
  /** why the run failed, in words */
  error?: string;
  attempt: number;
}

/** Parse `--reload-signal` (HUP, SIGHUP, usr2...) into a signal name this system knows. */
export function parseSignal(v: string): NodeJS.Signals {
  const name = (v.toUpperCase().startsWith('SIG') ? v.toUpperCase() : `SIG${v.toUpperCase()}`) as NodeJS.Signals;
  if (!(name in os.constants.signals) || name === 'SIGKILL' || name === 'SIGSTOP') {
    throw usageError(`--reload-signal ${v}: not a signal to reload with; use e.g. HUP, USR1, USR2`);
  }
  return name;
}

/** Pair each --reload-signal with its --pidfile, in order. */
export function signalTargets(signals: string[] | undefined, pidfiles: string[] | undefined): SignalTarget[] {
  const s = signals ?? [];
  const p = pidfiles ?? [];
  if (s.length !== p.length) throw usageError(`give one --pidfile for each --reload-signal (got ${s.length} signal${s.length === 1 ? '' : 's'} and ${p.length} pidfile${p.length === 1 ? '' : 's'})`);
  return s.map((sig, i) => ({ signal: parseSignal(sig), pidfile: p[i] }));
}

const tail = (s: string) => (s.length > TAIL ? s.slice(-TAIL) : s).trim();

function readPid(file: string): number {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`cannot read pidfile ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
  const first = text.split('\n')[0].trim();
  if (!/^\d+$/.test(first) || Number(first) <= 1) throw new Error(`pidfile ${file} does not hold a process id (it starts with "${first.slice(0, 20)}")`);
  return Number(first);
}

export class Hooks {
  private running: Promise<void> | null = null;
  private pending: HookContext | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private retryOf: HookContext | null = null;
  private failures = 0;
  private stopped = false;
  private idleWaiters: (() => void)[] = [];
  /** counts for status and metrics */
  readonly stats = { runs: 0, failures: 0, lastResult: null as HookResult | null, lastSuccessAt: null as Date | null };

  constructor(private readonly c: HookConfig) {}

  /** Whether there is anything to run. */
  get configured(): boolean {
    return !!this.c.exec || !!this.c.signals?.length;
  }

  /**
   * An event happened (the output files are already written): run the hook now, or after the
   * run in progress. Returns at once: 'started', 'queued' (a run is going), or 'none'.
   */
  trigger(ctx: HookContext): 'started' | 'queued' | 'none' {
    if (!this.configured || this.stopped) return 'none';
    if (this.retryTimer) {
      // a newer event replaces the run that was waiting to be retried
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
      if (this.retryOf?.event === 'renewed' && ctx.event === 'trust-changed') ctx = { ...ctx, event: 'renewed' };
      this.retryOf = null;
      this.failures = 0;
    }
    if (this.running) {
      const keep = this.pending?.event === 'renewed' && ctx.event === 'trust-changed';
      this.pending = keep ? { ...ctx, event: 'renewed' } : ctx;
      this.c.logger?.info({ event: ctx.event, serial: ctx.serial }, 'the hook is still running: it runs again for this event when it ends');
      return 'queued';
    }
    this.start(ctx);
    return 'started';
  }

  /** Resolves when no run is going and none is waiting (retries included, unless stop()ped). */
  idle(): Promise<void> {
    if (!this.running && !this.pending && !this.retryTimer) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** No more runs or retries; a run in progress is left to finish (within its deadline). */
  async stop(): Promise<void> {
    this.stopped = true;
    this.pending = null;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    await this.running;
    this.wakeIdle();
  }

  private wakeIdle(): void {
    if (this.running || this.pending || this.retryTimer) return;
    const w = this.idleWaiters.splice(0);
    w.forEach((r) => r());
  }

  private start(ctx: HookContext): void {
    this.running = this.runOnce(ctx).then((r) => this.finished(ctx, r));
  }

  private finished(ctx: HookContext, r: HookResult): void {
    this.running = null;
    this.stats.runs++;
    this.stats.lastResult = r;
    const log = this.c.logger;
    const fields = { event: r.event, serial: r.serial, exitCode: r.exitCode, signal: r.signal, timedOut: r.timedOut, durationMs: r.durationMs, stderrTail: r.stderrTail || undefined, attempt: r.attempt };
    if (r.ok) {
      this.failures = 0;
      this.stats.lastSuccessAt = new Date();
      log?.info(fields, 'hook succeeded');
    } else {
      this.stats.failures++;
      this.failures++;
    }
    try {
      this.c.onResult?.(r);
    } catch {
      /* a reporting problem must not stop the hooks */
    }
    if (this.pending && !this.stopped) {
      if (!r.ok) log?.warn({ ...fields, err: r.error }, 'hook failed; a newer event runs it again now');
      const next = this.pending;
      this.pending = null;
      this.failures = 0;
      this.start(next);
      return;
    }
    if (!r.ok) {
      if (this.c.retry === false || this.stopped) {
        log?.warn({ ...fields, err: r.error }, 'hook failed');
      } else {
        const wait = backoffDelay(this.failures - 1, { baseMs: this.c.baseBackoffMs ?? 1000, capMs: this.c.maxBackoffMs ?? 5 * 60_000, random: this.c.random });
        log?.warn({ ...fields, err: r.error, retryInMs: wait }, 'hook failed; will retry');
        this.retryOf = ctx;
        this.retryTimer = setTimeout(() => {
          this.retryTimer = null;
          this.retryOf = null;
          if (!this.stopped) this.start(ctx);
          else this.wakeIdle();
        }, wait);
      }
    }
    this.wakeIdle();
  }

  private async runOnce(ctx: HookContext): Promise<HookResult> {
    const attempt = this.failures + 1;
    const t0 = Date.now();
    const base = { event: ctx.event, serial: ctx.serial, attempt };
    this.c.logger?.info({ event: ctx.event, serial: ctx.serial, attempt }, 'hook started');
    for (const s of this.c.signals ?? []) {
      try {
        const pid = readPid(s.pidfile);
        process.kill(pid, s.signal);
        this.c.logger?.info({ signal: s.signal, pid, pidfile: s.pidfile }, 'reload signal sent');
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        const why = code === 'ESRCH' ? `no process with the id in ${s.pidfile}` : code === 'EPERM' ? `not allowed to signal the process in ${s.pidfile}` : (e as Error).message;
        return { ...base, ok: false, exitCode: null, signal: null, timedOut: false, durationMs: Date.now() - t0, stderrTail: '', error: `${s.signal} not sent: ${why}` };
      }
    }
    if (!this.c.exec) return { ...base, ok: true, exitCode: null, signal: null, timedOut: false, durationMs: Date.now() - t0, stderrTail: '' };
    return this.runCommand(this.c.exec, ctx, base, t0);
  }

  private runCommand(cmd: string, ctx: HookContext, base: Pick<HookResult, 'event' | 'serial' | 'attempt'>, t0: number): Promise<HookResult> {
    const timeoutMs = this.c.timeoutMs ?? DEFAULT_HOOK_TIMEOUT_MS;
    const env = {
      ...process.env,
      CAIRN_EVENT: ctx.event,
      CAIRN_NODE_ID: ctx.nodeId,
      CAIRN_ROLE: ctx.role,
      CAIRN_SERIAL: ctx.serial,
      CAIRN_NOT_AFTER: ctx.notAfter.toISOString(),
      CAIRN_STATE_DIR: ctx.stateDir,
      CAIRN_CERT: ctx.cert,
      CAIRN_KEY: ctx.key,
      CAIRN_CA: ctx.ca,
    };
    return new Promise((resolve) => {
      let stderr = '';
      let timedOut = false;
      let done = false;
      // its own process group: a deadline ends the shell and everything it started
      const p = spawn('/bin/sh', ['-c', cmd], { env, detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
      p.stderr!.on('data', (d: Buffer) => {
        stderr = (stderr + d.toString()).slice(-4 * TAIL);
      });
      const killGroup = (sig: NodeJS.Signals) => {
        try {
          process.kill(-p.pid!, sig);
        } catch {
          /* already gone */
        }
      };
      let killTimer: NodeJS.Timeout | null = null;
      const deadline = setTimeout(() => {
        timedOut = true;
        killGroup('SIGTERM');
        killTimer = setTimeout(() => killGroup('SIGKILL'), Math.min(HOOK_KILL_GRACE_MS, timeoutMs));
      }, timeoutMs);
      const finish = (r: Omit<HookResult, keyof typeof base | 'durationMs' | 'stderrTail'>) => {
        if (done) return;
        done = true;
        clearTimeout(deadline);
        if (killTimer) clearTimeout(killTimer);
        p.stderr!.destroy();
        resolve({ ...base, ...r, durationMs: Date.now() - t0, stderrTail: tail(stderr) });
      };
      p.on('error', (e) => finish({ ok: false, exitCode: null, signal: null, timedOut: false, error: `cannot run /bin/sh: ${e.message}` }));
      // 'exit', not 'close': a program the command started in the background (a daemon) may
      // keep stderr open for ever; what it wrote in the next moment is kept
      p.on('exit', (code, signal) => {
        const r = {
          ok: !timedOut && code === 0,
          exitCode: code,
          signal,
          timedOut,
          error: timedOut ? `the hook ran past its ${timeoutMs} ms deadline and was killed` : code === 0 ? undefined : code === null ? `the hook was killed by ${signal}` : `the hook exited with status ${code}`,
        };
        if (timedOut) killGroup('SIGKILL'); // whatever the shell left behind
        setTimeout(() => finish(r), 50);
        p.stderr!.once('close', () => finish(r));
      });
    });
  }
}
