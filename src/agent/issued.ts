/** Checks a node applies to what the CA answers to a join or a renewal, before writing anything. */
import { KeyObject } from 'node:crypto';
import { CertificateInfo, certificateInfo, certificatesFromPem, certificateToPem, keysMatch, PkiError, verifyChain, ROLES, Role, ID_RE } from '../pki/index.js';
import { CairnError } from '../util/errors.js';

/**
 * The answer of `POST /v1/join` and `POST /v1/renew` as the node reads it off the wire. Its
 * shape repeats the server's IssuedNode on purpose: the node side never imports the authority.
 */
export interface IssuedAnswer {
  nodeId: string;
  role: Role;
  clusterId: string;
  certificate: string;
  trustBundle: string;
}

export interface CheckedIssue {
  nodeId: string;
  role: Role;
  clusterId: string;
  leaf: CertificateInfo;
  /** node.crt to write: leaf then CA certificates, normalized PEM */
  certPem: string;
  /** the trust bundle that came with it, normalized PEM (subject to acceptTrustBundle before it is written) */
  caPem: string;
  trust: Buffer[];
  /** DER of the issued chain, leaf first */
  chain: Buffer[];
}


/** Normalize PEM certificates: one clean block each, in order. */
export function pemOf(ders: Buffer[]): string {
  return ders.map((d) => certificateToPem(d)).join('');
}

/**
 * Check an issued certificate: well-formed answer, the certificate is for our key, names the
 * node, role and cluster the answer says (and the cluster we expect), and chains to every set
 * of `anchors` given plus to the trust bundle that came with it.
 */
export function checkIssued(
  answer: unknown,
  key: KeyObject,
  where: string,
  expect: { clusterId?: string; nodeId?: string; anchors?: Buffer[] } = {},
): CheckedIssue {
  const bad = (why: string) => new CairnError('bad_response', `the CA at ${where} answered with ${why}; nothing was written`);
  const a = answer as Partial<IssuedAnswer> | null;
  if (!a || typeof a !== 'object') throw bad('no JSON object');
  if (typeof a.nodeId !== 'string' || !ID_RE.test(a.nodeId)) throw bad('a malformed nodeId');
  if (typeof a.clusterId !== 'string' || !ID_RE.test(a.clusterId)) throw bad('a malformed clusterId');
  if (!ROLES.includes(a.role as Role)) throw bad(`an unknown role "${String(a.role)}"`);
  if (typeof a.certificate !== 'string' || typeof a.trustBundle !== 'string') throw bad('no certificate or no trust bundle');
  if (expect.clusterId && a.clusterId !== expect.clusterId) throw bad(`a certificate for cluster ${a.clusterId}, not ${expect.clusterId}`);
  if (expect.nodeId && a.nodeId !== expect.nodeId) throw bad(`a certificate for node ${a.nodeId}, not ${expect.nodeId}`);
  let chain: Buffer[], trust: Buffer[], leaf: CertificateInfo;
  try {
    chain = certificatesFromPem(a.certificate, 'the issued certificate');
    trust = certificatesFromPem(a.trustBundle, 'the trust bundle');
    leaf = certificateInfo(chain[0]);
  } catch (e) {
    if (e instanceof PkiError) throw bad(`an unusable certificate: ${e.message}`);
    throw e;
  }
  for (const t of trust) {
    if (!certificateInfo(t).isCA) throw bad('a trust bundle holding a certificate that is not a CA');
  }
  if (!keysMatch(key, leaf.publicKeyDer)) throw bad('a certificate for another key than the one we generated');
  const s = leaf.subjectAttrs;
  if (s.CN !== a.nodeId || s.OU !== a.role || s.O !== a.clusterId) {
    throw bad(`a certificate whose subject (CN=${s.CN}, OU=${s.OU}, O=${s.O}) does not match the answer`);
  }
  for (const [what, roots] of [['the trust bundle that came with it', trust], ['the root we trust', expect.anchors]] as const) {
    if (!roots) continue;
    try {
      verifyChain(chain[0], chain.slice(1), roots, { purpose: 'clientAuth' });
    } catch (e) {
      if (e instanceof PkiError) throw bad(`a certificate that does not verify against ${what}: ${e.message}`);
      throw e;
    }
  }
  return { nodeId: a.nodeId, role: a.role as Role, clusterId: a.clusterId, leaf, certPem: pemOf(chain), caPem: pemOf(trust), trust, chain };
}
