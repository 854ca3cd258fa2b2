/**
 * CA keys in a PKCS#11 token (an HSM; SoftHSM2 in tests), through pkcs11js. The key never
 * leaves the token: it is generated there (sensitive, not extractable) or found by its label,
 * and `Pkcs11Signer` asks the token to sign the bytes the CA gives it (signer.ts `CaSigner`).
 *
 * Each replica opens the token through its own module (replica.json `pkcs11`: module path,
 * token label, PIN file). The PIN is read from its file (0600) at start and kept in memory
 * only: never in the store, replica.json or a log. The store's CA row says which token and
 * which key (`key_location`), not how to reach it.
 */
import { createPublicKey, createHash, verify as nodeVerify, X509Certificate } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import type { KeyType } from '../pki/index.js';
import { IssuerInfo, issuerInfo, SignatureScheme } from '../pki/index.js';
import { CairnError, fromPki, RetryLater } from '../util/errors.js';
import { readKeyFile } from '../util/files.js';
import type { CaSigner } from './signer.js';

/** How this replica reaches its token (replica.json `pkcs11`). */
export interface Pkcs11Config {
  module: string;
  token: string;
  pinFile: string;
}

/** Where a key is, as a CA row records it (`key_location`, JSON). */
export interface Pkcs11KeyRef {
  kind: 'pkcs11';
  token: string;
  label: string;
  /** CKA_ID, hex */
  id: string;
}

export const isPkcs11Ref = (v: unknown): v is Pkcs11KeyRef =>
  typeof v === 'object' && v !== null && (v as Pkcs11KeyRef).kind === 'pkcs11' && typeof (v as Pkcs11KeyRef).label === 'string';

const EC_CURVES: Record<string, { oidDer: string; crv: string; size: number }> = {
  'ec-p256': { oidDer: '06082a8648ce3d030107', crv: 'P-256', size: 32 },
  'ec-p384': { oidDer: '06052b81040022', crv: 'P-384', size: 48 },
};
const RSA_BITS: Record<string, number> = { 'rsa-2048': 2048, 'rsa-3072': 3072, 'rsa-4096': 4096 };

/** Key types a token key can be generated as. */
export const PKCS11_KEY_TYPES = [...Object.keys(EC_CURVES), ...Object.keys(RSA_BITS)];

const err = (m: string) => new CairnError('hsm_error', m);

/** What a PKCS#11 error says, for messages (the CKR_ name). */
function ckr(e: unknown): string {
  const code = (e as { code?: number })?.code;
  if (typeof code === 'number') {
    const name = Object.entries(pkcs11js).find(([k, v]) => k.startsWith('CKR_') && v === code)?.[0];
    return name ?? `CKR 0x${code.toString(16)}`;
  }
  return (e as Error)?.message ?? String(e);
}

/**
 * PKCS#11 calls that may fail for a moment: SoftHSM2's file object store answers
 * CKR_GENERAL_ERROR to C_GetTokenInfo (and the calls after it) while another process opens the
 * same token directory — `serve --workers 2`, or two replicas sharing one token directory,
 * starting together. Retried with backoff (about 3 s in all); any other error is at once.
 */
const TRANSIENT = new Set<number>([pkcs11js.CKR_GENERAL_ERROR, pkcs11js.CKR_DEVICE_ERROR, pkcs11js.CKR_FUNCTION_FAILED]);
const RETRY_DELAYS_MS = [10, 20, 40, 80, 160, 320, 500, 500, 500, 500, 500];
const sleeper = new Int32Array(new SharedArrayBuffer(4));

/** Run a PKCS#11 call, again after a pause while it fails with a transient error; then throw `what: CKR_…` as hsm_error. */
export function withRetry<T>(what: string, fn: () => T, delays: readonly number[] = RETRY_DELAYS_MS): T {
  for (let attempt = 0; ; attempt++) {
    try {
      return fn();
    } catch (e) {
      if (e instanceof CairnError) throw e;
      const code = (e as { code?: number })?.code;
      if (typeof code === 'number' && TRANSIENT.has(code) && attempt < delays.length) {
        Atomics.wait(sleeper, 0, 0, delays[attempt]); // startup only: a synchronous pause
        continue;
      }
      throw err(`${what}: ${ckr(e)}${attempt ? ` (after ${attempt + 1} attempts)` : ''}`);
    }
  }
}

