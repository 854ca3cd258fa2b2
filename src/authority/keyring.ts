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
import { certificateFromPem, certificatesFromPem, certificateToPem, IssuerInfo, privateKeyFromPem, rootDigest } from '../pki/index.js';
import type { CaTable, RotationTable } from '../store/store.js';
import { CairnError, fromPki, RetryLater } from '../util/errors.js';
import { unseal } from './seal.js';
import { CaSigner, CertificateIssuer, ChainedIssuer, infoOf, isRevocationForwarder, LocalKeySigner, RevocationForwarder, SigningIssuer } from './signer.js';

/**
 * A generation whose key signs nothing in this process; `refusal` says why:
 * - the signing generation of a CA whose certificates an external CA issues (it issues them;
 *   nothing else is signed with its key);
 * - a key this process cannot reach (a token this replica has no access to, found when another
 *   replica rotated to it): whatever it would sign answers 503 with Retry-After, so agents go
 *   to a replica that can, instead of this one signing with the old key.
 */
class NoKeyHere implements CaSigner {
  readonly info: IssuerInfo;
  readonly keyId: string;
  constructor(
    certDer: Buffer,
    private readonly refusal: () => CairnError,
  ) {
    this.info = infoOf(certDer);
    this.keyId = this.info.keyId.toString('hex');
  }
  async sign(): Promise<Buffer> {
    throw this.refusal();
  }
}

export type CaName = 'cluster' | 'client';
export const CA_NAMES: readonly CaName[] = ['cluster', 'client'];

export interface LoadedCa {
  row: CaTable;
  certDer: Buffer;
  /** the root a peer anchors this generation in: itself, or the top of its chain (an intermediate's root) */
  anchorDer: Buffer;
  /** for an intermediate: itself and the CA certificates between it and its root, sent after a leaf ([] for a root) */
  intermediates: Buffer[];
  /** the key, when the store holds it (null: held elsewhere, or deleted after retirement) */
  signer: CaSigner | null;
  /** an external CA holding the key, which keeps the revocations and the CRL of this generation */
  external?: RevocationForwarder;
}

/** The generation that signs for a CA now, with what it sends along. */
export interface SigningCa extends LoadedCa {
  signer: CaSigner;
  issuer: CertificateIssuer;
  /** CA certificates sent after a leaf (the cross-signed certificate during a rotation) */
  chain: Buffer[];
}

/**
 * A key the store does not seal (row.key_location): a PKCS#11 token, an external CA. Given by
 * the process that loads the keyring (it knows the module, the PIN, the URLs); returns the
 * signer (null: nothing here can sign arbitrary bytes with it) and the issuer to use instead of
 * signing with it (an external CA), or throws a clear error.
 */
export type KeyResolver = (row: CaTable, certDer: Buffer) => { signer: CaSigner | null; issuer?: CertificateIssuer };

/**
 * The CRL of one generation: its name in the store and API, the key IDs it covers, and who
 * makes it: its signer (a key cairn reaches), or the external CA that holds the key
 * (`external`: told what cairn revoked, its CRL served).
 */
export type CrlScope = { name: string; keyIds: string[] } & ({ signer: CaSigner; external?: undefined } | { signer?: undefined; external: RevocationForwarder });

export class CaKeyring {
  /** Digest carried by join tokens: of the cluster root nodes joined under (the old one while a rotation runs). */
  readonly digest: string;
  /** Every certificate a node must trust (PEM): the active cluster roots. */
  readonly trustBundle: string;
  /** Changes whenever a generation or a rotation changes. */
  readonly version: string;
  /** Generations whose key this process could not reach at the last load (lenient), with why. */
  unreachable: string[] = [];
  /** whether the next reload tries them again (not after a refused PIN) */
  retryUnreachable = false;

  private constructor(
    readonly cas: LoadedCa[],
    private readonly signing: Record<CaName, SigningCa>,
    readonly rotations: RotationTable[],
  ) {
    const activeCluster = cas.filter((c) => c.row.name === 'cluster' && c.row.status === 'active');
    this.digest = rootDigest(activeCluster[0].anchorDer);
    // the roots peers anchor in (an intermediate's own root; two generations may share it)
    const anchors = activeCluster.map((c) => c.anchorDer).filter((d, i, all) => all.findIndex((x) => x.equals(d)) === i);
    this.trustBundle = anchors.map((d) => certificateToPem(d)).join('');
    this.version = CaKeyring.versionOf(cas.map((c) => c.row), rotations);
  }

  /** A fingerprint of the rows: equal rows, equal keyring. */
  static versionOf(rows: CaTable[], rotations: RotationTable[]): string {
    const h = createHash('sha256');
    for (const r of rows) h.update(`${r.id}|${r.status}|${r.key_sealed ? 'k' : '-'}|${r.cross_pem ? 'x' : '-'};`);
    for (const r of rotations) h.update(`${r.id}|${r.state};`);
    return h.digest('hex').slice(0, 16);
  }

