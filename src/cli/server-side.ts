import { availableParallelism } from 'node:os';
import { Command, Option } from 'commander';
import { formatToken, isRole, parseToken } from '../authority/tokens.js';
import { DEFAULT_LISTEN, readTokens, saveToken, statePaths } from '../server/state-dir.js';
import { HOUR_MS } from '../pki/index.js';
import { formatDuration } from '../util/duration.js';
import { CairnError } from '../util/errors.js';
import { adminCall, adminPages, adminTarget, addAdminOptions, AdminFlags, serverUrl } from './admin-client.js';
import { addPkcs12InitOptions, casFromInitFlags } from './backup-commands.js';
import { addCaKeyOptions, addExternalCaOption, externalCasFromFlags, addPkcs11Options, CaKeyFlags, casFromFiles, Pkcs11Flags, pkcs11FromFlags } from './ca-key-flags.js';
import { closeOnSignal, jsonOption, keyTypeOption, out, parseDurationArg, printJson, serverOption, stateDirOption, streamJsonArray, streamTable, table } from './common.js';


function joinCommand(token: string, url: string): string {
  return `cairn join --token ${token} --state-dir <node-dir> ${url}`;
}

export function initCommand(): Command {
  return addExternalCaOption(addPkcs11Options(addCaKeyOptions(addPkcs12InitOptions(new Command('init'))), { label: true }), 'the cluster CA\'s key is held by an external CA (give its certificate with --ca-cert, no key)')
    .description('create a cluster: root CAs, unlock key, store, join tokens, this replica\'s server certificate and an admin bundle')
    .argument('<cluster-name>', 'human name of the cluster')
    .addOption(stateDirOption())
    .option('--advertise-addr <host>', 'host name or IP address nodes use to reach this replica (default: the listen host)')
    .option('--san <name>', 'extra DNS name or IP address for the server certificate (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--listen <host:port>', 'address "cairn serve" listens on', DEFAULT_LISTEN)
    .option('--store <url>', 'shared store for several replicas: postgres://user:pass@host/db (default: SQLite in the state directory)')
    .addOption(keyTypeOption())
    .addOption(jsonOption())
    .addHelpText('after', `
Writes into the state directory (created 0700):
  cairn.db            the SQLite store (unless --store is given)
  unlock.key          the cluster unlock key (0600): it opens the CA keys sealed in the store
  replica.json        this replica's identity and listen address
  server.key/.crt     this replica's HTTPS identity; ca.crt the trust bundle
  admin/              the admin client bundle (ca.pem, cert.pem, key.pem) and the join tokens (tokens.json, 0600)`)
    .action(async (name: string, f: CaKeyFlags & Pkcs11Flags & { externalCa: string[]; stateDir: string; advertiseAddr?: string; san: string[]; listen: string; store?: string; keyType: any; json?: boolean; pkcs12Password?: string; pkcs12PasswordFile?: string }) => {
      const { validateClusterName } = await import('../authority/policy.js');
      validateClusterName(name);
      const pkcs11 = await pkcs11FromFlags(f);
      if (pkcs11 && f.fromPkcs12) throw new CairnError('usage', '--from-pkcs12 brings keys to seal in the store: it does not go with --pkcs11-*');
      if (pkcs11 && (f.clientCaCert || f.clientCaKey)) throw new CairnError('usage', 'with --pkcs11-*, both CA keys are in the token: --client-ca-cert/--client-ca-key do not apply');
      const externalCas = f.externalCa.length ? await externalCasFromFlags(f.externalCa) : undefined;
      if (externalCas && (pkcs11 || f.fromPkcs12 || f.caKey)) throw new CairnError('usage', '--external-ca holds the cluster CA key: give its certificate with --ca-cert, without --ca-key, --pkcs11-* or --from-pkcs12');
      if (externalCas && !f.caCert) throw new CairnError('usage', '--external-ca needs the certificate of the external CA that signs: --ca-cert <file>');
      const ca = (await casFromFiles(f, { keyElsewhere: !!pkcs11 || !!externalCas })) ?? (await casFromInitFlags(f));
      if (externalCas && ca?.cluster) ca.cluster.keyLocation = JSON.stringify({ kind: 'external', protocol: 'cfssl' });
      const { initReplica } = await import('../server/bootstrap.js'); // heavy (store, server): loaded only when used
      const r = await initReplica({ stateDir: f.stateDir, clusterName: name, advertiseAddr: f.advertiseAddr, sans: f.san, listen: f.listen, store: f.store ?? process.env.CAIRN_STORE, keyType: f.keyType, ca, pkcs11, pkcs11KeyLabel: f.pkcs11KeyLabel, externalCas });
      if (f.json) return printJson({ clusterId: r.clusterId, replicaId: r.replicaId, tokens: r.tokens, listen: r.listen });
      const url = `https://${f.advertiseAddr ? `${f.advertiseAddr}:${f.listen.split(':').pop()}` : r.listen}`;
      out(`Cluster "${name}" created (cluster ID ${r.clusterId}) in ${r.stateDir}.`);
      out('');
      out(`Start the CA:            cairn serve --state-dir ${r.stateDir}`);
      out(`Join a worker node:      ${joinCommand(r.tokens.worker, url)}`);
      out(`Join a manager node:     ${joinCommand(r.tokens.manager, url)}`);
      out('');
      out(`Keep ${statePaths(r.stateDir).unlockKey} secret: it opens the CA keys.`);
    });
}

