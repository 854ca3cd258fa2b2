/**
 * The OCSP responder against real peers: OpenSSL's `openssl ocsp` (good, revoked after a
 * revocation on another replica of three over PostgreSQL, unknown; the signature checked
 * with -CAfile and with -VAfile), GnuTLS's ocsptool, and Python's `cryptography` OCSP loader;
 * malformed, oversize and unsupported requests; GET caching headers; AIA and CRL
 * distribution points after `cairn update --ocsp-url/--crl-url`.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildOcspRequest } from '../../src/pki/ocsp.js';
import { certificateFromPem } from '../../src/pki/index.js';
import { run, tmpDir } from '../helpers.js';
import { addReplica, adminId, api, Cluster, cliAsync, startCluster } from './cluster.js';
import { createDb, pgQuery, TestDb } from './pg.js';

/** `openssl ocsp` against a replica; resolves to its combined output and exit code. */
async function ocsp(args: string[]): Promise<{ code: number | null; out: string }> {
  const r = await run('openssl', ['ocsp', ...args]);
  return { code: r.code, out: r.stdout + r.stderr };
}

async function join(c: { url: string }, token: string, dir: string): Promise<string> {
  const r = await cliAsync(['join', '--token', token, '--state-dir', dir, c.url]);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(fs.readFileSync(path.join(dir, 'node.json'), 'utf8')).nodeId;
}

const serialOf = async (pem: string) => (await run('openssl', ['x509', '-in', pem, '-noout', '-serial'])).stdout.trim().split('=')[1];

