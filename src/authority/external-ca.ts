/**
 * An external CA over the CFSSL signing API (swarm's `--external-ca protocol=cfssl,url=…`):
 * cairn decides what a certificate says (policy.ts) and asks the external CA, which holds the
 * key, to issue it (`POST /api/v1/cfssl/sign`). The answer is checked — the requester's key,
 * cairn's subject and SANs, issued by the CA certificate cairn trusts — before it is recorded.
 *
 * Each URL gets 5 s; on failure the next one is asked; an answer over 256 KiB is refused.
 * When none can sign, the request fails with 503 and Retry-After (nothing is recorded).
 * Serial numbers are the external CA's.
 */
import https from 'node:https';
import { X509Certificate } from 'node:crypto';
import {
  certificateInfo, certificatesFromPem, CrlInfo, csrToPem, isRevocationReason, parseCrl, PkiError, verifyCrl,
} from '../pki/index.js';
import { CairnError, RetryLater } from '../util/errors.js';
import type { CaCertificateRequest, CertificateIssuer, IssuedCertificate, IssueRequest, RevocationForwarder } from './signer.js';

export const EXTERNAL_CA_TIMEOUT_MS = 5000;
export const EXTERNAL_CA_MAX_ANSWER = 256 * 1024;
/** Retry-After when no external CA could sign */
export const EXTERNAL_CA_RETRY_MS = 10_000;

/** One external CA (`protocol=cfssl,url=https://HOST:PORT[,cacert=FILE]`): `cacert` is the PEM the URL's TLS certificate must chain to. */
export interface ExternalCa {
  protocol: 'cfssl';
  url: string;
  cacert?: string;
}

export interface ExternalCaSettings {
  urls: ExternalCa[];
}

/** Where a CA row's key is when an external CA holds it (`key_location`). */
export interface ExternalKeyRef {
  kind: 'external';
  protocol: 'cfssl';
}

export const isExternalRef = (v: unknown): v is ExternalKeyRef => typeof v === 'object' && v !== null && (v as ExternalKeyRef).kind === 'external';

/**
 * Parse swarm's format: `protocol=cfssl,url=https://HOST:PORT[,cacert=FILE]`; `readFile` reads
 * the cacert file (the CLI side), whose PEM is kept in the setting.
 */
export function parseExternalCa(spec: string, readFile: (f: string) => string): ExternalCa {
  const fields: Record<string, string> = {};
  for (const part of spec.split(',')) {
    const i = part.indexOf('=');
    if (i < 1) throw new CairnError('usage', `--external-ca "${spec}": expected key=value pairs (protocol=cfssl,url=https://HOST:PORT[,cacert=FILE])`);
    const k = part.slice(0, i).trim().toLowerCase();
    if (!['protocol', 'url', 'cacert'].includes(k)) throw new CairnError('usage', `--external-ca: unknown field "${k}" (use protocol, url, cacert)`);
    if (fields[k] !== undefined) throw new CairnError('usage', `--external-ca: "${k}" given twice`);
    fields[k] = part.slice(i + 1).trim();
  }
  if ((fields.protocol ?? '').toLowerCase() !== 'cfssl') throw new CairnError('usage', `--external-ca: protocol must be cfssl (got "${fields.protocol ?? ''}")`);
  return checkExternalCa({ protocol: 'cfssl', url: fields.url ?? '', cacert: fields.cacert ? readFile(fields.cacert) : undefined }, 'usage');
}

