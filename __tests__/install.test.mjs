// The package as installed on real machines, where its native binary can be wrong: cut short by an
// install that did not finish, a text file (a Git LFS pointer, an HTML error page saved as the
// download), built for another architecture, or forbidden (`--no-addons`). Each case is a copy of
// the package's JavaScript with the platform package in its node_modules holding that file, used
// from a child process of this runtime (Node, or Bun under `bun test`): importing never throws, a
// host plugin's hooks keep working, the first native call rejects with NATIVE_MISSING saying what
// is wrong and what to do, and the process does not die (a cut-short ELF faulted the whole host
// with SIGBUS inside dlopen). Runs under Node and Bun.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { cpSync, mkdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { unloadableReason } from "../lib/binary-check.mjs";
import { platformTriple } from "../lib/platform.mjs";
import { tempDir } from "./helpers/temp.mjs";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const TRIPLE = platformTriple();
const BINARY = join(ROOT, `oauth-pool.${TRIPLE}.node`);
const PACKAGE = `opencode-oauth-pool-${TRIPLE}`;
const elf = process.platform === "linux";

const made = [];
after(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/** A project with the package installed and `node_modules/<platform package>/<binary>` = `contents`. */
function install(contents) {
  const dir = tempDir("oauth-pool-install-");
  made.push(dir);
  const pkg = join(dir, "node_modules", "opencode-oauth-pool");
  mkdirSync(pkg, { recursive: true });
  for (const p of ["index.mjs", "plugin.mjs", "package.json", "lib", "bin"]) cpSync(join(ROOT, p), join(pkg, p), { recursive: true });
  symlinkSync(join(ROOT, "node_modules", "zod"), join(dir, "node_modules", "zod"));
  const platform = join(dir, "node_modules", PACKAGE);
  mkdirSync(platform);
  const manifest = JSON.parse(readFileSync(join(ROOT, "npm", TRIPLE, "package.json"), "utf8"));
  writeFileSync(join(platform, "package.json"), JSON.stringify(manifest));
  writeFileSync(join(platform, manifest.main), contents);
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "install-test", private: true, type: "module" }));
  return { dir, platform, binary: join(platform, manifest.main) };
}

const SCRIPT = `
  const out = {};
  try {
    const lib = await import("opencode-oauth-pool");
    const plugin = (await import("opencode-oauth-pool/plugin")).default;
    const hooks = await plugin.server({ client: {} }, { path: process.env.OAUTH_POOL_PATH });
    const config = {};
    await hooks.config(config);
    out.hooks = Object.keys(hooks).sort();
    out.provider = !!config.provider?.["anthropic-pool"];
    try { out.version = lib.nativeVersion(); } catch (e) { out.syncCode = e.code; }
    try { await lib.loadPool(process.env.OAUTH_POOL_PATH); out.loaded = true; } catch (e) { out.code = e.code; out.message = e.message; }
  } catch (e) { out.threw = String(e?.stack ?? e); }
  console.log(JSON.stringify(out));`;

