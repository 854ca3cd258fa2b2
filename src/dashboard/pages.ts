/**
 * The dashboard's pages, rendered on the server from API answers. Each handler reads its
 * query, calls the API (through ClusterApi: same endpoints and authorization as the CLI),
 * and returns escaped HTML. Actions are POST forms reached through a confirmation page.
 */
import { X509Certificate } from 'node:crypto';
import { ApiError } from '../agent/client.js';
import { describeKey, REVOCATION_REASONS } from '../pki/index.js';
import { CairnError } from '../util/errors.js';
import type { ClusterApi } from './api.js';
import { href, Html, html, raw } from './html.js';

export const PAGE_SIZE = 50;

export interface TokenSource {
  /** where the tokens are kept, for the page ("admin/tokens.json of the state directory") */
  where: string;
  read(): Record<string, string>;
  save(role: string, token: string): void;
}

export interface RequestContext {
  method: string;
  url: URL;
  form?: URLSearchParams;
  csrf: string;
}

export interface Deps {
  api: ClusterApi;
  tokens: TokenSource;
}

export type PageResult = { status: number; body: Html } | { redirect: string };

const NAV: [string, string][] = [
  ['/', 'Overview'], ['/nodes', 'Nodes'], ['/certificates', 'Certificates'], ['/expiry', 'Expiry'],
  ['/rotation', 'Rotation'], ['/tokens', 'Tokens'], ['/audit', 'Audit'],
];

interface PageOpts {
  title: string;
  nav: string;
  csrf: string;
  endpoint?: string;
  /** re-render <main> from the server every this many seconds */
  refresh?: number;
}

function layout(o: PageOpts, content: Html): Html {
  return html`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${o.title} · cairn</title><link rel="stylesheet" href="/static/app.css"><script src="/static/app.js" defer></script></head>
<body><header><span class="brand">cairn</span><nav>${NAV.map(([p, l]) => html`<a href="${p}" class="${o.nav === p ? 'on' : ''}">${l}</a>`)}</nav>
<span class="where">${o.endpoint ? html`API: <span id="endpoint">${o.endpoint}</span>` : ''}</span>
<form method="post" action="/logout"><input type="hidden" name="_csrf" value="${o.csrf}"><button type="submit">Log out</button></form></header>
<main id="main"${o.refresh ? raw(` data-refresh="${o.refresh}"`) : ''}>${content}</main></body></html>`;
}

/** A page without the navigation (errors, login refused). */
export function errorPage(status: number, message: string): string {
  return html`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${status} · cairn</title><link rel="stylesheet" href="/static/app.css"></head>
<body><header><span class="brand">cairn</span></header><main><h1>${status}</h1><p class="error" id="error">${message}</p></main></body></html>`.text;
}

// ---- formatting

function ago(ms: number): string {
  const s = Math.round(Math.abs(ms) / 1000);
  const v = s < 90 ? `${s} s` : s < 5400 ? `${Math.round(s / 60)} min` : s < 172_800 ? `${Math.round(s / 3600)} h` : `${Math.round(s / 86400)} d`;
  return ms >= 0 ? `${v} ago` : `in ${v}`;
}

function when(iso: string | null | undefined): Html {
  if (!iso) return html`<span class="muted">–</span>`;
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return html`${iso}`;
  return html`<span class="when"><time datetime="${iso}" title="${iso}">${iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z')}</time> <span class="muted">(${ago(Date.now() - t)})</span></span>`;
}

function expiryClass(iso: string | null | undefined): string {
  if (!iso) return '';
  const left = Date.parse(iso) - Date.now();
  return left < 0 ? 'bad' : left < 7 * 86_400_000 ? 'bad' : left < 30 * 86_400_000 ? 'warn' : '';
}

const node = (id: string | null) => (id ? html`<a class="mono" href="${href(['nodes', id])}">${id}</a>` : html`<span class="muted">–</span>`);
const serialLink = (s: string) => html`<a class="mono" href="${href(['certificates', s])}">${s}</a>`;

function pager(url: URL, next: string | null): Html {
  const first = new URL(url);
  first.searchParams.delete('after');
  const nxt = new URL(url);
  if (next) nxt.searchParams.set('after', next);
  return html`<div class="pager">${url.searchParams.get('after') ? html`<a href="${first.pathname + first.search}">« First page</a>` : ''}${
    next ? html`<a id="next" href="${nxt.pathname + nxt.search}">Next page »</a>` : html`<span class="muted">End of the list.</span>`
  }</div>`;
}

function select(name: string, value: string | null, options: [string, string][]): Html {
  return html`<select name="${name}">${options.map(([v, l]) => html`<option value="${v}"${v === (value ?? '') ? raw(' selected') : ''}>${l}</option>`)}</select>`;
}

