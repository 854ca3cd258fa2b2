/**
 * Unit tests of the pure PKI core (src/pki): keys, CSRs, serials, names, identifiers,
 * certificate building and parsing, chain verification. Cross-checks use Node's own X.509
 * parser and, for a few CSRs, the openssl command line.
 */
import assert from 'node:assert/strict';
import { createHash, createPublicKey, generateKeyPairSync, KeyObject, X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import {
  certificateFromPem,
  certificateInfo,
  certificateToPem,
  createCsr,
  csrDerFrom,
  csrToPem,
  describeKey,
  fingerprint256,
  generateKeyPair,
  ID_RE,
  issueCertificate,
  KEY_TYPES,
  KeyType,
  keyIdentifier,
  leafProfile,
  makeIssuer,
  makeSerial,
  MAX_SEQUENCE,
  parseCsr,
  PkiError,
  privateKeyFromPem,
  privateKeyToPem,
  randomId,
  rootCaProfile,
  rootDigest,
  sanFor,
  selfSignCertificate,
  sequenceOf,
  serialHex,
  spkiDer,
  validateDnsName,
  verifyChain,
  chainToSend,
  certificatesFromPem,
} from '../../src/pki/index.js';
import { pooledRandomBytes } from '../../src/pki/random.js';
import { run, tmpDir } from '../helpers.js';

/** Assert that fn throws a PkiError with this code. */
function throwsPki(fn: () => unknown, code: string, message?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof PkiError, `expected a PkiError, got ${String(e)}`);
    assert.equal(e.code, code, `expected code ${code}, got ${e.code}: ${e.message}`);
    if (message) assert.match(e.message, message);
    return true;
  });
}

let seq = 1n;
const nextSerial = () => makeSerial(seq++);

function makeCa(type: KeyType = 'ec-p256', cn = 'test CA', now = new Date()) {
  const kp = generateKeyPair(type);
  const der = selfSignCertificate(rootCaProfile({ O: randomId(), OU: 'cairn cluster CA', CN: cn }, spkiDer(kp.publicKey), makeSerial(0n), now), kp.privateKey);
  return { der, key: kp.privateKey, issuer: makeIssuer(der, kp.privateKey) };
}

function makeLeaf(
  ca: ReturnType<typeof makeCa>,
  o: { type?: KeyType; lifetimeMs?: number; now?: Date; eku?: ('serverAuth' | 'clientAuth')[]; sans?: ReturnType<typeof sanFor>[]; cn?: string } = {},
) {
  const kp = generateKeyPair(o.type ?? 'ec-p256');
  const der = issueCertificate(
    leafProfile({
      subject: { O: 'cluster-x', OU: 'node', CN: o.cn ?? 'leaf' },
      publicKeyDer: spkiDer(kp.publicKey),
      publicKey: kp.publicKey,
      serial: nextSerial(),
      lifetimeMs: o.lifetimeMs ?? 24 * 3600_000,
      extKeyUsage: o.eku ?? ['serverAuth', 'clientAuth'],
      sans: o.sans,
      now: o.now,
    }),
    ca.issuer,
  );
  return { der, key: kp.privateKey };
}

/** Independent key identifier: SHA-1 of the raw public key bytes, taken via JWK, not via DER parsing. */
function rawPublicKey(key: KeyObject): Buffer {
  const jwk = createPublicKey(key).export({ format: 'jwk' });
  if (jwk.kty === 'EC') return Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, 'base64url'), Buffer.from(jwk.y!, 'base64url')]);
  if (jwk.kty === 'OKP') return Buffer.from(jwk.x!, 'base64url');
  // RSA: the subjectPublicKey is the PKCS#1 RSAPublicKey DER
  return createPublicKey(key).export({ type: 'pkcs1', format: 'der' });
}

