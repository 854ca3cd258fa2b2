/**
 * The CA's subsystem certificates (Dogtag's): an OCSP signing certificate per active CA
 * generation, which signs OCSP answers so the CA key is not used per response, and the audit
 * signing certificate, which seals the audit log. cairn issues them, records them like every
 * certificate, keeps their keys sealed under the unlock key (store table `signing_keys`), and
 * replaces them before they expire (`ensure`, run by the replica holding the `signing-keys`
 * lease). Every replica (and serve worker) loads them from the store, and reloads when one it
 * needs is missing or close to expiry, so a certificate issued on one replica is used by all.
 */
import { SigningIssuer } from './signer.js';
import type { KeyObject } from 'node:crypto';
import { certificateFromPem, generateKeyPair, privateKeyFromPem, privateKeyToPem } from '../pki/index.js';
import type { Pkcs12Input } from '../pki/pkcs12.js';
import type { CaTable, SigningKeyTable } from '../store/store.js';
import type { Authority } from './authority.js';
import type { CaName } from './keyring.js';
import {
  AUDIT_SIGNER_RENEW_BEFORE_MS, auditSignerPolicy, OCSP_SIGNER_RENEW_BEFORE_MS, ocspSignerPolicy,
} from './policy.js';
import { seal, unseal } from './seal.js';

export type SigningPurpose = 'ocsp' | 'audit';

export interface LoadedSigningKey {
  row: SigningKeyTable;
  certDer: Buffer;
  key: KeyObject;
}

/** Dogtag-style nicknames of the subsystem certificates in a clone's PKCS#12 file. */
export function signingKeyNickname(purpose: SigningPurpose, ca: CaName, generation: number): string {
  const g = generation > 1 ? ` ${generation}` : '';
  return purpose === 'ocsp' ? `ocspSigningCert cert-${ca}-root-ca${g}` : `auditSigningCert cert-${ca}-root-ca${g}`;
}

/**
 * The subsystem certificates a clone's PKCS#12 file carries (clone-prepare), with their keys:
 * the newest of each purpose and CA generation, named as Dogtag names them.
 */
export function signingKeyPkcs12Entries(cas: CaTable[], rows: SigningKeyTable[], unlockKey: Buffer): Pkcs12Input[] {
  const newest = new Map<string, SigningKeyTable>();
  for (const r of rows) {
    const k = `${r.purpose}/${r.ca_key_id}`;
    const cur = newest.get(k);
    if (!cur || r.not_after > cur.not_after) newest.set(k, r);
  }
  const out: Pkcs12Input[] = [];
  for (const r of newest.values()) {
    const ca = cas.find((c) => c.key_id === r.ca_key_id);
    if (!ca) continue;
    out.push({
      certDer: certificateFromPem(r.cert_pem, `signing certificate ${r.id}`),
      friendlyName: signingKeyNickname(r.purpose as SigningPurpose, ca.name as CaName, ca.generation),
      key: privateKeyFromPem(unseal(unlockKey, r.key_sealed, r.id).toString(), `signing key ${r.id}`),
    });
  }
  return out.sort((a, b) => (a.friendlyName < b.friendlyName ? -1 : 1));
}

const RELOAD_MS = 30_000;

export class SigningKeys {
  private loaded: LoadedSigningKey[] = [];
  private loadedAt = 0;
  private loading: Promise<void> | null = null;

  constructor(
    private readonly auth: Authority,
    private readonly unlockKey: Buffer,
  ) {}

  /** Read (and unseal) the signing keys from the store. */
  async reload(): Promise<void> {
    this.loading ??= (async () => {
      try {
        const rows = await this.auth.store.listSigningKeys();
        this.loaded = rows.map((row) => ({
          row,
          certDer: certificateFromPem(row.cert_pem, `signing certificate ${row.id}`),
          key: privateKeyFromPem(unseal(this.unlockKey, row.key_sealed, row.id).toString(), `signing key ${row.id}`),
        }));
        this.loadedAt = Date.now();
      } finally {
        this.loading = null;
      }
    })();
    return this.loading;
  }

