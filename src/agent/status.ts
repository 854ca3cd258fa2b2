/**
 * The node's health for monitoring: `cairn agent status` and the Prometheus textfile written
 * with `--metrics-file`.
 *
 * The agent (and `cairn join`, and `cairn agent --renew-now`) records what happened in
 * NODEDIR/agent-status.json after each renewal attempt and each hook run: when it last tried,
 * when it last succeeded, the failures, and a refusal for good (removed, revoked, expired).
 * `health()` reads that and the identity and says one of
 *   ok        exit 0
 *   expiring  exit 1   within --warn-before of notAfter (default: past the renewal window's end,
 *                      80% of the lifetime, when the agent should long have renewed)
 *   expired   exit 2   notAfter has passed
 *   refused   exit 2   the CA refused this certificate for good (node removed, revoked...)
 *   revoked   exit 2   the certificate's serial is on the node's stored CRL
 *   unusable  exit 2   no identity, or one that cannot be read
 */
import fs from 'node:fs';
import path from 'node:path';
import { normalizeSerialHex } from '../pki/index.js';
import { CairnError } from '../util/errors.js';
import { FILE_MODE, writeFilesAtomic } from '../util/files.js';
import { renewalWindow } from './agent.js';
import type { HookResult } from './hooks.js';
import { NodeIdentity, readNodeIdentity } from './node-state.js';

export const STATUS_FILE = 'agent-status.json';

export interface AgentStatusRecord {
  /** the certificate serial this record is about (a refusal counts only for it) */
  serial: string;
  lastAttemptAt?: string;
  /** last renewal (or the join) */
  lastSuccessAt?: string;
  lastError?: { code: string; message: string; at: string } | null;
  consecutiveFailures: number;
  failuresTotal: number;
  refused?: { code: string; message: string; at: string; serial: string } | null;
  hook?: { runs: number; failures: number; lastExitCode: number | null; lastOk: boolean; lastSuccessAt: string | null; lastError: string | null };
}

export const statusPath = (dir: string) => path.join(dir, STATUS_FILE);

export function readStatusRecord(dir: string): AgentStatusRecord | null {
  try {
    const j = JSON.parse(fs.readFileSync(statusPath(dir), 'utf8'));
    return j && typeof j === 'object' && typeof j.serial === 'string' ? (j as AgentStatusRecord) : null;
  } catch {
    return null;
  }
}

/** Update agent-status.json with `change` (read, modify, write atomically). Never throws: it is a report. */
export function recordStatus(dir: string, serial: string, change: (r: AgentStatusRecord) => void): AgentStatusRecord {
  const r: AgentStatusRecord = readStatusRecord(dir) ?? { serial, consecutiveFailures: 0, failuresTotal: 0 };
  r.serial = serial;
  change(r);
  try {
    writeFilesAtomic([{ path: statusPath(dir), data: JSON.stringify(r, null, 2) + '\n', mode: FILE_MODE }], { overwrite: true });
  } catch {
    /* a full disk or a read-only directory must not stop renewals */
  }
  return r;
}

export const recordSuccess = (dir: string, serial: string, at = new Date()) =>
  recordStatus(dir, serial, (r) => {
    r.lastAttemptAt = r.lastSuccessAt = at.toISOString();
    r.consecutiveFailures = 0;
    r.lastError = null;
    r.refused = null;
  });

export const recordFailure = (dir: string, serial: string, e: { code?: string; message: string }, fatal: boolean, at = new Date()) =>
  recordStatus(dir, serial, (r) => {
    const err = { code: e.code ?? 'error', message: e.message, at: at.toISOString() };
    r.lastAttemptAt = err.at;
    r.consecutiveFailures++;
    r.failuresTotal++;
    r.lastError = err;
    if (fatal) r.refused = { ...err, serial };
  });

export const recordHook = (dir: string, serial: string, h: HookResult, totals: { runs: number; failures: number; lastSuccessAt: Date | null }) =>
  recordStatus(dir, serial, (r) => {
    r.hook = {
      runs: totals.runs,
      failures: totals.failures,
      lastExitCode: h.exitCode,
      lastOk: h.ok,
      lastSuccessAt: totals.lastSuccessAt?.toISOString() ?? r.hook?.lastSuccessAt ?? null,
      lastError: h.ok ? null : h.error ?? null,
    };
  });

export type HealthState = 'ok' | 'expiring' | 'expired' | 'refused' | 'revoked' | 'unusable';
export const HEALTH_EXIT: Record<HealthState, 0 | 1 | 2> = { ok: 0, expiring: 1, expired: 2, refused: 2, revoked: 2, unusable: 2 };

export interface Health {
  state: HealthState;
  exitCode: 0 | 1 | 2;
  message: string;
  stateDir: string;
  nodeId?: string;
  role?: string;
  clusterId?: string;
  serial?: string;
  notBefore?: string;
  notAfter?: string;
  /** seconds until notAfter (negative once expired) */
  expiresInSeconds?: number;
  /** the end of the renewal window (80% of the lifetime) */
  renewBy?: string;
  record: AgentStatusRecord | null;
}

function human(ms: number): string {
  const a = Math.abs(ms);
  if (a >= 2 * 86_400_000) return `${Math.floor(a / 86_400_000)} days`;
  if (a >= 2 * 3600_000) return `${Math.floor(a / 3600_000)} hours`;
  if (a >= 2 * 60_000) return `${Math.floor(a / 60_000)} minutes`;
  return `${Math.floor(a / 1000)} seconds`;
}