/** Only values a parameter may have (others become undefined, the API would refuse them). */
function pick(url: URL, name: string, allowed: readonly string[]): string | undefined {
  const v = url.searchParams.get(name);
  return v !== null && allowed.includes(v) ? v : undefined;
}

const FLASH: Record<string, string> = {
  promoted: 'The node is now a manager. Its certificate changes at its next renewal (its agent learns of it at its next trust poll).',
  demoted: 'The node is now a worker. Its certificate changes at its next renewal; its manager certificates are then revoked.',
  removed: 'The node was removed: its certificates are revoked and it can no longer renew.',
  revoked: 'The certificate was revoked. Renewal with it is refused at once; the next CRL lists it.',
  'rotated-worker': 'The worker join token was rotated: the old one no longer works.',
  'rotated-manager': 'The manager join token was rotated: the old one no longer works.',
};

function flash(url: URL): Html {
  const m = FLASH[url.searchParams.get('done') ?? ''];
  return m ? html`<p class="flash" id="flash">${m}</p>` : html``;
}

function confirmPage(o: PageOpts, heading: string, text: Html, action: string, button: string, extra: Html = html``, cancel = '/'): Html {
  return layout(o, html`<h1>${heading}</h1><div class="confirm"><p>${text}</p>
<form method="post" action="${action}"><input type="hidden" name="_csrf" value="${o.csrf}">${extra}
<div class="actions"><button type="submit" class="danger" id="confirm">${button}</button><a class="button" href="${cancel}">Cancel</a></div></form></div>`);
}

// ---- cached CA generations (issuer key ID -> "cluster g1")

let casCache: { at: number; byKeyId: Map<string, string> } | null = null;
async function caNames(api: ClusterApi): Promise<Map<string, string>> {
  if (casCache && Date.now() - casCache.at < 30_000) return casCache.byKeyId;
  const o = await api.call('GET', 'v1/overview');
  const byKeyId = new Map<string, string>((o.cas as any[]).map((c) => [c.keyId, `${c.name} gen ${c.generation}`]));
  casCache = { at: Date.now(), byKeyId };
  return byKeyId;
}

// ---- pages

async function overviewPage(d: Deps): Promise<Html> {
  const v = await d.api.call('GET', 'v1/overview');
  const counts = v.nodes as { role: string; status: string; n: number }[];
  const n = (role: string | null, status: string) => counts.filter((c) => (role === null || c.role === role) && c.status === status).reduce((a, c) => a + c.n, 0);
  const crl = (name: string) => {
    const c = v.crls[name];
    return c ? html`number <b>${c.number}</b>, ${c.entries} entries, issued ${when(c.thisUpdate)}` : html`<span class="warn">none published yet</span>`;
  };
  return html`<h1>${v.cluster.name} <span class="muted mono">${v.cluster.id}</span></h1>
<div class="cards">
<div class="card"><div class="n" id="nodes-active">${n(null, 'active')}</div><div class="l">active nodes</div></div>
<div class="card"><div class="n">${n('manager', 'active')}</div><div class="l">managers</div></div>
<div class="card"><div class="n">${n('worker', 'active')}</div><div class="l">workers</div></div>
<div class="card"><div class="n">${n(null, 'removed')}</div><div class="l">removed nodes</div></div>
<div class="card"><div class="n ${v.certificates.expiringWithin7Days ? 'bad' : ''}"><a href="/certificates?status=good&amp;expiring=7" id="exp7">${v.certificates.expiringWithin7Days}</a></div><div class="l">certificates expiring within 7 days</div></div>
<div class="card"><div class="n ${v.certificates.expiringWithin30Days ? 'warn' : ''}"><a href="/certificates?status=good&amp;expiring=30" id="exp30">${v.certificates.expiringWithin30Days}</a></div><div class="l">within 30 days</div></div>
</div>
<h2>Certificate authorities</h2>
<table id="cas"><tr><th>CA</th><th>Generation</th><th>Status</th><th>Subject</th><th>Key</th><th>SHA-256 fingerprint</th><th>Expires</th></tr>
${(v.cas as any[]).map((c) => html`<tr><td>${c.name}</td><td>${c.generation}</td><td>${c.status}</td><td>${c.subject}</td><td>${c.keyType}</td><td class="mono">${c.fingerprint}</td><td class="${expiryClass(c.notAfter)}">${when(c.notAfter)}</td></tr>`)}
</table>
<h2>Replicas</h2>
<table id="replicas"><tr><th>ID</th><th>Address</th><th>Version</th><th>Started</th><th>Last heartbeat</th><th>CRL lease</th></tr>
${(v.replicas as any[]).map((r) => {
  const stale = Date.now() - Date.parse(r.heartbeatAt) > 30_000;
  return html`<tr><td class="mono">${r.id}</td><td>${r.address}</td><td>${r.version}</td><td>${when(r.startedAt)}</td><td class="${stale ? 'bad' : ''}">${when(r.heartbeatAt)}${stale ? ' — not heard from' : ''}</td><td>${r.crlLeader ? html`<span class="ok">holds it</span>` : ''}</td></tr>`;
})}
</table>
<h2>CRLs</h2>
<dl class="kv" id="crls"><dt>cluster CA</dt><dd>${crl('cluster')}</dd><dt>client CA</dt><dd>${crl('client')}</dd><dt>CRL leader</dt><dd class="mono">${v.crlLeader ?? html`<span class="warn">no replica holds the lease</span>`}</dd></dl>
<h2>Recent refused joins and renewals</h2>
${(v.failures as any[]).length === 0 ? html`<p class="muted">None recorded.</p>` : html`<table id="failures"><tr><th>When</th><th>What</th><th>Error</th><th>Client</th><th>Node</th></tr>
${(v.failures as any[]).map((f) => html`<tr><td>${when(f.at)}</td><td>${f.kind}</td><td class="mono">${f.code}</td><td class="mono">${f.client}</td><td>${node(f.nodeId)}</td></tr>`)}</table>`}`;
}

