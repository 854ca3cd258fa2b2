/**
 * The TLS settings of the API server's secure context: one place, used when the server starts
 * and when a CA change gives it a new identity or trust (ca-watcher.ts).
 */
import { constants, X509Certificate } from 'node:crypto';
import { chainToSend } from '../pki/index.js';

export interface ServerTlsMaterial {
  key: string | Buffer;
  cert: string;
  ca: string[];
}

export function tlsContextOptions(m: ServerTlsMaterial) {
  return {
    key: m.key,
    // the chain up to the root, handed over once: otherwise OpenSSL builds it from the trust
    // store on every handshake (~0.09 ms of CPU each) and sends the same certificates
    cert: chainToSend(m.cert, m.ca.map((c) => new X509Certificate(c))),
    ca: m.ca,
    minVersion: 'TLSv1.2' as const,
    // no TLS session tickets: OpenSSL 3 re-parses the client certificate for each of the two
    // tickets it sends after a handshake (about 0.1 ms of a 1 ms mutual-TLS handshake); ticket
    // keys differ per process and replica, and agents keep their connection open (long poll),
    // so few tickets would ever be used (docs/performance.md)
    secureOptions: constants.SSL_OP_NO_TICKET,
  };
}
