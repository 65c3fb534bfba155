// Configuration a person gets wrong: each variable, plugin option, library option and CLI flag
// given a value of the wrong shape (blank, spaced, too large for a JavaScript timer or a 32-bit
// number, another user's `~`, a misspelt name). Each is either taken as documented, with
// `oauth-pool doctor` naming it, or refused with a coded error where it is used: never another
// behaviour without a word. Runs under `node --test` and `bun test` (the CLI then runs under Bun).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { addApiKey, authorize, createPoolFetch, listAccounts, loadPool, OAuthPoolPlugin, poolConfigHook, refresh, serve } from "../index.mjs";
import { fakeClient, jsonHeaders, seedPool, tempPoolPath, useMock, withEnv } from "./helpers/pool-env.mjs";
import { createHost, loadPlugin } from "./helpers/opencode2-host.mjs";
import { runCli } from "./helpers/cli-sandbox.mjs";
import { tempDir } from "./helpers/temp.mjs";

const mock = useMock();
const pluginModule = await import("../plugin.mjs");
const tmp = tempDir("oauth-pool-config-");
after(() => rmSync(tmp, { recursive: true, force: true }));

const MAX_TIMER_MS = 2 ** 31 - 1;
const post = (f) =>
  f(`${mock.url}/v1/messages`, {
    method: "POST",
    headers: jsonHeaders,
    body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
  });

// What of this machine's environment would change what doctor reports.
const SCRUBBED = /^(oauth_pool_|https?_proxy$|all_proxy$|no_proxy$|opencode_config|xdg_config_home$)/i;

/** The CLI as a child process: a temp HOME, the given env over a scrubbed copy of ours, `cwd`. */
function cli(args, { env = {}, cwd = tmp } = {}) {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !SCRUBBED.test(k)));
  const home = join(tmp, "home");
  mkdirSync(home, { recursive: true });
  const childEnv = { ...base, HOME: home, USERPROFILE: home, XDG_CONFIG_HOME: join(home, ".config"), ...env };
  return runCli(args, { env: childEnv, cwd });
}

/** doctor --json's checks named `name`. */
async function doctorChecks(name, options) {
  const r = await cli(["doctor", "--json", "--path", join(tmp, "doctor", "pool.json")], options);
  const doc = JSON.parse(r.stdout.trim().split("\n").at(-1));
  return { code: r.code, checks: doc.checks.filter((c) => c.name === name), stderr: r.stderr };
}

test("a response timeout past the longest JavaScript timer is its longest, not a timer that fires at once (both transports)", async () => {
  // The runtime transport (Bun's default) handed 3000000000 ms to setTimeout, which fires after
  // 1 ms past 2^31 - 1: every request failed "no response headers within 3000000000 ms".
  const path = await seedPool(mock, ["timer@x.test"]);
  for (const value of ["3000000000", String(2 ** 31), "99999999999999999999"]) {
    await withEnv({ OAUTH_POOL_RESPONSE_TIMEOUT_MS: value }, async () => {
      for (const transport of ["native", "runtime"]) {
        const res = await post(createPoolFetch({ path, transport }));
        assert.equal(res.status, 200, `${transport}, ${value}`);
        await res.text();
      }
    });
  }
});

// README, Configuration: "a value the rule does not take falls back to the default and the pool
// keeps working". A timeout of 0, a negative one, one with a unit or none at all, given to a
// transport's timer as written, would fail every request at once.
test("a response timeout the rule does not take (0, negative, with a unit, not a number) is the default on both transports: requests are served", async () => {
  const path = await seedPool(mock, ["untaken@x.test"]);
  for (const value of ["0", "-1", "5s", "1.5", "0x10", "soon"]) {
    await withEnv({ OAUTH_POOL_RESPONSE_TIMEOUT_MS: value, OAUTH_POOL_TIMEOUT_MS: value }, async () => {
      for (const transport of ["native", "runtime"]) {
        const res = await post(createPoolFetch({ path, transport }));
        assert.equal(res.status, 200, `${transport}, ${value}`);
        await res.text();
      }
    });
  }
});

