/**
 * Root CA rotation (swarm's `docker swarm ca --rotate`), in order:
 *
 * 1. start: the new generation comes from one of its sources (`newGeneration`: generated, given
 *    root or intermediate, a key in a PKCS#11 token, an external CA), the old generation
 *    certifies its root (`crossSign`), and it is recorded `active` beside the old one. Every replica reloads
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
import { certificateInfo, certificatesFromPem, certificateToPem, csrTbs, KeyType, PkiError, privateKeyFromPem, rootCaProfile, rootDigest, selfSignedTbs, signedCertificate, signedCsr } from '../pki/index.js';
import type { RotationTable, Store } from '../store/store.js';
import { CairnError } from '../util/errors.js';
import type { Authority, ClusterConfig } from './authority.js';
import { describeKeyLocation, tokenCa } from './ca-keys.js';
import { checkCaMaterial } from './ca-material.js';
import { CaMaterial, caRowFor } from './clone.js';
import { checkConfigPatch } from './config.js';
import { checkExternalHolds, ExternalCa, ExternalKeyRef } from './external-ca.js';
import { newRootCa } from './init.js';
import type { CaName, SigningCa } from './keyring.js';
import { PKCS11_KEY_TYPES } from './pkcs11.js';
import { rootCaSubject } from './policy.js';
import { CaSigner, LocalKeySigner } from './signer.js';

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

/** What a rotation's new generation is made of, wherever its key lives. */
interface NewGeneration {
  material: CaMaterial;
  /** signs with the new key when this process reaches it (a request for an external old CA to certify it) */
  signer: CaSigner | null;
  /** the root was made here (not given): it may be made again with the exact encoding of its name an external CA certified */
  madeHere?: boolean;
  /** settings recorded with the rotation (an external CA's URLs) */
  settings?: Partial<ClusterConfig>;
  /** deletes what was made for it (a key generated in a token) when the rotation is not recorded */
  undo?: () => void;
}

export interface RotateBody {
  ca?: unknown;
  /** the new CA certificate (PEM; an intermediate followed by its chain up to its root) */
  certificate?: unknown;
  /** its key (PEM), when the store is to seal it */
  key?: unknown;
  /** a key in this replica's PKCS#11 token: used by its label, or generated there (`keyType`) */
  pkcs11KeyLabel?: unknown;
  keyType?: unknown;
  /** an external CA holds the key of `certificate` */
  externalCas?: unknown;
}

const refuse = (m: string) => new CairnError('bad_ca_material', m);

/** PKI errors of given material are bad_ca_material, as at init. */
function pki<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof PkiError) throw refuse(e.message);
    throw e;
  }
}

/** The given certificate(s), checked as at init (ca-material.ts): a CA, the key its own, valid long enough, usages, chain, path length. */
function checkedCertificate(auth: Authority, pem: unknown, key: KeyObject | null) {
  if (typeof pem !== 'string') throw refuse('"certificate" must be PEM');
  return pki(() => checkCaMaterial(certificatesFromPem(pem, 'the new CA certificate'), key, { what: 'the new CA certificate', minLifetimeMs: auth.config.certExpiryMs }));
}

/**
 * Where the new generation comes from, one branch per source: an external CA (its
 * certificate, and the URLs where it signs), a key in this replica's PKCS#11 token, a
 * certificate and key given, or a root generated here. Nothing is recorded yet.
 */
