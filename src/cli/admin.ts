import { Command, Option } from 'commander';
import { REVOCATION_REASONS } from '../pki/index.js';
import { DEFAULT_LISTEN } from '../server/state-dir.js';
import { CairnError } from '../util/errors.js';
import { writeFilesAtomic, FILE_MODE } from '../util/files.js';
import { adminCall, adminPages, adminTarget, addAdminOptions, AdminFlags } from './admin-client.js';
import { jsonOption, out, printJson, stateDirOption, streamJsonArray, streamTable, table } from './common.js';


import { addPkcs11Options, Pkcs11Flags, pkcs11FromFlags } from './ca-key-flags.js';

export function replicaCommand(): Command {
  const replica = new Command('replica').description('CA replicas sharing one PostgreSQL store');
  addPkcs11Options(replica
    .command('add'), { label: false })
    .description('prepare a new replica of an existing cluster: server certificate and admin bundle in --state-dir')
    .addOption(stateDirOption('the new replica\'s state directory'))
    .requiredOption('--store <url>', 'the cluster\'s PostgreSQL store: postgres://user:pass@host/db')
    .option('--unlock-key-file <file>', 'the cluster unlock key (default: CAIRN_UNLOCK_KEY)')
    .requiredOption('--advertise-addr <host>', 'host name or IP address nodes use to reach this replica')
    .option('--san <name>', 'extra DNS name or IP address for the server certificate (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--listen <host:port>', 'address "cairn serve" listens on', DEFAULT_LISTEN)
    .addOption(jsonOption())
    .action(async (f: Pkcs11Flags & { stateDir: string; store: string; unlockKeyFile?: string; advertiseAddr: string; san: string[]; listen: string; json?: boolean }) => {
      const pkcs11 = await pkcs11FromFlags(f);
      const { addReplica } = await import('../server/bootstrap.js');
      const r = await addReplica({ stateDir: f.stateDir, store: f.store, unlockKeyFile: f.unlockKeyFile, advertiseAddr: f.advertiseAddr, sans: f.san, listen: f.listen, pkcs11 });
      if (f.json) return printJson(r);
      out(`Replica ${r.replicaId} of cluster ${r.clusterId} prepared in ${f.stateDir}.`);
      out(`Start it with: cairn serve --state-dir ${f.stateDir} --unlock-key-file <file>   (or CAIRN_UNLOCK_KEY)`);
    });
  addAdminOptions(replica.command('ls'))
    .description('list replicas with ID, address, version and last heartbeat')
    
    .addOption(jsonOption())
    .action(async (f: AdminFlags & { json?: boolean }) => {
      const r = await adminCall(adminTarget(f), 'GET', 'v1/replicas');
      if (f.json) return printJson(r.replicas);
      table([['ID', 'ADDRESS', 'VERSION', 'LAST HEARTBEAT'], ...r.replicas.map((x: any) => [x.id, x.address, x.version, x.heartbeatAt])]);
    });
  addAdminOptions(replica.command('rm'))
    .description('remove another replica: it may not serve again and its server certificate is revoked (agents holding the CRL stop trusting it)')
    .argument('<id>', 'replica ID, as "cairn replica ls" prints it')
    
    .addOption(jsonOption())
    .action(async (id: string, f: AdminFlags & { json?: boolean }) => {
      const r = await adminCall(adminTarget(f), 'DELETE', `v1/replicas/${encodeURIComponent(id)}`);
      if (f.json) return printJson(r);
      out(`Replica ${r.id} removed; revoked its server certificate${r.revoked.length === 1 ? '' : 's'} ${r.revoked.join(', ') || '(none good)'}.`);
    });
  return replica;
}

export function adminBundleCommand(): Command {
  return new Command('admin-bundle')
    .description('issue a new admin client bundle into <state-dir>/admin with the store and unlock key alone (no running server, no admin certificate needed)')
    .addOption(stateDirOption('a replica state directory'))
    .option('--store <url>', 'the cluster\'s store (default: CAIRN_STORE, then the state directory\'s)')
    .option('--unlock-key-file <file>', 'the cluster unlock key (default: CAIRN_UNLOCK_KEY, then <state-dir>/unlock.key)')
    .option('--name <name>', 'CN of the admin certificate', 'admin')
    .addOption(jsonOption())
    .addHelpText('after', `
The way back in when every admin certificate is revoked, lost or expired. Replaces
admin/ca.pem, admin/cert.pem and admin/key.pem (0600) in the state directory; the bundle it
replaces is not revoked (revoke it with "cairn revoke <serial>" if it was compromised).`)
    .action(async (f: { stateDir: string; store?: string; unlockKeyFile?: string; name: string; json?: boolean }) => {
      const { issueAdminBundle } = await import('../server/bootstrap.js');
      const r = await issueAdminBundle({ stateDir: f.stateDir, store: f.store, unlockKeyFile: f.unlockKeyFile, name: f.name });
      if (f.json) return printJson({ serial: r.serial, notAfter: r.notAfter.toISOString(), clusterId: r.clusterId, dir: r.dir });
      out(`Issued admin certificate ${r.serial} (valid until ${r.notAfter.toISOString()}) into ${r.dir}.`);
    });
}

