/**
 * The node side for programs that are not cairn, against a real `cairn serve`: a node joins
 * with `--write`, a real HAProxy serves mutual TLS with the `bundle` and `ca` files, and
 * `cairn agent --renew-now --exec` reloads it: new handshakes see the renewed certificate
 * while a connection opened before the reload goes on. The `pkcs12` output is read by
 * `openssl pkcs12` and Java's `keytool`. `cairn agent status` follows the node from fresh to
 * removed.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { nodePaths, readNodeIdentity } from '../../src/agent/node-state.js';
import { Background, freePort, run, startBackground, tmpDir } from '../helpers.js';
import { adminId, api, cliAsync, Cluster, startCluster } from './cluster.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A TLS client with the node's identity, verifying the server as a worker of the cluster. */
function connect(nodeDir: string, port: number): Promise<tls.TLSSocket> {
  const p = nodePaths(nodeDir);
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'worker', key: fs.readFileSync(p.key), cert: fs.readFileSync(p.cert), ca: fs.readFileSync(p.ca) }, () => resolve(s));
    s.once('error', reject);
  });
}

const serialOf = (s: tls.TLSSocket) => s.getPeerCertificate().serialNumber.toUpperCase();

/** Send a line and read the echo. */
function echo(s: tls.TLSSocket, line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (d: Buffer) => {
      got += d;
      if (got.includes('\n')) {
        s.off('data', onData);
        resolve(got.trim());
      }
    };
    s.on('data', onData);
    s.once('error', reject);
    s.once('close', () => reject(new Error(`connection closed before the echo of ${line}`)));
    s.write(`${line}\n`);
  });
}

async function handshakeSerial(nodeDir: string, port: number): Promise<string> {
  const s = await connect(nodeDir, port);
  const serial = serialOf(s);
  s.destroy();
  return serial;
}

