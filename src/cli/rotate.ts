/**
 * `cairn ca rotate`: root CA rotation through the API (admin bundle), like the other admin
 * commands. Start a rotation and follow it to completion (a progress bar on a terminal, plain
 * lines otherwise), or --detach; --status with the stuck-node report; --finish [--force];
 * --abort. What happens in order is in docs/rotation.md.
 */
import { Command, Option } from 'commander';
import { CairnError } from '../util/errors.js';
import { readKeyFile, readText } from '../util/files.js';
import { adminCall, adminTarget } from './admin-client.js';
import { externalCasFromFlags } from './ca-key-flags.js';
import { keepTokensWithDigest } from './server-side.js';
import { jsonOption, out, printJson, serverOption, stateDirOption, table } from './common.js';

// the API's answer, as the authority shapes it (a type import: nothing of the authority runs here)
export type { RotationView, StuckNode } from '../authority/rotation.js';
import type { RotationView, StuckNode } from '../authority/rotation.js';

interface Flags {
  stateDir: string;
  server?: string;
  ca: 'cluster' | 'client';
  caCert?: string;
  caKey?: string;
  pkcs11KeyLabel?: string;
  keyType?: string;
  externalCa: string[];
  detach?: boolean;
  quiet?: boolean;
  json?: boolean;
  status?: boolean;
  finish?: boolean;
  force?: boolean;
  abort?: boolean;
  pollInterval?: string;
}

/** How long the follower keeps asking a replica that does not answer before it gives up. */
const UNREACHABLE_GRACE_MS = 60_000;

const shortKey = (k: string | null | undefined) => (k ? (k.length > 16 ? `${k.slice(0, 16)}…` : k) : '-');

/** "1m05s", "42s", "2h03m". */
export function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/**
 * Convergence rate over a sliding window of samples (converged count at a time): nodes per
 * second, and the time left at that rate (null while there is no rate yet).
 */
export class RateMeter {
  private samples: { at: number; converged: number }[] = [];
  constructor(private readonly windowMs = 10_000) {}

  add(at: number, converged: number): void {
    this.samples.push({ at, converged });
    while (this.samples.length > 2 && at - this.samples[0].at > this.windowMs) this.samples.shift();
  }

  rate(): number {
    if (this.samples.length < 2) return 0;
    const a = this.samples[0];
    const b = this.samples[this.samples.length - 1];
    return b.at > a.at ? Math.max(0, ((b.converged - a.converged) * 1000) / (b.at - a.at)) : 0;
  }

  eta(total: number): number | null {
    const last = this.samples.at(-1);
    if (!last) return null;
    const r = this.rate();
    return r > 0 ? (total - last.converged) / r : null;
  }
}