test("doctor: a number of milliseconds past the longest timer says what applies; blank is unset; OAUTH_POOL_LOG that logs nothing of the pool is named", async () => {
  const env = {
    OAUTH_POOL_RESPONSE_TIMEOUT_MS: "3000000000",
    OAUTH_POOL_HOLD_MAX_MS: "99999999999999999999",
    OAUTH_POOL_TIMEOUT_MS: "  ",
    OAUTH_POOL_SOFT_THRESHOLD: "",
    OAUTH_POOL_LOG: "oauth-pool=debug",
  };
  const { code, checks } = await doctorChecks("setting", { env });
  assert.equal(code, 0, "warnings only: the pool works with what applies");
  const by = Object.fromEntries(checks.map((c) => [c.variable, c]));
  for (const v of ["OAUTH_POOL_RESPONSE_TIMEOUT_MS", "OAUTH_POOL_HOLD_MAX_MS"]) {
    assert.equal(by[v]?.level, "warn", v);
    assert.match(by[v].message, /is over the most, 2147483647 \(about 24\.8 days, the longest a JavaScript timer waits\): 2147483647 applies/);
  }
  assert.equal(by.OAUTH_POOL_TIMEOUT_MS, undefined, "blank is unset: the default, without a warning");
  assert.equal(by.OAUTH_POOL_SOFT_THRESHOLD, undefined, "blank is unset");
  assert.equal(by.OAUTH_POOL_LOG?.level, "warn");
  assert.match(by.OAUTH_POOL_LOG.message, /names no target of the pool.*oauth_pool=debug/);
  const bad = await doctorChecks("setting", { env: { OAUTH_POOL_LOG: "oauth_pool=verbose" } });
  assert.match(bad.checks.find((c) => c.variable === "OAUTH_POOL_LOG").message, /not a filter.*oauth_pool=info applies/);
  // The README's "at most 60 s": a longer spread is taken as 60 s, said so.
  const spread = await doctorChecks("setting", { env: { OAUTH_POOL_JITTER_MS: "90000" } });
  assert.match(spread.checks.find((c) => c.variable === "OAUTH_POOL_JITTER_MS")?.message ?? "", /90000 is over the most, 60000: 60000 applies/);
  const good = await doctorChecks("setting", { env: { OAUTH_POOL_LOG: "oauth_pool=debug", OAUTH_POOL_JITTER_MS: " 500 " } });
  assert.deepEqual(good.checks.map((c) => [c.variable, c.level]).sort(), [
    ["OAUTH_POOL_JITTER_MS", "ok"],
    ["OAUTH_POOL_LOG", "ok"],
  ]);
});

test("doctor: a variable named like the pool's that it does not read is named, with the one meant", async () => {
  const { code, checks } = await doctorChecks("variable", {
    env: { oauth_pool_path: "/tmp/x.json", OAUTH_POOL_TIMEOUT: "5000", OAUTH_POOL_GATEWAY_KEY: "g".repeat(20) },
  });
  assert.equal(code, 0);
  const by = Object.fromEntries(checks.map((c) => [c.variable, c]));
  assert.deepEqual(Object.keys(by).sort(), ["OAUTH_POOL_TIMEOUT", "oauth_pool_path"]);
  assert.match(by.oauth_pool_path.message, /not a variable of the pool, and is ignored: did you mean OAUTH_POOL_PATH\? \(names are upper case\)/);
  assert.match(by.OAUTH_POOL_TIMEOUT.message, /did you mean OAUTH_POOL_TIMEOUT_MS\?/);
  assert.ok(checks.every((c) => c.level === "warn"));
});

test("a pool path with spaces around it is the path, not a file named so under the working directory", async () => {
  const path = await seedPool(mock, ["spaced@x.test"]);
  const spaced = ` ${path} \n`;
  assert.deepEqual(
    (await listAccounts(spaced)).map((a) => a.email),
    ["spaced@x.test"],
  );
  await withEnv({ OAUTH_POOL_PATH: spaced }, async () => {
    assert.deepEqual(
      (await listAccounts()).map((a) => a.email),
      ["spaced@x.test"],
    );
  });
  const r = await cli(["list", "--json"], { env: { OAUTH_POOL_PATH: spaced } });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /spaced@x\.test/);
});

// README, Configuration: "Blank is unset (the default, no warning), as for every variable of the
// pool (`OAUTH_POOL_PATH=` too; one of spaces only is INVALID_ARGUMENT)". A shell's
// `OAUTH_POOL_PATH=` handed over as "" (Bun hands over what process.env holds) is the default pool.
test("every variable of the contract's table set empty, after the import, is its default", async () => {
  // A shell's `VAR=` or a service file's empty line hands over "": each is unset, read at the
  // call (CONTRACT.md "Configuration"), not a blank endpoint, key, store or filter.
  const home = tempDir("oauth-pool-empty-vars-");
  const blank = ["PATH", "TOKEN_URL", "API_URL", "LOG", "HOLD_MAX_MS", "STORE", "STORE_KEY", "GATEWAY_KEY"];
  await withEnv({ HOME: home, USERPROFILE: home, ...Object.fromEntries(blank.map((v) => [`OAUTH_POOL_${v}`, ""])) }, async () => {
    const api = await import("../lib/api.mjs");
    const endpoints = Object.fromEntries(api.checkEndpoints().map((e) => [e.variable, e]));
    assert.equal(endpoints.OAUTH_POOL_TOKEN_URL.effective, "https://platform.claude.com/v1/oauth/token");
    assert.equal(endpoints.OAUTH_POOL_API_URL.effective, "https://api.anthropic.com/");
    assert.ok(
      Object.values(endpoints).every((e) => e.ok && e.proxy === null),
      JSON.stringify(endpoints),
    );
    assert.deepEqual(api.checkSettings(), [], "no setting is set");
    await addApiKey("fake-console-key-empty-vars", { email: "empty@x.test" });
    const file = join(home, ".aidevops", "oauth-pool.json");
    assert.deepEqual(
      JSON.parse(readFileSync(file, "utf8")).anthropic.map((a) => a.email),
      ["empty@x.test"],
      "the default pool file, not a store",
    );
    assert.deepEqual(
      (await loadPool()).anthropic.map((a) => a.email),
      ["empty@x.test"],
    );
    const key = api.gatewayKey();
    assert.ok(key.length >= 32, "a key is generated, not the blank one");
  });
});

