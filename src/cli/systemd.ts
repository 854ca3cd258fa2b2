/**
 * systemd unit files for `cairn agent` and `cairn serve` (`… systemd-unit` prints one): restart
 * on failure, and the sandbox systemd offers (ProtectSystem=strict with only the directories
 * cairn writes made writable, no new privileges, private /tmp and /dev...). Pure text.
 */
import fs from 'node:fs';
import path from 'node:path';

/** Quote one word of a command line for systemd (ExecStart=, ReadWritePaths=): `%` and `$` are escaped too. */
export function systemdQuote(word: string): string {
  const escaped = word.replace(/%/g, '%%').replace(/\$/g, '$$$$');
  if (escaped !== '' && /^[A-Za-z0-9_@%+=:,./-]+$/.test(escaped)) return escaped;
  return `"${escaped.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`;
}

/** How to start cairn: `bin` if given, else this Node with this script. */
export function cairnCommand(bin?: string): string[] {
  if (bin) return [path.resolve(bin)];
  let script = process.argv[1] ?? 'cairn';
  try {
    script = fs.realpathSync(script);
  } catch {
    /* keep as given */
  }
  return [process.execPath, script];
}

const HARDENING = [
  'NoNewPrivileges=yes',
  'ProtectSystem=strict',
  'ProtectHome=read-only',
  'PrivateTmp=yes',
  'PrivateDevices=yes',
  'ProtectKernelTunables=yes',
  'ProtectKernelModules=yes',
  'ProtectKernelLogs=yes',
  'ProtectControlGroups=yes',
  'ProtectClock=yes',
  'ProtectHostname=yes',
  'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6',
  'RestrictNamespaces=yes',
  'RestrictRealtime=yes',
  'RestrictSUIDSGID=yes',
  'LockPersonality=yes',
  'SystemCallArchitectures=native',
];

export interface UnitOptions {
  description: string;
  /** the full command line, first word the program */
  exec: string[];
  /** directories the service writes (everything else is read-only) */
  writable: string[];
  user?: string;
  group?: string;
  restartSec: string;
  extra?: string[];
  /** comment lines at the top */
  comment: string[];
}

export function unitFile(o: UnitOptions): string {
  const uniq = [...new Set(o.writable.map((d) => path.resolve(d)))];
  return [
    ...o.comment.map((c) => `# ${c}`),
    '[Unit]',
    `Description=${o.description}`,
    'Wants=network-online.target',
    'After=network-online.target',
    '',
    '[Service]',
    'Type=simple',
    ...(o.user ? [`User=${o.user}`] : []),
    ...(o.group ? [`Group=${o.group}`] : []),
    `ExecStart=${o.exec.map(systemdQuote).join(' ')}`,
    'Restart=on-failure',
    `RestartSec=${o.restartSec}`,
    ...(o.extra ?? []),
    'UMask=0077',
    ...HARDENING,
    `ReadWritePaths=${uniq.map(systemdQuote).join(' ')}`,
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

/** The directory a `--write FORMAT=PATH[,…]` value writes into. */
export function outputDir(spec: string): string | null {
  const head = spec.split(',')[0];
  const eq = head.indexOf('=');
  return eq > 0 && head.length > eq + 1 ? path.dirname(path.resolve(head.slice(eq + 1))) : null;
}
