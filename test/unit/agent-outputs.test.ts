/**
 * Unit tests of the agent's side for other programs: output files (--write), hooks (--exec,
 * --reload-signal), the health behind `cairn agent status` and the Prometheus textfile, and
 * the systemd units. Real files, real child processes, real signals, the real CLI; the CA is
 * the small in-process one of agent-fixtures (real HTTPS).
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { randomId, toPem } from '../../src/pki/index.js';
import { parsePkcs12 } from '../../src/pki/pkcs12.js';
import { runAgent } from '../../src/agent/agent.js';
import { closeAgents } from '../../src/agent/client.js';
import { HookResult, Hooks, parseSignal, signalTargets } from '../../src/agent/hooks.js';
import { parseOutputSpec, parseOutputSpecs, writeOutputs } from '../../src/agent/outputs.js';
import { nodePaths, readNodeIdentity } from '../../src/agent/node-state.js';
import { health, metricsText, recordFailure, recordSuccess } from '../../src/agent/status.js';
import { systemdQuote } from '../../src/cli/systemd.js';
import { CairnError } from '../../src/util/errors.js';
import { FakeCa, fakeCa, HOUR, makeCrl, makeNodeDir, makeRoot } from './agent-fixtures.js';
import { fileMode, run, runCli, startBackground, tmpDir } from '../helpers.js';

const clusterId = randomId();
const root = makeRoot();

const usage = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof CairnError, String(e));
    assert.equal(e.exitCode, 2, e.message);
    assert.match(e.message, re);
    return true;
  });

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function captureLogs() {
  const logs: any[] = [];
  return { logs, logger: async () => (await import('pino')).default({ level: 'debug' }, { write: (s: string) => logs.push(JSON.parse(s)) }) };
}

// ---------------------------------------------------------------------------------------------

describe('output files (--write)', () => {
  test('bad specs are usage errors that say what is wrong, before anything is written', (t) => {
    const dir = tmpDir(t);
    const pw = path.join(dir, 'pw');
    fs.writeFileSync(pw, 'secret\n', { mode: 0o600 });
    const open = path.join(dir, 'open-pw');
    fs.writeFileSync(open, 'secret\n', { mode: 0o644 });
    const nodeDir = path.join(dir, 'node');
    usage(() => parseOutputSpec('pem=/tmp/x'), /unknown format "pem".*cert, key, ca, fullchain, bundle, pkcs12/);
    usage(() => parseOutputSpec('/tmp/x'), /expected FORMAT=PATH/);
    usage(() => parseOutputSpec('cert='), /no path/);
    usage(() => parseOutputSpec(`cert=${dir}/missing/c.pem`), /directory .*missing does not exist/);
    usage(() => parseOutputSpec(`key=${dir}/k.pem,mode=0644`), /holds the private key: mode 0644 lets any user read it/);
    usage(() => parseOutputSpec(`bundle=${dir}/b.pem,mode=0604`), /holds the private key/);
    usage(() => parseOutputSpec(`cert=${dir}/c.pem,mode=0755`), /executable/);
    usage(() => parseOutputSpec(`cert=${dir}/c.pem,mode=rw`), /mode must be octal/);
    usage(() => parseOutputSpec(`cert=${dir}/c.pem,colour=blue`), /unknown option "colour"/);
    usage(() => parseOutputSpec(`pkcs12=${dir}/n.p12`), /pkcs12 needs password-file=F/);
    usage(() => parseOutputSpec(`pkcs12=${dir}/n.p12,password-file=${dir}/nope`), /cannot read key file/);
    usage(() => parseOutputSpec(`pkcs12=${dir}/n.p12,password-file=${open}`), /group or others can access it/);
    usage(() => parseOutputSpec(`cert=${dir}/c.pem,password-file=${pw}`), /password-file goes with pkcs12 only/);
    usage(() => parseOutputSpec(`cert=${dir}/c.pem,owner=no-such-user-here`), /no user named "no-such-user-here"/);
    usage(() => parseOutputSpec(`cert=${dir}/c.pem,owner=root:no-such-group-here`), /no group named "no-such-group-here"/);
    usage(() => parseOutputSpec(`cert=${dir}/c.pem,owner=a b`), /owner must be user or user:group/);
    fs.mkdirSync(nodeDir);
    usage(() => parseOutputSpec(`cert=${nodeDir}/node.crt`, nodeDir), /one of cairn's own files/);
    usage(() => parseOutputSpec(`key=${nodeDir}/node.key`, nodeDir), /one of cairn's own files/);
    usage(() => parseOutputSpecs([`cert=${dir}/c.pem`, `fullchain=${dir}/c.pem`]), /given twice/);
    assert.deepEqual(fs.readdirSync(dir).sort(), ['node', 'open-pw', 'pw']);
    // what is accepted
    const ok = parseOutputSpec(`bundle=${dir}/b.pem,mode=0640,owner=0:0`);
    assert.deepEqual([ok.format, ok.mode, ok.owner?.uid, ok.owner?.gid], ['bundle', 0o640, 0, 0]);
    assert.equal(parseOutputSpec(`key=${dir}/k.pem`).mode, 0o600, 'key material is 0600 by default');
    assert.equal(parseOutputSpec(`pkcs12=${dir}/n.p12,password-file=${pw}`).mode, 0o600);
    assert.equal(parseOutputSpec(`cert=${dir}/c.pem`).mode, 0o644);
  });

  test('every format holds what it says, with its mode, whatever the umask; unchanged outputs are left alone', async (t) => {
    const dir = tmpDir(t);
    const nodeDir = path.join(dir, 'node');
    makeNodeDir(nodeDir, root, { role: 'worker', clusterId });
    const pw = path.join(dir, 'pw');
    fs.writeFileSync(pw, 'correct horse\n', { mode: 0o600 });
    const out = path.join(dir, 'out');
    fs.mkdirSync(out);
    const specs = parseOutputSpecs(
      [`cert=${out}/c.pem`, `key=${out}/k.pem`, `ca=${out}/ca.pem`, `fullchain=${out}/f.pem`, `bundle=${out}/b.pem,mode=0640`, `pkcs12=${out}/n.p12,password-file=${pw}`],
      nodeDir,
    );
    const id = readNodeIdentity(nodeDir);
    const old = process.umask(0o077);
    let r;
    try {
      r = await writeOutputs(specs, id);
    } finally {
      process.umask(old);
    }
    assert.deepEqual(r.map((x) => x.written), [true, true, true, true, true, true]);
    const read = (f: string) => fs.readFileSync(path.join(out, f), 'utf8');
    assert.equal(new X509Certificate(read('c.pem')).serialNumber.toUpperCase(), id.leaf.serialHex);
    assert.equal(read('c.pem').match(/BEGIN CERTIFICATE/g)!.length, 1, 'cert is the leaf alone');
    assert.equal(read('k.pem'), id.keyPem);
    assert.equal(read('ca.pem'), id.caPem);
    assert.equal(read('f.pem'), id.certPem);
    assert.equal(read('b.pem'), id.certPem + id.keyPem);
    assert.deepEqual(
      ['c.pem', 'k.pem', 'ca.pem', 'f.pem', 'b.pem', 'n.p12'].map((f) => fileMode(path.join(out, f))),
      [0o644, 0o600, 0o644, 0o644, 0o640, 0o600],
      'modes exactly as asked, although the umask was 077',
    );
    const entries = await parsePkcs12(fs.readFileSync(path.join(out, 'n.p12')), 'correct horse');
    const withKey = entries.filter((e) => e.key);
    assert.equal(withKey.length, 1);
    assert.equal(withKey[0].friendlyName, 'cairn-node');
    assert.ok(withKey[0].certDer.equals(id.chain[0]));
    assert.ok(withKey[0].key!.export({ type: 'pkcs8', format: 'der' }).equals(id.key.export({ type: 'pkcs8', format: 'der' })));
    assert.ok(entries.some((e) => e.certDer.equals(root.der)), 'the root is in the PKCS#12 file');

    // the same identity again: nothing is rewritten (same inodes), no temp file is left
    const inodes = fs.readdirSync(out).map((f) => fs.statSync(path.join(out, f)).ino);
    const again = await writeOutputs(specs, readNodeIdentity(nodeDir));
    assert.deepEqual(again.map((x) => x.written), [false, false, false, false, false, false]);
    assert.deepEqual(fs.readdirSync(out).map((f) => fs.statSync(path.join(out, f)).ino), inodes);
    // a wrong mode is repaired; a changed file is replaced
    fs.chmodSync(path.join(out, 'b.pem'), 0o600);
    fs.writeFileSync(path.join(out, 'c.pem'), 'tampered');
    const fixed = await writeOutputs(specs, readNodeIdentity(nodeDir));
    assert.deepEqual(fixed.filter((x) => x.written).map((x) => x.format), ['cert', 'bundle']);
    assert.equal(fileMode(path.join(out, 'b.pem')), 0o640);
    assert.deepEqual(fs.readdirSync(out).sort(), ['b.pem', 'c.pem', 'ca.pem', 'f.pem', 'k.pem', 'n.p12']);
  });

  test('owner= gives the file to that user and group before it appears', async (t) => {
    if (process.getuid?.() !== 0) return t.skip('needs root to chown');
    const dir = tmpDir(t);
    const nodeDir = path.join(dir, 'node');
    makeNodeDir(nodeDir, root, { role: 'worker', clusterId });
    const [o] = parseOutputSpecs([`bundle=${dir}/b.pem,mode=0640,owner=nobody:nogroup`]);
    await writeOutputs([o], readNodeIdentity(nodeDir));
    const st = fs.statSync(path.join(dir, 'b.pem'));
    assert.deepEqual([st.uid, st.gid, st.mode & 0o777], [o.owner!.uid, o.owner!.gid, 0o640]);
    assert.notEqual(st.uid, 0);
  });

  test('a file that cannot be written is an error naming it; the ones before it stay written', async (t) => {
    const dir = tmpDir(t);
    const nodeDir = path.join(dir, 'node');
    makeNodeDir(nodeDir, root, { role: 'worker', clusterId });
    fs.mkdirSync(path.join(dir, 'gone'));
    const specs = parseOutputSpecs([`cert=${dir}/c.pem`, `ca=${dir}/gone/ca.pem`]);
    fs.rmdirSync(path.join(dir, 'gone'));
    await assert.rejects(writeOutputs(specs, readNodeIdentity(nodeDir)), (e: unknown) => e instanceof CairnError && /ca output: cannot write .*gone\/ca.pem: no such file/.test(e.message));
    assert.ok(fs.existsSync(path.join(dir, 'c.pem')));
  });
});

// ---------------------------------------------------------------------------------------------

const ctx = (event: 'renewed' | 'trust-changed' = 'renewed', serial = 'AB') => ({
  event, nodeId: 'n1', role: 'worker', serial, notAfter: new Date(Date.UTC(2030, 0, 1)), stateDir: '/s', cert: '/s/node.crt', key: '/s/node.key', ca: '/s/ca.crt',
});

describe('hooks (--exec, --reload-signal)', () => {
  test('the command gets the event and the identity in its environment; its exit status and stderr are reported', async (t) => {
    const dir = tmpDir(t);
    const { logs, logger } = captureLogs();
    const results: HookResult[] = [];
    const h = new Hooks({ exec: `env | grep '^CAIRN_' | sort > ${dir}/env; echo 'it went fine' >&2`, logger: await logger(), onResult: (r) => results.push(r) });
    assert.equal(h.trigger(ctx('trust-changed', 'C0FFEE')), 'started');
    await h.idle();
    assert.deepEqual(fs.readFileSync(path.join(dir, 'env'), 'utf8').trim().split('\n'), [
      'CAIRN_CA=/s/ca.crt', 'CAIRN_CERT=/s/node.crt', 'CAIRN_EVENT=trust-changed', 'CAIRN_KEY=/s/node.key', 'CAIRN_NODE_ID=n1',
      'CAIRN_NOT_AFTER=2030-01-01T00:00:00.000Z', 'CAIRN_ROLE=worker', 'CAIRN_SERIAL=C0FFEE', 'CAIRN_STATE_DIR=/s',
    ]);
    assert.equal(results.length, 1);
    assert.equal(results[0].ok, true);
    assert.equal(results[0].exitCode, 0);
    const done = logs.find((l) => l.msg === 'hook succeeded');
    assert.equal(done.stderrTail, 'it went fine');
    assert.equal(done.event, 'trust-changed');
  });

  test('a failing hook is logged with its status and stderr and retried with backoff until it succeeds', async (t) => {
    const dir = tmpDir(t);
    const count = path.join(dir, 'count');
    const { logs, logger } = captureLogs();
    // fails twice, then succeeds
    const h = new Hooks({ exec: `n=$(cat ${count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > ${count}; [ $n -ge 3 ] || { echo "reload failed ($n)" >&2; exit 7; }`, baseBackoffMs: 20, logger: await logger() });
    h.trigger(ctx());
    await h.idle();
    assert.equal(fs.readFileSync(count, 'utf8').trim(), '3');
    const failed = logs.filter((l) => l.msg === 'hook failed; will retry');
    assert.equal(failed.length, 2);
    assert.deepEqual(failed.map((l) => [l.exitCode, l.stderrTail, l.attempt]), [[7, 'reload failed (1)', 1], [7, 'reload failed (2)', 2]]);
    assert.ok(failed[1].retryInMs >= 20 && failed[1].retryInMs <= 40, 'the second pause doubles (20–40 ms with jitter)');
    assert.match(failed[0].err, /exited with status 7/);
    assert.equal(logs.filter((l) => l.msg === 'hook succeeded').length, 1);
    assert.deepEqual([h.stats.runs, h.stats.failures], [3, 2]);
  });

  test('a hook that hangs past its deadline is killed with everything it started, and counts as failed', async (t) => {
    const dir = tmpDir(t);
    const { logs, logger } = captureLogs();
    const results: HookResult[] = [];
    const h = new Hooks({ exec: `sleep 30 & echo $! > ${dir}/bg; sleep 30`, timeoutMs: 300, retry: false, logger: await logger(), onResult: (r) => results.push(r) });
    const t0 = Date.now();
    h.trigger(ctx());
    await h.idle();
    assert.ok(Date.now() - t0 < 5000, 'ended at its deadline, not after 30 s');
    assert.equal(results[0].timedOut, true);
    assert.equal(results[0].ok, false);
    assert.match(results[0].error!, /ran past its 300 ms deadline and was killed/);
    const bg = Number(fs.readFileSync(path.join(dir, 'bg'), 'utf8'));
    await until(() => {
      try {
        process.kill(bg, 0);
        return false;
      } catch {
        return true;
      }
    }, 'the background sleep to be killed too', 3000);
    assert.ok(logs.some((l) => l.msg === 'hook failed' && l.timedOut === true));
  });

  test('never two runs at once: events during a run are folded into one more run, "renewed" winning', async (t) => {
    const dir = tmpDir(t);
    const trace = path.join(dir, 'trace');
    const { logs, logger } = captureLogs();
    const h = new Hooks({ exec: `echo "start $CAIRN_EVENT $CAIRN_SERIAL" >> ${trace}; sleep 0.4; echo "end $CAIRN_SERIAL" >> ${trace}`, logger: await logger() });
    assert.equal(h.trigger(ctx('renewed', 'S1')), 'started');
    await sleep(100);
    assert.equal(h.trigger(ctx('renewed', 'S2')), 'queued');
    assert.equal(h.trigger(ctx('trust-changed', 'S3')), 'queued');
    await h.idle();
    assert.deepEqual(fs.readFileSync(trace, 'utf8').trim().split('\n'), ['start renewed S1', 'end S1', 'start renewed S3', 'end S3']);
    assert.equal(logs.filter((l) => l.msg === 'the hook is still running: it runs again for this event when it ends').length, 2);
  });

  test('--reload-signal sends the signal to the process in the pidfile; a missing or stale pidfile fails the run', async (t) => {
    const dir = tmpDir(t);
    const pidfile = path.join(dir, 'app.pid');
    const app = startBackground(process.execPath, ['-e', `process.on('SIGHUP', () => console.log('reloading')); console.log('ready'); setInterval(() => {}, 1000)`], { t });
    await app.waitFor(/ready/);
    fs.writeFileSync(pidfile, `${app.proc.pid}\n`);
    const results: HookResult[] = [];
    const h = new Hooks({ signals: signalTargets(['hup'], [pidfile]), retry: false, onResult: (r) => results.push(r) });
    h.trigger(ctx());
    await h.idle();
    await app.waitFor(/reloading/);
    assert.equal(results[0].ok, true);

    fs.rmSync(pidfile);
    h.trigger(ctx());
    await h.idle();
    assert.equal(results[1].ok, false);
    assert.match(results[1].error!, /SIGHUP not sent: cannot read pidfile .*app.pid: no such file/);
    fs.writeFileSync(pidfile, 'garbage');
    h.trigger(ctx());
    await h.idle();
    assert.match(results[2].error!, /does not hold a process id/);
    await app.stop();
    fs.writeFileSync(pidfile, `${app.proc.pid}\n`);
    h.trigger(ctx());
    await h.idle();
    assert.match(results[3].error!, /no process with the id in/);
  });

  test('signal and pidfile flags are checked', () => {
    assert.equal(parseSignal('usr2'), 'SIGUSR2');
    assert.equal(parseSignal('SIGHUP'), 'SIGHUP');
    usage(() => parseSignal('BOGUS'), /not a signal/);
    usage(() => parseSignal('KILL'), /not a signal to reload with/);
    usage(() => signalTargets(['HUP', 'USR1'], ['/a']), /one --pidfile for each --reload-signal/);
  });
});

// ---------------------------------------------------------------------------------------------

describe('the agent with outputs and hooks', () => {
  let ca: FakeCa;
  before(async () => {
    ca = await fakeCa(root, clusterId);
  });
  after(async () => {
    closeAgents();
    await ca.close();
  });

  test('renewals go on while the hook fails and hangs; outputs are written before each run; logs say what happened', async (t) => {
    const dir = tmpDir(t);
    const nodeDir = path.join(dir, 'node');
    const first = makeNodeDir(nodeDir, root, { role: 'worker', clusterId, endpoints: [ca.url] });
    // the CA says "renew now" at every poll: a renewal every ~100 ms
    ca.caExtra = { node: { id: first.config.nodeId, role: 'worker', renew: true } };
    t.after(() => (ca.caExtra = {}));
    const trace = path.join(dir, 'trace');
    const outputs = parseOutputSpecs([`bundle=${dir}/b.pem`], nodeDir);
    const { logs, logger } = captureLogs();
    const ac = new AbortController();
    const serials: string[] = [];
    const metrics = path.join(dir, 'node.prom');
    const agent = runAgent(nodeDir, {
      signal: ac.signal,
      logger: await logger(),
      caRefreshMs: 100,
      baseBackoffMs: 10,
      outputs,
      metricsFile: metrics,
      // the bundle the hook sees is the renewed one; then it hangs past its deadline
      hooks: { exec: `grep -c PRIVATE ${dir}/b.pem >/dev/null && openssl x509 -noout -serial -in ${dir}/b.pem | cut -d= -f2 >> ${trace}; sleep 10`, timeoutMs: 400, baseBackoffMs: 10 },
      onRenew: (r) => serials.push(r.serial),
    });
    await until(() => serials.length >= 4, 'four renewals', 15_000);
    ac.abort();
    await agent;
    const renewedLogs = logs.filter((l) => l.msg === 'certificate renewed');
    assert.ok(renewedLogs.length >= 4);
    for (const l of renewedLogs) {
      assert.deepEqual(l.outputs, [`bundle=${dir}/b.pem`], 'each renewal log says which outputs were written');
      assert.ok(['started', 'queued'].includes(l.hook), `the hook was ${l.hook}`);
    }
    assert.ok(renewedLogs.some((l) => l.hook === 'queued'), 'an event arrived while the hook was running');
    const hookFailed = logs.filter((l) => /^hook failed/.test(l.msg));
    assert.ok(hookFailed.length >= 1 && hookFailed.every((l) => l.timedOut === true), 'the hanging hook was killed at its deadline');
    // never two at once: every start follows the end of the previous run
    const order = logs.filter((l) => l.msg === 'hook started' || /^hook (failed|succeeded)/.test(l.msg)).map((l) => (l.msg === 'hook started' ? 'S' : 'E'));
    assert.match(order.join(''), /^(SE)+S?$/);
    // what the hook saw in the bundle was the current certificate each time (the first run:
    // the outputs did not exist at start, so they were written and the hook ran for them)
    const seen = fs.readFileSync(trace, 'utf8').trim().split('\n');
    assert.ok(seen.length >= 2 && seen.every((s) => [first.serial, ...serials].includes(s)), `${seen} among ${serials}`);
    assert.ok(seen.some((s) => serials.includes(s)), 'a run saw a renewed certificate');
    assert.equal(fs.readFileSync(`${dir}/b.pem`, 'utf8'), readNodeIdentity(nodeDir).certPem + readNodeIdentity(nodeDir).keyPem);
    assert.match(fs.readFileSync(metrics, 'utf8'), /^cairn_agent_hook_failures_total\{.*\} [1-9]/m);
  });

  test('at start the agent brings stale outputs up to date and runs the hook once', async (t) => {
    const dir = tmpDir(t);
    const nodeDir = path.join(dir, 'node');
    makeNodeDir(nodeDir, root, { role: 'worker', clusterId, endpoints: [ca.url] });
    fs.writeFileSync(`${dir}/c.pem`, 'old');
    const trace = path.join(dir, 'trace');
    const ac = new AbortController();
    const { logs, logger } = captureLogs();
    const agent = runAgent(nodeDir, { signal: ac.signal, logger: await logger(), outputs: parseOutputSpecs([`cert=${dir}/c.pem`]), hooks: { exec: `echo $CAIRN_EVENT >> ${trace}` } });
    await until(() => fs.existsSync(trace), 'the hook');
    ac.abort();
    await agent;
    assert.equal(fs.readFileSync(trace, 'utf8'), 'renewed\n');
    assert.equal(new X509Certificate(fs.readFileSync(`${dir}/c.pem`)).serialNumber.toUpperCase(), readNodeIdentity(nodeDir).leaf.serialHex);
    assert.ok(logs.some((l) => l.msg === 'outputs brought up to date'));
  });
});

// ---------------------------------------------------------------------------------------------

/** A Python 3 with prometheus_client (Debian: python3-prometheus-client, for /usr/bin/python3). */
async function promParse(text: string): Promise<Record<string, { type: string; value: number; labels: Record<string, string> }>> {
  const script = `
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out[s.name] = {"type": fam.type, "value": s.value, "labels": s.labels}
print(json.dumps(out))`;
  const tried: string[] = [];
  for (const py of ['/usr/bin/python3', 'python3']) {
    const r = await run(py, ['-c', script], { input: text }).catch((e) => ({ code: -1, stdout: '', stderr: String(e) }));
    if (r.code === 0) return JSON.parse(r.stdout);
    tried.push(`${py}: ${r.stderr.trim().split('\n').pop()}`);
  }
  throw new Error(`no Python with prometheus_client could parse the metrics (install python3-prometheus-client): ${tried.join('; ')}`);
}

