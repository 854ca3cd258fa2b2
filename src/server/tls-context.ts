/**
 * The TLS settings of the API server's secure context: one place, used when the server starts
 * and when a CA change gives it a new identity or trust (ca-watcher.ts).
 */
import { constants } from 'node:crypto';

export interface ServerTlsMaterial {
  key: string | Buffer;
  cert: string | Buffer;
  ca: string | Buffer | (string | Buffer)[];
}

export function tlsContextOptions(m: ServerTlsMaterial) {
  return {
    key: m.key,
    cert: m.cert,
    ca: m.ca,
    minVersion: 'TLSv1.2' as const,
    // no TLS session tickets: OpenSSL 3 re-parses the client certificate for each of the two
    // tickets it sends after a handshake (about 0.1 ms of a 1 ms mutual-TLS handshake); ticket
    // keys differ per process and replica, and agents keep their connection open (long poll),
    // so few tickets would ever be used (docs/performance.md)
    secureOptions: constants.SSL_OP_NO_TICKET,
  };
}
