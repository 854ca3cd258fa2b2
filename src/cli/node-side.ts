import { Command, Option } from 'commander';
import { out, printJson } from './common.js';

const stateDirOption = () =>
  new Option('--state-dir <dir>', 'the node state directory (NODEDIR): node.key, node.crt, ca.crt, node.json').makeOptionMandatory();

export function joinCommand(): Command {
  return new Command('join')
    .description('join a cluster with a token: check the CA against the token, generate a key here, get a node certificate')
    .addOption(new Option('--token <token>', 'join token (CAIRN-1-…), from "cairn token worker|manager"').env('CAIRN_JOIN_TOKEN').makeOptionMandatory())
    .addOption(stateDirOption())
    .option('--force', 'replace an identity already in the state directory')
    .option('--json', 'print {nodeId, role, clusterId, stateDir, endpoint, serial, notAfter} as JSON')
    .argument('<url...>', 'CA endpoints (https://host:port), tried in order; all are kept for renewals')
    .addHelpText('after', `
The token carries the digest of the cluster's root CA certificate: the CA at each address is
checked against it before anything is sent, so a man in the middle cannot pose as the CA.
The private key is generated on this machine and never leaves it. The token's secret decides
the role (worker or manager); the CA names the node (a random node ID).

Writes into NODEDIR (created 0700):
  node.key    the private key (0600)
  node.crt    the node certificate followed by any intermediate CA certificates
  ca.crt      the trust bundle: the root the token names, plus roots it vouches for
  node.json   { nodeId, role, clusterId, endpoints }
  crl.pem     the cluster CRL, if one could be fetched (the agent keeps it fresh)

Only a CA replica's certificate (OU=ca-replica and DNS:ca, of the cluster) receives the
token. An address that accepts the connection and drops it is tried again twice.

Then run "cairn agent --state-dir NODEDIR" to keep the certificate renewed.
The token may also be given in the environment variable CAIRN_JOIN_TOKEN (kept out of "ps").

Example:
  cairn join --token CAIRN-1-… --state-dir /var/lib/cairn-node https://ca1:7443 https://ca2:7443`)
    .action(async (urls: string[], f: { token: string; stateDir: string; force?: boolean; json?: boolean }) => {
      const { join } = await import('../agent/join.js'); // loaded only when used: fast CLI start
      const r = await join(f.token, urls, f.stateDir, { force: f.force });
      for (const w of r.warnings) process.stderr.write(`cairn: warning: ${w}\n`);
      if (f.json) return printJson({ ...r, notAfter: r.notAfter.toISOString() });
      out(`Joined cluster ${r.clusterId} as ${r.role} ${r.nodeId}; identity in ${r.stateDir}`);
      out(`Certificate ${r.serial} valid until ${r.notAfter.toISOString()}. Keep it fresh with: cairn agent --state-dir ${r.stateDir}`);
    });
}

export function agentCommand(): Command {
  return new Command('agent')
    .description('keep this node\'s certificate fresh: renew in the 50–80% window of its lifetime, follow trust-bundle changes')
    .addOption(stateDirOption())
    .option('--renew-now', 'renew once now and exit (retrying a few times across the endpoints), e.g. after a role change')
    .option('--trust-token <token...>', 'join tokens (or bare 50-character root digests) whose root may be added to ca.crt although no trusted root vouches for it')
    .addOption(new Option('--log-level <level>', 'log level (logs are JSON lines on stderr)').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'))
    .addHelpText('after', `
The agent renews over mutual TLS with the node's current certificate: a new key is generated
on each renewal, and key, certificate, trust bundle and node.json are replaced together (a
crash in the middle never leaves a key and a certificate that do not match). It renews at a
random point between 50% and 80% of the certificate's lifetime, at once if that point has
passed, and retries failures across the endpoints in node.json with exponential backoff
(1 s up to 5 min, with jitter); a refusal from one endpoint (403, 404...) sends it to the next,
and only a refusal that names this node (removed, revoked, expired, superseded) ends at once.
Every 10 minutes it fetches the CA's trust bundle (over TLS verified with the current one, from
a CA replica only) and the cluster CRL (into crl.pem, verified, never older than the stored
one). Trust only widens through a chain: a new root goes into ca.crt only if a root already
trusted vouches for it (a cross-signed certificate, as a root rotation sends) or it is named
by --trust-token; anything else is refused and logged, and ca.crt stays as it was. Programs
using the cairn library's loadNodeTls() pick the new files up by themselves.

It stops with an error (exit 1) when the CA refuses the node for good: the node was removed,
its certificate was revoked, or the certificate has expired; join again then. SIGTERM and
SIGINT stop it cleanly (exit 0).`)
    .action(async (f: { stateDir: string; renewNow?: boolean; logLevel: string; trustToken?: string[] }) => {
      const { default: pino } = await import('pino');
      const { parseJoinToken } = await import('../agent/token.js');
      const trustDigests = (f.trustToken ?? []).map((t) => (/^[0-9a-z]{50}$/.test(t.trim()) ? t.trim() : parseJoinToken(t).digest));
      const { renewOnce } = await import('../agent/renew.js');
      const { runAgent } = await import('../agent/agent.js');
      const logger = pino({ level: f.logLevel, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
      if (f.renewNow) {
        const r = await renewOnce(f.stateDir, { logger, trustDigests });
        out(`Renewed: ${r.role} ${r.nodeId}, certificate ${r.serial} valid until ${r.notAfter.toISOString()}${r.trustChanged ? ' (trust bundle updated)' : ''}`);
        return;
      }
      const ac = new AbortController();
      const stop = () => ac.abort();
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
      try {
        await runAgent(f.stateDir, { signal: ac.signal, logger, trustDigests });
      } finally {
        process.off('SIGTERM', stop);
        process.off('SIGINT', stop);
      }
    });
}
