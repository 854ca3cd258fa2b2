/**
 * The CA keyring: every CA generation the store holds, for both CAs (`cluster` signs node,
 * replica and admin certificates; `client` is the second root clients are accepted from),
 * loaded and unsealed once, and what is derived from them: the signing CA of each, the trust
 * bundle nodes get, the roots a TLS server accepts client certificates from, the digest join
 * tokens carry, the key IDs a CRL covers.
 *
 * A CA row's `status` is its generation's state; a generation signs only while `active`.
 */
import type { KeyObject } from 'node:crypto';
import { certificateFromPem, certificateToPem, Issuer, makeIssuer, privateKeyFromPem, rootDigest } from '../pki/index.js';
import type { CaTable } from '../store/store.js';
import { CairnError } from '../util/errors.js';
import { unseal } from './seal.js';

export type CaName = 'cluster' | 'client';

export interface LoadedCa {
  row: CaTable;
  certDer: Buffer;
  /** the signing key, for an active generation whose key the store holds */
  issuer: Issuer | null;
}

export class CaKeyring {
  /** Digest carried by join tokens: of the current cluster root. */
  readonly digest: string;
  /** Every certificate a node must trust (PEM). */
  readonly trustBundle: string;

  private constructor(
    readonly cas: LoadedCa[],
    private readonly signing: Record<CaName, LoadedCa>,
  ) {
    this.digest = rootDigest(signing.cluster.certDer);
    this.trustBundle = cas.filter((c) => c.row.name === 'cluster' && c.row.status === 'active').map((c) => certificateToPem(c.certDer)).join('');
  }

  /** Load every generation from the store's rows, unsealing the keys of the active ones. */
  static load(rows: CaTable[], unlockKey: Buffer): CaKeyring {
    const cas = rows.map((row): LoadedCa => {
      const certDer = certificateFromPem(row.cert_pem, `CA ${row.id}`);
      let issuer: Issuer | null = null;
      if (row.key_sealed && row.status === 'active') {
        const key: KeyObject = privateKeyFromPem(unseal(unlockKey, row.key_sealed, row.id).toString(), `CA ${row.id} key`);
        issuer = makeIssuer(certDer, key);
      }
      return { row, certDer, issuer };
    });
    const newest = (name: CaName) => cas.filter((c) => c.row.name === name && c.row.status === 'active' && c.issuer).at(-1);
    const cluster = newest('cluster');
    const client = newest('client');
    if (!cluster || !client) throw new CairnError('store_corrupt', 'the store has no active cluster or client CA');
    return new CaKeyring(cas, { cluster, client });
  }

  /** The generation that signs for a CA now. */
  signer(name: CaName): LoadedCa & { issuer: Issuer } {
    return this.signing[name] as LoadedCa & { issuer: Issuer };
  }

  /** Certificates a TLS server accepts client certificates from (every active generation of both CAs). */
  clientTrust(): Buffer[] {
    return this.cas.filter((c) => c.row.status === 'active').map((c) => c.certDer);
  }

  /** Key IDs of every generation of a CA: the certificates its CRL covers. */
  keyIds(name: CaName): string[] {
    return this.cas.filter((c) => c.row.name === name).map((c) => c.row.key_id);
  }
}

/** A CA's private key, unsealed (for PKCS#12 exports); null when the store holds none (external CA). */
export function unsealCaKey(row: CaTable, unlockKey: Buffer): KeyObject | null {
  return row.key_sealed ? privateKeyFromPem(unseal(unlockKey, row.key_sealed, row.id).toString(), `CA ${row.id} key`) : null;
}


