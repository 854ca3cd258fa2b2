/**
 * The floor under every cairn row of bench/server.ts: a minimal Node HTTPS server with cairn's
 * TLS settings (`tlsContextOptions`, client certificates requested and verified) and no cairn
 * code. It answers every request with a fixed body shaped like `cfssl serve`'s sign response,
 * so the load generator's `cfssl` mode drives it unchanged (presenting a client certificate).
 * What a request costs here is what any Node server on this machine pays before its own work.
 *
 *   node dist/bench/bare-tls.js <dir with ca.pem, server.pem, server-key.pem, client.pem> <port>
 */
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { tlsContextOptions } from '../src/server/tls-context.js';

const [dir, portArg] = process.argv.slice(2);
const read = (n: string) => fs.readFileSync(path.join(dir, n), 'utf8');
// what the load generator checks: success and a PEM certificate in the result
const body = JSON.stringify({ success: true, result: { certificate: read('client.pem') } });
const server = https.createServer(
  { ...tlsContextOptions({ key: read('server-key.pem'), cert: read('server.pem'), ca: [read('ca.pem')] }), requestCert: true, rejectUnauthorized: false },
  (req, res) => {
    req.resume();
    req.on('end', () => {
      // cairn's routes look at the peer as a renewal does: refused without a verified certificate
      const authorized = (req.socket as import('node:tls').TLSSocket).authorized;
      res.writeHead(authorized ? 200 : 401, { 'content-type': 'application/json' });
      res.end(authorized ? body : '{}');
    });
  },
);
server.listen(Number(portArg), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
