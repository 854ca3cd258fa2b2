/**
 * Controllers that share CA keys ("clones"): the CA material a PKCS#12 export carries, the
 * CA material a new controller is created from, and adoption of nodes that joined through
 * another controller holding the same CA.
 */
import { KeyObject } from 'node:crypto';
import {
  certificateFromPem, certificateInfo, certificatesFromPem, certificateToPem, ID_RE, PkiError, privateKeyToPem, verifyChain,
} from '../pki/index.js';
import type { Pkcs12Entry, Pkcs12Input } from '../pki/pkcs12.js';
import type { CaTable } from '../store/store.js';
import { CairnError } from '../util/errors.js';
import type { Authority, PeerIdentity } from './authority.js';
import { checkCaMaterial } from './ca-material.js';
import { unsealCaKey } from './keyring.js';
import { seal } from './seal.js';
import { isRole } from './tokens.js';

export type CaName = 'cluster' | 'client';

/** One CA given to `init` (a PKCS#12 file, --ca-cert/--ca-key) or made in a token. */
export interface CaMaterial {
  certDer: Buffer;
  /** null: the store does not hold it (`keyLocation` says where it is) */
  key: KeyObject | null;
  /** an intermediate's issuers up to its root, nearest first */
  chain?: Buffer[];
  /** where a key the store does not hold lives (keyring.ts KeyResolver), JSON */
  keyLocation?: string;
}

/**
 * The CA material a controller can be created from: both CAs (a CA not given is made), and
 * the cluster ID to use (a clone keeps its original's; otherwise a new one).
 */
export interface ProvidedCas {
  clusterId?: string;
  cluster?: CaMaterial;
  client?: CaMaterial;
}

export const NICKNAMES: Record<CaName, string> = { cluster: 'cluster-root-ca', client: 'client-root-ca' };

/** A CA row for given material (the same shape `newRootCa` makes). */
export function caRowFor(name: CaName, m: CaMaterial, unlockKey: Buffer, generation = 1): CaTable {
  const info = certificateInfo(m.certDer);
  const id = `${name}-root-ca-${generation}`;
  return {
    id,
    name,
    generation,
    cert_pem: certificateToPem(m.certDer),
    key_sealed: m.key ? seal(unlockKey, privateKeyToPem(m.key), id) : null,
    key_location: m.keyLocation ?? null,
    chain_pem: m.chain?.length ? m.chain.map((d) => certificateToPem(d)).join('') : null,
    key_id: info.subjectKeyId!.toString('hex'),
    status: 'active',
    created_at: Date.now(),
    cross_pem: null,
    retired_at: null,
  };
}

/**
 * What clone-prepare exports: every CA certificate cairn holds, with its key where the store
 * has it. The CAs that sign now are named `cluster-root-ca` and `client-root-ca`; any other
 * (a rotation's new or old root) is named by its row ID.
 */
export function pkcs12EntriesFor(rows: CaTable[], unlockKey: Buffer): Pkcs12Input[] {
  const signing = new Set<string>();
  for (const name of ['cluster', 'client'] as CaName[]) {
    const active = rows.filter((r) => r.name === name && r.status === 'active' && r.key_sealed).at(-1);
    if (active) signing.add(active.id);
  }
  return rows.map((r) => ({
    certDer: certificateFromPem(r.cert_pem, `CA ${r.id}`),
    friendlyName: signing.has(r.id) ? NICKNAMES[r.name as CaName] : r.id,
    key: unsealCaKey(r, unlockKey),
  }));
}

/**
 * Pick the cluster and client CAs out of a PKCS#12 file's entries: by friendly name
 * (`cluster-root-ca`, `client-root-ca`), else by subject CN. Each must be a CA certificate with
 * its key, passing the checks of ca-material.ts (any subject; an intermediate's chain is taken
 * from the file's other certificates without keys). The cluster ID is the one of a root cairn
 * made (subject `OU=cairn, O=<cluster ID>`: a clone keeps its original's, so nodes move between
 * them), else a new one.
 */