/** The node's health now (see the top of this file). Never throws for a broken identity: that is `unusable`. */
export function health(dir: string, o: { warnBeforeMs?: number; now?: Date } = {}): Health {
  const now = (o.now ?? new Date()).getTime();
  let id: NodeIdentity;
  try {
    id = readNodeIdentity(dir);
  } catch (e) {
    if (!(e instanceof CairnError)) throw e;
    return { state: 'unusable', exitCode: 2, message: e.message, stateDir: dir, record: null };
  }
  const record = readStatusRecord(dir);
  const leaf = id.leaf;
  const end = renewalWindow(leaf.notBefore, leaf.notAfter).end;
  const left = leaf.notAfter.getTime() - now;
  const base = {
    stateDir: dir,
    nodeId: id.config.nodeId,
    role: id.config.role,
    clusterId: id.config.clusterId,
    serial: leaf.serialHex,
    notBefore: leaf.notBefore.toISOString(),
    notAfter: leaf.notAfter.toISOString(),
    expiresInSeconds: Math.floor(left / 1000),
    renewBy: end.toISOString(),
    record,
  };
  const who = `${id.config.role} ${id.config.nodeId}`;
  const say = (state: HealthState, message: string): Health => ({ state, exitCode: HEALTH_EXIT[state], message, ...base });
  if (left <= 0) return say('expired', `${who}: certificate ${leaf.serialHex} expired ${human(-left)} ago (${base.notAfter}); join again`);
  if (record?.refused && record.refused.serial === leaf.serialHex) {
    return say('refused', `${who}: the CA refused to renew certificate ${leaf.serialHex} (${record.refused.code}, ${record.refused.at}): ${record.refused.message}`);
  }
  if (id.crl?.revoked.has(normalizeSerialHex(leaf.serialHex))) {
    return say('revoked', `${who}: certificate ${leaf.serialHex} is on the cluster CRL (revoked); join again`);
  }
  const failing = record && record.serial === leaf.serialHex && record.consecutiveFailures > 0 && record.lastError
    ? `; the last ${record.consecutiveFailures} renewal attempt${record.consecutiveFailures === 1 ? '' : 's'} failed (${record.lastError.code}: ${record.lastError.message})`
    : '';
  const warn = o.warnBeforeMs !== undefined ? left <= o.warnBeforeMs : now >= end.getTime();
  if (warn) {
    const why = o.warnBeforeMs !== undefined ? '' : `, past the end of its renewal window (${base.renewBy}): is the agent running?`;
    return say('expiring', `${who}: certificate ${leaf.serialHex} expires in ${human(left)} (${base.notAfter})${why}${failing}`);
  }
  return say('ok', `${who}: certificate ${leaf.serialHex} valid for ${human(left)} (until ${base.notAfter}), renewal due by ${base.renewBy}${failing}`);
}

const esc = (v: string) => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
const secs = (iso: string | null | undefined) => (iso ? Math.floor(Date.parse(iso) / 1000) : null);

/** The Prometheus text exposition of a health (for node_exporter's textfile collector). */
export function metricsText(h: Health): string {
  const labels = h.nodeId ? `{node_id="${esc(h.nodeId)}",role="${esc(h.role!)}",cluster_id="${esc(h.clusterId!)}"}` : '';
  const r = h.record;
  const lines: string[] = [];
  const metric = (name: string, type: 'gauge' | 'counter', help: string, value: number | null | undefined) => {
    if (value === null || value === undefined || !Number.isFinite(value)) return;
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name}${labels} ${value}`);
  };
  metric('cairn_node_status', 'gauge', 'Health of the node identity as cairn agent status exits: 0 ok, 1 expiring, 2 expired, refused, revoked or unusable.', h.exitCode);
  metric('cairn_node_certificate_expiry_timestamp_seconds', 'gauge', 'When the node certificate expires (notAfter), Unix time.', secs(h.notAfter));
  metric('cairn_node_certificate_not_before_timestamp_seconds', 'gauge', 'When the node certificate became valid (notBefore), Unix time.', secs(h.notBefore));
  metric('cairn_node_certificate_renew_by_timestamp_seconds', 'gauge', 'The end of the renewal window (80% of the lifetime), Unix time.', secs(h.renewBy));
  metric('cairn_agent_last_renewal_timestamp_seconds', 'gauge', 'Last successful renewal (or the join), Unix time.', secs(r?.lastSuccessAt));
  metric('cairn_agent_last_attempt_timestamp_seconds', 'gauge', 'Last renewal attempt, Unix time.', secs(r?.lastAttemptAt));
  metric('cairn_agent_renewal_failures_total', 'counter', 'Failed renewal attempts.', r?.failuresTotal ?? 0);
  metric('cairn_agent_renewal_consecutive_failures', 'gauge', 'Failed renewal attempts since the last success.', r?.consecutiveFailures ?? 0);
  metric('cairn_agent_refused', 'gauge', '1 if the CA refused this node for good (removed, revoked, expired).', h.state === 'refused' ? 1 : 0);
  metric('cairn_agent_hook_runs_total', 'counter', 'Hook runs (--exec, --reload-signal).', r?.hook?.runs ?? 0);
  metric('cairn_agent_hook_failures_total', 'counter', 'Hook runs that failed.', r?.hook?.failures ?? 0);
  metric('cairn_agent_hook_last_success_timestamp_seconds', 'gauge', 'Last successful hook run, Unix time.', secs(r?.hook?.lastSuccessAt));
  return lines.join('\n') + '\n';
}

/** Write the metrics file atomically (the textfile collector must never read half of it). */
export function writeMetricsFile(file: string, h: Health): void {
  writeFilesAtomic([{ path: file, data: metricsText(h), mode: FILE_MODE, exactMode: true }], { overwrite: true });
}
