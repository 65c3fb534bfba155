// Text for people: durations, clock times, one line per account. Pure (no native code), so the
// CLI uses it too.

export const LOGIN_HINT = "run `opencode auth login` -> Anthropic Pool";

const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const pad = (n) => String(n).padStart(2, "0");

/** 4_320_000 -> "1h 12m"; under a minute -> "<1m". */
export function duration(ms) {
  const minutes = Math.max(0, Math.ceil(ms / 60_000));
  if (ms < 60_000) return "<1m";
  const d = Math.floor(minutes / 1440);
  const h = Math.floor((minutes % 1440) / 60);
  const m = minutes % 60;
  if (d) return h ? `${d}d ${h}h` : `${d}d`;
  if (h) return m ? `${h}h ${m}m` : `${h}h`;
  return `${m}m`;
}

/** Local clock time, with the day when it is not today: "14:05" or "Tue 1 Dec 14:05". */
export function clock(at, now = Date.now()) {
  const t = new Date(at);
  const hm = `${pad(t.getHours())}:${pad(t.getMinutes())}`;
  if (t.toDateString() === new Date(now).toDateString()) return hm;
  return `${DAYS[t.getDay()]} ${t.getDate()} ${MONTHS[t.getMonth()]} ${hm}`;
}

/** "5m ago", "just now", "never". */
export function ago(iso, now = Date.now()) {
  const t = typeof iso === "number" ? iso : Date.parse(iso ?? "");
  if (!Number.isFinite(t)) return "never";
  if (now - t < 60_000) return "just now";
  return `${duration(now - t)} ago`;
}

export function statusText(a, now = Date.now()) {
  switch (a.status) {
    case "rate-limited":
      return a.rateLimitUntil
        ? `rate-limited, ${duration(a.rateLimitUntil - now)} left (until ${clock(a.rateLimitUntil, now)})`
        : "rate-limited";
    case "auth-error":
      return a.type === "api"
        ? "auth-error: the key was refused; remove it and add a working key"
        : `auth-error: needs a new login: ${LOGIN_HINT}`;
    case "disabled":
      return "disabled (enable it with action enable)";
    case "invalid":
      return "invalid entry";
    default:
      return a.status;
  }
}

function windowText(label, w, now) {
  if (!w || (w.utilization == null && w.resetsAt == null)) return null;
  const pct = w.utilization == null ? "?" : `${Math.round(w.utilization * 100)}%`;
  return w.resetsAt ? `${label} ${pct} (resets ${clock(w.resetsAt, now)})` : `${label} ${pct}`;
}

/** "5h 42% (resets 14:05), 7d 35% (resets Tue 1 Dec 12:00)", or null when never seen. */
export function quotaText(quota, now = Date.now()) {
  const parts = [windowText("5h", quota?.fiveHour, now), windowText("7d", quota?.sevenDay, now)].filter(Boolean);
  return parts.length ? parts.join(", ") : null;
}

export function accountLine(a, i, now = Date.now()) {
  const parts = [
    `${i + 1}. ${a.email} [${a.type === "api" ? "API key" : "Claude login"}] ${statusText(a, now)}`,
    `priority ${a.priority ?? 0}`,
    a.lastUsed ? `last used ${ago(a.lastUsed, now)}` : "never used",
  ];
  const quota = quotaText(a.quota, now);
  if (quota) parts.push(quota);
  if (a.lastError && a.status !== "idle" && a.status !== "active") parts.push(`last problem: ${a.lastError}`);
  return parts.join(" · ");
}