test("OAUTH_POOL_PATH set empty is the default pool, as if unset; spaces only are INVALID_ARGUMENT", async () => {
  const home = mkdtempSync(join(tmp, "home-"));
  await seedPool(mock, ["default@x.test"], { path: join(home, ".aidevops", "oauth-pool.json") });
  await withEnv({ HOME: home, USERPROFILE: home, OAUTH_POOL_PATH: "", OAUTH_POOL_STORE: undefined }, async () => {
    assert.deepEqual(
      (await listAccounts()).map((a) => a.email ?? a.name),
      ["default@x.test"],
    );
  });
  await withEnv({ HOME: home, USERPROFILE: home, OAUTH_POOL_PATH: " \t ", OAUTH_POOL_STORE: undefined }, async () => {
    await assert.rejects(listAccounts(), (e) => e.code === "INVALID_ARGUMENT" && /OAUTH_POOL_PATH is blank/.test(e.message));
  });
});

test("a pool path in another user's home (~name) is refused by the variable, the library and the CLI, as by the plugin option", async () => {
  const refused = (e) => e.code === "INVALID_ARGUMENT" && /only ~\/ \(your home\) is expanded/.test(e.message);
  await assert.rejects(loadPool("~nobody-here/pool.json"), refused);
  await withEnv({ OAUTH_POOL_PATH: "~nobody-here/pool.json", OAUTH_POOL_STORE: undefined }, async () => {
    await assert.rejects(listAccounts(), refused);
  });
  const cwd = join(tmp, "tilde");
  mkdirSync(cwd, { recursive: true });
  const r = await cli(["list", "--json"], { env: { OAUTH_POOL_PATH: "~nobody-here/pool.json" }, cwd });
  assert.equal(r.code, 1, r.stdout);
  assert.equal(JSON.parse(r.stdout).error.code, "INVALID_ARGUMENT");
  // The plugin option says the same (shared.mjs poolPath).
  await assert.rejects(OAuthPoolPlugin({ client: fakeClient().client }, { path: "~nobody-here/pool.json" }), (e) => e.code === "INVALID_ARGUMENT");
});

test("a pool path that is the refresh journal's file is refused, by the variable, the library and the CLI: its first refresh replaced every account with the journal", async () => {
  const home = join(tmp, "journal-home");
  mkdirSync(join(home, ".aidevops"), { recursive: true });
  // Spelt through another directory, as a symlinked or relative path would be.
  const path = join(home, "elsewhere", "..", ".aidevops", "oauth-pool-refreshes.json");
  mkdirSync(join(home, "elsewhere"), { recursive: true });
  await seedPool(mock, ["journal@x.test"], { expired: ["journal@x.test"], path });
  const before = readFileSync(path, "utf8");
  const refreshesBefore = mock.stats().perFamily["journal@x.test"].refreshCalls;
  const refused = (e) => e.code === "INVALID_ARGUMENT" && /refresh journal's file/.test(e.message);
  await withEnv({ HOME: home, OAUTH_POOL_PATH: path, OAUTH_POOL_STORE: undefined }, async () => {
    const poolFetch = createPoolFetch();
    await assert.rejects(post(poolFetch), refused);
    await assert.rejects(listAccounts(), refused);
  });
  await withEnv({ HOME: home }, async () => {
    await assert.rejects(loadPool(path), refused);
    await assert.rejects(loadPool(`${path}.lock`), refused);
  });
  const r = await cli(["list", "--json"], { env: { HOME: home, OAUTH_POOL_PATH: path } });
  assert.equal(r.code, 1, r.stdout);
  assert.equal(JSON.parse(r.stdout).error.code, "INVALID_ARGUMENT");
  assert.equal(readFileSync(path, "utf8"), before, "the pool is as it was");
  assert.equal(mock.stats().perFamily["journal@x.test"].refreshCalls, refreshesBefore, "its token was not presented");
});

test("OAUTH_POOL_API_URL with spaces around it, or blank, gives OpenCode the baseURL the addon uses", async () => {
  const config = async () => {
    const c = {};
    await poolConfigHook(c, { path: tempPoolPath() });
    return c.provider["anthropic-pool"].options.baseURL;
  };
  await withEnv({ OAUTH_POOL_API_URL: `  ${mock.url}/ \t` }, async () => {
    assert.equal(await config(), `${mock.url}/v1`);
  });
  await withEnv({ OAUTH_POOL_API_URL: "   " }, async () => {
    assert.equal(await config(), "https://api.anthropic.com/v1");
  });
  // The provider's fetch takes that baseURL as the pool's origin.
  const path = await seedPool(mock, ["based@x.test"]);
  await withEnv({ OAUTH_POOL_API_URL: ` ${mock.url} ` }, async () => {
    const c = {};
    await poolConfigHook(c, { path });
    const { baseURL, fetch } = c.provider["anthropic-pool"].options;
    const res = await fetch(`${baseURL}/messages`, {
      method: "POST",
      headers: jsonHeaders,
      body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
    });
    assert.equal(res.status, 200);
    assert.equal(res.poolAccount, "based@x.test");
    await res.text();
  });
});

