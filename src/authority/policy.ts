/**
 * Issuance policy: what every certificate cairn issues says — subject, SANs, extended key
 * usages, lifetime — for the online CA (nodes, CA replicas, admins, roots) and the offline
 * CA (`cairn ca`). The CA sets the subject; a request's own names are never used. The bytes
 * come from the pure pki core (pki/profiles.ts adds what every leaf or root carries:
 * backdating, key usages by key type, CA constraints).
 */
import { checkExtensionUrl, DAY_MS, ExtKeyUsageName, KeyUsageName, NameAttrs, sanFor, SubjectAltName } from '../pki/index.js';
import { CairnError, fromPki } from '../util/errors.js';
import type { Role } from './tokens.js';

/** What a leaf certificate says, as the CA decided it. */
export interface LeafPolicy {
  subject: NameAttrs;
  sans?: SubjectAltName[];
  extKeyUsage: ExtKeyUsageName[];
  lifetimeMs: number;
  /** key usages other than the key type's default (signing-only subsystem certificates) */
  keyUsage?: KeyUsageName[];
  /** a delegated OCSP signing certificate (id-pkix-ocsp-nocheck; carries no revocation pointers) */
  ocspNoCheck?: boolean;
}

/** CA replica server certificates and admin client certificates live a year (node certificates: `certExpiryMs`). */
export const REPLICA_LIFETIME_MS = 365 * DAY_MS;
export const ADMIN_LIFETIME_MS = 365 * DAY_MS;
export const OFFLINE_LEAF_LIFETIME_MS = 365 * DAY_MS;

// ---------------------------------------------------------------- online CA

/**
 * A node: `CN=<node ID>, OU=<role>, O=<cluster ID>`, SANs `DNS:<role>` and `DNS:<node ID>`,
 * server and client auth. Never `DNS:ca`: only a CA replica's certificate speaks for the CA.
 */
export function nodePolicy(clusterId: string, nodeId: string, role: Role, lifetimeMs: number): LeafPolicy {
  return { subject: { O: clusterId, OU: role, CN: nodeId }, sans: [{ dns: role }, { dns: nodeId }], extKeyUsage: ['serverAuth', 'clientAuth'], lifetimeMs };
}

/** A CA replica's HTTPS server: `OU=ca-replica`, `DNS:ca` plus the names it is reached by. */
export function replicaPolicy(clusterId: string, replicaId: string, names: SubjectAltName[], lifetimeMs = REPLICA_LIFETIME_MS): LeafPolicy {
  return { subject: replicaSubject(clusterId, replicaId), sans: [{ dns: 'ca' }, ...names], extKeyUsage: ['serverAuth', 'clientAuth'], lifetimeMs };
}

export function replicaSubject(clusterId: string, replicaId: string): NameAttrs {
  return { O: clusterId, OU: 'ca-replica', CN: replicaId };
}

/** An administrator: `OU=admin`, client auth only, from the cluster root. */
export function adminPolicy(clusterId: string, name: string, lifetimeMs = ADMIN_LIFETIME_MS): LeafPolicy {
  return { subject: { O: clusterId, OU: 'admin', CN: name }, extKeyUsage: ['clientAuth'], lifetimeMs };
}

/**
 * The roots cairn creates: `CN=cluster-root-ca` / `CN=client-root-ca`, `OU=cairn`; a root
 * made by a rotation carries its generation (`CN=cluster-root-ca-2`), so that the old and the
 * new root — and the cross-signed certificate between them — never share a name.
 */
export function rootCaSubject(clusterId: string, ca: 'cluster' | 'client', generation = 1): NameAttrs {
  return { O: clusterId, OU: 'cairn', CN: generation > 1 ? `${ca}-root-ca-${generation}` : `${ca}-root-ca` };
}

/** Client bundles (`cairn bundle create`): a year by default, at least an hour. */
export const BUNDLE_LIFETIME_MS = 365 * DAY_MS;
export const MIN_BUNDLE_LIFETIME_MS = 3600_000;

/**
 * A client bundle: an admin's (`--admin`) is an admin certificate from the cluster root
 * (`OU=admin`); anyone else's comes from the client root, `OU=client`, `CN=<user>`. Client
 * auth only.
 */
export function bundlePolicy(clusterId: string, user: string, admin: boolean, lifetimeMs = BUNDLE_LIFETIME_MS): LeafPolicy & { ca: 'cluster' | 'client'; kind: 'admin' | 'client' } {
  validateUserName(user);
  if (!Number.isInteger(lifetimeMs) || lifetimeMs < MIN_BUNDLE_LIFETIME_MS) throw new CairnError('bad_request', 'a bundle must be valid for at least 1h');
  if (admin) return { ...adminPolicy(clusterId, user, lifetimeMs), ca: 'cluster', kind: 'admin' };
  return { subject: { O: clusterId, OU: 'client', CN: user }, extKeyUsage: ['clientAuth'], lifetimeMs, ca: 'client', kind: 'client' };
}

// ---------------------------------------------------------------- subsystem certificates (Dogtag's)

/** OCSP signing certificates live 30 days and are replaced when 10 are left; audit signing: a year, replaced with 120 days left. */
export const OCSP_SIGNER_LIFETIME_MS = 30 * DAY_MS;
export const OCSP_SIGNER_RENEW_BEFORE_MS = 10 * DAY_MS;
export const AUDIT_SIGNER_LIFETIME_MS = 365 * DAY_MS;
export const AUDIT_SIGNER_RENEW_BEFORE_MS = 120 * DAY_MS;

