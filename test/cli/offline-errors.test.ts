/**
 * The offline CA CLI under bad input: every failure is one clear line on stderr starting with
 * "cairn: error:", no stack trace, nothing on stdout, a non-zero exit code (2 for usage errors,
 * 1 for the rest), and NOTHING written: the directory tree (names, modes, contents) is the same
 * before and after, with no temp or lock files left behind.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { fileMode, listTree, runCli, RunResult, tmpDir } from '../helpers.js';

const USAGE = 2;
const FAILURE = 1;

/** A CA made by the real CLI, copied into each test's own directory. */
let fixture = '';
/** Another cluster's CA, for mismatched keys. */
let otherCa = '';

before(async () => {
  const work = tmpDir();
  fixture = path.join(work, 'fixture');
  otherCa = path.join(work, 'other');
  const rs = await Promise.all([
    runCli(['ca', 'initialize', 'Errors Test', '--dir', path.join(fixture, 'ca')]),
    runCli(['ca', 'initialize', 'Other', '--dir', otherCa]),
  ]);
  for (const r of rs) assert.equal(r.code, 0, r.stderr);
});

/** A fresh copy of the fixture: <dir>/ca holds cluster.crt, cluster.key, cluster.serial. */
function caseDir(t: { after(fn: () => unknown): void }): string {
  const dir = tmpDir(t);
  fs.cpSync(fixture, dir, { recursive: true });
  assert.equal(fileMode(path.join(dir, 'ca', 'cluster.key')), 0o600);
  return dir;
}