// README, Configuration: OAUTH_POOL_API_URL is "scheme, host and port only". OpenCode's provider
// gets `<it>/v1`: a query or a fragment (even a bare `?`) ended every request's path there
// (`…/?x=1/v1/messages`, a 404 at `/`) and a user name or password was refused by fetch, while
// doctor called each ok. Each is refused where requests read it, and doctor says so.
test("OAUTH_POOL_API_URL with a query, a fragment or a user name is refused with INSECURE_ENDPOINT naming it, by a request and by doctor, its password not repeated", async () => {
  const path = await seedPool(mock, ["origin@x.test"]);
  const host = new URL(mock.url).host;
  const before = mock.requests.length;
  for (const value of [`${mock.url}/?x=1`, `${mock.url}?`, `${mock.url}#v1`, `http://user:hunter2@${host}`]) {
    await withEnv({ OAUTH_POOL_API_URL: value }, async () => {
      const c = {};
      await poolConfigHook(c, { path });
      const { baseURL, fetch } = c.provider["anthropic-pool"].options;
      await assert.rejects(
        post((url, init) => fetch(url.replace(`${mock.url}/v1`, baseURL), init)),
        (e) => /^(INSECURE_ENDPOINT|INVALID_ARGUMENT)$/.test(e.code) && !e.message.includes("hunter2"),
        value,
      );
      if (!value.includes("@")) {
        await assert.rejects(post(createPoolFetch({ path })), (e) => e.code === "INSECURE_ENDPOINT" && /OAUTH_POOL_API_URL/.test(e.message), value);
      }
    });
  }
  assert.equal(mock.requests.length, before, "nothing was sent");
  const { code, checks } = await doctorChecks("endpoint", { env: { OAUTH_POOL_API_URL: `http://user:hunter2@${host}/?x=1` } });
  assert.equal(code, 3);
  const api = checks.find((c) => c.variable === "OAUTH_POOL_API_URL");
  assert.equal(api?.level, "problem", JSON.stringify(checks));
  assert.match(api.message, /user name or password.*INSECURE_ENDPOINT/);
  assert.doesNotMatch(JSON.stringify(checks), /hunter2|x=1/);
});

// README, Configuration: OAUTH_POOL_TOKEN_URL follows the API URL's rule. A user name or password
// in it went to the token endpoint as a Basic authorization header with every exchange and
// refresh, and a query went along; doctor called it ok. Each is refused before anything is sent.
test("OAUTH_POOL_TOKEN_URL with a user name, a password, a query or a fragment is refused with INSECURE_ENDPOINT naming it, nothing sent, by refresh and by doctor", async () => {
  const { host, pathname } = new URL(mock.tokenUrl);
  const before = mock.tokenRequests.length;
  for (const value of [
    `http://user:hunter2@${host}${pathname}`,
    `http://hunter2@${host}${pathname}`,
    `http://:hunter2@${host}${pathname}`,
    `${mock.tokenUrl}?client_secret=hunter2`,
    `${mock.tokenUrl}?`,
    `${mock.tokenUrl}#hunter2`,
  ]) {
    await withEnv({ OAUTH_POOL_TOKEN_URL: value }, async () => {
      await assert.rejects(
        refresh("rt-not-sent"),
        (e) => e.code === "INSECURE_ENDPOINT" && /OAUTH_POOL_TOKEN_URL/.test(e.message) && !e.message.includes("hunter2"),
        value,
      );
    });
  }
  assert.equal(mock.tokenRequests.length, before, "nothing was sent to the token endpoint");
  const { code, checks } = await doctorChecks("endpoint", { env: { OAUTH_POOL_TOKEN_URL: `http://user:hunter2@${host}${pathname}` } });
  assert.equal(code, 3);
  const token = checks.find((c) => c.variable === "OAUTH_POOL_TOKEN_URL");
  assert.equal(token?.level, "problem", JSON.stringify(checks));
  assert.match(token.message, /user name or password.*INSECURE_ENDPOINT/);
  assert.doesNotMatch(JSON.stringify(checks), /hunter2/);
});

