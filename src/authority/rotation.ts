/**
 * Root CA rotation (swarm's `docker swarm ca --rotate`), in order:
 *
 * 1. start: a new root is made (or given: `--ca-cert/--ca-key`), the old root cross-signs its
 *    key, and the new generation is recorded `active` beside the old one. Every replica reloads
 *    its keyring within seconds: from then on everything is issued by the new key, sent with
 *    the cross-signed certificate, so a peer trusting only the old root accepts it, and one
 *    trusting only the new root too. The trust bundle holds both roots.
 * 2. convergence: a node has converged when its current certificate is from the new key.
 *    Agents learn of the rotation by their long-poll of GET /v1/ca; the replica holding the
 *    `rotation` lease also asks unconverged nodes to renew in bounded batches
 *    (`renewRate` per second), so thousands of nodes do not arrive in the same second.
 * 3. completion (by itself once every active node converged, or `finish --force`): the old
 *    generation is retired (out of the trust bundle; its key signs its CRL until its last
 *    certificate expires), and the join tokens change: their digest is the new root's, so an
 *    old token no longer works (`cairn token` prints the new ones; the secrets are unchanged —
 *    `cairn token --rotate` replaces them too). A node still holding an old-generation
 *    certificate must join again (`rejoin_required`).
 * 4. abort (before completion): the new generation is retired, the old one signs again;
 *    certificates the new key issued meanwhile stay valid through the cross-signed chain
 *    until their nodes renew.
 */
import { randomBytes, type KeyObject } from 'node:crypto';
import { certificateInfo, certificatesFromPem, certificateToPem, keysMatch, PkiError, privateKeyFromPem, rootCaProfile, rootDigest } from '../pki/index.js';
import type { RotationTable, Store } from '../store/store.js';
import { CairnError } from '../util/errors.js';
import type { Authority } from './authority.js';
import { caRowFor } from './clone.js';
import { newRootCa } from './init.js';
import type { CaName } from './keyring.js';
import { signCertificate } from './signer.js';

export const ROTATION_LEASE = 'rotation';

export interface RotationView {
  id: string;
  ca: CaName;
  state: 'running' | 'completed' | 'aborted';
  startedAt: string;
  finishedAt: string | null;
  from: { keyId: string; subject: string };
  to: { keyId: string; subject: string };
  nodes: { total: number; converged: number };
  /** renewals per second the CA asks of unconverged nodes */
  renewRate: number;
}

export interface StuckNode {
  id: string;
  role: string;
  lastSeen: string | null;
  issuerKeyId: string | null;
}

/** Renewals per second the driver asks for, and how often it asks (a batch per tick). */
export const RENEW_RATE = 200;
export const DRIVE_INTERVAL_MS = 1000;

const caName = (ca: unknown): CaName => {
  if (ca === undefined) return 'cluster';
  if (ca !== 'cluster' && ca !== 'client') throw new CairnError('bad_request', `unknown CA "${String(ca)}": use cluster or client`);
  return ca;
};

/** A root (or its key) given by the operator: checked before anything is recorded. */
function checkProvided(certPem: unknown, keyPem: unknown, minLifetimeMs: number): { certDer: Buffer; key: KeyObject } {
  if (typeof certPem !== 'string' || typeof keyPem !== 'string') throw new CairnError('bad_ca_material', 'give both "certificate" and "key" (PEM), or neither');
  try {
    const certs = certificatesFromPem(certPem, 'the new CA certificate');
    const certDer = certs[0];
    const info = certificateInfo(certDer);
    const key = privateKeyFromPem(keyPem, 'the new CA key');
    if (!info.isCA) throw new CairnError('bad_ca_material', `${info.subject} is not a CA certificate`);
    if (!keysMatch(key, info.publicKeyDer)) throw new CairnError('bad_ca_material', 'the key does not belong to the certificate');
    if (!info.subjectKeyId) throw new CairnError('bad_ca_material', `${info.subject} has no subject key identifier`);
    if (info.subject !== info.issuer || certs.length > 1) {
      throw new CairnError('bad_ca_material', `${info.subject} is not a self-signed root: this version rotates to a root CA only (an intermediate is not supported yet)`);
    }
    if (info.notAfter.getTime() - Date.now() < minLifetimeMs) {
      throw new CairnError('bad_ca_material', `${info.subject} expires on ${info.notAfter.toISOString()}: a root must outlive the node certificate lifetime`);
    }
    return { certDer, key };
  } catch (e) {
    if (e instanceof PkiError) throw new CairnError('bad_ca_material', e.message);
    throw e;
  }
}

