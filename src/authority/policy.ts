/**
 * Issuance policy: what every certificate cairn issues says — subject, SANs, extended key
 * usages, lifetime — for the online CA (nodes, CA replicas, admins, roots) and the offline
 * CA (`cairn ca`). The CA sets the subject; a request's own names are never used. The bytes
 * come from the pure pki core (pki/profiles.ts adds what every leaf or root carries:
 * backdating, key usages by key type, CA constraints).
 */
import { DAY_MS, ExtKeyUsageName, NameAttrs, sanFor, SubjectAltName } from '../pki/index.js';
import { CairnError, fromPki } from '../util/errors.js';
import type { Role } from './tokens.js';

/** What a leaf certificate says, as the CA decided it. */
export interface LeafPolicy {
  subject: NameAttrs;
  sans?: SubjectAltName[];
  extKeyUsage: ExtKeyUsageName[];
  lifetimeMs: number;
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
