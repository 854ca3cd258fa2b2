/**
 * `cairn dashboard` in a real headless Chromium (Debian's /usr/bin/chromium driven by
 * playwright-core; no browser is downloaded) against real clusters: `cairn serve` child
 * processes, nodes joined with `cairn join` and renewed by `cairn agent`. Screenshots of
 * every page (1280×800) go to CAIRN_SCREENSHOTS (default dist/screenshots/dashboard).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { openStore } from '../../src/store/store.js';
import { Background, CAIRN_BIN, REPO_ROOT, startBackground, tmpDir } from '../helpers.js';
import { addReplica, adminId, api, cliAsync, Cluster, freePort, startCluster } from './cluster.js';
import { createDb, PG_ADMIN_URL } from './pg.js';

const CHROMIUM = process.env.CAIRN_CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = process.env.CAIRN_SCREENSHOTS ?? path.join(REPO_ROOT, 'dist', 'screenshots', 'dashboard');
const VIEWPORT = { width: 1280, height: 800 };

interface Dash {
  base: string;
  bg: Background;
  /** the newest login URL printed */
  login(): string;
  /** wait until `n` login URLs have been printed */
  logins(n: number): Promise<void>;
}

async function startDash(args: string[]): Promise<Dash> {
  const bg = startBackground(process.execPath, [CAIRN_BIN, 'dashboard', '--listen', '127.0.0.1:0', ...args]);
  await bg.waitFor(/Log in .*http:\/\/\S+/);
  const base = bg.stdout().match(/cairn dashboard on (http:\/\/\S+)/)![1];
  const all = () => [...bg.stdout().matchAll(/(http:\/\/\S+\/login\?secret=[0-9a-f]+)/g)].map((m) => m[1]);
  return {
    base,
    bg,
    login: () => all().at(-1)!,
    logins: (n) => bg.waitFor(new RegExp(`(login\\?secret=[0-9a-f]+[\\s\\S]*){${n}}`)),
  };
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A plain HTTP request to the dashboard (what a script, or another site's page, could send). */
function req(base: string, method: string, p: string, o: { cookie?: string; body?: string; headers?: Record<string, string> } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...(o.cookie ? { cookie: o.cookie } : {}), ...(o.headers ?? {}) };
    if (o.body !== undefined) {
      headers['content-type'] ??= 'application/x-www-form-urlencoded';
      headers['content-length'] = String(Buffer.byteLength(o.body));
    }
    const r = http.request(new URL(p, base), { method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
    });
    r.on('error', reject);
    r.end(o.body);
  });
}

/** Log a fresh browser context in with the newest login URL. */
async function loggedIn(browser: Browser, d: Dash, status = 200): Promise<{ ctx: BrowserContext; page: Page; cookie: string }> {
  const ctx = await browser.newContext({ viewport: VIEWPORT });
  const page = await ctx.newPage();
  const before = [...d.bg.stdout().matchAll(/login\?secret=/g)].length;
  const r = await page.goto(d.login());
  assert.equal(r?.status(), status);
  assert.equal(new URL(page.url()).pathname, '/');
  await d.logins(before + 1);
  const c = (await ctx.cookies()).find((k) => k.name === 'cairn_session')!;
  return { ctx, page, cookie: `cairn_session=${c.value}` };
}

async function shot(page: Page, name: string): Promise<void> {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
}

async function join(c: Cluster, role: 'worker' | 'manager', dir: string): Promise<string> {
  const r = await cliAsync(['join', '--token', c.tokens[role], '--state-dir', dir, c.url]);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(fs.readFileSync(path.join(dir, 'node.json'), 'utf8')).nodeId;
}

const text = async (page: Page, sel: string) => (await page.textContent(sel))?.trim() ?? '';

let browser: Browser;
before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
});
after(async () => {
  await browser?.close();
});

