/**
 * Node certificate issuance, the CA's hot path for join and renew, without the network and the store:
 *
 *  issue.inprocess  cairn's PKI core: parseCsr (asn1js parse + native verify), then
 *                   issueCertificate(leafProfile(...), issuer) (asn1js/precomputed DER + native sign).
 *  issue.naive      the same job with @peculiar/x509 on Node's WebCrypto: Pkcs10CertificateRequest
 *                   parse + verify, X509CertificateGenerator.create with the same extensions.
 *  issue.ratio      issue.inprocess as a percentage of floor.native (the native crypto alone).
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { webcrypto } from 'node:crypto';
import { makeSerial } from '../src/pki/index.js';
import { BenchGroup, percentRow, rateRow } from './harness.js';
import { Fixtures, fixtures, issueNodeCertificate } from './fixtures.js';

type X509Crypto = Parameters<typeof x509.cryptoProvider.set>[0];
type X509CryptoKey = x509.X509CertificateCreateWithKeyParams['signingKey'];

x509.cryptoProvider.set(webcrypto as unknown as X509Crypto);

interface NaiveCa {
  signingKey: X509CryptoKey;
  issuerName: x509.Name;
  keyIdHex: string;
}

async function naiveCa(f: Fixtures): Promise<NaiveCa> {
  const pkcs8 = f.caKey.export({ type: 'pkcs8', format: 'der' });
  const signingKey = (await webcrypto.subtle.importKey('pkcs8', pkcs8, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign'])) as unknown as X509CryptoKey;
  const caCert = new x509.X509Certificate(f.caCertDer);
  return { signingKey, issuerName: new x509.Name(caCert.subjectName.toJSON() as x509.JsonNameParams), keyIdHex: f.issuer.keyId.toString('hex') };
}

/** The same job as issueNodeCertificate, written the obvious way with @peculiar/x509. */
export async function issueNodeCertificateNaive(f: Fixtures, ca: NaiveCa, csrDer: Buffer, nodeId: string, sequence: bigint): Promise<Buffer> {
  const csr = new x509.Pkcs10CertificateRequest(csrDer);
  if (!(await csr.verify())) throw new Error('CSR signature does not verify');
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: makeSerial(sequence).toString('hex'),
    issuer: ca.issuerName,
    subject: new x509.Name([
      { '2.5.4.10': [{ utf8String: f.clusterId }] },
      { '2.5.4.11': [{ utf8String: 'worker' }] },
      { '2.5.4.3': [{ utf8String: nodeId }] },
    ]),
    notBefore: new Date(Math.floor((now - 3600_000) / 1000) * 1000),
    notAfter: new Date(Math.floor((now + f.lifetimeMs) / 1000) * 1000),
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' } as webcrypto.EcdsaParams,
    publicKey: csr.publicKey,
    signingKey: ca.signingKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      await x509.SubjectKeyIdentifierExtension.create(csr.publicKey),
      new x509.AuthorityKeyIdentifierExtension(ca.keyIdHex),
      new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: 'worker' }, { type: 'dns', value: nodeId }]),
    ],
  });
  return Buffer.from(cert.rawData);
}

let sequence = 1000n;

const group: BenchGroup = {
  name: 'issue',
  benches: [
    {
      name: 'issue.inprocess',
      description: 'parseCsr (parse + verify a P-256 CSR) + issueCertificate(leafProfile(...)) of a node certificate',
      async prepare() {
        const f = fixtures();
        return {
          op: (i) => {
            const c = f.csrs[i % f.csrs.length];
            return issueNodeCertificate(f, c.der, c.nodeId, sequence++);
          },
          rows: (rate) => [rateRow('issue.inprocess', rate, 'certs/s', { baseline: 'floor.native' })],
        };
      },
    },
    {
      name: 'issue.naive',
      description: 'the same with @peculiar/x509 on WebCrypto (concurrency 1)',
      async prepare() {
        const f = fixtures();
        const ca = await naiveCa(f);
        return {
          async: true,
          op: (i) => {
            const c = f.csrs[i % f.csrs.length];
            return issueNodeCertificateNaive(f, ca, c.der, c.nodeId, sequence++);
          },
          rows: (rate) => [rateRow('issue.naive', rate, 'certs/s', { baseline: 'floor.native' })],
        };
      },
    },
  ],
  derived: [
    {
      name: 'issue.ratio',
      inputs: ['issue.inprocess', 'floor.native'],
      compute: (rows) => percentRow('issue.ratio', rows['issue.inprocess'], rows['floor.native'], 'issue.inprocess / floor.native (goal ≥ 40%)'),
    },
  ],
};

export default group;
