/**
 * The CRL builder's thread (worker_threads): it reads a CA's revoked certificates, builds and
 * signs the CRL and stores it, fenced by the lease term, on its own store connection
 * (crl-publish.ts). A CRL with 100,000 entries takes a good part of a second to read and
 * build: here it does not stall the requests of the main thread. It signs with a key of this
 * process; a key held elsewhere (a PKCS#11 token) signs in the main thread (crl.ts).
 *
 * It keeps, per CA, the revocation list and its entries' DER between publications, and reads
 * only the revocations since its last read (crl-publish.ts): a publication after one more
 * revocation does not read and encode 100,000 entries again. When the list did not change and
 * the last CRL stored from it is still the newest, there is nothing to re-sign (the main
 * thread asks again when the CRL ages, and the list is then read in full).
 */
import { KeyObject } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import { openStore } from '../store/store.js';
import { CrlPublishJob, CrlPublishResult, publishCrl, CrlLists } from './crl-publish.js';
import { LocalKeySigner } from './signer.js';

export interface CrlJob extends CrlPublishJob {
  id: number;
  certDer: Uint8Array;
  key: KeyObject;
}

export type CrlJobResult = { id: number; error?: string } & CrlPublishResult;

const { kind, location } = workerData as { kind: 'sqlite' | 'postgres'; location: string };
const store = await openStore(kind, location, { migrate: false, poolSize: 1 });
const lists: CrlLists = new Map();

parentPort!.on('message', (m: CrlJob | 'close') => {
  if (m === 'close') {
    store.close().finally(() => parentPort!.close());
    return;
  }
  Promise.resolve()
    .then(() => publishCrl(store, m, new LocalKeySigner(Buffer.from(m.certDer), m.key), lists))
    .then(
      (r) => parentPort!.postMessage({ id: m.id, ...r }),
      (e: Error) => parentPort!.postMessage({ id: m.id, error: e?.message ?? String(e) }),
    );
});
