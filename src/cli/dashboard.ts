import { Command } from 'commander';
import { parseHostPort, readTokens, saveToken, statePaths } from '../server/state-dir.js';
import { CairnError } from '../util/errors.js';
import { readBundle, serverUrl } from './admin-client.js';
import { closeOnSignal, out } from './common.js';

export const DEFAULT_DASHBOARD_LISTEN = '127.0.0.1:8080';

export function dashboardCommand(): Command {
  return new Command('dashboard')
    .description('serve a web dashboard of the cluster on loopback; it calls the API with an admin bundle and prints a one-time login URL')
    .option('--state-dir <dir>', 'a replica state directory: its admin bundle, join tokens and listen address are used')
    .option('--bundle <dir>', 'an admin client bundle directory (ca.pem, cert.pem, key.pem) instead of a state directory; needs --server')
    .option('--server <url>', 'API endpoint (repeatable: the next one is used when one does not answer; default: the state directory\'s listen address)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--listen <host:port>', 'where the dashboard listens (plain HTTP: keep it on loopback, reach it through an SSH tunnel)', DEFAULT_DASHBOARD_LISTEN)
    .addHelpText('after', `
Open the login URL it prints: it carries a one-time secret, and without a session every
page answers 401. A login link works once; a new one is printed after each login. Every
action goes through the API with the bundle's certificate, so the API's authorization
applies (a bundle that is not an admin's can look at nothing and change nothing).
Pages: overview, nodes, certificates, expiry, rotation, tokens, audit. See docs/dashboard.md.`)
    .action(async (f: { stateDir?: string; bundle?: string; server: string[]; listen: string }) => {
      if (!!f.stateDir === !!f.bundle) throw new CairnError('usage', 'give either --state-dir DIR or --bundle DIR');
      if (f.bundle && f.server.length === 0) throw new CairnError('usage', '--bundle needs --server URL (the API endpoints to call)');
      const { host, port } = parseHostPort(f.listen);
      // a state directory is checked first (its replica.json), then its bundle
      const endpoints = f.server.length ? f.server : [serverUrl(f.stateDir!)];
      const identity = f.stateDir ? readBundle(statePaths(f.stateDir).adminDir) : readBundle(f.bundle!);
      const { ClusterApi } = await import('../dashboard/api.js');
      const { isLoopback, startDashboard } = await import('../dashboard/server.js');
      const api = new ClusterApi(endpoints, identity);
      const memory: Record<string, string> = {};
      const tokens = f.stateDir
        ? { where: `${statePaths(f.stateDir).adminTokens}`, read: () => readTokens(f.stateDir!), save: (role: string, t: string) => saveToken(f.stateDir!, role, t) }
        : { where: 'this dashboard\'s memory only (started with --bundle)', read: () => ({ ...memory }), save: (role: string, t: string) => void (memory[role] = t) };
      if (!isLoopback(host)) {
        process.stderr.write(`cairn: warning: --listen ${f.listen} is not a loopback address: the dashboard speaks plain HTTP, so its login link and session cookie cross the network unencrypted; prefer 127.0.0.1 and an SSH tunnel\n`);
      }
      const dash = await startDashboard({
        api,
        host,
        port,
        tokens,
        onLoginUrl: (u) => out(`Log in (the previous link was used; this one works once): ${u}`),
      });
      out(`cairn dashboard on ${dash.url} (API: ${api.endpoints.join(', ')})`);
      out(`Log in (this link works once): ${dash.loginUrl()}`);
      await closeOnSignal(() => dash.close());
    });
}
