import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseProxyHeader, V2_MAX } from '../../src/server/proxy-protocol.js';

const SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
const v2 = (verCmd: number, fam: number, body: Buffer, len = body.length) => {
  const h = Buffer.alloc(4);
  h[0] = verCmd;
  h[1] = fam;
  h.writeUInt16BE(len, 2);
  return Buffer.concat([SIG, h, body]);
};
const ipv4Body = Buffer.from([192, 0, 2, 1, 10, 0, 0, 1, 0x9c, 0x40, 0x1d, 0x13]);

test('PROXY v2: TCP4, TCP6, LOCAL, TLVs after the addresses, rest of the stream untouched', () => {
  const tail = Buffer.from([0x16, 0x03, 0x01]);
  const h = parseProxyHeader(Buffer.concat([v2(0x21, 0x11, ipv4Body), tail]));
  assert.deepEqual(h, { state: 'ok', length: 28, version: 2, source: { address: '192.0.2.1', port: 40000 } });
  const six = Buffer.alloc(36);
  six.write('20010db8000000000000000000000042', 0, 'hex');
  six[31] = 1;
  six.writeUInt16BE(5555, 32);
  assert.deepEqual(parseProxyHeader(v2(0x21, 0x21, six)), { state: 'ok', length: 52, version: 2, source: { address: '2001:db8::42', port: 5555 } });
  assert.deepEqual(parseProxyHeader(v2(0x20, 0x00, Buffer.alloc(0))), { state: 'ok', length: 16, version: 2 });
  const withTlv = parseProxyHeader(v2(0x21, 0x11, Buffer.concat([ipv4Body, Buffer.from([0x04, 0x00, 0x01, 0x00])])));
  assert.equal(withTlv.state === 'ok' && withTlv.length, 32);
});

test('PROXY v2: truncated input waits for more; malformed input is refused', () => {
  const full = v2(0x21, 0x11, ipv4Body);
  for (let n = 1; n < full.length; n++) assert.equal(parseProxyHeader(full.subarray(0, n)).state, 'incomplete', `prefix of ${n}`);
  const bad: [string, Buffer][] = [
    ['wrong signature', Buffer.concat([Buffer.from('0d0a0d0a000d0a515549540b', 'hex'), Buffer.alloc(8)])],
    ['version 1 in binary', v2(0x11, 0x11, ipv4Body)],
    ['unknown command', v2(0x22, 0x11, ipv4Body)],
    ['IPv4 block too short', v2(0x21, 0x11, ipv4Body.subarray(0, 8))],
    ['IPv6 block too short', v2(0x21, 0x21, Buffer.alloc(20))],
    ['unknown family', v2(0x21, 0x41, ipv4Body)],
    ['longer than allowed', v2(0x21, 0x11, Buffer.alloc(0), V2_MAX)],
    ['TLS instead', Buffer.from([0x16, 0x03, 0x01, 0x00])],
  ];
  for (const [what, b] of bad) assert.equal(parseProxyHeader(b).state, 'invalid', what);
});

test('PROXY v1: TCP4, TCP6, UNKNOWN; bad addresses, ports and lengths refused', () => {
  assert.deepEqual(parseProxyHeader(Buffer.from('PROXY TCP4 192.0.2.1 10.0.0.1 40000 7443\r\n\x16')), { state: 'ok', length: 42, version: 1, source: { address: '192.0.2.1', port: 40000 } });
  assert.deepEqual(parseProxyHeader(Buffer.from('PROXY TCP6 2001:db8::1 ::1 1 2\r\n')).state, 'ok');
  assert.deepEqual(parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\n')), { state: 'ok', length: 15, version: 1 });
  assert.equal(parseProxyHeader(Buffer.from('PROXY TCP4 192.0.2.1 10.0.0.1 40000')).state, 'incomplete');
  for (const line of [
    'PROXY TCP4 192.0.2.300 10.0.0.1 1 2\r\n',
    'PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n',
    'PROXY TCP6 192.0.2.1 ::1 1 2\r\n',
    'PROXY TCP4 192.0.2.1 10.0.0.1 65536 2\r\n',
    'PROXY TCP4 192.0.2.1 10.0.0.1 01 2\r\n',
    'PROXY TCP4 192.0.2.1 10.0.0.1 1\r\n',
    'PROXY  TCP4 192.0.2.1 10.0.0.1 1 2\r\n',
    'PROXY UDP4 192.0.2.1 10.0.0.1 1 2\r\n',
    'PROXX TCP4',
    `PROXY TCP4 ${'1'.repeat(120)}`,
  ]) {
    assert.equal(parseProxyHeader(Buffer.from(line)).state, 'invalid', line);
  }
});
