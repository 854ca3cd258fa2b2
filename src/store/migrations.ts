import { Kysely, Migration, MigrationProvider, sql } from 'kysely';
import { chainUnchained } from './audit-chain.js';

/**
 * The schema, as kysely migrations that run unchanged on SQLite and PostgreSQL. Only
 * portable types are used (text, integer, bigint); ids are text, never autoincrement.
 */
const migrations: Record<string, Migration> = {
  '0001_initial': {
    async up(db: Kysely<any>) {
      await db.schema.createTable('cluster')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema.createTable('config')
        .addColumn('key', 'text', (c) => c.primaryKey())
        .addColumn('value', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema.createTable('cas')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('generation', 'integer', (c) => c.notNull())
        .addColumn('cert_pem', 'text', (c) => c.notNull())
        .addColumn('key_sealed', 'text')
        .addColumn('key_id', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema.createTable('certificates')
        .addColumn('serial', 'text', (c) => c.primaryKey())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('node_id', 'text')
        .addColumn('role', 'text')
        .addColumn('subject', 'text', (c) => c.notNull())
        .addColumn('issuer_key_id', 'text', (c) => c.notNull())
        .addColumn('not_before', 'bigint', (c) => c.notNull())
        .addColumn('not_after', 'bigint', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('revoked_at', 'bigint')
        .addColumn('revocation_reason', 'text')
        .addColumn('cert_pem', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('replica_id', 'text')
        .execute();
      // the primary key already makes serials unique: the last line of defence against reuse
      await db.schema.createIndex('certificates_node').on('certificates').column('node_id').execute();
      await db.schema.createIndex('certificates_status_expiry').on('certificates').columns(['status', 'not_after']).execute();
      await db.schema.createIndex('certificates_issuer').on('certificates').column('issuer_key_id').execute();
      await db.schema.createTable('nodes')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('role', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .addColumn('current_serial', 'text')
        .execute();
      await db.schema.createTable('tokens')
        .addColumn('role', 'text', (c) => c.primaryKey())
        .addColumn('secret_hash', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema.createTable('sequences')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('next', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema.createTable('replicas')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('address', 'text', (c) => c.notNull())
        .addColumn('version', 'text', (c) => c.notNull())
        .addColumn('started_at', 'bigint', (c) => c.notNull())
        .addColumn('heartbeat_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema.createTable('leases')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('holder', 'text', (c) => c.notNull())
        .addColumn('term', 'bigint', (c) => c.notNull())
        .addColumn('expires_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema.createTable('audit')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('at', 'bigint', (c) => c.notNull())
        .addColumn('actor', 'text', (c) => c.notNull())
        .addColumn('action', 'text', (c) => c.notNull())
        .addColumn('detail', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('audit_at').on('audit').column('at').execute();
    },
  },
  '0002_crls': {
    async up(db: Kysely<any>) {
      await db.schema.createTable('crls')
        .addColumn('ca_name', 'text', (c) => c.notNull())
        .addColumn('number', 'bigint', (c) => c.notNull())
        .addColumn('der', 'text', (c) => c.notNull())
        .addColumn('this_update', 'bigint', (c) => c.notNull())
        .addColumn('next_update', 'bigint', (c) => c.notNull())
        .addColumn('revocation_mark', 'bigint', (c) => c.notNull())
        .addColumn('entries', 'integer', (c) => c.notNull())
        .addColumn('replica_id', 'text', (c) => c.notNull())
        .addColumn('term', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('crls_pk', ['ca_name', 'number'])
        .execute();
    },
  },
  '0003_listing_order': {
    // listings page in (created_at, key) order
    async up(db: Kysely<any>) {
      await db.schema.createIndex('nodes_created').on('nodes').columns(['created_at', 'id']).execute();
      await db.schema.createIndex('certificates_created').on('certificates').columns(['created_at', 'serial']).execute();
    },
  },
  '0004_renewal_guards': {
    async up(db: Kysely<any>) {
      // the certificate the node renewed from (it may renew once more within the grace
      // window), when the newest was issued, and the per-node renewal budget (a token bucket)
      await db.schema.alterTable('nodes').addColumn('previous_serial', 'text').execute();
      await db.schema.alterTable('nodes').addColumn('renewed_at', 'bigint').execute();
      await db.schema.alterTable('nodes').addColumn('renew_budget', 'double precision').execute();
      await db.schema.alterTable('nodes').addColumn('renew_budget_at', 'bigint').execute();
      // a removed replica stays recorded, so that it cannot come back by restarting
      await db.schema.alterTable('replicas').addColumn('removed_at', 'bigint').execute();
      await db.schema.createIndex('certificates_kind_status').on('certificates').columns(['kind', 'status']).execute();
    },
  },
  '0005_dashboard': {
    async up(db: Kysely<any>) {
      // refused joins and renewals, newest few hundred kept (the dashboard's overview)
      await db.schema.createTable('failures')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('at', 'bigint', (c) => c.notNull())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('code', 'text', (c) => c.notNull())
        .addColumn('client', 'text', (c) => c.notNull())
        .addColumn('node_id', 'text')
        .execute();
      await db.schema.createIndex('failures_at').on('failures').column('at').execute();
      // the audit log pages newest first by (at, id); node listings filter by role and status
      await db.schema.createIndex('audit_at_id').on('audit').columns(['at', 'id']).execute();
    },
  },
  '0006_node_and_issuer_lookups': {
    // A renewal revokes a node's good certificates of another role: with only (status, …)
    // to choose from, SQLite walked every good certificate per renewal. A CRL reads one
    // CA's revoked, unexpired certificates: not every revoked one of every CA.
    async up(db: Kysely<any>) {
      await db.schema.createIndex('certificates_node_status').on('certificates').columns(['node_id', 'status']).execute();
      await db.schema.createIndex('certificates_issuer_status').on('certificates').columns(['issuer_key_id', 'status', 'not_after']).execute();
    },
  },
  '0007_ocsp_bundles_audit_chain': {
    async up(db: Kysely<any>) {
      // the audit log becomes one hash chain (audit-chain.ts): a position, the replica that
      // recorded it, what it was about, how it ended, and the hashes that link it
      await db.schema.alterTable('audit').addColumn('seq', 'bigint').execute();
      await db.schema.alterTable('audit').addColumn('replica_id', 'text').execute();
      await db.schema.alterTable('audit').addColumn('subject', 'text').execute();
      await db.schema.alterTable('audit').addColumn('outcome', 'text').execute();
      await db.schema.alterTable('audit').addColumn('prev_hash', 'text').execute();
      await db.schema.alterTable('audit').addColumn('hash', 'text').execute();
      await db.schema.createIndex('audit_seq').on('audit').column('seq').unique().execute();
      // the chain's newest entry: appending locks this row, so entries are chained one at a time
      await db.schema.createTable('audit_head')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('seq', 'bigint', (c) => c.notNull())
        .addColumn('hash', 'text', (c) => c.notNull())
        .execute();
      // signatures over the chain's head by the audit signing certificate
      await db.schema.createTable('audit_seals')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('seq', 'bigint', (c) => c.notNull())
        .addColumn('hash', 'text', (c) => c.notNull())
        .addColumn('at', 'bigint', (c) => c.notNull())
        .addColumn('replica_id', 'text', (c) => c.notNull())
        .addColumn('signer_pem', 'text', (c) => c.notNull())
        .addColumn('signature', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('audit_seals_seq').on('audit_seals').column('seq').execute();
      // the subsystem certificates (Dogtag's): OCSP signing per CA generation, audit signing;
      // keys sealed under the unlock key like the CA keys
      await db.schema.createTable('signing_keys')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('purpose', 'text', (c) => c.notNull())
        .addColumn('ca_key_id', 'text', (c) => c.notNull())
        .addColumn('serial', 'text', (c) => c.notNull())
        .addColumn('cert_pem', 'text', (c) => c.notNull())
        .addColumn('key_sealed', 'text', (c) => c.notNull())
        .addColumn('not_before', 'bigint', (c) => c.notNull())
        .addColumn('not_after', 'bigint', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .execute();
      // entries recorded before: chained now, oldest first (a new store has none, and no head
      // until its first entry, so a full restore still finds it empty)
      const any = await db.selectFrom('audit').select('id').limit(1).executeTakeFirst();
      if (any) await chainUnchained(db);
    },
  },
  '0008_limited_join_tokens': {
    // join tokens with a lifetime and a number of uses (`cairn token create`); a use is
    // counted by one conditional UPDATE, atomic across replicas
    async up(db: Kysely<any>) {
      await db.schema.createTable('join_tokens')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('role', 'text', (c) => c.notNull())
        .addColumn('secret_hash', 'text', (c) => c.notNull().unique())
        .addColumn('max_uses', 'integer', (c) => c.notNull())
        .addColumn('uses', 'integer', (c) => c.notNull())
        .addColumn('expires_at', 'bigint', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('revoked_at', 'bigint')
        .execute();
    },
  },
};

migrations['0009_rotation'] = {
  // Root CA rotation: a generation's certificate cross-signed by the generation it replaces,
  // when a generation stopped being trusted, the rotations themselves, and which nodes the
  // rotation driver has asked to renew.
  async up(db: Kysely<any>) {
    await db.schema.alterTable('cas').addColumn('cross_pem', 'text').execute();
    await db.schema.alterTable('cas').addColumn('retired_at', 'bigint').execute();
    await db.schema.alterTable('nodes').addColumn('renew_requested_at', 'bigint').execute();
    await db.schema.createTable('rotations')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('ca', 'text', (c) => c.notNull())
      .addColumn('state', 'text', (c) => c.notNull())
      .addColumn('from_id', 'text', (c) => c.notNull())
      .addColumn('to_id', 'text', (c) => c.notNull())
      .addColumn('started_at', 'bigint', (c) => c.notNull())
      .addColumn('finished_at', 'bigint')
      .addColumn('actor', 'text', (c) => c.notNull())
      .execute();
    await db.schema.createIndex('nodes_renew_requested').on('nodes').column('renew_requested_at').execute();
  },
};

migrations['0010_ca_keys'] = {
  // CA keys held elsewhere (issue 10): where a generation's key lives when the store does not
  // seal it (a PKCS#11 token, an external CA), and the CA certificates above an intermediate
  // up to its root (an operator's own CA).
  async up(db: Kysely<any>) {
    await db.schema.alterTable('cas').addColumn('key_location', 'text').execute();
    await db.schema.alterTable('cas').addColumn('chain_pem', 'text').execute();
  },
};

migrations['0011_external_revocations'] = {
  // A certificate an external CA issued and cairn revoked: when the external CA recorded the
  // revocation (POST /api/v1/cfssl/revoke), null while it is still to be told (crl.ts).
  async up(db: Kysely<any>) {
    await db.schema.alterTable('certificates').addColumn('forwarded_at', 'bigint').execute();
  },
};

migrations['0012_node_role_lookup'] = {
  // A renewal of a worker revokes the node's good certificates of role manager: with only
  // (node_id, status), SQLite read every good certificate of the node (a node renewing often
  // keeps many until they expire). (node_id, status, role) finds them directly; it serves
  // every lookup the two indexes it replaces did, as do (issuer_key_id, status, not_after)
  // for (issuer_key_id): two fewer indexes to write per certificate.
  async up(db: Kysely<any>) {
    await db.schema.createIndex('certificates_node_status_role').on('certificates').columns(['node_id', 'status', 'role']).execute();
    await db.schema.dropIndex('certificates_node_status').execute();
    await db.schema.dropIndex('certificates_node').execute();
    await db.schema.dropIndex('certificates_issuer').execute();
  },
};

migrations['0013_revocations_by_time'] = {
  // The CRL builder keeps each CA's revocation list and reads only the revocations since its
  // last read (crl-publish.ts): the revoked rows by revoked_at, the good ones left out.
  async up(db: Kysely<any>) {
    await db.schema.createIndex('certificates_revoked_at').on('certificates').column('revoked_at').where(sql.ref('status'), '=', 'revoked').execute();
  },
};

export const migrationProvider: MigrationProvider = {
  async getMigrations() {
    return migrations;
  },
};