// README, Configuration: NODE_EXTRA_CA_CERTS and SSL_CERT_FILE are "extra trusted roots (PEM) for
// the Rust client ... read when the first client is built". A path that is not a PEM file (a
// directory, a file of something else, nothing) is skipped. On Linux the TLS library also reads
// SSL_CERT_FILE itself, with a plain read: a FIFO no one writes held every request (and doctor)
// for ever, /dev/zero filled memory until the process died. Those are refused, coded. Node reads
// NODE_EXTRA_CA_CERTS itself at its start, so the FIFO and the device go in SSL_CERT_FILE.
test("SSL_CERT_FILE naming a FIFO or a device is INVALID_ARGUMENT, not a hang or memory filled; a directory, a file that is not PEM or nothing is skipped and requests are answered", {
  skip: process.platform !== "linux" && "the TLS library reads SSL_CERT_FILE itself on Linux",
}, async () => {
  const dir = mkdtempSync(join(tmp, "ca-"));
  const fifo = join(dir, "fifo.pem");
  const made = spawnSync("mkfifo", [fifo]);
  assert.equal(made.status, 0, String(made.stderr));
  const notPem = join(dir, "ca.pem");
  writeFileSync(notPem, "not a certificate\n");
  const online = async (extra, sslCertFile) => {
    const env = { OAUTH_POOL_API_URL: mock.url, OAUTH_POOL_TOKEN_URL: mock.tokenUrl, NODE_EXTRA_CA_CERTS: extra, SSL_CERT_FILE: sslCertFile };
    const { code, stdout } = await cli(["doctor", "--online", "--json", "--path", join(tmp, "doctor", "pool.json")], { env });
    const { checks } = JSON.parse(stdout.trim().split("\n").at(-1));
    const reach = checks.filter((c) => c.name === "reach");
    assert.equal(reach.length, 2, `${sslCertFile}: ${stdout}`);
    return { code, reach, endpoints: checks.filter((c) => c.name === "endpoint") };
  };
  for (const [extra, sslCertFile, kind] of [
    [dir, fifo, "a FIFO"],
    [notPem, "/dev/zero", "a character device"],
  ]) {
    const { code, reach, endpoints } = await online(extra, sslCertFile);
    assert.equal(code, 3);
    assert.equal(endpoints.length, 2);
    for (const c of [...reach, ...endpoints]) {
      assert.equal(c.level, "problem", JSON.stringify(c));
      assert.equal(c.code, "INVALID_ARGUMENT");
      assert.ok(c.message.includes(`SSL_CERT_FILE (${sslCertFile}) is ${kind}`), c.message);
    }
  }
  for (const [extra, sslCertFile] of [
    [dir, notPem],
    [join(dir, "missing.pem"), dir],
    [notPem, join(dir, "missing", "ca.pem")],
  ]) {
    const { reach } = await online(extra, sslCertFile);
    assert.ok(
      reach.every((c) => c.level === "ok" && c.reached),
      `${extra} / ${sslCertFile}: ${JSON.stringify(reach)}`,
    );
  }
});

// README, Configuration: the TLS library also reads every regular file of SSL_CERT_DIR itself,
// a line at a time: a huge file there (a disk image, a sparse file of zeros, a symlink to one)
// was read into memory whole. Such a file is refused, coded and named; the FIFOs, devices and
// files that are not PEM it skips are skipped, and requests are answered.
test("a file in SSL_CERT_DIR larger than a CA bundle, or a symlink to one, is INVALID_ARGUMENT naming it; a FIFO, a device or a file that is not PEM there is skipped", {
  skip: process.platform !== "linux" && "the TLS library reads SSL_CERT_DIR itself on Linux",
}, async () => {
  const online = async (sslCertDir) => {
    const env = { OAUTH_POOL_API_URL: mock.url, OAUTH_POOL_TOKEN_URL: mock.tokenUrl, SSL_CERT_DIR: sslCertDir };
    const { code, stdout } = await cli(["doctor", "--online", "--json", "--path", join(tmp, "doctor", "pool.json")], { env });
    const { checks } = JSON.parse(stdout.trim().split("\n").at(-1));
    return { code, checks: checks.filter((c) => c.name === "reach" || c.name === "endpoint") };
  };
  const skipped = mkdtempSync(join(tmp, "certdir-"));
  assert.equal(spawnSync("mkfifo", [join(skipped, "fifo.pem")]).status, 0);
  symlinkSync("/dev/zero", join(skipped, "zero.pem"));
  writeFileSync(join(skipped, "notes.pem"), "not a certificate\n");
  const answered = await online(skipped);
  assert.equal(answered.checks.length, 4, JSON.stringify(answered.checks));
  assert.ok(
    answered.checks.every((c) => (c.name === "reach" ? c.level === "ok" && c.reached : c.level !== "problem")),
    JSON.stringify(answered.checks),
  );

  // Sparse: no disk is used, and the library would read it as one line of zeros.
  const elsewhere = mkdtempSync(join(tmp, "big-"));
  const image = join(elsewhere, "disk.img");
  writeFileSync(image, "");
  truncateSync(image, 64 * 1024 * 1024);
  const linked = mkdtempSync(join(tmp, "certdir-"));
  symlinkSync(image, join(linked, "0a1b2c3d.0"));
  for (const [dir, named] of [
    [`${skipped}:${elsewhere}`, image],
    [linked, join(linked, "0a1b2c3d.0")],
  ]) {
    const { code, checks } = await online(dir);
    assert.equal(code, 3);
    assert.equal(checks.length, 4, JSON.stringify(checks));
    for (const c of checks) {
      assert.equal(c.level, "problem", JSON.stringify(c));
      assert.equal(c.code, "INVALID_ARGUMENT");
      assert.ok(c.message.includes(`${named} in SSL_CERT_DIR is larger than`), c.message);
    }
  }
});