/** Check one external CA setting (the API checks what a client sends the same way). */
export function checkExternalCa(v: unknown, code: 'usage' | 'bad_request' = 'bad_request'): ExternalCa {
  const o = v as Partial<ExternalCa>;
  if (typeof o !== 'object' || o === null || o.protocol !== 'cfssl') throw new CairnError(code, 'an external CA needs protocol "cfssl"');
  let u: URL;
  try {
    u = new URL(String(o.url));
  } catch {
    throw new CairnError(code, `external CA URL "${String(o.url)}" is not a URL`);
  }
  if (u.protocol !== 'https:' || u.username || u.password || u.search || u.hash) throw new CairnError(code, `external CA URL "${String(o.url)}" must be https://HOST:PORT[/path], without credentials or query`);
  if (o.cacert !== undefined) {
    try {
      if (typeof o.cacert !== 'string') throw new PkiError('bad_pem', 'not PEM');
      certificatesFromPem(o.cacert, 'cacert');
    } catch {
      throw new CairnError(code, `the cacert of external CA ${u.href} is not PEM certificates`);
    }
  }
  return { protocol: 'cfssl', url: u.href.replace(/\/$/, ''), ...(o.cacert ? { cacert: o.cacert } : {}) };
}

/** The CFSSL signing profile a CA certificate is asked with (a rotation's cross-signature). */
export const CFSSL_CA_PROFILE = 'CA';

interface CfsslAnswer {
  success?: boolean;
  /** sign: the certificate; crl: the CRL's DER in base64 */
  result?: { certificate?: string } | string;
  errors?: { code?: number; message?: string }[];
}

/** A failed call, with the HTTP status when the external CA answered one. */
class CallError extends Error {
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

/** Largest CRL accepted from an external CA (its DER, base64 in JSON): as a node accepts from cairn. */
export const EXTERNAL_CRL_MAX_ANSWER = 24 * 1024 * 1024;

/** Call a CFSSL endpoint (POST with a JSON body, or GET) with the limits above; resolves to the parsed answer or rejects with a message. */
function callCfssl(
  url: string,
  body: unknown,
  ca: string | undefined,
  client: { key: string; cert: string } | null,
  maxAnswer = EXTERNAL_CA_MAX_ANSWER,
): Promise<CfsslAnswer> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const req = https.request(
      url,
      {
        method: data ? 'POST' : 'GET',
        headers: data ? { 'content-type': 'application/json', 'content-length': data.length } : {},
        ...(ca ? { ca } : {}),
        ...(client ? { key: client.key, cert: client.cert } : {}),
        timeout: EXTERNAL_CA_TIMEOUT_MS,
        agent: false,
      },
      (res) => {
        // a bounded body, read as agent/client.ts's request() reads one, on purpose: that client
        // speaks cairn's API with its error shapes, this one CFSSL's
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > maxAnswer) {
            req.destroy(new Error(`answered more than ${maxAnswer / 1024} KiB`));
            return;
          }
          chunks.push(c);
        });
        res.on('end', () => {
          let j: CfsslAnswer;
          try {
            j = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            return reject(new CallError(`answered HTTP ${res.statusCode} with something that is not JSON`, res.statusCode));
          }
          if (res.statusCode !== 200 || !j?.success) {
            const why = j?.errors?.map((e) => e.message).filter(Boolean).join('; ');
            return reject(new CallError(`answered HTTP ${res.statusCode}${why ? `: ${why}` : ''}`, res.statusCode));
          }
          resolve(j);
        });
        res.on('error', reject);
      },
    );
    const deadline = setTimeout(() => req.destroy(new Error(`did not answer within ${EXTERNAL_CA_TIMEOUT_MS / 1000} s`)), EXTERNAL_CA_TIMEOUT_MS);
    req.on('timeout', () => req.destroy(new Error(`did not answer within ${EXTERNAL_CA_TIMEOUT_MS / 1000} s`)));
    req.on('error', (e) => {
      clearTimeout(deadline);
      reject(e);
    });
    req.on('close', () => clearTimeout(deadline));
    req.end(data ?? undefined);
  });
}

/**
 * Issue through a CFSSL signer holding the key of `caCertDer`; tell it what cairn revoked and
 * read its CRL (docs/ca-keys.md "CRLs of an external CA").
 */
export class CfsslIssuer implements CertificateIssuer, RevocationForwarder {
  readonly keyId: string;
  private readonly ca: X509Certificate;
  private readonly caDer: Buffer;

