// Reads the pool file every few milliseconds until stdin closes, checking that every read
// parses and that the file stays 0600; prints one JSON line of counts at the end.
import { readFileSync, statSync } from "node:fs";

const path = process.argv[2];
const stats = { reads: 0, missing: 0, parseErrors: 0, badMode: 0, maxGeneration: {} };
let running = true;
process.stdin.on("end", () => (running = false));
process.stdin.on("close", () => (running = false));
process.stdin.resume();
while (running) {
  try {
    const mode = statSync(path).mode & 0o777;
    if (mode !== 0o600) stats.badMode++;
    JSON.parse(readFileSync(path, "utf8"));
    stats.reads++;
  } catch (e) {
    if (e.code === "ENOENT") stats.missing++;
    else stats.parseErrors++;
  }
  await new Promise((r) => setTimeout(r, 2));
}
process.stdout.write(`${JSON.stringify(stats)}\n`);
