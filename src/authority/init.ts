import { generateKeyPair, KeyType, makeSerial, randomId, rootCaProfile, rootDigest, selfSignCertificate, spkiDer } from '../pki/index.js';
import type { Store } from '../store/store.js';
import { CairnError } from '../util/errors.js';
import { DEFAULT_CONFIG, type ClusterConfig } from './authority.js';
import { caRowFor, ProvidedCas } from './clone.js';
import { rootCaSubject } from './policy.js';
import { ROOT_SEQUENCES, startSequences } from './serials.js';
import { mintJoinTokens } from './tokens.js';

export interface InitResult {
  clusterId: string;
  tokens: Record<string, string>;
}

/** Create a root CA row (certificate + sealed key) ready to insert; `der` is the root itself. */
export function newRootCa(clusterId: string, name: 'cluster' | 'client', unlockKey: Buffer, generation: number, serial: bigint | Buffer, keyType?: KeyType) {
  const kp = generateKeyPair(keyType);
  const sn = typeof serial === 'bigint' ? makeSerial(serial) : serial;
  const der = selfSignCertificate(rootCaProfile(rootCaSubject(clusterId, name, generation), spkiDer(kp.publicKey), sn), kp.privateKey);
  return { der, key: kp.privateKey, row: caRowFor(name, { certDer: der, key: kp.privateKey }, unlockKey, generation) };
}

/**
 * Create a cluster in an empty store: cluster ID, cluster-root-ca and client-root-ca
 * (keys sealed under the unlock key), default configuration, serial sequence, and the
 * worker and manager join tokens (only their hashes are stored).
 */
export async function initCluster(store: Store, name: string, unlockKey: Buffer, keyType?: KeyType, provided?: ProvidedCas, settings: Partial<ClusterConfig> = {}): Promise<InitResult> {
  // a clone (init --from-pkcs12 of cairn-made roots) keeps its original's cluster ID; any other cluster gets a new one
  const clusterId = provided?.clusterId ?? randomId();
  return store.transaction(async (tx) => {
    const existing = await tx.getCluster();
    // initReplica checks first; this catches another init of the same store racing it
    if (existing) throw new CairnError('exists', `the store already holds cluster ${existing.id}`);
    const now = Date.now();
    await tx.insertCluster({ id: clusterId, name, created_at: now });
    // a CA given (init --ca-cert, --from-pkcs12, a key in a PKCS#12 token) or a new root
    const ca = (n: 'cluster' | 'client') => {
      const m = provided?.[n];
      return m ? { der: m.chain?.at(-1) ?? m.certDer, row: caRowFor(n, m, unlockKey) } : newRootCa(clusterId, n, unlockKey, 1, ROOT_SEQUENCES[n], keyType);
    };
    const cluster = ca('cluster');
    const client = ca('client');
    await tx.insertCa(cluster.row);
    await tx.insertCa(client.row);
    // a key that came from elsewhere may sign elsewhere too: serials in a block of their own
    await startSequences(tx, { sharesCaKeys: !!(provided?.cluster?.key || provided?.client?.key) });
    await tx.setConfig({ ...DEFAULT_CONFIG, ...settings });
    // the digest is of the root nodes anchor in (an intermediate's root)
    const tokens = await mintJoinTokens(tx, rootDigest(cluster.der));
    await tx.audit('init', 'cluster.init', { clusterId, name });
    return { clusterId, tokens: tokens as Record<string, string> };
  });
}
