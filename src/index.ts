/**
 * cairn as a library. The entry point most programs want is loadNodeTls(): a node's mutual
 * TLS context (see docs/library.md). The node-side operations (join, one renewal, the agent
 * loop) and the PKI core (as `pki`) are exported too.
 */
export { loadNodeTls, NodeTls } from './agent/tls.js';
export type { ClientTarget, LocalIdentity, NodeTlsOptions, PeerIdentity, PeerRole } from './agent/tls.js';
export { join } from './agent/join.js';
export type { JoinOptions, JoinResult } from './agent/join.js';
export { renewOnce } from './agent/renew.js';
export type { RenewOptions, RenewResult } from './agent/renew.js';
export { renewalTime, renewalWindow, runAgent } from './agent/agent.js';
export type { AgentOptions } from './agent/agent.js';
export { parseJoinToken } from './agent/token.js';
export type { JoinToken } from './agent/token.js';
export type { NodeConfig } from './agent/node-state.js';
export { CairnError } from './util/errors.js';
export * as pki from './pki/index.js';
