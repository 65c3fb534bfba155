// A login whose write finds the pool's lock held past the store's 60 s wait, once its one-time
// code is spent. Apart from os-hostility.test.mjs because it waits out that minute.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { keptLogin, loginSpoiledMidway } from "./helpers/login-midway.mjs";
import { useMock, seedPool, account, readPool, until } from "./helpers/pool-env.mjs";
import { poolStatus } from "../index.mjs";
import { poolActionText } from "../lib/plugin/tool.mjs";

const mock = useMock();
const FLOCK = ["/usr/bin/flock", "/bin/flock"].find((p) => existsSync(p));

test("addAccount whose write finds the pool's lock held past its wait by a stopped writer: the login is kept by the process and written once the lock is free", {
  skip: !FLOCK && "util-linux's flock is not installed",
}, async () => {
  const email = "locked-mid-login@x.test";
  const path = await seedPool(mock, ["locked-mid-held@x.test"]);
  let holder;
  try {
    // Taken once the code is on its way, and held past the store's 60 s wait.
    const adding = loginSpoiledMidway(mock, path, email, async () => {
      holder = spawn(FLOCK, ["--no-fork", "-x", `${path}.lock`, "sh", "-c", "echo held; exec sleep 600"], { stdio: ["ignore", "pipe", "inherit"] });
      await new Promise((resolve, reject) => {
        holder.stdout.once("data", resolve);
        holder.once("error", reject);
      });
    });
    await assert.rejects(adding, keptLogin("POOL_BUSY", email, /locked by another process/));
    assert.equal(account(path, email), undefined, "nothing was written under another's lock");
    // While it waits, the process's own status says so (nothing but the first error did).
    const held = (await poolStatus(path)).unsavedTokens.find((u) => u.email === email);
    assert.match(held?.error ?? "", /locked by another process/);
    assert.match(await poolActionText({ action: "status" }, path), new RegExp(`Not written yet: new tokens of ${email.replace(/\./g, "\\.")} \\(since`));
  } finally {
    holder?.kill("SIGKILL");
  }
  await until("the kept login to be written", () => readPool(path).anthropic.some((a) => a.email === email));
  assert.equal(account(path, email).refresh, mock.tokens(email).refresh);
});
