import { PkiError, PkiErrorCode } from '../pki/errors.js';

/**
 * Every error code cairn raises, with the HTTP status the API answers it with and the CLI
 * exit code it ends a command with: one table, so a code cannot exist without both (the
 * compiler refuses `new CairnError('nope', …)`). step-ca's errs/error.go keeps the status on
 * the error the same way.
 *
 * `api: true` marks the codes an HTTP client can receive; docs/api.md lists exactly those,
 * with these statuses (test/integration/hardening.test.ts compares them). The other codes are
 * raised by the CLI, the agent or server start-up and never reach the HTTP error handler;
 * their status says what kind of failure they are, should one ever get there.
 *
 * Exit codes: 1 an operational failure, 2 a usage error (a bad argument, fixed by changing the
 * command line), 130 the user cancelled at a prompt (as after Ctrl-C).
 */
export const ERRORS = {
  // ---- the HTTP API: request input
  bad_request: { status: 400, exit: 1, api: true },
  bad_csr: { status: 400, exit: 1, api: true },
  bad_csr_signature: { status: 400, exit: 1, api: true },
  bad_der: { status: 400, exit: 1, api: true },
  bad_pem: { status: 400, exit: 1, api: true },
  weak_key: { status: 400, exit: 1, api: true },
  unsupported_key: { status: 400, exit: 1, api: true },
  body_too_large: { status: 413, exit: 1, api: true },
  unsupported_media_type: { status: 415, exit: 1, api: true },
  // ---- the HTTP API: who is asking
  invalid_token: { status: 401, exit: 1, api: true },
  client_certificate_required: { status: 401, exit: 1, api: true },
  forbidden: { status: 403, exit: 1, api: true },
  node_removed: { status: 403, exit: 1, api: true },
  certificate_revoked: { status: 403, exit: 1, api: true },
  certificate_expired: { status: 403, exit: 1, api: true },
  renewal_superseded: { status: 403, exit: 1, api: true },
  recovery_refused: { status: 403, exit: 1, api: true },
  rate_limited: { status: 429, exit: 1, api: true },
  // ---- the HTTP API: the objects asked about
  not_found: { status: 404, exit: 1, api: true },
  already_revoked: { status: 409, exit: 1, api: true },
  last_admin: { status: 409, exit: 1, api: true },
  renewal_conflict: { status: 409, exit: 1, api: true },
  rejoin_required: { status: 403, exit: 1, api: true },
  rotation_in_progress: { status: 409, exit: 1, api: true },
  rotation_incomplete: { status: 409, exit: 1, api: true },
  no_rotation: { status: 409, exit: 1, api: true },
  bad_ca_material: { status: 400, exit: 1, api: true },
  stale_backup: { status: 409, exit: 1, api: false },
  // ---- the HTTP API: the server's own trouble
  internal: { status: 500, exit: 1, api: true },
  unavailable: { status: 503, exit: 1, api: true },
  /** raised by the store layer; the API answers it as 503 `unavailable` */
  store_unavailable: { status: 503, exit: 1, api: false },
  /** a record the server needs is missing from the store (e.g. a serial sequence) */
  store_corrupt: { status: 500, exit: 1, api: true },
  /** issuing under a CA certificate that has expired (notBefore would follow notAfter) */
  bad_validity: { status: 503, exit: 1, api: true },

  // ---- command-line arguments (exit 2)
  usage: { status: 400, exit: 2, api: false },
  bad_duration: { status: 400, exit: 2, api: false },
  bad_endpoint: { status: 400, exit: 2, api: false },
  bad_name: { status: 400, exit: 2, api: false },
  bad_hostname: { status: 400, exit: 2, api: false },
  bad_store: { status: 400, exit: 2, api: false },
  bad_token: { status: 400, exit: 2, api: false },
  cancelled: { status: 400, exit: 130, api: false },

  // ---- local files and state
  io: { status: 500, exit: 1, api: false },
  hook_failed: { status: 500, exit: 1, api: false },
  listen_failed: { status: 500, exit: 1, api: false },
  worker_failed: { status: 500, exit: 1, api: false },
  exists: { status: 409, exit: 1, api: false },
  locked: { status: 409, exit: 1, api: false },
  corrupt: { status: 500, exit: 1, api: false },
  key_permissions: { status: 500, exit: 1, api: false },
  bad_state: { status: 500, exit: 1, api: false },
  not_joined: { status: 400, exit: 1, api: false },
  not_initialized: { status: 500, exit: 1, api: false },
  no_token: { status: 400, exit: 1, api: false },
  no_unlock_key: { status: 400, exit: 1, api: false },
  bad_unlock_key: { status: 400, exit: 1, api: false },
  wrong_unlock_key: { status: 400, exit: 1, api: false },
  no_admin_bundle: { status: 400, exit: 1, api: false },
  server_running: { status: 409, exit: 1, api: false },
  bad_server_key: { status: 500, exit: 1, api: false },
  replica_removed: { status: 403, exit: 1, api: false },
  wrong_cluster: { status: 400, exit: 1, api: false },
  has_nodes: { status: 409, exit: 1, api: false },
  store_not_empty: { status: 409, exit: 1, api: false },

  /** `cairn audit verify` found the audit chain or a seal broken */
  audit_tampered: { status: 500, exit: 1, api: false },
  /** `cairn bundle unpack`: an archive cairn does not read */
  bad_zip: { status: 400, exit: 1, api: false },
  // ---- CA keys held elsewhere (docs/ca-keys.md): a PKCS#11 token, an external CA
  hsm_error: { status: 500, exit: 1, api: false },
  hsm_token_missing: { status: 500, exit: 1, api: false },
  hsm_login_failed: { status: 500, exit: 1, api: false },
  hsm_key_missing: { status: 500, exit: 1, api: false },
  key_in_hsm: { status: 409, exit: 1, api: false },

  // ---- the offline CA
  no_ca: { status: 400, exit: 1, api: false },
  bad_ca: { status: 400, exit: 1, api: false },

  // ---- backups, restore and cloning
  not_a_backup: { status: 400, exit: 1, api: false },
  unsupported_backup: { status: 400, exit: 1, api: false },
  corrupt_backup: { status: 400, exit: 1, api: false },
  wrong_passphrase: { status: 400, exit: 1, api: false },
  restore_failed: { status: 500, exit: 1, api: false },
  serials_exhausted: { status: 500, exit: 1, api: false },

  // ---- the agent and the CLI as clients of the API
  unreachable: { status: 502, exit: 1, api: false },
  aborted: { status: 400, exit: 1, api: false },
  /** an error answer (5xx) without a usable code */
  server_error: { status: 502, exit: 1, api: false },
  bad_response: { status: 502, exit: 1, api: false },
  untrusted_server: { status: 502, exit: 1, api: false },
  untrusted_root: { status: 502, exit: 1, api: false },
  ca_mismatch: { status: 502, exit: 1, api: false },
  stale_crl: { status: 502, exit: 1, api: false },
  // peers of a node (agent TLS between nodes)
  peer_unauthorized: { status: 403, exit: 1, api: false },
  peer_not_node: { status: 403, exit: 1, api: false },
  peer_revoked: { status: 403, exit: 1, api: false },
  peer_role_not_allowed: { status: 403, exit: 1, api: false },
  peer_wrong_cluster: { status: 403, exit: 1, api: false },
  peer_wrong_node: { status: 403, exit: 1, api: false },

  // ---- PKI input (PkiError codes, see fromPki; those the API answers are above)
  bad_certificate: { status: 400, exit: 1, api: false },
  bad_crl: { status: 400, exit: 1, api: false },
  bad_key: { status: 400, exit: 1, api: false },
  bad_serial: { status: 400, exit: 1, api: false },
  bad_password: { status: 400, exit: 1, api: false },
  wrong_password: { status: 400, exit: 1, api: false },
  bad_pkcs12: { status: 400, exit: 1, api: false },
  unsupported_pkcs12: { status: 400, exit: 1, api: false },
  legacy_pkcs12: { status: 400, exit: 1, api: false },
  key_mismatch: { status: 400, exit: 1, api: false },
  not_ca: { status: 400, exit: 1, api: false },
  cert_expired: { status: 400, exit: 1, api: false },
  untrusted: { status: 400, exit: 1, api: false },
  wrong_usage: { status: 400, exit: 1, api: false },
} as const satisfies Record<string, { status: number; exit: 1 | 2 | 130; api: boolean }>;

