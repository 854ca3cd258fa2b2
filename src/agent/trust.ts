/**
 * The one rule for changing a node's trust bundle (ca.crt): trust only widens through a chain.
 *
 * A root the node does not trust yet is accepted only when
 *   (a) a root the node already trusts vouches for it: among the `vouchers` is a cross-signed
 *       certificate with the new root's subject and public key, a CA certificate, valid now,
 *       issued and signed by a root in the current bundle (the shape of a root rotation) — or
 *       by an intermediate among the vouchers that such a root issued (a rotation away from an
 *       intermediate: it signed the cross-signed certificate); or
 *   (b) its digest (SHA-256 of its DER, base36, as in join tokens) is one the operator gave.
 * Removing a root is allowed only if the node's own certificate still verifies against what
 * remains. What an endpoint says is never enough: anything else is refused as a whole, and the
 * caller leaves ca.crt untouched.
 *
 * Used by join (current = the root matching the token's digest), the agent's trust refresh
 * (GET /v1/ca) and renewal (the bundle that comes with the certificate).
 */
import { X509Certificate } from 'node:crypto';
import { certificateInfo, certificatesFromPem, fingerprint256, PkiError, rootDigest, verifyChain, isSelfSigned } from '../pki/index.js';

export interface TrustOffer {
  /** Certificates that may vouch for new roots: the node's chain, `intermediates`/`crossSigned` of GET /v1/ca, non-self-signed CA certificates of the offered bundle. */
  vouchers?: Buffer[];
  /** Root digests the operator gave (join token, `cairn agent --trust-token`). */
  digests?: string[];
  /** The node certificate chain (leaf first) that must still verify if roots are removed; without it, no root may be removed. */
  chain?: Buffer[];
  at?: Date;
}

export interface RefusedRoot {
  subject: string;
  /** SHA-256 fingerprint, colon-separated hex */
  fingerprint: string;
}

export type TrustDecision =
  | {
      ok: true;
      /** the new ca.crt: self-signed roots only, in the order offered */
      bundle: Buffer[];
      added: Buffer[];
      removed: Buffer[];
      changed: boolean;
      /** how each added root was accepted */
      how: ('vouched' | 'digest')[];
    }
  | {
      ok: false;
      /** unvouched_root: a new root nobody vouches for; breaks_own_chain: a removal our certificate does not survive; bad_bundle: no usable root */
      reason: 'unvouched_root' | 'breaks_own_chain' | 'bad_bundle';
      message: string;
      refused: RefusedRoot[];
    };

function parse(der: Buffer): X509Certificate | null {
  try {
    return new X509Certificate(der);
  } catch {
    return null;
  }
}


const spki = (c: X509Certificate) => c.publicKey.export({ type: 'spki', format: 'der' });
const describe = (c: X509Certificate, der: Buffer): RefusedRoot => ({ subject: c.subject.replace(/\n/g, ', '), fingerprint: fingerprint256(der) });

const validAt = (c: X509Certificate, at: Date) => new Date(c.validFrom) <= at && at <= new Date(c.validTo);
const issuedBy = (c: X509Certificate, by: X509Certificate) => {
  try {
    return by.ca && c.checkIssued(by) && c.verify(by.publicKey);
  } catch {
    return false;
  }
};
/** the pathLenConstraint of a CA certificate (null: none) */
const pathLen = (c: X509Certificate): number | null => {
  try {
    return certificateInfo(c.raw).pathLength;
  } catch {
    return 0;
  }
};

/**
 * Whether `c` is issued by one of `trusted`, or by a CA certificate among `pool` (valid now, not
 * a root, whose path length allows what is below it) that is itself, up to 4 deep: the old
 * generation of a rotation was an intermediate, and it signed the cross-signed certificate.
 */
function chainsToTrusted(c: X509Certificate, trusted: X509Certificate[], pool: X509Certificate[], at: Date, below = 1): boolean {
  if (trusted.some((t) => issuedBy(c, t))) return true;
  if (below > 4) return false;
  return pool.some((u) => {
    if (u === c || !u.ca || isSelfSigned(u) || !validAt(u, at) || !issuedBy(c, u)) return false;
    const n = pathLen(u);
    return (n === null || n >= below) && chainsToTrusted(u, trusted, pool, at, below + 1);
  });
}