/** Runs SCRIPT in the project with this runtime: `{ status, signal, out, stderr }`. */
function run(dir, args = []) {
  const child = spawn(process.execPath, [...args, "--input-type=module", "-e", SCRIPT], {
    cwd: dir,
    env: { ...process.env, OAUTH_POOL_PATH: join(dir, "pool.json") },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  return new Promise((resolve) =>
    child.on("close", (status, signal) => {
      let out = null;
      try {
        out = JSON.parse(stdout.trim().split("\n").at(-1));
      } catch {}
      resolve({ status, signal, out, stderr: stderr.slice(-2000) });
    }),
  );
}

function assertRefused(r, reason) {
  assert.equal(r.signal, null, `the process was killed by ${r.signal}: ${r.stderr}`);
  assert.equal(r.status, 0, r.stderr);
  assert.ok(r.out && !r.out.threw, `import or the plugin threw: ${r.out?.threw ?? r.stderr}`);
  assert.deepEqual(r.out.hooks, ["auth", "config", "tool"]);
  assert.equal(r.out.provider, true, "a host keeps the plugin's other hooks");
  assert.equal(r.out.syncCode, "NATIVE_MISSING");
  assert.equal(r.out.code, "NATIVE_MISSING");
  assert.match(r.out.message, reason);
  assert.doesNotMatch(r.out.message, /Require stack|\n/);
}

const good = () => readFileSync(BINARY);

test("a platform package whose binary was cut short (an install that did not finish): a coded error saying so, no crash", { skip: !elf }, async () => {
  const whole = good();
  for (const cut of [Math.floor(whole.length / 2), whole.length - 100]) {
    const { dir, platform } = install(whole.subarray(0, cut));
    const r = await run(dir);
    assertRefused(r, /is there but cannot be loaded: reinstall "opencode-oauth-pool-linux-[\w-]+" \(delete .* and run the install again\)/);
    assert.match(r.out.message, new RegExp(`cut short: ${cut} of at least \\d+ bytes`));
    assert.ok(r.out.message.includes(platform), "names the directory to delete");
  }
});

test("an empty file, a text file or another architecture's binary in the platform package: a coded error naming it", { skip: !elf }, async () => {
  const arm = Buffer.from(good());
  arm.writeUInt16LE(process.arch === "arm64" ? 62 : 183, 18);
  const cases = [
    [Buffer.alloc(0), /an empty file/],
    [Buffer.from("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 5\n"), /a text file .*Git LFS pointer/],
    [Buffer.from("<!DOCTYPE html><html><body>Not found</body></html>"), /a text file/],
    [arm, /built for (aarch64|x86-64), this machine is/],
  ];
  for (const [contents, reason] of cases) {
    const { dir } = install(contents);
    assertRefused(await run(dir), reason);
  }
});

// Found by a review: the platform package installed without its binary (a file removed, a broken
// manifest) was told to be installed, which npm answers "up to date"; one of another version
// than the JavaScript (an install that took `latest`) loaded without a word; and a platform with
// no prebuilt package was told to install a name nobody publishes (and anyone could).
test("a platform package without its binary says to reinstall it; one of another version is refused naming both", { skip: !elf }, async () => {
  const { dir, platform, binary } = install(good());
  rmSync(binary);
  const missing = await run(dir);
  assertRefused(missing, /is there but cannot be loaded: reinstall "opencode-oauth-pool-linux-[\w-]+" \(delete .* and run the install again\)/);
  assert.ok(missing.out.message.includes(platform), missing.out.message);

  const other = install(good());
  const manifest = JSON.parse(readFileSync(join(other.platform, "package.json"), "utf8"));
  writeFileSync(join(other.platform, "package.json"), JSON.stringify({ ...manifest, version: "9.9.9" }));
  const mismatched = await run(other.dir);
  const version = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version;
  assertRefused(
    mismatched,
    new RegExp(
      `is version 9\\.9\\.9, and this JavaScript is ${version.replaceAll(".", "\\.")}: install the matching one \\(npm install opencode-oauth-pool-linux-[\\w-]+@${version.replaceAll(".", "\\.")}\\)`,
    ),
  );

  // The JavaScript upgraded, the platform package (binary and manifest) a whole release behind:
  // the advice was "reinstall it", which brought back the same release (found by a review).
  const behind = install(good());
  const root = join(behind.dir, "node_modules", "opencode-oauth-pool", "package.json");
  writeFileSync(root, JSON.stringify({ ...JSON.parse(readFileSync(root, "utf8")), version: "9.9.9" }));
  const upgraded = await run(behind.dir);
  assertRefused(
    upgraded,
    new RegExp(
      `is version ${version.replaceAll(".", "\\.")}, and this JavaScript is 9\\.9\\.9: install the matching one \\(npm install opencode-oauth-pool-linux-[\\w-]+@9\\.9\\.9\\)`,
    ),
  );
  assert.doesNotMatch(upgraded.out.message, /reinstall/);

  // No binary at all: the advice names this release's version.
  const none = install(good());
  rmSync(none.platform, { recursive: true });
  assertRefused(await run(none.dir), new RegExp(`Install the optional package "opencode-oauth-pool-linux-[\\w-]+@${version.replaceAll(".", "\\.")}"`));
});

// Found by a review (2026-12-07): under Node a platform package whose manifest was left empty
// or cut short (a power cut after the install) was told to be installed, which npm answers "up to
// date"; a binary linked elsewhere named the link target's directory to delete (/dev for a link
// to /dev/null).
// Found by a review (2026-12-07, second): only the platform package's manifest was compared with
// the JavaScript's version, never the binary itself, so a binary of another version behind a
// matching manifest (a copied or stale build) loaded without a word, and another program's napi
// addon in its place failed every call with an uncoded "native.version is not a function".
test("a binary of another version behind a matching manifest, or another program's addon, is refused naming why", { skip: !elf }, async () => {
  const { dir, platform } = install(good());
  const version = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version;
  for (const manifest of [join(dir, "node_modules", "opencode-oauth-pool", "package.json"), join(platform, "package.json")]) {
    writeFileSync(manifest, JSON.stringify({ ...JSON.parse(readFileSync(manifest, "utf8")), version: "9.9.9" }));
  }
  assertRefused(
    await run(dir),
    new RegExp(`is there but cannot be loaded: reinstall .* the native addon is version ${version.replaceAll(".", "\\.")}, and this JavaScript is 9\\.9\\.9`),
  );

  const foreign = ["@napi-rs/tar-linux-x64-gnu/tar.linux-x64-gnu.node", "@napi-rs/wasm-tools-linux-x64-gnu/walrus.linux-x64-gnu.node"]
    .map((p) => join(ROOT, "node_modules", p))
    .find((p) => {
      try {
        return statSync(p).isFile();
      } catch {
        return false;
      }
    });
  if (foreign && process.arch === "x64") {
    const other = install(readFileSync(foreign));
    assertRefused(await run(other.dir), /is there but cannot be loaded: reinstall .* not opencode-oauth-pool's native addon/);
  }
});

// The binary says Cargo.toml's version and the loader asks for package.json's: bumped in one
// alone, a fresh build was refused (a review, 2026-12-07, second).
test("Cargo.toml and package.json say one version, the one the built binary says", () => {
  const cargo = /^version\s*=\s*"([^"]+)"/m.exec(readFileSync(join(ROOT, "Cargo.toml"), "utf8"))?.[1];
  const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version;
  assert.equal(cargo, pkg);
});

test("a binary linked to a file not named .node (cargo's own liboauth_pool.so) loads as a binary", { skip: !elf }, async () => {
  const { dir, binary } = install(good());
  const checkout = tempDir("oauth-pool-target-");
  made.push(checkout);
  const built = join(checkout, "liboauth_pool.so");
  writeFileSync(built, good());
  rmSync(binary);
  symlinkSync(built, binary);
  const r = await run(dir);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.out.loaded, true, JSON.stringify(r.out));
});