function assertCleanFailure(r: RunResult, exitCode: number, message: RegExp, what: string): void {
  const info = `${what}\nexit: ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
  assert.equal(r.code, exitCode, `exit code: ${info}`);
  assert.equal(r.signal, null, info);
  assert.match(r.stderr, /^cairn: error: [^\n]+\n$/, `exactly one "cairn: error:" line on stderr: ${info}`);
  assert.doesNotMatch(r.stderr, /^\s+at /m, `no stack trace: ${info}`);
  assert.doesNotMatch(r.stderr, /internal error|TypeError|ReferenceError|\bE[A-Z]{3,}: /, `no raw internal error: ${info}`);
  assert.match(r.stderr, message, info);
  assert.equal(r.stdout, '', `nothing on stdout: ${info}`);
}

/** Run the CLI in `dir` and check it fails cleanly and writes nothing under `dir`. */
async function expectFailure(dir: string, args: string[], exitCode: number, message: RegExp): Promise<RunResult> {
  const before = listTree(dir);
  const r = await runCli(args, { cwd: dir });
  assertCleanFailure(r, exitCode, message, `cairn ${args.join(' ')}`);
  assert.deepEqual(listTree(dir), before, `nothing may be written: cairn ${args.join(' ')}`);
  return r;
}

describe('usage errors exit 2', { concurrency: true }, () => {
  test('unknown command', async (t) => {
    const dir = caseDir(t);
    await expectFailure(dir, ['frobnicate'], USAGE, /unknown command 'frobnicate'/);
    // a near miss gets a suggestion, on the same line
    await expectFailure(dir, ['ca', 'initialise', 'x'], USAGE, /unknown command 'initialise'.*initialize/);
  });

  test('missing subcommand', async (t) => {
    const dir = caseDir(t);
    const before = listTree(dir);
    const r = await runCli(['ca'], { cwd: dir });
    assert.equal(r.code, USAGE, `cairn ca with no subcommand is a usage error: ${r.stderr}`);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /Usage: cairn ca/);
    assert.deepEqual(listTree(dir), before);
  });

  test('unknown flag', async (t) => {
    const dir = caseDir(t);
    await expectFailure(dir, ['ca', 'initialize', 'x', '--dir', 'new', '--bogus'], USAGE, /unknown option '--bogus'/);
    // a near miss gets a suggestion, on the same line
    await expectFailure(dir, ['ca', 'create-control-certificate', 'h', '--dir', 'ca', '--forse'], USAGE, /unknown option '--forse'.*--force/);
  });

  test('missing argument', async (t) => {
    const dir = caseDir(t);
    await expectFailure(dir, ['ca', 'initialize', '--dir', 'new'], USAGE, /missing required argument 'cluster-name'/);
    await expectFailure(dir, ['ca', 'create-control-certificate', '--dir', 'ca'], USAGE, /missing required argument 'hostname'/);
    await expectFailure(dir, ['ca', 'create-api-certificate', '--dir', 'ca'], USAGE, /missing required argument 'username'/);
  });

  test('bad --key-type value', async (t) => {
    const dir = caseDir(t);
    await expectFailure(dir, ['ca', 'initialize', 'x', '--dir', 'new', '--key-type', 'dsa'], USAGE, /--key-type.*'dsa' is invalid.*ec-p256/);
    await expectFailure(dir, ['ca', 'create-node-certificate', '--dir', 'ca', '--key-type', 'rsa-1024'], USAGE, /--key-type.*'rsa-1024' is invalid/);
  });

  test('bad --expiry value, and --expiry below 1h', async (t) => {
    const dir = caseDir(t);
    await expectFailure(dir, ['ca', 'create-node-certificate', '--dir', 'ca', '--expiry', 'soon'], USAGE, /--expiry.*"soon" is not a duration/);
    await expectFailure(dir, ['ca', 'create-node-certificate', '--dir', 'ca', '--expiry', '59m'], USAGE, /--expiry must be at least 1h/);
    await expectFailure(dir, ['ca', 'create-api-certificate', 'alice', '--dir', 'ca', '--expiry', '3599s'], USAGE, /--expiry must be at least 1h/);
  });

  test('invalid cluster and user names', async (t) => {
    const dir = caseDir(t);
    await expectFailure(dir, ['ca', 'initialize', 'a/b', '--dir', 'new'], USAGE, /invalid cluster name "a\/b"/);
    await expectFailure(dir, ['ca', 'create-api-certificate', 'bob/../x', '--dir', 'ca'], USAGE, /invalid user name/);
  });
});

describe('operational errors exit 1 and write nothing', { concurrency: true }, () => {
  test('missing CA: no cluster.crt', async (t) => {
    const dir = caseDir(t);
    fs.mkdirSync(path.join(dir, 'empty'));
    await expectFailure(dir, ['ca', 'create-node-certificate', '--dir', 'empty'], FAILURE, /no CA in empty: .*cluster\.crt not found.*ca initialize/);
    await expectFailure(dir, ['ca', 'create-control-certificate', 'h', '--dir', 'ca', '--ca-dir', 'nowhere'], FAILURE, /no CA in nowhere/);
    // the output directory was not created either
    assert.equal(fs.existsSync(path.join(dir, 'out')), false);
    await expectFailure(dir, ['ca', 'create-api-certificate', 'alice', '--dir', 'out/deep', '--ca-dir', 'nowhere'], FAILURE, /no CA in nowhere/);
  });

  test('missing key: cluster.crt without cluster.key', async (t) => {
    const dir = caseDir(t);
    fs.rmSync(path.join(dir, 'ca', 'cluster.key'));
    await expectFailure(dir, ['ca', 'create-node-certificate', '--dir', 'ca'], FAILURE, /cannot read key file .*cluster\.key: no such file or directory/);
  });

  test('corrupt PEM in cluster.crt', async (t) => {
    const dir = caseDir(t);
    const crt = path.join(dir, 'ca', 'cluster.crt');
    const good = fs.readFileSync(crt, 'utf8');
    const variants: [string, RegExp][] = [
      ['this is not PEM\n', /no PEM CERTIFICATE block/],
      ['-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n', /not a valid X\.509 certificate/],
      [good.slice(0, 200) + good.slice(260), /cluster\.crt/], // lines cut out of the middle
      [good + good, /2 CERTIFICATE blocks; expected one/],
    ];
    for (const [text, message] of variants) {
      fs.writeFileSync(crt, text);
      await expectFailure(dir, ['ca', 'create-node-certificate', '--dir', 'ca'], FAILURE, message);
    }
  });

  test('a certificate where the CA should be: a leaf in cluster.crt', async (t) => {
    const dir = caseDir(t);
    const ok = await runCli(['ca', 'create-api-certificate', 'alice', '--dir', 'ca'], { cwd: dir });
    assert.equal(ok.code, 0, ok.stderr);
    fs.copyFileSync(path.join(dir, 'ca', 'alice.crt'), path.join(dir, 'ca', 'cluster.crt'));
    fs.copyFileSync(path.join(dir, 'ca', 'alice.key'), path.join(dir, 'ca', 'cluster.key'));
    await expectFailure(dir, ['ca', 'create-node-certificate', '--dir', 'ca'], FAILURE, /not a CA certificate/);
  });

  test('cluster.key from another CA (does not match cluster.crt)', async (t) => {
    const dir = caseDir(t);
    fs.copyFileSync(path.join(otherCa, 'cluster.key'), path.join(dir, 'ca', 'cluster.key'));
    await expectFailure(dir, ['ca', 'create-node-certificate', '--dir', 'ca'], FAILURE, /CA certificate and the CA key do not match/);
  });

  test('corrupt cluster.key', async (t) => {
    const dir = caseDir(t);
    fs.writeFileSync(path.join(dir, 'ca', 'cluster.key'), 'garbage\n', { mode: 0o600 });
    await expectFailure(dir, ['ca', 'create-node-certificate', '--dir', 'ca'], FAILURE, /cluster\.key.*expected a PEM private key/);
  });

  test('group- or world-readable CA key is refused with a chmod 600 hint', async (t) => {
    const dir = caseDir(t);
    const key = path.join(dir, 'ca', 'cluster.key');
    for (const mode of [0o640, 0o604]) {
      fs.chmodSync(key, mode);
      const r = await expectFailure(dir, ['ca', 'create-node-certificate', '--dir', 'ca'], FAILURE, /chmod 600/);
      assert.match(r.stderr, new RegExp(`mode ${mode.toString(8).padStart(4, '0')}`));
      assert.match(r.stderr, /cluster\.key/);
    }
    fs.chmodSync(key, 0o600);
  });

  test('a CA key path that is a directory', async (t) => {
    const dir = caseDir(t);
    const key = path.join(dir, 'ca', 'cluster.key');
    fs.rmSync(key);
    fs.mkdirSync(key, { mode: 0o700 });
    await expectFailure(dir, ['ca', 'create-node-certificate', '--dir', 'ca'], FAILURE, /cluster\.key is not a regular file/);
  });

  test('a cluster.crt path that is a directory', async (t) => {
    const dir = caseDir(t);
    const crt = path.join(dir, 'ca', 'cluster.crt');
    fs.rmSync(crt);
    fs.mkdirSync(crt);
    await expectFailure(dir, ['ca', 'create-node-certificate', '--dir', 'ca'], FAILURE, /cluster\.crt.*is a directory/);
  });

  test('invalid host names: underscore, trailing dot, empty, empty label', async (t) => {
    const dir = caseDir(t);
    for (const [host, why] of [
      ['bad_host', /invalid label "bad_host"/],
      ['control.example.', /must not end with a dot/],
      ['', /is empty/],
      ['a..b', /empty label/],
    ] as [string, RegExp][]) {
      await expectFailure(dir, ['ca', 'create-control-certificate', host, '--dir', 'ca'], USAGE, new RegExp(`not a valid DNS name or IP address.*${why.source}`));
    }
  });

  test('--dir that is an existing regular file', async (t) => {
    const dir = caseDir(t);
    fs.writeFileSync(path.join(dir, 'afile'), 'x');
    await expectFailure(dir, ['ca', 'create-node-certificate', '--dir', 'afile', '--ca-dir', 'ca'], FAILURE, /afile.*not a directory/);
    await expectFailure(dir, ['ca', 'initialize', 'x', '--dir', 'afile/sub'], FAILURE, /afile\/sub.*not a directory/);
  });

  test('ca initialize refuses a directory that already has a CA (or part of one)', async (t) => {
    const dir = caseDir(t);
    await expectFailure(dir, ['ca', 'initialize', 'again', '--dir', 'ca'], FAILURE, /cluster\.crt already exists; use --force/);
    // only the key left behind: still refused, the key is not silently replaced
    fs.rmSync(path.join(dir, 'ca', 'cluster.crt'));
    await expectFailure(dir, ['ca', 'initialize', 'again', '--dir', 'ca'], FAILURE, /cluster\.key already exists; use --force/);
  });

  test('existing output files are not overwritten without --force; --force overwrites them', async (t) => {
    const dir = caseDir(t);
    const first = await runCli(['ca', 'create-control-certificate', 'control.example', '--dir', 'ca', '--json'], { cwd: dir });
    assert.equal(first.code, 0, first.stderr);
    const { certificate, key, serial } = JSON.parse(first.stdout);
    const crtPath = path.join(dir, certificate);
    const keyPath = path.join(dir, key);
    const oldCrt = fs.readFileSync(crtPath, 'utf8');
    const oldKey = fs.readFileSync(keyPath, 'utf8');

    await expectFailure(dir, ['ca', 'create-control-certificate', 'control.example', '--dir', 'ca'], FAILURE, /control-control\.example\.crt already exists; use --force to overwrite it/);
    // only one of the pair present: still refused, and the other one is not written
    fs.rmSync(crtPath);
    await expectFailure(dir, ['ca', 'create-control-certificate', 'control.example', '--dir', 'ca'], FAILURE, /control-control\.example\.key already exists/);
    fs.writeFileSync(crtPath, oldCrt);
    // same for API certificates
    const api = await runCli(['ca', 'create-api-certificate', 'alice', '--dir', 'ca'], { cwd: dir });
    assert.equal(api.code, 0, api.stderr);
    await expectFailure(dir, ['ca', 'create-api-certificate', 'alice', '--dir', 'ca'], FAILURE, /alice\.crt already exists/);

    const forced = await runCli(['ca', 'create-control-certificate', 'control.example', '--dir', 'ca', '--force', '--json'], { cwd: dir });
    assert.equal(forced.code, 0, forced.stderr);
    assert.equal(forced.stderr, '');
    const again = JSON.parse(forced.stdout);
    assert.equal(again.certificate, certificate);
    assert.notEqual(again.serial, serial, 'a new serial');
    assert.notEqual(fs.readFileSync(crtPath, 'utf8'), oldCrt, 'certificate replaced');
    assert.notEqual(fs.readFileSync(keyPath, 'utf8'), oldKey, 'key replaced');
    assert.equal(fileMode(keyPath), 0o600, 'replaced key is still 0600');
    const leftovers = fs.readdirSync(path.join(dir, 'ca')).filter((n) => n.startsWith('.') || n.endsWith('.tmp') || n.endsWith('.lock'));
    assert.deepEqual(leftovers, []);
  });

  test('--expiry of exactly 1h is accepted (the boundary)', async (t) => {
    const dir = caseDir(t);
    const r = await runCli(['ca', 'create-node-certificate', '--dir', 'ca', '--expiry', '1h', '--json'], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    const { certificate } = JSON.parse(r.stdout);
    const { X509Certificate } = await import('node:crypto');
    const x = new X509Certificate(fs.readFileSync(path.join(dir, certificate)));
    const lifetime = new Date(x.validTo).getTime() - Date.now();
    assert.ok(lifetime > 50 * 60_000 && lifetime <= 3600_000, `lifetime ${lifetime} ms`);
  });
});
