import path from 'node:path';
import { Command, Option } from 'commander';
import { CairnError, usageError } from '../util/errors.js';
import { ExitStatus, out, parseDurationArg, printJson, untilSignal } from './common.js';
import { cairnCommand, outputDir, unitFile } from './systemd.js';

const stateDirOption = () =>
  new Option('--state-dir <dir>', 'the node state directory (NODEDIR): node.key, node.crt, ca.crt, node.json').makeOptionMandatory();

const collect = (v: string, acc: string[] = []) => [...acc, v];

const writeOption = () =>
  new Option('--write <spec>', 'FORMAT=PATH[,mode=0640][,owner=user:group][,password-file=F]: also write the identity as FORMAT (cert, key, ca, fullchain, bundle, pkcs12) to PATH (repeatable); see below').argParser(collect);

const WRITE_HELP = `
Output files (--write FORMAT=PATH[,mode=0640][,owner=user:group][,password-file=F], repeatable),
for programs that read certificate files; each is written atomically (temp file, then rename)
and only when its content, mode or owner differ:
  cert       the node certificate (PEM)
  key        the private key (PKCS#8 PEM)                         0600 by default
  ca         the trust bundle (ca.crt)
  fullchain  the certificate and any intermediate CA certificates
  bundle     fullchain followed by the key, HAProxy's crt format   0600 by default
  pkcs12     key, certificate, chain and roots in a PKCS#12 file    0600 by default
             (AES-256, SHA-256 MAC; read by Java's keytool and OpenSSL), with
             password-file=F (a file of mode 0600 holding the password)
Files holding the key may be given to a group (mode=0640,owner=root:haproxy) but never made
readable by all. The directory must exist. Other files are 0644.`;

/** Parse --write values into output specs (usage error, exit 2, on anything wrong). */
async function outputSpecs(specs: string[] | undefined, stateDir: string) {
  const { parseOutputSpecs } = await import('../agent/outputs.js');
  return parseOutputSpecs(specs, stateDir);
}

export function joinCommand(): Command {
  return new Command('join')
    .description('join a cluster with a token: check the CA against the token, generate a key here, get a node certificate')
    .addOption(new Option('--token <token>', 'join token (CAIRN-1-…), from "cairn token worker|manager"').env('CAIRN_JOIN_TOKEN').makeOptionMandatory())
    .addOption(stateDirOption())
    .option('--force', 'replace an identity already in the state directory')
    .option('--recover', 'get back the identity of a node whose certificate expired while it was down: same node ID and role, with a join token of its role (endpoints default to the node\'s own)')
    .option('--json', 'print {nodeId, role, clusterId, stateDir, endpoint, serial, notAfter, outputs} as JSON')
    .addOption(writeOption())
    .argument('[url...]', 'CA endpoints (https://host:port), tried in order; all are kept for renewals (with --recover: default the node\'s own)')
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

With --write, the identity is also written where other programs expect it (checked before
anything is sent to the CA; see "Output files" below). Give the agent the same --write flags.

Then run "cairn agent --state-dir NODEDIR" to keep the certificate renewed.

A node that was down past its certificate's expiry: "cairn join --recover --token T
--state-dir NODEDIR" gets a new certificate with the same node ID and role, if it is still a
member, the token is a join token of its role, and its certificate expired less than the
cluster's recovery window ago (default 30 days). The request is signed with the node's key
(proof that it is the same node); the key is kept. Otherwise the CA says why not.

The token may also be given in the environment variable CAIRN_JOIN_TOKEN (kept out of "ps").
${WRITE_HELP}

Example:
  cairn join --token CAIRN-1-… --state-dir /var/lib/cairn-node https://ca1:7443 https://ca2:7443`)
    .action(async (urls: string[], f: { token: string; stateDir: string; force?: boolean; recover?: boolean; json?: boolean; write?: string[] }) => {
      const outputs = await outputSpecs(f.write, f.stateDir);
      const { join } = await import('../agent/join.js'); // loaded only when used: fast CLI start
      const r = await join(f.token, urls, f.stateDir, { force: f.force, recover: f.recover, outputs });
      for (const w of r.warnings) process.stderr.write(`cairn: warning: ${w}\n`);
      if (f.json) return printJson({ ...r, notAfter: r.notAfter.toISOString() });
      out(`Joined cluster ${r.clusterId} as ${r.role} ${r.nodeId}; identity in ${r.stateDir}`);
      for (const o of r.outputs) out(`Wrote ${o.format} to ${o.path}`);
      out(`Certificate ${r.serial} valid until ${r.notAfter.toISOString()}. Keep it fresh with: cairn agent --state-dir ${r.stateDir}`);
    });
}

