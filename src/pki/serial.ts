import { PkiError } from './errors.js';
import { randomInto } from './random.js';

/** Sequence numbers must fit in 62 bits (bit 62 is the fixed marker; bit 63 keeps the serial positive). */
export const MAX_SEQUENCE = (1n << 62n) - 1n;

/**
 * A certificate serial: 16 bytes, positive. The high 8 bytes are `0x40…` ORed with a
 * sequence number that the caller guarantees unique (a store-claimed range, or a local
 * counter); the low 8 bytes come from the CSPRNG. The fixed marker bit keeps every serial
 * exactly 16 bytes long in minimal DER, whatever the sequence number.
 */
export function makeSerial(sequence: bigint): Buffer {
  if (sequence < 0n || sequence > MAX_SEQUENCE) throw new PkiError('bad_serial', `sequence number ${sequence} is out of range`);
  const out = Buffer.alloc(16);
  out.writeBigUInt64BE(sequence | (1n << 62n), 0);
  randomInto(out, 8, 8);
  return out;
}

/** The sequence number inside a cairn serial. */
export function sequenceOf(serial: Buffer): bigint {
  if (serial.length !== 16) throw new PkiError('bad_serial', 'not a 16-byte cairn serial');
  return serial.readBigUInt64BE(0) & MAX_SEQUENCE;
}

/** Serial in the hex form OpenSSL prints (uppercase, no separators). */
export function serialHex(serial: Uint8Array): string {
  return Buffer.from(serial).toString('hex').toUpperCase();
}

/** Parse a serial given by a user: hex, with or without colons or a 0x prefix. */
export function parseSerial(s: string): Buffer {
  const h = s.trim().replace(/^0x/i, '').replace(/:/g, '');
  if (!/^[0-9a-fA-F]+$/.test(h) || h.length > 40) throw new PkiError('bad_serial', `"${s}" is not a hexadecimal serial number`);
  return Buffer.from(h.length % 2 ? '0' + h : h, 'hex');
}
