// One core kept busy, as another OpenCode process (or any CPU-bound neighbour) does on a shared
// machine: a plain spin on one thread, no pinning, normal priority. bench/run.mjs --busy starts
// it before the first measurement and kills it after the last. Exits on its own when its
// parent goes away (stdin closes), so a crashed bench never leaves it spinning.
process.stdin.on("close", () => process.exit(0));
process.stdin.resume();
// Spin in slices so the event loop still sees stdin close.
function spin() {
  const end = performance.now() + 50;
  let x = 0;
  while (performance.now() < end) x++;
  setImmediate(spin, x);
}
spin();