/** Start a rotation of a CA: a new root, cross-signed by the old one, signing from now on. */
export async function startRotation(auth: Authority, body: { ca?: unknown; certificate?: unknown; key?: unknown }, actor: string): Promise<RotationView> {
  const ca = caName(body.ca);
  await auth.reloadKeyring(); // another process may have changed the generations in the last second
  if (auth.cas.runningRotation(ca)) throw new CairnError('rotation_in_progress', `a rotation of the ${ca} CA is running: finish or abort it first`);
  const old = auth.cas.signer(ca);
  const generation = Math.max(...auth.cas.cas.filter((c) => c.row.name === ca).map((c) => c.row.generation)) + 1;
  const unlockKey = auth.unlockKeyForRotation();
  // the new root, made here or given, and its key certified by the old root (signed before any transaction)
  const made =
    body.certificate !== undefined || body.key !== undefined
      ? (() => {
          const m = checkProvided(body.certificate, body.key, auth.config.certExpiryMs);
          return { der: m.certDer, key: m.key, row: caRowFor(ca, m, unlockKey, generation) };
        })()
      : newRootCa(auth.clusterId, ca, unlockKey, generation, await auth.nextSerial(), old.signer.info.scheme.hash === null ? 'ed25519' : undefined);
  const info = certificateInfo(made.der);
  const crossProfile = rootCaProfile(info.subjectAttrs, info.publicKeyDer, await auth.nextSerial());
  const cross = await signCertificate(old.signer, { ...crossProfile, notAfter: info.notAfter < crossProfile.notAfter ? info.notAfter : crossProfile.notAfter });
  const row = { ...made.row, cross_pem: certificateToPem(cross) };
  if (auth.cas.cas.some((c) => c.row.key_id === row.key_id)) throw new CairnError('bad_ca_material', 'this key is already one of the CA generations');
  const now = Date.now();
  const rotation: RotationTable = { id: `${now.toString(36)}-${randomBytes(4).toString('hex')}`, ca, state: 'running', from_id: old.row.id, to_id: row.id, started_at: now, finished_at: null, actor };
  await auth.store.transaction(async (tx) => {
    if ((await tx.listRotations()).some((r) => r.ca === ca && r.state === 'running')) {
      throw new CairnError('rotation_in_progress', `a rotation of the ${ca} CA is running: finish or abort it first`);
    }
    await tx.insertCa(row);
    await tx.insertRotation(rotation);
    await tx.audit(actor, 'ca.rotate.start', { ca, rotation: rotation.id, from: old.row.id, to: row.id, keyId: row.key_id });
  });
  await auth.reloadKeyring();
  return (await rotationView(auth.store, auth, rotation))!;
}

/** The rotation's public view (progress counted in the store). */
export async function rotationView(store: Store, auth: Authority, r: RotationTable | undefined): Promise<RotationView | null> {
  if (!r) return null;
  const from = auth.cas.byId(r.from_id);
  const to = auth.cas.byId(r.to_id);
  const toKey = to?.row.key_id ?? '';
  const nodes = r.ca === 'cluster' ? await store.rotationProgress(toKey) : { total: 0, converged: 0 };
  const subject = (c: typeof from) => (c ? certificateInfo(c.certDer).subject : '');
  return {
    id: r.id,
    ca: r.ca as CaName,
    state: r.state as RotationView['state'],
    startedAt: new Date(Number(r.started_at)).toISOString(),
    finishedAt: r.finished_at === null ? null : new Date(Number(r.finished_at)).toISOString(),
    from: { keyId: from?.row.key_id ?? '', subject: subject(from) },
    to: { keyId: toKey, subject: subject(to) },
    nodes,
    renewRate: RENEW_RATE,
  };
}

/** The newest rotation of a CA (running, or the last finished), and the nodes not converged. */
export async function rotationStatus(auth: Authority, ca: unknown, stuckLimit = 100): Promise<{ rotation: RotationView | null; stuck: StuckNode[] }> {
  const name = caName(ca);
  const r = auth.cas.rotations.filter((x) => x.ca === name).at(-1);
  const view = await rotationView(auth.store, auth, r);
  let stuck: StuckNode[] = [];
  if (view && view.state === 'running' && name === 'cluster') {
    stuck = (await auth.store.unconvergedNodes(view.to.keyId, stuckLimit)).map((n) => ({
      id: n.id,
      role: n.role,
      lastSeen: n.renewed_at === null ? null : new Date(Number(n.renewed_at)).toISOString(),
      issuerKeyId: n.issuer_key_id,
    }));
  }
  return { rotation: view, stuck };
}

