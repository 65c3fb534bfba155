// Cold import cost: a fresh process per sample (Node, then Bun) times `await import()` of the
// library and of the plugin module, and the first native call (which loads the .node).
// Prints one JSON line: { node: {...}, bun: {...} }, each figure the median of SAMPLES runs in ms.
//   node bench/import.mjs
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const SAMPLES = 9;
const runtimes = { node: process.execPath, bun: join(root, "node_modules", ".bin", "bun") };

// Runs inside the measured process: nothing else is loaded before the timed import.
const probe = (specifier, nativeCall) => `
const t0 = performance.now();
const m = await import(${JSON.stringify(specifier)});
const imported = performance.now() - t0;
let native = null;
if (${nativeCall}) { const t1 = performance.now(); m.nativeVersion(); native = performance.now() - t1; }
console.log(JSON.stringify({ imported, native }));`;

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function measure(runtime, specifier, nativeCall) {
  const imported = [];
  const native = [];
  for (let i = 0; i < SAMPLES; i++) {
    const args = runtime === "node" ? ["--input-type=module", "-e", probe(specifier, nativeCall)] : ["-e", probe(specifier, nativeCall)];
    const r = spawnSync(runtimes[runtime], args, { cwd: root, encoding: "utf8" });
    if (r.status !== 0) throw new Error(`${runtime} ${specifier}: ${r.stderr}`);
    const out = JSON.parse(r.stdout.trim().split("\n").at(-1));
    imported.push(out.imported);
    if (out.native !== null) native.push(out.native);
  }
  return { importMs: median(imported), firstNativeCallMs: native.length ? median(native) : null };
}

const result = {};
for (const runtime of Object.keys(runtimes)) {
  result[runtime] = {
    library: measure(runtime, join(root, "index.mjs"), true),
    plugin: measure(runtime, join(root, "plugin.mjs"), false),
  };
}
console.log(JSON.stringify(result));
