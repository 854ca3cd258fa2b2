/** An error in PKI input (malformed PEM/DER, weak key, bad signature...). `code` is stable. */
export class PkiError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'PkiError';
    this.code = code;
  }
}
