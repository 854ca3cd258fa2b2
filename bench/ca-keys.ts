/**
 * Node certificate issuance through the CA key's other homes (issue 10), beside
 * issue.inprocess in the same run:
 *
 *  issue.pkcs11           parseCsr + SigningIssuer over a Pkcs11Signer: the CA key (EC P-256) in a
 *                         SoftHSM2 token this bench makes in a temp directory
 *  issue.external_cfssl   parseCsr + CfsslIssuer: POST /api/v1/cfssl/sign to a local `cfssl serve`
 *                         over TLS (a new connection per request), answer checked
 *
 * Both are skipped (no row) when softhsm2 or cfssl is not installed.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createConnection } from 'node:net';
import { tokenCas } from '../src/authority/ca-keys.js';
import { CfsslIssuer } from '../src/authority/external-ca.js';
import { Pkcs11Signer } from '../src/authority/pkcs11.js';
import { SigningIssuer } from '../src/authority/signer.js';
import { makeSerial, parseCsr } from '../src/pki/index.js';
import { nodePolicy } from '../src/authority/policy.js';
import { BenchGroup, rateRow } from './harness.js';
import { fixtures } from './fixtures.js';

const SOFTHSM = '/usr/lib/softhsm/libsofthsm2.so';
const has = (cmd: string) => spawnSync(cmd, ['--help'], { stdio: 'ignore' }).error === undefined;
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-bench-ca-'));
const cleanups: (() => void)[] = [];
process.on('exit', () => cleanups.forEach((c) => c()));

let sequence = 5_000_000n;

const group: BenchGroup = {
  name: 'issue-ca-keys',
  benches: [
    {
      name: 'issue.pkcs11',
      description: 'parseCsr + issuance signed in a SoftHSM2 token (EC P-256, CKM_ECDSA) through the CaSigner seam',
      async prepare() {
        if (!fs.existsSync(SOFTHSM)) return { op: () => undefined, rows: () => [] };
        const dir = tmp();
        cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
        fs.mkdirSync(path.join(dir, 'tokens'));
        fs.writeFileSync(path.join(dir, 'softhsm2.conf'), `directories.tokendir = ${path.join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
        process.env.SOFTHSM2_CONF = path.join(dir, 'softhsm2.conf');
        execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'bench', '--pin', '1234', '--so-pin', '5678'], { stdio: 'ignore' });
        fs.writeFileSync(path.join(dir, 'pin'), '1234\n', { mode: 0o600 });
        const cfg = { module: SOFTHSM, token: 'bench', pinFile: path.join(dir, 'pin') };
        const made = await tokenCas(cfg, {});
        const issuer = new SigningIssuer(Pkcs11Signer.open(cfg, JSON.parse(made.cluster!.keyLocation!), made.cluster!.certDer));
        const f = fixtures();
        return {
          async: true,
          op: (i) => {
            const c = f.csrs[i % f.csrs.length];
            const req = parseCsr(c.der);
            return issuer.issue({ policy: nodePolicy(made.clusterId, c.nodeId, 'worker', f.lifetimeMs), ...req, serial: makeSerial(sequence++) });
          },
          rows: (rate) => [rateRow('issue.pkcs11', rate, 'certs/s')],
        };
      },
    },
    {
      name: 'issue.external_cfssl',
      description: 'parseCsr + issuance by a local `cfssl serve` over TLS (POST /api/v1/cfssl/sign, answer checked)',
      async prepare() {
        if (!has('cfssl') || !has('openssl')) return { op: () => undefined, rows: () => [] };
        const dir = tmp();
        cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
        const d = (f: string) => path.join(dir, f);
        const ossl = (args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
        ossl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', d('ca-key.pem'), '-out', d('ca.pem'), '-days', '3650', '-subj', '/CN=Bench CFSSL Root', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
        ossl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', d('tls.key'), '-out', d('tls.pem'), '-days', '30', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
        fs.writeFileSync(d('config.json'), JSON.stringify({ signing: { default: { expiry: '2160h', usages: ['digital signature', 'key encipherment', 'server auth', 'client auth'] } } }));
        const port = 20000 + Math.floor(Math.random() * 20000);
        const p = spawn('cfssl', ['serve', '-address', '127.0.0.1', '-port', String(port), '-ca', d('ca.pem'), '-ca-key', d('ca-key.pem'), '-config', d('config.json'), '-tls-cert', d('tls.pem'), '-tls-key', d('tls.key'), '-loglevel', '5'], { stdio: 'ignore' });
        p.unref(); // the bench process exits when done; the exit hook kills cfssl
        cleanups.push(() => p.kill('SIGKILL'));
        for (let i = 0; i < 100; i++) {
          const up = await new Promise<boolean>((res) => {
            const s = createConnection(port, '127.0.0.1', () => (s.end(), res(true)));
            s.on('error', () => res(false));
          });
          if (up) break;
          await new Promise((r) => setTimeout(r, 50));
        }
        const caDer = Buffer.from(fs.readFileSync(d('ca.pem'), 'utf8').replace(/-----[^-]+-----|\s/g, ''), 'base64');
        const issuer = new CfsslIssuer(caDer, () => ({ urls: [{ protocol: 'cfssl', url: `https://127.0.0.1:${port}`, cacert: fs.readFileSync(d('tls.pem'), 'utf8') }] }), () => null);
        const f = fixtures();
        return {
          async: true,
          op: (i) => {
            const c = f.csrs[i % f.csrs.length];
            const req = parseCsr(c.der);
            return issuer.issue({ policy: nodePolicy(f.clusterId, c.nodeId, 'worker', f.lifetimeMs), ...req, serial: makeSerial(sequence++), csrDer: c.der });
          },
          rows: (rate) => [rateRow('issue.external_cfssl', rate, 'certs/s')],
        };
      },
    },
  ],
};

export default group;