// README, Configuration: OAUTH_POOL_GATEWAY_KEY is "at least 16 visible ASCII characters, else
// INVALID_ARGUMENT", and blank is unset (a key generated beside the pool). A key a client could
// not present (a space, a tab, a non-ASCII letter) or could guess (too short) must not start a
// gateway nobody can use, and the refusal must not repeat the key.
test("OAUTH_POOL_GATEWAY_KEY too short, too long or not visible ASCII is INVALID_ARGUMENT without the key in it; blank generates one; spaces around it are dropped", async () => {
  const refused = [
    "fifteen-chars-k",
    "has a space in-the-middle",
    "tab\tinside-the-key-text",
    "caf\u00e9-key-with-accent",
    "\u00a0no-break-spaces-around\u00a0",
    // Longer than any header value the pool takes: refused as too short, it was said to be.
    "k".repeat(4097),
  ];
  for (const key of refused) {
    const path = tempPoolPath();
    await withEnv({ OAUTH_POOL_GATEWAY_KEY: key }, async () => {
      await assert.rejects(
        serve({ port: 0, path }),
        (e) => e.code === "INVALID_ARGUMENT" && /OAUTH_POOL_GATEWAY_KEY must be 16 to 4,096 visible ASCII/.test(e.message) && !e.message.includes(key.trim()),
        JSON.stringify(key),
      );
    });
    assert.throws(() => readFileSync(`${path}.gateway-key`), { code: "ENOENT" }, "no key file made for a refused key");
  }
  for (const [key, generated] of [
    ["   ", true],
    ["  sixteen-chars-ky  ", false],
  ]) {
    const path = tempPoolPath();
    await withEnv({ OAUTH_POOL_GATEWAY_KEY: key }, async () => {
      const gateway = await serve({ port: 0, path });
      await gateway.close(0);
    });
    let made = true;
    try {
      readFileSync(`${path}.gateway-key`);
    } catch {
      made = false;
    }
    assert.equal(made, generated, JSON.stringify(key));
  }
});

