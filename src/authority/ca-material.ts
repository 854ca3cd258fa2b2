/**
 * CA material an operator brings (`init --ca-cert/--ca-key`, `init --from-pkcs12`): a root or
 * an intermediate with the chain up to its root, any subject, RSA or ECDSA — checked once,
 * here, before anything is recorded. The key may be absent when it is held elsewhere (an
 * external CA signs with it).
 */
import { X509Certificate, type KeyObject } from 'node:crypto';
import { certificateInfo, CertificateInfo, certificatesFromPem, checkKeyStrength, keysMatch, PkiError, privateKeyFromPem, isSelfSigned } from '../pki/index.js';
import { CairnError } from '../util/errors.js';

export interface CheckedCa {
  certDer: Buffer;
  /** the CA certificates above it, nearest first, ending with a self-signed root ([] for a root) */
  chain: Buffer[];
  key: KeyObject | null;
}

export interface CaCheckOptions {
  /** what to call it in errors ("--ca-cert") */
  what: string;
  /** it must outlive this (the node certificate lifetime) */
  minLifetimeMs: number;
  now?: Date;
  code?: 'bad_ca_material' | 'bad_pkcs12';
  /** certificates given that are not in the chain: refused (default), or ignored (a PKCS#12 file's others) */
  unrelated?: 'refuse' | 'ignore';
}


/**
 * Check a CA certificate (the first of `certs`; the rest is its chain, in any order) and its
 * key: a CA, the key belongs to it, valid now and for `minLifetimeMs` more, a subject key
 * identifier, key usage allowing certificate signing, the chain links up to a self-signed root,
 * and no path length constraint forbids it to issue.
 */
export function checkCaMaterial(certs: Buffer[], key: KeyObject | null, o: CaCheckOptions): CheckedCa {
  const code = o.code ?? 'bad_ca_material';
  const fail = (m: string) => new CairnError(code, `${o.what}: ${m}`);
  const now = o.now ?? new Date();
  if (certs.length === 0) throw fail('no certificate');
  let info: CertificateInfo;
  try {
    info = certificateInfo(certs[0]);
  } catch (e) {
    if (e instanceof PkiError) throw fail(e.message);
    throw e;
  }
  const x = new X509Certificate(certs[0]);
  if (!info.isCA) throw fail(`${info.subject} is not a CA certificate (no basicConstraints CA:TRUE)`);
  if (key) {
    try {
      checkKeyStrength(key);
    } catch (e) {
      if (e instanceof PkiError) throw fail(e.message);
      throw e;
    }
    if (!keysMatch(key, info.publicKeyDer)) throw fail(`the key does not belong to ${info.subject}`);
  }
  if (!info.subjectKeyId) throw fail(`${info.subject} has no subject key identifier (add subjectKeyIdentifier=hash)`);
  if (info.notBefore > now) throw fail(`${info.subject} is not valid before ${info.notBefore.toISOString()}`);
  if (info.notAfter <= now) throw fail(`${info.subject} expired on ${info.notAfter.toISOString()}`);
  if (info.notAfter.getTime() - now.getTime() < o.minLifetimeMs) {
    throw fail(`${info.subject} expires on ${info.notAfter.toISOString()}, before a node certificate issued now would: a CA must outlive the node certificate lifetime`);
  }
  if (info.keyUsage && !info.keyUsage.includes('keyCertSign')) throw fail(`${info.subject} has a key usage without keyCertSign: it may not issue certificates`);
  if (key && info.keyUsage && !info.keyUsage.includes('cRLSign')) throw fail(`${info.subject} has a key usage without cRLSign: it could not sign the cluster's CRLs`);
  // the chain: from the certificate up, each issued by the next, to a self-signed root
  const pool = certs.slice(1).map((d) => ({ der: d, x: new X509Certificate(d) }));
  const chain: Buffer[] = [];
  let cur = x;
  for (let depth = 0; !isSelfSigned(cur); depth++) {
    const next = pool.find((p) => !chain.includes(p.der) && cur.checkIssued(p.x) && cur.verify(p.x.publicKey));
    if (!next) {
      throw fail(
        depth === 0 && pool.length === 0
          ? `${one(cur.subject)} is not self-signed: give the chain up to its root in the same file (the intermediate first, then its issuers)`
          : `the chain of ${info.subject} stops at ${one(cur.subject)}: the certificate of its issuer ${one(cur.issuer)} is missing`,
      );
    }
    if (!next.x.ca) throw fail(`${one(next.x.subject)} in the chain is not a CA certificate`);
    if (new Date(next.x.validTo) <= now || new Date(next.x.validFrom) > now) throw fail(`${one(next.x.subject)} in the chain is not valid now`);
    // a path length constraint of the certificate at depth+1 counts the CA certificates below it (depth+1 of them)
    const pathLen = certificateInfo(next.der).pathLength;
    if (pathLen !== null && pathLen < depth + 1) {
      throw fail(`${one(next.x.subject)} has a path length constraint of ${pathLen}: it forbids ${info.subject} to issue certificates`);
    }
    const nku = certificateInfo(next.der).keyUsage;
    if (nku && !nku.includes('keyCertSign')) throw fail(`${one(next.x.subject)} in the chain has a key usage without keyCertSign`);
    chain.push(next.der);
    cur = next.x;
    if (depth > 8) throw fail('the chain is longer than 8 certificates');
  }
  const extra = pool.filter((p) => !chain.includes(p.der));
  if (extra.length && o.unrelated !== 'ignore') throw fail(`${one(extra[0].x.subject)} is not part of the chain of ${info.subject}`);
  return { certDer: certs[0], chain, key };
}

const one = (s: string) => s.replace(/\n/g, ', ');


/** Certificates and key of `--ca-cert F --ca-key F` (PEM); the key may be absent (`requireKey` false). */
export function caFilesMaterial(certPem: string, keyPem: string | null, o: CaCheckOptions): CheckedCa {
  try {
    const certs = certificatesFromPem(certPem, o.what);
    const key = keyPem === null ? null : privateKeyFromPem(keyPem, `the key of ${o.what}`);
    return checkCaMaterial(certs, key, o);
  } catch (e) {
    if (e instanceof PkiError) throw new CairnError(o.code ?? 'bad_ca_material', `${o.what}: ${e.message}`);
    throw e;
  }
}
