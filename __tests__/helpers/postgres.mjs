// A throwaway PostgreSQL cluster for the fleet-store tests: initdb in a temp dir, listening on
// 127.0.0.1 only, trust auth, no fsync. Never assumes a server is running; `.ci/run` installs
// Debian's postgresql package when no initdb is found. As root, the server runs as the
// `postgres` user (initdb refuses root).
//   startPostgres({ tls: { cert, key }, hba })  cert and key as PEM text: TLS on (the key copied
//   0600 and owned by the server's user, as PostgreSQL demands); hba: the pg_hba.conf lines for
//   TCP (e.g. "hostssl all all 127.0.0.1/32 trust" admits TLS only). Local socket stays trust.
//   serverBin: a directory with another version's initdb, pg_ctl and postgres (PostgreSQL 17
//   for its `transaction_timeout`, scripts/fetch-postgres.mjs); psql and pg_dump stay the
//   installation's.
//   `session(db)`: one psql session kept open, its statements run in turn (a transaction left
//   open between them holds its locks); `until(sql, ok, { db, ms })` polls a query.
import { spawn, spawnSync } from "node:child_process";
import { chownSync, existsSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect } from "node:net";
import { freePort } from "./net.mjs";
import { atExit, tempDir } from "./temp.mjs";

// Debian keeps every server binary (initdb, pg_ctl, psql, pg_dump) in one versioned directory;
// PATH may hold only a few of them as symlinks, so that directory wins.
const TOOLS = ["initdb", "pg_ctl", "psql", "pg_dump"];

function findBin() {
  const base = "/usr/lib/postgresql";
  const candidates = [];
  if (existsSync(base)) {
    const versions = readdirSync(base).sort((a, b) => Number(b) - Number(a));
    for (const v of versions) candidates.push(join(base, v, "bin"));
  }
  candidates.push(...(process.env.PATH ?? "").split(":").filter(Boolean));
  for (const d of candidates) if (TOOLS.every((t) => existsSync(join(d, t)))) return d;
  return null;
}

