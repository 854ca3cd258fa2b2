import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { openStore } from '../../src/store/store.js';
import { tmpDir } from '../helpers.js';

test('SQLite store: using the store itself inside one of its transactions fails at once (it would wait forever)', async (t) => {
  const store = await openStore('sqlite', path.join(tmpDir(t), 'cairn.db'));
  try {
    await assert.rejects(
      store.transaction(async () => store.getCluster()),
      /used directly inside one of its own transactions: use the store the transaction passes/,
    );
    // the transaction's own store works, and so does the store once the transaction ended
    assert.equal(await store.transaction(async (tx) => (await tx.getCluster()) ?? null), null);
    assert.equal((await store.getCluster()) ?? null, null);
  } finally {
    await store.close();
  }
});
