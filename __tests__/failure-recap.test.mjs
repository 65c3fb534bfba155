// npm test prints a test step's failures again at its end (scripts/failure-recap.mjs): checked
// against the real reports of Node's and Bun's runners on a file with one failing test among
// passing ones.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { failureRecap } from "../scripts/failure-recap.mjs";
import { removeTree, tempDir } from "./helpers/temp.mjs";

const root = join(import.meta.dirname, "..");
const fixture = `import { test } from "node:test";
import assert from "node:assert/strict";
test("first passes", () => {});
test("the one that fails", () => { assert.equal(1 + 1, 3, "sum-is-wrong-marker"); });
test("last passes", () => {});
`;

function recapOf(cmd, args, cwd) {
  // NODE_TEST_CONTEXT, set by the runner this test runs in, would make the fixture's runner
  // report to it instead of printing its own report.
  const env = { ...process.env, NO_COLOR: "1", FORCE_COLOR: "0" };
  delete env.NODE_TEST_CONTEXT;
  // Bounded: Node's runner puts no limit of its own on a test, and a hung fixture would hold the
  // whole step.
  const run = spawnSync(cmd, args, { cwd, encoding: "buffer", env, timeout: 60_000, killSignal: "SIGKILL" });
  assert.equal(run.error, undefined, `the fixture's run ends by itself: ${run.error}`);
  assert.notEqual(run.status, 0, "the fixture's run fails");
  const texts = [];
  for (const out of [run.stdout, run.stderr]) {
    const recap = failureRecap();
    // Fed in small pieces, as a pipe delivers them: lines cut anywhere are joined again.
    for (let at = 0; at < out.length; at += 7) recap.feed(out.subarray(at, at + 7));
    texts.push(recap.text());
  }
  return texts.join("\n");
}

test("a failed test's report is kept for the end, from Node's runner and from Bun's, and passing ones are not", (t) => {
  const dir = tempDir("recap-");
  t.after(() => removeTree(dir));
  writeFileSync(join(dir, "fixture.test.mjs"), fixture);
  const node = process.versions.bun ? "node" : process.execPath;
  const bun = join(root, "node_modules", ".bin", "bun");
  for (const [runner, cmd, args] of [
    ["node", node, ["--test", "--test-reporter=tap", "fixture.test.mjs"]],
    ["bun", bun, ["test", "./fixture.test.mjs"]],
  ]) {
    const text = recapOf(cmd, args, dir);
    assert.match(text, /the one that fails/, `${runner}: the failed test is named`);
    assert.match(text, /sum-is-wrong-marker/, `${runner}: with why it failed`);
    // (Bun's report quotes the failing line's source, where the other tests' names stand too.)
    assert.doesNotMatch(text, /^\s*(\(pass\)|ok \d+ - )/m, `${runner}: the passing tests' reports are left out`);
  }
});

test("a run without failures has nothing to print again, and a long recap is cut with a count", () => {
  const quiet = failureRecap();
  quiet.feed(Buffer.from("ok 1 - fine\n  ---\n  ...\n(pass) fine [1ms]\n"));
  assert.equal(quiet.text(), "");
  const loud = failureRecap();
  for (let i = 1; i <= 20; i++) loud.feed(Buffer.from(`not ok ${i} - broken ${i}\n  ---\n${"  line\n".repeat(30)}  ...\n`));
  const text = loud.text();
  assert.match(text, /^not ok 1 - broken 1$/m);
  assert.match(text, /\[and \d+ more lines\]$/);
  assert.ok(text.split("\n").length <= 401);
});