/** One loaded module per path, initialized once per process. */
const modules = new Map<string, pkcs11js.PKCS11>();
function loadModule(path: string): pkcs11js.PKCS11 {
  let m = modules.get(path);
  if (m) return m;
  m = new pkcs11js.PKCS11();
  try {
    m.load(path);
  } catch (e) {
    throw err(`cannot load the PKCS#11 module ${path}: ${(e as Error).message}`);
  }
  const p = m;
  withRetry(`the PKCS#11 module ${path} did not initialize`, () => {
    try {
      p.C_Initialize();
    } catch (e) {
      if ((e as { code?: number }).code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw e;
    }
  });
  modules.set(path, m);
  return m;
}

/** Finalize and initialize a module again (it then reads its tokens again). */
function reloadModule(path: string): pkcs11js.PKCS11 {
  const m = modules.get(path);
  modules.delete(path);
  try {
    m?.C_Finalize();
  } catch {
    /* not initialized */
  }
  try {
    m?.close();
  } catch {
    /* not loaded */
  }
  return loadModule(path);
}

/** The PIN from its file: private (0600), one line. */
export function readPin(file: string): string {
  const pin = readKeyFile(file).replace(/\r?\n$/, '');
  if (!pin) throw new CairnError('usage', `the PIN file ${file} is empty`);
  return pin;
}

/**
 * A logged-in session on a token. Operations on one session are serialized (PKCS#11 allows
 * one at a time); tokens are shared by the signers of one process.
 */
export class Pkcs11Token {
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly p: pkcs11js.PKCS11,
    private readonly session: Buffer,
    readonly label: string,
    readonly modulePath: string,
  ) {}

  private static open_ = new Map<string, Pkcs11Token>();

  /** Open (once per process) the token labelled `cfg.token` and log in with the PIN of `cfg.pinFile`. */
  static open(cfg: Pkcs11Config): Pkcs11Token {
    const k = `${cfg.module}\0${cfg.token}`;
    const had = Pkcs11Token.open_.get(k);
    if (had) return had;
    const pin = readPin(cfg.pinFile);
    let p = loadModule(cfg.module);
    const where = `the PKCS#11 token "${cfg.token}" (module ${cfg.module})`;
    // the slot list and the labels together: a label read while another process opens the
    // token directory may fail for a moment (withRetry), and is then read again with the list
    const list = () =>
      withRetry(`the PKCS#11 module ${cfg.module} could not list its tokens`, () => {
        const seen: string[] = [];
        for (const s of p.C_GetSlotList(true)) {
          const label = p.C_GetTokenInfo(s).label.trim();
          seen.push(label);
          if (label === cfg.token) return { slot: s, seen };
        }
        return { slot: undefined, seen };
      });
    let { slot, seen } = list();
    // SoftHSM2 reads its token directory at C_Initialize, and may miss a token another process
    // is opening at that moment: look again, from a fresh C_Initialize, before calling it missing
    // (only while this process has no session on the module, which a new C_Initialize would end)
    for (let again = 0; !slot && again < 4 && ![...Pkcs11Token.open_.values()].some((t) => t.modulePath === cfg.module); again++) {
      Atomics.wait(sleeper, 0, 0, 100 * 2 ** again);
      p = reloadModule(cfg.module);
      ({ slot, seen } = list());
    }
    if (!slot) {
      throw new CairnError('hsm_token_missing', `no PKCS#11 token labelled "${cfg.token}" in ${cfg.module} (tokens present: ${seen.length ? seen.map((l) => `"${l}"`).join(', ') : 'none'})`);
    }
    const session = withRetry(`${where} did not open a session`, () => p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION));
    try {
      withRetry(`${where} did not log in`, () => {
        try {
          p.C_Login(session, pkcs11js.CKU_USER, pin);
        } catch (e) {
          const code = (e as { code?: number }).code;
          if (code === pkcs11js.CKR_USER_ALREADY_LOGGED_IN) return;
          if (code === pkcs11js.CKR_PIN_INCORRECT || code === pkcs11js.CKR_PIN_LEN_RANGE) {
            throw new CairnError('hsm_login_failed', `the PKCS#11 token "${cfg.token}" refused the PIN in ${cfg.pinFile}`);
          }
          if (code === pkcs11js.CKR_PIN_LOCKED) throw new CairnError('hsm_login_failed', `the PIN of the PKCS#11 token "${cfg.token}" is locked (too many wrong PINs): unlock it with the SO PIN`);
          if (typeof code === 'number' && TRANSIENT.has(code)) throw e;
          throw new CairnError('hsm_login_failed', `cannot log in to the PKCS#11 token "${cfg.token}": ${ckr(e)}`);
        }
      });
    } catch (e) {
      try {
        p.C_CloseSession(session);
      } catch {
        /* closed with it */
      }
      throw e;
    }
    const t = new Pkcs11Token(p, session, cfg.token, cfg.module);
    Pkcs11Token.open_.set(k, t);
    return t;
  }

  /** Close every token this process opened (tests; the process end does it otherwise). */
  static closeAll(): void {
    for (const t of Pkcs11Token.open_.values()) {
      try {
        t.p.C_CloseSession(t.session);
      } catch {
        /* already closed */
      }
    }
    Pkcs11Token.open_.clear();
  }

  private serial<T>(fn: () => Promise<T> | T): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }

  private find(template: pkcs11js.Template): Buffer[] {
    return withRetry(`the PKCS#11 token "${this.label}" (module ${this.modulePath}) could not search its objects`, () => {
      this.p.C_FindObjectsInit(this.session, template); // (throws before the search is begun: no Final then)
      try {
        return this.p.C_FindObjects(this.session, 16);
      } finally {
        this.p.C_FindObjectsFinal(this.session);
      }
    });
  }

  /** Attributes of an object, as hsm_error when the token fails. */
  private attrs(h: Buffer, template: pkcs11js.Template): pkcs11js.Attribute[] {
    return withRetry(`the PKCS#11 token "${this.label}" (module ${this.modulePath}) did not read a key's attributes`, () => this.p.C_GetAttributeValue(this.session, h, template));
  }

  /** The private key labelled `label` (with CKA_ID `id` when given) and its public key (SPKI DER). */
  findKey(label: string, id?: string): { handle: Buffer; spki: Buffer; id: string } | null {
    const t: pkcs11js.Template = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_LABEL, value: label }];
    if (id) t.push({ type: pkcs11js.CKA_ID, value: Buffer.from(id, 'hex') });
    const found = this.find(t);
    if (found.length === 0) return null;
    if (found.length > 1) throw err(`the PKCS#11 token "${this.label}" holds ${found.length} private keys labelled "${label}": give a unique label`);
    const [idAttr] = this.attrs(found[0], [{ type: pkcs11js.CKA_ID }]);
    const keyId = Buffer.from((idAttr.value as Buffer) ?? Buffer.alloc(0)).toString('hex');
    const pub = this.find([{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY }, ...(keyId ? [{ type: pkcs11js.CKA_ID, value: Buffer.from(keyId, 'hex') }] : [{ type: pkcs11js.CKA_LABEL, value: label }])]);
    if (pub.length !== 1) throw err(`the PKCS#11 token "${this.label}" holds no single public key for "${label}"`);
    return { handle: found[0], spki: this.publicKeyOf(pub[0]), id: keyId };
  }

  private publicKeyOf(h: Buffer): Buffer {
    const [type] = this.attrs(h, [{ type: pkcs11js.CKA_KEY_TYPE }]);
    const tv = type.value as Buffer;
    const kt = tv.length === 8 ? Number(tv.readBigUInt64LE()) : tv.readUIntLE(0, tv.length);
    if (kt === pkcs11js.CKK_EC) {
      const [params, point] = this.attrs(h, [{ type: pkcs11js.CKA_EC_PARAMS }, { type: pkcs11js.CKA_EC_POINT }]);
      const curve = Object.values(EC_CURVES).find((c) => c.oidDer === (params.value as Buffer).toString('hex'));
      if (!curve) throw err(`a key in the PKCS#11 token "${this.label}" is on a curve cairn does not sign with`);
      let q = point.value as Buffer;
      if (q[0] === 0x04 && q.length !== 2 * curve.size + 1) q = q.subarray(q[1] & 0x80 ? 2 + (q[1] & 0x7f) : 2); // DER OCTET STRING around the point
      const x = q.subarray(1, 1 + curve.size);
      const y = q.subarray(1 + curve.size);
      return createPublicKey({ key: { kty: 'EC', crv: curve.crv, x: x.toString('base64url'), y: y.toString('base64url') }, format: 'jwk' }).export({ type: 'spki', format: 'der' });
    }
    if (kt === pkcs11js.CKK_RSA) {
      const [n, e] = this.attrs(h, [{ type: pkcs11js.CKA_MODULUS }, { type: pkcs11js.CKA_PUBLIC_EXPONENT }]);
      return createPublicKey({ key: { kty: 'RSA', n: (n.value as Buffer).toString('base64url'), e: (e.value as Buffer).toString('base64url') }, format: 'jwk' }).export({ type: 'spki', format: 'der' });
    }
    throw err(`a key in the PKCS#11 token "${this.label}" is of a type cairn does not sign with`);
  }

  /** Generate a key pair in the token: private key sensitive and not extractable. */
  generateKey(label: string, keyType: KeyType | string): { handle: Buffer; spki: Buffer; id: string; generated: Buffer[] } {
    if (this.find([{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_LABEL, value: label }]).length) {
      throw err(`the PKCS#11 token "${this.label}" already holds a key labelled "${label}"`);
    }
    const id = createHash('sha1').update(label).update(String(Date.now())).digest();
    const common = [
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_LABEL, value: label },
      { type: pkcs11js.CKA_ID, value: id },
    ];
    const priv = [...common, { type: pkcs11js.CKA_PRIVATE, value: true }, { type: pkcs11js.CKA_SIGN, value: true }, { type: pkcs11js.CKA_SENSITIVE, value: true }, { type: pkcs11js.CKA_EXTRACTABLE, value: false }];
    let pair: pkcs11js.KeyPair;
    try {
      if (EC_CURVES[keyType]) {
        pair = this.p.C_GenerateKeyPair(this.session, { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN }, [...common, { type: pkcs11js.CKA_VERIFY, value: true }, { type: pkcs11js.CKA_EC_PARAMS, value: Buffer.from(EC_CURVES[keyType].oidDer, 'hex') }], priv);
      } else if (RSA_BITS[keyType]) {
        pair = this.p.C_GenerateKeyPair(
          this.session,
          { mechanism: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN },
          [...common, { type: pkcs11js.CKA_VERIFY, value: true }, { type: pkcs11js.CKA_MODULUS_BITS, value: RSA_BITS[keyType] }, { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) }],
          priv,
        );
      } else {
        throw new CairnError('usage', `a key in a PKCS#11 token can be ${PKCS11_KEY_TYPES.join(', ')}, not ${keyType}`);
      }
    } catch (e) {
      if (e instanceof CairnError) throw e;
      throw err(`the PKCS#11 token "${this.label}" could not generate a ${keyType} key: ${ckr(e)}`);
    }
    return { handle: pair.privateKey, spki: this.publicKeyOf(pair.publicKey), id: id.toString('hex'), generated: [pair.privateKey, pair.publicKey] };
  }

  /** Delete objects this process generated (an init that failed after making its keys). */
  destroy(handles: Buffer[]): void {
    for (const h of handles) {
      try {
        this.p.C_DestroyObject(this.session, h);
      } catch {
        /* gone already */
      }
    }
  }

  /** Sign `data` with the key `handle` by `scheme` (ECDSA: the token signs the digest; RSA: PKCS#1 v1.5 with SHA-256). */
  sign(handle: Buffer, scheme: SignatureScheme, data: Buffer, ecSize: number | null): Promise<Buffer> {
    return this.serial(async () => {
      for (let attempt = 0; ; attempt++) {
        try {
          if (ecSize) {
            const digest = createHash(scheme.hash!).update(data).digest();
            this.p.C_SignInit(this.session, { mechanism: pkcs11js.CKM_ECDSA }, handle);
            const raw = await this.p.C_SignAsync(this.session, digest, Buffer.alloc(2 * ecSize));
            return rawToDer(raw);
          }
          this.p.C_SignInit(this.session, { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS }, handle);
          return await this.p.C_SignAsync(this.session, data, Buffer.alloc(1024));
        } catch (e) {
          const code = (e as { code?: number })?.code;
          if (typeof code === 'number' && TRANSIENT.has(code) && attempt < 3) {
            await new Promise((r) => setTimeout(r, 50 * 2 ** attempt)); // another process opening the token (withRetry)
            continue;
          }
          // a join or renewal that cannot be signed now: 503 with Retry-After
          throw new RetryLater('unavailable', `the PKCS#11 token "${this.label}" (module ${this.modulePath}) did not sign: ${ckr(e)}`, 5000);
        }
      }
    });
  }
}