const SORT_LABELS: [string, string][] = [['id', 'ID'], ['expiry', 'Certificate expiry'], ['renewed', 'Last renewal'], ['created', 'Joined']];

async function nodesPage(ctx: RequestContext, d: Deps): Promise<Html> {
  const u = ctx.url;
  const q = (u.searchParams.get('q') ?? '').trim();
  const role = pick(u, 'role', ['worker', 'manager']);
  const status = pick(u, 'status', ['active', 'removed']);
  const sort = pick(u, 'sort', ['created', 'expiry', 'renewed', 'id']) ?? 'created';
  const order = pick(u, 'order', ['asc', 'desc']) ?? 'asc';
  const after = u.searchParams.get('after') ?? undefined;
  const path = href(['v1', 'nodes'], { limit: PAGE_SIZE, q, role, status, sort, order, after }).slice(1);
  const [r, cas] = await Promise.all([d.api.call('GET', path), caNames(d.api)]);
  const sortLink = (key: string, label: string) => {
    const next = sort === key && order === 'asc' ? 'desc' : 'asc';
    const arrow = sort === key ? (order === 'asc' ? ' ▲' : ' ▼') : '';
    return html`<a href="${href(['nodes'], { q, role, status, sort: key, order: next })}" data-sort="${key}">${label}${arrow}</a>`;
  };
  return html`<h1>Nodes</h1>
<form class="filters" method="get" action="/nodes">
<label>ID starts with<input type="search" name="q" value="${q}" maxlength="25" id="q"></label>
<label>Role${select('role', role ?? '', [['', 'any'], ['worker', 'worker'], ['manager', 'manager']])}</label>
<label>Status${select('status', status ?? '', [['', 'any'], ['active', 'active'], ['removed', 'removed']])}</label>
<label>Sort by${select('sort', sort, SORT_LABELS)}</label>
<label>Order${select('order', order, [['asc', 'ascending'], ['desc', 'descending']])}</label>
<button type="submit" class="primary" id="filter">Show</button></form>
<table id="nodes"><tr><th>${sortLink('id', 'ID')}</th><th>Role</th><th>Status</th><th>${sortLink('expiry', 'Certificate expires')}</th><th>${sortLink('renewed', 'Last renewal')}</th><th>Issuer</th><th>${sortLink('created', 'Joined')}</th></tr>
${(r.nodes as any[]).map((n) => html`<tr data-node="${n.id}"><td>${node(n.id)}</td><td class="role">${n.role}</td><td>${n.status}</td><td class="${expiryClass(n.certificate?.notAfter)}">${when(n.certificate?.notAfter)}</td><td>${when(n.renewedAt)}</td><td>${n.certificate ? cas.get(n.certificate.issuerKeyId) ?? html`<span class="mono">${n.certificate.issuerKeyId.slice(0, 16)}…</span>` : '–'}</td><td>${when(n.createdAt)}</td></tr>`)}
</table>${(r.nodes as any[]).length === 0 ? html`<p class="muted" id="empty">No node matches.</p>` : ''}
${pager(u, r.next)}`;
}