describe('OCSP on every replica of three (PostgreSQL)', () => {
  let db: TestDb;
  let c: Cluster;
  let r2: Awaited<ReturnType<typeof addReplica>>;
  let r3: Awaited<ReturnType<typeof addReplica>>;
  let tmp: string;
  let root: string;
  let clientRoot: string;
  let nodeDir: string;
  let signer: string;

  before(async () => {
    db = await createDb();
    c = await startCluster('ocsp', { store: db.url });
    const unlock = path.join(c.dir, 'unlock.key');
    r2 = await addReplica(db.url, unlock);
    r3 = await addReplica(db.url, unlock);
    tmp = tmpDir();
    const ca = (await api(c.url, 'GET', '/v1/ca')).body;
    root = path.join(tmp, 'cluster-root.pem');
    clientRoot = path.join(tmp, 'client-root.pem');
    fs.writeFileSync(root, ca.roots.cluster);
    fs.writeFileSync(clientRoot, ca.roots.client);
    nodeDir = path.join(tmp, 'node');
    await join(c, c.tokens.worker, nodeDir);
    const rows = await pgQuery<{ cert_pem: string; ca_key_id: string }>(db.url, "SELECT cert_pem, ca_key_id FROM signing_keys WHERE purpose = 'ocsp'");
    const clusterKeyId = (await pgQuery<{ key_id: string }>(db.url, "SELECT key_id FROM cas WHERE name = 'cluster'"))[0].key_id;
    signer = path.join(tmp, 'ocsp-signer.pem');
    fs.writeFileSync(signer, rows.find((r) => r.ca_key_id === clusterKeyId)!.cert_pem);
  });
  after(async () => {
    await r3?.cleanup();
    await r2?.cleanup();
    await c?.cleanup();
    await db?.drop();
  });

  test('good on every replica, signed by the delegated OCSP signing certificate (checked with -CAfile and -VAfile)', async () => {
    const cert = path.join(nodeDir, 'node.crt');
    for (const url of [c.url, r2.url, r3.url]) {
      const r = await ocsp(['-issuer', root, '-cert', cert, '-url', `${url}/v1/ocsp/cluster`, '-CAfile', root, '-resp_text']);
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, /Response verify OK/);
      assert.match(r.out, new RegExp(`${path.basename(cert)}: good`));
      assert.match(r.out, /OCSP Nonce/, 'the nonce is echoed');
      assert.match(r.out, /OU=ocsp-signing/, 'the answer carries the delegated signer');
      assert.match(r.out, /OCSP No Check/);
      assert.match(r.out, /OCSP Signing/);
      const va = await ocsp(['-issuer', root, '-cert', cert, '-url', `${url}/v1/ocsp/cluster`, '-VAfile', signer]);
      assert.equal(va.code, 0, va.out);
      assert.match(va.out, /Response verify OK/);
    }
    // the signer is not the CA: a -VAfile of the CA certificate alone does not verify the answer
    const wrong = await ocsp(['-issuer', root, '-cert', cert, '-url', `${c.url}/v1/ocsp/cluster`, '-VAfile', root, '-verify_other', root]);
    assert.doesNotMatch(wrong.out, /Response verify OK/);
  });

  test('revoked on every replica at once after "cairn revoke" on another one (time and reason)', async () => {
    const cert = path.join(nodeDir, 'node.crt');
    const serial = await serialOf(cert);
    const rv = await cliAsync(['revoke', serial, '--reason', 'keyCompromise', '--state-dir', r2.dir, '--server', r2.url]);
    assert.equal(rv.code, 0, rv.stderr);
    for (const url of [r3.url, c.url]) {
      const r = await ocsp(['-issuer', root, '-cert', cert, '-url', `${url}/v1/ocsp/cluster`, '-CAfile', root]);
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, /: revoked/);
      assert.match(r.out, /Reason: keyCompromise/);
      assert.match(r.out, /Revocation Time: /);
    }
  });

  test('unknown for a serial this CA never issued; unauthorized for another CA\'s certificate or an unknown CA', async () => {
    const r = await ocsp(['-issuer', root, '-serial', '0x0123456789ABCDEF', '-url', `${r2.url}/v1/ocsp/cluster`, '-CAfile', root]);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /0x0123456789ABCDEF: unknown/);
    const other = await ocsp(['-issuer', root, '-cert', path.join(nodeDir, 'node.crt'), '-url', `${c.url}/v1/ocsp/client`, '-CAfile', root]);
    assert.match(other.out, /Responder Error: unauthorized \(6\)/);
    const nope = await ocsp(['-issuer', root, '-cert', path.join(nodeDir, 'node.crt'), '-url', `${c.url}/v1/ocsp/nope`, '-CAfile', root]);
    assert.match(nope.out, /Responder Error: unauthorized \(6\)/);
  });

  test('the client CA answers for client bundles (SHA-256 CertID too)', async () => {
    const zip = path.join(tmp, 'carol.zip');
    const b = await cliAsync(['bundle', 'create', 'carol', '-o', zip, '--state-dir', c.dir]);
    assert.equal(b.code, 0, b.stderr);
    const u = await cliAsync(['bundle', 'unpack', zip, '-d', path.join(tmp, 'carol')]);
    assert.equal(u.code, 0, u.stderr);
    const cert = path.join(tmp, 'carol', 'cert.pem');
    const r = await ocsp(['-issuer', clientRoot, '-sha256', '-cert', cert, '-url', `${r3.url}/v1/ocsp/client`, '-CAfile', clientRoot]);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /Response verify OK/);
    assert.match(r.out, /cert\.pem: good/);
  });

  test('GET /v1/ocsp/<ca>/<base64>: the same answer, with HTTP caching headers up to nextUpdate', async () => {
    const req = path.join(tmp, 'req.der');
    const w = await ocsp(['-issuer', root, '-serial', '0x0123', '-no_nonce', '-reqout', req]);
    assert.equal(w.code, 0, w.out);
    const b64 = encodeURIComponent(fs.readFileSync(req).toString('base64'));
    const res = await rawOcsp(r2.url, 'GET', `/v1/ocsp/cluster/${b64}`);
    assert.equal(res.status, 200);
    assert.equal(res.type, 'application/ocsp-response');
    assert.match(String(res.headers['cache-control']), /^max-age=(3[0-5][0-9]{2}|3600), public, no-transform, must-revalidate$/);
    assert.ok(res.headers.etag && res.headers['last-modified'] && res.headers.expires);
    const der = path.join(tmp, 'get.der');
    fs.writeFileSync(der, res.body);
    const r = await ocsp(['-respin', der, '-issuer', root, '-CAfile', root, '-resp_text']);
    assert.match(r.out, /Response verify OK/);
    assert.match(r.out, /Cert Status: unknown/);
    assert.doesNotMatch(r.out, /OCSP Nonce/);
    // unencoded "/" and "+" in the path are read too (not every client encodes them)
    const plain = await rawOcsp(r2.url, 'GET', `/v1/ocsp/cluster/${fs.readFileSync(req).toString('base64')}`);
    assert.equal(plain.body[4], 0x0a, 'a successful answer');
    // a request with a nonce is not cacheable
    const withNonce = path.join(tmp, 'req-nonce.der');
    await ocsp(['-issuer', root, '-serial', '0x0123', '-reqout', withNonce]);
    const nc = await rawOcsp(r2.url, 'GET', `/v1/ocsp/cluster/${encodeURIComponent(fs.readFileSync(withNonce).toString('base64'))}`);
    assert.equal(nc.headers['cache-control'], 'no-cache, no-store');
  });

  test('malformed, oversize and unsupported requests get OCSP error answers, never a 500 or JSON', async () => {
    const cases: [string, string, Buffer | undefined, number][] = [
      ['POST', '/v1/ocsp/cluster', Buffer.from('not DER at all'), 1],
      ['POST', '/v1/ocsp/cluster', Buffer.alloc(100_000, 0x30), 1],
      ['POST', '/v1/ocsp/cluster', Buffer.alloc(0), 1],
      ['GET', '/v1/ocsp/cluster/%%%not-base64', undefined, 1],
      ['GET', '/v1/ocsp/cluster/MAA=', undefined, 1],
      ['POST', '/v1/ocsp/nope', Buffer.from('x'), 6],
    ];
    for (const [method, p, body, status] of cases) {
      const r = await rawOcsp(c.url, method, p, body);
      assert.equal(r.status, 200, `${method} ${p}`);
      assert.equal(r.type, 'application/ocsp-response', `${method} ${p}`);
      // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED }
      assert.deepEqual([...r.body], [0x30, 0x03, 0x0a, 0x01, status], `${method} ${p}`);
    }
    // a request whose hash algorithm cairn does not compute (SHA-224) is unauthorized
    const rootDer = certificateFromPem(fs.readFileSync(root, 'utf8'), 'root');
    const sha256 = buildOcspRequest(rootDer, '0123', { hash: 'sha256' }).toString('hex');
    const sha224 = Buffer.from(sha256.replace('608648016503040201', '608648016503040204'), 'hex');
    const r = await rawOcsp(c.url, 'POST', '/v1/ocsp/cluster', sha224);
    assert.deepEqual([...r.body], [0x30, 0x03, 0x0a, 0x01, 6]);
    // the same request with SHA-256 is answered
    const ok = await rawOcsp(c.url, 'POST', '/v1/ocsp/cluster', Buffer.from(sha256, 'hex'));
    assert.equal(ok.body[4], 0x0a);
    assert.ok(c.server.running, 'the replica is still up');
  });

  test('Python cryptography reads the answers and verifies their signature; GnuTLS ocsptool verifies them', async () => {
    const out = path.join(tmp, 'resp.der');
    const cert = path.join(nodeDir, 'node.crt');
    const r = await ocsp(['-issuer', root, '-cert', cert, '-url', `${c.url}/v1/ocsp/cluster`, '-CAfile', root, '-respout', out]);
    assert.equal(r.code, 0, r.out);
    const py = `
import sys
from cryptography import x509
from cryptography.x509 import ocsp
from cryptography.hazmat.primitives.asymmetric import ec
resp = ocsp.load_der_ocsp_response(open(sys.argv[1], 'rb').read())
assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
signer = resp.certificates[0]
root = x509.load_pem_x509_certificate(open(sys.argv[2], 'rb').read())
signer.verify_directly_issued_by(root)
assert x509.ExtendedKeyUsageOID.OCSP_SIGNING in signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
signer.extensions.get_extension_for_class(x509.OCSPNoCheck)
signer.public_key().verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(resp.signature_hash_algorithm))
print(resp.certificate_status.name, resp.revocation_reason.name if resp.revocation_reason else None, resp.serial_number, resp.next_update_utc > resp.this_update_utc)
`;
    const p = await run('python3', ['-c', py, out, root]);
    assert.equal(p.code, 0, p.stderr);
    assert.match(p.stdout, /^REVOKED key_compromise \d+ True/);
    const signerFile = path.join(tmp, 'signer-from-resp.pem');
    fs.writeFileSync(signerFile, fs.readFileSync(signer));
    const g = await run('ocsptool', ['--verify-response', '--load-response', out, '--load-signer', signerFile]);
    assert.equal(g.code, 0, g.stdout + g.stderr);
    assert.match(g.stdout + g.stderr, /Verifying OCSP Response: Success/);
    const t = await run('ocsptool', ['--verify-response', '--load-response', out, '--load-trust', root]);
    assert.equal(t.code, 0, t.stdout + t.stderr);
    assert.match(t.stdout + t.stderr, /Verifying OCSP Response: Success/);
    const info = await run('ocsptool', ['-j', '--load-response', out]);
    assert.match(info.stdout, /Certificate Status: revoked/);
  });

  test('cairn update --ocsp-url/--crl-url: certificates issued from then on carry AIA OCSP and CRL distribution points, which openssl follows', async () => {
    const up = await cliAsync(['update', '--ocsp-url', r2.url, '--crl-url', r3.url, '--state-dir', c.dir, '--json']);
    assert.equal(up.code, 0, up.stderr);
    assert.equal(JSON.parse(up.stdout).ocspUrl, r2.url);
    // a bad URL is refused
    const bad = await api(c.url, 'PATCH', '/v1/config', { ocspUrl: 'ftp://x' }, adminId(c.dir));
    assert.equal(bad.status, 400);
    // every replica applies the setting (it is replicated through the store; refreshed every 2 s)
    await new Promise((r) => setTimeout(r, 2500));
    const n2 = path.join(tmp, 'node2');
    await join(r3, c.tokens.worker, n2);
    const text = (await run('openssl', ['x509', '-in', path.join(n2, 'node.crt'), '-noout', '-text'])).stdout;
    assert.match(text, new RegExp(`OCSP - URI:${r2.url}/v1/ocsp/cluster`));
    assert.match(text, new RegExp(`URI:${r3.url}/v1/crl/cluster`));
    const uri = (await run('openssl', ['x509', '-in', path.join(n2, 'node.crt'), '-noout', '-ocsp_uri'])).stdout.trim();
    const r = await ocsp(['-issuer', root, '-cert', path.join(n2, 'node.crt'), '-url', uri, '-CAfile', root]);
    assert.match(r.out, /node\.crt: good/);
    // the OCSP signing certificates themselves carry no pointers (nocheck)
    const old = (await run('openssl', ['x509', '-in', path.join(nodeDir, 'node.crt'), '-noout', '-text'])).stdout;
    assert.doesNotMatch(old, /Authority Information Access/, 'certificates issued before carry none');
    const off = await cliAsync(['update', '--ocsp-url', 'none', '--crl-url', 'none', '--state-dir', c.dir, '--json']);
    assert.equal(JSON.parse(off.stdout).ocspUrl, null);
  });
});

/** A raw request (any method and body) whose answer is read as bytes. */
async function rawOcsp(url: string, method: string, p: string, body?: Buffer): Promise<{ status: number; type: string; body: Buffer; headers: Record<string, string | string[] | undefined> }> {
  const https = await import('node:https');
  return new Promise((resolve, reject) => {
    const req = https.request(new URL(p, url), { method, rejectUnauthorized: false, agent: false, headers: body ? { 'content-type': 'application/ocsp-request', 'content-length': body.length } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body: Buffer.concat(chunks), headers: res.headers }));
    });
    req.on('error', reject);
    req.end(body);
  });
}