describe('cairn dashboard against a real cluster, in Chromium', () => {
  let c: Cluster;
  let d: Dash;
  let tmp: string;
  let page: Page;
  let ctx: BrowserContext;
  let cookie: string;
  let worker: string;
  let manager: string;
  let workerDir: string;
  before(async () => {
    c = await startCluster('dash');
    tmp = tmpDir();
    workerDir = path.join(tmp, 'w1');
    worker = await join(c, 'worker', workerDir);
    manager = await join(c, 'manager', path.join(tmp, 'm1'));
    d = await startDash(['--state-dir', c.dir]);
  });
  after(async () => {
    await ctx?.close();
    await d?.bg.stop();
    await c?.cleanup();
  });

  test('without the login secret every page is 401; a login link works once', async () => {
    for (const p of ['/', '/nodes', `/nodes/${worker}`, '/certificates', '/expiry', '/rotation', '/tokens', '/audit', '/login', '/login?secret=00', `/login?secret=${'0'.repeat(48)}`]) {
      const r = await req(d.base, 'GET', p);
      assert.equal(r.status, 401, p);
      assert.doesNotMatch(r.body, new RegExp(worker), 'no cluster data on a 401 page');
    }
    const post = await req(d.base, 'POST', `/nodes/${worker}/promote`, { body: '_csrf=x' });
    assert.equal(post.status, 401);
    // in the browser too
    const anon = await browser.newContext({ viewport: VIEWPORT });
    const p0 = await anon.newPage();
    assert.equal((await p0.goto(`${d.base}/nodes`))?.status(), 401);
    await shot(p0, '00-login-refused');
    const first = d.login();
    ({ ctx, page, cookie } = await loggedIn(browser, d));
    // the same link again: refused; the new one printed works
    assert.equal((await p0.goto(first))?.status(), 401);
    assert.notEqual(d.login(), first);
    await anon.close();
    const cookies = await ctx.cookies();
    const s = cookies.find((k) => k.name === 'cairn_session')!;
    assert.equal(s.httpOnly, true);
    assert.equal(s.sameSite, 'Strict');
  });

  test('every answer carries a strict CSP and the other protective headers; another Host is refused', async () => {
    const r = await req(d.base, 'GET', '/', { cookie });
    assert.equal(r.status, 200);
    assert.match(String(r.headers['content-security-policy']), /default-src 'none'; script-src 'self'; style-src 'self'/);
    assert.doesNotMatch(String(r.headers['content-security-policy']), /unsafe-inline|unsafe-eval|http:|https:/);
    assert.equal(r.headers['x-frame-options'], 'DENY');
    assert.equal(r.headers['referrer-policy'], 'same-origin');
    assert.equal(r.headers['cache-control'], 'no-store');
    assert.doesNotMatch(r.body, /<script>|<style>| style=| on[a-z]+=/i, 'no inline script, style or event handler');
    assert.doesNotMatch(r.body, /https?:\/\/(?!127\.0\.0\.1)/, 'nothing loaded from elsewhere');
    // DNS rebinding: a page of another site that resolves its name to 127.0.0.1
    const port = new URL(d.base).port;
    const rebound = await req(d.base, 'GET', '/', { cookie, headers: { host: `evil.example:${port}` } });
    assert.equal(rebound.status, 421);
  });

  test('the overview shows the cluster, its CAs, the replica holding the CRL lease, node counts, and refused joins', async () => {
    const bad = await api(c.url, 'POST', '/v1/join', { token: `${c.tokens.worker.slice(0, -4)}zzzz`, csr: 'x' });
    assert.equal(bad.status, 401);
    await page.goto(`${d.base}/`);
    assert.equal(await text(page, '#nodes-active'), '2');
    const cas = await text(page, '#cas');
    assert.match(cas, /cluster-root-ca/);
    assert.match(cas, /client-root-ca/);
    assert.match(cas, /P-256/);
    assert.match(cas, /([0-9A-F]{2}:){31}[0-9A-F]{2}/);
    assert.match(await text(page, '#replicas'), /holds it/);
    assert.match(await text(page, '#crls'), /number \d+/);
    assert.match(await text(page, '#failures'), /join\s*invalid_token\s*127\.0\.0\.1/);
    await shot(page, '01-overview');
  });

  test('the overview updates without a reload when a node joins', async () => {
    await page.goto(`${d.base}/`);
    assert.equal(await text(page, '#nodes-active'), '2');
    const third = await join(c, 'worker', path.join(tmp, 'w2'));
    await page.waitForFunction(() => (globalThis as any).document.querySelector('#nodes-active')?.textContent === '3', undefined, { timeout: 20_000 });
    assert.ok(await page.getAttribute('#main', 'data-updated'));
    assert.ok(third);
  });

  test('nodes: the joined nodes are listed, searchable and sortable', async () => {
    await page.goto(`${d.base}/nodes`);
    const ids = await page.$$eval('#nodes tr[data-node]', (rows) => rows.map((r) => (r as any).getAttribute('data-node')));
    assert.equal(ids.length, 3);
    assert.ok(ids.includes(worker) && ids.includes(manager));
    await shot(page, '02-nodes');
    await page.fill('#q', worker.slice(0, 6));
    await page.click('#filter');
    assert.deepEqual(await page.$$eval('#nodes tr[data-node]', (rows) => rows.map((r) => (r as any).getAttribute('data-node'))), [worker]);
    await page.goto(`${d.base}/nodes?role=manager`);
    assert.deepEqual(await page.$$eval('#nodes tr[data-node]', (rows) => rows.map((r) => (r as any).getAttribute('data-node'))), [manager]);
    await page.goto(`${d.base}/nodes?sort=id&order=desc`);
    const desc = await page.$$eval('#nodes tr[data-node]', (rows) => rows.map((r) => (r as any).getAttribute('data-node')));
    assert.deepEqual(desc, [...desc].sort().reverse());
  });

  test('promote needs a confirmation and the CSRF token; the role changes after the node renews', async () => {
    // the confirmation page alone changes nothing
    await page.goto(`${d.base}/nodes/${worker}`);
    assert.equal(await text(page, '#role'), 'worker');
    await page.click('#promote');
    assert.match(new URL(page.url()).pathname, /\/promote$/);
    await shot(page, '03-confirm-promote');
    assert.equal((await api(c.url, 'GET', `/v1/nodes/${worker}`, undefined, adminId(c.dir))).body.role, 'worker');
    // a POST without the session's CSRF token, or from another origin, is refused
    for (const [body, headers] of [['', {}], ['_csrf=wrong', {}], ['_csrf=', {}]] as [string, Record<string, string>][]) {
      const r = await req(d.base, 'POST', `/nodes/${worker}/promote`, { cookie, body, headers });
      assert.equal(r.status, 403, body);
    }
    const csrf = await page.getAttribute('input[name=_csrf]', 'value');
    const cross = await req(d.base, 'POST', `/nodes/${worker}/promote`, { cookie, body: `_csrf=${csrf}`, headers: { origin: 'http://evil.example' } });
    assert.equal(cross.status, 403);
    assert.equal((await api(c.url, 'GET', `/v1/nodes/${worker}`, undefined, adminId(c.dir))).body.role, 'worker');
    // confirmed in the browser
    await page.click('#confirm');
    assert.match(await text(page, '#flash'), /now a manager/);
    assert.match(await text(page, '#role'), /^manager/);
    assert.match(await text(page, '#pending'), /still says worker/);
    const renew = await cliAsync(['agent', '--state-dir', workerDir, '--renew-now']);
    assert.equal(renew.code, 0, renew.stderr);
    await page.reload();
    assert.equal(await text(page, '#role'), 'manager');
    assert.equal(await page.$('#pending'), null);
    const roles = await page.$$eval('#history td.role', (tds) => tds.map((t) => (t as any).textContent));
    assert.deepEqual(roles, ['manager', 'worker'], 'newest first: the renewed certificate says manager');
    await shot(page, '04-node');
  });

  test('revoke a certificate with a reason; it shows on the Certificates page', async () => {
    const n = (await api(c.url, 'GET', `/v1/nodes/${manager}`, undefined, adminId(c.dir))).body;
    const serial = n.certificate.serial;
    await page.goto(`${d.base}/certificates/${serial}`);
    assert.match(await text(page, '#decoded'), new RegExp(`CN=${manager}`));
    assert.match(await text(page, '#decoded'), /serverAuth, clientAuth/);
    assert.match(await text(page, '#pem'), /BEGIN CERTIFICATE/);
    await shot(page, '05-certificate');
    await page.click('#revoke');
    await page.selectOption('select[name=reason]', 'keyCompromise');
    await shot(page, '06-confirm-revoke');
    await page.click('#confirm');
    assert.match(await text(page, '#flash'), /revoked/);
    assert.match(await text(page, '#status'), /revoked \(keyCompromise/);
    await page.goto(`${d.base}/certificates?status=revoked`);
    const rows = await page.$$eval('#certificates tr[data-serial]', (rs) => rs.map((r) => [(r as any).getAttribute('data-serial'), (r as any).querySelector('.status').textContent]));
    assert.deepEqual(rows, [[serial, 'revoked (keyCompromise)']]);
    await page.goto(`${d.base}/certificates?kind=node&status=good`);
    assert.ok(!(await page.$$eval('#certificates tr[data-serial]', (rs) => rs.map((r) => (r as any).getAttribute('data-serial')))).includes(serial));
    await page.goto(`${d.base}/certificates`);
    await shot(page, '07-certificates');
    // the API saw the same thing
    assert.equal((await api(c.url, 'GET', `/v1/certificates/${serial}`, undefined, adminId(c.dir))).body.revocationReason, 'keyCompromise');
  });

  test('remove a node with a confirmation', async () => {
    await page.goto(`${d.base}/nodes/${manager}`);
    await page.click('#remove');
    await page.click('#confirm');
    assert.equal(await text(page, '#status'), 'removed');
    assert.equal(await page.$('#promote'), null);
    assert.equal((await api(c.url, 'GET', `/v1/nodes/${manager}`, undefined, adminId(c.dir))).body.status, 'removed');
  });

  test('expiry chart: the same numbers as the metric', async () => {
    await page.goto(`${d.base}/expiry`);
    const shown = await page.$$eval('#buckets td[data-le]', (tds) => tds.map((t) => [(t as any).getAttribute('data-le'), Number((t as any).textContent)]));
    const metrics = String((await api(c.url, 'GET', '/metrics')).body);
    const fromMetric = [...metrics.matchAll(/^cairn_certificates_by_days_to_expiry\{le_days="([^"]+)"\} (\d+)$/gm)].map((m) => [m[1], Number(m[2])]);
    assert.deepEqual(shown, fromMetric);
    assert.ok(fromMetric.some(([, n]) => (n as number) > 0));
    assert.equal(await page.$$eval('#chart rect', (r) => r.length), fromMetric.length);
    await shot(page, '08-expiry');
  });

  test('rotation: start with a confirmation, live progress and stuck nodes, abort with a confirmation', async () => {
    await page.goto(`${d.base}/rotation`);
    assert.equal(await text(page, '#rotation-state'), 'No rotation in progress.');
    await page.click('#rotate');
    await page.click('#confirm');
    assert.match(await text(page, '#rotation-state'), /A rotation is in progress: 0 of \d+ nodes converged/);
    const stuck = await page.$$eval('#stuck a', (as) => as.map((a) => (a as any).textContent));
    assert.ok(stuck.includes(worker), 'the worker has not renewed: it is listed as stuck');
    assert.match(await text(page, '#rate'), /nodes\/s/);
    await shot(page, '09-rotation');
    // the worker renews: the page follows without a reload
    const r = await cliAsync(['agent', '--state-dir', workerDir, '--renew-now']);
    assert.equal(r.code, 0, r.stderr);
    await page.waitForFunction((w) => !Array.from((globalThis as any).document.querySelectorAll('#stuck a')).some((a: any) => a.textContent === w), worker, { timeout: 15_000 });
    await page.click('#abort');
    await page.click('#confirm');
    assert.equal(await text(page, '#rotation-state'), 'No rotation in progress.');
    assert.match(await text(page, '#last-rotation'), /aborted/);
    const s = (await api(c.url, 'GET', '/v1/ca/rotation', undefined, adminId(c.dir))).body;
    assert.equal(s.rotation.state, 'aborted');
  });

  test('tokens: the join command is hidden until clicked; rotating needs a confirmation and the old token stops working', async () => {
    const old = JSON.parse(fs.readFileSync(path.join(c.dir, 'admin/tokens.json'), 'utf8')).worker;
    await page.goto(`${d.base}/tokens`);
    assert.equal(await page.isVisible('#worker-command'), false);
    await page.click('#worker-token summary');
    assert.equal(await page.isVisible('#worker-command'), true);
    assert.match(await text(page, '#worker-command'), new RegExp(`cairn join --token ${old} `));
    await shot(page, '10-tokens');
    await page.click('#rotate-worker');
    await page.click('#confirm');
    assert.match(await text(page, '#flash'), /worker join token was rotated/);
    const now = JSON.parse(fs.readFileSync(path.join(c.dir, 'admin/tokens.json'), 'utf8')).worker;
    assert.notEqual(now, old);
    assert.equal(fs.statSync(path.join(c.dir, 'admin/tokens.json')).mode & 0o777, 0o600);
    const refused = await cliAsync(['join', '--token', old, '--state-dir', path.join(tmp, 'w-old'), c.url]);
    assert.notEqual(refused.code, 0);
    const ok = await join({ ...c, tokens: { ...c.tokens, worker: now } }, 'worker', path.join(tmp, 'w-new'));
    assert.ok(ok);
  });

  test('audit: the actions taken are logged, filterable', async () => {
    await page.goto(`${d.base}/audit`);
    const actions = await page.$$eval('#audit td.action', (tds) => tds.map((t) => (t as any).textContent));
    for (const a of ['node.promote', 'certificate.revoke', 'node.remove', 'token.rotate']) assert.ok(actions.includes(a), `${a} in ${actions}`);
    await shot(page, '11-audit');
    await page.fill('#action', 'node.');
    await page.click('#filter');
    const filtered = await page.$$eval('#audit td.action', (tds) => tds.map((t) => (t as any).textContent));
    assert.deepEqual([...new Set(filtered)].sort(), ['node.promote', 'node.remove']);
  });

  test('XSS: values from the URL and from API answers are escaped, never run', async () => {
    const dialogs: string[] = [];
    page.on('dialog', (dl) => {
      dialogs.push(dl.message());
      void dl.dismiss();
    });
    const payloads = ['"><img src=x onerror="window.__xss=1">', '<script>window.__xss=1</script>', "'><svg onload=window.__xss=1>"];
    for (const x of payloads) {
      const e = encodeURIComponent(x);
      for (const p of [`/nodes/${e}`, `/nodes/${e}/promote`, `/certificates/${e}`, `/certificates?node=${e}`, `/audit?action=${e}`, `/audit?actor=${e}`, `/nodes?q=${e}`, `/nodes?sort=${e}`]) {
        await page.goto(`${d.base}${p}`);
        assert.equal(await page.evaluate('window.__xss'), undefined, p);
        assert.equal(await page.$('img[src=x], main script, svg[onload]'), null, p);
        const raw = await req(d.base, 'GET', p, { cookie });
        for (const bad of ['<img src=x', '<script>window', '<svg onload']) assert.ok(!raw.body.includes(bad), `${p} reflects ${bad}`);
      }
    }
    // the API's own message reflects the bad ID: shown as text
    await page.goto(`${d.base}/nodes/${encodeURIComponent(payloads[1])}`);
    assert.match(await text(page, '#error'), /<script>window\.__xss=1<\/script>/);
    assert.deepEqual(dialogs, []);
  });

  test('the API behind it: listing parameters are checked; overview and audit are for admins only', async () => {
    const admin = adminId(c.dir);
    for (const q of ['sort=bogus', 'order=up', 'role=ca', 'status=gone', 'q=%3Cx%3E', `q=${'a'.repeat(26)}`]) {
      const r = await api(c.url, 'GET', `/v1/nodes?${q}`, undefined, admin);
      assert.equal(r.status, 400, q);
    }
    for (const q of ['expiring=0', 'expiring=x', 'expiring=40000']) assert.equal((await api(c.url, 'GET', `/v1/certificates?${q}`, undefined, admin)).status, 400, q);
    for (const q of ['action=%3Cx%3E', 'actor=a%20b']) assert.equal((await api(c.url, 'GET', `/v1/audit?${q}`, undefined, admin)).status, 400, q);
    const nodeCert = { key: fs.readFileSync(path.join(workerDir, 'node.key'), 'utf8'), cert: fs.readFileSync(path.join(workerDir, 'node.crt'), 'utf8'), ca: admin.ca };
    for (const p of ['/v1/overview', '/v1/audit']) {
      assert.equal((await api(c.url, 'GET', p)).status, 401, p);
      assert.equal((await api(c.url, 'GET', p, undefined, nodeCert)).status, 403, p);
    }
    const asc = await api(c.url, 'GET', '/v1/nodes?sort=expiry&limit=1', undefined, admin);
    const rest = await api(c.url, 'GET', `/v1/nodes?sort=expiry&limit=1000&after=${asc.body.next}`, undefined, admin);
    const exp = [...asc.body.nodes, ...rest.body.nodes].map((n: any) => (n.certificate ? Date.parse(n.certificate.notAfter) : 0));
    assert.deepEqual(exp, [...exp].sort((a, b) => a - b), 'sorted by expiry across pages');
  });

  test('log out ends the session', async () => {
    await page.goto(`${d.base}/`);
    await page.click('header button[type=submit]');
    assert.equal((await page.goto(`${d.base}/`))?.status(), 401);
    assert.equal((await req(d.base, 'GET', '/', { cookie })).status, 401);
  });
});

describe('cairn dashboard with a bundle that is not an admin\'s', () => {
  let c: Cluster;
  let d: Dash;
  let nodeId: string;
  before(async () => {
    c = await startCluster('dash-nonadmin');
    const tmp = tmpDir();
    const nd = path.join(tmp, 'n');
    nodeId = await join(c, 'worker', nd);
    // the node's own identity, laid out as a bundle
    const bundle = path.join(tmp, 'bundle');
    fs.mkdirSync(bundle, { mode: 0o700 });
    fs.copyFileSync(path.join(nd, 'ca.crt'), path.join(bundle, 'ca.pem'));
    fs.copyFileSync(path.join(nd, 'node.crt'), path.join(bundle, 'cert.pem'));
    fs.copyFileSync(path.join(nd, 'node.key'), path.join(bundle, 'key.pem'));
    fs.chmodSync(path.join(bundle, 'key.pem'), 0o600);
    d = await startDash(['--bundle', bundle, '--server', c.url]);
  });
  after(async () => {
    await d?.bg.stop();
    await c?.cleanup();
  });

  test('it can look at nothing and change nothing: the API refuses it as it refuses the CLI', async () => {
    const { ctx, page, cookie } = await loggedIn(browser, d, 403);
    try {
      for (const p of ['/', '/nodes', `/nodes/${nodeId}`, '/certificates', '/audit']) {
        const r = await page.goto(`${d.base}${p}`);
        assert.equal(r?.status(), 403, p);
        assert.match(await text(page, '#error'), /admin client certificate/);
      }
      const csrf = await page.getAttribute('input[name=_csrf]', 'value');
      for (const p of [`/nodes/${nodeId}/promote`, `/nodes/${nodeId}/remove`, '/tokens/worker/rotate']) {
        const r = await req(d.base, 'POST', p, { cookie, body: `_csrf=${csrf}` });
        assert.equal(r.status, 403, p);
      }
      const n = (await api(c.url, 'GET', `/v1/nodes/${nodeId}`, undefined, adminId(c.dir))).body;
      assert.equal(n.role, 'worker');
      assert.equal(n.status, 'active');
      const cli = await cliAsync(['token', 'worker', '--rotate', '--state-dir', c.dir]);
      assert.equal(cli.code, 0, 'the admin bundle still works');
    } finally {
      await ctx.close();
    }
  });
});

describe('cairn dashboard follows the endpoint list', () => {
  test('an endpoint that does not answer is passed over (SQLite cluster)', async (t) => {
    const c = await startCluster('dash-failover');
    t.after(() => c.cleanup());
    const dead = `https://127.0.0.1:${await freePort()}`;
    const d = await startDash(['--state-dir', c.dir, '--server', dead, '--server', c.url]);
    t.after(() => d.bg.stop());
    const { ctx, page } = await loggedIn(browser, d);
    t.after(() => ctx.close());
    assert.equal(await text(page, '#endpoint'), c.url);
    assert.equal((await page.goto(`${d.base}/nodes`))?.status(), 200);
  });

  test('a replica dies: the pages come from the next one (two replicas on PostgreSQL)', async (t) => {
    let db;
    try {
      db = await createDb();
    } catch (e) {
      t.skip(`PostgreSQL is not reachable at ${PG_ADMIN_URL}: ${(e as Error).message}`);
      return;
    }
    t.after(() => db.drop());
    const c = await startCluster('dash-ha', { store: db.url });
    t.after(() => c.cleanup());
    const unlock = path.join(c.dir, 'unlock.key');
    const r2 = await addReplica(db.url, unlock);
    t.after(() => r2.cleanup());
    const d = await startDash(['--state-dir', c.dir, '--server', c.url, '--server', r2.url]);
    t.after(() => d.bg.stop());
    const { ctx, page } = await loggedIn(browser, d);
    t.after(() => ctx.close());
    assert.equal(await text(page, '#endpoint'), c.url);
    assert.equal(await page.$$eval('#replicas tr', (r) => r.length - 1), 2);
    await c.kill();
    const r = await page.goto(`${d.base}/nodes`);
    assert.equal(r?.status(), 200);
    assert.equal(await text(page, '#endpoint'), r2.url);
    await page.goto(`${d.base}/`);
    assert.equal(await text(page, '#endpoint'), r2.url);
  });
});

const N = 10_000;
const nid = (i: number) => `d${i.toString(36).padStart(24, '0')}`;
const sid = (i: number) => `6E${i.toString(16).toUpperCase().padStart(30, '0')}`;

/** N nodes with a current certificate each, written straight into the SQLite store. */
async function seed(dir: string, pem: string): Promise<void> {
  const store = await openStore('sqlite', path.join(dir, 'cairn.db'), { migrate: false });
  const base = Date.now() - 3_600_000;
  try {
    for (let start = 0; start < N; start += 1000) {
      const idx = Array.from({ length: 1000 }, (_, j) => start + j);
      await store.db.transaction().execute(async (trx) => {
        await trx
          .insertInto('nodes')
          .values(idx.map((i) => ({ id: nid(i), role: i % 10 ? 'worker' : 'manager', status: i % 97 ? 'active' : 'removed', created_at: base + i, updated_at: base + i, current_serial: sid(i), previous_serial: null, renewed_at: base + i, renew_budget: null, renew_budget_at: null })))
          .execute();
        await trx
          .insertInto('certificates')
          .values(idx.map((i) => ({
            serial: sid(i), kind: 'node', node_id: nid(i), role: i % 10 ? 'worker' : 'manager', subject: `CN=${nid(i)}`, issuer_key_id: 'ab', not_before: base,
            not_after: base + ((i * 7919) % 90) * 86_400_000 + 7_200_000, status: 'good', revoked_at: null, revocation_reason: null, cert_pem: pem, created_at: base + i, replica_id: null,
          })))
          .execute();
      });
    }
  } finally {
    await store.close();
  }
}

describe(`cairn dashboard with ${N.toLocaleString('en')} nodes`, () => {
  let c: Cluster;
  let d: Dash;
  before(async () => {
    c = await startCluster('dash-10k');
    await seed(c.dir, fs.readFileSync(path.join(c.dir, 'admin/cert.pem'), 'utf8'));
    d = await startDash(['--state-dir', c.dir]);
  });
  after(async () => {
    await d?.bg.stop();
    await c?.cleanup();
  });

  test('every page loads in under 300 ms (best of 3, in Chromium, until the load event)', async (t) => {
    const { ctx, page } = await loggedIn(browser, d);
    t.after(() => ctx.close());
    const pages = [
      '/', '/nodes', '/nodes?sort=expiry&order=asc', '/nodes?sort=renewed&order=desc', `/nodes?q=${nid(4321).slice(0, 22)}`, '/nodes?role=manager&status=active&sort=id',
      `/nodes/${nid(5000)}`, '/certificates', '/certificates?kind=node&status=good&expiring=30', `/certificates?node=${nid(9999)}`, `/certificates/${sid(42)}`,
      '/expiry', '/rotation', '/tokens', '/audit',
    ];
    // the second page of the default listing, through the cursor
    await page.goto(`${d.base}/nodes`);
    pages.push(new URL((await page.getAttribute('#next', 'href'))!, d.base).pathname + new URL((await page.getAttribute('#next', 'href'))!, d.base).search);
    const times: [string, number][] = [];
    for (const p of pages) {
      let best = Infinity;
      for (let i = 0; i < 3; i++) {
        const t0 = performance.now();
        const r = await page.goto(`${d.base}${p}`, { waitUntil: 'load' });
        const ms = performance.now() - t0;
        assert.equal(r?.status(), 200, `${p}: ${await page.textContent('main')}`);
        best = Math.min(best, ms);
      }
      times.push([p, Math.round(best)]);
    }
    for (const [p, ms] of times) t.diagnostic(`${String(ms).padStart(4)} ms  ${p}`);
    for (const [p, ms] of times) assert.ok(ms < 300, `${p} took ${ms} ms`);
    // the numbers are those of 10,000 nodes
    await page.goto(`${d.base}/`);
    assert.equal(await text(page, '#nodes-active'), String(N - Math.ceil(N / 97)));
    await page.goto(`${d.base}/nodes?sort=expiry&order=asc`);
    assert.equal(await page.$$eval('#nodes tr[data-node]', (r) => r.length), 50);
    await shot(page, '12-nodes-10000');
    await page.goto(`${d.base}/expiry`);
    await shot(page, '13-expiry-10000');
  });
});