async function nodePage(ctx: RequestContext, d: Deps, id: string): Promise<Html> {
  const [n, certs, cas] = await Promise.all([
    d.api.call('GET', href(['v1', 'nodes', id]).slice(1)),
    d.api.call('GET', href(['v1', 'certificates'], { node: id, limit: 1000 }).slice(1)),
    caNames(d.api),
  ]);
  const history = (certs.certificates as any[]).slice().reverse();
  const current = history.find((c) => c.serial === n.certificate?.serial);
  const pending = current && current.role !== n.role;
  return html`${flash(ctx.url)}<h1>Node <span class="mono">${n.id}</span></h1>
<dl class="kv" id="node"><dt>Role</dt><dd id="role">${n.role}${pending ? html` <span class="warn" id="pending">(its certificate still says ${current.role}: changes at its next renewal)</span>` : ''}</dd>
<dt>Status</dt><dd id="status">${n.status}</dd><dt>Joined</dt><dd>${when(n.createdAt)}</dd><dt>Last renewal</dt><dd>${when(n.renewedAt)}</dd>
<dt>Current certificate</dt><dd>${n.certificate ? html`${serialLink(n.certificate.serial)}, expires ${when(n.certificate.notAfter)}, issued by ${cas.get(n.certificate.issuerKeyId) ?? n.certificate.issuerKeyId}` : '–'}</dd></dl>
${n.status === 'active' ? html`<div class="actions">
${n.role === 'worker' ? html`<a class="button" id="promote" href="${href(['nodes', id, 'promote'])}">Promote to manager…</a>` : html`<a class="button" id="demote" href="${href(['nodes', id, 'demote'])}">Demote to worker…</a>`}
<a class="button" id="remove" href="${href(['nodes', id, 'remove'])}">Remove…</a></div>` : ''}
<h2>Certificate history</h2>
<table id="history"><tr><th>Serial</th><th>Role</th><th>Valid from</th><th>Expires</th><th>Status</th><th>Issuer</th></tr>
${history.map((c) => html`<tr><td>${serialLink(c.serial)}</td><td class="role">${c.role}</td><td>${when(c.notBefore)}</td><td>${when(c.notAfter)}</td><td class="${c.status === 'revoked' ? 'bad' : ''}">${c.status}${c.revocationReason ? ` (${c.revocationReason})` : ''}</td><td>${cas.get(c.issuerKeyId) ?? c.issuerKeyId}</td></tr>`)}
</table>`;
}

const NODE_ACTIONS: Record<string, { method: string; api: (id: string) => string; heading: string; text: string; button: string; done: string }> = {
  promote: { method: 'POST', api: (id) => href(['v1', 'nodes', id, 'promote']).slice(1), heading: 'Promote node', text: 'makes this node a manager. Its certificate says so from its next renewal.', button: 'Promote to manager', done: 'promoted' },
  demote: { method: 'POST', api: (id) => href(['v1', 'nodes', id, 'demote']).slice(1), heading: 'Demote node', text: 'makes this node a worker. At its next renewal its manager certificates are revoked.', button: 'Demote to worker', done: 'demoted' },
  remove: { method: 'DELETE', api: (id) => href(['v1', 'nodes', id]).slice(1), heading: 'Remove node', text: 'revokes every certificate of this node; it can no longer renew. This cannot be undone.', button: 'Remove the node', done: 'removed' },
};

async function certificatesPage(ctx: RequestContext, d: Deps): Promise<Html> {
  const u = ctx.url;
  const kind = pick(u, 'kind', ['node', 'admin', 'server', 'client']);
  const status = pick(u, 'status', ['good', 'revoked']);
  const expiring = pick(u, 'expiring', ['1', '7', '30', '90', '365']);
  const nodeId = (u.searchParams.get('node') ?? '').trim() || undefined;
  const after = u.searchParams.get('after') ?? undefined;
  const r = await d.api.call('GET', href(['v1', 'certificates'], { limit: PAGE_SIZE, kind, status, expiring, node: nodeId, after }).slice(1));
  return html`<h1>Certificates</h1>
<form class="filters" method="get" action="/certificates">
<label>Kind${select('kind', kind ?? '', [['', 'any'], ['node', 'node'], ['admin', 'admin'], ['server', 'server (replica)'], ['client', 'client']])}</label>
<label>Status${select('status', status ?? '', [['', 'any'], ['good', 'good'], ['revoked', 'revoked']])}</label>
<label>Node ID<input type="search" name="node" value="${nodeId ?? ''}" maxlength="25" id="node"></label>
<label>Expiring within${select('expiring', expiring ?? '', [['', 'any time'], ['1', '1 day'], ['7', '7 days'], ['30', '30 days'], ['90', '90 days'], ['365', '365 days']])}</label>
<button type="submit" class="primary" id="filter">Show</button></form>
<table id="certificates"><tr><th>Serial</th><th>Kind</th><th>Node</th><th>Role</th><th>Subject</th><th>Expires</th><th>Status</th></tr>
${(r.certificates as any[]).map((c) => html`<tr data-serial="${c.serial}"><td>${serialLink(c.serial)}</td><td>${c.kind}</td><td>${node(c.nodeId)}</td><td>${c.role ?? '–'}</td><td class="mono">${c.subject}</td><td class="${c.status === 'good' ? expiryClass(c.notAfter) : ''}">${when(c.notAfter)}</td><td class="${c.status === 'revoked' ? 'bad' : ''} status">${c.status}${c.revocationReason ? ` (${c.revocationReason})` : ''}</td></tr>`)}
</table>${(r.certificates as any[]).length === 0 ? html`<p class="muted" id="empty">No certificate matches.</p>` : ''}
${pager(u, r.next)}`;
}