describe('keys', () => {
  const expected: Record<KeyType, { type: string; name: string }> = {
    'ec-p256': { type: 'ec', name: 'P-256' },
    'ec-p384': { type: 'ec', name: 'P-384' },
    'rsa-2048': { type: 'rsa', name: 'rsa-2048' },
    'rsa-3072': { type: 'rsa', name: 'rsa-3072' },
    'rsa-4096': { type: 'rsa', name: 'rsa-4096' },
    ed25519: { type: 'ed25519', name: 'ed25519' },
  };

  test('every key type is generated, described, and round-trips through PKCS#8 PEM', () => {
    assert.deepEqual([...KEY_TYPES].sort(), Object.keys(expected).sort());
    for (const type of KEY_TYPES) {
      const kp = generateKeyPair(type);
      assert.equal(kp.privateKey.type, 'private');
      assert.equal(kp.privateKey.asymmetricKeyType, expected[type].type, type);
      assert.equal(describeKey(kp.privateKey).name, expected[type].name, type);
      const pem = privateKeyToPem(kp.privateKey);
      assert.match(pem, /^-----BEGIN PRIVATE KEY-----\n/, `${type}: PKCS#8`);
      const back = privateKeyFromPem(pem);
      assert.ok(spkiDer(back).equals(spkiDer(kp.publicKey)), `${type}: same key after PEM round trip`);
      assert.ok(spkiDer(kp.privateKey).equals(spkiDer(kp.publicKey)), `${type}: SPKI of private and public key agree`);
      if (type.startsWith('rsa')) assert.equal(kp.publicKey.asymmetricKeyDetails?.publicExponent, 0x10001n);
    }
  });

  test('the default key type is ECDSA P-256', () => {
    assert.equal(describeKey(generateKeyPair().privateKey).name, 'P-256');
  });

  test('privateKeyFromPem accepts traditional SEC1 and PKCS#1 forms', () => {
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const sec1 = ec.privateKey.export({ type: 'sec1', format: 'pem' }) as string;
    assert.ok(spkiDer(privateKeyFromPem(sec1)).equals(spkiDer(ec.publicKey)));
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const pkcs1 = rsa.privateKey.export({ type: 'pkcs1', format: 'pem' }) as string;
    assert.ok(spkiDer(privateKeyFromPem(pkcs1)).equals(spkiDer(rsa.publicKey)));
  });

  test('privateKeyFromPem refuses garbage, encrypted keys, weak RSA and unsupported curves', () => {
    throwsPki(() => privateKeyFromPem('not a key'), 'bad_key');
    throwsPki(() => privateKeyFromPem('-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n'), 'bad_key');
    const enc = generateKeyPairSync('ec', {
      namedCurve: 'P-256',
      privateKeyEncoding: { type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase: 'pw' },
      publicKeyEncoding: { type: 'spki', format: 'pem' },
    });
    throwsPki(() => privateKeyFromPem(enc.privateKey), 'bad_key', /encrypted/);
    const weak = generateKeyPairSync('rsa', { modulusLength: 1024 });
    throwsPki(() => privateKeyFromPem(privateKeyToPem(weak.privateKey)), 'weak_key', /2048/);
    const k1 = generateKeyPairSync('ec', { namedCurve: 'secp256k1' });
    throwsPki(() => privateKeyFromPem(privateKeyToPem(k1.privateKey)), 'unsupported_key');
  });
});