test("a broken platform manifest, or a binary linked elsewhere, names the package's own directory to delete", { skip: !elf }, async () => {
  for (const manifest of ["", '{"name": "opencode-oauth-pool-li']) {
    const { dir, platform } = install(good());
    writeFileSync(join(platform, "package.json"), manifest);
    const r = await run(dir);
    assertRefused(r, /is there but cannot be loaded: reinstall "opencode-oauth-pool-linux-[\w-]+" \(delete .* and run the install again\)/);
    assert.ok(r.out.message.includes(`delete ${platform} `), r.out.message);
  }
  const elsewhere = tempDir("oauth-pool-checkout-");
  made.push(elsewhere);
  const cut = join(elsewhere, "oauth-pool.node");
  writeFileSync(cut, good().subarray(0, 4096));
  for (const target of [cut, "/dev/null"]) {
    const { dir, platform, binary } = install(good());
    rmSync(binary);
    symlinkSync(target, binary);
    const r = await run(dir);
    assertRefused(r, /is there but cannot be loaded/);
    assert.ok(r.out.message.includes(`delete ${platform} `), r.out.message);
  }
});

test("32-bit ARM's local build is looked for under the name `napi build --platform` gives it", () => {
  const names = [];
  for (const [platform, arch] of [
    ["linux", "arm"],
    ["android", "arm"],
    ["linux", "arm64"],
  ]) {
    const script = `Object.defineProperty(process, "platform", { value: ${JSON.stringify(platform)} }); Object.defineProperty(process, "arch", { value: ${JSON.stringify(arch)} });
      const { platformTriple } = await import(${JSON.stringify(join(ROOT, "lib", "platform.mjs"))});
      console.log(platformTriple());`;
    const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
    names.push(r.stdout.trim());
  }
  // @napi-rs/cli's parseTriple: armv7-unknown-linux-gnueabihf, armv7-linux-androideabi.
  assert.deepEqual(names.slice(1), ["android-arm-eabi", "linux-arm64-gnu"]);
  assert.match(names[0], /^linux-arm-(gnueabihf|musleabihf)$/);
});