  constructor(
    caCertDer: Buffer,
    private readonly settings: () => ExternalCaSettings,
    private readonly clientIdentity: () => { key: string; cert: string } | null,
    /** the profile asked for (CFSSL signing config) */
    private readonly profile = '',
  ) {
    const info = certificateInfo(caCertDer);
    this.keyId = (info.subjectKeyId ?? Buffer.alloc(0)).toString('hex');
    this.ca = new X509Certificate(caCertDer);
    this.caDer = caCertDer;
  }

  /**
   * Record a revocation in the external CA (`POST /api/v1/cfssl/revoke`: the serial in decimal
   * and the CA's key identifier, as CFSSL's certificate database keys them). Each URL in turn
   * (they front one CA and one database); throws naming each URL's answer when none recorded it.
   */
  async revoke(serialHex: string, reason: string | null): Promise<void> {
    const urls = this.settings().urls;
    if (urls.length === 0) throw new Error('no external CA URL is set');
    const body = { serial: BigInt(`0x${serialHex}`).toString(10), authority_key_id: this.keyId, reason: reason && isRevocationReason(reason) ? reason.toLowerCase() : '' };
    const failures: string[] = [];
    for (const ext of urls) {
      try {
        try {
          await callCfssl(`${ext.url}/api/v1/cfssl/revoke`, body, ext.cacert, this.clientIdentity());
        } catch (e) {
          // CFSSL 1.2 built with a recent Go (Debian's golang-cfssl) records what it signs with
          // an empty authority key ID: the same serial is asked for under that one
          if (!(e instanceof CallError && e.status === 400 && /not found/i.test(e.message))) throw e;
          await callCfssl(`${ext.url}/api/v1/cfssl/revoke`, { ...body, authority_key_id: '' }, ext.cacert, this.clientIdentity());
        }
        return;
      } catch (e) {
        failures.push(`${ext.url}: ${(e as Error).message}`);
      }
    }
    throw new Error(failures.join('; '));
  }

  /**
   * The external CA's CRL (`GET /api/v1/cfssl/crl?expiry=…`, CFSSL 1.3 and later, with its
   * certificate database), checked: it parses, is signed by the cluster CA certificate, and is
   * current. null when no URL offers one (404: an older CFSSL, or one without -db-config).
   */
  async crl(validityMs: number): Promise<Buffer | null> {
    const urls = this.settings().urls;
    const failures: string[] = [];
    let answered = 0;
    let notOffered = 0;
    const hours = Math.max(1, Math.round(validityMs / 3_600_000));
    for (const ext of urls) {
      try {
        const a = await callCfssl(`${ext.url}/api/v1/cfssl/crl?expiry=${hours}h`, undefined, ext.cacert, this.clientIdentity(), EXTERNAL_CRL_MAX_ANSWER);
        return this.checkCrl(a);
      } catch (e) {
        if (e instanceof CallError && e.status !== undefined) {
          answered++;
          if (e.status === 404) notOffered++;
        }
        failures.push(`${ext.url}: ${(e as Error).message}`);
      }
    }
    // every URL that answered has no CRL endpoint (those that did not answer front the same CA)
    if (notOffered > 0 && notOffered === answered) return null;
    throw new Error(`no external CA gave a CRL: ${failures.join('; ') || 'no external CA URL is set'}`);
  }

  private checkCrl(a: CfsslAnswer): Buffer {
    if (typeof a.result !== 'string') throw new Error('answered without a CRL');
    const der = Buffer.from(a.result, 'base64');
    let crl: CrlInfo;
    try {
      crl = parseCrl(der);
    } catch {
      throw new Error('answered with something that is not a CRL');
    }
    if (verifyCrl(crl, [this.caDer]) !== 0) throw new Error('answered with a CRL that is not signed by the cluster CA');
    const now = Date.now();
    if (!crl.nextUpdate || crl.nextUpdate.getTime() <= now) throw new Error('answered with an expired CRL');
    if (crl.thisUpdate.getTime() > now + 5 * 60_000) throw new Error('answered with a CRL from the future (check its clock)');
    return der;
  }