async function newGeneration(auth: Authority, ca: CaName, body: RotateBody, generation: number): Promise<NewGeneration> {
  const only = (allowed: (keyof RotateBody)[], source: string) => {
    for (const k of ['certificate', 'key', 'pkcs11KeyLabel', 'keyType', 'externalCas'] as const) {
      if (body[k] !== undefined && !allowed.includes(k)) throw new CairnError('bad_request', `"${k}" does not go with ${source}`);
    }
  };
  if (body.externalCas !== undefined) {
    only(['externalCas', 'certificate'], 'an external CA');
    if (ca !== 'cluster') throw new CairnError('bad_request', 'only the cluster CA can be an external CA (the client CA stays cairn\'s own)');
    if (body.certificate === undefined) throw new CairnError('bad_request', 'an external CA needs its CA certificate: "certificate" (cairn ca rotate --external-ca … --ca-cert F)');
    const { externalCas } = checkConfigPatch({ externalCas: body.externalCas }) as { externalCas: ExternalCa[] };
    if (externalCas.length === 0) throw new CairnError('bad_request', 'give at least one external CA URL');
    const m = checkedCertificate(auth, body.certificate, null);
    await checkExternalHolds(externalCas, m.certDer, auth.keySources.clientIdentity?.() ?? null);
    const ref: ExternalKeyRef = { kind: 'external', protocol: 'cfssl' };
    return { material: { certDer: m.certDer, chain: m.chain, key: null, keyLocation: JSON.stringify(ref) }, signer: null, settings: { externalCas } };
  }
  if (body.pkcs11KeyLabel !== undefined) {
    only(['pkcs11KeyLabel', 'keyType', 'certificate'], 'a key in a PKCS#11 token');
    const token = auth.keySources.token?.();
    if (!token) {
      throw new CairnError(
        'hsm_token_missing',
        `replica ${auth.replicaId} has no PKCS#11 token set up: send the rotation to a replica that has one (cairn ca rotate --server https://…), and give every replica the token ("cairn replica add --pkcs11-module … --pkcs11-token … --pkcs11-pin-file …")`,
      );
    }
    if (typeof body.pkcs11KeyLabel !== 'string' || !/^[\x20-\x7e]{1,64}$/.test(body.pkcs11KeyLabel)) throw new CairnError('bad_request', '"pkcs11KeyLabel" must be 1 to 64 printable ASCII characters');
    if (body.keyType !== undefined && !PKCS11_KEY_TYPES.includes(String(body.keyType))) throw new CairnError('bad_request', `"keyType" must be one of ${PKCS11_KEY_TYPES.join(', ')}`);
    const cert = body.certificate === undefined ? undefined : checkedCertificate(auth, body.certificate, null);
    const t = await tokenCa(token.open(), token.cfg, {
      label: body.pkcs11KeyLabel,
      keyType: body.keyType as KeyType | undefined,
      cert: cert && { certDer: cert.certDer, chain: cert.chain, key: null },
      subject: rootCaSubject(auth.clusterId, ca, generation),
      serial: await auth.nextSerial(),
    });
    return { material: t.material, signer: t.signer, madeHere: !cert, undo: () => token.open().destroy(t.generated) };
  }
  if (body.certificate !== undefined || body.key !== undefined) {
    only(['certificate', 'key'], 'a certificate and key given');
    if (typeof body.certificate !== 'string' || typeof body.key !== 'string') throw refuse('give both "certificate" and "key" (PEM), or neither');
    const key = pki(() => privateKeyFromPem(body.key as string, 'the new CA key'));
    const m = checkedCertificate(auth, body.certificate, key);
    return { material: { certDer: m.certDer, chain: m.chain, key }, signer: new LocalKeySigner(m.certDer, key) };
  }
  const old = auth.cas.signer(ca);
  const made = newRootCa(auth.clusterId, ca, auth.unlockKeyForRotation(), generation, await auth.nextSerial(), old.signer.info.scheme.hash === null ? 'ed25519' : undefined);
  return { material: { certDer: made.der, key: made.key }, signer: new LocalKeySigner(made.der, made.key), madeHere: true };
}

/**
 * The old generation vouches for the new one: it certifies the root the new generation's
 * certificates chain to (the new root itself, or an intermediate's root), with that root's
 * exact subject, key and key identifier. A peer trusting only the old root then builds
 * leaf → (intermediates →) cross-signed → old root; an agent accepts the new root into ca.crt
 * because a root it trusts vouches for it (agent/trust.ts). An external old CA is asked with
 * its CA profile, for a request the new root's key signs.
 */
async function crossSign(auth: Authority, old: SigningCa, gen: NewGeneration): Promise<Buffer[]> {
  const anchor = gen.material.chain?.at(-1) ?? gen.material.certDer;
  const below = (gen.material.chain?.length ?? 0) + 1; // CA certificates under the old one: the cross-signed one and the intermediates
  const oldInfo = certificateInfo(old.certDer);
  if (oldInfo.pathLength !== null && oldInfo.pathLength < below) {
    throw refuse(`the current ${old.row.name} CA ${oldInfo.subject} has a path length constraint of ${oldInfo.pathLength}: it cannot vouch for a new root (it would need ${below})`);
  }
  const signer = anchor === gen.material.certDer ? gen.signer : null;
  const csr = signer
    ? async () => {
        const info = certificateInfo(anchor);
        const tbs = csrTbs(info.subjectDer, info.publicKeyDer);
        return signedCsr(tbs, signer.info.scheme, await signer.sign(tbs));
      }
    : undefined;
  const cross = await old.issuer.certifyCa({ certDer: anchor, serial: await auth.nextSerial(), csr });
  const want = certificateInfo(anchor);
  const got = certificateInfo(cross);
  if (!got.subjectDer.equals(want.subjectDer)) {
    // an external CA wrote the same name in another encoding (PrintableString for UTF8String):
    // verifiers that compare names byte for byte (Go) would not link them. A root made here is
    // made again with the name exactly as certified; a given root cannot be.
    if (!gen.madeHere || !signer) throw refuse(`the old CA certified ${want.subject} with its name encoded differently from the given root's: give a root whose name uses PrintableString, or let cairn make the root`);
    const p = { ...rootCaProfile(want.subjectAttrs, want.publicKeyDer, await auth.nextSerial()), subjectDer: got.subjectDer };
    const { tbs, scheme } = selfSignedTbs(p);
    gen.material = { ...gen.material, certDer: signedCertificate(tbs, scheme, await signer.sign(tbs)) };
  }
  // a peer trusting only the old root also needs what lies between the old generation and its root
  return [cross, ...old.intermediates];
}

