/**
 * Output files for programs that read certificate files (HAProxy, nginx, PostgreSQL, etcd,
 * Java): `--write FORMAT=PATH[,mode=0640][,owner=user:group][,password-file=F]` on `cairn join`
 * and `cairn agent`. Each output is derived from the node's identity in NODEDIR and written
 * atomically (temp file with its final mode and owner, fsync, rename: a reader sees the old
 * file or the new one, never half of one) through util/files.ts. An output whose content,
 * mode and owner are already right is left alone, so an unchanged file keeps its inode and
 * a program watching it is not woken for nothing.
 *
 * Formats:
 *   cert       the node certificate alone (PEM)
 *   key        the private key (PKCS#8 PEM)                                   key material
 *   ca         the trust bundle, ca.crt (PEM)
 *   fullchain  the certificate and any CA certificates between it and a root (node.crt)
 *   bundle     fullchain then the key in one file (HAProxy's `crt`)          key material
 *   pkcs12     key, certificate, chain and roots in a PKCS#12 file (Java keystores, OpenSSL),
 *              encrypted with the password in `password-file=F`              key material
 * Key material is written 0600 unless `mode=` says otherwise; a mode that lets others (not the
 * owner or the group) read it is refused.
 */
import { execFileSync } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { certificateToPem } from '../pki/index.js';
import { buildPkcs12, parsePkcs12, Pkcs12Input } from '../pki/pkcs12.js';
import { CairnError, usageError } from '../util/errors.js';
import { FILE_MODE, KEY_MODE, readKeyFile, writeFilesAtomic } from '../util/files.js';
import { NodeIdentity, nodePaths } from './node-state.js';

export const OUTPUT_FORMATS = ['cert', 'key', 'ca', 'fullchain', 'bundle', 'pkcs12'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];
const KEY_MATERIAL = new Set<OutputFormat>(['key', 'bundle', 'pkcs12']);

export interface OutputSpec {
  format: OutputFormat;
  /** absolute path */
  path: string;
  mode: number;
  owner?: { uid: number; gid: number; name: string };
  /** pkcs12: the file holding its password */
  passwordFile?: string;
}

export interface OutputResult {
  format: OutputFormat;
  path: string;
  /** false: the file was already as it should be */
  written: boolean;
}