/** The fields of a certificate, decoded from its PEM. */
function decoded(pem: string): [string, Html | string][] {
  let x: X509Certificate;
  try {
    x = new X509Certificate(pem);
  } catch {
    return [['Decoded', 'the stored certificate does not parse']];
  }
  const ku = x.keyUsage ?? [];
  return [
    ['Subject', x.subject.split('\n').join(', ')],
    ['Issuer', x.issuer.split('\n').join(', ')],
    ['Serial number', x.serialNumber],
    ['Valid from', when(new Date(x.validFrom).toISOString())],
    ['Valid until', when(new Date(x.validTo).toISOString())],
    ['Public key', describeKey(x.publicKey).name],
    ['Subject alternative names', x.subjectAltName ?? '–'],
    ['Extended key usage', ku.map((k) => ({ '1.3.6.1.5.5.7.3.1': 'serverAuth', '1.3.6.1.5.5.7.3.2': 'clientAuth' })[k] ?? k).join(', ') || '–'],
    ['CA', x.ca ? 'yes' : 'no'],
    ['SHA-256 fingerprint', html`<span class="mono">${x.fingerprint256}</span>`],
  ];
}

async function certificatePage(ctx: RequestContext, d: Deps, serial: string): Promise<Html> {
  const c = await d.api.call('GET', href(['v1', 'certificates', serial]).slice(1));
  return html`${flash(ctx.url)}<h1>Certificate <span class="mono">${c.serial}</span></h1>
<dl class="kv" id="record"><dt>Kind</dt><dd>${c.kind}</dd><dt>Node</dt><dd>${node(c.nodeId)}</dd><dt>Role</dt><dd>${c.role ?? '–'}</dd>
<dt>Status</dt><dd id="status" class="${c.status === 'revoked' ? 'bad' : 'ok'}">${c.status}${c.revocationReason ? ` (${c.revocationReason}, ${c.revokedAt})` : ''}</dd>
<dt>Issuer key ID</dt><dd class="mono">${c.issuerKeyId}</dd></dl>
${c.status === 'good' ? html`<div class="actions"><a class="button" id="revoke" href="${href(['certificates', c.serial, 'revoke'])}">Revoke…</a></div>` : ''}
<h2>Decoded</h2><dl class="kv" id="decoded">${decoded(c.pem).map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>`)}</dl>
<h2>PEM</h2><pre id="pem">${c.pem}</pre>`;
}

/** Parse the expiry gauge out of the Prometheus text the API serves. */
export function expiryBuckets(text: string): { le: string; n: number }[] {
  const out: { le: string; n: number }[] = [];
  for (const line of text.split('\n')) {
    const m = line.match(/^cairn_certificates_by_days_to_expiry\{le_days="([^"]+)"\} (\d+)$/);
    if (m) out.push({ le: m[1], n: Number(m[2]) });
  }
  return out;
}

async function expiryPage(d: Deps): Promise<Html> {
  const text = (await d.api.call<Buffer>('GET', 'metrics', undefined, { raw: true })).toString('utf8');
  const b = expiryBuckets(text);
  if (b.length === 0) return html`<h1>Expiry</h1><p class="error">The API's metrics have no cairn_certificates_by_days_to_expiry gauge.</p>`;
  const labels = b.map((x, i) => (x.le === '+Inf' ? `over ${b[i - 1]?.le ?? 0} days` : i === 0 ? `≤ ${x.le} day${x.le === '1' ? '' : 's'}` : `${b[i - 1].le}–${x.le} days`));
  const max = Math.max(1, ...b.map((x) => x.n));
  const W = 720, barH = 28, gap = 10, left = 130, right = 80;
  const H = b.length * (barH + gap) + 10;
  const bars = b.map((x, i) => {
    const w = Math.round(((W - left - right) * x.n) / max);
    const y = 5 + i * (barH + gap);
    const cls = i === 0 ? 'bar soon' : i === 1 ? 'bar near' : 'bar';
    return html`<text x="0" y="${y + 18}">${labels[i]}</text><rect class="${cls}" x="${left}" y="${y}" width="${Math.max(w, x.n ? 2 : 0)}" height="${barH}"></rect><text x="${left + w + 6}" y="${y + 18}" data-bucket="${x.le}">${x.n}</text>`;
  });
  return html`<h1>Certificates by days to expiry</h1>
<p class="muted">Good (unrevoked), unexpired certificates in the store, from the API's <span class="mono">cairn_certificates_by_days_to_expiry</span> metric (the same numbers Prometheus scrapes).</p>
<svg class="chart" id="chart" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="certificates by days to expiry">${bars}</svg>
<table id="buckets"><tr><th>Days to expiry</th><th>Certificates</th></tr>${b.map((x, i) => html`<tr><td>${labels[i]}</td><td data-le="${x.le}">${x.n}</td></tr>`)}</table>`;
}