interface AgentFlags {
  stateDir?: string;
  renewNow?: boolean;
  logLevel: string;
  trustToken?: string[];
  write?: string[];
  exec?: string;
  execTimeout: number;
  reloadSignal?: string[];
  pidfile?: string[];
  metricsFile?: string;
}

const requireStateDir = (f: { stateDir?: string }): string => {
  if (!f.stateDir) throw usageError("required option '--state-dir <dir>' not specified");
  return f.stateDir;
};

/** The agent flags that go into a unit's ExecStart as they were given. */
const HOOK_FLAGS = (c: Command) =>
  c
    .addOption(writeOption())
    .option('--exec <command>', 'after each renewal and trust-bundle change (outputs written), run this command with /bin/sh -c; see below')
    .addOption(new Option('--exec-timeout <duration>', 'deadline of one hook run; past it the hook is killed and counts as failed').argParser(parseDurationArg).default(60_000, '60s'))
    .addOption(new Option('--reload-signal <signal>', 'after each renewal and trust-bundle change, send this signal (HUP, USR2...) to the process in the matching --pidfile (repeatable)').argParser(collect))
    .addOption(new Option('--pidfile <file>', 'file holding the process id for the --reload-signal at the same position (repeatable)').argParser(collect))
    .option('--metrics-file <file>', 'rewrite this Prometheus textfile (node_exporter textfile collector) after each attempt: expiry, last renewal, failures');

