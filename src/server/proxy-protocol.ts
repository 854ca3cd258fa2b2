/**
 * The PROXY protocol (HAProxy's spec, v1 text and v2 binary): a TCP load balancer in front of
 * cairn (`send-proxy-v2`) prepends the real client's address to each connection, before any
 * TLS byte. With it turned on for a listener, every connection must start with a valid
 * header, or it is dropped; the address it carries is what the failed-join limiter and the
 * logs use.
 *
 * The header is read from the raw TCP socket, before the TLS server sees the connection:
 * bytes after it (the TLS ClientHello) are put back on the socket for the TLS layer.
 */
import net from 'node:net';

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** v1 headers are at most 107 bytes, CRLF included (spec 2.1) */
const V1_MAX = 107;
/** the v2 length field allows 64 KiB of TLVs; cairn accepts what HAProxy sends, with room to spare */
export const V2_MAX = 16 + 4096;

export interface ProxyAddress {
  address: string;
  port: number;
}

export type ProxyHeader =
  | { state: 'incomplete' }
  | { state: 'invalid'; reason: string }
  /** `source` is absent for LOCAL (v2: the proxy's own health check) and UNKNOWN (v1) */
  | { state: 'ok'; length: number; version: 1 | 2; source?: ProxyAddress };

const incomplete = { state: 'incomplete' } as const;
const invalid = (reason: string): ProxyHeader => ({ state: 'invalid', reason });

function ipv6(b: Buffer): string {
  const parts: string[] = [];
  for (let i = 0; i < 16; i += 2) parts.push(b.readUInt16BE(i).toString(16));
  // canonical form (compressed zeros) through the URL parser, which normalizes IPv6 hosts
  return new URL(`http://[${parts.join(':')}]/`).hostname.slice(1, -1);
}

function parseV2(buf: Buffer): ProxyHeader {
  if (buf.length < 16) return incomplete;
  const verCmd = buf[12];
  if (verCmd >> 4 !== 2) return invalid(`unsupported PROXY protocol version ${verCmd >> 4}`);
  const cmd = verCmd & 0x0f;
  if (cmd !== 0 && cmd !== 1) return invalid(`unknown PROXY v2 command ${cmd}`);
  const len = buf.readUInt16BE(14);
  const total = 16 + len;
  if (total > V2_MAX) return invalid(`PROXY v2 header of ${total} bytes is longer than ${V2_MAX}`);
  if (buf.length < total) return incomplete;
  if (cmd === 0) return { state: 'ok', length: total, version: 2 }; // LOCAL: no address, use the connection's
  const fam = buf[13];
  const body = buf.subarray(16, total);
  if (fam === 0x11 || fam === 0x12) {
    // TCP or UDP over IPv4: src(4) dst(4) sport(2) dport(2)
    if (len < 12) return invalid('PROXY v2 IPv4 address block is truncated');
    return { state: 'ok', length: total, version: 2, source: { address: [...body.subarray(0, 4)].join('.'), port: body.readUInt16BE(8) } };
  }
  if (fam === 0x21 || fam === 0x22) {
    // over IPv6: src(16) dst(16) sport(2) dport(2)
    if (len < 36) return invalid('PROXY v2 IPv6 address block is truncated');
    return { state: 'ok', length: total, version: 2, source: { address: ipv6(body.subarray(0, 16)), port: body.readUInt16BE(32) } };
  }
  if (fam === 0x00 || fam === 0x31 || fam === 0x32) return { state: 'ok', length: total, version: 2 }; // UNSPEC, UNIX: no IP address
  return invalid(`unknown PROXY v2 address family 0x${fam.toString(16)}`);
}

const PORT_RE = /^(0|[1-9][0-9]{0,4})$/;

function parseV1(buf: Buffer): ProxyHeader {
  const end = buf.indexOf('\r\n');
  if (end < 0) return buf.length >= V1_MAX ? invalid('PROXY v1 header without CRLF in 107 bytes') : incomplete;
  if (end + 2 > V1_MAX) return invalid('PROXY v1 header longer than 107 bytes');
  const line = buf.subarray(0, end).toString('latin1');
  const f = line.split(' ');
  if (f[0] !== 'PROXY') return invalid('not a PROXY header');
  if (f[1] === 'UNKNOWN') return { state: 'ok', length: end + 2, version: 1 };
  if (f.length !== 6 || (f[1] !== 'TCP4' && f[1] !== 'TCP6')) return invalid('malformed PROXY v1 header');
  const [, proto, src, dst, sport, dport] = f;
  const fam = proto === 'TCP4' ? 4 : 6;
  if (net.isIP(src) !== fam || net.isIP(dst) !== fam) return invalid('PROXY v1 header with an invalid address');
  if (!PORT_RE.test(sport) || !PORT_RE.test(dport) || Number(sport) > 65535 || Number(dport) > 65535) return invalid('PROXY v1 header with an invalid port');
  return { state: 'ok', length: end + 2, version: 1, source: { address: src, port: Number(sport) } };
}

