/**
 * The benchmark harness: what a benchmark is, and how a rate is measured.
 *
 * A benchmark is a named function that returns rows {name, value, unit}. Benchmarks come in
 * groups (one module per group, e.g. bench/issue.ts) listed in bench/registry.ts. A group may
 * also declare derived rows (e.g. a ratio of two benchmarks), computed after its inputs ran.
 *
 * Benchmarks are not tests: they never fail the test suite and are never run by `npm test`.
 */
import { performance } from 'node:perf_hooks';

/** One line of output. Only name, value and unit go into --json output. */
export interface Row {
  name: string;
  value: number;
  unit: string;
  /** Name of another row this one is compared to in the note column (e.g. "floor.native"). */
  baseline?: string;
  /** Free text for the note column (spread, what was measured...). */
  note?: string;
}

export interface BenchContext {
  /** Measured time per benchmark, in seconds (after warm-up). */
  seconds: number;
  /** Warm-up time per benchmark, in seconds. */
  warmupSeconds: number;
  /** Progress to stderr (never stdout: stdout is the table or the JSON). */
  log(message: string): void;
}

/**
 * A benchmark takes one of two forms:
 *  - `run`: it measures itself however it likes (servers, clients, latencies...) and returns rows;
 *  - `prepare`: it sets up and hands the harness one operation to time. All such benchmarks
 *    selected in a run are timed together, their samples interleaved round-robin, so that a
 *    change in machine load (a shared 2-core box) hits them alike and ratios between them hold.
 */
export interface Bench {
  /** Name of the main row it produces; --only selects benches by prefix of this name. */
  name: string;
  /** One line: what one operation is. */
  description: string;
  /** Prefixes of the other rows it produces (so that --only and derived rows find it). */
  produces?: string[];
  run?(ctx: BenchContext): Promise<Row[]>;
  prepare?(ctx: BenchContext): Promise<Timed>;
}

/** An operation for the harness to time, one at a time on the main thread. */
export interface Timed {
  /** One operation; `i` is a running counter (e.g. to rotate through a pool of inputs). */
  op: (i: number) => unknown;
  /** The operation returns a promise to await (run at concurrency 1). */
  async?: boolean;
  /** Rows from the measured rate. */
  rows(rate: Rate): Row[];
}

/** A row computed from rows of other benchmarks (which are run when the derived row is selected). */
export interface Derived {
  name: string;
  /** Names of the rows it needs. */
  inputs: string[];
  compute(rows: Record<string, Row>): Row;
}

export interface BenchGroup {
  /** Short name of the group, e.g. "issue". */
  name: string;
  benches: Bench[];
  derived?: Derived[];
}

export interface Rate {
  /** Median of the per-sample rates, operations per second. */
  perSecond: number;
  /** (max - min) / median of the per-sample rates. */
  spread: number;
  ops: number;
  seconds: number;
}

export const SAMPLES = 10;

export function summarize(rates: number[], ops: number, seconds: number): Rate {
  const sorted = [...rates].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  return { perSecond: median, spread: median > 0 ? (sorted[sorted.length - 1] - sorted[0]) / median : 0, ops, seconds };
}

/**
 * Rate of a synchronous operation on the calling thread (one core): warm up, then run
 * SAMPLES back-to-back samples filling `ctx.seconds`; the rate is the median sample.
 * `op(i)` gets a running counter, e.g. to rotate through a pool of inputs.
 */
export function measureSync(ctx: BenchContext, op: (i: number) => unknown): Rate {
  let i = 0;
  const warmEnd = performance.now() + ctx.warmupSeconds * 1000;
  while (performance.now() < warmEnd) op(i++);
  const sampleMs = (ctx.seconds * 1000) / SAMPLES;
  const rates: number[] = [];
  let total = 0;
  const start = performance.now();
  for (let s = 0; s < SAMPLES; s++) {
    const t0 = performance.now();
    const end = t0 + sampleMs;
    let n = 0;
    let t = t0;
    do {
      op(i++);
      n++;
      t = performance.now();
    } while (t < end);
    rates.push(n / ((t - t0) / 1000));
    total += n;
  }
  return summarize(rates, total, (performance.now() - start) / 1000);
}

/**
 * Rate of an asynchronous operation run one at a time (concurrency 1), awaited in turn.
 * Work that the operation hands to libuv's thread pool (WebCrypto) still happens one
 * operation at a time, so this stays a one-core figure.
 */
export async function measureAsync(ctx: BenchContext, op: (i: number) => Promise<unknown>): Promise<Rate> {
  let i = 0;
  const warmEnd = performance.now() + ctx.warmupSeconds * 1000;
  while (performance.now() < warmEnd) await op(i++);
  const sampleMs = (ctx.seconds * 1000) / SAMPLES;
  const rates: number[] = [];
  let total = 0;
  const start = performance.now();
  for (let s = 0; s < SAMPLES; s++) {
    const t0 = performance.now();
    const end = t0 + sampleMs;
    let n = 0;
    let t = t0;
    do {
      await op(i++);
      n++;
      t = performance.now();
    } while (t < end);
    rates.push(n / ((t - t0) / 1000));
    total += n;
  }
  return summarize(rates, total, (performance.now() - start) / 1000);
}

/** Run `op` for `ms` milliseconds (at least once); returns [operations, elapsed ms]. */
export async function timeSlice(op: (i: number) => unknown, isAsync: boolean, start: number, ms: number): Promise<[number, number]> {
  const t0 = performance.now();
  const end = t0 + ms;
  let n = 0;
  let t = t0;
  if (isAsync) {
    do {
      await op(start + n++);
      t = performance.now();
    } while (t < end);
  } else {
    do {
      op(start + n++);
      t = performance.now();
    } while (t < end);
  }
  return [n, t - t0];
}

/** A row from a measured rate, with the spread of the samples in the note. */
export function rateRow(name: string, rate: Rate, unit = 'ops/s', extra: Partial<Row> = {}): Row {
  const spread = `±${((rate.spread * 100) / 2).toFixed(1)}%`;
  return { name, value: Math.round(rate.perSecond), unit, ...extra, note: [spread, extra.note].filter(Boolean).join(', ') };
}

/** A row that is `a / b` as a percentage. */
export function percentRow(name: string, a: Row | undefined, b: Row | undefined, note?: string): Row {
  const value = a && b && b.value > 0 ? Math.round((a.value / b.value) * 1000) / 10 : NaN;
  return { name, value, unit: '%', note: note ?? (a && b ? `${a.name} / ${b.name}` : 'inputs missing') };
}
