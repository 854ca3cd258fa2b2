/** The PKI core: pure functions over keys, certificates, CSRs and encodings. No I/O. */
export * from './errors.js';
export * from './pem.js';
export * from './ids.js';
export * from './keys.js';
export * from './name.js';
export * from './serial.js';
export * from './cert.js';
export * from './csr.js';
export * from './verify.js';
export * from './profiles.js';
export * from './crl.js';
export * from './ocsp.js';