describe('CSR', () => {
  test('createCsr + parseCsr round trip for every key type (DER and PEM)', () => {
    for (const type of KEY_TYPES) {
      const kp = generateKeyPair(type);
      const der = createCsr(kp.privateKey, { CN: 'requested-name', O: 'ignored' });
      const parsed = parseCsr(der);
      assert.ok(parsed.publicKeyDer.equals(spkiDer(kp.publicKey)), `${type}: public key`);
      assert.ok(spkiDer(parsed.publicKey).equals(spkiDer(kp.publicKey)), `${type}: KeyObject`);
      const pem = csrToPem(der);
      assert.match(pem, /^-----BEGIN CERTIFICATE REQUEST-----\n/);
      assert.ok(csrDerFrom(pem).equals(der), `${type}: PEM round trip`);
      assert.ok(parseCsr(csrDerFrom(pem)).publicKeyDer.equals(parsed.publicKeyDer));
    }
  });

  test('parseCsr accepts a Uint8Array view into a larger buffer', () => {
    const der = createCsr(generateKeyPair().privateKey);
    const big = new Uint8Array(der.length + 20);
    big.set(der, 10);
    const view = big.subarray(10, 10 + der.length);
    assert.ok(parseCsr(view as Buffer).publicKeyDer.length > 0);
  });

  test('parseCsr refuses garbage and empty input', () => {
    throwsPki(() => parseCsr(Buffer.from('this is not a CSR at all')), 'bad_csr');
    throwsPki(() => parseCsr(Buffer.alloc(0)), 'bad_csr');
    throwsPki(() => parseCsr(Buffer.from([0x30, 0x03, 0x02, 0x01, 0x00])), 'bad_csr');
    throwsPki(() => parseCsr(Buffer.from([0x30, 0x82, 0xff, 0xff])), 'bad_csr');
  });

  test('parseCsr refuses trailing bytes and truncation', () => {
    const der = createCsr(generateKeyPair().privateKey);
    throwsPki(() => parseCsr(Buffer.concat([der, Buffer.from([0])])), 'bad_csr', /trailing/);
    throwsPki(() => parseCsr(der.subarray(0, der.length - 1)), 'bad_csr');
  });

  test('parseCsr refuses a request larger than MAX_CSR_BYTES', () => {
    throwsPki(() => parseCsr(Buffer.alloc(64 * 1024, 0x30)), 'bad_csr', /larger/);
  });

  test('parseCsr refuses a tampered signature (bad_csr_signature) for every key type', () => {
    for (const type of ['ec-p256', 'rsa-2048', 'ed25519'] as KeyType[]) {
      const der = Buffer.from(createCsr(generateKeyPair(type).privateKey));
      // the signature BIT STRING is the last element: flip a bit of its last byte
      const tampered = Buffer.from(der);
      tampered[tampered.length - 1] ^= 0x01;
      throwsPki(() => parseCsr(tampered), 'bad_csr_signature');
    }
  });

  test('parseCsr refuses a request whose signed info was changed after signing', () => {
    const der = Buffer.from(createCsr(generateKeyPair().privateKey, { CN: 'aaaa' }));
    const i = der.indexOf(Buffer.from('aaaa'));
    assert.ok(i > 0);
    der.write('bbbb', i, 'latin1');
    throwsPki(() => parseCsr(der), 'bad_csr_signature');
  });

  test('parseCsr refuses a proof of possession made with another key', () => {
    const a = generateKeyPair();
    const b = generateKeyPair();
    const csrA = createCsr(a.privateKey);
    const csrB = createCsr(b.privateKey);
    // B's request with A's public key put in its place: well-formed, but B signed it, not A
    const spkiA = spkiDer(a.publicKey);
    const spkiB = spkiDer(b.publicKey);
    assert.equal(spkiA.length, spkiB.length);
    const forged = Buffer.from(csrB);
    const at = forged.indexOf(spkiB);
    assert.ok(at > 0);
    spkiA.copy(forged, at);
    assert.ok(!forged.equals(csrB) && !forged.equals(csrA));
    throwsPki(() => parseCsr(forged), 'bad_csr_signature');
  });

  test('parseCsr refuses an RSA-1024 key (weak_key), from createCsr and from openssl', async (t) => {
    const weak = generateKeyPairSync('rsa', { modulusLength: 1024 });
    throwsPki(() => parseCsr(createCsr(weak.privateKey)), 'weak_key');
    const dir = tmpDir(t);
    const keyFile = path.join(dir, 'weak.key');
    fs.writeFileSync(keyFile, privateKeyToPem(weak.privateKey), { mode: 0o600 });
    const out = path.join(dir, 'weak.csr');
    const r = await run('openssl', ['req', '-new', '-key', keyFile, '-subj', '/CN=weak', '-outform', 'DER', '-out', out]);
    assert.equal(r.code, 0, r.stderr);
    throwsPki(() => parseCsr(fs.readFileSync(out)), 'weak_key');
  });

  test('parseCsr refuses unsupported and mismatched signature algorithms', () => {
    const ecdsaSha256 = Buffer.from('06082a8648ce3d040302', 'hex');
    const der = createCsr(generateKeyPair('ec-p256').privateKey);
    const at = der.lastIndexOf(ecdsaSha256);
    assert.ok(at > 0);
    // ecdsa-with-SHA224 (1.2.840.10045.4.3.1): not accepted
    const sha224 = Buffer.from(der);
    sha224[at + ecdsaSha256.length - 1] = 0x01;
    throwsPki(() => parseCsr(sha224), 'bad_csr', /1\.2\.840\.10045\.4\.3\.1.*not supported/);
    // ecdsa-with-SHA384 on a P-256 key is a supported pair, but the signature was made with SHA-256
    const sha384 = Buffer.from(der);
    sha384[at + ecdsaSha256.length - 1] = 0x03;
    throwsPki(() => parseCsr(sha384), 'bad_csr_signature');
    // Ed25519 algorithm on an EC key: mismatch
    const edAlg = Buffer.from('300506032b6570', 'hex');
    const algSeq = Buffer.from('300a06082a8648ce3d040302', 'hex');
    const algAt = der.lastIndexOf(algSeq);
    const mismatched = Buffer.concat([der.subarray(0, algAt), edAlg, der.subarray(algAt + algSeq.length)]);
    // fix the outer SEQUENCE length (long form, 1 length byte for requests under 256 bytes)
    assert.equal(mismatched[0], 0x30);
    if (mismatched[1] === 0x81) mismatched[2] -= algSeq.length - edAlg.length;
    else mismatched[1] -= algSeq.length - edAlg.length;
    throwsPki(() => parseCsr(mismatched), 'bad_csr', /does not match/);
  });

  test('parseCsr refuses a public key that is not on its curve', () => {
    const kp = generateKeyPair('ec-p256');
    const der = Buffer.from(createCsr(kp.privateKey));
    const spki = spkiDer(kp.publicKey);
    const at = der.indexOf(spki);
    // change the last byte of Y: the point leaves the curve
    der[at + spki.length - 1] ^= 0x01;
    assert.throws(() => parseCsr(der), (e: unknown) => e instanceof PkiError && ['unsupported_key', 'bad_csr_signature'].includes(e.code));
  });

  test('parseCsr accepts CSRs made by openssl (P-256, P-384, RSA-2048, Ed25519)', async (t) => {
    const dir = tmpDir(t);
    for (const [name, type] of [['p256', 'ec-p256'], ['p384', 'ec-p384'], ['rsa', 'rsa-2048'], ['ed', 'ed25519']] as [string, KeyType][]) {
      const kp = generateKeyPair(type);
      const keyFile = path.join(dir, `${name}.key`);
      const csrFile = path.join(dir, `${name}.csr`);
      fs.writeFileSync(keyFile, privateKeyToPem(kp.privateKey), { mode: 0o600 });
      const r = await run('openssl', ['req', '-new', '-key', keyFile, '-subj', `/CN=${name}`, '-out', csrFile]);
      assert.equal(r.code, 0, r.stderr);
      const parsed = parseCsr(csrDerFrom(fs.readFileSync(csrFile, 'utf8')));
      assert.ok(parsed.publicKeyDer.equals(spkiDer(kp.publicKey)), name);
    }
  });

  test('csrDerFrom refuses PEM without exactly one request', () => {
    throwsPki(() => csrDerFrom('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n'), 'bad_csr');
    const pem = csrToPem(createCsr(generateKeyPair().privateKey));
    throwsPki(() => csrDerFrom(pem + pem), 'bad_csr');
  });
});

