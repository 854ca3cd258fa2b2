/**
 * Where a CA key lives (docs/ca-keys.md), and how this process reaches it:
 *
 *   sealed      in the store, sealed under the unlock key (key_sealed; the default)
 *   own CA      the operator's root or intermediate, then sealed like the default (ca-material.ts)
 *   pkcs11      in a PKCS#11 token (key_location {"kind":"pkcs11",…}; pkcs11.ts)
 *   external    an external CA issues (key_location {"kind":"external",…}; external-ca.ts)
 *
 * The keyring asks `keyResolver` for a signer of each generation whose key the store does not
 * hold; the authority never knows which one it talks to.
 */
import {
  certificateInfo, makeSerial, randomId, rootCaProfile, selfSignedTbs, signedCertificate, KeyType, NameAttrs,
} from '../pki/index.js';
import type { CaTable } from '../store/store.js';
import { CairnError } from '../util/errors.js';
import type { CaMaterial, ProvidedCas } from './clone.js';
import { CfsslIssuer, ExternalCaSettings, isExternalRef } from './external-ca.js';
import type { KeyResolver } from './keyring.js';
import type { CaSigner } from './signer.js';
import { checkSignature, isPkcs11Ref, Pkcs11Config, Pkcs11KeyRef, Pkcs11Signer, Pkcs11Token } from './pkcs11.js';
import { rootCaSubject } from './policy.js';
import { ROOT_SEQUENCES } from './serials.js';

/** What this process can reach: its PKCS#11 token (replica.json), the external CAs (cluster settings). */
export interface KeyAccess {
  pkcs11?: Pkcs11Config;
  /** the external CAs as the cluster's settings say now */
  externalCas?: () => ExternalCaSettings;
  /** this replica's TLS client identity for an external CA asking for one (PEM) */
  clientIdentity?: () => { key: string; cert: string } | null;
}

export function parseKeyLocation(row: Pick<CaTable, 'id' | 'key_location'>): unknown {
  try {
    return JSON.parse(row.key_location ?? 'null');
  } catch {
    throw new CairnError('store_corrupt', `CA ${row.id}: its key location is not valid JSON`);
  }
}

/** Where a CA row's key is, in words (backup, clone-prepare, status). */
export function describeKeyLocation(row: Pick<CaTable, 'id' | 'key_sealed' | 'key_location'>): string {
  if (row.key_sealed) return 'sealed in the store';
  const loc = parseKeyLocation(row);
  if (isPkcs11Ref(loc)) return `in the PKCS#11 token "${loc.token}" (key "${loc.label}")`;
  if (isExternalRef(loc)) return 'held by the external CA';
  return 'not held (deleted after retirement)';
}

/** A KeyResolver for the keyring: PKCS#11 keys through this replica's token, external CAs through their URLs. */
export function keyResolver(a: KeyAccess): KeyResolver {
  return (row, certDer) => {
    const loc = parseKeyLocation(row);
    if (isPkcs11Ref(loc)) {
      if (!a.pkcs11) {
        throw new CairnError(
          'hsm_token_missing',
          `the key of CA ${row.id} is in the PKCS#11 token "${loc.token}": this replica has no PKCS#11 module set up (give --pkcs11-module, --pkcs11-token and --pkcs11-pin-file to "cairn replica add")`,
        );
      }
      return { signer: Pkcs11Signer.open(a.pkcs11, loc, certDer) };
    }
    if (isExternalRef(loc)) {
      return { signer: null, issuer: new CfsslIssuer(certDer, () => a.externalCas?.() ?? { urls: [] }, a.clientIdentity ?? (() => null)) };
    }
    throw new CairnError('store_corrupt', `CA ${row.id}: unknown key location ${row.key_location}`);
  };
}

/** A CA key in a token, found by its label or generated there, with the CA certificate of it. */
export interface TokenCa {
  material: CaMaterial;
  /** signs with the key (a rotation's requests) */
  signer: CaSigner;
  /** the token objects made here (deleted by undo) */
  generated: Buffer[];
}

/**
 * A CA key in the token: the key labelled `label` when the token holds it, else generated
 * there (`keyType`); its certificate `cert` when given (it must be of that key), else a root
 * with `subject` made and signed by the token.
 */