describe('agent status and metrics', () => {
  test('health at each state, and the exit codes of "cairn agent status"', async (t) => {
    const dir = tmpDir(t);
    const fresh = path.join(dir, 'fresh');
    const f = makeNodeDir(fresh, root, { role: 'worker', clusterId });
    const late = path.join(dir, 'late'); // 10 h certificate, 9 h old: past 80%
    makeNodeDir(late, root, { role: 'worker', clusterId, lifetimeMs: 10 * HOUR, now: new Date(Date.now() - 8 * HOUR) });
    const expired = path.join(dir, 'expired');
    makeNodeDir(expired, root, { role: 'manager', clusterId, lifetimeMs: 2 * HOUR, now: new Date(Date.now() - 5 * HOUR) });
    const refused = path.join(dir, 'refused');
    const rf = makeNodeDir(refused, root, { role: 'worker', clusterId });
    recordFailure(refused, rf.serial, { code: 'node_removed', message: 'node x has been removed from the cluster' }, true);
    const revoked = path.join(dir, 'revoked');
    const rv = makeNodeDir(revoked, root, { role: 'worker', clusterId });
    fs.writeFileSync(nodePaths(revoked).crl, toPem('X509 CRL', makeCrl(root, [rv.serial], 3n)));
    const failing = path.join(dir, 'failing');
    const fl = makeNodeDir(failing, root, { role: 'worker', clusterId });
    recordFailure(failing, fl.serial, { code: 'unreachable', message: 'no CA answered' }, false);

    const cases: [string, string[], number, RegExp][] = [
      [fresh, [], 0, /^ok: worker .* valid for 8\d days/],
      [fresh, ['--warn-before', '100d'], 1, /^expiring: worker .* expires in 8\d days/],
      [late, [], 1, /^expiring: .*past the end of its renewal window .*is the agent running\?/],
      [late, ['--warn-before', '1h'], 0, /^ok:/],
      [expired, [], 2, /^expired: manager .* expired 3 hours ago/],
      [refused, [], 2, /^refused: .*node_removed.*has been removed/],
      [revoked, [], 2, /^revoked: .*on the cluster CRL/],
      [failing, [], 0, /^ok: .*the last 1 renewal attempt failed \(unreachable: no CA answered\)/],
      [path.join(dir, 'nothing'), [], 2, /^unusable: .*holds no node identity/],
    ];
    for (const [d, extra, code, re] of cases) {
      const r = await runCli(['agent', 'status', '--state-dir', d, ...extra]);
      assert.equal(r.code, code, `${path.basename(d)} ${extra.join(' ')}: ${r.stdout}${r.stderr}`);
      assert.match(r.stdout, re);
      assert.equal(r.stderr, '');
    }
    // a successful renewal clears a refusal recorded for an older certificate
    recordSuccess(refused, rf.serial);
    assert.equal(health(refused).state, 'ok');
    const j = await runCli(['agent', 'status', '--state-dir', fresh, '--json']);
    const h = JSON.parse(j.stdout);
    assert.deepEqual([h.state, h.exitCode, h.serial, h.nodeId], ['ok', 0, f.serial, f.config.nodeId]);
    const bad = await runCli(['agent', 'status', '--state-dir', fresh, '--warn-before', 'soon']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /^cairn: error: .*"soon" is not a duration/);
  });

  test('the metrics file is valid Prometheus text (read by prometheus_client) with expiry, last renewal and failures', async (t) => {
    const dir = tmpDir(t);
    const nodeDir = path.join(dir, 'node');
    const n = makeNodeDir(nodeDir, root, { role: 'worker', clusterId });
    recordSuccess(nodeDir, n.serial, new Date('2030-01-02T03:04:05Z'));
    recordFailure(nodeDir, n.serial, { code: 'unreachable', message: 'x' }, false);
    recordFailure(nodeDir, n.serial, { code: 'unreachable', message: 'y' }, false);
    const file = path.join(dir, 'cairn.prom');
    const r = await runCli(['agent', 'status', '--state-dir', nodeDir, '--metrics-file', file]);
    assert.equal(r.code, 0, r.stderr);
    const m = await promParse(fs.readFileSync(file, 'utf8'));
    const id = readNodeIdentity(nodeDir);
    assert.equal(m.cairn_node_certificate_expiry_timestamp_seconds.value, Math.floor(id.leaf.notAfter.getTime() / 1000));
    assert.deepEqual(m.cairn_node_certificate_expiry_timestamp_seconds.labels, { node_id: n.config.nodeId, role: 'worker', cluster_id: clusterId });
    assert.equal(m.cairn_agent_last_renewal_timestamp_seconds.value, Date.parse('2030-01-02T03:04:05Z') / 1000);
    assert.equal(m.cairn_agent_renewal_failures_total.value, 2);
    assert.equal(m.cairn_agent_renewal_failures_total.type, 'counter');
    assert.equal(m.cairn_agent_renewal_consecutive_failures.value, 2);
    assert.equal(m.cairn_node_status.value, 0);
    assert.equal(m.cairn_agent_refused.value, 0);
    // label values are escaped
    const text = metricsText({ ...health(nodeDir), nodeId: 'a"b\\c\nd' });
    assert.equal((await promParse(text)).cairn_node_status.labels.node_id, 'a"b\\c\nd');
  });
});