/** One line of progress: a bar of `width` cells when `width` > 0, else plain words. */
export function progressLine(v: RotationView, m: RateMeter, width = 0): string {
  const { total, converged } = v.nodes;
  const eta = m.eta(total);
  const words = `${converged}/${total} nodes converged, ${m.rate().toFixed(1)} nodes/s, ETA ${eta === null ? '?' : formatEta(eta)}`;
  if (width <= 0) return words;
  const filled = total > 0 ? Math.round((converged / total) * width) : width;
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${words}`;
}

function describe(v: RotationView): string[] {
  const since = v.finishedAt ? `${v.startedAt} to ${v.finishedAt}` : `since ${v.startedAt}`;
  return [
    `Rotation ${v.id} of the ${v.ca} CA: ${v.state} (${since})`,
    `  from: ${v.from.subject} (key ${shortKey(v.from.keyId)})`,
    `  to:   ${v.to.subject} (key ${shortKey(v.to.keyId)})`,
    ...(v.ca === 'cluster' ? [`  nodes: ${v.nodes.total - v.nodes.converged === 0 ? 'all ' : ''}${v.nodes.converged} of ${v.nodes.total} converged; the CA asks up to ${v.renewRate} renewals/s`] : []),
  ];
}

function checkView(r: any, what: string): RotationView {
  const v = r?.rotation;
  if (!v || typeof v !== 'object' || typeof v.state !== 'string' || typeof v.nodes?.total !== 'number') {
    throw new CairnError('bad_response', `the answer of ${what} has no rotation`);
  }
  return v as RotationView;
}

/**
 * The join tokens kept in the state directory, made current after a rotation of the cluster
 * CA completed (its root digest changed). Returns the roles updated.
 */
async function refreshTokens(f: Flags, digest?: string): Promise<string[]> {
  let d = digest;
  if (!d) {
    const ca = await adminCall(adminTarget({ stateDir: f.stateDir, server: f.server }), 'GET', 'v1/ca');
    d = typeof ca?.digest === 'string' ? ca.digest : undefined;
  }
  return d ? Object.keys(keepTokensWithDigest(f.stateDir, d)) : [];
}

/** Ask for the rotation's state, riding out a replica that is away for a while. */
async function status(f: Flags, stuck: number, deadline: { since: number | null }): Promise<{ rotation: RotationView | null; stuck: StuckNode[] }> {
  for (;;) {
    try {
      const r = await adminCall(adminTarget({ stateDir: f.stateDir, server: f.server }), 'GET', `v1/ca/rotation?ca=${f.ca}&stuck=${stuck}`);
      deadline.since = null;
      return { rotation: r?.rotation ? checkView(r, 'GET /v1/ca/rotation') : null, stuck: Array.isArray(r?.stuck) ? r.stuck : [] };
    } catch (e) {
      const transient = e instanceof CairnError && (e.code === 'unreachable' || e.code === 'unavailable' || e.code === 'server_error');
      if (!transient) throw e;
      deadline.since ??= Date.now();
      if (Date.now() - deadline.since > UNREACHABLE_GRACE_MS) throw e;
      if (!f.quiet && !f.json) process.stderr.write(`cairn: ${(e as Error).message}; asking again\n`);
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

/** Follow a rotation until it completes (resolves) or is aborted (throws). */
async function follow(f: Flags, start: RotationView): Promise<RotationView> {
  const tty = !!process.stdout.isTTY && !f.quiet && !f.json;
  const plain = !tty && !f.quiet && !f.json;
  const every = f.pollInterval ? Number(f.pollInterval) : tty ? 500 : 1000;
  const meter = new RateMeter();
  meter.add(Date.now(), start.nodes.converged);
  let v = start;
  let lastPrinted = '';
  let lastPrintAt = 0;
  const deadline = { since: null as number | null };
  const width = () => Math.max(10, Math.min(40, (process.stdout.columns ?? 80) - 60));
  if (!f.quiet && !f.json) out(`Waiting for every node to renew from the new key (Ctrl-C stops waiting; the rotation goes on: cairn ca rotate --status).`);
  while (v.state === 'running') {
    if (tty) process.stdout.write(`\r${progressLine(v, meter, width())}\x1b[K`);
    if (plain) {
      const line = progressLine(v, meter);
      const counts = `${v.nodes.converged}/${v.nodes.total}`;
      // a line when the count changes, and otherwise every 10 s
      if (!lastPrinted.startsWith(counts) || Date.now() - lastPrintAt >= 10_000) {
        out(line);
        lastPrinted = line;
        lastPrintAt = Date.now();
      }
    }
    await new Promise((r) => setTimeout(r, every));
    const s = await status(f, 0, deadline);
    if (!s.rotation || s.rotation.id !== v.id) throw new CairnError('bad_response', `rotation ${v.id} is no longer the newest rotation of the ${f.ca} CA`);
    v = s.rotation;
    meter.add(Date.now(), v.nodes.converged);
  }
  if (tty) process.stdout.write(`\r${progressLine(v, meter, width())}\x1b[K\n`);
  if (v.state === 'aborted') throw new CairnError('no_rotation', `rotation ${v.id} of the ${v.ca} CA was aborted: the old root signs again`);
  return v;
}

function printCompleted(v: RotationView, tokens: string[], f: Flags): void {
  out(`Rotation of the ${v.ca} CA completed: ${v.to.subject} (key ${shortKey(v.to.keyId)}) is now the only root; the old root is retired.`);
  if (v.ca === 'cluster') {
    out(
      tokens.length
        ? `The join tokens changed (the old ones no longer work); the new ones are saved in the state directory: cairn token worker --state-dir ${f.stateDir}`
        : `The join tokens changed (the old ones no longer work): cairn token worker --state-dir ${f.stateDir} prints the new one.`,
    );
  }
}

async function start(f: Flags): Promise<void> {
  const body: Record<string, unknown> = { ca: f.ca };
  if (f.externalCa.length) {
    // an external CA: its certificate, and where it signs
    if (!f.caCert) throw new CairnError('usage', '--external-ca needs the external CA\'s certificate: --ca-cert <file>');
    if (f.caKey || f.pkcs11KeyLabel || f.keyType) throw new CairnError('usage', 'an external CA holds its key: no --ca-key, --pkcs11-key-label or --key-type');
    body.externalCas = await externalCasFromFlags(f.externalCa);
    body.certificate = readText(f.caCert);
  } else if (f.pkcs11KeyLabel !== undefined) {
    // a key in the replica's PKCS#11 token (generated there when absent); --ca-cert: that key's certificate
    if (f.caKey) throw new CairnError('usage', '--ca-key: the key is in the PKCS#11 token (--pkcs11-key-label), not in a file');
    body.pkcs11KeyLabel = f.pkcs11KeyLabel;
    if (f.keyType) body.keyType = f.keyType;
    if (f.caCert) body.certificate = readText(f.caCert);
  } else {
    if (f.keyType) throw new CairnError('usage', '--key-type goes with --pkcs11-key-label (a generated root has the key type of the current one)');
    if (!!f.caCert !== !!f.caKey) throw new CairnError('usage', 'give --ca-cert and --ca-key together');
    if (f.caCert) {
      body.certificate = readText(f.caCert);
      body.key = readKeyFile(f.caKey!); // refuses a key file others can read
    }
  }
  const v = checkView(await adminCall(adminTarget({ stateDir: f.stateDir, server: f.server }), 'POST', 'v1/ca/rotate', body), 'POST /v1/ca/rotate');
  if (f.detach) {
    if (f.json) return printJson({ rotation: v });
    if (!f.quiet) {
      out(`Started rotation ${v.id} of the ${v.ca} CA: ${v.from.subject} → ${v.to.subject}.`);
      out(`Follow it with: cairn ca rotate --status --state-dir ${f.stateDir}`);
    }
    return;
  }
  if (!f.quiet && !f.json) out(`Started rotation ${v.id} of the ${v.ca} CA: ${v.from.subject} → ${v.to.subject}.`);
  const done = await follow(f, v);
  const tokens = done.ca === 'cluster' ? await refreshTokens(f) : [];
  if (f.json) return printJson({ rotation: done, tokensSaved: tokens });
  if (!f.quiet) printCompleted(done, tokens, f);
}

async function showStatus(f: Flags): Promise<void> {
  const s = await status(f, 100, { since: Date.now() - UNREACHABLE_GRACE_MS });
  if (f.json) return printJson(s);
  if (!s.rotation) return out(`No rotation of the ${f.ca} CA has run.`);
  for (const l of describe(s.rotation)) out(l);
  if (s.rotation.state !== 'running') return;
  if (s.stuck.length === 0) return out('No node is stuck: every active node renewed from the new key, or is about to.');
  const more = s.rotation.nodes.total - s.rotation.nodes.converged - s.stuck.length;
  out('');
  out(`Not converged (${s.rotation.nodes.total - s.rotation.nodes.converged}), least recently seen first:`);
  table([['ID', 'ROLE', 'LAST SEEN', 'ISSUER KEY'], ...s.stuck.map((n) => [n.id, n.role, n.lastSeen ?? 'never', shortKey(n.issuerKeyId)])]);
  if (more > 0) out(`… and ${more} more.`);
  out('');
  out('A node that is down keeps the rotation open. Start its agent, remove it (cairn node rm <id>),');
  out(`or finish without it: cairn ca rotate --finish --force --state-dir ${f.stateDir} (it will have to join again).`);
}

async function finish(f: Flags): Promise<void> {
  const r = await adminCall(adminTarget({ stateDir: f.stateDir, server: f.server }), 'POST', 'v1/ca/rotation/finish', { ca: f.ca, ...(f.force ? { force: true } : {}) });
  const v = checkView(r, 'POST /v1/ca/rotation/finish');
  const unconverged = typeof r.unconverged === 'number' ? r.unconverged : 0;
  const tokens = v.ca === 'cluster' ? await refreshTokens(f, typeof r.digest === 'string' ? r.digest : undefined) : [];
  if (f.json) return printJson({ rotation: v, unconverged, tokensSaved: tokens });
  if (f.quiet) return;
  printCompleted(v, tokens, f);
  if (unconverged > 0) {
    out(`${unconverged} node${unconverged === 1 ? '' : 's'} had not converged and will have to join again (their records are removed, as by node rm): their next renewal is refused (rejoin_required); run on each: cairn join --force --token <new token> --state-dir <node-dir> <url>`);
  }
}

async function abort(f: Flags): Promise<void> {
  const v = checkView(await adminCall(adminTarget({ stateDir: f.stateDir, server: f.server }), 'POST', 'v1/ca/rotation/abort', { ca: f.ca }), 'POST /v1/ca/rotation/abort');
  if (f.json) return printJson({ rotation: v });
  if (!f.quiet) out(`Rotation ${v.id} of the ${v.ca} CA aborted: ${v.from.subject} signs again; certificates the new key issued stay valid through the cross-signed chain until their nodes renew.`);
}

export function rotateCommand(): Command {
  return new Command('rotate')
    .description('rotate a root CA of a running cluster without downtime, to a new root, your own CA, a key in a PKCS#11 token or an external CA (through the API, with the admin bundle)')
    .addOption(stateDirOption('a replica state directory (its admin bundle is used)'))
    .addOption(serverOption())
    .addOption(new Option('--ca <ca>', 'which CA').choices(['cluster', 'client']).default('cluster'))
    .option('--ca-cert <file>', 'use this CA instead of generating a root (PEM): a root, or an intermediate followed by its chain up to its root; with --ca-key, --pkcs11-key-label or --external-ca')
    .option('--ca-key <file>', 'the private key of --ca-cert (PEM, not readable by group or others): sealed in the store')
    .option('--pkcs11-key-label <label>', 'the new key is in the PKCS#11 token of the replica asked (--server): this key, generated there when absent (a root is made for it, or --ca-cert is its certificate)')
    .option('--key-type <type>', 'with --pkcs11-key-label: the type of a key generated in the token (ec-p256 by default, ec-p384, rsa-2048, rsa-3072, rsa-4096)')
    .option('--external-ca <spec>', 'the new cluster CA is an external CA holding the key of --ca-cert: protocol=cfssl,url=https://HOST:PORT[,cacert=FILE] (repeatable: tried in order)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--detach', 'start the rotation and return at once')
    .option('-q, --quiet', 'print nothing but errors')
    .addOption(jsonOption())
    .option('--status', 'show the rotation of the CA and the nodes that have not converged')
    .option('--finish', 'complete a running rotation now (refused while nodes have not converged, unless --force)')
    .option('--force', 'with --finish: complete even though some nodes have not converged (they are removed, as by node rm, and will have to join again)')
    .option('--abort', 'abort a running rotation: back to the old root')
    .addOption(new Option('--poll-interval <ms>', 'how often progress is asked for').hideHelp())
    .addHelpText('after', `
What happens (docs/rotation.md): the old root cross-signs the new root's key; from then on
every certificate is issued by the new key, sent with the cross-signed certificate, so peers
trusting either root accept it. Agents learn of the rotation at once (long-poll) and the CA
asks them to renew in batches. When every active node has renewed, the old root leaves the
trust bundle, the join tokens change (the new ones are saved here, "cairn token" prints
them) and the command exits. A node that is down keeps the rotation open: see --status.

On a terminal the progress is a bar (converged/total, rate, ETA); otherwise one line each
time the count changes. Ctrl-C stops waiting, not the rotation.

Where the new key lives (docs/ca-keys.md, "Moving between them"): generated and sealed in
the store (no flag); your own root, or an intermediate followed by its chain (--ca-cert with
--ca-key; the old root then cross-signs the chain's root, which becomes the trust bundle); a
key in the PKCS#11 token of the replica asked (--pkcs11-key-label; every replica must reach
the token, a replica without one refuses); an external CA (--external-ca with --ca-cert).
Rotating away from an external CA asks it to cross-sign the new root with its "CA" profile.

Examples:
  cairn ca rotate --state-dir /var/lib/cairn
  cairn ca rotate --ca-cert root.pem --ca-key root.key --detach --state-dir /var/lib/cairn
  cairn ca rotate --ca-cert intermediate-and-chain.pem --ca-key intermediate.key --state-dir /var/lib/cairn
  cairn ca rotate --pkcs11-key-label cluster-2 --state-dir /var/lib/cairn
  cairn ca rotate --external-ca protocol=cfssl,url=https://ca.example:8888,cacert=tls-ca.pem --ca-cert cfssl-ca.pem --state-dir /var/lib/cairn
  cairn ca rotate --status --state-dir /var/lib/cairn
  cairn ca rotate --finish --force --state-dir /var/lib/cairn`)
    .action(async (f: Flags) => {
      const modes = [f.status && '--status', f.finish && '--finish', f.abort && '--abort'].filter(Boolean) as string[];
      if (modes.length > 1) throw new CairnError('usage', `${modes.join(' and ')} cannot be given together`);
      if (f.force && !f.finish) throw new CairnError('usage', '--force goes with --finish');
      if (modes.length && (f.caCert || f.caKey || f.detach || f.pkcs11KeyLabel || f.keyType || f.externalCa.length)) {
        throw new CairnError('usage', `--ca-cert, --ca-key, --pkcs11-key-label, --key-type, --external-ca and --detach start a rotation: not with ${modes[0]}`);
      }
      if (f.pollInterval !== undefined && !/^[0-9]{2,6}$/.test(f.pollInterval)) throw new CairnError('usage', '--poll-interval must be a number of milliseconds (10 or more)');
      if (f.status) return showStatus(f);
      if (f.finish) return finish(f);
      if (f.abort) return abort(f);
      return start(f);
    });
}