  async issue(req: IssueRequest): Promise<IssuedCertificate> {
    if (!req.csrDer) throw new CairnError('internal', 'an external CA signs certificate requests: none was given');
    const urls = this.settings().urls;
    if (urls.length === 0) throw new RetryLater('unavailable', 'the cluster CA is an external CA, and no external CA URL is set ("cairn update --external-ca …")', EXTERNAL_CA_RETRY_MS);
    const { subject, sans } = req.policy;
    const now = Date.now();
    const body = {
      certificate_request: csrToPem(req.csrDer),
      hosts: (sans ?? []).map((s) => ('dns' in s ? s.dns : s.ip)),
      subject: { CN: subject.CN, names: [{ O: subject.O, OU: subject.OU }] },
      profile: this.profile,
      not_before: new Date(now - 60 * 60_000).toISOString(),
      not_after: new Date(now + req.policy.lifetimeMs).toISOString(),
    };
    const failures: string[] = [];
    for (const ext of urls) {
      const url = `${ext.url}/api/v1/cfssl/sign`;
      try {
        const a = await callCfssl(url, body, ext.cacert, this.clientIdentity());
        return this.check(a, req);
      } catch (e) {
        failures.push(`${ext.url}: ${(e as Error).message}`);
      }
    }
    throw new RetryLater('unavailable', `no external CA could sign: ${failures.join('; ')}`, EXTERNAL_CA_RETRY_MS);
  }

  /**
   * The cross-signature of a rotation away from this external CA: CFSSL signs the new root's
   * request with its `CA` profile. What comes back must be a CA certificate issued by this CA,
   * with the new root's key, exact subject and key identifier.
   */
  async certifyCa(req: CaCertificateRequest): Promise<Buffer> {
    if (!req.csr) throw new CairnError('bad_ca_material', 'the external CA certifies a new root only from a request signed by its key: the new root\'s key is not held here');
    const want = certificateInfo(req.certDer);
    const body = { certificate_request: csrToPem(await req.csr()), profile: CFSSL_CA_PROFILE };
    const failures: string[] = [];
    for (const ext of this.settings().urls) {
      try {
        const a = await callCfssl(`${ext.url}/api/v1/cfssl/sign`, body, ext.cacert, this.clientIdentity());
        const { der, info: got } = this.issuedByUs(a);
        if (!got.isCA) throw new Error(`issued a certificate that is not a CA with the "${CFSSL_CA_PROFILE}" profile (give it ca_constraint is_ca and the cert sign usage)`);
        if (!got.publicKeyDer.equals(want.publicKeyDer)) throw new Error("issued a certificate for another key than the new root's");
        // the same name; its encoding may differ (CFSSL writes PrintableString where cairn writes UTF8String): the caller decides
        if (got.subject !== want.subject) throw new Error(`issued a certificate with another subject (${got.subject}) than the new root's (${want.subject})`);
        if (want.subjectKeyId && !got.subjectKeyId?.equals(want.subjectKeyId)) throw new Error("issued a certificate with another subject key identifier than the new root's");
        if (got.keyUsage && !got.keyUsage.includes('keyCertSign')) throw new Error(`issued a CA certificate without keyCertSign (check the "${CFSSL_CA_PROFILE}" profile's usages)`);
        return der;
      } catch (e) {
        failures.push(`${ext.url}: ${(e as Error).message}`);
      }
    }
    if (failures.length === 0) throw new CairnError('bad_ca_material', 'the cluster CA is an external CA, and no external CA URL is set ("cairn update --external-ca …")');
    throw new RetryLater('unavailable', `no external CA could certify the new root: ${failures.join('; ')}`, EXTERNAL_CA_RETRY_MS);
  }