const reasons = Object.keys(REVOCATION_REASONS);

export function revokeCommand(): Command {
  return addAdminOptions(new Command('revoke'))
    .description('revoke a certificate by serial, or every certificate of a node; renewal is refused at once, the next CRL lists it')
    .argument('[serial]', 'certificate serial number (hex, as "cairn cert ls" prints it)')
    .option('--node <id>', 'revoke every good certificate of this node (however many)')
    .addOption(new Option('--reason <reason>', 'revocation reason').choices(reasons).default('unspecified'))
    .option('--force', 'also revoke the last good admin certificate (locks every administrator out until "cairn admin-bundle")')
    
    .addOption(jsonOption())
    .action(async (serial: string | undefined, f: AdminFlags & { node?: string; reason: string; force?: boolean; json?: boolean }) => {
      if (!!serial === !!f.node) throw new CairnError('usage', 'give either a serial or --node <id>');
      const r: { revoked: number; serials: string[]; reason: string } = serial
        ? await adminCall(adminTarget(f), 'POST', `v1/certificates/${encodeURIComponent(serial)}/revoke`, { reason: f.reason, ...(f.force ? { force: true } : {}) })
        : await adminCall(adminTarget(f), 'POST', `v1/nodes/${encodeURIComponent(f.node!)}/revoke`, { reason: f.reason });
      if (f.json) return printJson(r);
      if (r.revoked === 0) return out('Nothing to revoke: no good certificate matched.');
      if (serial) return out(`Revoked ${r.serials[0]} (${r.reason}).`);
      out(`Revoked ${r.revoked} certificate${r.revoked === 1 ? '' : 's'} of node ${f.node} (${r.reason}).`);
    });
}

export function certCommand(): Command {
  const cert = new Command('cert').description('find and inspect issued certificates');
  addAdminOptions(cert.command('ls'))
    .description('list certificates recorded in the store, oldest first (printed page by page as they arrive; --json: a JSON array, one certificate per line)')
    .option('--node <id>', 'only this node\'s certificates')
    .addOption(new Option('--status <status>', 'only good or revoked certificates').choices(['good', 'revoked']))
    .addOption(new Option('--kind <kind>', 'only this kind').choices(['node', 'admin', 'server', 'client']))
    
    .addOption(jsonOption())
    .action(async (f: AdminFlags & { node?: string; status?: string; kind?: string; json?: boolean }) => {
      const q = new URLSearchParams();
      if (f.node) q.set('node', f.node);
      if (f.status) q.set('status', f.status);
      if (f.kind) q.set('kind', f.kind);
      const path = `v1/certificates?${q}`;
      const target = adminTarget(f);
      if (f.json) {
        const arr = streamJsonArray();
        await adminPages<any>(target, path, 'certificates', (certs) => certs.forEach((c) => arr.push(c)));
        return arr.end();
      }
      let row: ((r: string[]) => void) | null = null;
      await adminPages<any>(target, path, 'certificates', (certs) => {
        row ??= streamTable(['SERIAL', 'KIND', 'NODE', 'ROLE', 'STATUS', 'NOT AFTER'], [32, 6, 25, 7, 7, 24]);
        for (const c of certs) row([c.serial, c.kind, c.nodeId ?? '-', c.role ?? '-', c.status, c.notAfter]);
      });
    });
  addAdminOptions(cert.command('inspect'))
    .description('show one certificate (with --pem, print it as PEM)')
    .argument('<serial>', 'serial number (hex)')
    .option('--pem', 'print the certificate in PEM')
    
    .addOption(jsonOption())
    .action(async (serial: string, f: AdminFlags & { pem?: boolean; json?: boolean }) => {
      const c = await adminCall(adminTarget(f), 'GET', `v1/certificates/${encodeURIComponent(serial)}`);
      if (f.pem) {
        process.stdout.write(c.pem);
        return;
      }
      if (f.json) return printJson(c);
      for (const [k, v] of Object.entries(c)) if (k !== 'pem') out(`${(k + ':').padEnd(18)}${v ?? '-'}`);
    });
  return cert;
}

export function crlCommand(): Command {
  return addAdminOptions(new Command('crl'))
    .description('fetch the newest CRL of the cluster or client CA')
    .argument('[ca]', 'cluster or client', 'cluster')
    .addOption(new Option('--format <format>', 'output format').choices(['pem', 'der']).default('pem'))
    .option('-o, --out <file>', 'write to this file instead of standard output')
    
    .action(async (ca: string, f: AdminFlags & { format: string; out?: string }) => {
      if (ca !== 'cluster' && ca !== 'client') throw new CairnError('usage', `unknown CA "${ca}": use cluster or client`);
      const body: Buffer = await adminCall(adminTarget(f), 'GET', `v1/crl/${ca}${f.format === 'pem' ? '?format=pem' : ''}`, undefined, { raw: true });
      if (f.out) writeFilesAtomic([{ path: f.out, data: body, mode: FILE_MODE }], { overwrite: true });
      else if (f.format === 'der' && process.stdout.isTTY) throw new CairnError('usage', 'refusing to write DER to a terminal: use -o FILE');
      else {
        process.stdout.write(body);
      }
    });
}