/**
 * The delegated OCSP responder of one CA generation (RFC 6960 4.2.2.2): issued by that
 * generation, `id-kp-OCSPSigning` only, `id-pkix-ocsp-nocheck` (clients do not ask about the
 * responder itself), digital signatures only.
 */
export function ocspSignerPolicy(clusterId: string, ca: 'cluster' | 'client', generation: number): LeafPolicy {
  return {
    subject: { O: clusterId, OU: 'ocsp-signing', CN: `${ca}-root-ca ${generation} OCSP signing` },
    extKeyUsage: ['OCSPSigning'],
    keyUsage: ['digitalSignature'],
    ocspNoCheck: true,
    lifetimeMs: OCSP_SIGNER_LIFETIME_MS,
  };
}

export const AUDIT_SIGNER_OU = 'audit-signing';

/**
 * The audit signing certificate (Dogtag's auditSigningCert): from the cluster root,
 * `OU=audit-signing`, digitalSignature and contentCommitment, no extended key usage the TLS
 * layer would accept (it never authenticates anything but audit seals).
 */
export function auditSignerPolicy(clusterId: string): LeafPolicy {
  return {
    subject: { O: clusterId, OU: AUDIT_SIGNER_OU, CN: 'audit signing' },
    extKeyUsage: [],
    keyUsage: ['digitalSignature', 'contentCommitment'],
    lifetimeMs: AUDIT_SIGNER_LIFETIME_MS,
  };
}

/**
 * Where a certificate says its revocation status is (`cairn update --ocsp-url/--crl-url`):
 * the base URL given, followed by the CA's OCSP or CRL path. None by default: nodes reach the
 * CA by their endpoint list. Subsystem certificates carry none.
 */
export function revocationPointers(cfg: { ocspUrl: string | null; crlUrl: string | null }, ca: 'cluster' | 'client'): { ocspUrls?: string[]; crlUrls?: string[] } {
  return {
    ...(cfg.ocspUrl ? { ocspUrls: [`${cfg.ocspUrl}/v1/ocsp/${ca}`] } : {}),
    ...(cfg.crlUrl ? { crlUrls: [`${cfg.crlUrl}/v1/crl/${ca}`] } : {}),
  };
}

/** A base URL for revocation pointers: http(s), no query or fragment, no trailing slash. Null (or "") clears it. */
export function checkBaseUrl(v: unknown, what: string): string | null {
  if (v === null || v === '') return null;
  if (typeof v !== 'string') throw new CairnError('bad_request', `${what} must be a URL string, or null to remove it`);
  const why = checkExtensionUrl(v);
  if (why) throw new CairnError('bad_request', `${what} "${v.slice(0, 100)}" ${why}`);
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    throw new CairnError('bad_request', `${what} "${v.slice(0, 100)}" is not a valid URL`);
  }
  if (u.search || u.hash || u.username || u.password) throw new CairnError('bad_request', `${what} must not carry a query, a fragment or credentials`);
  return v.replace(/\/+$/, '');
}


/** How the store records a certificate's subject (and finds a replica's certificates by it). */
export function subjectString(s: NameAttrs): string {
  return `CN=${s.CN},OU=${s.OU},O=${s.O}`;
}

// ---------------------------------------------------------------- offline CA (flocker-ca parity)

export function offlineRootSubject(clusterId: string, clusterName: string): NameAttrs {
  return { O: clusterId, OU: 'cairn cluster CA', CN: clusterName };
}

/** `control-service`: server and client auth, the host name or IP as SAN. */
export function offlineControlPolicy(clusterId: string, hostname: string, lifetimeMs = OFFLINE_LEAF_LIFETIME_MS): LeafPolicy & { name: string } {
  // an invalid host name is a bad argument (bad_hostname: exit 2), like an invalid cluster or user name
  const san: SubjectAltName = fromPki(() => sanFor(hostname));
  const name = 'dns' in san ? san.dns : san.ip;
  return { subject: { O: clusterId, OU: 'control-service', CN: 'control-service' }, sans: [san], extKeyUsage: ['serverAuth', 'clientAuth'], lifetimeMs, name };
}

/** A node named by a UUID: server and client auth. */
export function offlineNodePolicy(clusterId: string, uuid: string, lifetimeMs = OFFLINE_LEAF_LIFETIME_MS): LeafPolicy {
  return { subject: { O: clusterId, OU: 'node', CN: uuid }, sans: [{ dns: uuid }], extKeyUsage: ['serverAuth', 'clientAuth'], lifetimeMs };
}

/** An API user: client auth only. */
export function offlineApiPolicy(clusterId: string, user: string, lifetimeMs = OFFLINE_LEAF_LIFETIME_MS): LeafPolicy {
  validateUserName(user);
  return { subject: { O: clusterId, OU: 'api-user', CN: user }, extKeyUsage: ['clientAuth'], lifetimeMs };
}

// ---------------------------------------------------------------- names a CA accepts

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._ -]{0,62}[A-Za-z0-9._-]$|^[A-Za-z0-9]$/;
const USER_RE = /^[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}$/;

export function validateClusterName(name: string): void {
  if (!NAME_RE.test(name)) {
    throw new CairnError('bad_name', `invalid cluster name "${name}": use 1 to 64 letters, digits, spaces, ".", "_" or "-", starting with a letter or digit`);
  }
}

export function validateUserName(name: string): void {
  if (!USER_RE.test(name)) {
    throw new CairnError('bad_name', `invalid user name "${name}": use 1 to 64 letters, digits, ".", "_", "@" or "-", not starting with "." or "-"`);
  }
}
