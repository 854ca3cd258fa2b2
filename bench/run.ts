/**
 * `npm run bench [-- options]`: run the benchmarks of bench/registry.ts and print a table,
 * or with --json only a JSON array of {"name","value","unit"} on stdout.
 *
 *   --only <prefix>   run only benchmarks (and derived rows) whose name starts with prefix;
 *                     repeatable or comma-separated; a derived row brings in its inputs
 *   --json            print only the JSON array on stdout (progress goes to stderr)
 *   --seconds <s>     measured time per benchmark (default 2)
 *   --warmup <s>      warm-up time per benchmark (default 0.5)
 *   --list            list the benchmarks and exit
 *
 * Every benchmark runs on the main thread, one operation at a time (one core).
 * npm prints its own "> cairn@… bench" banner on stdout: for machine-readable output use
 * `npm run -s bench -- --json` (or `node dist/bench/run.js --json` after a build).
 */
import { availableParallelism, cpus, loadavg } from 'node:os';
import { Bench, BenchContext, Derived, Row, SAMPLES, summarize, Timed, timeSlice } from './harness.js';
import { groups } from './registry.js';

interface Options {
  json: boolean;
  only: string[];
  seconds: number;
  warmup: number;
  list: boolean;
}

function usage(): string {
  return 'usage: npm run bench -- [--json] [--only <prefix>]... [--seconds <s>] [--warmup <s>] [--list]';
}

function parseArgs(argv: string[]): Options {
  const o: Options = { json: false, only: [], seconds: 2, warmup: 0.5, list: false };
  const num = (flag: string, v: string | undefined): number => {
    const n = Number(v);
    if (v === undefined || !Number.isFinite(n) || n <= 0) throw new Error(`${flag} needs a positive number of seconds`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => inline ?? argv[++i];
    switch (flag) {
      case '--json': o.json = true; break;
      case '--list': o.list = true; break;
      case '--only': {
        const v = value();
        if (!v) throw new Error('--only needs a name prefix');
        o.only.push(...v.split(',').map((s) => s.trim()).filter(Boolean));
        break;
      }
      case '--seconds': o.seconds = num(flag, value()); break;
      case '--warmup': o.warmup = num(flag, value()); break;
      case '-h':
      case '--help':
        process.stdout.write(usage() + '\n');
        process.exit(0);
      // falls through (exit)
      default:
        throw new Error(`unknown argument ${a}`);
    }
  }
  return o;
}

/** The bench producing a row name: exact match, or the bench whose name prefixes it ("a.b" makes "a.b.c"). */
function benchFor(row: string, benches: Bench[]): Bench | undefined {
  return benches.find((b) => b.name === row) ?? benches.find((b) => row.startsWith(b.name + '.') || b.produces?.some((p) => row.startsWith(p)));
}

function select(o: Options): { benches: Bench[]; derived: Derived[] } {
  const allBenches = groups.flatMap((g) => g.benches);
  const allDerived = groups.flatMap((g) => g.derived ?? []);
  const wanted = (name: string) => o.only.length === 0 || o.only.some((p) => name.startsWith(p));
  const names = new Set(allBenches.filter((b) => wanted(b.name) || b.produces?.some(wanted)).map((b) => b.name));
  // a derived row that is asked for, or whose inputs the selected benchmarks produce anyway
  // (`--only join.https` runs CFSSL too, so renew.vs_cfssl comes with it)
  const derived = allDerived.filter((d) => wanted(d.name) || d.inputs.every((i) => names.has(benchFor(i, allBenches)?.name ?? '')));
  for (const d of derived) {
    for (const input of d.inputs) {
      const b = benchFor(input, allBenches);
      if (!b) throw new Error(`derived row ${d.name} needs ${input}, which no benchmark produces`);
      names.add(b.name);
    }
  }
  return { benches: allBenches.filter((b) => names.has(b.name)), derived };
}

function formatValue(r: Row): string {
  if (!Number.isFinite(r.value)) return 'n/a';
  if (r.unit === '%') return r.value.toFixed(1);
  return Number.isInteger(r.value) ? r.value.toLocaleString('en-US') : r.value.toPrecision(4);
}

function noteFor(r: Row, byName: Record<string, Row>): string {
  const parts: string[] = [];
  const base = r.baseline ? byName[r.baseline] : undefined;
  if (base && base.name !== r.name && base.value > 0) parts.push(`${((r.value / base.value) * 100).toFixed(1)}% of ${base.name}`);
  if (r.note) parts.push(r.note);
  return parts.join('; ');
}

function table(rows: Row[], byName: Record<string, Row>): string {
  const cells = rows.map((r) => [r.name, formatValue(r), r.unit, noteFor(r, byName)]);
  const head = ['name', 'value', 'unit', 'note'];
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (c: string[]) => c.map((s, i) => (i === 1 ? s.padStart(widths[i]) : s.padEnd(widths[i]))).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.map(line)].join('\n') + '\n';
}