describe('programs that read certificate files', () => {
  let c: Cluster;
  let dir: string;
  let nodeDir: string;
  let out: string;
  let pw: string;
  let joined: { nodeId: string; serial: string };
  before(async () => {
    c = await startCluster('outputs');
    dir = tmpDir();
    nodeDir = path.join(dir, 'node');
    out = path.join(dir, 'out');
    fs.mkdirSync(out);
    pw = path.join(dir, 'p12.pass');
    fs.writeFileSync(pw, 'changeit-but-longer\n', { mode: 0o600 });
    const r = await cliAsync([
      'join', '--token', c.tokens.worker, '--state-dir', nodeDir, '--json',
      '--write', `bundle=${out}/haproxy.pem`, '--write', `ca=${out}/ca.pem`, '--write', `pkcs12=${out}/node.p12,password-file=${pw}`, c.url,
    ]);
    assert.equal(r.code, 0, r.stderr);
    joined = JSON.parse(r.stdout);
    assert.deepEqual(JSON.parse(r.stdout).outputs.map((o: { format: string }) => o.format), ['bundle', 'ca', 'pkcs12']);
  });
  after(async () => {
    await c?.cleanup();
  });

  test('join refuses a bad --write before anything is sent or created', async () => {
    const d = path.join(dir, 'never');
    const r = await cliAsync(['join', '--token', c.tokens.worker, '--state-dir', d, '--write', `pem=${out}/x.pem`, c.url]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^cairn: error: --write "pem=.*": unknown format "pem"/);
    assert.equal(fs.existsSync(d), false);
  });

  test('HAProxy serves the bundle; --renew-now --exec reloads it: new handshakes get the new certificate, an open connection goes on', async (t) => {
    const id = readNodeIdentity(nodeDir);
    assert.equal(fs.statSync(`${out}/haproxy.pem`).mode & 0o777, 0o600);
    // a backend that echoes lines, behind HAProxy's TLS (mutual: clients need a cluster certificate)
    const backend = net.createServer((s) => s.pipe(s));
    const backendPort = await new Promise<number>((r) => backend.listen(0, '127.0.0.1', () => r((backend.address() as net.AddressInfo).port)));
    t.after(() => backend.close());
    const port = await freePort();
    const cfg = path.join(dir, 'haproxy.cfg');
    const pidfile = path.join(dir, 'haproxy.pid');
    fs.writeFileSync(cfg, [
      'global',
      '  maxconn 100',
      'defaults',
      '  mode tcp',
      '  timeout connect 5s',
      '  timeout client 60s',
      '  timeout server 60s',
      'frontend tls',
      `  bind 127.0.0.1:${port} ssl crt ${out}/haproxy.pem ca-file ${out}/ca.pem verify required`,
      '  default_backend echo',
      'backend echo',
      `  server e1 127.0.0.1:${backendPort}`,
      '',
    ].join('\n'));
    const check = await run('haproxy', ['-c', '-f', cfg]);
    assert.equal(check.code, 0, check.stderr);
    // master-worker: USR2 to the master (its pid in the pidfile) reloads without dropping connections
    const hap: Background = startBackground('haproxy', ['-W', '-db', '-p', pidfile, '-f', cfg], { t });
    for (let i = 0; !fs.existsSync(pidfile) || !(await handshakeSerial(nodeDir, port).then(() => true, () => false)); i++) {
      if (i > 100) throw new Error(`HAProxy did not start: ${hap.stderr()}`);
      await sleep(100);
    }
    assert.equal(await handshakeSerial(nodeDir, port), id.leaf.serialHex);
    assert.equal(id.leaf.serialHex, joined.serial);

    // a long-lived connection, opened before the reload
    const longLived = await connect(nodeDir, port);
    assert.equal(await echo(longLived, 'before'), 'before');

    // a client without a cluster certificate is refused by HAProxy (the ca output is in force)
    await assert.rejects(
      new Promise((resolve, reject) => {
        const s = tls.connect({ host: '127.0.0.1', port, servername: 'worker', ca: fs.readFileSync(`${out}/ca.pem`) }, () => s.write('x\n'));
        s.on('data', resolve);
        s.on('error', reject);
        s.on('close', () => reject(new Error('closed')));
      }),
    );

    const r = await cliAsync([
      'agent', '--renew-now', '--state-dir', nodeDir,
      '--write', `bundle=${out}/haproxy.pem`, '--write', `ca=${out}/ca.pem`, '--write', `pkcs12=${out}/node.p12,password-file=${pw}`,
      '--exec', `kill -USR2 "$(cat ${pidfile})" && echo "reloaded for $CAIRN_EVENT $CAIRN_SERIAL" >&2`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    const renewed = readNodeIdentity(nodeDir).leaf.serialHex;
    assert.notEqual(renewed, id.leaf.serialHex);
    assert.match(r.stdout, new RegExp(`^Renewed: worker ${joined.nodeId}, certificate ${renewed}`, 'm'));
    assert.match(r.stdout, new RegExp(`^Wrote bundle: ${out}/haproxy.pem$`, 'm'));
    assert.match(r.stdout, /^Unchanged ca: /m);
    assert.match(r.stdout, /^Hook ran \(\d+ ms, exit 0\)$/m);
    const renewedLog = r.stderr.split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((l) => l.msg === 'certificate renewed');
    assert.deepEqual(renewedLog.outputs, [`bundle=${out}/haproxy.pem`, `ca=${out}/ca.pem (unchanged)`, `pkcs12=${out}/node.p12`]);
    assert.deepEqual(renewedLog.hook, { ok: true, exitCode: 0 });
    assert.match(r.stderr, new RegExp(`reloaded for renewed ${renewed}`));

    // new handshakes: the renewed certificate, once the new worker is up
    let seen = '';
    for (let i = 0; i < 100 && seen !== renewed; i++) {
      seen = await handshakeSerial(nodeDir, port).catch(() => '');
      if (seen !== renewed) await sleep(100);
    }
    assert.equal(seen, renewed, 'HAProxy serves the renewed certificate after the reload');
    // the connection from before is served on by the old worker, with the old certificate
    assert.equal(serialOf(longLived), id.leaf.serialHex);
    assert.equal(await echo(longLived, 'after the reload'), 'after the reload');
    longLived.destroy();
  });

  test('the pkcs12 output is read by openssl pkcs12 (key and certificate a pair, the current one)', async () => {
    const serial = readNodeIdentity(nodeDir).leaf.serialHex;
    const info = await run('openssl', ['pkcs12', '-info', '-in', `${out}/node.p12`, '-passin', `file:${pw}`, '-noenc']);
    assert.equal(info.code, 0, info.stderr);
    assert.match(info.stdout + info.stderr, /MAC: sha256/);
    assert.match(info.stdout + info.stderr, /Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC/);
    assert.match(info.stdout, /friendlyName: cairn-node/);
    assert.match(info.stdout, /-----BEGIN PRIVATE KEY-----/);
    const leaf = await run('openssl', ['pkcs12', '-in', `${out}/node.p12`, '-passin', `file:${pw}`, '-clcerts', '-nokeys']);
    assert.equal(new X509Certificate(leaf.stdout).serialNumber.toUpperCase(), serial);
    const key = await run('openssl', ['pkcs12', '-in', `${out}/node.p12`, '-passin', `file:${pw}`, '-nocerts', '-noenc']);
    const pubFromKey = await run('openssl', ['pkey', '-pubout'], { input: key.stdout });
    const pubFromCert = await run('openssl', ['x509', '-noout', '-pubkey'], { input: leaf.stdout });
    assert.equal(pubFromKey.stdout, pubFromCert.stdout);
    const wrong = await run('openssl', ['pkcs12', '-info', '-in', `${out}/node.p12`, '-passin', 'pass:wrong', '-noenc']);
    assert.notEqual(wrong.code, 0);
  });

  test('the pkcs12 output is a Java keystore: keytool lists the key entry with its chain', async (t) => {
    const found = await run('keytool', ['-help']).then(() => true, () => false);
    if (!found) return t.skip('keytool not installed (no JDK/JRE: apt-get install default-jre-headless)');
    const r = await run('keytool', ['-list', '-v', '-keystore', `${out}/node.p12`, '-storetype', 'PKCS12', '-storepass', 'changeit-but-longer']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /Alias name: cairn-node/);
    assert.match(r.stdout, /Entry type: PrivateKeyEntry/);
    assert.match(r.stdout, /Certificate chain length: 2/);
    assert.match(r.stdout, new RegExp(`Serial number: 0*${readNodeIdentity(nodeDir).leaf.serialHex.toLowerCase()}`));
  });

  test('cairn agent status: 0 fresh, 1 in the warning window, 2 once the node is removed (and the metrics say so)', async () => {
    const status = (...a: string[]) => cliAsync(['agent', 'status', '--state-dir', nodeDir, ...a]);
    let r = await status();
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^ok: worker /);
    r = await status('--warn-before', '120d');
    assert.equal(r.code, 1);
    assert.match(r.stdout, /^expiring: /);

    const rm = await api(c.url, 'DELETE', `/v1/nodes/${joined.nodeId}`, undefined, adminId(c.dir));
    assert.equal(rm.status, 200, JSON.stringify(rm.body));
    const metrics = path.join(dir, 'cairn.prom');
    const renew = await cliAsync(['agent', '--renew-now', '--state-dir', nodeDir, '--metrics-file', metrics]);
    assert.equal(renew.code, 1);
    assert.match(renew.stderr, /cairn: error: .*has been removed from the cluster/);
    r = await status();
    assert.equal(r.code, 2);
    assert.match(r.stdout, /^refused: .*node_removed/);
    assert.match(fs.readFileSync(metrics, 'utf8'), /^cairn_agent_refused\{node_id="[0-9a-z]{25}",role="worker",cluster_id="[0-9a-z]{25}"\} 1$/m);
    assert.match(fs.readFileSync(metrics, 'utf8'), /^cairn_node_status\{.*\} 2$/m);
  });
});
