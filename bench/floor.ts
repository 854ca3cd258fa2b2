/**
 * floor.native: the least work any P-256 CA must do per issued certificate, done with native
 * crypto on one core: verify the CSR's signature (proof of possession) and sign a TBSCertificate.
 * Keys are prepared KeyObjects and the inputs are ready-made bytes: no parsing, no building.
 */
import { sign, verify } from 'node:crypto';
import { bytesOf, children, decode } from '../src/pki/der.js';
import { BenchGroup, rateRow } from './harness.js';
import { fixtures, issueNodeCertificate } from './fixtures.js';

/** The to-be-signed part and the signature bits of a signed DER object (CSR or certificate). */
export function signedParts(der: Buffer): { tbs: Buffer; signature: Buffer } {
  const top = children(decode(der, 'signed object'), 'signed object', 3);
  const sigBits = bytesOf(top[2]);
  // BIT STRING: tag, length, unused-bits byte, then the signature.
  const headerLen = 2 + (sigBits[1] & 0x80 ? sigBits[1] & 0x7f : 0);
  return { tbs: bytesOf(top[0]), signature: sigBits.subarray(headerLen + 1) };
}

const group: BenchGroup = {
  name: 'floor',
  benches: [
    {
      name: 'floor.native',
      description: 'crypto.verify of a P-256 CSR signature + crypto.sign of a TBSCertificate-sized buffer',
      async prepare(ctx) {
        const f = fixtures();
        const jobs = f.csrs.map((c, i) => {
          const csr = signedParts(c.der);
          // A real TBSCertificate as issue.inprocess produces for this CSR: the same size to sign.
          const tbs = signedParts(issueNodeCertificate(f, c.der, c.nodeId, BigInt(i + 1))).tbs;
          return { info: csr.tbs, sig: csr.signature, key: c.publicKey, tbs };
        });
        ctx.log(`floor.native: TBSCertificate ${jobs[0].tbs.length} bytes, CertificationRequestInfo ${jobs[0].info.length} bytes`);
        return {
          op: (i) => {
            const j = jobs[i % jobs.length];
            if (!verify('sha256', j.info, j.key, j.sig)) throw new Error('floor.native: CSR signature did not verify');
            return sign('sha256', j.tbs, f.caKey);
          },
          rows: (rate) => [rateRow('floor.native', rate, 'pairs/s')],
        };
      },
    },
  ],
};

export default group;