  /**
   * Load every generation from the store's rows, unsealing the keys it holds. A key held
   * elsewhere that cannot be reached stops the load (a replica starting), unless `lenient` (a
   * reload after another replica's change): that generation then signs nothing here
   * (`unreachable` says why) and the next reload tries again.
   */
  static load(rows: CaTable[], rotations: RotationTable[], unlockKey: Buffer, resolve?: KeyResolver, lenient = false): CaKeyring {
    const unreachable: string[] = [];
    let noRetry = false;
    const issuers = new Map<string, CertificateIssuer>();
    const cas = rows.map((row): LoadedCa => {
      const certDer = certificateFromPem(row.cert_pem, `CA ${row.id}`);
      const above = row.chain_pem ? certificatesFromPem(row.chain_pem, `the chain of CA ${row.id}`) : [];
      const anchorDer = above.length ? above[above.length - 1] : certDer;
      let signer: CaSigner | null = null;
      let external: RevocationForwarder | undefined;
      if (row.key_sealed) {
        const key: KeyObject = privateKeyFromPem(unseal(unlockKey, row.key_sealed, row.id).toString(), `CA ${row.id} key`);
        signer = new LocalKeySigner(certDer, key);
      } else if (row.key_location && row.status === 'active') {
        // a retired generation held elsewhere is not opened: its key signs nothing here any more
        if (!resolve) throw new CairnError('store_corrupt', `the key of CA ${row.id} is held outside the store (${row.key_location}), and this process cannot reach it`);
        try {
          const r = resolve(row, certDer);
          signer = r.signer;
          if (r.issuer) issuers.set(row.id, r.issuer);
          if (!r.signer && isRevocationForwarder(r.issuer)) external = r.issuer;
        } catch (e) {
          if (!lenient || !(e instanceof CairnError)) throw e;
          const why = e.message;
          signer = new NoKeyHere(certDer, () => new RetryLater('unavailable', `this replica cannot reach the CA key: ${why}`, 5000));
          unreachable.push(`CA ${row.id}: ${e.message}`);
          // a refused PIN is not tried again every second (a token locks its PIN after a few)
          if (e.code === 'hsm_login_failed') noRetry = true;
        }
      }
      // an intermediate sends itself and what is between it and its root after each leaf
      return { row, certDer, anchorDer, intermediates: above.length ? [certDer, ...above.slice(0, -1)] : [], signer, ...(external ? { external } : {}) };
    });
    const signing = {} as Record<CaName, SigningCa>;
    for (const name of CA_NAMES) {
      const active = cas.filter((c) => c.row.name === name && c.row.status === 'active');
      const newest = active.filter((c) => c.signer || issuers.has(c.row.id)).at(-1);
      if (!newest) throw new CairnError('store_corrupt', `the store has no active ${name} CA with a key`);
      // the cross-signed certificate goes along while the generation it chains to is trusted;
      // an intermediate sends the CA certificates between it and its root
      // (cross_pem: the certificate of the new generation's root issued by the old generation,
      // followed by the old generation's intermediates when it was one)
      const cross = newest.row.cross_pem && active.length > 1 ? certificatesFromPem(newest.row.cross_pem, `the cross-signed certificate of ${newest.row.id}`) : [];
      const chain = [...newest.intermediates, ...cross];
      const id = newest.row.id;
      const signer = newest.signer ?? new NoKeyHere(newest.certDer, () => new CairnError('unavailable', `the key of CA ${id} is held by an external CA: it signs nothing but the certificates that CA issues`));
      const elsewhere = issuers.get(newest.row.id);
      signing[name] = { ...newest, signer, chain, issuer: elsewhere ? new ChainedIssuer(elsewhere, chain) : new SigningIssuer(signer, chain) };
    }
    const k = new CaKeyring(cas, signing, rotations);
    k.unreachable = unreachable;
    k.retryUnreachable = unreachable.length > 0 && !noRetry;
    return k;
  }

  /** The generation that signs for a CA now. */
  signer(name: CaName): SigningCa {
    return this.signing[name];
  }

  /** Certificates a TLS server accepts client certificates from (every active generation of both CAs). */
  clientTrust(): Buffer[] {
    const out: Buffer[] = [];
    for (const c of this.cas.filter((x) => x.row.status === 'active')) {
      for (const d of [c.certDer, c.anchorDer]) if (!out.some((o) => o.equals(d))) out.push(d);
    }
    return out;
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
   * One CRL per generation that holds its key or whose external CA keeps one: named after the
   * CA for the signing generation (`cluster`, `client`), after the row for the others
   * (`cluster-root-ca-1`). Each covers the certificates its own key issued, and is signed by
   * that key (by the external CA for an external one).
   */
  crlScopes(): CrlScope[] {
    return this.cas
      .filter((c) => (c.signer && !(c.signer instanceof NoKeyHere)) || c.external)
      .map((c): CrlScope => {
        const name = c.row.name as CaName;
        const current = this.signing[name]?.row.id === c.row.id;
        const base = { name: current ? name : c.row.id, keyIds: [c.row.key_id] };
        return c.signer ? { ...base, signer: c.signer } : { ...base, external: c.external! };
      });
  }

  /** The cross-signed certificates of active generations (PEM), for GET /v1/ca. */
  crossSigned(): string[] {
    return CA_NAMES.flatMap((n) => this.signing[n].chain.filter((d) => !this.signing[n].intermediates.includes(d)).map((d) => certificateToPem(d)));
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