test("serve and close refuse numbers the addon would wrap (2^32 ms became 100 ms); the CLI flags say so too", async () => {
  const path = tempPoolPath();
  await withEnv({ OAUTH_POOL_GATEWAY_KEY: "gateway-key-for-tests-only" }, async () => {
    for (const [k, v] of [
      ["headerTimeoutMs", 2 ** 32],
      ["bodyTimeoutMs", 2 ** 32 + 50],
      ["maxConnections", 2 ** 32],
      ["headerTimeoutMs", MAX_TIMER_MS + 1],
    ]) {
      await assert.rejects(
        serve({ port: 0, path, [k]: v }),
        (e) => e.code === "INVALID_ARGUMENT" && e.message.includes(k) && e.message.includes(String(MAX_TIMER_MS)),
        `${k}: ${v}`,
      );
    }
    const gateway = await serve({ port: 0, path, headerTimeoutMs: MAX_TIMER_MS });
    try {
      for (const drain of [-1, 2 ** 32, 1.5, "10"]) {
        await assert.rejects(gateway.close(drain), (e) => e.code === "INVALID_ARGUMENT" && /drainMs/.test(e.message), String(drain));
      }
    } finally {
      await gateway.close(0);
    }
  });
  for (const flag of ["--header-timeout-ms", "--drain-ms"]) {
    for (const value of ["4294967296", "99999999999999999999"]) {
      const r = await cli(["serve", "--port", "0", flag, value], { env: { OAUTH_POOL_GATEWAY_KEY: "gateway-key-for-tests-only" } });
      assert.equal(r.code, 2, `${flag} ${value}: ${r.stdout} ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`${flag} must be a whole number of milliseconds from ${flag === "--drain-ms" ? 0 : 1} to ${MAX_TIMER_MS}`));
    }
  }
});

test("an option a library function does not take is refused, naming it and the ones it takes (a misspelt path was the default pool)", async () => {
  const named =
    (key, ...known) =>
    (e) =>
      e.code === "INVALID_ARGUMENT" && e.message.includes(`"${key}"`) && known.every((k) => e.message.includes(k));
  assert.throws(() => createPoolFetch({ pth: "/x/pool.json" }), named("pth", "path", "provider", "onEvent", "transport"));
  // Only "anthropic" is pooled (the README): another provider, or a wrong-typed option, is refused at once.
  for (const wrong of [{ provider: "openai" }, { provider: "Anthropic" }, { path: 5 }, { onEvent: "log" }, "pool.json"]) {
    assert.throws(
      () => createPoolFetch(wrong),
      (e) => e.code === "INVALID_ARGUMENT",
      JSON.stringify(wrong),
    );
  }
  await assert.rejects(serve({ prot: 0 }), named("prot", "port", "host"));
  await assert.rejects(addApiKey("fake-console-key-config-0123456789", { emial: "a@x.test" }), named("emial", "email", "path"));
  // null is "not given", for every option alike.
  const path = await seedPool(mock, ["nulls@x.test"]);
  const res = await post(createPoolFetch({ path, transport: null, provider: null, onEvent: null }));
  assert.equal(res.status, 200);
  await res.text();
  // serve took a null number or switch for a wrong one: INVALID_ARGUMENT "headerTimeoutMs must be a whole number".
  await withEnv({ OAUTH_POOL_GATEWAY_KEY: "gateway-key-for-tests-only" }, async () => {
    const nulls = { host: null, allowRemote: null, tlsCert: null, tlsKey: null, headerTimeoutMs: null, bodyTimeoutMs: null, maxConnections: null };
    const gateway = await serve({ port: 0, path, ...nulls });
    assert.match(gateway.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    await gateway.close(null);
  });
  assert.equal((await addApiKey("fake-console-key-config-nulls-0123456789", { email: null, path })).added, true);
  assert.ok((await authorize({ mode: null })).url);
});

test("OpenCode 1.18: a plugin option no part reads is named once in a toast and OpenCode's log, with the options there are", async () => {
  const { client, toasts, logs } = fakeClient();
  const input = { client, directory: tmp, worktree: tmp };
  const options = { pth: "/somewhere/pool.json", toolname: "pool", path: tempPoolPath() };
  const hooks = await OAuthPoolPlugin(input, options);
  await hooks.config({});
  const said = (list) => list.filter((m) => /not known/.test(m.message));
  assert.equal(said(toasts).length, 1, JSON.stringify(toasts));
  assert.equal(said(logs).length, 1, JSON.stringify(logs));
  assert.equal(toasts[0].variant, "warning");
  assert.equal(said(logs)[0].level, "warn");
  assert.match(said(logs)[0].message, /plugin options "pth", "toolname" not known, ignored \(the options: path, toolName, provider, fetch\)/);
  // Known options alone: nothing said.
  const quiet = fakeClient();
  await OAuthPoolPlugin({ client: quiet.client }, { path: tempPoolPath(), toolName: "pool", provider: null });
  assert.deepEqual([quiet.toasts, quiet.logs], [[], []]);
});

test("OpenCode 2: a plugin option the setup does not read is named in OpenCode's log", async () => {
  const lines = [];
  const original = console.error;
  console.error = (...args) => void lines.push(args.join(" "));
  let handle;
  try {
    const host = createHost({ sleep: async () => {}, random: () => 0.5 });
    handle = await host.start(loadPlugin(pluginModule, { options: { path: tempPoolPath(), Path: "/elsewhere.json" } }));
  } finally {
    console.error = original;
  }
  await handle?.unload?.();
  assert.ok(
    lines.some((l) => /\[oauth-pool\] warn: plugin option "Path" not known, ignored \(the options: path, toolName, provider, fetch\)/.test(l)),
    lines.join("\n"),
  );
});

test("doctor reads the plugin's options in OpenCode's config files: an unknown one warns, one the plugin refuses is a problem", async () => {
  const project = join(tmp, "project");
  mkdirSync(join(project, ".git"), { recursive: true });
  // JSONC, as OpenCode reads it: comments and a trailing comma.
  writeFileSync(
    join(project, "opencode.jsonc"),
    `{
      // the pool, with a typo
      "plugin": [["opencode-oauth-pool", { "pth": "~/pool.json", }], "another-plugin"],
    }`,
  );
  const warned = await doctorChecks("plugin options", { cwd: project });
  assert.equal(warned.code, 0, JSON.stringify(warned.checks));
  assert.equal(warned.checks.length, 1, JSON.stringify(warned.checks));
  assert.equal(warned.checks[0].level, "warn");
  assert.match(
    warned.checks[0].message,
    /opencode\.jsonc \(opencode-oauth-pool\): plugin option "pth" not known, ignored \(the options: path, toolName, provider, fetch\)/,
  );

  const global = join(tmp, "home", ".config", "opencode");
  mkdirSync(global, { recursive: true });
  writeFileSync(join(global, "opencode.json"), JSON.stringify({ plugins: [{ package: "opencode-oauth-pool", options: { path: 5 } }] }));
  try {
    const failed = await doctorChecks("plugin options", { cwd: project });
    assert.equal(failed.code, 3, "a plugin that does not load is a problem");
    const problem = failed.checks.find((c) => c.level === "problem");
    assert.match(problem?.message ?? "", /opencode\.json \(opencode-oauth-pool\): plugin option path must be a string: OpenCode does not load the plugin/);
  } finally {
    rmSync(join(global, "opencode.json"));
  }
});

// README, Configuration: OAUTH_POOL_STORE is "postgres://... : anything else is refused". A
// file path there (a person taking it for the pool file's variable) or another database's URL
// must not quietly serve from the default pool file, and the refusal repeats no password.
test("OAUTH_POOL_STORE naming a file or another database is INVALID_ARGUMENT, for the library and a request, its password not repeated; the pool file is not used", async () => {
  const path = await seedPool(mock, ["not-the-store@x.test"]);
  const before = readFileSync(path, "utf8");
  for (const store of [
    path,
    "mysql://u:hunter2-store-secret@127.0.0.1/db",
    "sqlite:///tmp/pool.db",
    "http://127.0.0.1:5432/pool",
    "postgres:/missing-slashes",
  ]) {
    await withEnv({ OAUTH_POOL_PATH: path, OAUTH_POOL_STORE: store }, async () => {
      const refused = (e) => e.code === "INVALID_ARGUMENT" && /OAUTH_POOL_STORE takes a postgres:\/\/ URL/.test(e.message) && !e.message.includes("hunter2");
      await assert.rejects(listAccounts(), refused, store);
      await assert.rejects(post(createPoolFetch()), refused, store);
    });
  }
  assert.equal(readFileSync(path, "utf8"), before, "the pool file is untouched");
});

// README, The fleet store: the URL may be given "as --path, a plugin's path, a library path".
// Mistyped there (pg://, postgress://, postgres:/), it was taken as a relative file path: reads
// showed an empty pool, and `store copy --to` wrote every token into ./postgress:/u@host/db,
// then said to use only that from now on and to move the source away.
test("a pool path written as a URL that is not postgres:// is INVALID_ARGUMENT, its password not repeated, and no file is made", async () => {
  const source = await seedPool(mock, ["copied@x.test"]);
  const cwd = mkdtempSync(join(tmp, "url-path-"));
  for (const url of [
    "pg://u:hunter2-path-secret@127.0.0.1/db",
    "postgress://u@127.0.0.1:1/db",
    "postgres:/127.0.0.1/db",
    "mysql://u@127.0.0.1/db",
    "file:///tmp/pool.json",
  ]) {
    const refused = (e) => e.code === "INVALID_ARGUMENT" && /looks like a URL/.test(e.message) && !e.message.includes("hunter2");
    await assert.rejects(listAccounts(url), refused, url);
    await withEnv({ OAUTH_POOL_PATH: url }, () => assert.rejects(listAccounts(), refused, `OAUTH_POOL_PATH=${url}`));
    const r = await cli(["store", "copy", "--json", "--from", source, "--to", url], { cwd });
    assert.equal(r.code, 1, r.stdout);
    const error = JSON.parse(r.stdout.trim().split("\n").at(-1)).error;
    assert.ok(refused(error), r.stdout);
  }
  assert.deepEqual(readdirSync(cwd), [], "nothing was written beside the working directory");
});

test("OAUTH_POOL_STORE with its scheme in upper case is the store, as postgres:// is (the scheme is case-insensitive)", async () => {
  // Port 1 on loopback refuses at once: reaching the connect is what shows the URL was taken.
  const key = "ab".repeat(32);
  for (const store of ["POSTGRES://pool@127.0.0.1:1/pool", " PostgreSQL://pool@127.0.0.1:1/pool "]) {
    await withEnv({ OAUTH_POOL_STORE: store, OAUTH_POOL_STORE_KEY: key }, async () => {
      await assert.rejects(listAccounts(), (e) => e.code === "STORE_UNAVAILABLE" && /cannot be reached/.test(e.message), store);
    });
  }
});

test("a fleet store URL's password never shows: one with a raw ? in it, or the URL pasted with a space before it to store init", async () => {
  // The connection-string parser takes the user part up to the first @, so `pw?x` is the
  // password, and doctor showed it whole; with a space before it the URL was parsed as
  // key=value pairs, and store init's refusal named the first "key": the URL up to its `=`.
  const secret = ["Zq7", "pw"].join("");
  const key = "ab".repeat(32);
  const cases = [
    ["doctor", "--json", "--path", `postgres://pool:${secret}?x@127.0.0.1:1/pool`],
    ["list", "--json", "--path", `postgres://pool:${secret}?x@127.0.0.1:1/pool`],
    ["store", "init", "--json", ` postgres://pool:${secret}@127.0.0.1:1/pool?sslmode=disable`],
    ["store", "init", "--json", `POSTGRES://pool:${secret}@127.0.0.1:1/pool?sslmode=disable`],
  ];
  for (const args of cases) {
    const r = await cli(args, { env: { OAUTH_POOL_STORE_KEY: key } });
    const said = r.stdout + r.stderr;
    assert.ok(!said.includes(secret), `${args.join(" ")}: ${said}`);
    // Taken as the URL it is: the connection was tried (port 1 refuses at once).
    assert.match(said, /STORE_UNAVAILABLE|cannot reach/, `${args.join(" ")}: ${said}`);
  }
});