async function main(): Promise<void> {
  // `npm run bench -- --list | head`: a reader that stopped reading is not an error
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') process.stderr.write(`cannot write to standard output: ${e.message}\n`);
  });
  let o: Options;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${usage()}\n`);
    process.exit(2);
  }
  if (o.list) {
    for (const g of groups) {
      for (const b of g.benches) process.stdout.write(`${b.name.padEnd(20)} ${b.description}\n`);
      for (const d of g.derived ?? []) process.stdout.write(`${d.name.padEnd(20)} derived from ${d.inputs.join(', ')}\n`);
    }
    return;
  }
  const { benches, derived } = select(o);
  if (benches.length === 0 && derived.length === 0) {
    process.stderr.write(`no benchmark matches --only ${o.only.join(',')} (see --list)\n`);
    process.exit(2);
  }
  const ctx: BenchContext = {
    seconds: o.seconds,
    warmupSeconds: o.warmup,
    log: (m) => process.stderr.write(`  ${m}\n`),
  };
  const env =
    `node ${process.version}, OpenSSL ${process.versions.openssl}, ${cpus()[0]?.model.trim() ?? 'unknown cpu'}, ` +
    `${availableParallelism()} cpus, load average ${loadavg()[0].toFixed(2)}; ` +
    `in-process benches: ${o.warmup} s warm-up + ${o.seconds} s measured (${SAMPLES} samples, median), one core`;
  process.stderr.write(`${env}\n`);

  const results = new Map<string, Row[]>();
  let failed = false;
  const fail = (b: Bench, e: unknown) => {
    failed = true;
    process.stderr.write(`  ${b.name} failed: ${(e as Error)?.stack ?? e}\n`);
    results.set(b.name, [{ name: b.name, value: NaN, unit: '', note: `failed: ${(e as Error)?.message ?? e}` }]);
  };

  // Benchmarks that hand over one operation are timed together, samples interleaved.
  const timed: { b: Bench; t: Timed; i: number; rates: number[]; ops: number; ms: number }[] = [];
  for (const b of benches.filter((x) => x.prepare)) {
    process.stderr.write(`preparing ${b.name}: ${b.description}\n`);
    try {
      timed.push({ b, t: await b.prepare!(ctx), i: 0, rates: [], ops: 0, ms: 0 });
    } catch (e) {
      fail(b, e);
    }
  }
  if (timed.length > 0) {
    process.stderr.write(`timing ${timed.map((x) => x.b.name).join(', ')}: ${SAMPLES} interleaved samples each\n`);
    const live = new Set(timed);
    const slice = async (x: (typeof timed)[number], ms: number, record: boolean) => {
      try {
        const [n, elapsed] = await timeSlice(x.t.op, x.t.async === true, x.i, ms);
        x.i += n;
        if (record) {
          x.rates.push(n / (elapsed / 1000));
          x.ops += n;
          x.ms += elapsed;
        }
      } catch (e) {
        live.delete(x);
        fail(x.b, e);
      }
    };
    for (const x of timed) await slice(x, o.warmup * 1000, false);
    for (let s = 0; s < SAMPLES; s++) {
      for (const x of timed) if (live.has(x)) await slice(x, (o.seconds * 1000) / SAMPLES, true);
    }
    for (const x of live) results.set(x.b.name, x.t.rows(summarize(x.rates, x.ops, x.ms / 1000)));
  }

  // Benchmarks that measure themselves, one after another.
  for (const b of benches.filter((x) => !x.prepare)) {
    process.stderr.write(`running ${b.name}: ${b.description}\n`);
    try {
      if (!b.run) throw new Error('benchmark has neither run nor prepare');
      results.set(b.name, await b.run(ctx));
    } catch (e) {
      fail(b, e);
    }
  }
  const rows: Row[] = benches.flatMap((b) => results.get(b.name) ?? []);
  const byName: Record<string, Row> = Object.fromEntries(rows.map((r) => [r.name, r]));
  for (const d of derived) {
    const r = d.compute(byName);
    rows.push(r);
    byName[r.name] = r;
  }

  if (o.json) {
    const out = rows.filter((r) => Number.isFinite(r.value)).map((r) => ({ name: r.name, value: r.value, unit: r.unit }));
    process.stdout.write(JSON.stringify(out, null, 2) + '\n');
  } else {
    process.stdout.write(`${env}\n\n${table(rows, byName)}`);
  }
  if (failed) process.exitCode = 1;
}

await main();