/** One id of `getent passwd|group`, or a number. */
function lookupId(db: 'passwd' | 'group', name: string, spec: string): number {
  if (/^\d+$/.test(name)) return Number(name);
  let line: string;
  try {
    line = execFileSync('getent', [db, name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    throw usageError(`--write ${spec}: no ${db === 'passwd' ? 'user' : 'group'} named "${name}" on this machine`);
  }
  const id = Number(line.split(':')[2]);
  if (!Number.isInteger(id)) throw usageError(`--write ${spec}: cannot read the id of ${db === 'passwd' ? 'user' : 'group'} "${name}"`);
  return id;
}

function parseOwner(v: string, spec: string): OutputSpec['owner'] {
  const m = /^([A-Za-z0-9_.][A-Za-z0-9_.-]*\$?)(?::([A-Za-z0-9_.][A-Za-z0-9_.-]*\$?))?$/.exec(v);
  if (!m) throw usageError(`--write ${spec}: owner must be user or user:group (names or numbers), not "${v}"`);
  const uid = lookupId('passwd', m[1], spec);
  let gid: number;
  if (m[2] !== undefined) gid = lookupId('group', m[2], spec);
  else if (/^\d+$/.test(m[1])) gid = Number(m[1]);
  else {
    // the user's primary group, as chown user: does
    gid = Number(execFileSync('getent', ['passwd', m[1]], { encoding: 'utf8' }).split(':')[3]);
  }
  return { uid, gid, name: v };
}

/** The password of a pkcs12 output: the file must be readable by its owner only; one trailing newline is ignored. */
export function readOutputPassword(file: string): string {
  const text = readKeyFile(file).replace(/\r?\n$/, '');
  if (text.length === 0) throw new CairnError('bad_password', `the PKCS#12 password file ${file} is empty`);
  return text;
}

/**
 * Parse one `--write` value. Everything that can be checked before anything is written is
 * checked here: the format, the directory (it must exist), the mode, the owner, the password
 * file. A usage error (exit 2) says what is wrong.
 */
export function parseOutputSpec(spec: string, stateDir?: string): OutputSpec {
  const [head, ...opts] = spec.split(',');
  const eq = head.indexOf('=');
  if (eq <= 0) throw usageError(`--write "${spec}": expected FORMAT=PATH[,mode=0640][,owner=user:group][,password-file=F], FORMAT one of ${OUTPUT_FORMATS.join(', ')}`);
  const format = head.slice(0, eq) as OutputFormat;
  if (!OUTPUT_FORMATS.includes(format)) throw usageError(`--write "${spec}": unknown format "${format}": use one of ${OUTPUT_FORMATS.join(', ')}`);
  const rel = head.slice(eq + 1);
  if (!rel) throw usageError(`--write "${spec}": no path after ${format}=`);
  const file = path.resolve(rel);
  const out: OutputSpec = { format, path: file, mode: KEY_MATERIAL.has(format) ? KEY_MODE : FILE_MODE };
  for (const o of opts) {
    const i = o.indexOf('=');
    const k = i < 0 ? o : o.slice(0, i);
    const v = i < 0 ? '' : o.slice(i + 1);
    if (k === 'mode') {
      if (!/^0?[0-7]{3}$/.test(v)) throw usageError(`--write "${spec}": mode must be octal, e.g. 0640, not "${v}"`);
      out.mode = parseInt(v, 8);
    } else if (k === 'owner') out.owner = parseOwner(v, spec);
    else if (k === 'password-file') {
      if (!v) throw usageError(`--write "${spec}": password-file needs a file name`);
      out.passwordFile = path.resolve(v);
    } else throw usageError(`--write "${spec}": unknown option "${k}": use mode=, owner=${format === 'pkcs12' ? ' or password-file=' : ''}`);
  }
  if (KEY_MATERIAL.has(format) && out.mode & 0o007) {
    throw usageError(`--write "${spec}": ${format} holds the private key: mode ${out.mode.toString(8).padStart(4, '0')} lets any user read it; use 0600, or 0640 with owner=user:group`);
  }
  if (out.mode & 0o111) throw usageError(`--write "${spec}": mode ${out.mode.toString(8).padStart(4, '0')} makes the file executable; certificate files need no x bit`);
  if (format === 'pkcs12') {
    if (!out.passwordFile) throw usageError(`--write "${spec}": pkcs12 needs password-file=F (a file, mode 0600, holding the password)`);
    try {
      readOutputPassword(out.passwordFile);
    } catch (e) {
      if (e instanceof CairnError) throw usageError(`--write "${spec}": ${e.message}`);
      throw e;
    }
  } else if (out.passwordFile) throw usageError(`--write "${spec}": password-file goes with pkcs12 only`);
  const dir = path.dirname(file);
  let st: fs.Stats | null = null;
  try {
    st = fs.statSync(dir);
  } catch {
    /* below */
  }
  if (!st?.isDirectory()) throw usageError(`--write "${spec}": directory ${dir} does not exist`);
  if (stateDir) {
    const own = Object.values(nodePaths(path.resolve(stateDir))).map((p) => path.resolve(p));
    if (own.includes(file) || file === path.join(path.resolve(stateDir), 'agent-status.json')) {
      throw usageError(`--write "${spec}": ${file} is one of cairn's own files in the state directory; write outputs elsewhere`);
    }
  }
  return out;
}

/** Parse every `--write`; two outputs to the same file are refused. */
export function parseOutputSpecs(specs: string[] | undefined, stateDir?: string): OutputSpec[] {
  const out = (specs ?? []).map((s) => parseOutputSpec(s, stateDir));
  const seen = new Set<string>();
  for (const o of out) {
    if (seen.has(o.path)) throw usageError(`--write: ${o.path} is given twice`);
    seen.add(o.path);
  }
  return out;
}

/** The leaf and the CA certificates after it in node.crt, as PEM. */
function pemChain(id: NodeIdentity): { leaf: string; fullchain: string } {
  return { leaf: certificateToPem(id.chain[0]), fullchain: id.chain.map((d) => certificateToPem(d)).join('') };
}

function sameAsOnDisk(o: OutputSpec, data: Buffer | null): boolean {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(o.path);
  } catch {
    return false;
  }
  if (!st.isFile() || (st.mode & 0o777) !== o.mode) return false;
  if (o.owner && (st.uid !== o.owner.uid || st.gid !== o.owner.gid)) return false;
  if (data === null) return true;
  try {
    return fs.readFileSync(o.path).equals(data);
  } catch {
    return false;
  }
}

/** Whether a PKCS#12 file on disk already holds this identity (its salts are random: compare what is inside). */
async function samePkcs12(o: OutputSpec, id: NodeIdentity, password: string): Promise<boolean> {
  if (!sameAsOnDisk(o, null)) return false;
  try {
    const entries = await parsePkcs12(fs.readFileSync(o.path), password);
    const want = [...id.chain, ...id.trust].map((d) => createHash('sha256').update(d).digest('hex')).sort();
    const have = entries.map((e) => createHash('sha256').update(e.certDer).digest('hex')).sort();
    const key = entries.find((e) => e.key)?.key;
    return JSON.stringify(want) === JSON.stringify(have) && !!key && key.export({ type: 'pkcs8', format: 'der' }).equals(id.key.export({ type: 'pkcs8', format: 'der' }));
  } catch {
    return false;
  }
}

/** A friendly name for a CA certificate in the PKCS#12 file: its CN, made unique. */
function caName(der: Buffer, used: Set<string>): string {
  const cn = /CN=([^\n,]+)/.exec(new X509Certificate(der).subject)?.[1] ?? 'ca';
  let name = cn;
  for (let i = 2; used.has(name); i++) name = `${cn} (${i})`;
  used.add(name);
  return name;
}

/** The bytes of one output, or null if it is already right on disk. */
async function contentOf(o: OutputSpec, id: NodeIdentity): Promise<Buffer | null> {
  const { leaf, fullchain } = pemChain(id);
  let text: string;
  switch (o.format) {
    case 'cert': text = leaf; break;
    case 'key': text = id.keyPem; break;
    case 'ca': text = id.caPem; break;
    case 'fullchain': text = fullchain; break;
    case 'bundle': text = fullchain + id.keyPem; break;
    case 'pkcs12': {
      const password = readOutputPassword(o.passwordFile!);
      if (await samePkcs12(o, id, password)) return null;
      const used = new Set<string>(['cairn-node']);
      // the key with its certificate (the entry Java's keytool lists as PrivateKeyEntry), then the
      // CA certificates that complete its chain and the roots the node trusts
      const entries: Pkcs12Input[] = [{ certDer: id.chain[0], friendlyName: 'cairn-node', key: id.key }];
      for (const d of [...id.chain.slice(1), ...id.trust]) {
        if (!entries.some((e) => e.certDer.equals(d))) entries.push({ certDer: d, friendlyName: caName(d, used), key: null });
      }
      return buildPkcs12(entries, password);
    }
  }
  const data = Buffer.from(text);
  return sameAsOnDisk(o, data) ? null : data;
}

/**
 * Write every output that differs from what the identity says (content, mode or owner). Each
 * output is written on its own, atomically; the first failure stops and is thrown (a
 * CairnError naming the file), the outputs before it stay written.
 */
export async function writeOutputs(specs: OutputSpec[], id: NodeIdentity): Promise<OutputResult[]> {
  const results: OutputResult[] = [];
  for (const o of specs) {
    let data: Buffer | null;
    try {
      data = await contentOf(o, id);
    } catch (e) {
      if (e instanceof CairnError) throw new CairnError(e.code, `cannot write ${o.format} output ${o.path}: ${e.message}`);
      throw new CairnError('io', `cannot write ${o.format} output ${o.path}: ${(e as Error).message}`);
    }
    if (data !== null) {
      try {
        writeFilesAtomic([{ path: o.path, data, mode: o.mode, exactMode: true, owner: o.owner }], { overwrite: true });
      } catch (e) {
        if (e instanceof CairnError) throw new CairnError(e.code, `${o.format} output: ${e.message}`);
        throw e;
      }
    }
    results.push({ format: o.format, path: o.path, written: data !== null });
  }
  return results;
}

/** "bundle=/etc/haproxy/node.pem (written), ca=/etc/haproxy/ca.pem (unchanged)" */
export function describeOutputs(r: OutputResult[]): string[] {
  return r.map((x) => `${x.format}=${x.path}${x.written ? '' : ' (unchanged)'}`);
}