/** Rate and ETA of a running rotation, from its progress since it started. */
function rotationPace(r: { startedAt: string; nodes: { total: number; converged: number } }): { rate: string; eta: string } {
  const secs = Math.max(1, (Date.now() - Date.parse(r.startedAt)) / 1000);
  const perSec = r.nodes.converged / secs;
  const left = r.nodes.total - r.nodes.converged;
  return { rate: `${perSec.toFixed(1)} nodes/s`, eta: left === 0 ? 'now' : perSec > 0 ? `${Math.ceil(left / perSec)} s` : 'unknown' };
}

async function rotationPage(d: Deps): Promise<Html> {
  const s = await d.api.call('GET', 'v1/ca/rotation?ca=cluster&stuck=50');
  const r = s.rotation;
  const ca = await d.api.call('GET', 'v1/ca');
  if (!r || r.state !== 'running') {
    return html`<h1>Root CA rotation</h1><p id="rotation-state" class="ok">No rotation in progress.</p>
${r ? html`<p class="muted" id="last-rotation">The last rotation (${r.id}) ${r.state} on ${when(r.finishedAt)}: from ${r.from.subject} to ${r.to.subject}.</p>` : ''}
<p class="muted">The cluster root's digest (as join tokens carry it): <span class="mono">${ca.digest}</span>.</p>
<div class="actions"><a class="button" id="rotate" href="/rotation/start">Rotate the cluster root CA…</a></div>`;
  }
  const pace = rotationPace(r);
  const pct = r.nodes.total ? Math.floor((100 * r.nodes.converged) / r.nodes.total) : 100;
  return html`<h1>Root CA rotation</h1><p id="rotation-state" class="warn">A rotation is in progress: ${r.nodes.converged} of ${r.nodes.total} nodes converged.</p>
<progress id="rotation-progress" max="${r.nodes.total || 1}" value="${r.nodes.converged}">${pct}%</progress>
<dl class="kv" id="rotation"><dt>Started</dt><dd>${when(r.startedAt)}</dd><dt>From</dt><dd class="mono">${r.from.subject} (${r.from.keyId})</dd>
<dt>To</dt><dd class="mono">${r.to.subject} (${r.to.keyId})</dd><dt>Rate</dt><dd id="rate">${pace.rate} (the CA asks ${r.renewRate}/s)</dd><dt>ETA</dt><dd id="eta">${pace.eta}</dd></dl>
<div class="actions"><a class="button" id="finish" href="/rotation/finish">Finish…</a> <a class="button" id="abort" href="/rotation/abort">Abort…</a></div>
<h2>Stuck nodes</h2><p class="muted">Active nodes still holding a certificate of the old root, least recently seen first (up to 50).</p>
<table id="stuck"><tr><th>Node</th><th>Role</th><th>Last seen</th><th>Issuer key</th></tr>
${(s.stuck as any[]).map((n) => html`<tr><td>${node(n.id)}</td><td>${n.role}</td><td>${n.lastSeen ? when(n.lastSeen) : '–'}</td><td class="mono">${n.issuerKeyId ?? '–'}</td></tr>`)}</table>`;
}

/** The rotation actions: what each confirmation says and what it calls. */
const ROTATION_ACTIONS: Record<string, { heading: string; text: string; button: string; api: string; body?: Record<string, unknown>; done: string }> = {
  start: {
    heading: 'Rotate the cluster root CA',
    text: 'A new root is made and cross-signed by the current one; from then on every certificate is issued by the new key, nodes renew in batches, and the rotation completes by itself once all have. The join tokens change when it completes.',
    button: 'Start the rotation',
    api: 'v1/ca/rotate',
    done: 'started',
  },
  finish: {
    heading: 'Finish the rotation now',
    text: 'The old root is retired at once. Nodes that have not renewed yet can no longer renew: they will have to join again.',
    button: 'Finish anyway',
    api: 'v1/ca/rotation/finish',
    body: { force: true },
    done: 'finished',
  },
  abort: {
    heading: 'Abort the rotation',
    text: 'The new root is retired and the old one signs again. Certificates issued by the new key meanwhile stay valid through the cross-signed certificate until their nodes renew.',
    button: 'Abort the rotation',
    api: 'v1/ca/rotation/abort',
    done: 'aborted',
  },
};