test("a platform with no prebuilt package is told to build from source, never to install an unpublished name", async () => {
  const { dir } = install(good());
  const script = `Object.defineProperty(process, "platform", { value: "freebsd" }); Object.defineProperty(process, "arch", { value: "riscv64" });
    const lib = await import("opencode-oauth-pool");
    try { lib.nativeVersion(); console.log(JSON.stringify({ loaded: true })); } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }`;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { cwd: dir, encoding: "utf8" });
  const out = JSON.parse(r.stdout.trim().split("\n").at(-1));
  assert.equal(out.code, "NATIVE_MISSING", r.stderr);
  assert.match(out.message, /no prebuilt native binary for freebsd-riscv64 \(prebuilt: .*linux-x64-gnu.*\); build it from a source checkout/);
  assert.doesNotMatch(out.message, /npm install opencode-oauth-pool-freebsd/);
});

test("native addons disabled (--no-addons): a coded error saying so, not advice to install what is installed", async () => {
  const { dir } = install(good());
  const r = await run(dir, ["--no-addons"]);
  assertRefused(r, /native addons are disabled in this process .*--allow-addons/);
  assert.doesNotMatch(r.out.message, /Install the optional package/);
});

// Troubleshooting names Node's permission model as the other way addons are disabled: its refusal
// must read as that too (not "install the package"), and --allow-addons must lift it.
const flags = typeof Bun === "undefined" ? process.allowedNodeEnvironmentFlags : new Set();
const permission = ["--permission", "--experimental-permission"].find((f) => flags.has(f));
test("Node's permission model without --allow-addons: the same coded error; with it, the binary loads", {
  skip: !(permission && flags.has("--allow-addons")) && "no permission model in this runtime",
}, async () => {
  const { dir } = install(good());
  const allowed = [permission, "--allow-fs-read=*", "--allow-fs-write=*", "--allow-worker", "--allow-child-process", "--no-warnings"];
  const r = await run(dir, allowed);
  assertRefused(r, /native addons are disabled in this process .*--allow-addons/);
  assert.doesNotMatch(r.out.message, /Install the optional package/);
  const loaded = await run(dir, [...allowed, "--allow-addons"]);
  assert.equal(loaded.status, 0, loaded.stderr);
  assert.equal(loaded.out.loaded, true, JSON.stringify(loaded.out));
});

// "Nothing is written next to the package (a read-only node_modules is fine)": as root a
// read-only mode proves nothing, so every entry of node_modules is compared before and after the
// library, the plugin and the CLI (a login written, the gateway key made) were used from it.
test("using the installed package (library, plugin, CLI) writes nothing into node_modules", async () => {
  const { readdirSync, lstatSync } = await import("node:fs");
  const { spawnSync } = await import("node:child_process");
  const { dir } = install(good());
  const modules = join(dir, "node_modules");
  const tree = () =>
    readdirSync(modules, { recursive: true })
      .sort()
      .map((name) => {
        const st = lstatSync(join(modules, name));
        return `${name} ${st.size} ${st.mtimeMs}`;
      });
  const before = tree();
  const used = await run(dir);
  assert.equal(used.out?.loaded, true, JSON.stringify(used.out));
  const env = { ...process.env, OAUTH_POOL_PATH: join(dir, "pool.json"), OAUTH_POOL_GATEWAY_KEY: "" };
  const cli = join(modules, "opencode-oauth-pool", "bin", "oauth-pool.mjs");
  for (const args of [["add-key", "--email", "ro@x.test"], ["list"], ["serve", "--show-key"], ["--version"]]) {
    const r = spawnSync(process.execPath, [cli, ...args], {
      cwd: dir,
      env,
      input: `${["sk", "ant", "api03", "readonly-node-modules-0123456789"].join("-")}\n`,
      encoding: "utf8",
    });
    assert.equal(r.status, 0, `${args.join(" ")}: ${r.stderr}`);
  }
  assert.deepEqual(tree(), before, "node_modules is as it was installed");
});