describe('serials', () => {
  test('makeSerial: exactly 16 bytes, first byte 0x40..0x7f, sequence recoverable', () => {
    for (const s of [0n, 1n, 2n, 255n, 1n << 40n, MAX_SEQUENCE]) {
      const serial = makeSerial(s);
      assert.equal(serial.length, 16);
      assert.ok(serial[0] >= 0x40 && serial[0] <= 0x7f, `first byte ${serial[0].toString(16)}`);
      assert.equal(sequenceOf(serial), s);
      assert.equal(serialHex(serial), serial.toString('hex').toUpperCase());
    }
    assert.equal(makeSerial(MAX_SEQUENCE)[0], 0x7f);
    assert.equal(makeSerial(0n)[0], 0x40);
  });

  test('makeSerial: random low half, unique over many calls, even for one sequence number', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 5000; i++) seen.add(makeSerial(7n).toString('hex'));
    for (let i = 0; i < 5000; i++) seen.add(makeSerial(BigInt(i)).toString('hex'));
    assert.equal(seen.size, 10000);
    const lows = new Set([...seen].map((h) => h.slice(16)));
    assert.equal(lows.size, 10000, 'the random halves do not repeat');
  });

  test('pooled random bytes: serials, IDs and odd sizes share one pool and never hand out the same bytes twice', () => {
    // sizes that do not divide the pool: draws straddle its refills
    const seen = new Set<string>();
    let n = 0;
    for (let i = 0; i < 3000; i++) {
      for (const size of [6, 16, 13]) {
        seen.add(pooledRandomBytes(size).toString('hex').slice(0, 12));
        n++;
      }
      seen.add(randomId());
      seen.add(makeSerial(1n).toString('hex').slice(16));
      n += 2;
    }
    assert.equal(seen.size, n, 'no draw repeats another');
    const big = pooledRandomBytes(10_000); // larger than the pool: drawn directly
    assert.equal(big.length, 10_000);
    assert.notDeepEqual(big.subarray(0, 16), big.subarray(16, 32));
  });

  test('makeSerial refuses sequence numbers out of range', () => {
    throwsPki(() => makeSerial(-1n), 'bad_serial');
    throwsPki(() => makeSerial(MAX_SEQUENCE + 1n), 'bad_serial');
  });

  test('serials stay 16 bytes in the DER of an issued certificate (positive, minimal)', () => {
    const ca = makeCa();
    const leaf = makeLeaf(ca);
    const info = certificateInfo(leaf.der);
    assert.equal(info.serial.length, 16);
    assert.ok(info.serial[0] >= 0x40 && info.serial[0] <= 0x7f);
    assert.equal(new X509Certificate(leaf.der).serialNumber.length, 32);
  });
});

