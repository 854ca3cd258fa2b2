/**
 * The offline CA, end to end through the real CLI, checked by independent X.509 stacks:
 * OpenSSL (`verify -x509_strict`, and a mutual-TLS handshake with s_server/s_client),
 * GnuTLS (certtool), NSS (certutil), Go's crypto/x509 and Python's `cryptography`.
 *
 * Every peer is a real program; a missing one makes the test fail, never skip.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { Background, fileMode, freePort, REPO_ROOT, run, runCli, RunResult, startBackground, tmpDir } from '../helpers.js';

const EKU_SERVER = '1.3.6.1.5.5.7.3.1';
const EKU_CLIENT = '1.3.6.1.5.5.7.3.2';
const CLUSTER_NAME = 'Test Cluster';
const CONTROL_DNS = 'control.cairn.test';

/** Key types driven through the whole flow: the default, RSA, and Ed25519. */
const KEY_TYPES = ['ec-p256', 'rsa-2048', 'ed25519'] as const;
type KeyType = (typeof KEY_TYPES)[number];

function ok(r: RunResult, what: string): RunResult {
  assert.equal(r.code, 0, `${what} failed (exit ${r.code})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

async function cli(args: string[]): Promise<any> {
  const r = ok(await runCli([...args, '--json']), `cairn ${args.join(' ')}`);
  assert.equal(r.stderr, '', `cairn ${args.join(' ')} wrote to stderr`);
  return JSON.parse(r.stdout);
}

/** One leaf the CLI made, with what it must be valid for. */
interface Leaf {
  label: string;
  cert: string;
  key: string;
  kind: 'control' | 'node' | 'api';
  /** name (DNS or IP) a client verifies, if any */
  name?: string;
  server: boolean;
  cn: string;
  ou: string;
  sans: { dns: string[]; ip: string[] };
}

interface OfflineCa {
  dir: string;
  caCert: string;
  caKey: string;
  clusterId: string;
  leaves: Leaf[];
  createdDirs: string[];
  startedAt: number;
}

/**
 * Drive the CLI to make a CA and one of each certificate, all of one key type. The leaves are
 * requested concurrently, as separate processes: they must still get distinct serials.
 */
async function makeOfflineCa(root: string, keyType: KeyType, clusterName = CLUSTER_NAME): Promise<OfflineCa> {
  const startedAt = Date.now();
  const dir = path.join(root, 'ca'); // created by `ca initialize`
  const init = await cli(['ca', 'initialize', clusterName, '--dir', dir, '--key-type', keyType]);
  const kt = ['--key-type', keyType];
  const control = async (host: string, ip: boolean): Promise<Leaf> => {
    const r = await cli(['ca', 'create-control-certificate', host, '--dir', dir, ...kt]);
    return {
      label: `control certificate for ${host}`,
      cert: r.certificate,
      key: r.key,
      kind: 'control',
      name: host,
      server: true,
      cn: 'control-service',
      ou: 'control-service',
      sans: ip ? { dns: [], ip: [host] } : { dns: [host], ip: [] },
    };
  };
  // a node certificate written into a fresh nested directory, the CA given by --ca-dir
  const nodeDir = path.join(root, 'out', 'nodes');
  const node = async (): Promise<Leaf> => {
    const r = await cli(['ca', 'create-node-certificate', '--dir', nodeDir, '--ca-dir', dir, ...kt]);
    assert.match(r.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    return { label: 'node certificate', cert: r.certificate, key: r.key, kind: 'node', name: r.uuid, server: true, cn: r.uuid, ou: 'node', sans: { dns: [r.uuid], ip: [] } };
  };
  const api = async (): Promise<Leaf> => {
    const r = await cli(['ca', 'create-api-certificate', 'alice', '--dir', dir, ...kt]);
    return { label: 'API certificate', cert: r.certificate, key: r.key, kind: 'api', server: false, cn: 'alice', ou: 'api-user', sans: { dns: [], ip: [] } };
  };
  const leaves = await Promise.all([control(CONTROL_DNS, false), control('127.0.0.1', true), control('::1', true), node(), api()]);
  // the CLI prints paths as given: make them absolute
  for (const l of leaves) {
    l.cert = path.resolve(l.cert);
    l.key = path.resolve(l.key);
  }
  return {
    dir,
    caCert: path.resolve(init.certificate),
    caKey: path.resolve(init.key),
    clusterId: init.clusterId,
    leaves,
    createdDirs: [dir, path.join(root, 'out'), nodeDir],
    startedAt,
  };
}

// ---------------------------------------------------------------------------------------------
// Peers

let goverify = '';
let python = '';
/** A second, unrelated cluster: its certificates must be refused everywhere. */
let other: OfflineCa;

/** Build the Go verifier once (standard library only: no network needed). */
async function buildGoVerify(work: string): Promise<string> {
  const bin = path.join(work, 'goverify');
  const env: Record<string, string | undefined> = { GOTOOLCHAIN: 'local', GOPROXY: 'off', GOFLAGS: '', GO111MODULE: 'off' };
  // go needs a build cache; without HOME it has no default one
  if (!process.env.GOCACHE && !process.env.HOME && !process.env.XDG_CACHE_HOME) env.GOCACHE = path.join(work, 'gocache');
  if (!process.env.GOPATH && !process.env.HOME) env.GOPATH = path.join(work, 'gopath');
  const r = await run('go', ['build', '-o', bin, path.join(REPO_ROOT, 'test', 'interop', 'goverify', 'main.go')], { cwd: work, env, timeoutMs: 120_000 });
  ok(r, 'go build goverify');
  return bin;
}

/** A Python 3 that can import `cryptography` (the Debian package installs it for /usr/bin/python3). */
async function findPython(): Promise<string> {
  const tried: string[] = [];
  for (const p of ['python3', '/usr/bin/python3']) {
    try {
      const r = await run(p, ['-c', 'import cryptography; print(cryptography.__version__)']);
      if (r.code === 0) return p;
      tried.push(`${p}: ${r.stderr.trim().split('\n').pop()}`);
    } catch (e) {
      tried.push(`${p}: ${(e as Error).message}`);
    }
  }
  throw new Error(`no Python 3 with the cryptography package (install python3-cryptography): ${tried.join('; ')}`);
}

const cas = new Map<KeyType, { root: string; ca: OfflineCa }>();

before(async () => {
  const work = tmpDir();
  // Everything that spawns the CLI runs concurrently: each call pays Node's start-up.
  const setups = KEY_TYPES.map(async (kt) => {
    const root = path.join(work, kt);
    cas.set(kt, { root, ca: await makeOfflineCa(root, kt) });
  });
  const peers = Promise.all([buildGoVerify(work), findPython(), makeOfflineCa(path.join(work, 'other'), 'ec-p256', 'Other Cluster')]);
  await Promise.all([...setups, peers]);
  [goverify, python, other] = await peers;
});

async function goVerify(caCert: string, cert: string, usage: 'serverAuth' | 'clientAuth', name?: string): Promise<RunResult> {
  return run(goverify, [caCert, cert, usage, ...(name ? [name] : [])]);
}

/** Python: load the CA and each certificate with `cryptography` and report what it sees. Warnings are errors. */
const PY_INSPECT = String.raw`
import json, sys, warnings
warnings.simplefilter('error')
from datetime import timezone
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives.asymmetric import ec, rsa, ed25519, padding

def load(p):
    with open(p, 'rb') as f:
        return x509.load_pem_x509_certificate(f.read())

def utc(c, attr):
    v = getattr(c, attr + '_utc', None)
    if v is None:
        v = getattr(c, attr).replace(tzinfo=timezone.utc)
    return v.timestamp()

def keytype(k):
    if isinstance(k, ec.EllipticCurvePublicKey): return {'secp256r1': 'ec-p256', 'secp384r1': 'ec-p384'}.get(k.curve.name, k.curve.name)
    if isinstance(k, rsa.RSAPublicKey): return 'rsa-%d' % k.key_size
    if isinstance(k, ed25519.Ed25519PublicKey): return 'ed25519'
    return type(k).__name__

def signed_by(c, issuer):
    k = issuer.public_key()
    if isinstance(k, rsa.RSAPublicKey): k.verify(c.signature, c.tbs_certificate_bytes, padding.PKCS1v15(), c.signature_hash_algorithm)
    elif isinstance(k, ec.EllipticCurvePublicKey): k.verify(c.signature, c.tbs_certificate_bytes, ec.ECDSA(c.signature_hash_algorithm))
    else: k.verify(c.signature, c.tbs_certificate_bytes)
    return True

def name(n):
    get = lambda oid: [a.value for a in n.get_attributes_for_oid(oid)]
    return {'O': get(NameOID.ORGANIZATION_NAME), 'OU': get(NameOID.ORGANIZATIONAL_UNIT_NAME), 'CN': get(NameOID.COMMON_NAME), 'rfc4514': n.rfc4514_string()}

def inspect(c, issuer):
    ext = lambda cls: c.extensions.get_extension_for_class(cls)
    bc = ext(x509.BasicConstraints)
    ku = ext(x509.KeyUsage)
    ski = ext(x509.SubjectKeyIdentifier)
    out = {
        'version': c.version.name,
        'serial': '%x' % c.serial_number,
        'serialBits': c.serial_number.bit_length(),
        'subject': name(c.subject),
        'issuer': name(c.issuer),
        'notBefore': utc(c, 'not_valid_before'),
        'notAfter': utc(c, 'not_valid_after'),
        'keyType': keytype(c.public_key()),
        'bc': {'ca': bc.value.ca, 'pathLength': bc.value.path_length, 'critical': bc.critical},
        'ku': {'critical': ku.critical, 'digitalSignature': ku.value.digital_signature, 'keyEncipherment': ku.value.key_encipherment,
               'keyCertSign': ku.value.key_cert_sign, 'crlSign': ku.value.crl_sign, 'keyAgreement': ku.value.key_agreement,
               'contentCommitment': ku.value.content_commitment, 'dataEncipherment': ku.value.data_encipherment},
        'ski': ski.value.digest.hex(),
        'skiFromKey': x509.SubjectKeyIdentifier.from_public_key(c.public_key()).digest.hex(),
        'signedByIssuer': signed_by(c, issuer),
        'extensions': sorted(e.oid.dotted_string for e in c.extensions),
    }
    try:
        out['aki'] = ext(x509.AuthorityKeyIdentifier).value.key_identifier.hex()
    except x509.ExtensionNotFound:
        out['aki'] = None
    try:
        e = ext(x509.ExtendedKeyUsage)
        out['eku'] = [o.dotted_string for o in e.value]
        out['ekuCritical'] = e.critical
    except x509.ExtensionNotFound:
        out['eku'] = None
    try:
        san = ext(x509.SubjectAlternativeName)
        out['sans'] = {'dns': san.value.get_values_for_type(x509.DNSName), 'ip': [str(i) for i in san.value.get_values_for_type(x509.IPAddress)], 'critical': san.critical}
    except x509.ExtensionNotFound:
        out['sans'] = None
    return out

ca = load(sys.argv[1])
print(json.dumps({'ca': inspect(ca, ca), 'leaves': [inspect(load(p), ca) for p in sys.argv[2:]]}))
`;

// ---------------------------------------------------------------------------------------------

for (const keyType of KEY_TYPES) {
  describe(`offline CA, ${keyType}`, () => {
    let ca: OfflineCa;
    let root: string;
    const isRsa = keyType.startsWith('rsa');

    before(() => {
      ({ root, ca } = cas.get(keyType)!);
    });

    test('files: keys 0600, created directories 0700, certificates not writable by others, no temp files left', () => {
      assert.equal(fileMode(ca.caKey), 0o600, 'cluster.key');
      assert.equal(path.basename(ca.caKey), 'cluster.key');
      assert.equal(path.basename(ca.caCert), 'cluster.crt');
      assert.equal(fileMode(ca.caCert) & 0o022, 0, 'cluster.crt is not group/other-writable');
      for (const d of ca.createdDirs) assert.equal(fileMode(d), 0o700, d);
      for (const l of ca.leaves) {
        assert.equal(fileMode(l.key), 0o600, l.key);
        assert.equal(fileMode(l.cert) & 0o022, 0, l.cert);
        assert.match(fs.readFileSync(l.key, 'utf8'), /^-----BEGIN PRIVATE KEY-----\n[\s\S]+-----END PRIVATE KEY-----\n$/, 'PKCS#8 PEM');
        assert.match(fs.readFileSync(l.cert, 'utf8'), /^-----BEGIN CERTIFICATE-----\n[\s\S]+-----END CERTIFICATE-----\n$/, 'one PEM certificate');
      }
      // file names: control-<host> (":" of IPv6 made safe), <uuid>, <user>
      const names = ca.leaves.map((l) => path.basename(l.cert)).sort();
      const node = ca.leaves.find((l) => l.kind === 'node')!;
      assert.deepEqual(names, ['alice.crt', 'control-127.0.0.1.crt', `control-${CONTROL_DNS}.crt`, 'control-__1.crt', `${node.cn}.crt`].sort());
      for (const d of [ca.dir, ...ca.createdDirs]) {
        const leftovers = fs.readdirSync(d).filter((n) => n.startsWith('.') || n.endsWith('.tmp') || n.endsWith('.lock'));
        assert.deepEqual(leftovers, [], `temp files left in ${d}`);
      }
    });

    test('OpenSSL: verify -x509_strict, with the right purposes and names', async () => {
      ok(await run('openssl', ['verify', '-x509_strict', '-check_ss_sig', '-CAfile', ca.caCert, ca.caCert]), 'openssl verify of the CA');
      for (const l of ca.leaves) {
        const base = ['verify', '-x509_strict', '-CAfile', ca.caCert];
        const r = ok(await run('openssl', [...base, '-purpose', 'sslclient', l.cert]), `openssl verify ${l.label}`);
        assert.equal(r.stdout.trim(), `${l.cert}: OK`);
        const server = await run('openssl', [...base, '-purpose', 'sslserver', l.cert]);
        if (l.server) ok(server, `openssl verify -purpose sslserver ${l.label}`);
        else assert.notEqual(server.code, 0, `${l.label} must not be valid for TLS servers`);
        if (l.kind === 'control' || l.kind === 'node') {
          const flag = l.sans.ip.length ? '-verify_ip' : '-verify_hostname';
          ok(await run('openssl', [...base, flag, l.name!, l.cert]), `openssl verify ${flag} ${l.name}`);
          const wrong = await run('openssl', [...base, flag, l.sans.ip.length ? '10.9.9.9' : 'other.cairn.test', l.cert]);
          assert.notEqual(wrong.code, 0, `${l.label} must not be valid for another name`);
        }
        const foreign = await run('openssl', ['verify', '-x509_strict', '-CAfile', other.caCert, l.cert]);
        assert.notEqual(foreign.code, 0, `${l.label} must not verify under another cluster's CA`);
      }
    });

    test('GnuTLS: certtool --verify-chain and --verify against the CA, with purposes and names', async () => {
      for (const l of ca.leaves) {
        const chain = path.join(root, `chain-${path.basename(l.cert)}.pem`);
        fs.writeFileSync(chain, fs.readFileSync(l.cert, 'utf8') + fs.readFileSync(ca.caCert, 'utf8'));
        const r = ok(await run('certtool', ['--verify-chain', '--infile', chain]), `certtool --verify-chain ${l.label}`);
        assert.match(r.stdout, /Chain verification output: Verified\./, l.label);
        assert.doesNotMatch(r.stdout, /Not verified/, l.label);

        const base = ['--verify', '--verify-profile=medium', '--load-ca-certificate', ca.caCert, '--infile', l.cert];
        const purposes = l.server ? [EKU_SERVER, EKU_CLIENT] : [EKU_CLIENT];
        for (const p of purposes) {
          const v = ok(await run('certtool', [...base, `--verify-purpose=${p}`, ...(l.name ? [`--verify-hostname=${l.name}`] : [])]), `certtool --verify ${l.label} ${p}`);
          assert.match(v.stdout, /Chain verification output: Verified\./, `${l.label} for ${p}`);
        }
        if (!l.server) {
          const v = await run('certtool', [...base, `--verify-purpose=${EKU_SERVER}`]);
          assert.notEqual(v.code, 0, `${l.label} must not be valid for TLS servers`);
          assert.match(v.stdout, /Not verified/);
        }
        const foreign = await run('certtool', ['--verify', '--load-ca-certificate', other.caCert, '--infile', l.cert]);
        assert.notEqual(foreign.code, 0, `${l.label} must not verify under another cluster's CA`);
      }
    });

    test('Go crypto/x509: Verify with the right ExtKeyUsage and names', async () => {
      for (const l of ca.leaves) {
        const client = await goVerify(ca.caCert, l.cert, 'clientAuth');
        assert.match(ok(client, `go verify clientAuth ${l.label}`).stdout, /^OK /);
        const server = await goVerify(ca.caCert, l.cert, 'serverAuth', l.name);
        if (l.server) assert.match(ok(server, `go verify serverAuth ${l.label}`).stdout, /^OK /);
        else {
          assert.equal(server.code, 1, `${l.label} must not be valid for serverAuth: ${server.stdout}${server.stderr}`);
          assert.match(server.stdout, /incompatible key usage/);
        }
        if (l.name) {
          const wrong = await goVerify(ca.caCert, l.cert, 'serverAuth', l.sans.ip.length ? '10.9.9.9' : 'other.cairn.test');
          assert.equal(wrong.code, 1, `${l.label} must not be valid for another name`);
        }
        const foreign = await goVerify(other.caCert, l.cert, 'clientAuth');
        assert.equal(foreign.code, 1, `${l.label} must not verify under another cluster's CA`);
        assert.match(foreign.stdout, /unknown authority/);
      }
    });

    test('Python cryptography: loads every certificate and sees the intended fields', async () => {
      const r = ok(await run(python, ['-c', PY_INSPECT, ca.caCert, ...ca.leaves.map((l) => l.cert)]), 'python cryptography');
      const seen = JSON.parse(r.stdout) as { ca: any; leaves: any[] };
      const now = Date.now() / 1000;
      const hour = 3600;
      const day = 24 * hour;

      const c = seen.ca;
      assert.equal(c.version, 'v3');
      assert.deepEqual([c.subject.O, c.subject.OU, c.subject.CN], [[ca.clusterId], ['cairn cluster CA'], [CLUSTER_NAME]]);
      assert.equal(c.issuer.rfc4514, c.subject.rfc4514, 'self-issued');
      assert.equal(c.keyType, keyType);
      assert.deepEqual(c.bc, { ca: true, pathLength: null, critical: true });
      assert.equal(c.ku.critical, true);
      assert.equal(c.ku.keyCertSign, true);
      assert.equal(c.ku.crlSign, true);
      assert.equal(c.ski, c.skiFromKey, 'CA SKI is the RFC 5280 method-1 key identifier');
      assert.ok(c.aki === null || c.aki === c.ski);
      assert.equal(c.eku, null, 'root CA carries no EKU');
      assert.equal(c.signedByIssuer, true);
      assert.ok(c.serialBits > 0 && c.serialBits <= 127, 'positive serial of at most 16 bytes');
      assert.ok(Math.abs(c.notBefore - (ca.startedAt / 1000 - hour)) < 10 * 60, 'CA notBefore backdated by an hour');
      assert.ok(Math.abs(c.notAfter - (now + 20 * 365 * day)) < 2 * day, 'CA lives 20 years');

      assert.equal(seen.leaves.length, ca.leaves.length);
      const serials = new Set<string>([String(c.serial)]);
      seen.leaves.forEach((s, i) => {
        const l = ca.leaves[i];
        const what = l.label;
        assert.equal(s.version, 'v3', what);
        assert.deepEqual([s.subject.O, s.subject.OU, s.subject.CN], [[ca.clusterId], [l.ou], [l.cn]], what);
        assert.equal(s.issuer.rfc4514, c.subject.rfc4514, what);
        assert.equal(s.keyType, keyType, `${what}: key type follows --key-type`);
        assert.equal(s.serialBits, 127, `${what}: 16-byte serial with first byte 0x40..0x7f`);
        serials.add(String(s.serial));
        assert.deepEqual(s.bc, { ca: false, pathLength: null, critical: true }, what);
        assert.equal(s.ku.critical, true, what);
        assert.equal(s.ku.digitalSignature, true, what);
        assert.equal(s.ku.keyEncipherment, isRsa, `${what}: keyEncipherment only for RSA`);
        assert.equal(s.ku.keyCertSign, false, what);
        assert.equal(s.ku.crlSign, false, what);
        assert.equal(s.ku.keyAgreement, false, what);
        assert.deepEqual(s.eku, l.server ? [EKU_SERVER, EKU_CLIENT] : [EKU_CLIENT], what);
        assert.equal(s.ekuCritical, false, what);
        assert.equal(s.ski, s.skiFromKey, `${what}: SKI`);
        assert.equal(s.aki, c.ski, `${what}: AKI = CA SKI`);
        assert.equal(s.signedByIssuer, true, what);
        if (l.sans.dns.length || l.sans.ip.length) assert.deepEqual(s.sans, { ...l.sans, critical: false }, what);
        else assert.equal(s.sans, null, `${what}: no SAN`);
        assert.ok(Math.abs(s.notBefore - (ca.startedAt / 1000 - hour)) < 10 * 60, `${what}: notBefore backdated by an hour`);
        assert.ok(Math.abs(s.notAfter - (now + 365 * day)) < day, `${what}: default lifetime 365 days`);
      });
      assert.equal(serials.size, seen.leaves.length + 1, 'all serials distinct');
    });

    // NSS cannot import Ed25519 certificates at all (SEC_ERROR_ADDING_CERT), so it checks the others only.
    if (keyType !== 'ed25519') test('NSS: certutil validates the certificates for SSL server/client use', async () => {
      const db = path.join(root, 'nssdb');
      fs.mkdirSync(db);
      const d = `sql:${db}`;
      ok(await run('certutil', ['-N', '-d', d, '--empty-password']), 'certutil -N');
      ok(await run('certutil', ['-A', '-d', d, '-n', 'cluster-ca', '-t', 'CT,,', '-i', ca.caCert]), 'certutil -A CA');
      ok(await run('certutil', ['-A', '-d', d, '-n', 'other-ca', '-t', 'CT,,', '-i', other.caCert]), 'certutil -A other CA');
      for (const [i, l] of ca.leaves.entries()) {
        const nick = `leaf-${i}`;
        ok(await run('certutil', ['-A', '-d', d, '-n', nick, '-t', ',,', '-i', l.cert]), `certutil -A ${l.label}`);
        const client = ok(await run('certutil', ['-V', '-d', d, '-n', nick, '-u', 'C']), `certutil -V -u C ${l.label}`);
        assert.match(client.stdout, /certificate is valid/);
        const server = await run('certutil', ['-V', '-d', d, '-n', nick, '-u', 'V']);
        if (l.server) assert.match(ok(server, `certutil -V -u V ${l.label}`).stdout, /certificate is valid/);
        else assert.notEqual(server.code, 0, `${l.label} must not be valid for SSL servers`);
      }
    });

    test('mutual TLS: openssl s_server with the control certificate accepts node and API clients (TLS 1.2 and 1.3), refuses another cluster', async (t) => {
      const control = ca.leaves.find((l) => l.kind === 'control' && l.name === CONTROL_DNS)!;
      // s_server answers each connection with a page naming the client certificate it accepted
      const serverArgs = ['-cert', control.cert, '-key', control.key, '-CAfile', ca.caCert, '-Verify', '1', '-verify_return_error', '-x509_strict', '-www'];
      const start = async (): Promise<{ server: Background; port: number }> => {
        for (let attempt = 1; ; attempt++) {
          const port = await freePort();
          const server = startBackground('openssl', ['s_server', '-accept', `127.0.0.1:${port}`, ...serverArgs], { t });
          try {
            await server.waitFor(/ACCEPT/);
            return { server, port };
          } catch (e) {
            await server.stop();
            // the port was taken between freePort() and bind(): try another
            if (attempt >= 3 || !/in use|bind/i.test(server.stderr())) throw e;
          }
        }
      };
      const { server, port } = await start();

      const connect = (version: string, client: { cert: string; key: string }, trust = ca.caCert) =>
        run(
          'openssl',
          ['s_client', '-connect', `127.0.0.1:${port}`, version, '-servername', CONTROL_DNS, '-verify_hostname', CONTROL_DNS, '-CAfile', trust,
            '-verify_return_error', '-x509_strict', '-cert', client.cert, '-key', client.key, '-ign_eof'],
          { input: 'GET / HTTP/1.0\r\n\r\n', timeoutMs: 20_000 },
        );

      const clients = ca.leaves.filter((l) => l.kind === 'node' || l.kind === 'api');
      for (const version of ['-tls1_2', '-tls1_3']) {
        const proto = version === '-tls1_2' ? 'TLSv1.2' : 'TLSv1.3';
        for (const l of clients) {
          const r = await connect(version, l);
          const what = `${l.label} over ${proto}\nclient stdout: ${r.stdout}\nclient stderr: ${r.stderr}\nserver: ${server.stdout()}${server.stderr()}`;
          assert.equal(r.code, 0, what);
          assert.match(r.stdout, /Verify return code: 0 \(ok\)/, what);
          assert.match(r.stdout, new RegExp(`Protocol\\s*:\\s*${proto.replace('.', '\\.')}`), what);
          assert.match(r.stdout, /HTTP\/1\.0 200 ok/, `server answered: ${what}`);
          // the server's page shows the client certificate it accepted
          assert.match(r.stdout, /Client certificate/, what);
          assert.match(r.stdout, new RegExp(`Subject: O ?= ?${ca.clusterId}, OU ?= ?${l.ou}, CN ?= ?${l.cn}`), what);
        }
        // a client holding a certificate from another cluster is refused by the server
        const foreign = other.leaves.find((l) => l.kind === 'node')!;
        const r = await connect(version, foreign);
        const what = `foreign client over ${proto}\nclient stdout: ${r.stdout}\nclient stderr: ${r.stderr}`;
        assert.notEqual(r.code, 0, what);
        assert.doesNotMatch(r.stdout, /HTTP\/1\.0 200 ok/, what);
        assert.match(r.stderr, /alert (unknown ca|certificate unknown|bad certificate|handshake failure)/, what);
      }
      // and a client that trusts only another cluster's CA refuses this server
      const node = clients.find((l) => l.kind === 'node')!;
      const r = await connect('-tls1_3', node, other.caCert);
      assert.notEqual(r.code, 0, `client trusting another CA accepted the server: ${r.stdout}`);
      assert.doesNotMatch(r.stdout, /HTTP\/1\.0 200 ok/);
      assert.match(r.stdout + r.stderr, /unable to get local issuer certificate|certificate verify failed/);
      // the server saw the failed client verification
      assert.match(server.stdout() + server.stderr(), /certificate verify failed|unable to get local issuer certificate/);
      await server.stop();
    });
  });
}
