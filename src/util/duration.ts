import { CairnError } from './errors.js';

const UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3600_000, d: 86_400_000 };

/** Parse durations such as `90d`, `720h`, `1h30m`, `3600s` into milliseconds. */
export function parseDuration(s: string): number {
  const t = s.trim();
  if (!/^(\d+(\.\d+)?[smhd])+$/.test(t)) {
    throw new CairnError('bad_duration', `"${s}" is not a duration: use a number with a unit, e.g. 90d, 720h, 1h30m`);
  }
  let ms = 0;
  for (const m of t.matchAll(/(\d+(?:\.\d+)?)([smhd])/g)) ms += Number(m[1]) * UNITS[m[2]];
  return Math.round(ms);
}

/** A duration in the largest whole unit that fits (90d, 36h, 90m, 45s). */
export function formatDuration(ms: number): string {
  for (const [u, f] of [['d', UNITS.d], ['h', UNITS.h], ['m', UNITS.m]] as const) {
    if (ms % f === 0 && ms >= f) return `${ms / f}${u}`;
  }
  return `${Math.round(ms / 1000)}s`;
}
