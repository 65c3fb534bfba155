// Another program writing the pool file in place, as an editor's save, `jq … > pool.json` or
// `cp other.json pool.json` does: the same inode truncated, then written, with a moment between
// in which a reader finds it empty or cut short. Each round re-reads the file as it is (a whole
// generation: the pool's own writes are renames) and writes that back in place.
//
//   node pool-rewriter.mjs <path> <rounds> <pause-ms> <cut|empty|chunks>
//
// cut: truncate, write up to a random byte, pause, write the rest; empty: truncate, pause, write
// it all (what `>` leaves while the command runs); chunks: truncate, then four pieces with a
// pause before each (a copy in chunks). Prints "ready" once started and "done <rounds>" at the end.
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from "node:fs";

const [path, roundsArg, pauseArg, mode = "cut"] = process.argv.slice(2);
const rounds = Number(roundsArg);
const pauseMs = Number(pauseArg);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function writeRange(fd, bytes, from, to) {
  let at = from;
  while (at < to) at += writeSync(fd, bytes, at, to - at, at);
}

process.stdout.write("ready\n");
for (let i = 0; i < rounds; i++) {
  const content = readFileSync(path);
  const fd = openSync(path, "r+");
  ftruncateSync(fd, 0);
  if (mode === "cut") {
    const cut = Math.floor(Math.random() * content.length);
    writeRange(fd, content, 0, cut);
    await sleep(pauseMs);
    writeRange(fd, content, cut, content.length);
  } else if (mode === "empty") {
    await sleep(pauseMs);
    writeRange(fd, content, 0, content.length);
  } else {
    const piece = Math.ceil(content.length / 4);
    for (let from = 0; from < content.length; from += piece) {
      await sleep(pauseMs / 4);
      writeRange(fd, content, from, Math.min(content.length, from + piece));
    }
  }
  closeSync(fd);
  await sleep(pauseMs);
}
process.stdout.write(`done ${rounds}\n`);
