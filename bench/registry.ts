/**
 * Every benchmark group, in the order they run. To add benchmarks, write a module that
 * default-exports a BenchGroup (see harness.ts; issue.ts is an example) and list it here.
 */
import { BenchGroup } from './harness.js';
import floor from './floor.js';
import issue from './issue.js';
import caKeys from './ca-keys.js';
import server from './server.js';
import ha from './ha.js';
import ocsp from './ocsp.js';
import rotation from './rotation.js';

export const groups: BenchGroup[] = [floor, issue, caKeys, server, ha, ocsp, rotation];
