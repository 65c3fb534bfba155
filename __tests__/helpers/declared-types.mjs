// Checks values taken at run time against the types index.d.ts declares, with the TypeScript
// compiler itself: each value is written out as a literal assigned to its declared type, and tsc
// reports what does not fit (a field declared but absent, null where the type says undefined, a
// string where it says number, a field the type does not declare). The usage file under
// __tests__/types/ checks how the types are used; this checks that they tell the truth.
import { spawnSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { tempDir } from "./temp.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const tsc = join(root, "node_modules", "typescript", "bin", "tsc");

/**
 * A TypeScript literal of `value`: `undefined` kept (JSON would drop it), a function as one that
 * fits any function type (its results are checked as values of their own).
 */
export function literal(value) {
  if (value === undefined) return "undefined";
  if (value === null) return "null";
  if (typeof value === "function") return "((..._: any[]): any => undefined)";
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : "NaN";
  if (Array.isArray(value)) return `[${value.map(literal).join(", ")}]`;
  if (typeof value === "object") {
    return `{ ${Object.entries(value)
      .map(([k, v]) => `${JSON.stringify(k)}: ${literal(v)}`)
      .join(", ")} }`;
  }
  return JSON.stringify(value);
}

/**
 * `checks`: `[name, type, value]`, `type` written against `P` (index.d.ts), e.g.
 * `"P.AccountSummary[]"` or `"Awaited<ReturnType<typeof P.refreshAccount>>"`. Resolves to the
 * compiler's complaints, each prefixed with the check's name; none when every value fits.
 */
export function typeMismatches(checks) {
  const dir = tempDir("oauth-pool-declared-");
  try {
    const head = [`import type * as P from ${JSON.stringify(join(root, "index.js"))};`, "export {};"];
    const lines = checks.map(([, type, value], i) => `const check${i}: ${type} = ${literal(value)}; void check${i};`);
    writeFileSync(join(dir, "values.ts"), [...head, ...lines].join("\n"));
    writeFileSync(
      join(dir, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          noEmit: true,
          target: "es2022",
          module: "esnext",
          moduleResolution: "bundler",
          lib: ["es2022", "dom"],
          types: [],
          skipLibCheck: true,
          typeRoots: [join(root, "node_modules", "@types")],
        },
        files: ["values.ts"],
      }),
    );
    // tsc turns on the runtime's module compile cache, which Bun (not Node 20) makes in the temp
    // directory: kept in this one, it goes with it.
    const env = { ...process.env, TMPDIR: dir, NODE_COMPILE_CACHE: join(dir, "compile-cache") };
    const r = spawnSync(process.execPath, [tsc, "-p", dir, "--pretty", "false"], { encoding: "utf8", cwd: root, env });
    const out = `${r.stdout}${r.stderr}`;
    if (r.status === 0) return [];
    const found = [];
    for (const line of out.split("\n")) {
      const m = /values\.ts\((\d+),\d+\): error (TS\d+: .*)/.exec(line);
      if (m) {
        const check = checks[Number(m[1]) - head.length - 1];
        found.push(`${check ? check[0] : "(the checks' header)"}: ${m[2]}`);
      } else if (line.trim() && !line.startsWith(" ")) found.push(line);
      else if (found.length) found[found.length - 1] += `\n${line}`;
    }
    return found.length ? found : [`tsc failed (${r.status}): ${out.slice(0, 2000)}`];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
