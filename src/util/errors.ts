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

/** A refusal that passes with time (rate limits, an unavailable store): the answer carries Retry-After. */
export class RetryLater extends CairnError {
  readonly retryAfterMs: number;
  constructor(code: string, message: string, retryAfterMs: number) {
    super(code, message);
    this.name = 'RetryLater';
    this.retryAfterMs = retryAfterMs;
  }
}