export function agentCommand(): Command {
  const agent = HOOK_FLAGS(
    new Command('agent')
      .description('keep this node\'s certificate fresh: renew in the 50–80% window of its lifetime, follow trust-bundle changes, write output files and tell programs')
      .enablePositionalOptions()
      .option('--state-dir <dir>', 'the node state directory (NODEDIR): node.key, node.crt, ca.crt, node.json (required)')
      .option('--renew-now', 'renew once now and exit (retrying a few times across the endpoints), e.g. after a role change')
      .option('--trust-token <token...>', 'join tokens (or bare 50-character root digests) whose root may be added to ca.crt although no trusted root vouches for it'),
  )
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

Other programs: after each renewal and each trust-bundle change the agent writes the --write
outputs, then runs the hook: the --reload-signal signals, then the --exec command, with
CAIRN_EVENT (renewed | trust-changed), CAIRN_NODE_ID, CAIRN_ROLE, CAIRN_SERIAL,
CAIRN_NOT_AFTER, CAIRN_STATE_DIR and CAIRN_CERT, CAIRN_KEY, CAIRN_CA (the files in NODEDIR)
in its environment. Never two runs at once (an event during a run runs it again after);
a run past --exec-timeout is killed; a failed run is logged (exit status, end of stderr) and
retried with backoff (1 s up to 5 min). The hook never holds up renewals. At start the agent
brings the outputs up to date, and runs the hook if that changed one.
${WRITE_HELP}

After each attempt it records the outcome in NODEDIR/agent-status.json, read by
"cairn agent status", and rewrites --metrics-file if given.

It stops with an error (exit 1) when the CA refuses the node for good: the node was removed,
its certificate was revoked, or the certificate has expired; join again then (an expired one,
within the recovery window: "cairn join --recover" keeps the node ID). SIGTERM and
SIGINT stop it cleanly (exit 0). With --renew-now the hook runs once (no retries), and a
failed hook makes the exit status 1 although the certificate was renewed.

Subcommands:
  cairn agent status --state-dir NODEDIR [--warn-before 7d] [--json]   health for monitoring
  cairn agent systemd-unit [--state-dir NODEDIR] [agent flags]         print a systemd unit`)
    .action(async (f: AgentFlags) => {
      const stateDir = requireStateDir(f);
      const outputs = await outputSpecs(f.write, stateDir);
      const { signalTargets } = await import('../agent/hooks.js');
      const signals = signalTargets(f.reloadSignal, f.pidfile);
      if (f.exec !== undefined && !f.exec.trim()) throw usageError('--exec needs a command');
      const hooks = f.exec || signals.length ? { exec: f.exec, signals, timeoutMs: f.execTimeout } : undefined;
      if (f.metricsFile) await checkMetricsDir(f.metricsFile);
      const { default: pino } = await import('pino');
      const { parseJoinToken } = await import('../agent/token.js');
      const trustDigests = (f.trustToken ?? []).map((t) => (/^[0-9a-z]{50}$/.test(t.trim()) ? t.trim() : parseJoinToken(t).digest));
      const { renewOnce, isFatalRenewalError } = await import('../agent/renew.js');
      const { runAgent, publishChange, updateMetrics } = await import('../agent/agent.js');
      const logger = pino({ level: f.logLevel, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
      if (f.renewNow) {
        const { Hooks } = await import('../agent/hooks.js');
        const { readNodeIdentity } = await import('../agent/node-state.js');
        const { recordFailure, recordHook, recordSuccess } = await import('../agent/status.js');
        const { describeOutputs } = await import('../agent/outputs.js');
        let r;
        try {
          r = await renewOnce(stateDir, { logger, trustDigests });
        } catch (e) {
          if (e instanceof CairnError) {
            try {
              recordFailure(stateDir, readNodeIdentity(stateDir).leaf.serialHex, e, isFatalRenewalError(e));
              updateMetrics(stateDir, f.metricsFile, logger);
            } catch {
              /* no identity to record against */
            }
          }
          throw e;
        }
        recordSuccess(stateDir, r.serial);
        const h = hooks ? new Hooks({ ...hooks, retry: false, logger, onResult: (x) => recordHook(stateDir, x.serial, x, h!.stats) }) : undefined;
        const p = await publishChange(stateDir, 'renewed', { outputs, hooks: h });
        await h?.idle();
        updateMetrics(stateDir, f.metricsFile, logger);
        logger.info({ serial: r.serial, role: r.role, endpoint: r.endpoint, outputs: describeOutputs(p.outputs), hook: h?.stats.lastResult ? { ok: h.stats.lastResult.ok, exitCode: h.stats.lastResult.exitCode, error: h.stats.lastResult.error } : 'none' }, 'certificate renewed');
        out(`Renewed: ${r.role} ${r.nodeId}, certificate ${r.serial} valid until ${r.notAfter.toISOString()}${r.trustChanged ? ' (trust bundle updated)' : ''}`);
        for (const o of p.outputs) out(`${o.written ? 'Wrote' : 'Unchanged'} ${o.format}: ${o.path}`);
        const hr = h?.stats.lastResult;
        if (hr && !hr.ok) throw new CairnError('hook_failed', `the certificate was renewed, but the hook failed: ${hr.error}${hr.stderrTail ? ` (stderr: ${hr.stderrTail.split('\n').slice(-3).join(' | ')})` : ''}`);
        if (hr) out(`Hook ran (${hr.durationMs} ms${hr.exitCode !== null ? `, exit ${hr.exitCode}` : ''})`);
        return;
      }
      await untilSignal((signal) => runAgent(stateDir, { signal, logger, trustDigests, outputs, hooks, metricsFile: f.metricsFile }));
    });

  agent
    .command('status')
    .description('say whether this node\'s certificate is healthy; exit 0 ok, 1 expiring soon, 2 expired, refused, revoked or unusable')
    .addOption(stateDirOption())
    .addOption(new Option('--warn-before <duration>', 'exit 1 when the certificate expires within this long, e.g. 7d (default: when it is past its renewal window, 80% of its lifetime)').argParser(parseDurationArg))
    .option('--json', 'print the state, the certificate and the last attempts as JSON')
    .option('--metrics-file <file>', 'also write the Prometheus textfile (for a cron job instead of the agent)')
    .addHelpText('after', `
States and exit codes (for monitoring, and for ExecStartPre= of a service that needs the files):
  0 ok        valid, not yet in the warning window
  1 expiring  within --warn-before of expiry (default: past 80% of the lifetime, where the
              agent should long have renewed: is it running?)
  2 expired   the certificate has expired
  2 refused   the CA refused to renew it for good (node removed, certificate revoked)
  2 revoked   its serial is on the cluster CRL the node holds (crl.pem)
  2 unusable  no identity in NODEDIR, or one that cannot be read
It reads NODEDIR only (node.crt, crl.pem, agent-status.json): it asks the CA nothing.
The text says when the last renewal attempts failed.`)
    .action(async (f: { stateDir: string; warnBefore?: number; json?: boolean; metricsFile?: string }) => {
      const { health, writeMetricsFile } = await import('../agent/status.js');
      const h = health(f.stateDir, { warnBeforeMs: f.warnBefore });
      if (f.metricsFile) {
        await checkMetricsDir(f.metricsFile);
        writeMetricsFile(f.metricsFile, h);
      }
      if (f.json) printJson(h);
      else out(`${h.state}: ${h.message}`);
      if (h.exitCode !== 0) throw new ExitStatus(h.exitCode);
    });

  HOOK_FLAGS(
    agent
      .command('systemd-unit')
      .description('print a systemd unit that runs the agent (restart on failure, sandboxed; the state directory and output directories writable)')
      .option('--state-dir <dir>', 'the node state directory', '/var/lib/cairn-node')
      .option('--trust-token <token...>', 'passed to the agent')
      .option('--user <user>', 'run as this user (User=); default root, which --write owner= needs')
      .option('--bin <path>', 'the cairn executable (default: this Node.js running this cairn)'),
  )
    .addHelpText('after', `
Install:
  cairn agent systemd-unit --state-dir /var/lib/cairn-node --write bundle=/etc/haproxy/certs/node.pem \\
    --exec 'systemctl reload haproxy' > /etc/systemd/system/cairn-agent.service
  systemctl daemon-reload && systemctl enable --now cairn-agent

The unit makes the file system read-only for the agent (ProtectSystem=strict) except the state
directory, the directories of the --write outputs and of --metrics-file. A hook that writes
elsewhere needs a drop-in with ReadWritePaths=; one that uses sudo needs NoNewPrivileges=no.`)
    .action((f: AgentFlags & { stateDir: string; user?: string; bin?: string; trustToken?: string[] }, cmd: Command) => {
      const src = (name: string) => cmd.getOptionValueSource(name);
      const args = ['agent', '--state-dir', path.resolve(f.stateDir)];
      for (const w of f.write ?? []) args.push('--write', w);
      if (f.exec !== undefined) args.push('--exec', f.exec);
      if (src('execTimeout') === 'cli') args.push('--exec-timeout', `${Math.round(f.execTimeout / 1000)}s`);
      (f.reloadSignal ?? []).forEach((s, i) => args.push('--reload-signal', s, '--pidfile', path.resolve((f.pidfile ?? [])[i] ?? '')));
      if ((f.reloadSignal ?? []).length !== (f.pidfile ?? []).length) throw usageError('give one --pidfile for each --reload-signal');
      if (f.metricsFile) args.push('--metrics-file', path.resolve(f.metricsFile));
      for (const t of f.trustToken ?? []) args.push('--trust-token', t);
      const writable = [f.stateDir, ...(f.write ?? []).map(outputDir).filter((d): d is string => !!d), ...(f.metricsFile ? [path.dirname(path.resolve(f.metricsFile))] : [])];
      process.stdout.write(
        unitFile({
          comment: ['cairn node agent; generated by "cairn agent systemd-unit"', 'install as /etc/systemd/system/cairn-agent.service, then: systemctl daemon-reload && systemctl enable --now cairn-agent'],
          description: 'cairn node agent: keeps this node\'s certificate fresh',
          exec: [...cairnCommand(f.bin), ...args],
          writable,
          user: f.user,
          // a refusal for good (exit 1) does not heal by restarting fast: the pause keeps the CA calm
          restartSec: '30s',
        }),
      );
    });
  return agent;
}

/** The directory of a metrics file must exist (the textfile collector's directory). */
async function checkMetricsDir(file: string): Promise<void> {
  const fs = await import('node:fs');
  const dir = path.dirname(path.resolve(file));
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw usageError(`--metrics-file ${file}: directory ${dir} does not exist`);
}
