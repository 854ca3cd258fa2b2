/**
 * Whether a store is whole (after a restore, or on demand): the checks every restored
 * store must pass before it is committed.
 */
import { certificateFromPem, certificateInfo, parseSerial, sequenceOf } from '../pki/index.js';
import type { Store } from '../store/store.js';
import { unseal } from './seal.js';
import { ROLES } from './tokens.js';
import { checkCaMaterial } from './backup-archive.js';

// ---------------------------------------------------------------- integrity

/**
 * Check that a store is whole: one cluster; CA certificates that parse with keys that the
 * unlock key opens and that belong to them; an active cluster and client CA; every node's
 * current certificate recorded, and every node certificate's node; the serial sequence
 * past every recorded serial; both join tokens and the sequences present. Returns the
 * problems found (none: the store is whole).
 */
export async function checkStoreIntegrity(store: Store, unlockKey: Buffer): Promise<string[]> {
  const problems: string[] = [];
  const clusters = await store.listClusters();
  if (clusters.length !== 1) problems.push(`${clusters.length} cluster rows (expected 1)`);
  const cas = await store.listCas();
  for (const c of cas) {
    try {
      const keyPem = c.key_sealed ? unseal(unlockKey, c.key_sealed, c.id).toString() : null;
      checkCaMaterial(c.cert_pem, keyPem, c.key_id, c.id);
      // a root cairn made carries the cluster ID; an operator's own CA (init --ca-cert) any subject
      const attrs = certificateInfo(certificateFromPem(c.cert_pem, c.id)).subjectAttrs;
      if (clusters[0] && attrs.OU === 'cairn' && attrs.O !== clusters[0].id) problems.push(`CA ${c.id} is not of cluster ${clusters[0].id}`);
    } catch (e) {
      problems.push(`CA ${c.id}: ${(e as Error).message}`);
    }
  }
  for (const name of ['cluster', 'client']) {
    if (!cas.some((c) => c.name === name && c.status === 'active' && (c.key_sealed || c.key_location))) problems.push(`no active ${name} CA with a key`);
  }
  const certs = await store.listCertificateOwners();
  const bySerial = new Map(certs.map((c) => [c.serial, c]));
  const nodes = await store.listNodes();
  const nodeIds = new Set(nodes.map((n) => n.id));
  for (const n of nodes) {
    if (n.current_serial) {
      const c = bySerial.get(n.current_serial);
      if (!c) problems.push(`node ${n.id}: its current certificate ${n.current_serial} is not recorded`);
      else if (c.node_id !== n.id) problems.push(`node ${n.id}: its current certificate ${n.current_serial} belongs to ${c.node_id}`);
    }
  }
  let maxSeq = 0n;
  for (const c of certs) {
    if (c.kind === 'node' && (!c.node_id || !nodeIds.has(c.node_id))) problems.push(`certificate ${c.serial}: its node ${c.node_id} is not recorded`);
    try {
      const s = parseSerial(c.serial);
      if (s.length === 16) {
        const q = sequenceOf(s);
        if (q > maxSeq) maxSeq = q;
      }
    } catch {
      problems.push(`certificate ${c.serial}: malformed serial`);
    }
  }
  const next = await store.peekSequence('serial');
  if (certs.length && BigInt(next) <= maxSeq) problems.push(`the serial sequence (${next}) is not past the highest recorded serial sequence (${maxSeq})`);
  const seqs = new Set(await store.listSequenceNames());
  for (const s of ['serial', 'request', 'revocation']) if (!seqs.has(s)) problems.push(`sequence ${s} is missing`);
  const tokens = await store.getTokenHashes();
  for (const r of ROLES) if (!tokens[r]) problems.push(`the ${r} join token is missing`);
  if (problems.length > 20) return [...problems.slice(0, 20), `and ${problems.length - 20} more`];
  return problems;
}