// ---------------------------------------------------------------------------------------------

describe('systemd units', () => {
  test('words are quoted for ExecStart, % and $ escaped', () => {
    assert.equal(systemdQuote('/usr/bin/node'), '/usr/bin/node');
    assert.equal(systemdQuote('bundle=/etc/h/n.pem,mode=0640'), 'bundle=/etc/h/n.pem,mode=0640');
    assert.equal(systemdQuote('systemctl reload haproxy'), '"systemctl reload haproxy"');
    assert.equal(systemdQuote('echo "$X" 100%'), '"echo \\"$$X\\" 100%%"');
    assert.equal(systemdQuote(''), '""');
  });

  test('the agent and serve units pass systemd-analyze verify, and a broken unit does not', async (t) => {
    const dir = tmpDir(t);
    const out = path.join(dir, 'out');
    fs.mkdirSync(out);
    const agent = await runCli(['agent', 'systemd-unit', '--state-dir', path.join(dir, 'node'), '--write', `bundle=${out}/n.pem,mode=0640`, '--exec', 'systemctl reload haproxy', '--reload-signal', 'HUP', '--pidfile', '/run/nginx.pid', '--metrics-file', '/var/lib/node_exporter/textfile/cairn.prom']);
    assert.equal(agent.code, 0, agent.stderr);
    const serve = await runCli(['serve', 'systemd-unit', '--state-dir', path.join(dir, 'ca'), '--user', 'root', '--environment-file', '/etc/cairn/env']);
    assert.equal(serve.code, 0, serve.stderr);
    for (const [name, text] of [['cairn-agent.service', agent.stdout], ['cairn.service', serve.stdout]]) {
      assert.match(text, /^Restart=on-failure$/m);
      assert.match(text, /^ProtectSystem=strict$/m);
      assert.match(text, /^NoNewPrivileges=yes$/m);
      const f = path.join(dir, name);
      fs.writeFileSync(f, text);
      const v = await run('systemd-analyze', ['verify', f]);
      assert.equal(v.code, 0, `${name}: ${v.stderr}`);
      assert.doesNotMatch(v.stderr, new RegExp(name.replace('.', '\\.')), v.stderr);
    }
    assert.match(agent.stdout, new RegExp(`^ReadWritePaths=${dir}/node ${out} /var/lib/node_exporter/textfile$`, 'm'));
    assert.match(agent.stdout, /--exec "systemctl reload haproxy" --reload-signal HUP --pidfile \/run\/nginx.pid/);
    assert.match(serve.stdout, new RegExp(`^ExecStart=\\S+ \\S+ serve --state-dir ${dir}/ca$`, 'm'));
    // the check has teeth: systemd refuses a unit whose ExecStart is not absolute
    const broken = path.join(dir, 'broken.service');
    fs.writeFileSync(broken, agent.stdout.replace(/^ExecStart=\S+/m, 'ExecStart=node-somewhere'));
    const v = await run('systemd-analyze', ['verify', broken]);
    assert.notEqual(v.code, 0, 'a broken unit is refused');
  });
});
