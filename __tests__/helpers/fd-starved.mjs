// Runs under a low `ulimit -n` (os-hostility.test.mjs): takes every free descriptor, gives back
// 0, 1, 2 ... of them, and calls the pool with each, so that its every step (loading the addon,
// starting its runtime, the pool file, its locks, sockets) meets a descriptor shortage in turn.
// Prints one JSON line: what each call gave ({ ok } or { code, message }), and, with every
// descriptor back, a request and a flush.
//   node fd-starved.mjs <poolPath> <apiUrl>
import { closeSync, openSync } from "node:fs";
import { createPoolFetch, flushPool, loadPool, savePool } from "../../index.mjs";
import { asker, outcome } from "./starved-calls.mjs";

const [path, apiUrl] = process.argv.slice(2);
const f = createPoolFetch({ path });
const ask = asker(f, apiUrl);

const calls = [];
for (let spare = 0; spare <= 14; spare++) {
  const held = [];
  for (;;) {
    try {
      held.push(openSync("/dev/null", "r"));
    } catch {
      break;
    }
  }
  for (const fd of held.splice(0, spare)) closeSync(fd);
  calls.push({ spare, what: "load", ...(await outcome(async () => (await loadPool(path)).anthropic.length)) });
  calls.push({ spare, what: "request", ...(await outcome(ask)) });
  calls.push({ spare, what: "save", ...(await outcome(async () => savePool(await loadPool(path), path))) });
  for (const fd of held) closeSync(fd);
}
const after = { request: await outcome(ask), flush: await outcome(() => flushPool(path)) };
process.stdout.write(`${JSON.stringify({ calls, after })}\n`);
process.exit(0);