/**
 * Complete a rotation: the old generation is retired, and (cluster CA) the join tokens
 * change. Refused while nodes have not converged, unless `force` (those nodes must rejoin).
 */
export async function finishRotation(auth: Authority, body: { ca?: unknown; force?: unknown }, actor: string): Promise<{ rotation: RotationView; digest?: string; unconverged: number }> {
  const name = caName(body.ca);
  await auth.reloadKeyring();
  const r = auth.cas.runningRotation(name);
  if (!r) throw new CairnError('no_rotation', `no rotation of the ${name} CA is running`);
  const to = auth.cas.byId(r.to_id)!;
  const progress = name === 'cluster' ? await auth.store.rotationProgress(to.row.key_id) : { total: 0, converged: 0 };
  const unconverged = progress.total - progress.converged;
  if (unconverged > 0 && body.force !== true) {
    throw new CairnError('rotation_incomplete', `${unconverged} of ${progress.total} nodes still hold a certificate of the old root: wait, remove them ("cairn node rm"), or finish with --force (they will have to join again)`);
  }
  const view = await endRotation(auth, r, 'completed', r.from_id, actor, { forced: unconverged > 0, unconverged });
  return { rotation: view, digest: name === 'cluster' ? rootDigest(to.certDer) : undefined, unconverged };
}

/**
 * End a running rotation (completed or aborted) in one transaction: the generation left
 * behind is retired, the rotation recorded as ended, the renewal requests cleared, audited.
 */
async function endRotation(auth: Authority, r: RotationTable, state: 'completed' | 'aborted', retire: string, actor: string, detail: Record<string, unknown> = {}): Promise<RotationView> {
  await auth.store.transaction(async (tx) => {
    const now = Date.now();
    const current = (await tx.listRotations()).find((x) => x.id === r.id);
    if (!current || current.state !== 'running') throw new CairnError('no_rotation', `no rotation of the ${r.ca} CA is running`);
    await tx.updateCa(retire, { status: 'retired', retired_at: now });
    await tx.updateRotation(r.id, { state, finished_at: now });
    await tx.clearRenewalRequests();
    await tx.audit(actor, state === 'completed' ? 'ca.rotate.finish' : 'ca.rotate.abort', { ca: r.ca, rotation: r.id, ...detail });
  });
  await auth.reloadKeyring();
  return (await rotationView(auth.store, auth, auth.cas.rotations.find((x) => x.id === r.id)))!;
}

/** Abort a running rotation: the new generation is retired and the old one signs again. */
export async function abortRotation(auth: Authority, body: { ca?: unknown }, actor: string): Promise<RotationView> {
  const name = caName(body.ca);
  await auth.reloadKeyring();
  const r = auth.cas.runningRotation(name);
  if (!r) throw new CairnError('no_rotation', `no rotation of the ${name} CA is running`);
  return endRotation(auth, r, 'aborted', r.to_id, actor);
}

/**
 * One tick of the rotation driver (run by the holder of the `rotation` lease): complete a
 * rotation whose nodes all converged, else ask the next batch of unconverged nodes to renew.
 */
export async function driveRotations(auth: Authority, holdsLease: () => Promise<boolean>): Promise<void> {
  for (const r of auth.cas.rotations.filter((x) => x.state === 'running')) {
    const to = auth.cas.byId(r.to_id);
    if (!to) continue;
    if (r.ca === 'cluster') {
      const p = await auth.store.rotationProgress(to.row.key_id);
      if (p.converged < p.total) {
        if (await holdsLease()) await auth.store.requestRenewals(to.row.key_id, Math.ceil((RENEW_RATE * DRIVE_INTERVAL_MS) / 1000), Date.now());
        continue;
      }
    }
    // every node converged (the client CA has no nodes): complete it
    if (await holdsLease()) await finishRotation(auth, { ca: r.ca }, 'rotation-driver').catch((e) => {
      if (!(e instanceof CairnError && e.code === 'no_rotation')) throw e;
    });
  }
}

/** The certificate of a retired generation: the node holding it must join again. */
export function isRetiredIssuer(auth: Authority, der: Buffer): boolean {
  try {
    const aki = certificateInfo(der).authorityKeyId?.toString('hex');
    return !!aki && auth.cas.retiredKeyIds().includes(aki);
  } catch {
    return false;
  }
}

