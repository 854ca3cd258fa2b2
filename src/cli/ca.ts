import { Command, Option } from 'commander';
import { createApiCertificate, createControlCertificate, createNodeCertificate, initializeCa, loadCa } from '../authority/offline-ca.js';
import { KeyType } from '../pki/index.js';
import { HOUR_MS } from '../pki/profiles.js';
import { rotateCommand } from './rotate.js';
import { keyTypeOption, out, parseDurationArg, printJson, requireMinDuration } from './common.js';

interface LeafFlags {
  dir: string;
  caDir?: string;
  keyType: KeyType;
  expiry: number;
  force?: boolean;
  json?: boolean;
}

function leafCommand(cmd: Command): Command {
  return cmd
    .option('--dir <dir>', 'directory to write the certificate and key into', '.')
    .option('--ca-dir <dir>', 'directory holding cluster.crt and cluster.key (default: --dir)')
    .addOption(keyTypeOption())
    .addOption(new Option('--expiry <duration>', 'certificate lifetime, e.g. 365d, 720h (minimum 1h)').argParser(parseDurationArg).default(365 * 24 * HOUR_MS, '365d'))
    .option('--force', 'overwrite existing files')
    .option('--json', 'print the result as JSON');
}

function leafOpts(f: LeafFlags) {
  requireMinDuration(f.expiry, HOUR_MS, '--expiry');
  return { outDir: f.dir, keyType: f.keyType, lifetimeMs: f.expiry, force: f.force };
}

export function caCommand(): Command {
  const ca = new Command('ca').description('offline CA: create a cluster CA and certificates as files, no server needed; "ca rotate": rotate a running cluster\'s root CA');

  ca.command('initialize')
    .description('create a root CA for a cluster: cluster.crt and cluster.key (0600)')
    .argument('<cluster-name>', 'human name of the cluster (in the CA subject)')
    .option('--dir <dir>', 'directory to write into (created 0700 if missing)', '.')
    .addOption(keyTypeOption())
    .option('--force', 'overwrite an existing CA (all certificates it issued stop verifying)')
    .option('--json', 'print the result as JSON')
    .action((name: string, f: { dir: string; keyType: KeyType; force?: boolean; json?: boolean }) => {
      const r = initializeCa(name, { dir: f.dir, keyType: f.keyType, force: f.force });
      if (f.json) return printJson({ clusterId: r.clusterId, certificate: r.certPath, key: r.keyPath });
      out(`Created root CA for cluster "${name}" (cluster ID ${r.clusterId}).`);
      out(`  certificate: ${r.certPath}`);
      out(`  private key: ${r.keyPath} (keep it secret: whoever holds it can issue certificates for this cluster)`);
    });

  leafCommand(
    ca.command('create-control-certificate')
      .description('create control-<hostname>.crt/.key: a server and client certificate for the control service')
      .argument('<hostname>', 'DNS name or IP address clients use to reach the control service'),
  ).action((hostname: string, f: LeafFlags) => {
    const r = createControlCertificate(loadCa(f.caDir ?? f.dir), hostname, leafOpts(f));
    if (f.json) return printJson({ certificate: r.certPath, key: r.keyPath, serial: r.serialHex });
    out(`Created control service certificate for ${hostname}: ${r.certPath}, ${r.keyPath}`);
  });

  leafCommand(
    ca.command('create-node-certificate').description('create <uuid>.crt/.key: a node certificate named by a fresh UUID'),
  ).action((f: LeafFlags) => {
    const r = createNodeCertificate(loadCa(f.caDir ?? f.dir), leafOpts(f));
    if (f.json) return printJson({ uuid: r.uuid, certificate: r.certPath, key: r.keyPath, serial: r.serialHex });
    out(`Created node certificate for node ${r.uuid}: ${r.certPath}, ${r.keyPath}`);
    out(r.uuid);
  });

  leafCommand(
    ca.command('create-api-certificate')
      .description('create <username>.crt/.key: an API client certificate (client auth only)')
      .argument('<username>', 'the API user (in the subject CN)'),
  ).action((username: string, f: LeafFlags) => {
    const r = createApiCertificate(loadCa(f.caDir ?? f.dir), username, leafOpts(f));
    if (f.json) return printJson({ user: username, certificate: r.certPath, key: r.keyPath, serial: r.serialHex });
    out(`Created API client certificate for user ${username}: ${r.certPath}, ${r.keyPath}`);
  });

  ca.addCommand(rotateCommand());

  return ca;
}
