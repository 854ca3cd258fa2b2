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
  certificateInfo, certificatesFromPem, csrToPem, PkiError,
} from '../pki/index.js';
import { CairnError, RetryLater } from '../util/errors.js';
import type { CaCertificateRequest, CertificateIssuer, IssuedCertificate, IssueRequest } from './signer.js';

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
  result?: { certificate?: string };
  errors?: { code?: number; message?: string }[];
}

/** POST JSON to a URL with the limits above; resolves to the parsed answer or rejects with a message. */
function postJson(url: string, body: unknown, ca: string | undefined, client: { key: string; cert: string } | null): Promise<CfsslAnswer> {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const req = https.request(
      url,
      {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': data.length },
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
          if (size > EXTERNAL_CA_MAX_ANSWER) {
            req.destroy(new Error(`answered more than ${EXTERNAL_CA_MAX_ANSWER / 1024} KiB`));
            return;
          }
          chunks.push(c);
        });
        res.on('end', () => {
          let j: CfsslAnswer;
          try {
            j = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            return reject(new Error(`answered HTTP ${res.statusCode} with something that is not JSON`));
          }
          if (res.statusCode !== 200 || !j?.success) {
            const why = j?.errors?.map((e) => e.message).filter(Boolean).join('; ');
            return reject(new Error(`answered HTTP ${res.statusCode}${why ? `: ${why}` : ''}`));
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
    req.end(data);
  });
}

/** Issue through a CFSSL signer holding the key of `caCertDer`. */
export class CfsslIssuer implements CertificateIssuer {
  readonly keyId: string;
  private readonly ca: X509Certificate;

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
        const a = await postJson(url, body, ext.cacert, this.clientIdentity());
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
        const a = await postJson(`${ext.url}/api/v1/cfssl/sign`, body, ext.cacert, this.clientIdentity());
        const der = this.issuedByUs(a);
        const got = certificateInfo(der);
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

  /** The certificate of an answer, issued and signed by the CA cairn trusts. */
  private issuedByUs(a: CfsslAnswer): Buffer {
    const pem = a.result?.certificate;
    if (typeof pem !== 'string') throw new Error('answered without a certificate');
    let der: Buffer;
    try {
      der = certificatesFromPem(pem, 'the certificate')[0];
    } catch {
      throw new Error('answered with something that is not a certificate');
    }
    const x = new X509Certificate(der);
    if (!x.checkIssued(this.ca) || !x.verify(this.ca.publicKey)) throw new Error(`issued a certificate that is not signed by the cluster CA (issuer ${x.issuer.replace(/\n/g, ', ')})`);
    return der;
  }

  /** What came back must be what cairn asked for, issued by the CA it trusts. */
  private check(a: CfsslAnswer, req: IssueRequest): IssuedCertificate {
    const pem = a.result?.certificate;
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
      pem = (await postJson(`${ext.url}/api/v1/cfssl/info`, { label: '' }, ext.cacert, clientIdentity)).result?.certificate;
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