function run(cmd, args, { user } = {}) {
  const [file, argv] = user ? ["runuser", ["-u", user, "--", cmd, ...args]] : [cmd, args];
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.on("error", reject);
    child.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(" ")} exited ${code}: ${err || out}`))));
  });
}

async function uidOf(user) {
  const out = await run("id", ["-u", user]);
  const gid = await run("id", ["-g", user]);
  return [Number(out.trim()), Number(gid.trim())];
}

export async function startPostgres({ tls, hba, serverBin } = {}) {
  const clientBin = findBin();
  if (!clientBin) throw new Error("PostgreSQL's initdb was not found (install Debian's postgresql package; .ci/run does)");
  const bin = serverBin ?? clientBin;
  const dir = tempDir("oauth-pool-pg-");
  const data = join(dir, "data");
  const user = process.getuid?.() === 0 ? "postgres" : undefined;
  // A test file that ends (or dies) without close(): the server must not outlive it, nor hold
  // the directory the exit handler removes.
  atExit(() => {
    if (!existsSync(join(data, "postmaster.pid"))) return;
    const stop = [join(bin, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"];
    const [file, ...args] = user ? ["runuser", "-u", user, "--", ...stop] : stop;
    spawnSync(file, args, { stdio: "ignore", timeout: 30_000 });
  });
  if (user) {
    const [uid, gid] = await uidOf(user);
    chownSync(dir, uid, gid);
  }
  await run(join(bin, "initdb"), ["-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"], { user });
  const owner = user ? await uidOf(user) : null;
  const own = (file, text, mode) => {
    writeFileSync(file, text, { mode });
    if (owner) chownSync(file, ...owner);
  };
  let port;
  let opts;
  const settings = (p) => {
    let o = `-p ${p} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off`;
    if (tls) o += ` -c ssl=on -c ssl_cert_file=${join(dir, "server.crt")} -c ssl_key_file=${join(dir, "server.key")}`;
    return o;
  };
  if (tls) {
    own(join(dir, "server.crt"), tls.cert, 0o644);
    own(join(dir, "server.key"), tls.key, 0o600);
  }
  if (hba) own(join(data, "pg_hba.conf"), `local all all trust\n${hba}\n`, 0o600);
  const ctl = (...args) => run(join(bin, "pg_ctl"), ["-D", data, ...args], { user });
  const start = () => ctl("-o", opts, "-l", join(dir, "log"), "-w", "-t", "60", "start");
  // The port was free when asked, and another process (a test's server, a client's own end of a
  // connection) may take it before the server binds it: then another port, a few times.
  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    opts = settings(port);
    try {
      await start();
      break;
    } catch (err) {
      let log = "";
      try {
        log = readFileSync(join(dir, "log"), "utf8");
      } catch {}
      if (attempt >= 3 || !/could not bind|address already in use|could not create any TCP\/IP sockets/i.test(log)) throw err;
    }
  }
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  return {
    url,
    dir,
    start,
    stop: () => ctl("-m", "fast", "-w", "stop"),
    /** Stops the server as a crash does (no checkpoint, nothing flushed): `start()` recovers. */
    crash: () => ctl("-m", "immediate", "-w", "stop"),
    /** pg_dump of the whole database, as text. */
    dump: () => run(join(clientBin, "pg_dump"), ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "postgres"]),
    port,
    /** One SQL statement through psql, its output unaligned (in `db`, default postgres). */
    sql: (query, db = "postgres") => run(join(clientBin, "psql"), ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-At", "-c", query, db]),
    session: (db) => psqlSession(join(clientBin, "psql"), port, db),
    /** Runs `query` (in `db`) until `ok(output)`, for up to `ms`; resolves that output. */
    async until(query, ok, { db = "postgres", ms = 20_000 } = {}) {
      const deadline = Date.now() + ms;
      for (;;) {
        const out = await this.sql(query, db);
        if (ok(out)) return out;
        if (Date.now() > deadline) throw new Error(`gave up waiting on: ${query} (last: ${out})`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async close() {
      await ctl("-m", "immediate", "-w", "stop").catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A psql session on `db` kept open: `run(sql)` resolves with its output once it has run. */
function psqlSession(psql, port, db) {
  const child = spawn(psql, ["-X", "-q", "-At", "-h", "127.0.0.1", "-p", String(port), "-U", "postgres", db], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  let n = 0;
  const waiting = new Map();
  child.stdout.on("data", (d) => {
    out += d;
    for (const [mark, resolve] of waiting) {
      const at = out.indexOf(`${mark}\n`);
      if (at >= 0) {
        waiting.delete(mark);
        resolve(out.slice(0, at));
        out = out.slice(at + mark.length + 1);
      }
    }
  });
  child.stderr.on("data", (d) => (err += d));
  const exited = new Promise((r) => child.on("close", r));
  return {
    run(sql) {
      const mark = `__done_${++n}`;
      const done = new Promise((resolve) => waiting.set(mark, resolve));
      child.stdin.write(`${sql}\n\\echo ${mark}\n`);
      return done;
    },
    errors: () => err,
    async close() {
      child.stdin.end();
      await exited;
    },
  };
}

// A throwaway PgBouncer in front of a cluster of startPostgres, for the tests of the fleet store
// behind a connection pooler (what Neon's "-pooler" hosts and Supabase's port 6543 are):
//   startPgBouncer({ target, mode, poolSize })  mode "transaction" (default) or "session";
//   poolSize server connections per database and user (default 2, so clients share them).
// Listens on 127.0.0.1 only, trust auth through an auth_file, its own config in a temp dir; never
// a system-wide instance. As root it switches to the `postgres` user (`-u`: PgBouncer refuses root).
// `.ci/run` installs Debian's pgbouncer package (1.18: no prepared statements in transaction mode).
function findPgBouncer() {
  const dirs = ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin", ...(process.env.PATH ?? "").split(":").filter(Boolean)];
  for (const d of dirs) if (existsSync(join(d, "pgbouncer"))) return join(d, "pgbouncer");
  return null;
}

function accepts(port) {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

export async function startPgBouncer({ target, mode = "transaction", poolSize = 2 } = {}) {
  const bin = findPgBouncer();
  if (!bin) throw new Error("pgbouncer was not found: install it (Debian: apt-get install --no-install-recommends pgbouncer; .ci/run does)");
  const dir = tempDir("oauth-pool-pgbouncer-");
  const user = process.getuid?.() === 0 ? "postgres" : undefined;
  if (user) chownSync(dir, ...(await uidOf(user)));
  const port = await freePort();
  writeFileSync(join(dir, "userlist.txt"), '"postgres" ""\n', { mode: 0o644 });
  const config = join(dir, "pgbouncer.ini");
  writeFileSync(
    config,
    [
      "[databases]",
      `* = host=127.0.0.1 port=${target.port}`,
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      "unix_socket_dir =",
      "auth_type = trust",
      `auth_file = ${join(dir, "userlist.txt")}`,
      `pool_mode = ${mode}`,
      `default_pool_size = ${poolSize}`,
      "reserve_pool_size = 0",
      "max_client_conn = 400",
      "server_login_retry = 1",
      "query_wait_timeout = 120",
      "",
    ].join("\n"),
    { mode: 0o644 },
  );
  let child = null;
  let log = "";
  const start = async () => {
    child = spawn(bin, user ? ["-u", user, config] : [config], { stdio: ["ignore", "pipe", "pipe"] });
    const exited = new Promise((resolve) => child.once("close", resolve));
    child.exited = exited;
    for (const s of [child.stdout, child.stderr]) s.on("data", (d) => (log = (log + d).slice(-20_000)));
    for (const deadline = Date.now() + 15_000; ; ) {
      if (await accepts(port)) return;
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`pgbouncer did not start: ${log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const stop = async () => {
    if (!child) return;
    const c = child;
    child = null;
    c.kill("SIGTERM");
    await c.exited;
  };
  atExit(() => child?.kill("SIGKILL"));
  await start();
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    mode,
    start,
    stop,
    log: () => log,
    async close() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
