// The failures in a test runner's report, kept as the report streams past, to be printed again
// at its end: a failed test's report scrolls far above the end of a long run, and CI may keep
// only the end of what was printed.
//   Node's TAP: a `not ok` line and its diagnostics, which end at `...` one level in.
//   Bun: a `(fail)` line and what was printed since the test before it ended.
import { StringDecoder } from "node:string_decoder";

const blockLimit = 80;
const bunContext = 60;
const recapLimit = 400;

export function failureRecap() {
  const blocks = [];
  let open = null;
  let sinceLastTest = [];
  let partial = "";
  const decoder = new StringDecoder("utf8");
  function line(text) {
    if (open) {
      open.lines.push(text);
      if (text === open.end || open.lines.length >= blockLimit) open = null;
      return;
    }
    const tap = /^(\s*)not ok \d+ - /.exec(text);
    if (tap) {
      open = { lines: [text], end: `${tap[1]}  ...` };
      blocks.push(open.lines);
      return;
    }
    if (/^\s*\((pass|skip|todo)\)/.test(text)) {
      sinceLastTest = [];
      return;
    }
    if (/^\s*\(fail\)/.test(text)) {
      blocks.push([...sinceLastTest.slice(-bunContext), text]);
      sinceLastTest = [];
      return;
    }
    sinceLastTest.push(text);
    if (sinceLastTest.length > 4 * bunContext) sinceLastTest = sinceLastTest.slice(-bunContext);
  }
  return {
    feed(chunk) {
      const lines = (partial + decoder.write(chunk)).split("\n");
      partial = lines.pop() ?? "";
      for (const text of lines) line(text.replace(/\r$/, ""));
    },
    /** The failures seen so far, each block whole, at most `recapLimit` lines; "" if none. */
    text() {
      const rest = partial + decoder.end();
      if (rest) line(rest.replace(/\r$/, ""));
      partial = "";
      const all = blocks.flat();
      if (all.length <= recapLimit) return all.join("\n");
      return `${all.slice(0, recapLimit).join("\n")}\n[and ${all.length - recapLimit} more lines]`;
    },
  };
}
