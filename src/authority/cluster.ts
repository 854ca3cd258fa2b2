import {
  certificateInfo, certificateToPem, generateKeyPair, KeyType, makeSerial, privateKeyToPem, randomId, rootCaProfile,
  selfSignCertificate, spkiDer,
} from '../pki/index.js';
import type { Store } from '../store/store.js';
import { DEFAULT_CONFIG } from './authority.js';
import { cloneSerialStart } from './backup.js';
import { caRowFor, ProvidedCas } from './clone.js';
import { seal } from './seal.js';
import { formatToken, hashSecret, newSecret, ROLES } from './tokens.js';
import { rootDigest } from '../pki/index.js';
import { CairnError } from '../util/errors.js';

export interface InitResult {
  clusterId: string;
  tokens: Record<string, string>;
}

/** Create a root CA row (certificate + sealed key) ready to insert. */
export function newRootCa(clusterId: string, name: 'cluster' | 'client', unlockKey: Buffer, generation: number, serial: bigint, keyType?: KeyType) {
  const kp = generateKeyPair(keyType);
  const der = selfSignCertificate(
    rootCaProfile({ O: clusterId, OU: 'cairn', CN: `${name}-root-ca` }, spkiDer(kp.publicKey), makeSerial(serial)),
    kp.privateKey,
  );
  const info = certificateInfo(der);
  const id = `${name}-root-ca-${generation}`;
  return {
    der,
    row: {
      id,
      name,
      generation,
      cert_pem: certificateToPem(der),
      key_sealed: seal(unlockKey, privateKeyToPem(kp.privateKey), id),
      key_id: info.subjectKeyId!.toString('hex'),
      status: 'active',
      created_at: Date.now(),
    },
  };
}

/**
 * Create a cluster in an empty store: cluster ID, cluster-root-ca and client-root-ca
 * (keys sealed under the unlock key), default configuration, serial sequence, and the
 * worker and manager join tokens (only their hashes are stored).
 */
export async function initCluster(store: Store, name: string, unlockKey: Buffer, keyType?: KeyType, provided?: ProvidedCas): Promise<InitResult> {
  // with provided CA material (init --from-pkcs12), the cluster ID is the one its roots carry
  const clusterId = provided?.clusterId ?? randomId();
  const tokens: Record<string, string> = {};
  await store.transaction(async (trx) => {
    const existing = await store.getCluster(trx);
    // initReplica checks first; this catches another init of the same store racing it
    if (existing) throw new CairnError('exists', `the store already holds cluster ${existing.id}`);
    const now = Date.now();
    await trx.insertInto('cluster').values({ id: clusterId, name, created_at: now }).execute();
    // the roots take sequence numbers 1 and 2; leaves start after them
    const cluster = provided ? { der: provided.cluster.certDer, row: caRowFor('cluster', provided.cluster, unlockKey) } : newRootCa(clusterId, 'cluster', unlockKey, 1, 1n, keyType);
    const client = provided ? { der: provided.client.certDer, row: caRowFor('client', provided.client, unlockKey) } : newRootCa(clusterId, 'client', unlockKey, 1, 2n, keyType);
    await store.insertCa(cluster.row, trx);
    await store.insertCa(client.row, trx);
    // a controller sharing CA keys with another draws serials from a block far from the other's
    await store.ensureSequence('serial', provided ? cloneSerialStart(16) : 16, trx);
    await store.ensureSequence('request', 1, trx);
    await store.ensureSequence('revocation', 0, trx);
    await store.setConfig({ ...DEFAULT_CONFIG }, trx);
    const digest = rootDigest(cluster.der);
    for (const role of ROLES) {
      const secret = newSecret();
      await store.setTokenHash(role, hashSecret(secret), trx);
      tokens[role] = formatToken(digest, secret);
    }
    await store.audit('init', 'cluster.init', { clusterId, name }, trx);
  });
  return { clusterId, tokens };
}