export function casFromPkcs12(entries: Pkcs12Entry[], minLifetimeMs: number): ProvidedCas {
  const pool = entries.filter((e) => !e.key).map((e) => e.certDer);
  const pick = (name: CaName): CaMaterial => {
    const nick = NICKNAMES[name];
    const found = entries.filter((e) => e.friendlyName === nick);
    const byCn = found.length ? found : entries.filter((e) => certificateInfo(e.certDer).subjectAttrs.CN === nick);
    if (byCn.length === 0) throw new CairnError('bad_pkcs12', `the PKCS#12 file holds no "${nick}" certificate (by friendly name or subject CN)`);
    if (byCn.length > 1) throw new CairnError('bad_pkcs12', `the PKCS#12 file holds ${byCn.length} "${nick}" certificates; expected one`);
    const e = byCn[0];
    if (!certificateInfo(e.certDer).isCA) throw new CairnError('bad_pkcs12', `"${nick}" in the PKCS#12 file is not a CA certificate`);
    if (!e.key) throw new CairnError('bad_pkcs12', `"${nick}" in the PKCS#12 file has no private key`);
    const c = checkCaMaterial([e.certDer, ...pool], e.key, { what: `"${nick}" in the PKCS#12 file`, minLifetimeMs, code: 'bad_pkcs12', unrelated: 'ignore' });
    return { certDer: c.certDer, key: e.key, chain: c.chain };
  };
  const cluster = pick('cluster');
  const client = pick('client');
  const made = (d: Buffer) => {
    const a = certificateInfo(d).subjectAttrs;
    return a.OU === 'cairn' && a.O && ID_RE.test(a.O) ? a.O : undefined;
  };
  const o1 = made(cluster.certDer);
  const o2 = made(client.certDer);
  if (o1 && o2 && o1 !== o2) throw new CairnError('bad_pkcs12', `the cluster CA (O=${o1}) and the client CA (O=${o2}) are of different clusters`);
  return { clusterId: o1 ?? o2, cluster, client };
}

/**
 * A node certificate this store has no record of, presented by a peer the TLS layer already
 * verified against our roots: it was issued by another controller holding the same CA
 * (restored with `restore --root-ca-only`, or created with `init --from-pkcs12`). Adopt it
 * when it is a node certificate of this cluster signed by our cluster CA: record the node (if
 * unknown) and the certificate, so the node renews here as it would there. A node recorded
 * here as removed stays removed. Returns null when the certificate is not adoptable.
 */
export async function adoptNodeCertificate(auth: Authority, der: Buffer, serial: string): Promise<PeerIdentity | null> {
  let info;
  try {
    info = certificateInfo(der);
    verifyChain(der, [], certificatesFromPem(auth.trustBundle(), 'the trust bundle'), { purpose: 'clientAuth' });
  } catch (e) {
    if (e instanceof PkiError) return null;
    throw e;
  }
  const { O, OU, CN } = info.subjectAttrs;
  if (info.serialHex !== serial || O !== auth.clusterId || !OU || !isRole(OU) || !CN || !ID_RE.test(CN) || info.isCA) return null;
  const issuerKeyId = info.authorityKeyId?.toString('hex');
  if (!issuerKeyId || !auth.caKeyIds('cluster').includes(issuerKeyId)) return null;
  const store = auth.store;
  return store.transaction(async (tx) => {
    const node = await tx.lockNode(CN);
    if (node && node.status !== 'active') throw new CairnError('node_removed', `node ${CN} has been removed from the cluster`);
    const now = Date.now();
    if (!node) {
      await tx.insertNode(
        { id: CN, role: OU, status: 'active', created_at: now, updated_at: now, current_serial: serial, previous_serial: null, renewed_at: now, renew_budget: null, renew_budget_at: null, renew_requested_at: null },
        { ifAbsent: true },
      );
    } else {
      // the node renewed through the other controller: what it presents becomes its newest
      // certificate here when it is newer than the newest we know (only the newest may renew)
      const known = node.current_serial ? await tx.getCertificate(node.current_serial) : undefined;
      if (!known || info.notBefore.getTime() >= known.not_before) {
        await tx.updateNode(CN, { current_serial: serial, previous_serial: node.current_serial, renewed_at: now });
      }
    }
    await tx.insertCertificateIfAbsent({
      serial, kind: 'node', node_id: CN, role: OU, subject: `CN=${CN},OU=${OU},O=${O}`, issuer_key_id: issuerKeyId,
      not_before: info.notBefore.getTime(), not_after: info.notAfter.getTime(), status: 'good', revoked_at: null, revocation_reason: null,
      cert_pem: certificateToPem(der), created_at: now, replica_id: auth.replicaId,
    });
    const rec = await tx.getCertificate(serial);
    if (!rec || rec.status !== 'good') throw new CairnError('certificate_revoked', 'the client certificate is revoked');
    await tx.audit(`node:${CN}`, 'node.adopt', { node: CN, role: OU, serial, known: !!node });
    return { kind: 'node', nodeId: CN, role: OU, serial };
  });
}