  /** The newest usable key of a purpose (and CA generation), reloading when none or when stale. */
  async current(purpose: SigningPurpose, caKeyId: string): Promise<LoadedSigningKey | null> {
    const pick = () =>
      this.loaded
        .filter((k) => k.row.purpose === purpose && k.row.ca_key_id === caKeyId && k.row.not_after > Date.now() && k.row.not_before <= Date.now() + 60_000)
        .sort((a, b) => a.row.not_after - b.row.not_after)
        .at(-1) ?? null;
    let k = pick();
    if (!k || Date.now() - this.loadedAt > RELOAD_MS) {
      await this.reload();
      k = pick();
    }
    return k;
  }

  /** Every key loaded (clone-prepare exports them). */
  async all(): Promise<LoadedSigningKey[]> {
    await this.reload();
    return this.loaded;
  }

  /**
   * Issue what is missing or close to expiry: an OCSP signing certificate for every active
   * generation of both CAs whose key the store holds, and an audit signing certificate under
   * the cluster CA's signing generation. Expired ones are dropped. Returns what was issued.
   */
  async ensure(): Promise<SigningKeyTable[]> {
    await this.reload();
    const now = Date.now();
    const issued: SigningKeyTable[] = [];
    const fresh = (purpose: SigningPurpose, caKeyId: string, before: number) =>
      this.loaded.some((k) => k.row.purpose === purpose && k.row.ca_key_id === caKeyId && k.row.not_after - now > before);
    // the signing generation of each CA gets a responder (an older generation still active in
    // a rotation keeps the one it had while it signed, until it expires)
    // a CA whose key an external CA holds signs no subsystem certificate here (its OCSP answers
    // and audit seals need a key cairn holds: docs/ca-keys.md)
    const held = (ca: CaName) => this.auth.cas.signer(ca).issuer instanceof SigningIssuer;
    for (const ca of ['cluster', 'client'] as const) {
      const g = this.auth.signingCa(ca);
      if (held(ca) && !fresh('ocsp', g.keyId, OCSP_SIGNER_RENEW_BEFORE_MS)) issued.push(await this.issue('ocsp', ca, g.generation));
    }
    const clusterKeyId = this.auth.signingCa('cluster').keyId;
    if (held('cluster') && !fresh('audit', clusterKeyId, AUDIT_SIGNER_RENEW_BEFORE_MS)) issued.push(await this.issue('audit', 'cluster', 0));
    const expired = this.loaded.filter((k) => k.row.not_after <= now).map((k) => k.row.id);
    if (expired.length) await this.auth.store.deleteSigningKeys(expired);
    if (issued.length || expired.length) await this.reload();
    return issued;
  }

  private async issue(purpose: SigningPurpose, ca: CaName, generation: number): Promise<SigningKeyTable> {
    const kp = generateKeyPair('ec-p256');
    const policy = purpose === 'ocsp' ? ocspSignerPolicy(this.auth.clusterId, ca, generation) : auditSignerPolicy(this.auth.clusterId);
    const c = await this.auth.signLeaf(ca, purpose, policy, kp.publicKey);
    const id = `${purpose}-${c.serial}`;
    const row: SigningKeyTable = {
      id,
      purpose,
      ca_key_id: c.issuerKeyId,
      serial: c.serial,
      cert_pem: c.record.cert_pem,
      key_sealed: seal(this.unlockKey, privateKeyToPem(kp.privateKey), id),
      not_before: c.notBefore.getTime(),
      not_after: c.notAfter.getTime(),
      created_at: Date.now(),
    };
    await this.auth.store.transaction(async (tx) => {
      await tx.insertCertificate(c.record);
      await tx.insertSigningKey(row);
      await tx.audit(`replica:${this.auth.replicaId}`, `signing_key.issue`, { purpose, serial: c.serial, ca, notAfter: c.notAfter.toISOString() });
    });
    return row;
  }
}