describe('names and identifiers', () => {
  test('sanFor accepts DNS names, IPv4 and IPv6 (bracketed too)', () => {
    assert.deepEqual(sanFor('example.com'), { dns: 'example.com' });
    assert.deepEqual(sanFor('Control-1.Example.COM'), { dns: 'control-1.example.com' });
    assert.deepEqual(sanFor('localhost'), { dns: 'localhost' });
    assert.deepEqual(sanFor('*.example.com'), { dns: '*.example.com' });
    assert.deepEqual(sanFor('10.0.0.1'), { ip: '10.0.0.1' });
    assert.deepEqual(sanFor('::1'), { ip: '::1' });
    assert.deepEqual(sanFor('2001:db8::7'), { ip: '2001:db8::7' });
    assert.deepEqual(sanFor('[fe80::1]'), { ip: 'fe80::1' });
    assert.deepEqual(sanFor('a'.repeat(63) + '.com'), { dns: 'a'.repeat(63) + '.com' });
  });

  test('sanFor refuses trailing dots, underscores, empty labels and other non-LDH names', () => {
    for (const bad of ['example.com.', 'my_host', 'a_b.example.com', '', '.', 'a..b', '.example.com', '-a.com', 'a-.com', 'a b', 'a'.repeat(64) + '.com', '*.com', 'ex*ample.com', 'é.com', '[not-an-ip]']) {
      throwsPki(() => sanFor(bad), 'bad_hostname');
    }
    throwsPki(() => sanFor('host.'), 'bad_hostname', /dot/);
    throwsPki(() => sanFor(''), 'bad_hostname', /empty/);
    throwsPki(() => sanFor('a..b'), 'bad_hostname', /empty label/);
    assert.equal(validateDnsName('x'.repeat(254)), 'is longer than 253 characters');
  });

  test('rootDigest: 50 lowercase base36 characters, the SHA-256 of the DER', () => {
    const ca = makeCa();
    const d = rootDigest(ca.der);
    assert.match(d, /^[0-9a-z]{50}$/);
    const independent = BigInt('0x' + createHash('sha256').update(ca.der).digest('hex')).toString(36).padStart(50, '0');
    assert.equal(d, independent);
    assert.equal(rootDigest(ca.der), d, 'deterministic');
    assert.notEqual(rootDigest(makeCa().der), d);
    // a digest with leading zero bits is still padded to 50 characters
    assert.match(rootDigest(Buffer.alloc(0)), /^[0-9a-z]{50}$/);
  });

  test('randomId: 25 lowercase base36 characters, unique', () => {
    const ids = new Set<string>();
    for (let i = 0; i < 2000; i++) {
      const id = randomId();
      assert.match(id, /^[0-9a-z]{25}$/);
      assert.ok(ID_RE.test(id));
      ids.add(id);
    }
    assert.equal(ids.size, 2000);
  });

  test('fingerprint256 matches the form and value Node reports', () => {
    const ca = makeCa();
    assert.equal(fingerprint256(ca.der), new X509Certificate(ca.der).fingerprint256);
  });
});

