/**
 * Small zip archives (PKWARE APPNOTE): written with deflate and Unix modes in the external
 * attributes (Info-ZIP's unzip restores them; many other tools do not), read back with every
 * bound checked — names, sizes, count, CRC — so a hostile archive gets a one-line error.
 * Enough for client bundles; no zip64, no encryption, no directories.
 */
import { crc32, deflateRawSync, inflateRawSync } from 'node:zlib';
import { CairnError } from './errors.js';

export interface ZipEntry {
  name: string;
  data: Buffer;
  /** Unix permission bits (0o600, 0o644, 0o755) */
  mode: number;
}

const LOCAL = 0x04034b50;
const CENTRAL = 0x02014b50;
const END = 0x06054b50;

function dosTime(d: Date): { time: number; date: number } {
  return {
    time: (d.getHours() << 11) | (d.getMinutes() << 5) | Math.floor(d.getSeconds() / 2),
    date: ((Math.max(1980, d.getFullYear()) - 1980) << 9) | ((d.getMonth() + 1) << 5) | d.getDate(),
  };
}

/** A zip archive of the entries, each deflated. */
export function writeZip(entries: ZipEntry[], now = new Date()): Buffer {
  const { time, date } = dosTime(now);
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name, 'utf8');
    const data = deflateRawSync(e.data);
    const crc = crc32(e.data);
    const h = Buffer.alloc(30);
    h.writeUInt32LE(LOCAL, 0);
    h.writeUInt16LE(20, 4); // version needed: 2.0 (deflate)
    h.writeUInt16LE(0x0800, 6); // names are UTF-8
    h.writeUInt16LE(8, 8); // deflate
    h.writeUInt16LE(time, 10);
    h.writeUInt16LE(date, 12);
    h.writeUInt32LE(crc, 14);
    h.writeUInt32LE(data.length, 18);
    h.writeUInt32LE(e.data.length, 22);
    h.writeUInt16LE(name.length, 26);
    h.writeUInt16LE(0, 28);
    locals.push(h, name, data);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(CENTRAL, 0);
    c.writeUInt16LE((3 << 8) | 20, 4); // made by: Unix, 2.0 — so the external attributes hold a mode
    c.writeUInt16LE(20, 6);
    c.writeUInt16LE(0x0800, 8);
    c.writeUInt16LE(8, 10);
    c.writeUInt16LE(time, 12);
    c.writeUInt16LE(date, 14);
    c.writeUInt32LE(crc, 16);
    c.writeUInt32LE(data.length, 20);
    c.writeUInt32LE(e.data.length, 24);
    c.writeUInt16LE(name.length, 28);
    c.writeUInt32LE(((0o100000 | (e.mode & 0o777)) << 16) >>> 0, 38); // regular file, its mode
    c.writeUInt32LE(offset, 42);
    centrals.push(c, name);
    offset += h.length + name.length + data.length;
  }
  const cd = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(END, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, end]);
}

export interface ReadZipLimits {
  maxEntries: number;
  /** largest uncompressed entry */
  maxEntryBytes: number;
}

/**
 * The entries of a zip archive. Refuses (CairnError `bad_zip`) anything it does not read
 * fully: zip64, encryption, methods other than store and deflate, names with a directory
 * part, repeated names, an entry larger than the limit, a CRC that does not match.
 */
export function readZip(buf: Buffer, limits: ReadZipLimits, what = 'the archive'): ZipEntry[] {
  const bad = (why: string) => new CairnError('bad_zip', `${what} is not a zip archive cairn can read: ${why}`);
  if (buf.length < 22) throw bad('it is too short');
  let endAt = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 22 - 0xffff); i--) {
    if (buf.readUInt32LE(i) === END) {
      endAt = i;
      break;
    }
  }
  if (endAt < 0) throw bad('no end of central directory');
  const count = buf.readUInt16LE(endAt + 10);
  const cdSize = buf.readUInt32LE(endAt + 12);
  const cdOffset = buf.readUInt32LE(endAt + 16);
  if (count > limits.maxEntries) throw bad(`it holds ${count} entries (at most ${limits.maxEntries})`);
  if (cdOffset + cdSize > endAt) throw bad('the central directory lies outside the file');
  const out: ZipEntry[] = [];
  const seen = new Set<string>();
  let p = cdOffset;
  for (let n = 0; n < count; n++) {
    if (p + 46 > endAt || buf.readUInt32LE(p) !== CENTRAL) throw bad('a damaged central directory');
    const flags = buf.readUInt16LE(p + 8);
    const method = buf.readUInt16LE(p + 10);
    const crc = buf.readUInt32LE(p + 16);
    const csize = buf.readUInt32LE(p + 20);
    const usize = buf.readUInt32LE(p + 24);
    const nameLen = buf.readUInt16LE(p + 28);
    const extraLen = buf.readUInt16LE(p + 30);
    const commentLen = buf.readUInt16LE(p + 32);
    const madeBy = buf.readUInt16LE(p + 4) >> 8;
    const external = buf.readUInt32LE(p + 38);
    const localAt = buf.readUInt32LE(p + 42);
    const name = buf.subarray(p + 46, p + 46 + nameLen).toString('utf8');
    p += 46 + nameLen + extraLen + commentLen;
    if (flags & 0x1) throw bad(`${name} is encrypted`);
    if (csize === 0xffffffff || usize === 0xffffffff) throw bad('zip64 is not supported');
    if (name.endsWith('/')) continue; // a directory entry: nothing to extract
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(name) || name === '.' || name === '..') throw bad(`the entry name "${name.slice(0, 80)}" is not a plain file name`);
    if (seen.has(name)) throw bad(`${name} appears twice`);
    seen.add(name);
    if (usize > limits.maxEntryBytes) throw bad(`${name} is larger than ${limits.maxEntryBytes} bytes`);
    if (localAt + 30 > buf.length || buf.readUInt32LE(localAt) !== LOCAL) throw bad(`the local header of ${name} is damaged`);
    const dataAt = localAt + 30 + buf.readUInt16LE(localAt + 26) + buf.readUInt16LE(localAt + 28);
    if (dataAt + csize > buf.length) throw bad(`${name} lies outside the file`);
    const raw = buf.subarray(dataAt, dataAt + csize);
    let data: Buffer;
    if (method === 0) data = Buffer.from(raw);
    else if (method === 8) {
      try {
        data = inflateRawSync(raw, { maxOutputLength: limits.maxEntryBytes });
      } catch {
        throw bad(`${name} does not inflate`);
      }
    } else throw bad(`${name} uses compression method ${method} (only store and deflate are read)`);
    if (data.length !== usize || crc32(data) !== crc) throw bad(`${name} fails its CRC check`);
    out.push({ name, data, mode: madeBy === 3 ? (external >>> 16) & 0o777 : 0o644 });
  }
  return out;
}
