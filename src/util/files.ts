/**
 * Files with the safety a CA needs: keys created 0600 from the first byte, directories 0700,
 * atomic writes (temp file + rename or link), no silent overwrite, and refusal of key files
 * that group or others can read.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { CairnError } from './errors.js';

export const KEY_MODE = 0o600;
export const FILE_MODE = 0o644;
export const DIR_MODE = 0o700;

function describe(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  switch (err.code) {
    case 'ENOENT': return 'no such file or directory';
    case 'EACCES': case 'EPERM': return 'permission denied';
    case 'EISDIR': return 'is a directory';
    case 'ENOTDIR': return 'a path component is not a directory';
    case 'ENOSPC': return 'no space left on device';
    case 'EROFS': return 'read-only file system';
    default: return err.message ?? String(e);
  }
}

/**
 * Create a directory (and parents) with mode 0700 if it does not exist.
 *
 * Not fs.mkdirSync({ recursive: true }): on a file system that refuses new entries with ENOENT
 * although the parent exists (/proc, /sys), Node's recursive mkdir retries forever at 100% CPU.
 * Here each missing component is created once, parent first, and the first failure is final.
 */
export function ensureDir(dir: string, mode = DIR_MODE): void {
  const missing: string[] = [];
  for (let cur = path.resolve(dir); !exists(cur); ) {
    missing.push(cur);
    const parent = path.dirname(cur);
    if (parent === cur) break;
    cur = parent;
  }
  for (const d of missing.reverse()) {
    try {
      fs.mkdirSync(d, { mode });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') {
        if (d === path.resolve(dir)) break; // created meanwhile by someone else: checked below
        continue;
      }
      const why = code === 'ENOENT' && exists(path.dirname(d)) ? `${path.dirname(d)} does not allow creating entries in it` : describe(e);
      throw new CairnError('io', `cannot create directory ${dir}: ${d === path.resolve(dir) ? '' : `${d}: `}${why}`);
    }
  }
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (e) {
    throw new CairnError('io', `cannot use directory ${dir}: ${describe(e)}`);
  }
  if (!st.isDirectory()) throw new CairnError('io', `${dir} exists and is not a directory`);
}

export function readText(file: string, what = file): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new CairnError('io', `cannot read ${what}: ${describe(e)}`);
  }
}

export function readBytes(file: string, what = file): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new CairnError('io', `cannot read ${what}: ${describe(e)}`);
  }
}

/** Read a private key file, refusing one that group or others can read (like ssh). */
export function readKeyFile(file: string): string {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    throw new CairnError('io', `cannot read key file ${file}: ${describe(e)}`);
  }
  if (!st.isFile()) throw new CairnError('io', `key file ${file} is not a regular file`);
  if (st.mode & 0o077) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
    throw new CairnError(
      'key_permissions',
      `key file ${file} has mode ${mode}: group or others can access it; fix with: chmod 600 ${file}`,
    );
  }
  return readText(file, `key file ${file}`);
}

export function exists(file: string): boolean {
  try {
    fs.lstatSync(file);
    return true;
  } catch {
    return false;
  }
}

const existsError = (file: string) => new CairnError('exists', `${file} already exists; use --force to overwrite it`);

/** Refuse (before any work is done) when one of these files exists: the caller overwrites only with --force. */
export function refuseExisting(files: (string | undefined)[]): void {
  for (const f of files) if (f && exists(f)) throw existsError(f);
}

export interface PlannedFile {
  path: string;
  data: string | Buffer;
  /** the mode at creation (the process umask still applies, unless `exactMode`) */
  mode: number;
  /** set `mode` exactly, whatever the umask (files written for other programs) */
  exactMode?: boolean;
  /** owner and group to give the file before it is put in place (needs the privilege to chown) */
  owner?: { uid: number; gid: number };
}

/** Files written under temporary names next to their final place; none is in place until `commit()`. */
export interface StagedFiles {
  /** Put every file in place (all or nothing), then sync their directories. */
  commit(): void;
  /** Remove the temporary files. */
  abort(): void;
}

/**
 * Write each file to a temp file next to its final place, with its final mode (and owner)
 * from creation, fsynced. Refuses up front if any exists (unless `overwrite`). Nothing is in
 * place until commit(): a restore stages its files, commits its store transaction, then
 * commits the files.
 */
export function stageFiles(files: PlannedFile[], opts: { overwrite?: boolean } = {}): StagedFiles {
  if (!opts.overwrite) refuseExisting(files.map((f) => f.path));
  const temps: string[] = [];
  const removeTemps = () => {
    for (const t of temps) fs.rmSync(t, { force: true });
  };
  try {
    for (const f of files) {
      const tmp = path.join(path.dirname(f.path), `.${path.basename(f.path)}.${randomBytes(6).toString('hex')}.tmp`);
      let fd: number;
      try {
        fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, f.mode);
      } catch (e) {
        throw new CairnError('io', `cannot write ${f.path}: ${describe(e)}`);
      }
      temps.push(tmp);
      try {
        // owner and mode are set on the temp file: the file appears in place with both
        if (f.owner) fs.fchownSync(fd, f.owner.uid, f.owner.gid);
        if (f.exactMode) fs.fchmodSync(fd, f.mode);
        fs.writeSync(fd, typeof f.data === 'string' ? Buffer.from(f.data) : f.data);
        fs.fsyncSync(fd);
      } catch (e) {
        throw new CairnError('io', `cannot write ${f.path}: ${describe(e)}`);
      } finally {
        fs.closeSync(fd);
      }
    }
  } catch (e) {
    removeTemps();
    throw e;
  }
  return {
    abort: removeTemps,
    commit() {
      const placed: string[] = [];
      try {
        files.forEach((f, i) => {
          try {
            if (opts.overwrite) fs.renameSync(temps[i], f.path);
            else {
              fs.linkSync(temps[i], f.path); // fails if the file appeared meanwhile: never clobber
              fs.unlinkSync(temps[i]);
            }
          } catch (e) {
            const err = e as NodeJS.ErrnoException;
            if (err.code === 'EEXIST') throw existsError(f.path);
            throw new CairnError('io', `cannot write ${f.path}: ${describe(e)}`);
          }
          placed.push(f.path);
        });
      } catch (e) {
        removeTemps();
        if (!opts.overwrite) for (const p of placed) fs.rmSync(p, { force: true });
        throw e;
      }
      try {
        for (const d of new Set(files.map((f) => path.dirname(f.path)))) {
          const fd = fs.openSync(d, 'r');
          fs.fsyncSync(fd);
          fs.closeSync(fd);
        }
      } catch {
        // directory fsync is best effort
      }
    },
  };
}

/**
 * Write several files all-or-nothing: staged (temp files with their final mode, fsynced),
 * then put in place; if anything fails, the files already placed by this call are removed.
 */
export function writeFilesAtomic(files: PlannedFile[], opts: { overwrite?: boolean } = {}): void {
  stageFiles(files, opts).commit();
}