/** Start a rotation of a CA: a new generation, its root cross-signed by the old one, signing from now on. */
export async function startRotation(auth: Authority, body: RotateBody, actor: string): Promise<RotationView> {
  const ca = caName(body.ca);
  await auth.reloadKeyring(); // another process may have changed the generations in the last second
  if (auth.cas.runningRotation(ca)) throw new CairnError('rotation_in_progress', `a rotation of the ${ca} CA is running: finish or abort it first`);
  const old = auth.cas.signer(ca);
  const generation = Math.max(...auth.cas.cas.filter((c) => c.row.name === ca).map((c) => c.row.generation)) + 1;
  const gen = await newGeneration(auth, ca, body, generation);
  try {
    if (auth.cas.cas.some((c) => c.row.key_id === certificateInfo(gen.material.certDer).subjectKeyId?.toString('hex'))) throw refuse('this key is already one of the CA generations');
    // signed before any transaction
    const cross = await crossSign(auth, old, gen);
    const row = { ...caRowFor(ca, gen.material, auth.unlockKeyForRotation(), generation), cross_pem: cross.map((d) => certificateToPem(d)).join('') };
    const now = Date.now();
    const rotation: RotationTable = { id: `${now.toString(36)}-${randomBytes(4).toString('hex')}`, ca, state: 'running', from_id: old.row.id, to_id: row.id, started_at: now, finished_at: null, actor };
    await auth.store.transaction(async (tx) => {
      if ((await tx.listRotations()).some((r) => r.ca === ca && r.state === 'running')) {
        throw new CairnError('rotation_in_progress', `a rotation of the ${ca} CA is running: finish or abort it first`);
      }
      if (gen.settings) await tx.setConfig(gen.settings);
      await tx.insertCa(row);
      await tx.insertRotation(rotation);
      await tx.audit(actor, 'ca.rotate.start', { ca, rotation: rotation.id, from: old.row.id, to: row.id, keyId: row.key_id, key: describeKeyLocation(row), ...(gen.settings ?? {}) });
    });
    await auth.reloadKeyring();
    return (await rotationView(auth.store, auth, rotation))!;
  } catch (e) {
    gen.undo?.();
    throw e;
  }
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
  // finished without them: those nodes can only join again (under a new ID), so their records are
  // removed as `node rm` would (their certificates revoked in the old generation's CRL); left
  // active, they would hold every later rotation open
  const leftBehind = async (tx: Store) => {
    if (unconverged === 0) return;
    for (const n of await tx.unconvergedNodes(to.row.key_id, Number.MAX_SAFE_INTEGER)) {
      const revoked = await auth.removeNodeIn(tx, n.id);
      await tx.audit(actor, 'node.remove', { node: n.id, revoked: revoked.length, reason: 'not converged when the rotation was finished with --force' });
    }
  };
  const view = await endRotation(auth, r, 'completed', r.from_id, actor, { forced: unconverged > 0, unconverged }, leftBehind);
  return { rotation: view, digest: name === 'cluster' ? rootDigest(to.certDer) : undefined, unconverged };
}

/**
 * End a running rotation (completed or aborted) in one transaction: the generation left
 * behind is retired, the rotation recorded as ended, the renewal requests cleared, audited.
 */
async function endRotation(
  auth: Authority,
  r: RotationTable,
  state: 'completed' | 'aborted',
  retire: string,
  actor: string,
  detail: Record<string, unknown> = {},
  also: (tx: Store) => Promise<void> = async () => {},
): Promise<RotationView> {
  await auth.store.transaction(async (tx) => {
    const now = Date.now();
    const current = (await tx.listRotations()).find((x) => x.id === r.id);
    if (!current || current.state !== 'running') throw new CairnError('no_rotation', `no rotation of the ${r.ca} CA is running`);
    await tx.updateCa(retire, { status: 'retired', retired_at: now });
    await tx.updateRotation(r.id, { state, finished_at: now });
    await tx.clearRenewalRequests();
    await also(tx);
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

