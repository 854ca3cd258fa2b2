import https from 'node:https';
import tls from 'node:tls';
import { statePaths, readReplicaConfig } from '../server/state.js';
import { CairnError } from '../util/errors.js';
import { exists, readKeyFile, readText } from '../util/files.js';

/** The API address for admin calls: --server, else the listen address in the state directory. */
export function serverUrl(stateDir: string, override?: string): string {
  if (override) return override.replace(/\/+$/, '');
  const cfg = readReplicaConfig(stateDir);
  const host = cfg.listen.replace(/^(0\.0\.0\.0|\[::\]):/, '127.0.0.1:');
  return `https://${host}`;
}

/** Call the API with the admin client bundle of a state directory. */
export async function adminCall(stateDir: string, server: string | undefined, method: string, path: string, body?: unknown, opts: { raw?: boolean } = {}): Promise<any> {
  const p = statePaths(stateDir);
  if (!exists(p.adminCert)) throw new CairnError('no_admin_bundle', `no admin bundle in ${p.adminDir}: this state directory was not created by "cairn init"`);
  const key = readKeyFile(p.adminKey);
  const cert = readText(p.adminCert);
  const ca = readText(p.adminCa);
  const base = serverUrl(stateDir, server);
  const url = new URL(path, base + '/');
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method,
        key,
        cert,
        ca,
        minVersion: 'TLSv1.2',
        servername: 'ca',
        checkServerIdentity: (_h, c) => tls.checkServerIdentity('ca', c),
        headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {},
        timeout: 15_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          if (opts.raw && (res.statusCode ?? 500) < 400) return resolve(Buffer.concat(chunks));
          let data: any;
          try {
            data = JSON.parse(Buffer.concat(chunks).toString() || 'null');
          } catch {
            return reject(new CairnError('bad_response', `${base} answered ${res.statusCode} with a body that is not JSON`));
          }
          if ((res.statusCode ?? 500) >= 400) {
            return reject(new CairnError(data?.error?.code ?? 'server_error', data?.error?.message ?? `server answered ${res.statusCode}`));
          }
          resolve(data);
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (e: NodeJS.ErrnoException) => {
      const hint = e.code === 'ECONNREFUSED' ? ' (is "cairn serve" running?)' : '';
      reject(new CairnError('unreachable', `cannot reach the cairn API at ${base}: ${e.message}${hint}`));
    });
    req.end(payload);
  });
}
