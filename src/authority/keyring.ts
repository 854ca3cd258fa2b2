/**
 * The CA keyring: every CA generation the store holds, for both CAs (`cluster` signs node,
 * replica and admin certificates; `client` is the second root clients are accepted from),
 * loaded and unsealed once per change, and what is derived from them: the signing generation
 * of each CA and the chain it sends, the trust bundle nodes get, the roots a TLS server accepts
 * client certificates from, the digest join tokens carry, the signer of each generation's CRL,
 * and the rotation in progress.
 *
 * A generation (a row of `cas`) is in one of two states:
 *   active   trusted; the newest active generation of a CA signs what the CA issues
 *   retired  no longer trusted (a rotation completed past it, or was aborted); its key signs
 *            the CRL of its unexpired certificates, and is deleted once the last one expired
 * During a rotation (a row of `rotations` in state `running`), two generations of a CA are
 * active: the new one signs, and sends its key's certificate cross-signed by the old root
 * (`cross_pem`) as the chain, so peers trusting only the old root accept what it issues.
 *
 * Every replica reloads the keyring when the stored rows change (`version`).
 */
import { createHash, type KeyObject } from 'node:crypto';
import { certificateFromPem, certificateToPem, privateKeyFromPem, rootDigest } from '../pki/index.js';
import type { CaTable, RotationTable } from '../store/store.js';
import { CairnError, fromPki } from '../util/errors.js';
import { unseal } from './seal.js';
import { CaSigner, CertificateIssuer, LocalKeySigner, SigningIssuer } from './signer.js';

export type CaName = 'cluster' | 'client';
export const CA_NAMES: readonly CaName[] = ['cluster', 'client'];

export interface LoadedCa {
  row: CaTable;
  certDer: Buffer;
  /** the key, when the store holds it (null: held elsewhere, or deleted after retirement) */
  signer: CaSigner | null;
}

/** The generation that signs for a CA now, with what it sends along. */
export interface SigningCa extends LoadedCa {
  signer: CaSigner;
  issuer: CertificateIssuer;
  /** CA certificates sent after a leaf (the cross-signed certificate during a rotation) */
  chain: Buffer[];
}

/** The CRL of one generation: its name in the store and API, the key IDs it covers, its signer. */
export interface CrlScope {
  name: string;
  keyIds: string[];
  signer: CaSigner;
}

export class CaKeyring {
  /** Digest carried by join tokens: of the cluster root nodes joined under (the old one while a rotation runs). */
  readonly digest: string;
  /** Every certificate a node must trust (PEM): the active cluster roots. */
  readonly trustBundle: string;
  /** Changes whenever a generation or a rotation changes. */
  readonly version: string;

  private constructor(
    readonly cas: LoadedCa[],
    private readonly signing: Record<CaName, SigningCa>,
    readonly rotations: RotationTable[],
  ) {
    const activeCluster = cas.filter((c) => c.row.name === 'cluster' && c.row.status === 'active');
    this.digest = rootDigest(activeCluster[0].certDer);
    this.trustBundle = activeCluster.map((c) => certificateToPem(c.certDer)).join('');
    this.version = CaKeyring.versionOf(cas.map((c) => c.row), rotations);
  }

  /** A fingerprint of the rows: equal rows, equal keyring. */
  static versionOf(rows: CaTable[], rotations: RotationTable[]): string {
    const h = createHash('sha256');
    for (const r of rows) h.update(`${r.id}|${r.status}|${r.key_sealed ? 'k' : '-'}|${r.cross_pem ? 'x' : '-'};`);
    for (const r of rotations) h.update(`${r.id}|${r.state};`);
    return h.digest('hex').slice(0, 16);
  }

  /** Load every generation from the store's rows, unsealing the keys it holds. */
  static load(rows: CaTable[], rotations: RotationTable[], unlockKey: Buffer): CaKeyring {
    const cas = rows.map((row): LoadedCa => {
      const certDer = certificateFromPem(row.cert_pem, `CA ${row.id}`);
      let signer: CaSigner | null = null;
      if (row.key_sealed) {
        const key: KeyObject = privateKeyFromPem(unseal(unlockKey, row.key_sealed, row.id).toString(), `CA ${row.id} key`);
        signer = new LocalKeySigner(certDer, key);
      }
      return { row, certDer, signer };
    });
    const signing = {} as Record<CaName, SigningCa>;
    for (const name of CA_NAMES) {
      const active = cas.filter((c) => c.row.name === name && c.row.status === 'active');
      const newest = active.filter((c) => c.signer).at(-1);
      if (!newest || !newest.signer) throw new CairnError('store_corrupt', `the store has no active ${name} CA with a key`);
      // the cross-signed certificate goes along while the generation it chains to is trusted
      const chain = newest.row.cross_pem && active.length > 1 ? [certificateFromPem(newest.row.cross_pem, `the cross-signed certificate of ${newest.row.id}`)] : [];
      signing[name] = { ...newest, signer: newest.signer, chain, issuer: new SigningIssuer(newest.signer, chain) };
    }
    return new CaKeyring(cas, signing, rotations);
  }

  /** The generation that signs for a CA now. */
  signer(name: CaName): SigningCa {
    return this.signing[name];
  }

  /** Certificates a TLS server accepts client certificates from (every active generation of both CAs). */
  clientTrust(): Buffer[] {
    return this.cas.filter((c) => c.row.status === 'active').map((c) => c.certDer);
  }

  /** Key IDs of every generation of a CA. */
  keyIds(name: CaName): string[] {
    return this.cas.filter((c) => c.row.name === name).map((c) => c.row.key_id);
  }

  /** Key IDs of the retired generations (their certificates must join again). */
  retiredKeyIds(): string[] {
    return this.cas.filter((c) => c.row.status === 'retired').map((c) => c.row.key_id);
  }

  /**
   * One CRL per generation that holds its key: named after the CA for the signing generation
   * (`cluster`, `client`), after the row for the others (`cluster-root-ca-1`). Each covers
   * the certificates its own key issued, and is signed by that key.
   */
  crlScopes(): CrlScope[] {
    return this.cas
      .filter((c) => c.signer)
      .map((c) => {
        const name = c.row.name as CaName;
        const current = this.signing[name]?.row.id === c.row.id;
        return { name: current ? name : c.row.id, keyIds: [c.row.key_id], signer: c.signer! };
      });
  }

  /** The cross-signed certificates of active generations (PEM), for GET /v1/ca. */
  crossSigned(): string[] {
    return CA_NAMES.flatMap((n) => this.signing[n].chain.map((d) => certificateToPem(d)));
  }

  /** The running rotation of a CA, if any. */
  runningRotation(name: CaName): RotationTable | undefined {
    return this.rotations.find((r) => r.ca === name && r.state === 'running');
  }

  byId(id: string): LoadedCa | undefined {
    return this.cas.find((c) => c.row.id === id);
  }
}

/** A CA's private key, unsealed (for PKCS#12 exports); null when the store holds none (external CA). */
export function unsealCaKey(row: CaTable, unlockKey: Buffer): KeyObject | null {
  return row.key_sealed ? fromPki(() => privateKeyFromPem(unseal(unlockKey, row.key_sealed!, row.id).toString(), `CA ${row.id} key`)) : null;
}