export function serveCommand(): Command {
  const serve = new Command('serve')
    .description('run the CA\'s HTTPS API (TLS 1.2 minimum); SIGTERM drains in-flight requests and exits 0')
    .enablePositionalOptions()
    .option('--state-dir <dir>', 'the replica state directory (required)')
    .option('--listen <host:port>', 'address to listen on (default: from the state directory)')
    .option('--store <url>', 'store URL (default: CAIRN_STORE, then the one in the state directory, then its SQLite file)')
    .option('--unlock-key-file <file>', 'unlock key file (default: CAIRN_UNLOCK_KEY, then <state-dir>/unlock.key)')
    .addOption(new Option('--log-level <level>', 'log level (logs are JSON lines on stderr)').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'))
    .option('--proxy-protocol', 'behind a TCP load balancer that sends the PROXY protocol (HAProxy send-proxy-v2): every connection must start with its header, the client address is taken from it (default: "proxyProtocol" in replica.json)')
    .option('--workers <n>', `server processes sharing the port (default: the number of cores, here ${availableParallelism()}); CRL publication and the heartbeat run once, in the first process`)
    .addHelpText('after', `
Subcommand:
  cairn serve systemd-unit [--state-dir DIR] [--user U] ...   print a systemd unit running this replica`)
    .action(async (f: { stateDir?: string; listen?: string; store?: string; unlockKeyFile?: string; logLevel: string; proxyProtocol?: boolean; workers?: string }) => {
      if (!f.stateDir) throw new CairnError('usage', "required option '--state-dir <dir>' not specified");
      const opts = { stateDir: f.stateDir, listen: f.listen, store: f.store, unlockKeyFile: f.unlockKeyFile, logLevel: f.logLevel, proxyProtocol: f.proxyProtocol };
      const { isServeWorker, runWorker } = await import('../server/workers.js');
      if (isServeWorker()) return runWorker(opts);
      const workers = f.workers === undefined ? availableParallelism() : Number(f.workers);
      if (!/^[0-9]{1,3}$/.test(f.workers ?? '1') || workers < 1 || workers > 256) throw new CairnError('usage', `--workers must be a whole number between 1 and 256, not "${f.workers}"`);
      const { serveReplica } = await import('../server/bootstrap.js');
      const srv = await serveReplica({ ...opts, workers });
      process.stdout.write(`cairn serving on ${srv.url}\n`);
      await closeOnSignal(() => srv.close());
    });
  serve
    .command('systemd-unit')
    .description('print a systemd unit that runs "cairn serve" (restart on failure, sandboxed; only the state directory writable)')
    .option('--state-dir <dir>', 'the replica state directory', '/var/lib/cairn')
    .option('--listen <host:port>', 'passed to cairn serve')
    .option('--unlock-key-file <file>', 'passed to cairn serve')
    .option('--environment-file <file>', 'EnvironmentFile= for secrets kept out of the unit, e.g. CAIRN_STORE=postgres://… or CAIRN_UNLOCK_KEY')
    .option('--user <user>', 'run as this user (User=); the state directory must be theirs')
    .option('--bin <path>', 'the cairn executable (default: this Node.js running this cairn)')
    .addHelpText('after', `
Install:
  cairn serve systemd-unit --state-dir /var/lib/cairn --user cairn > /etc/systemd/system/cairn.service
  systemctl daemon-reload && systemctl enable --now cairn

SIGTERM (systemctl stop) drains in-flight requests; the unit gives it 30 s. A port below 1024
needs AmbientCapabilities=CAP_NET_BIND_SERVICE in a drop-in when --user is given.`)
    .action(async (f: { stateDir: string; listen?: string; unlockKeyFile?: string; environmentFile?: string; user?: string; bin?: string }) => {
      const path = await import('node:path');
      const { cairnCommand, unitFile } = await import('./systemd.js');
      const args = ['serve', '--state-dir', path.resolve(f.stateDir)];
      if (f.listen) args.push('--listen', f.listen);
      if (f.unlockKeyFile) args.push('--unlock-key-file', path.resolve(f.unlockKeyFile));
      process.stdout.write(
        unitFile({
          comment: ['cairn CA replica; generated by "cairn serve systemd-unit"', 'install as /etc/systemd/system/cairn.service, then: systemctl daemon-reload && systemctl enable --now cairn'],
          description: 'cairn certificate authority replica (HTTPS API)',
          exec: [...cairnCommand(f.bin), ...args],
          writable: [f.stateDir],
          user: f.user,
          restartSec: '5s',
          extra: ['KillSignal=SIGTERM', 'TimeoutStopSec=30s', ...(f.environmentFile ? [`EnvironmentFile=${path.resolve(f.environmentFile)}`] : [])],
        }),
      );
    });
  return serve;
}

function requireStateDir<T extends { stateDir?: string }>(f: T): T & { stateDir: string } {
  if (!f.stateDir) throw new CairnError('usage', "required option '--state-dir <dir>' not specified");
  return f as T & { stateDir: string };
}

export function tokenCommand(): Command {
  const token = new Command('token')
    .description('print the join command (or token) for workers or managers; --rotate replaces the secret; create/ls/revoke: limited tokens')
    .argument('<role>', 'worker or manager')
    // not mandatory here: the subcommands (create, ls, revoke) take them from this command too
    .addOption(new Option('--state-dir <dir>', 'a replica state directory (its admin bundle, kept tokens and listen address are used)'))
    .addOption(new Option('--bundle <dir>', 'an admin client bundle directory instead of a state directory (then only --rotate can print a token)'))
    .addOption(serverOption())
    .option('--rotate', 'replace the token secret: the old token stops working at once (needs a running server)')
    .option('-q, --quiet', 'print the token only')
    .addHelpText('after', `
Two kinds of join token:
  cairn token worker|manager   the reusable (swarm-style) token of a role, kept until --rotate
  cairn token create ...       a limited token: valid for --ttl and --uses joins (default 1h, 1),
                               uses counted atomically across every replica; list with
                               "cairn token ls", withdraw with "cairn token revoke <id>"`)
    .configureHelp({ showGlobalOptions: true })
    .action(async (role: string, f: AdminFlags & { rotate?: boolean; quiet?: boolean }) => {
      if (!isRole(role)) throw new CairnError('usage', `unknown role "${role}": use worker or manager (or create, ls, revoke)`);
      if (!f.stateDir && !f.rotate) throw new CairnError('usage', 'without --state-dir, only --rotate can print a token (the server keeps only hashes)');
      const tokens = f.stateDir ? readTokens(f.stateDir) : {};
      const target = f.rotate ? adminTarget(f) : null;
      if (target) {
        const r = await adminCall(target, 'POST', `v1/tokens/${role}/rotate`);
        tokens[role] = r.token;
        if (f.stateDir) saveToken(f.stateDir, role, r.token);
        if (!f.quiet) out(`Rotated the ${role} join token; the old one no longer works.`);
      }
      let token = tokens[role];
      if (token && !f.rotate && f.stateDir) token = await withCurrentDigest(f.stateDir, f.server, role, token);
      if (!token) throw new CairnError('no_token', `no ${role} token is kept in ${statePaths(f.stateDir!).adminTokens} (only hashes are stored on the server): run "cairn token ${role} --rotate --state-dir ${f.stateDir}"`);
      if (f.quiet) return out(token);
      out(`To add a ${role} to this cluster, run on the node:`);
      out('');
      out(`    ${joinCommand(token, target ? target.server : serverUrl(f.stateDir!, f.server))}`);
    });
  // --state-dir, --server and -q are the token command's own (commander hands them to it): read with optsWithGlobals
  const common = (c: Command) => c.addOption(jsonOption());
  type Flags = { stateDir: string; server?: string; json?: boolean; quiet?: boolean };
  const flags = <T>(cmd: Command): T & Flags => requireStateDir(cmd.optsWithGlobals<T & Flags>());
  common(
    token
      .command('create')
      .description('create a limited join token: valid for --ttl and for --uses joins, counted across all replicas (printed this once)')
      .addOption(new Option('--role <role>', 'worker or manager').choices(['worker', 'manager']).makeOptionMandatory())
      .addOption(new Option('--ttl <duration>', 'how long it is valid, 1m to 30d (e.g. 10m, 24h)').argParser(parseDurationArg).default(60 * 60_000, '1h'))
      .option('--uses <n>', 'how many joins it admits (1 to 100000)', (v: string) => {
        if (!/^[0-9]{1,6}$/.test(v)) throw new CairnError('usage', `--uses must be a whole number (got "${v}")`);
        return Number(v);
      }, 1)
      .option('-q, --quiet', 'print the token only'),
  ).action(async (_o: unknown, cmd: Command) => {
    const f = flags<{ role: string; ttl: number; uses: number }>(cmd);
    const r = await adminCall(adminTarget({ stateDir: f.stateDir, server: f.server }), 'POST', 'v1/tokens', { role: f.role, ttlMs: f.ttl, uses: f.uses });
    if (f.quiet) return out(r.token);
    if (f.json) return printJson(r);
    out(`Token ${r.id} for ${f.role}s: ${r.maxUses} join${r.maxUses === 1 ? '' : 's'}, until ${r.expiresAt}. Run on the node:`);
    out('');
    out(`    ${joinCommand(r.token, serverUrl(f.stateDir, f.server))}`);
  });
  common(token.command('ls').description('list limited join tokens (never their secrets): state, uses, expiry')).action(async (_o: unknown, cmd: Command) => {
    const f = flags<object>(cmd);
    const r = await adminCall(adminTarget({ stateDir: f.stateDir, server: f.server }), 'GET', 'v1/tokens');
    if (f.json) return printJson(r.tokens);
    table([['ID', 'ROLE', 'STATE', 'USES', 'EXPIRES'], ...r.tokens.map((t: any) => [t.id, t.role, t.state, `${t.uses}/${t.maxUses}`, t.expiresAt])]);
  });
  common(token.command('revoke').description('revoke a limited join token: it admits no more joins').argument('<id>', 'token ID, as "cairn token ls" prints it')).action(
    async (id: string, _o: unknown, cmd: Command) => {
      const f = flags<object>(cmd);
      const r = await adminCall(adminTarget({ stateDir: f.stateDir, server: f.server }), 'DELETE', `v1/tokens/${encodeURIComponent(id)}`);
      if (f.json) return printJson(r);
      out(`Token ${r.id} revoked.`);
    },
  );
  return token;
}

/**
 * A kept token with the cluster's current root digest: a completed root CA rotation changes
 * the digest (the secret stays), so old tokens stop working and this prints the new one. When
 * no replica answers, the kept token is printed as it is.
 */
async function withCurrentDigest(stateDir: string, server: string | undefined, role: string, token: string): Promise<string> {
  let digest: string;
  try {
    digest = (await adminCall(adminTarget({ stateDir, server }), 'GET', 'v1/ca')).digest;
  } catch {
    return token;
  }
  if (typeof digest !== 'string') return token;
  return keepTokensWithDigest(stateDir, digest)[role] ?? token;
}

/**
 * Give the join tokens kept in <state dir>/admin/tokens.json the root digest `digest` (the
 * secrets stay) and save the ones that changed. Returns the roles' tokens as now kept.
 */
export function keepTokensWithDigest(stateDir: string, digest: string): Record<string, string> {
  const kept = readTokens(stateDir);
  const now: Record<string, string> = {};
  for (const [role, token] of Object.entries(kept)) {
    const parsed = parseToken(token);
    if (!parsed) continue;
    now[role] = parsed.digest === digest ? token : formatToken(digest, parsed.secret);
    if (now[role] !== token) saveToken(stateDir, role, now[role]);
  }
  return now;
}

interface NodeJson {
  id: string; role: string; status: string; createdAt: string; updatedAt: string; renewedAt: string | null;
  certificate: { serial: string; notBefore: string; notAfter: string; issuerKeyId: string; state: string } | null;
}


export function nodeCommand(): Command {
  const node = new Command('node').description('list and manage the nodes of the cluster (through the API, with the admin bundle)');
  const common = (c: Command) => addAdminOptions(c).addOption(jsonOption());
  common(node.command('ls').description('list nodes, oldest first (printed page by page as they arrive; --json: a JSON array, one node per line)')).action(async (f: AdminFlags & { json?: boolean }) => {
    if (f.json) {
      const arr = streamJsonArray();
      await adminPages<NodeJson>(adminTarget(f), 'v1/nodes', 'nodes', (nodes) => nodes.forEach((n) => arr.push(n)));
      return arr.end();
    }
    let row: ((r: string[]) => void) | null = null;
    await adminPages<NodeJson>(adminTarget(f), 'v1/nodes', 'nodes', (nodes) => {
      // the header only once the first page arrived: an error prints no half table
      row ??= streamTable(['ID', 'ROLE', 'STATUS', 'CERT', 'CERT EXPIRES', 'LAST RENEWAL', 'SERIAL'], [25, 7, 7, 8, 24, 24, 32]);
      for (const n of nodes) row([n.id, n.role, n.status, n.certificate?.state ?? '-', n.certificate?.notAfter ?? '-', n.renewedAt ?? '-', n.certificate?.serial ?? '-']);
    });
  });
  common(node.command('inspect').description('show one node').argument('<id>', 'node ID')).action(async (id: string, f: AdminFlags & { json?: boolean }) => {
    const n: NodeJson = await adminCall(adminTarget(f), 'GET', `v1/nodes/${encodeURIComponent(id)}`);
    if (f.json) return printJson(n);
    out(`ID:            ${n.id}`);
    out(`Role:          ${n.role}`);
    out(`Status:        ${n.status}`);
    out(`Created:       ${n.createdAt}`);
    out(`Updated:       ${n.updatedAt}`);
    if (n.certificate) {
      out(`Last renewal:  ${n.renewedAt ?? '-'}`);
      out(`Certificate:   serial ${n.certificate.serial} (${n.certificate.state})`);
      out(`  valid:       ${n.certificate.notBefore} to ${n.certificate.notAfter}`);
      out(`  issuer key:  ${n.certificate.issuerKeyId}`);
    }
  });
  const change = (verb: string, method: string, path: (id: string) => string, done: (n: NodeJson) => string, desc: string) =>
    common(node.command(verb).description(desc).argument('<id>', 'node ID')).action(async (id: string, f: AdminFlags & { json?: boolean }) => {
      const n: NodeJson = await adminCall(adminTarget(f), method, path(encodeURIComponent(id)));
      if (f.json) return printJson(n);
      out(done(n));
    });
  change('promote', 'POST', (id) => `v1/nodes/${id}/promote`, (n) => `Node ${n.id} is now a manager (its certificate changes at its next renewal).`, 'make a node a manager (applies at its next renewal)');
  change('demote', 'POST', (id) => `v1/nodes/${id}/demote`, (n) => `Node ${n.id} is now a worker (its certificate changes at its next renewal).`, 'make a node a worker (applies at its next renewal)');
  common(
    node
      .command('prune')
      .description('remove the nodes whose certificate expired more than --expired-for ago (as "node rm" does: they cannot come back)')
      .addOption(new Option('--expired-for <duration>', 'how long ago the certificate expired, e.g. 30d').argParser(parseDurationArg).default(30 * 86_400_000, '30d')),
  ).action(async (f: { expiredFor: number; stateDir: string; server?: string; json?: boolean }) => {
    const r: { removed: string[] } = await adminCall(adminTarget({ stateDir: f.stateDir, server: f.server }), 'POST', 'v1/nodes/prune', { expiredForMs: f.expiredFor });
    if (f.json) return printJson(r);
    out(r.removed.length ? `Removed ${r.removed.length} node${r.removed.length === 1 ? '' : 's'} whose certificate expired more than ${formatDuration(f.expiredFor)} ago: ${r.removed.join(', ')}` : `No node's certificate expired more than ${formatDuration(f.expiredFor)} ago.`);
  });
  change('rm', 'DELETE', (id) => `v1/nodes/${id}`, (n) => `Node ${n.id} removed: its certificates are revoked and it can no longer renew.`, 'remove a node: revoke its certificates, refuse its renewals');
  return node;
}

export function updateCommand(): Command {
  return addExternalCaOption(addAdminOptions(new Command('update')), 'replace the list of external CAs the cluster CA is signed through')
    .description('change cluster-wide settings (replicated: every replica applies them)')
    .addOption(new Option('--cert-expiry <duration>', 'lifetime of node certificates, e.g. 720h, 90d (minimum 1h)').argParser(parseDurationArg))
    .option('--ocsp-url <url>', 'base URL of the OCSP responder put into certificates issued from now on (AIA: <url>/v1/ocsp/<ca>); "none" removes it')
    .option('--crl-url <url>', 'base URL of the CRLs put into certificates issued from now on (CRL distribution point: <url>/v1/crl/<ca>); "none" removes it')
    .addOption(jsonOption())
    .addHelpText('after', `
--ocsp-url and --crl-url take the base URL of a replica or of a load balancer in front of the
replicas (e.g. https://ca.example.com:7443); certificates then say where their status is. By
default certificates carry neither: nodes reach the CA by their endpoint list.`)
    .action(async (f: AdminFlags & { certExpiry?: number; ocspUrl?: string; crlUrl?: string; externalCa: string[]; json?: boolean }) => {
      const patch: Record<string, unknown> = {};
      if (f.certExpiry !== undefined) {
        if (f.certExpiry < HOUR_MS) throw new CairnError('usage', `--cert-expiry must be at least 1h (got ${formatDuration(f.certExpiry)})`);
        patch.certExpiryMs = f.certExpiry;
      }
      const url = (v: string, flag: string) => {
        if (v === 'none') return null;
        if (!/^https?:\/\/[^\s]+$/.test(v)) throw new CairnError('usage', `${flag} must be an http:// or https:// URL, or "none"`);
        return v;
      };
      if (f.ocspUrl !== undefined) patch.ocspUrl = url(f.ocspUrl, '--ocsp-url');
      if (f.crlUrl !== undefined) patch.crlUrl = url(f.crlUrl, '--crl-url');
      if (f.externalCa.length) patch.externalCas = await externalCasFromFlags(f.externalCa);
      if (Object.keys(patch).length === 0) throw new CairnError('usage', 'nothing to update: give --cert-expiry, --ocsp-url, --crl-url or --external-ca');
      const cfg = await adminCall(adminTarget(f), 'PATCH', 'v1/config', patch);
      if (f.json) return printJson(cfg);
      if (f.certExpiry !== undefined) out(`Node certificate expiry is now ${formatDuration(cfg.certExpiryMs)} (applies to certificates issued from now on).`);
      if (f.ocspUrl !== undefined) out(cfg.ocspUrl ? `Certificates issued from now on name the OCSP responder ${cfg.ocspUrl}/v1/ocsp/<ca>.` : 'Certificates issued from now on name no OCSP responder.');
      if (f.crlUrl !== undefined) out(cfg.crlUrl ? `Certificates issued from now on name the CRL ${cfg.crlUrl}/v1/crl/<ca>.` : 'Certificates issued from now on name no CRL distribution point.');
      if (f.externalCa.length) out(`External CAs are now: ${cfg.externalCas.map((e: { url: string }) => e.url).join(', ')} (tried in order).`);
    });
}