describe('certificates', () => {
  test('root CA: self-signed, CA:true, 20 years, backdated, SKI from the key, no AKI', () => {
    const now = new Date();
    for (const type of ['ec-p256', 'rsa-2048', 'ed25519'] as KeyType[]) {
      const ca = makeCa(type, 'root', now);
      const x = new X509Certificate(ca.der);
      assert.ok(x.ca, `${type}: CA flag`);
      assert.ok(x.verify(x.publicKey), `${type}: self-signature`);
      assert.ok(x.checkIssued(x));
      const info = certificateInfo(ca.der);
      assert.equal(info.isCA, true);
      assert.equal(info.authorityKeyId, null);
      const expectedSki = createHash('sha1').update(rawPublicKey(ca.key)).digest();
      assert.ok(info.subjectKeyId?.equals(expectedSki), `${type}: SKI is SHA-1 of the public key`);
      assert.ok(keyIdentifier(info.publicKeyDer).equals(expectedSki));
      assert.ok(now.getTime() - info.notBefore.getTime() >= 59 * 60_000, 'backdated');
      const years = (info.notAfter.getTime() - now.getTime()) / (365 * 24 * 3600_000);
      assert.ok(years > 19.9 && years < 20.1, `${years} years`);
    }
  });

  test('certificateInfo round trip: subject attributes, SANs (DNS, IPv4, IPv6), EKU, SKI/AKI linkage', () => {
    const ca = makeCa('ec-p256');
    const sans = ['node-1.example.com', '10.1.2.3', '2001:db8::1', '::1', 'fe80::1:0:0:2'].map(sanFor);
    const leaf = makeLeaf(ca, { sans, cn: 'a-node', eku: ['serverAuth', 'clientAuth'] });
    const info = certificateInfo(leaf.der);
    const caInfo = certificateInfo(ca.der);
    assert.deepEqual(info.subjectAttrs, { O: 'cluster-x', OU: 'node', CN: 'a-node' });
    assert.deepEqual(info.sans, [{ dns: 'node-1.example.com' }, { ip: '10.1.2.3' }, { ip: '2001:db8::1' }, { ip: '::1' }, { ip: 'fe80::1:0:0:2' }]);
    assert.deepEqual(info.extKeyUsage, ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    assert.equal(info.isCA, false);
    assert.ok(info.authorityKeyId?.equals(caInfo.subjectKeyId!), 'AKI of the leaf = SKI of the CA');
    assert.ok(info.subjectKeyId?.equals(createHash('sha1').update(rawPublicKey(leaf.key)).digest()), 'leaf SKI');
    assert.ok(info.issuerDer.equals(caInfo.subjectDer), 'issuer name = CA subject name, byte for byte');
    assert.equal(info.issuer, caInfo.subject);
    // Node's parser sees the same
    const x = new X509Certificate(leaf.der);
    assert.equal(x.subjectAltName, 'DNS:node-1.example.com, IP Address:10.1.2.3, IP Address:2001:DB8:0:0:0:0:0:1, IP Address:0:0:0:0:0:0:0:1, IP Address:FE80:0:0:0:1:0:0:2');
    assert.equal(x.ca, false);
    assert.deepEqual(x.keyUsage, ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    assert.equal(info.serialHex, x.serialNumber.toUpperCase());
    assert.equal(x.checkIssued(new X509Certificate(ca.der)), true);
    // PEM round trip
    assert.ok(certificateFromPem(certificateToPem(leaf.der), 'leaf').equals(leaf.der));
  });

  test('UTF-8 subject attributes survive the round trip', () => {
    const ca = makeCa('ec-p256', 'Grüße — 集群');
    assert.equal(certificateInfo(ca.der).subjectAttrs.CN, 'Grüße — 集群');
    assert.match(new X509Certificate(ca.der).subject, /CN=Grüße — 集群/);
  });

  test('leaf lifetime: backdated one hour, clamped to the CA notAfter', () => {
    const now = new Date();
    const ca = makeCa('ec-p256', 'c', now);
    const leaf = certificateInfo(makeLeaf(ca, { now, lifetimeMs: 10 * 24 * 3600_000 }).der);
    assert.equal(leaf.notBefore.getTime(), Math.floor((now.getTime() - 3600_000) / 1000) * 1000);
    assert.equal(leaf.notAfter.getTime(), Math.floor((now.getTime() + 10 * 24 * 3600_000) / 1000) * 1000);
    const long = certificateInfo(makeLeaf(ca, { now, lifetimeMs: 30 * 365 * 24 * 3600_000 }).der);
    assert.equal(long.notAfter.getTime(), certificateInfo(ca.der).notAfter.getTime());
  });

  test('RSA leaves get keyEncipherment, others only digitalSignature', () => {
    const ca = makeCa();
    // Node does not expose KeyUsage directly; check the encoded extension instead
    const kuExt = (der: Buffer) => {
      const at = der.indexOf(Buffer.from('0603551d0f', 'hex'));
      return der.subarray(at, at + 14).toString('hex');
    };
    // 03 02 05 a0 = digitalSignature + keyEncipherment; 03 02 07 80 = digitalSignature
    assert.match(kuExt(makeLeaf(ca, { type: 'rsa-2048' }).der), /030205a0$/);
    assert.match(kuExt(makeLeaf(ca, { type: 'ec-p256' }).der), /03020780$/);
    assert.match(kuExt(makeLeaf(ca, { type: 'ed25519' }).der), /03020780$/);
  });

  test('certificateInfo and certificateFromPem refuse garbage', () => {
    throwsPki(() => certificateInfo(Buffer.from('garbage')), 'bad_der');
    throwsPki(() => certificateFromPem('nothing here', 'x.crt'), 'bad_pem');
    throwsPki(() => certificateFromPem('-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n', 'x.crt'), 'bad_certificate');
  });

  test('makeIssuer refuses a key that does not match, and a leaf certificate', () => {
    const ca = makeCa();
    const other = makeCa();
    throwsPki(() => makeIssuer(ca.der, other.key), 'key_mismatch');
    const leaf = makeLeaf(ca);
    throwsPki(() => makeIssuer(leaf.der, leaf.key), 'not_ca');
  });

  test('selfSignCertificate refuses a key that does not match the profile, and a weak key', () => {
    const a = generateKeyPair();
    const b = generateKeyPair();
    throwsPki(() => selfSignCertificate(rootCaProfile({ CN: 'x' }, spkiDer(a.publicKey), makeSerial(0n)), b.privateKey), 'key_mismatch');
    const weak = generateKeyPairSync('rsa', { modulusLength: 1024 });
    throwsPki(() => selfSignCertificate(rootCaProfile({ CN: 'x' }, spkiDer(weak.publicKey), makeSerial(0n)), weak.privateKey), 'weak_key');
  });
});

describe('chainToSend', () => {
  const pem = (d: Buffer) => certificateToPem(d);
  const x = (d: Buffer) => new X509Certificate(d);
  const sent = (t: string) => certificatesFromPem(t, 'the chain sent');

  test('a lone certificate gets its trusted root appended; a chain, a root, or a certificate no trusted one issued is left as it is', () => {
    const ca = makeCa();
    const other = makeCa();
    const leaf = makeLeaf(ca);
    assert.deepEqual(sent(chainToSend(pem(leaf.der), [x(other.der), x(ca.der)])), [leaf.der, ca.der]);
    const chained = pem(leaf.der) + pem(ca.der);
    assert.equal(chainToSend(chained, [x(ca.der)]), chained);
    assert.equal(chainToSend(pem(ca.der), [x(ca.der)]), pem(ca.der));
    assert.equal(chainToSend(pem(leaf.der), [x(other.der)]), pem(leaf.der));
    assert.equal(chainToSend(pem(leaf.der), []), pem(leaf.der));
  });

  test('up to the root through trusted CA certificates; the self-signed root before a cross-signed certificate of the same key', () => {
    const oldRoot = makeCa('ec-p256', 'old root');
    const kp = generateKeyPair();
    const subject = { O: randomId(), OU: 'cairn cluster CA', CN: 'new root' };
    const newRoot = selfSignCertificate(rootCaProfile(subject, spkiDer(kp.publicKey), nextSerial()), kp.privateKey);
    const cross = issueCertificate({ ...rootCaProfile(subject, spkiDer(kp.publicKey), nextSerial()), ca: { pathLength: 1 } }, oldRoot.issuer);
    const leaf = makeLeaf({ der: newRoot, key: kp.privateKey, issuer: makeIssuer(newRoot, kp.privateKey) });
    assert.deepEqual(sent(chainToSend(pem(leaf.der), [x(cross), x(oldRoot.der), x(newRoot)])), [leaf.der, newRoot]);
    // trusting the cross-signed certificate and the old root only: the chain goes through it
    assert.deepEqual(sent(chainToSend(pem(leaf.der), [x(oldRoot.der), x(cross)])), [leaf.der, cross, oldRoot.der]);
    // the cross-signed certificate without the root above it: no chain to a root, left as it is
    assert.equal(chainToSend(pem(leaf.der), [x(cross)]), pem(leaf.der));
  });
});

describe('verifyChain', () => {
  test('accepts a good chain for each key type and purpose', () => {
    for (const type of ['ec-p256', 'rsa-2048', 'ed25519'] as KeyType[]) {
      const ca = makeCa(type);
      const leaf = makeLeaf(ca, { type });
      const path = verifyChain(leaf.der, [], [ca.der], { purpose: 'serverAuth' });
      assert.equal(path.length, 2);
      assert.ok(path[0].raw.equals(leaf.der));
      assert.ok(path[1].raw.equals(ca.der));
      verifyChain(leaf.der, [], [ca.der], { purpose: 'clientAuth' });
    }
  });

  test('accepts a chain through an intermediate CA', () => {
    const root = makeCa('ec-p256', 'root');
    const ikp = generateKeyPair();
    const interDer = issueCertificate(
      { ...rootCaProfile({ O: 'x', CN: 'intermediate' }, spkiDer(ikp.publicKey), nextSerial()), ca: { pathLength: 0 } },
      root.issuer,
    );
    const inter = { der: interDer, key: ikp.privateKey, issuer: makeIssuer(interDer, ikp.privateKey) };
    const leaf = makeLeaf(inter);
    assert.equal(verifyChain(leaf.der, [interDer], [root.der]).length, 3);
    assert.throws(() => verifyChain(leaf.der, [], [root.der]), (e: unknown) => e instanceof PkiError && e.code === 'untrusted');
  });

  test('rejects a leaf from another CA', () => {
    const ca = makeCa();
    const other = makeCa('ec-p256', 'test CA'); // same subject name, different key
    const leaf = makeLeaf(other);
    throwsPki(() => verifyChain(leaf.der, [], [ca.der]), 'untrusted');
    throwsPki(() => verifyChain(leaf.der, [other.der], [ca.der]), 'untrusted');
  });

  test('rejects an expired certificate and one not yet valid', () => {
    const ca = makeCa();
    const past = new Date(Date.now() - 10 * 24 * 3600_000);
    const expired = makeLeaf(ca, { now: past, lifetimeMs: 24 * 3600_000 });
    throwsPki(() => verifyChain(expired.der, [], [ca.der]), 'cert_expired');
    const leaf = makeLeaf(ca, { lifetimeMs: 24 * 3600_000 });
    throwsPki(() => verifyChain(leaf.der, [], [ca.der], { at: new Date(Date.now() + 2 * 24 * 3600_000) }), 'cert_expired');
    throwsPki(() => verifyChain(leaf.der, [], [ca.der], { at: new Date(Date.now() - 2 * 3600_000) }), 'cert_expired');
  });

  test('rejects a certificate used for a purpose it does not have', () => {
    const ca = makeCa();
    const client = makeLeaf(ca, { eku: ['clientAuth'] });
    verifyChain(client.der, [], [ca.der], { purpose: 'clientAuth' });
    throwsPki(() => verifyChain(client.der, [], [ca.der], { purpose: 'serverAuth' }), 'wrong_usage');
  });

  test('rejects a leaf used as a trust anchor for another leaf', () => {
    const ca = makeCa();
    const leaf = makeLeaf(ca);
    const other = makeLeaf(ca);
    throwsPki(() => verifyChain(other.der, [], [leaf.der]), 'untrusted');
  });
});

describe('CSR structure', () => {
  test('a CSR with an extra element after its fields is refused', async () => {
    const { tlv } = await import('../../src/pki/der.js');
    const k = generateKeyPair();
    const der = createCsr(k.privateKey);
    const headerLen = der[1] & 0x80 ? 2 + (der[1] & 0x7f) : 2;
    const smuggled = tlv(0x30, Buffer.concat([der.subarray(headerLen), Buffer.from([0x05, 0x00])]));
    assert.throws(() => parseCsr(smuggled), (e: Error & { code?: string }) => e.code === 'bad_csr' && /extra elements/.test(e.message));
    assert.ok(parseCsr(der).publicKey);
  });
});

test('sameName: names equal as RFC 5280 compares them, whatever the string types (a CRL made by Go for an OpenSSL-made CA)', async () => {
  const { sameName, encodeName } = await import('../../src/pki/index.js');
  const { tlv, oid, derOf } = await import('../../src/pki/der.js');
  const name = (pairs: [string, number, string][]) => tlv(0x30, ...pairs.map(([o, tag, v]) => tlv(0x31, tlv(0x30, derOf(oid(o)), tlv(tag, Buffer.from(v, tag === 0x0c ? 'utf8' : 'latin1'))))));
  const utf8 = encodeName({ O: 'Corp', CN: 'CFSSL Root' });
  const printable = name([['2.5.4.10', 0x13, 'Corp'], ['2.5.4.3', 0x13, 'CFSSL Root']]);
  assert.notDeepEqual(utf8, printable);
  assert.equal(sameName(utf8, printable), true);
  assert.equal(sameName(utf8, name([['2.5.4.10', 0x13, ' corp '], ['2.5.4.3', 0x0c, 'cfssl  root']])), true);
  assert.equal(sameName(utf8, name([['2.5.4.10', 0x13, 'Corp'], ['2.5.4.3', 0x13, 'CFSSL Root 2']])), false);
  assert.equal(sameName(utf8, name([['2.5.4.3', 0x13, 'CFSSL Root'], ['2.5.4.10', 0x13, 'Corp']])), false, 'RDN order matters');
  assert.equal(sameName(utf8, Buffer.from('3000', 'hex')), false);
  assert.equal(sameName(utf8, Buffer.from('30', 'hex')), false, 'not DER: not the same');
});

test('a CRL of 100,000 entries: its number and entries are read (in well under a second), as OpenSSL reads them', async (t) => {
  const { buildCrl, crlNumber, parseCrl, verifyCrl } = await import('../../src/pki/index.js');
  const ca = makeCa();
  const revoked = Array.from({ length: 100_000 }, (_, i) => ({ serial: makeSerial(BigInt(i + 1)), revokedAt: new Date(), reason: 'keyCompromise' as const }));
  const der = buildCrl({ issuer: ca.issuer, number: 4242n, thisUpdate: new Date(), nextUpdate: new Date(Date.now() + 86_400_000), revoked });
  assert.ok(der.length > 65_536 * 16, 'a CRL larger than 1 MiB');
  const t0 = performance.now();
  assert.equal(crlNumber(der), 4242n);
  const crl = parseCrl(der);
  assert.ok(performance.now() - t0 < 1000, `read in ${Math.round(performance.now() - t0)} ms`);
  assert.equal(crl.number, 4242n, 'the number, not 0 (asn1js could not decode a CRL this large)');
  assert.equal(crl.revoked.size, 100_000);
  assert.equal(verifyCrl(crl, [ca.der]), 0);
  const dir = tmpDir(t);
  fs.writeFileSync(path.join(dir, 'crl.der'), der);
  fs.writeFileSync(path.join(dir, 'ca.pem'), certificateToPem(ca.der));
  const out = await run('openssl', ['crl', '-inform', 'DER', '-in', path.join(dir, 'crl.der'), '-CAfile', path.join(dir, 'ca.pem'), '-noout', '-crlnumber']);
  assert.match(out.stdout + out.stderr, /crlNumber=0x1092/);
  assert.match(out.stderr + out.stdout, /verify OK/);
  // a CRL number extension that is not an INTEGER is refused, not read as 0
  const bad = Buffer.from(der);
  const at = bad.indexOf(Buffer.from('0603551d14', 'hex'));
  bad[at + 7] = 0x05; // OCTET STRING { INTEGER } -> OCTET STRING { NULL-tagged }
  throwsPki(() => crlNumber(bad), 'bad_crl');
});
