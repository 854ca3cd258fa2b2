/**
 * The signer seam: how the CA gets something signed, whatever holds its key. Two levels:
 *
 * - `CaSigner` — "sign these bytes with this CA key". The local key sealed in the store is
 *   the implementation today (`LocalKeySigner`); a key in an HSM fits the same shape.
 * - `CertificateIssuer` — "issue a certificate for this request", the level an external CA
 *   works at. `SigningIssuer` does it with a CaSigner; an external CA (CFSSL) fits the shape.
 *
 * The authority only sees these interfaces. Signing is asynchronous and never happens inside
 * a store transaction: the serial is reserved first, the certificate signed, then recorded in
 * a short transaction before it is returned.
 */
import type { KeyObject } from 'node:crypto';
import {
  certificateInfo, certificateTbs, crlTbs, CrlParams, IssuerInfo, issuerInfo, leafProfile, makeIssuer, rootCaProfile, serialHex, signedCertificate, signedCrl, signWith,
  CertificateProfile,
} from '../pki/index.js';
import { fromPki } from '../util/errors.js';
import type { LeafPolicy } from './policy.js';

export interface CaSigner {
  /** the CA certificate whose key signs, and what goes into what it signs */
  readonly info: IssuerInfo;
  /** the CA's subject key identifier, hex */
  readonly keyId: string;
  /** Sign DER bytes (a TBSCertificate or TBSCertList) with the CA key, by `info.scheme`. */
  sign(tbs: Buffer): Promise<Buffer>;
}

/** A CA key held by this process (unsealed from the store, or given to `ca rotate`). */
export class LocalKeySigner implements CaSigner {
  readonly info: IssuerInfo;
  readonly keyId: string;

  constructor(
    certDer: Buffer,
    private readonly key: KeyObject,
  ) {
    const issuer = fromPki(() => makeIssuer(certDer, key)); // checks the key belongs to the certificate
    const { key: _key, ...info } = issuer;
    this.info = info;
    this.keyId = info.keyId.toString('hex');
  }

  async sign(tbs: Buffer): Promise<Buffer> {
    return signWith(this.key, this.info.scheme, tbs);
  }

  /** The key itself, for a thread of this process that signs on its own (CRLs). */
  get localKey(): KeyObject {
    return this.key;
  }
}

/** A certificate signed by a CaSigner. */
export async function signCertificate(signer: CaSigner, profile: CertificateProfile): Promise<Buffer> {
  const tbs = fromPki(() => certificateTbs(profile, signer.info));
  return signedCertificate(tbs, signer.info.scheme, await signer.sign(tbs));
}

/** A CRL signed by a CaSigner. */
export async function signCrl(signer: CaSigner, p: Omit<CrlParams, 'issuer'>): Promise<Buffer> {
  const tbs = crlTbs({ ...p, issuer: signer.info });
  return signedCrl(tbs, signer.info.scheme, await signer.sign(tbs));
}

export interface IssueRequest {
  policy: LeafPolicy;
  publicKeyDer: Buffer;
  publicKey: KeyObject;
  /** reserved before signing (serials.ts); an external CA numbers its certificates itself */
  serial: Buffer;
  /** the request itself (DER), for an issuer that forwards it (an external CA checks its signature) */
  csrDer?: Buffer;
}

export interface IssuedCertificate {
  der: Buffer;
  /** uppercase hex, as the store records it */
  serial: string;
  notBefore: Date;
  notAfter: Date;
  /** the key that signed it, hex */
  issuerKeyId: string;
  /** CA certificates a peer needs between the leaf and a root it trusts (leaf first order, leaf excluded) */
  chain: Buffer[];
}

/**
 * A CA certificate for another CA's key, with that CA's exact subject and key identifier: the
 * cross-signature of a root rotation (the old generation vouches for the new one's root).
 */