/** An ECDSA signature r||s as DER (SEQUENCE of two INTEGERs), as X.509 carries it. */
function rawToDer(raw: Buffer): Buffer {
  const half = raw.length / 2;
  const int = (b: Buffer) => {
    let i = 0;
    while (i < b.length - 1 && b[i] === 0) i++;
    let v = b.subarray(i);
    if (v[0] & 0x80) v = Buffer.concat([Buffer.from([0]), v]);
    return Buffer.concat([Buffer.from([0x02, v.length]), v]);
  };
  const body = Buffer.concat([int(raw.subarray(0, half)), int(raw.subarray(half))]);
  return Buffer.concat([body.length < 128 ? Buffer.from([0x30, body.length]) : Buffer.from([0x30, 0x81, body.length]), body]);
}

/** Elliptic curve size of an SPKI (bytes of a coordinate), null for RSA. */
function ecSizeOf(spki: Buffer): number | null {
  const k = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  if (k.asymmetricKeyType === 'rsa') return null;
  const c = String(k.asymmetricKeyDetails?.namedCurve);
  if (c === 'prime256v1') return 32;
  if (c === 'secp384r1') return 48;
  throw err(`cairn does not sign with a ${k.asymmetricKeyType} ${c} key in a PKCS#11 token`);
}

