/**
 * Shutdown: SIGTERM ends `cairn serve` with exit 0 even when its install was replaced under it
 * (an upgrade in place), and a shutdown that fails part-way is reported and ends the process
 * instead of leaving it running half-stopped.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { REPO_ROOT, tmpDir } from '../helpers.js';
import { childrenOf, ServeProcess, startCluster, stillRunning } from '../integration/cluster.js';

/** Resolves to what `p` resolves to, or to 'timeout' after `ms`. */
function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<'timeout'>((r) => (t = setTimeout(() => r('timeout'), ms)))]).finally(() => clearTimeout(t));
}

test('the install removed under a running serve --workers 2 (an upgrade in place): SIGTERM still stops every process, exit 0', async (t) => {
  const c = await startCluster('upgrade-in-place');
  t.after(() => c.cleanup());
  await c.kill('SIGTERM');
  // a copy of this install to run from: what an upgrade replaces
  const install = tmpDir(t);
  for (const d of ['bin', 'dist', 'package.json']) fs.cpSync(path.join(REPO_ROOT, d), path.join(install, d), { recursive: true });
  fs.symlinkSync(path.join(REPO_ROOT, 'node_modules'), path.join(install, 'node_modules'));
  const s = new ServeProcess(c.dir, {}, ['--workers', '2'], path.join(install, 'bin', 'cairn.js'));
  await s.start();
  t.after(() => s.kill('SIGKILL'));
  const workers = childrenOf(s.proc!.pid!);
  assert.equal(workers.length, 2, 'two worker processes');
  fs.rmSync(install, { recursive: true, force: true });
  const code = await within(s.kill('SIGTERM'), 25_000);
  assert.equal(code, 0, `serve did not stop cleanly: ${code}\n${s.logs.join('')}`);
  assert.match(s.logs.join(''), /"msg":"cairn stopped"/);
  assert.deepEqual(stillRunning(workers), [], 'no worker outlives the server');
});

test('a shutdown that fails part-way is reported, and the process ends with a non-zero exit', async (t) => {
  // closeOnSignal as `cairn serve` uses it, with a close that fails and leaves a timer running
  const script = `
    import { closeOnSignal } from ${JSON.stringify(path.join(REPO_ROOT, 'dist/src/cli/common.js'))};
    setInterval(() => {}, 1000); // what a close that failed part-way leaves behind
    closeOnSignal(async () => { throw new Error('the store would not close'); }).then(
      () => { process.exitCode = 0; },
      (e) => { console.error('cairn: error: ' + e.message); process.exitCode = 1; },
    );
    console.log('ready');
  `;
  const p = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => p.kill('SIGKILL'));
  let err = '';
  p.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
  await new Promise<void>((r) => p.stdout.on('data', (d) => String(d).includes('ready') && r()));
  p.kill('SIGTERM');
  const code = await within(exited, 10_000);
  assert.equal(code, 1, `exit ${code}; stderr: ${err}`);
  assert.match(err, /cairn: error: the store would not close/);
});
