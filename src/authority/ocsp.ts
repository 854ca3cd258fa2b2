/**
 * The OCSP responder (RFC 6960), on every replica: a request names certificates by issuer
 * (hashes of a CA generation's name and key) and serial; the answer — good, revoked (time and
 * reason) or unknown — comes straight from the store, so a revocation on any replica is
 * answered by every replica at once. Answers are signed by the delegated OCSP signing
 * certificate of the CA generation asked about (signing-keys.ts), never by the CA key.
 *
 * Refusals are OCSP answers, not HTTP errors: a request that is not one is `malformedRequest`;
 * one about a CA this responder does not answer for (another CA, an unknown issuer, a hash
 * cairn does not compute) is `unauthorized`; no signing key yet is `tryLater`.
 */
import {
  buildOcspResponse, isRevocationReason, issuerHashes, ocspErrorResponse, OcspErrorStatus, OcspSingleAnswer, parseOcspRequest,
  PkiError, responderKeyHash,
} from '../pki/index.js';
import type { Authority } from './authority.js';
import type { CaName } from './keyring.js';

/** Largest request accepted (a request of MAX_OCSP_REQUESTS certificates with a nonce is well under it). */
export const MAX_OCSP_REQUEST_BYTES = 8 * 1024;

export interface OcspAnswer {
  der: Buffer;
  /** 'successful' or the error status */
  status: 'successful' | OcspErrorStatus;
  /** for a successful answer: its validity (what HTTP caching may follow), and whether it echoes a nonce */
  thisUpdate?: Date;
  nextUpdate?: Date;
  nonce?: boolean;
  /** the certificate statuses, for logs and metrics */
  statuses?: string[];
}

const fail = (status: OcspErrorStatus): OcspAnswer => ({ der: ocspErrorResponse(status), status });

export class OcspResponder {
  /** per CA generation and hash: its issuerNameHash and issuerKeyHash (hex) */
  private hashes = new Map<string, { nameHash: string; keyHash: string }>();
  /** per signing key: its ResponderID key hash */
  private keyHashes = new Map<string, Buffer>();

  constructor(private readonly auth: Authority) {}

  private issuerHashes(certDer: Buffer, keyId: string, hashName: string) {
    const k = `${keyId}/${hashName}`;
    let h = this.hashes.get(k);
    if (!h) {
      const x = issuerHashes(certDer, hashName);
      h = { nameHash: x.nameHash.toString('hex'), keyHash: x.keyHash.toString('hex') };
      this.hashes.set(k, h);
    }
    return h;
  }

  /** Answer one OCSP request (DER) about certificates of CA `ca`. Never throws for bad input. */
  async respond(ca: string, der: Buffer): Promise<OcspAnswer> {
    if (ca !== 'cluster' && ca !== 'client') return fail('unauthorized');
    if (der.length === 0 || der.length > MAX_OCSP_REQUEST_BYTES) return fail('malformedRequest');
    let req;
    try {
      req = parseOcspRequest(der);
    } catch (e) {
      if (e instanceof PkiError) return fail('malformedRequest');
      throw e;
    }
    // every certificate asked about must be of one generation of this CA: one responder signs the answer
    const generations = this.auth.caGenerations().filter((g) => g.row.name === (ca as CaName));
    let gen: (typeof generations)[number] | undefined;
    for (const id of req.certIds) {
      if (!id.hashName) return fail('unauthorized');
      const nameHash = id.issuerNameHash.toString('hex');
      const keyHash = id.issuerKeyHash.toString('hex');
      const g = generations.find((x) => {
        const h = this.issuerHashes(x.certDer, x.row.key_id, id.hashName!);
        return h.nameHash === nameHash && h.keyHash === keyHash;
      });
      if (!g || (gen && gen !== g)) return fail('unauthorized');
      gen = g;
    }
    const signer = await this.auth.signingKeys.current('ocsp', gen!.row.key_id);
    if (!signer) return fail('tryLater');
    const now = new Date();
    const thisUpdate = new Date(Math.floor(now.getTime() / 1000) * 1000);
    const nextUpdate = new Date(thisUpdate.getTime() + this.auth.config.ocspValidityMs);
    const answers: OcspSingleAnswer[] = [];
    for (const id of req.certIds) {
      const rec = /^[0-9A-F]{2,42}$/.test(id.serialHex) ? await this.auth.store.getCertificate(id.serialHex) : undefined;
      let status: OcspSingleAnswer['status'];
      if (!rec || rec.issuer_key_id !== gen!.row.key_id) status = { status: 'unknown' };
      else if (rec.status === 'revoked') {
        const reason = rec.revocation_reason && isRevocationReason(rec.revocation_reason) ? rec.revocation_reason : null;
        status = { status: 'revoked', revokedAt: new Date(Number(rec.revoked_at ?? rec.created_at)), reason };
      } else status = { status: 'good' };
      answers.push({ certIdDer: id.der, status, thisUpdate, nextUpdate });
    }
    let keyHash = this.keyHashes.get(signer.row.id);
    if (!keyHash) this.keyHashes.set(signer.row.id, (keyHash = responderKeyHash(signer.certDer)));
    const body = buildOcspResponse({
      responderKeyHash: keyHash,
      signerCertDer: signer.certDer,
      signerKey: signer.key,
      producedAt: thisUpdate,
      answers,
      nonce: req.nonce,
      certs: [signer.certDer],
    });
    return { der: body, status: 'successful', thisUpdate, nextUpdate, nonce: !!req.nonce, statuses: answers.map((a) => a.status.status) };
  }
}