/** A CA key in a PKCS#11 token: the CA certificate, and the token signs. */
export class Pkcs11Signer implements CaSigner {
  readonly info: IssuerInfo;
  readonly keyId: string;
  private readonly ecSize: number | null;

  constructor(
    private readonly token: Pkcs11Token,
    private readonly handle: Buffer,
    certDer: Buffer,
    spki: Buffer,
    readonly ref: Pkcs11KeyRef,
  ) {
    this.info = fromPki(() => issuerInfo(certDer));
    if (!Buffer.from(spki).equals(fromPki(() => publicKeyDerOf(certDer)))) {
      throw new CairnError('bad_ca_material', `the key "${ref.label}" in the PKCS#11 token "${ref.token}" does not belong to the CA certificate`);
    }
    this.keyId = this.info.keyId.toString('hex');
    this.ecSize = ecSizeOf(spki);
  }

  /** Open the key a CA row names, in the token this replica reaches. */
  static open(cfg: Pkcs11Config, ref: Pkcs11KeyRef, certDer: Buffer): Pkcs11Signer {
    if (ref.token !== cfg.token) {
      throw new CairnError('hsm_token_missing', `the CA key is in the PKCS#11 token "${ref.token}", but this replica is set up for "${cfg.token}"`);
    }
    const token = Pkcs11Token.open(cfg);
    const k = token.findKey(ref.label, ref.id || undefined);
    if (!k) throw new CairnError('hsm_key_missing', `the PKCS#11 token "${ref.token}" holds no key labelled "${ref.label}"`);
    return new Pkcs11Signer(token, k.handle, certDer, k.spki, ref);
  }

  async sign(tbs: Buffer): Promise<Buffer> {
    const sig = await this.token.sign(this.handle, this.info.scheme, tbs, this.ecSize);
    return sig;
  }
}

/** A signature checked against a public key (a token's first signature with a new key, before it is trusted). */
export function checkSignature(spki: Buffer, scheme: SignatureScheme, data: Buffer, sig: Buffer): boolean {
  return nodeVerify(scheme.hash, data, createPublicKey({ key: spki, format: 'der', type: 'spki' }), sig);
}

function publicKeyDerOf(certDer: Buffer): Buffer {
  return new X509Certificate(certDer).publicKey.export({ type: 'spki', format: 'der' });
}
