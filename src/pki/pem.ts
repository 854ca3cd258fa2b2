import { PkiError } from './errors.js';

export interface PemBlock {
  label: string;
  der: Buffer;
}

const PEM_RE = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([A-Za-z0-9+/=\r\n\t ]*?)-----END \1-----/g;

/** Encode DER as PEM with 64-character lines. */
export function toPem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der).toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += 64) lines.push(b64.slice(i, i + 64));
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

/** All PEM blocks in a text, in order. Text outside blocks is ignored (as OpenSSL does). */
export function parsePemBlocks(text: string): PemBlock[] {
  const blocks: PemBlock[] = [];
  for (const m of text.matchAll(PEM_RE)) {
    const body = m[2].replace(/[\r\n\t ]/g, '');
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(body) || body.length % 4 !== 0 || body.length === 0) {
      throw new PkiError('bad_pem', `malformed PEM: the ${m[1]} block is not valid base64`);
    }
    blocks.push({ label: m[1], der: Buffer.from(body, 'base64') });
  }
  return blocks;
}

/** Exactly the blocks with one of the given labels; refuses text with none. */
export function pemBlocksOf(text: string, labels: string[], what: string): Buffer[] {
  const blocks = parsePemBlocks(text).filter((b) => labels.includes(b.label));
  if (blocks.length === 0) {
    throw new PkiError('bad_pem', `no PEM ${labels.join(' or ')} block found in ${what}`);
  }
  return blocks.map((b) => b.der);
}

/** The single block with one of the labels. */
export function pemBlockOf(text: string, labels: string[], what: string): Buffer {
  const blocks = pemBlocksOf(text, labels, what);
  if (blocks.length > 1) throw new PkiError('bad_pem', `${what} holds ${blocks.length} ${labels[0]} blocks; expected one`);
  return blocks[0];
}