  /** The certificate of an answer (and what it says), issued and signed by the CA cairn trusts. */
  private issuedByUs(a: CfsslAnswer): { der: Buffer; info: ReturnType<typeof certificateInfo> } {
    const pem = typeof a.result === 'object' ? a.result?.certificate : undefined;
    if (typeof pem !== 'string') throw new Error('answered without a certificate');
    let der: Buffer;
    let info;
    try {
      der = certificatesFromPem(pem, 'the certificate')[0];
      info = certificateInfo(der);
    } catch {
      throw new Error('answered with something that is not a certificate');
    }
    const x = new X509Certificate(der);
    if (!x.checkIssued(this.ca) || !x.verify(this.ca.publicKey)) throw new Error(`issued a certificate that is not signed by the cluster CA (issuer ${info.issuer})`);
    return { der, info };
  }

  /** What came back must be what cairn asked for, issued by the CA it trusts. */
  private check(a: CfsslAnswer, req: IssueRequest): IssuedCertificate {
    const { der, info } = this.issuedByUs(a);
    if (!info.publicKeyDer.equals(req.publicKeyDer)) throw new Error("issued a certificate for another key than the request's");
    const s = req.policy.subject;
    if (info.subjectAttrs.CN !== s.CN || info.subjectAttrs.O !== s.O || info.subjectAttrs.OU !== s.OU) throw new Error(`issued a certificate with another subject (${info.subject})`);
    const want = (req.policy.sans ?? []).map((n) => JSON.stringify(n)).sort();
    const got = info.sans.map((n) => JSON.stringify(n)).sort();
    if (JSON.stringify(want) !== JSON.stringify(got)) throw new Error('issued a certificate with other names than cairn asked for');
    if (info.isCA) throw new Error('issued a CA certificate');
    for (const eku of req.policy.extKeyUsage) {
      const oid = eku === 'serverAuth' ? '1.3.6.1.5.5.7.3.1' : '1.3.6.1.5.5.7.3.2';
      if (!info.extKeyUsage.includes(oid)) throw new Error(`issued a certificate without ${eku} (check the CFSSL signing profile's usages)`);
    }
    if (info.notAfter.getTime() <= Date.now()) throw new Error('issued an expired certificate');
    return { der, serial: info.serialHex, notBefore: info.notBefore, notAfter: info.notAfter, issuerKeyId: this.keyId, chain: [] };
  }
}

/**
 * The CA certificate an external CA signs with (`POST /api/v1/cfssl/info`), asked before a
 * rotation makes it the cluster CA: the first URL that answers must hold the key of `caCertDer`.
 */
export async function checkExternalHolds(urls: ExternalCa[], caCertDer: Buffer, clientIdentity: { key: string; cert: string } | null): Promise<void> {
  const failures: string[] = [];
  for (const ext of urls) {
    let pem: string | undefined;
    try {
      const a = await callCfssl(`${ext.url}/api/v1/cfssl/info`, { label: '' }, ext.cacert, clientIdentity);
      pem = typeof a.result === 'object' ? a.result?.certificate : undefined;
    } catch (e) {
      failures.push(`${ext.url}: ${(e as Error).message}`);
      continue;
    }
    let der: Buffer | undefined;
    try {
      der = typeof pem === 'string' ? certificatesFromPem(pem, 'the certificate')[0] : undefined;
    } catch {
      der = undefined;
    }
    if (!der) throw new CairnError('bad_ca_material', `the external CA ${ext.url} answered /api/v1/cfssl/info without its certificate`);
    const theirs = certificateInfo(der);
    if (!theirs.publicKeyDer.equals(certificateInfo(caCertDer).publicKeyDer)) {
      throw new CairnError('bad_ca_material', `the external CA ${ext.url} signs with ${theirs.subject}, not with the given --ca-cert ${certificateInfo(caCertDer).subject}`);
    }
    return;
  }
  throw new RetryLater('unavailable', `no external CA answered: ${failures.join('; ')}`, EXTERNAL_CA_RETRY_MS);
}
