/**
 * HTML built by a tagged template that escapes every interpolated value, unless it is
 * itself built by `html` (or `raw`, for constant markup). Attribute values are always
 * quoted in the templates, and every URL is built by `href()` from a path and parameters,
 * so no value from the API or the request can open a tag, an attribute or a scheme.
 */
export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;', '`': '&#96;' };

export function escapeHtml(v: unknown): string {
  return String(v).replace(/[&<>"'`]/g, (c) => ENTITIES[c]);
}

function render(v: unknown): string {
  if (v instanceof Html) return v.text;
  if (Array.isArray(v)) return v.map(render).join('');
  if (v === null || v === undefined || v === false) return '';
  return escapeHtml(v);
}

export function html(strings: TemplateStringsArray, ...values: unknown[]): Html {
  let out = strings[0];
  for (let i = 0; i < values.length; i++) out += render(values[i]) + strings[i + 1];
  return new Html(out);
}

/** Markup written in this module's source (never data). */
export function raw(s: string): Html {
  return new Html(s);
}

/** A same-origin URL: a path (each segment encoded) and query parameters (empty ones left out). */
export function href(segments: string[], params: Record<string, string | number | undefined | null> = {}): string {
  const p = '/' + segments.map((s) => encodeURIComponent(s)).join('/');
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const qs = q.toString();
  return qs ? `${p}?${qs}` : p;
}
