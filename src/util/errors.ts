/**
 * An error meant for the user: a stable `code`, a one-line message, and the CLI exit code
 * (1 for operational failures, 2 for usage errors).
 */
export class CairnError extends Error {
  readonly code: string;
  readonly exitCode: number;
  constructor(code: string, message: string, exitCode = 1) {
    super(message);
    this.name = 'CairnError';
    this.code = code;
    this.exitCode = exitCode;
  }
}

export const usageError = (message: string) => new CairnError('usage', message, 2);