function joinCommand(token: string, endpoints: string[]): string {
  return `cairn join --token ${token} --state-dir <node-dir> ${endpoints.join(' ')}`;
}

async function tokensPage(ctx: RequestContext, d: Deps): Promise<Html> {
  let tokens: Record<string, string> = {};
  let problem = '';
  try {
    tokens = d.tokens.read();
  } catch (e) {
    problem = e instanceof Error ? e.message : String(e);
  }
  return html`${flash(ctx.url)}<h1>Join tokens</h1>
<p class="muted">The store keeps only hashes of the token secrets; the tokens themselves are kept in ${d.tokens.where}. Rotating a token makes the old one fail at once.</p>
${problem ? html`<p class="error">${problem}</p>` : ''}
${['worker', 'manager'].map((role) => html`<h2>${role === 'worker' ? 'Workers' : 'Managers'}</h2>
${tokens[role] ? html`<details id="${role}-token"><summary>Show the join command (contains the secret)</summary><pre class="mono" id="${role}-command">${joinCommand(tokens[role], d.api.endpoints)}</pre><button type="button" data-copy="${role}-command">Copy</button></details>` : html`<p class="muted">Not known here: rotate it to get a new one.</p>`}
<div class="actions"><a class="button" id="rotate-${role}" href="${href(['tokens', role, 'rotate'])}">Rotate the ${role} token…</a></div>`)}
<h2>Client bundles</h2><p class="muted" id="bundles">This version of cairn has no client bundle API: nothing to list or create.</p>`;
}

async function auditPage(ctx: RequestContext, d: Deps): Promise<Html> {
  const u = ctx.url;
  const action = (u.searchParams.get('action') ?? '').trim() || undefined;
  const actor = (u.searchParams.get('actor') ?? '').trim() || undefined;
  const after = u.searchParams.get('after') ?? undefined;
  const r = await d.api.call('GET', href(['v1', 'audit'], { limit: PAGE_SIZE, action, actor, after }).slice(1));
  return html`<h1>Audit log</h1>
<form class="filters" method="get" action="/audit">
<label>Action (or prefix ending in ".")<input type="search" name="action" value="${action ?? ''}" maxlength="64" id="action" placeholder="node."></label>
<label>Actor<input type="search" name="actor" value="${actor ?? ''}" maxlength="128" id="actor" placeholder="admin:…"></label>
<button type="submit" class="primary" id="filter">Show</button></form>
<table id="audit"><tr><th>When</th><th>Actor</th><th>Action</th><th>Detail</th></tr>
${(r.entries as any[]).map((e) => html`<tr><td>${when(e.at)}</td><td class="mono">${e.actor}</td><td class="mono action">${e.action}</td><td class="mono">${JSON.stringify(e.detail)}</td></tr>`)}
</table>${(r.entries as any[]).length === 0 ? html`<p class="muted" id="empty">No entry matches.</p>` : ''}
${pager(u, r.next)}`;
}

// ---- routing

function apiFailure(e: unknown): { status: number; message: string } {
  if (e instanceof ApiError) {
    const status = e.status === 401 || e.status === 403 || e.status === 404 || e.status === 409 || e.status === 400 || e.status === 429 ? e.status : 502;
    return { status, message: `The API refused: ${e.message}` };
  }
  if (e instanceof CairnError) return { status: 502, message: e.message };
  throw e;
}