/** Parse a PROXY header at the start of `buf` (v1 or v2). */
export function parseProxyHeader(buf: Buffer): ProxyHeader {
  if (buf.length === 0) return incomplete;
  if (buf[0] === 0x0d) {
    const n = Math.min(buf.length, V2_SIGNATURE.length);
    if (!buf.subarray(0, n).equals(V2_SIGNATURE.subarray(0, n))) return invalid('not a PROXY header');
    return parseV2(buf);
  }
  if (buf[0] === 0x50 /* P */) {
    const n = Math.min(buf.length, 6);
    if (buf.subarray(0, n).toString('latin1') !== 'PROXY '.slice(0, n)) return invalid('not a PROXY header');
    return parseV1(buf);
  }
  return invalid('not a PROXY header');
}

/** Events after which no PROXY header can come. */
const END_EVENTS = ['error', 'end', 'close'] as const;

/**
 * Read the PROXY header from a fresh socket, then call `cb` (synchronously with the last
 * chunk's event, so no socket event is missed in between) with the rest of the stream left
 * on the socket.
 */
export function readProxyHeader(socket: net.Socket, timeoutMs: number, cb: (err: Error | null, h?: { source?: ProxyAddress; version: 1 | 2 }) => void): void {
  let buf: Buffer = Buffer.alloc(0);
  let finished = false;
  const done = (err: Error | null, v?: { source?: ProxyAddress; version: 1 | 2 }) => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    socket.off('data', onData);
    for (const ev of END_EVENTS) socket.off(ev, onEnd);
    cb(err, v);
  };
  const onEnd = () => done(new Error('connection closed before a complete PROXY header'));
  const onData = (chunk: Buffer) => {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    const h = parseProxyHeader(buf);
    if (h.state === 'incomplete') {
      if (buf.length > V2_MAX) done(new Error('PROXY header too long'));
      return;
    }
    if (h.state === 'invalid') return done(new Error(h.reason));
    socket.pause();
    const rest = buf.subarray(h.length);
    if (rest.length) socket.unshift(rest);
    done(null, { source: h.source, version: h.version });
  };
  const timer = setTimeout(() => done(new Error(`no PROXY header within ${timeoutMs} ms`)), timeoutMs);
  socket.on('data', onData);
  for (const ev of END_EVENTS) socket.on(ev, onEnd);
}

const peerKey = (s: { remoteAddress?: string; remotePort?: number; localAddress?: string; localPort?: number }) =>
  `${s.remoteAddress}|${s.remotePort}|${s.localAddress}|${s.localPort}`;

/**
 * Make `server` (a TLS/HTTPS server) require a PROXY header on every connection: the header
 * is read before the server's own connection handling (TLS) starts; a connection without a
 * valid one is dropped. Returns the lookup of a connection's real client address (by its TCP
 * endpoints, which the TLS socket of a request shares with the raw socket).
 */
export function requireProxyProtocol(
  server: net.Server,
  o: { timeoutMs?: number; onDrop?: (reason: string, peer: string | undefined) => void } = {},
): (socket: { remoteAddress?: string; remotePort?: number; localAddress?: string; localPort?: number }) => string | undefined {
  const real = new Map<string, string>();
  const listeners = server.listeners('connection') as ((s: net.Socket) => void)[];
  server.removeAllListeners('connection');
  server.on('connection', (socket: net.Socket) => {
    const peer = socket.remoteAddress;
    readProxyHeader(socket, o.timeoutMs ?? 5000, (err, h) => {
      if (err || !h) {
        o.onDrop?.(err?.message ?? 'no PROXY header', peer);
        socket.destroy();
        return;
      }
      const key = peerKey(socket);
      real.set(key, h.source?.address ?? socket.remoteAddress ?? '');
      socket.once('close', () => real.delete(key));
      for (const l of listeners) l.call(server, socket);
    });
  });
  return (s) => real.get(peerKey(s));
}
