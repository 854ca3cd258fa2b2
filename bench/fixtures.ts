/**
 * Inputs shared by benchmarks: a cluster root CA (P-256) and a pool of P-256 CSRs from distinct
 * node keys, as a joining node would send them. Built once per process, on first use.
 */
import { KeyObject } from 'node:crypto';
import {
  createCsr, DAY_MS, generateKeyPair, issueCertificate, Issuer, leafProfile, makeIssuer, makeSerial, parseCsr, randomId, rootCaProfile,
  selfSignCertificate, spkiDer,
} from '../src/pki/index.js';

export interface CsrFixture {
  der: Buffer;
  /** The requester's key pair (the bench that needs a prepared KeyObject uses the public one). */
  publicKey: KeyObject;
  privateKey: KeyObject;
  /** The node ID the CA would assign to this requester. */
  nodeId: string;
}

export interface Fixtures {
  clusterId: string;
  caKey: KeyObject;
  caCertDer: Buffer;
  issuer: Issuer;
  csrs: CsrFixture[];
  /** Node certificate lifetime used by the issue benches (the default: 90 days). */
  lifetimeMs: number;
}

/** Number of distinct CSRs benches rotate through (so no per-key caching can flatter a result). */
export const CSR_POOL = 64;

let cached: Fixtures | undefined;

export function fixtures(): Fixtures {
  if (cached) return cached;
  const clusterId = randomId();
  const ca = generateKeyPair('ec-p256');
  const caCertDer = selfSignCertificate(
    rootCaProfile({ O: clusterId, CN: 'cluster-root-ca' }, spkiDer(ca.publicKey), makeSerial(1n)),
    ca.privateKey,
  );
  const issuer = makeIssuer(caCertDer, ca.privateKey);
  const csrs: CsrFixture[] = [];
  for (let i = 0; i < CSR_POOL; i++) {
    const k = generateKeyPair('ec-p256');
    // A node may ask for any subject; the CA ignores it.
    csrs.push({ der: createCsr(k.privateKey, { CN: `requested-${i}` }), publicKey: k.publicKey, privateKey: k.privateKey, nodeId: randomId() });
  }
  cached = { clusterId, caKey: ca.privateKey, caCertDer, issuer, csrs, lifetimeMs: 90 * DAY_MS };
  return cached;
}

/** What the CA does for a worker joining with a CSR: verify it, issue CN=<node id>, OU=worker, O=<cluster>. */
export function issueNodeCertificate(f: Fixtures, csrDer: Buffer, nodeId: string, sequence: bigint): Buffer {
  const csr = parseCsr(csrDer);
  return issueCertificate(
    leafProfile({
      subject: { O: f.clusterId, OU: 'worker', CN: nodeId },
      publicKeyDer: csr.publicKeyDer,
      publicKey: csr.publicKey,
      serial: makeSerial(sequence),
      lifetimeMs: f.lifetimeMs,
      extKeyUsage: ['serverAuth', 'clientAuth'],
      sans: [{ dns: 'worker' }, { dns: nodeId }],
    }),
    f.issuer,
  );
}
