/**
 * The dashboard's style sheet and script, compiled into the package: nothing is fetched from
 * anywhere at run time. The script is small on purpose (live regions and copy buttons); every
 * page works without it. Served from /static/ under a CSP that allows only same-origin
 * scripts and styles (no inline script, no inline style).
 */
export const APP_CSS = `
:root { --fg: #1d232b; --muted: #5b6672; --line: #d9dee4; --bg: #f6f7f9; --accent: #1f5fbf; --bad: #b3261e; --warn: #9a6700; --ok: #1a7f37; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: center; gap: 18px; padding: 10px 20px; background: #14202e; color: #fff; }
header .brand { font-weight: 700; letter-spacing: .5px; }
header nav a { color: #cfe0f5; text-decoration: none; margin-right: 14px; }
header nav a.on { color: #fff; border-bottom: 2px solid #fff; }
header .where { margin-left: auto; font-size: 12px; color: #b8c7d9; }
header form { margin: 0; }
header button { background: transparent; color: #cfe0f5; border: 1px solid #4a5d73; border-radius: 4px; padding: 2px 8px; cursor: pointer; }
main { padding: 16px 20px 40px; max-width: 1400px; }
h1 { font-size: 20px; margin: 4px 0 14px; }
h2 { font-size: 16px; margin: 22px 0 8px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; min-width: 160px; }
.card .n { font-size: 24px; font-weight: 600; }
.card .l { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef1f4; font-weight: 600; white-space: nowrap; }
th a { color: inherit; }
time, a.mono, .when { white-space: nowrap; }
a.mono { word-break: normal; }
td.mono, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; word-break: break-all; }
a { color: var(--accent); }
.muted { color: var(--muted); }
.bad { color: var(--bad); font-weight: 600; }
.warn { color: var(--warn); font-weight: 600; }
.ok { color: var(--ok); font-weight: 600; }
form.filters { display: flex; flex-wrap: wrap; gap: 8px; align-items: end; margin: 0 0 12px; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
input, select, button { font: inherit; padding: 4px 6px; }
button.primary { background: var(--accent); color: #fff; border: 0; border-radius: 4px; padding: 6px 14px; cursor: pointer; }
button.danger { background: var(--bad); color: #fff; border: 0; border-radius: 4px; padding: 6px 14px; cursor: pointer; }
.actions { display: flex; gap: 8px; margin: 12px 0; }
.actions a.button { display: inline-block; padding: 5px 12px; border: 1px solid var(--line); border-radius: 4px; background: #fff; text-decoration: none; }
.pager { margin: 10px 0; display: flex; gap: 14px; }
.flash { background: #e6f4ea; border: 1px solid #b7dfc3; padding: 8px 12px; border-radius: 4px; margin-bottom: 12px; }
.error { background: #fdecea; border: 1px solid #f3c2bd; padding: 10px 14px; border-radius: 4px; }
.confirm { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 16px; max-width: 720px; }
pre { background: #fff; border: 1px solid var(--line); padding: 10px; overflow-x: auto; font-size: 12px; }
dl.kv { display: grid; grid-template-columns: 220px 1fr; gap: 4px 12px; background: #fff; border: 1px solid var(--line); padding: 10px 14px; margin: 0; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; word-break: break-all; }
details summary { cursor: pointer; color: var(--accent); }
svg.chart text { font-size: 12px; fill: #1d232b; }
svg.chart rect.bar { fill: #1f5fbf; }
svg.chart rect.bar.soon { fill: #b3261e; }
svg.chart rect.bar.near { fill: #c77c02; }
`;

export const APP_JS = `(function () {
  'use strict';
  // live regions: <main data-refresh="5"> is re-rendered from the server every 5 seconds
  var live = document.querySelector('[data-refresh]');
  if (live) {
    var every = Math.max(2, Number(live.getAttribute('data-refresh')) || 5) * 1000;
    var tick = function () {
      var u = new URL(window.location.href);
      u.searchParams.set('_fragment', '1');
      fetch(u.toString(), { credentials: 'same-origin', headers: { accept: 'text/html' } })
        .then(function (r) { if (!r.ok) throw new Error('HTTP ' + r.status); return r.text(); })
        .then(function (t) {
          live.innerHTML = t; // server-rendered, every value escaped there
          live.setAttribute('data-updated', new Date().toISOString());
          live.removeAttribute('data-stale');
        })
        .catch(function () { live.setAttribute('data-stale', '1'); })
        .then(function () { setTimeout(tick, every); });
    };
    setTimeout(tick, every);
  }
  // copy buttons: <button data-copy="element-id">
  document.addEventListener('click', function (e) {
    var b = e.target && e.target.closest ? e.target.closest('button[data-copy]') : null;
    if (!b) return;
    var el = document.getElementById(b.getAttribute('data-copy'));
    if (el && navigator.clipboard) navigator.clipboard.writeText(el.textContent || '');
  });
})();
`;