test("the installed binary, also through a symlinked (pnpm-like) package directory, loads", async () => {
  const { dir, platform } = install(good());
  const plain = await run(dir);
  assert.equal(plain.status, 0, plain.stderr);
  assert.equal(plain.out.loaded, true, JSON.stringify(plain.out));
  // pnpm: node_modules/<name> is a link into a store directory whose node_modules holds the
  // package's dependencies as links too.
  const store = join(dir, "node_modules", ".pnpm", "opencode-oauth-pool@0", "node_modules");
  mkdirSync(store, { recursive: true });
  cpSync(join(dir, "node_modules", "opencode-oauth-pool"), join(store, "opencode-oauth-pool"), { recursive: true });
  rmSync(join(dir, "node_modules", "opencode-oauth-pool"), { recursive: true });
  symlinkSync(join(store, "opencode-oauth-pool"), join(dir, "node_modules", "opencode-oauth-pool"));
  const moved = join(dir, "node_modules", ".pnpm", `${PACKAGE}@0`);
  mkdirSync(moved);
  cpSync(platform, join(moved, PACKAGE), { recursive: true });
  rmSync(platform, { recursive: true });
  symlinkSync(join(moved, PACKAGE), join(store, PACKAGE));
  symlinkSync(join(ROOT, "node_modules", "zod"), join(store, "zod"));
  const linked = await run(dir);
  assert.equal(linked.status, 0, linked.stderr);
  assert.equal(linked.out.loaded, true, JSON.stringify(linked.out));
});

test("the binary check passes this build and every cut of it, and leaves what it cannot read to the loader", { skip: !elf }, () => {
  assert.equal(unloadableReason(BINARY), null);
  const size = statSync(BINARY).size;
  const dir = tempDir("oauth-pool-cut-");
  made.push(dir);
  const whole = good();
  const cut = join(dir, "cut.node");
  // Any cut loses the section headers at the end, if not a segment.
  for (const n of [1, 3, 63, 64, 1000, size >> 2, size - 1]) {
    writeFileSync(cut, whole.subarray(0, n));
    assert.ok(unloadableReason(cut), `a file cut at ${n} of ${size} bytes is refused`);
  }
  // Full length with its end zeros (found by a review: dlopen faulted, SIGSEGV, under Node and Bun).
  for (const from of [0.5, 0.9, 0.98, 0.995]) {
    const zeroed = Buffer.from(whole);
    zeroed.fill(0, Math.floor(size * from));
    writeFileSync(cut, zeroed);
    assert.match(unloadableReason(cut) ?? "", /its end is zeros/, `zeros from ${from * 100}%`);
  }
  assert.equal(unloadableReason(join(dir, "missing.node")), null, "a missing file is the loader's to report");
  assert.equal(unloadableReason(BINARY, { platform: "darwin" }), null, "only ELF platforms are checked");
});

// Found by a review: Node's report looks up the host name of both ends of every open socket,
// synchronously, and the first native call of a process with connections open waited on its
// resolver (30 s with one that does not answer).
test("the libc check takes Node's report without its network part, and leaves the setting as it was", {
  skip: (typeof Bun !== "undefined" || process.platform !== "linux" || typeof process.report?.getReport !== "function") && "Node's report on Linux",
}, () => {
  const seen = [];
  const getReport = process.report.getReport;
  const before = process.report.excludeNetwork;
  process.report.getReport = (...args) => {
    seen.push(process.report.excludeNetwork);
    return getReport.apply(process.report, args);
  };
  try {
    platformTriple();
  } finally {
    process.report.getReport = getReport;
  }
  assert.deepEqual(seen, [true]);
  assert.equal(process.report.excludeNetwork, before);
});
