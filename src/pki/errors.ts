/** Every code a PkiError carries (util/errors.ts maps each to a cairn error code). */
export const PKI_ERROR_CODES = [
  'bad_certificate', 'bad_crl', 'bad_csr', 'bad_csr_signature', 'bad_der', 'bad_hostname', 'bad_key', 'bad_name', 'bad_password',
  'bad_pem', 'bad_pkcs12', 'bad_serial', 'bad_validity', 'cert_expired', 'key_mismatch', 'legacy_pkcs12', 'not_ca',
  'unsupported_key', 'unsupported_pkcs12', 'untrusted', 'weak_key', 'wrong_password', 'wrong_usage',
] as const;

export type PkiErrorCode = (typeof PKI_ERROR_CODES)[number];

/**
 * An error in PKI input (malformed PEM/DER, weak key, bad signature...). `code` is stable.
 * Shaped like util/errors.ts's CairnError on purpose: pki imports nothing of cairn, and
 * fromPki() turns one into the other.
 */
export class PkiError extends Error {
  readonly code: PkiErrorCode;
  constructor(code: PkiErrorCode, message: string) {
    super(message);
    this.name = 'PkiError';
    this.code = code;
  }
}