export async function tokenCa(
  token: Pkcs11Token,
  cfg: Pkcs11Config,
  o: { label: string; keyType?: KeyType; cert?: CaMaterial; subject: NameAttrs; serial: Buffer },
): Promise<TokenCa> {
  const generated: Buffer[] = [];
  try {
    let k: { handle: Buffer; spki: Buffer; id: string } | null = token.findKey(o.label);
    if (!k) {
      const g = token.generateKey(o.label, o.keyType ?? 'ec-p256');
      generated.push(...g.generated);
      k = g;
    }
    const ref: Pkcs11KeyRef = { kind: 'pkcs11', token: cfg.token, label: o.label, id: k.id };
    let material: CaMaterial;
    if (o.cert) {
      if (!certificateInfo(o.cert.certDer).publicKeyDer.equals(k.spki)) {
        throw new CairnError('bad_ca_material', `the key "${o.label}" in the PKCS#11 token "${cfg.token}" does not belong to the --ca-cert certificate`);
      }
      material = { ...o.cert, key: null, keyLocation: JSON.stringify(ref) };
    } else {
      const { tbs, scheme } = selfSignedTbs(rootCaProfile(o.subject, k.spki, o.serial));
      const sig = await new TokenKey(token, k.handle).sign(tbs, scheme);
      if (!checkSignature(k.spki, scheme, tbs, sig)) throw new CairnError('hsm_error', `the PKCS#11 token "${cfg.token}" made a signature that does not verify with key "${o.label}"`);
      material = { certDer: signedCertificate(tbs, scheme, sig), key: null, keyLocation: JSON.stringify(ref) };
    }
    return { material, signer: new Pkcs11Signer(token, k.handle, material.certDer, k.spki, ref), generated };
  } catch (e) {
    token.destroy(generated);
    throw e;
  }
}

/**
 * The CAs of a new cluster with their keys in a PKCS#11 token (init --pkcs11-*): each key used
 * by its label when the token holds it, else generated there; a root made and signed by the
 * token, or (`clusterCert`) the operator's certificate of the existing cluster key.
 */
export async function tokenCas(
  cfg: Pkcs11Config,
  o: { keyType?: KeyType; label?: string; clusterCert?: CaMaterial; clusterId?: string },
): Promise<ProvidedCas & { clusterId: string; undo(): void }> {
  const clusterId = o.clusterId ?? randomId();
  const token = Pkcs11Token.open(cfg);
  const generated: Buffer[] = [];
  const undo = () => token.destroy(generated.splice(0));
  const make = async (name: 'cluster' | 'client', label: string, cert?: CaMaterial): Promise<CaMaterial> => {
    const t = await tokenCa(token, cfg, { label, keyType: o.keyType, cert, subject: rootCaSubject(clusterId, name), serial: makeSerial(ROOT_SEQUENCES[name]) });
    generated.push(...t.generated);
    return t.material;
  };
  const base = o.label ?? `cairn-${clusterId}-cluster`;
  try {
    return {
      clusterId,
      cluster: await make('cluster', base, o.clusterCert),
      client: await make('client', o.label ? `${o.label}-client` : `cairn-${clusterId}-client`),
      undo,
    };
  } catch (e) {
    undo();
    throw e;
  }
}

/**
 * Where a rotation can put a new generation's key, as this process reaches it (rotation.ts).
 * The authority carries it without looking inside.
 */
export interface KeySources {
  /** this replica's PKCS#11 token (undefined: none set up) */
  token?(): { open(): Pkcs11Token; cfg: Pkcs11Config };
  /** this replica's TLS client identity for an external CA asking for one (PEM) */
  clientIdentity?(): { key: string; cert: string } | null;
}

export function keySources(a: KeyAccess): KeySources {
  return {
    ...(a.pkcs11 ? { token: () => ({ cfg: a.pkcs11!, open: () => Pkcs11Token.open(a.pkcs11!) }) } : {}),
    clientIdentity: () => a.clientIdentity?.() ?? null,
  };
}

/** A token key before it has a certificate (signing its own root). */
class TokenKey {
  constructor(
    private readonly token: Pkcs11Token,
    private readonly handle: Buffer,
  ) {}
  sign(tbs: Buffer, scheme: import('../pki/index.js').SignatureScheme): Promise<Buffer> {
    const size = scheme.hash === 'sha384' ? 48 : 32;
    const rsa = scheme.algorithmDer.toString('hex').includes('2a864886f70d01010b');
    return this.token.sign(this.handle, scheme, tbs, rsa ? null : size);
  }
}