export interface CaCertificateRequest {
  /** the CA certified: its subject, key, key identifier and path length are repeated */
  certDer: Buffer;
  serial: Buffer;
  /** a request signed by the certified CA's key, for an issuer that signs only requests (an external CA); absent when that key is not held here */
  csr?: () => Promise<Buffer>;
}

export interface CertificateIssuer {
  /** the key certificates are issued under, hex */
  readonly keyId: string;
  issue(req: IssueRequest): Promise<IssuedCertificate>;
  /** Certify another CA's key (CaCertificateRequest); its notAfter is at most that CA's own. */
  certifyCa(req: CaCertificateRequest): Promise<Buffer>;
}

/** The profile of a certificate repeating a CA's subject, key, key identifier and path length, issued by another CA. */
export function crossProfile(certDer: Buffer, serial: Buffer): CertificateProfile {
  const info = fromPki(() => certificateInfo(certDer));
  const p = rootCaProfile(info.subjectAttrs, info.publicKeyDer, serial);
  return {
    ...p,
    subjectDer: info.subjectDer,
    ...(info.subjectKeyId ? { subjectKeyId: info.subjectKeyId } : {}),
    ca: info.pathLength === null ? {} : { pathLength: info.pathLength },
    notAfter: info.notAfter < p.notAfter ? info.notAfter : p.notAfter,
  };
}

/**
 * An issuer that keeps its own record of revocations (an external CA): cairn tells it what it
 * revoked, and serves its CRL (crl.ts) — cairn holds no key to sign one.
 */
export interface RevocationForwarder {
  /** Record a revocation there (serial: uppercase hex as the store has it); throws when it could not. */
  revoke(serialHex: string, reason: string | null): Promise<void>;
  /** Its current CRL (DER), checked; null when it publishes none. */
  crl(validityMs: number): Promise<Buffer | null>;
}

export const isRevocationForwarder = (i: unknown): i is RevocationForwarder =>
  typeof (i as RevocationForwarder)?.revoke === 'function' && typeof (i as RevocationForwarder)?.crl === 'function';

/** Issue with a CA key: the profile from the policy, signed by `signer`, sent with `chain`. */
export class SigningIssuer implements CertificateIssuer {
  constructor(
    readonly signer: CaSigner,
    private readonly chain: Buffer[] = [],
  ) {}

  get keyId(): string {
    return this.signer.keyId;
  }

  async issue(req: IssueRequest): Promise<IssuedCertificate> {
    const profile = leafProfile({ ...req.policy, publicKeyDer: req.publicKeyDer, publicKey: req.publicKey, serial: req.serial });
    const der = await signCertificate(this.signer, profile);
    // certificateTbs clamps notAfter to the CA's own; times are whole seconds in the certificate
    const notAfter = profile.notAfter > this.signer.info.notAfter ? this.signer.info.notAfter : profile.notAfter;
    const second = (d: Date) => new Date(Math.floor(d.getTime() / 1000) * 1000);
    return { der, serial: serialHex(req.serial), notBefore: second(profile.notBefore), notAfter: second(notAfter), issuerKeyId: this.keyId, chain: this.chain };
  }

  async certifyCa(req: CaCertificateRequest): Promise<Buffer> {
    return signCertificate(this.signer, crossProfile(req.certDer, req.serial));
  }
}

/** An issuer whose certificates are sent with `chain` (an external CA's intermediates, the cross-signed certificate). */
export class ChainedIssuer implements CertificateIssuer {
  constructor(
    private readonly inner: CertificateIssuer,
    private readonly chain: Buffer[],
  ) {}

  get keyId(): string {
    return this.inner.keyId;
  }

  async issue(req: IssueRequest): Promise<IssuedCertificate> {
    return { ...(await this.inner.issue(req)), chain: this.chain };
  }

  certifyCa(req: CaCertificateRequest): Promise<Buffer> {
    return this.inner.certifyCa(req);
  }
}

/** IssuerInfo of a CA certificate whose key is held elsewhere. */
export const infoOf = (certDer: Buffer): IssuerInfo => fromPki(() => issuerInfo(certDer));
