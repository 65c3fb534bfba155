// The chaos test's choices: xorshift32 from a seed, so a run's own choices replay from the seed
// it prints (the timing of processes does not).

/** `{ random, pick, between }` drawing from `seed` (0 or garbage: `fallback`). */
export function seeded(seed, fallback = 1) {
  let state = Number(seed) >>> 0 || fallback;
  const random = () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 2 ** 32;
  };
  return {
    random,
    pick: (list) => list[Math.floor(random() * list.length)],
    between: (lo, hi) => lo + Math.floor(random() * (hi - lo + 1)),
  };
}
