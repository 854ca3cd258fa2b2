/**
 * `cairn audit`: the audit log — list it (`ls`), check it (`verify`: the hash chain and the
 * seals, against the cluster roots of the caller's bundle), seal it now (`seal`).
 */
import { Command } from 'commander';
import type { ChainRow, SealRow } from '../authority/audit-log.js';
import { certificatesFromPem } from '../pki/index.js';
import { parseDuration } from '../util/duration.js';
import { CairnError, fromPki } from '../util/errors.js';
import { addAdminOptions, adminCall, AdminFlags, adminPages, adminTarget } from './admin-client.js';
import { jsonOption, out, printJson, streamJsonArray, streamTable } from './common.js';

/** --since: a time (2024-05-01, 2024-05-01T12:00:00Z) or a duration back from now (24h, 7d). */
function sinceArg(v: string): string {
  if (/^[0-9]+[smhd]$/.test(v) || /^[0-9]+(ms|w)$/.test(v)) return new Date(Date.now() - parseDuration(v)).toISOString();
  const t = Date.parse(v);
  if (!Number.isFinite(t)) throw new CairnError('usage', `--since "${v}" is neither a time (2024-05-01T12:00:00Z) nor a duration (24h, 7d)`);
  return new Date(t).toISOString();
}

const PAGE = 1000;
const BIG = 256 * 1024 * 1024;

export function auditCommand(): Command {
  const audit = new Command('audit').description('the signed, hash-chained audit log: list, verify, seal');
  addAdminOptions(audit.command('ls'))
    .description('list audit entries, newest first (time, replica, actor, action, subject, outcome)')
    .option('--since <time|duration>', 'only entries since a time (2024-05-01T12:00:00Z) or for a duration back from now (24h, 7d)')
    .option('--action <action>', 'only this action (node.promote), or actions starting with a prefix ending in "." (node.)')
    .option('--actor <actor>', 'only entries by this actor (admin:<serial>, node:<serial>, token:<role>, cli, …)')
    .addOption(jsonOption())
    .action(async (f: AdminFlags & { since?: string; action?: string; actor?: string; json?: boolean }) => {
      const q = new URLSearchParams();
      if (f.since) q.set('since', sinceArg(f.since));
      if (f.action) q.set('action', f.action);
      if (f.actor) q.set('actor', f.actor);
      const target = adminTarget(f);
      if (f.json) {
        const arr = streamJsonArray();
        await adminPages<any>(target, `v1/audit?${q}`, 'entries', (es) => es.forEach((e) => arr.push(e)));
        return arr.end();
      }
      let row: ((r: string[]) => void) | null = null;
      await adminPages<any>(target, `v1/audit?${q}`, 'entries', (es) => {
        row ??= streamTable(['SEQ', 'TIME', 'REPLICA', 'ACTOR', 'ACTION', 'SUBJECT', 'OUTCOME'], [6, 24, 25, 40, 22, 25, 7]);
        for (const e of es) row([String(e.seq ?? '-'), e.at, e.replica || '-', e.actor, e.action, e.subject || '-', e.outcome ?? '-']);
      });
    });

  addAdminOptions(audit.command('verify'))
    .description('walk the audit chain and its seals; name the first entry that was changed, deleted or inserted (exit 1 if any)')
    .addOption(jsonOption())
    .addHelpText('after', `
The chain and the seals are fetched through the API and checked here, against the cluster
roots of the bundle used (its ca.pem): each entry must hold the hash of the one before, and
each seal must be signed by this cluster's audit signing certificate and match the entry it
sealed. Entries after the newest seal are reported as not yet sealed (a seal is made every
auditSealIntervalMs, 60 s by default, or now with "cairn audit seal").`)
    .action(async (f: AdminFlags & { json?: boolean }) => {
      const target = adminTarget(f);
      const roots = fromPki(() => certificatesFromPem(target.identity.ca, 'the bundle\'s ca.pem'));
      const head = await adminCall(target, 'GET', 'v1/audit/head');
      const seals: SealRow[] = [];
      for (let after = 0; ; ) {
        const r = await adminCall(target, 'GET', `v1/audit/seals?after=${after}&limit=${PAGE}`, undefined, { maxResponseBytes: BIG });
        seals.push(...r.seals);
        if (r.seals.length < PAGE) break;
        after = r.seals[r.seals.length - 1].seq;
      }
      // loaded here: its module brings the store's (Kysely, pg, SQLite), which no other admin command needs to start
      const { ChainVerifier } = await import('../authority/audit-log.js');
      const v = new ChainVerifier(head.clusterId, roots, seals);
      for (let after = 0; ; ) {
        const r = await adminCall(target, 'GET', `v1/audit/chain?after=${after}&limit=${PAGE}`, undefined, { maxResponseBytes: BIG });
        for (const e of r.entries as ChainRow[]) v.add(e);
        if (r.entries.length < PAGE) break;
        after = r.entries[r.entries.length - 1].seq;
      }
      const res = v.finish(head.head, { count: head.unchained });
      if (f.json) printJson(res);
      else {
        out(`${res.entries} entries, ${res.seals} seal${res.seals === 1 ? '' : 's'}; sealed through entry ${res.sealedThrough}${res.unsealed ? `, ${res.unsealed} newer not yet sealed` : ''}.`);
        for (const p of res.problems) out(`  ${p.kind.toUpperCase().padEnd(8)} ${p.message}`);
        if (res.ok) out('The audit log is intact.');
      }
      if (!res.ok) throw new CairnError('audit_tampered', `the audit log was tampered with: ${res.problems[0].message}`);
    });

  addAdminOptions(audit.command('seal'))
    .description('sign the audit chain\'s newest entry now (otherwise done every auditSealIntervalMs)')
    .addOption(jsonOption())
    .action(async (f: AdminFlags & { json?: boolean }) => {
      const r = await adminCall(adminTarget(f), 'POST', 'v1/audit/seal');
      if (f.json) return printJson(r);
      if (!r.seal) return out('Nothing to seal: the audit log is empty.');
      out(r.sealed ? `Sealed the audit log through entry ${r.seal.seq}.` : `Already sealed through entry ${r.seal.seq}, the newest.`);
    });
  return audit;
}