export type ErrorCode = keyof typeof ERRORS;

export const isErrorCode = (s: string): s is ErrorCode => Object.hasOwn(ERRORS, s);

/**
 * An error meant for the user: a stable `code` from ERRORS and a one-line message; the HTTP
 * status and the CLI exit code come from the table.
 */
export class CairnError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = 'CairnError';
    this.code = code;
  }
  /** the CLI exit code: 1 for operational failures, 2 for usage errors */
  get exitCode(): number {
    return ERRORS[this.code].exit;
  }
}

export const usageError = (message: string) => new CairnError('usage', message);

/** A refusal that passes with time (rate limits, an unavailable store): the answer carries Retry-After. */
export class RetryLater extends CairnError {
  readonly retryAfterMs: number;
  constructor(code: ErrorCode, message: string, retryAfterMs: number) {
    super(code, message);
    this.name = 'RetryLater';
    this.retryAfterMs = retryAfterMs;
  }
}

/** What each PkiError code becomes: the compiler checks that every PKI code has an entry. */
const FROM_PKI: Readonly<Record<PkiErrorCode, ErrorCode>> = {
  bad_certificate: 'bad_certificate', bad_crl: 'bad_crl', bad_csr: 'bad_csr', bad_csr_signature: 'bad_csr_signature', bad_der: 'bad_der',
  bad_hostname: 'bad_hostname', bad_key: 'bad_key', bad_name: 'bad_name', bad_password: 'bad_password', bad_pem: 'bad_pem',
  bad_pkcs12: 'bad_pkcs12', bad_serial: 'bad_serial', bad_validity: 'bad_validity', cert_expired: 'cert_expired', key_mismatch: 'key_mismatch',
  legacy_pkcs12: 'legacy_pkcs12', not_ca: 'not_ca', unsupported_key: 'unsupported_key', unsupported_pkcs12: 'unsupported_pkcs12',
  untrusted: 'untrusted', weak_key: 'weak_key', wrong_password: 'wrong_password', wrong_usage: 'wrong_usage',
};

/**
 * The CairnError for a PkiError (src/pki imports nothing of cairn, so the mapping lives here).
 * Given a function, run it and rethrow its PkiErrors as CairnErrors, the message prefixed by
 * `context` when given; other errors pass unchanged.
 */
export function fromPki(e: PkiError, context?: string): CairnError;
export function fromPki<T>(fn: () => T, context?: string): T;
export function fromPki<T>(x: PkiError | (() => T), context?: string): CairnError | T {
  if (x instanceof PkiError) return new CairnError(FROM_PKI[x.code], context ? `${context}: ${x.message}` : x.message);
  try {
    return x();
  } catch (e) {
    throw e instanceof PkiError ? fromPki(e, context) : e;
  }
}