/** Whether `v` is a cross-signed certificate for `root` by one of `trusted` (directly, or through intermediates among `vouchers`). */
function vouches(v: X509Certificate, root: X509Certificate, trusted: X509Certificate[], vouchers: X509Certificate[], at: Date): boolean {
  if (!v.ca || v.subject !== root.subject || !spki(v).equals(spki(root))) return false;
  if (!validAt(v, at)) return false;
  return chainsToTrusted(v, trusted, vouchers, at);
}

/**
 * Decide what ca.crt becomes when an endpoint offers `offered` while the node trusts `current`.
 * Pure: no I/O; the caller writes, logs and refuses.
 */
export function acceptTrustBundle(current: Buffer[], offered: Buffer[], o: TrustOffer = {}): TrustDecision {
  const at = o.at ?? new Date();
  const trusted = current.map(parse).filter((c): c is X509Certificate => !!c);
  const vouchers = (o.vouchers ?? []).map(parse).filter((c): c is X509Certificate => !!c);
  const bundle: Buffer[] = [];
  for (const der of offered) {
    const c = parse(der);
    if (!c || !c.ca) return { ok: false, reason: 'bad_bundle', message: 'the offered trust bundle holds a certificate that is not a CA', refused: [] };
    if (!isSelfSigned(c)) {
      vouchers.push(c); // a cross-signed certificate sent along with the roots: it may vouch, it is not a root
      continue;
    }
    if (!bundle.some((b) => b.equals(der))) bundle.push(der);
  }
  if (bundle.length === 0) return { ok: false, reason: 'bad_bundle', message: 'the offered trust bundle holds no root certificate', refused: [] };

  const added = bundle.filter((d) => !current.some((c) => c.equals(d)));
  const removed = current.filter((d) => !bundle.some((b) => b.equals(d)));
  const how: ('vouched' | 'digest')[] = [];
  const refused: RefusedRoot[] = [];
  for (const der of added) {
    const root = parse(der)!;
    if (o.digests?.includes(rootDigest(der))) how.push('digest');
    else if (vouchers.some((v) => vouches(v, root, trusted, vouchers, at))) how.push('vouched');
    else refused.push(describe(root, der));
  }
  if (refused.length) {
    return {
      ok: false,
      reason: 'unvouched_root',
      message: `refused ${refused.length === 1 ? 'a new root' : `${refused.length} new roots`} that no trusted root vouches for and no token names: ${refused
        .map((r) => `${r.subject} (SHA-256 ${r.fingerprint})`)
        .join('; ')}`,
      refused,
    };
  }
  if (removed.length) {
    const gone = removed.map((d) => describe(parse(d)!, d));
    if (!o.chain?.length) {
      return { ok: false, reason: 'breaks_own_chain', message: 'the offered trust bundle drops roots, and no node certificate was given to check against it', refused: gone };
    }
    try {
      verifyChain(o.chain[0], o.chain.slice(1), bundle, { at });
    } catch (e) {
      if (!(e instanceof PkiError)) throw e;
      return {
        ok: false,
        reason: 'breaks_own_chain',
        message: `the offered trust bundle drops roots our certificate needs (${e.message}): ${gone.map((r) => r.subject).join('; ')}`,
        refused: gone,
      };
    }
  }
  return { ok: true, bundle, added, removed, changed: added.length > 0 || removed.length > 0 || bundle.length !== current.length, how };
}

/**
 * The certificates a field of `GET /v1/ca` offers as vouchers (`intermediates`, `crossSigned`):
 * one PEM text or a list of them. Anything unusable is ignored: it vouches for nothing.
 */
export function vouchersFrom(v: unknown): Buffer[] {
  const texts = typeof v === 'string' ? [v] : Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
  const out: Buffer[] = [];
  for (const t of texts) {
    try {
      out.push(...certificatesFromPem(t, 'a vouching certificate'));
    } catch (e) {
      if (!(e instanceof PkiError)) throw e;
    }
  }
  return out;
}
