/**
 * The cluster's settings: what each means, its default, and the bounds a user may set it
 * within. Stored in the store's `config` table, replicated like every record.
 */
import { DAY_MS, HOUR_MS } from '../pki/index.js';
import { CairnError } from '../util/errors.js';
import { checkBaseUrl } from './policy.js';
import { checkExternalCa, type ExternalCa } from './external-ca.js';

export const DEFAULT_CERT_EXPIRY_MS = 90 * DAY_MS;
export const MIN_CERT_EXPIRY_MS = HOUR_MS;

export interface ClusterConfig {
  /** lifetime of node certificates */
  certExpiryMs: number;
  /** serial numbers a replica claims from the store at a time */
  serialRangeIncrement: number;
  /** claim the next range when fewer than this many are left */
  serialRangeLowWater: number;
  /** CRL validity (nextUpdate - thisUpdate) */
  crlValidityMs: number;
  /** CRL leader lease duration */
  crlLeaseMs: number;
  /** CRL leader cycle: revocations within one cycle are coalesced into one CRL */
  crlCycleMs: number;
  /** how long after a renewal the certificate it replaced may still renew (a node that crashed before saving) */
  renewalGraceMs: number;
  /** renewals a node may make in a burst */
  renewalBurst: number;
  /** then one renewal per node every this many ms (0 = no limit) */
  renewalIntervalMs: number;
  /** how long after its certificate expired a node may still recover its identity (`join --recover`; 0 = never) */
  recoveryWindowMs: number;
  /** OCSP answers' validity (nextUpdate - thisUpdate), and how long a GET answer may be cached */
  ocspValidityMs: number;
  /** how often the audit log's head is sealed (signed), when it moved */
  auditSealIntervalMs: number;
  /** the external CAs issuing for a cluster CA an external CA holds (external-ca.ts), tried in order */
  externalCas: ExternalCa[];
}

/** Settings that are text: base URLs put into certificates issued from then on (null: none). */
export interface UrlSettings {
  /** base URL of the OCSP responder: certificates carry `<ocspUrl>/v1/ocsp/<ca>` (AIA) */
  ocspUrl: string | null;
  /** base URL of the CRLs: certificates carry `<crlUrl>/v1/crl/<ca>` (CRL distribution point) */
  crlUrl: string | null;
}

export const DEFAULT_CONFIG: ClusterConfig = {
  certExpiryMs: DEFAULT_CERT_EXPIRY_MS,
  serialRangeIncrement: 1000,
  serialRangeLowWater: 200,
  crlValidityMs: 24 * HOUR_MS,
  crlLeaseMs: 15_000,
  crlCycleMs: 1_000,
  renewalGraceMs: HOUR_MS,
  renewalBurst: 5,
  renewalIntervalMs: 60_000,
  recoveryWindowMs: 30 * DAY_MS,
  ocspValidityMs: HOUR_MS,
  auditSealIntervalMs: 60_000,
  externalCas: [],
};

/** How many external CA URLs a cluster may list. */
export const MAX_EXTERNAL_CAS = 8;

export const DEFAULT_URL_SETTINGS: UrlSettings = { ocspUrl: null, crlUrl: null };

/** Bounds of every setting a user may change: [min, max, what]. */
const CONFIG_BOUNDS: Record<Exclude<keyof ClusterConfig, 'externalCas'>, [number, number, string]> = {
  certExpiryMs: [HOUR_MS, 20 * 365 * DAY_MS, 'certificate expiry must be between 1h and 20 years'],
  serialRangeIncrement: [1, 1_000_000, 'serialRangeIncrement must be between 1 and 1000000'],
  serialRangeLowWater: [0, 1_000_000, 'serialRangeLowWater must be between 0 and 1000000'],
  crlValidityMs: [10 * 60_000, 365 * DAY_MS, 'crlValidityMs must be between 10 minutes and 365 days'],
  crlLeaseMs: [1_000, HOUR_MS, 'crlLeaseMs must be between 1s and 1h'],
  crlCycleMs: [100, 10 * 60_000, 'crlCycleMs must be between 100ms and 10 minutes'],
  renewalGraceMs: [0, 7 * DAY_MS, 'renewalGraceMs must be between 0 and 7 days'],
  renewalBurst: [1, 1_000_000, 'renewalBurst must be between 1 and 1000000'],
  renewalIntervalMs: [0, DAY_MS, 'renewalIntervalMs must be between 0 (no limit) and 1 day'],
  recoveryWindowMs: [0, 365 * DAY_MS, 'recoveryWindowMs must be between 0 (no recovery) and 365 days'],
  ocspValidityMs: [60_000, 7 * DAY_MS, 'ocspValidityMs must be between 1 minute and 7 days'],
  auditSealIntervalMs: [1_000, DAY_MS, 'auditSealIntervalMs must be between 1s and 1 day'],
};

/** The stored settings over the defaults. */
export function configFrom(stored: Record<string, unknown>): ClusterConfig & UrlSettings {
  return { ...DEFAULT_CONFIG, ...DEFAULT_URL_SETTINGS, ...(stored as Partial<ClusterConfig & UrlSettings>) };
}

/** Check a change of settings: known keys, integers, within bounds; at least one. */
export function checkConfigPatch(patch: Record<string, unknown>): Partial<ClusterConfig & UrlSettings> {
  const allowed: Partial<ClusterConfig & UrlSettings> = {};
  for (const [k, v] of Object.entries(patch)) {
    if (k === 'ocspUrl' || k === 'crlUrl') {
      allowed[k] = checkBaseUrl(v, k);
      continue;
    }
    if (k === 'externalCas') {
      if (!Array.isArray(v) || v.length > MAX_EXTERNAL_CAS) throw new CairnError('bad_request', `externalCas must be a list of at most ${MAX_EXTERNAL_CAS} external CAs`);
      allowed.externalCas = v.map((x) => checkExternalCa(x));
      continue;
    }
    // own keys only: "toString", "constructor" and the like are not settings
    const bounds = Object.hasOwn(CONFIG_BOUNDS, k) ? CONFIG_BOUNDS[k as keyof typeof CONFIG_BOUNDS] : undefined;
    if (!bounds) throw new CairnError('bad_request', `unknown configuration setting "${k}"`);
    if (typeof v !== 'number' || !Number.isInteger(v)) throw new CairnError('bad_request', `${k} must be an integer`);
    if (v < bounds[0] || v > bounds[1]) throw new CairnError('bad_request', bounds[2]);
    allowed[k as keyof typeof CONFIG_BOUNDS] = v;
  }
  if (Object.keys(allowed).length === 0) throw new CairnError('bad_request', 'no setting to change');
  return allowed;
}
