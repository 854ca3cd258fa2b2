/**
 * Client bundles (UCP's): a certificate for a person or a program calling the API. An admin
 * bundle is an admin certificate from cluster-root-ca (`OU=admin`); any other comes from
 * client-root-ca (`OU=client`, `CN=<user>`) and may only read (admission.ts). The key is
 * generated where `cairn bundle create` runs: the CA sees a CSR, never a key. What a bundle
 * says is in policy.ts (`bundlePolicy`); the zip layout in cli/bundle-zip.ts.
 */
import { csrDerFrom, isRevocationReason, parseCsr, REVOCATION_REASONS } from '../pki/index.js';
import type { CertificateTable } from '../store/store.js';
import { CairnError, fromPki } from '../util/errors.js';
import type { Authority } from './authority.js';
import { bundlePolicy, subjectString, validateUserName } from './policy.js';

export interface BundleRequest {
  user: unknown;
  admin?: unknown;
  /** lifetime in ms (default a year) */
  expiryMs?: unknown;
  csr: unknown;
}

export interface BundleView {
  user: string;
  admin: boolean;
  serial: string;
  notBefore: string;
  notAfter: string;
  status: string;
  revokedAt: string | null;
}

const BUNDLE_KINDS = ['admin', 'client'] as const;
const iso = (ms: number) => new Date(Number(ms)).toISOString();

function userOf(subject: string): string {
  const m = /^CN=(.*),OU=(admin|client),O=[0-9a-z]+$/.exec(subject);
  return m ? m[1] : subject;
}

function bundleView(c: CertificateTable): BundleView {
  return {
    user: userOf(c.subject),
    admin: c.kind === 'admin',
    serial: c.serial,
    notBefore: iso(c.not_before),
    notAfter: iso(c.not_after),
    status: c.status === 'good' && c.not_after <= Date.now() ? 'expired' : c.status,
    revokedAt: c.revoked_at ? iso(c.revoked_at) : null,
  };
}

/** Issue a bundle's certificate for the CSR given; recorded (and audited) before it is returned. */
export async function createBundle(auth: Authority, r: BundleRequest, actor: string) {
  if (typeof r.user !== 'string') throw new CairnError('bad_request', 'missing field "user"');
  if (r.admin !== undefined && typeof r.admin !== 'boolean') throw new CairnError('bad_request', '"admin" must be true or false');
  if (r.expiryMs !== undefined && (typeof r.expiryMs !== 'number' || !Number.isSafeInteger(r.expiryMs))) throw new CairnError('bad_request', '"expiryMs" must be an integer number of milliseconds');
  if (typeof r.csr !== 'string' || r.csr.length === 0) throw new CairnError('bad_request', 'missing field "csr" (a PEM certificate request)');
  const admin = r.admin === true;
  const policy = fromPki(() => bundlePolicy(auth.clusterId, r.user as string, admin, r.expiryMs as number | undefined));
  const req = fromPki(() => parseCsr(csrDerFrom(r.csr as string)));
  const c = await auth.signLeaf(policy.ca, policy.kind, policy, req.publicKey);
  await auth.store.transaction(async (tx) => {
    await tx.insertCertificate(c.record);
    await tx.audit(actor, 'bundle.create', { user: r.user, admin, serial: c.serial, notAfter: c.notAfter.toISOString() }, { subject: r.user as string });
  });
  return {
    user: r.user,
    admin,
    serial: c.serial,
    notAfter: c.notAfter.toISOString(),
    certificate: c.record.cert_pem,
    /** what a bundle's ca.pem holds: the roots the API's server certificates chain to */
    ca: auth.trustBundle(),
  };
}

/** Every bundle (admin and client certificates), oldest first. */
export async function listBundles(auth: Authority, f: { user?: string } = {}): Promise<{ bundles: BundleView[] }> {
  if (f.user !== undefined) validateUserName(f.user);
  const rows: CertificateTable[] = [];
  for (const kind of BUNDLE_KINDS) rows.push(...(await auth.store.findCertificates({ kind, limit: 100_000 })));
  rows.sort((a, b) => a.created_at - b.created_at || (a.serial < b.serial ? -1 : 1));
  const views = rows.map(bundleView);
  return { bundles: f.user === undefined ? views : views.filter((v) => v.user === f.user) };
}

/**
 * Revoke a bundle by serial, or every good bundle of a user (admin and client). Takes effect
 * at once on every replica (each request's certificate is looked up in the store) and on the
 * issuing CA's next CRL. The last good admin certificate only with `force`.
 */
export async function revokeBundle(auth: Authority, target: string, reason: unknown, actor: string, force = false) {
  const why = reason === undefined ? 'unspecified' : reason;
  if (typeof why !== 'string' || !isRevocationReason(why)) {
    throw new CairnError('bad_request', `unknown revocation reason "${String(why)}": use one of ${Object.keys(REVOCATION_REASONS).join(', ')}`);
  }
  return auth.store.transaction(async (tx) => {
    const asSerial = target.replace(/:/g, '').toUpperCase();
    const bySerial = /^[0-9A-F]{2,40}$/.test(asSerial) ? await tx.getCertificate(asSerial) : undefined;
    let candidates: CertificateTable[];
    let user: string;
    if (bySerial && (BUNDLE_KINDS as readonly string[]).includes(bySerial.kind)) {
      candidates = [bySerial];
      user = userOf(bySerial.subject);
      if (bySerial.status !== 'good') throw new CairnError('already_revoked', `bundle ${bySerial.serial} is already revoked`);
    } else {
      validateUserName(target);
      user = target;
      candidates = [];
      for (const kind of BUNDLE_KINDS) {
        candidates.push(...(await tx.findCertificates({ kind, status: 'good', subject: subjectString({ O: auth.clusterId, OU: kind, CN: target }) })));
      }
      if (candidates.length === 0) throw new CairnError('not_found', `no good bundle of user "${target}" (and no bundle with that serial)`);
    }
    const serials = candidates.map((c) => c.serial);
    if (!force && candidates.some((c) => c.kind === 'admin')) {
      const admins = await tx.lockGoodAdminCertificates(Date.now());
      if (admins.length > 0 && admins.every((s) => serials.includes(s))) {
        throw new CairnError('last_admin', `revoking ${serials.length === 1 ? `bundle ${serials[0]}` : `the bundles of "${user}"`} would leave no good admin certificate: issue another first ("cairn bundle create --admin"), or use --force`);
      }
    }
    const revoked = await tx.revokeCertificates(serials, why);
    await tx.audit(actor, 'bundle.revoke', { user, serials: revoked, reason: why }, { subject: user });
    return { user, revoked: revoked.length, serials: revoked, reason: why };
  });
}