export async function route(ctx: RequestContext, d: Deps): Promise<PageResult> {
  const segs = ctx.url.pathname.split('/').filter(Boolean).map((s) => {
    try {
      return decodeURIComponent(s);
    } catch {
      return '\0';
    }
  });
  const fragment = ctx.url.searchParams.get('_fragment') === '1';
  const o: PageOpts = { title: 'Overview', nav: '/', csrf: ctx.csrf, endpoint: d.api.endpoint };
  const page = (title: string, nav: string, content: Html, refresh?: number): PageResult => {
    if (fragment) return { status: 200, body: content };
    return { status: 200, body: layout({ ...o, title, nav, refresh, endpoint: d.api.endpoint }, content) };
  };
  const fail = (status: number, message: string): PageResult => ({ status, body: layout({ ...o, title: String(status), nav: '' }, html`<h1>${status}</h1><p class="error" id="error">${message}</p>`) });
  const post = ctx.method === 'POST';
  try {
    const [a, b, c] = segs;
    if (!post) {
      if (segs.length === 0) return page('Overview', '/', await overviewPage(d), 5);
      if (a === 'nodes' && segs.length === 1) return page('Nodes', '/nodes', await nodesPage(ctx, d));
      if (a === 'nodes' && segs.length === 2) return page(`Node ${b}`, '/nodes', await nodePage(ctx, d, b));
      if (a === 'nodes' && segs.length === 3 && Object.hasOwn(NODE_ACTIONS, c)) {
        const act = NODE_ACTIONS[c];
        const n = await d.api.call('GET', href(['v1', 'nodes', b]).slice(1));
        return { status: 200, body: confirmPage({ ...o, title: act.heading, nav: '/nodes' }, act.heading, html`<b>${act.button}</b> ${node(n.id)} (now a ${n.role}, ${n.status}): ${act.text}`, href(['nodes', b, c]), act.button, html``, href(['nodes', b])) };
      }
      if (a === 'certificates' && segs.length === 1) return page('Certificates', '/certificates', await certificatesPage(ctx, d));
      if (a === 'certificates' && segs.length === 2) return page(`Certificate ${b}`, '/certificates', await certificatePage(ctx, d, b));
      if (a === 'certificates' && segs.length === 3 && c === 'revoke') {
        const cert = await d.api.call('GET', href(['v1', 'certificates', b]).slice(1));
        const reasons = Object.keys(REVOCATION_REASONS).map((r): [string, string] => [r, r]);
        return {
          status: 200,
          body: confirmPage({ ...o, title: 'Revoke certificate', nav: '/certificates' }, 'Revoke certificate', html`Revoke certificate ${serialLink(cert.serial)} (${cert.kind}${cert.nodeId ? html` of node ${node(cert.nodeId)}` : ''}, ${cert.subject}). Renewal with it is refused at once and the next CRL lists it. This cannot be undone.`,
            href(['certificates', cert.serial, 'revoke']), 'Revoke', html`<p><label>Reason ${select('reason', 'unspecified', reasons)}</label></p>`, href(['certificates', cert.serial])),
        };
      }
      if (a === 'expiry' && segs.length === 1) return page('Expiry', '/expiry', await expiryPage(d), 30);
      if (a === 'rotation' && segs.length === 1) return page('Rotation', '/rotation', await rotationPage(d), 3);
      if (a === 'rotation' && segs.length === 2 && Object.hasOwn(ROTATION_ACTIONS, b)) {
        const act = ROTATION_ACTIONS[b];
        return { status: 200, body: confirmPage({ ...o, title: act.heading, nav: '/rotation' }, act.heading, html`${act.text}`, href(['rotation', b]), act.button, html``, '/rotation') };
      }
      if (a === 'tokens' && segs.length === 1) return page('Tokens', '/tokens', await tokensPage(ctx, d));
      if (a === 'tokens' && segs.length === 3 && (b === 'worker' || b === 'manager') && c === 'rotate') {
        return { status: 200, body: confirmPage({ ...o, title: 'Rotate token', nav: '/tokens' }, `Rotate the ${b} token`, html`Replace the secret of the ${b} join token: the current ${b} token stops working at once (nodes already joined are not affected).`, href(['tokens', b, 'rotate']), `Rotate the ${b} token`, html``, '/tokens') };
      }
      if (a === 'audit' && segs.length === 1) return page('Audit', '/audit', await auditPage(ctx, d));
      return fail(404, 'No such page.');
    }
    // POST: the server checked the session's CSRF token already
    if (a === 'nodes' && segs.length === 3 && Object.hasOwn(NODE_ACTIONS, c)) {
      const act = NODE_ACTIONS[c];
      await d.api.call(act.method, act.api(b));
      return { redirect: href(['nodes', b], { done: act.done }) };
    }
    if (a === 'certificates' && segs.length === 3 && c === 'revoke') {
      const reason = ctx.form?.get('reason') ?? 'unspecified';
      await d.api.call('POST', href(['v1', 'certificates', b, 'revoke']).slice(1), { reason });
      return { redirect: href(['certificates', b], { done: 'revoked' }) };
    }
    if (a === 'rotation' && segs.length === 2 && Object.hasOwn(ROTATION_ACTIONS, b)) {
      const act = ROTATION_ACTIONS[b];
      await d.api.call('POST', act.api, act.body ?? {});
      return { redirect: href(['rotation'], { done: act.done }) };
    }
    if (a === 'tokens' && segs.length === 3 && (b === 'worker' || b === 'manager') && c === 'rotate') {
      const r = await d.api.call('POST', href(['v1', 'tokens', b, 'rotate']).slice(1));
      d.tokens.save(b, r.token);
      return { redirect: href(['tokens'], { done: `rotated-${b}` }) };
    }
    return fail(404, 'No such action.');
  } catch (e) {
    const f = apiFailure(e);
    return fail(f.status, f.message);
  }
}

