/**
 * The options of `init` saying where the CA keys come from (docs/ca-keys.md): the operator's
 * own CA (`--ca-cert/--ca-key`, `--client-ca-cert/--client-ca-key`), a PKCS#11 token
 * (`--pkcs11-*`), an external CA (`--external-ca`). Parsed and checked here, before anything
 * is created.
 */
import { Command } from 'commander';
import type { CaMaterial, ProvidedCas } from '../authority/clone.js';
import { CairnError } from '../util/errors.js';
import { readKeyFile, readText } from '../util/files.js';

const usage = (m: string) => new CairnError('usage', m);

export interface CaKeyFlags {
  caCert?: string;
  caKey?: string;
  clientCaCert?: string;
  clientCaKey?: string;
  fromPkcs12?: string;
}

export function addCaKeyOptions(c: Command): Command {
  return c
    .option('--ca-cert <file>', 'the cluster CA: your own root or intermediate (PEM; an intermediate followed by its chain up to the root), any subject, RSA or ECDSA')
    .option('--ca-key <file>', 'the key of --ca-cert (PEM, mode 0600)')
    .option('--client-ca-cert <file>', 'the client CA (second root clients are accepted from): your own, like --ca-cert')
    .option('--client-ca-key <file>', 'the key of --client-ca-cert (PEM, mode 0600)');
}

/** The operator's CAs given by files, checked (ca-material.ts); undefined when none is given. */
export async function casFromFiles(f: CaKeyFlags, o: { keyElsewhere?: boolean } = {}): Promise<ProvidedCas | undefined> {
  const given = f.caCert || f.caKey || f.clientCaCert || f.clientCaKey;
  if (!given) return undefined;
  if (f.fromPkcs12) throw usage('give the CAs one way: --from-pkcs12, or --ca-cert/--ca-key and --client-ca-cert/--client-ca-key');
  const { caFilesMaterial } = await import('../authority/ca-material.js');
  const { DEFAULT_CONFIG } = await import('../authority/config.js');
  const one = (certFile: string | undefined, keyFile: string | undefined, flag: string, keyless: boolean): CaMaterial | undefined => {
    if (!certFile && !keyFile) return undefined;
    if (!certFile) throw usage(`--${flag}-key goes with --${flag}-cert`);
    if (!keyFile && !keyless) throw usage(`--${flag}-cert needs its key: --${flag}-key <file>${flag === 'ca' ? ' (or the key in a PKCS#11 token: --pkcs11-key-label)' : ''}`);
    if (keyFile && keyless) throw usage(`--${flag}-key: the key is in the PKCS#11 token (--pkcs11-key-label), not in a file`);
    const m = caFilesMaterial(readText(certFile), keyFile ? readKeyFile(keyFile) : null, { what: `--${flag}-cert ${certFile}`, minLifetimeMs: DEFAULT_CONFIG.certExpiryMs });
    return { certDer: m.certDer, key: m.key, chain: m.chain };
  };
  return {
    cluster: one(f.caCert, f.caKey, 'ca', !!o.keyElsewhere),
    client: one(f.clientCaCert, f.clientCaKey, 'client-ca', false),
  };
}

export interface Pkcs11Flags {
  pkcs11Module?: string;
  pkcs11Token?: string;
  pkcs11PinFile?: string;
  pkcs11KeyLabel?: string;
}

export function addPkcs11Options(c: Command, o: { label: boolean }): Command {
  c.option('--pkcs11-module <path>', 'CA keys in a PKCS#11 token (an HSM): the module (e.g. /usr/lib/softhsm/libsofthsm2.so)')
    .option('--pkcs11-token <label>', 'the label of the token holding the CA keys')
    .option('--pkcs11-pin-file <file>', 'file holding the token\'s user PIN (mode 0600; read at every start, never stored or logged)');
  if (o.label) c.option('--pkcs11-key-label <label>', 'use the token\'s key with this label for the cluster CA (generated there if absent; the client CA\'s is "<label>-client"); with --ca-cert: that key\'s certificate');
  return c;
}

/** The PKCS#11 token given by flags, checked (all three flags, the module exists, the PIN file is private); undefined without them. */
export async function pkcs11FromFlags(f: Pkcs11Flags): Promise<{ module: string; token: string; pinFile: string } | undefined> {
  const given = [f.pkcs11Module, f.pkcs11Token, f.pkcs11PinFile].filter((v) => v !== undefined).length;
  if (given === 0) {
    if (f.pkcs11KeyLabel !== undefined) throw usage('--pkcs11-key-label goes with --pkcs11-module, --pkcs11-token and --pkcs11-pin-file');
    return undefined;
  }
  if (given < 3) throw usage('a PKCS#11 token needs all of --pkcs11-module, --pkcs11-token and --pkcs11-pin-file');
  const fs = await import('node:fs');
  if (!fs.existsSync(f.pkcs11Module!)) throw usage(`--pkcs11-module ${f.pkcs11Module}: no such file`);
  const { readPin } = await import('../authority/pkcs11.js');
  readPin(f.pkcs11PinFile!); // private, not empty: checked before anything is created
  return { module: f.pkcs11Module!, token: f.pkcs11Token!, pinFile: f.pkcs11PinFile! };
}

const collect = (v: string, acc: string[]) => [...acc, v];

export function addExternalCaOption(c: Command, what: string): Command {
  return c.option('--external-ca <spec>', `${what}: protocol=cfssl,url=https://HOST:PORT[,cacert=FILE] (repeatable: tried in order; cacert: the CA the URL's TLS certificate chains to)`, collect, [] as string[]);
}

/** The external CAs of `--external-ca` flags (cacert files read here). */
export async function externalCasFromFlags(specs: string[]) {
  const { parseExternalCa } = await import('../authority/external-ca.js');
  const { MAX_EXTERNAL_CAS } = await import('../authority/config.js');
  if (specs.length > MAX_EXTERNAL_CAS) throw usage(`at most ${MAX_EXTERNAL_CAS} --external-ca`);
  return specs.map((s) => parseExternalCa(s, (f) => readText(f)));
}
