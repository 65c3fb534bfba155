//! Account management used by the plugin's tool, the CLI and the library: add, remove, enable,
//! priorities, cooldown reset, import, and the views people read (no secrets in any of them).
//! Every change goes through `Store::update` (locked read-modify-write).

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::account::{now_ms, Account, Status};
use crate::error::{Error, Result};
use crate::fsread::{self, ReadError};
use crate::oauth::Tokens;
use crate::pool::{Entry, Pool};
use crate::secret::Secret;
use crate::store::Store;

/// Claude Code's credentials file is a few hundred bytes.
const MAX_CREDENTIALS_FILE: u64 = 1024 * 1024;

pub fn summary(a: &Account, now: i64) -> Value {
    let mut windows = a.windows();
    crate::engine::limits::settle_windows(&mut windows, now);
    let model_cooldowns: serde_json::Map<String, Value> = a
        .extra
        .get("modelCooldowns")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(f, _)| {
                    a.model_cooldown_until(f, now)
                        .filter(|t| *t > now)
                        .map(|t| (f.clone(), json!(t)))
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "email": a.email,
        "type": if a.is_api_key() { "api" } else { "oauth" },
        "status": a.effective_status(now).as_str(),
        "rateLimitUntil": a.resting_until(now),
        // Why it rests when its cooldown does not say: the token endpoint's wait.
        "tokenWaitUntil": a.token_wait_until(now),
        "modelCooldowns": model_cooldowns,
        "priority": a.priority(),
        "reserve": a.reserve(),
        "enabled": a.is_enabled(),
        "added": a.added,
        "lastUsed": a.last_used,
        "expires": a.expires,
        // Free text another program (or a hand edit) may have written: its credentials, the
        // entry's own first, are taken out as every other view of it does.
        "lastError": a.extra.get("lastError").and_then(Value::as_str).map(|e| {
            let own: Vec<&crate::secret::Secret> =
                [&a.access, &a.refresh, &a.key].into_iter().flatten().collect();
            crate::secret::scrub(e, &own)
        }),
        "credential": a.has_credential(),
        // What the pool goes by, where `status` is what the file says: an `auth-error` another
        // program wrote, for a credential the pool never saw refused, does not stop it.
        "usable": a.usable_at(now),
        "windows": windows.iter().map(|w| window_view(w, now)).collect::<Vec<_>>(),
        "quota": legacy_quota(&windows, a, now),
        "usage": usage_view(a, now),
    })
}

/// A window as people read it: a window whose reset has passed has started over (0 %).
fn window_view(w: &crate::engine::limits::Window, now: i64) -> Value {
    let over = w.reset.is_some_and(|r| r <= now);
    json!({
        "name": w.name,
        "scope": w.scope(),
        "utilization": if over { Some(0.0) } else { w.utilization },
        "resetsAt": if over { None } else { w.reset },
        "status": if over { None } else { w.status.clone() },
    })
}

/// The 5h / 7d summary older readers know (`quota.fiveHour` / `quota.sevenDay`), read as
/// `windows` is: a window whose reset has passed showed `rejected` there, at 100 %, after it had
/// started over.
fn legacy_quota(windows: &[crate::engine::limits::Window], a: &Account, now: i64) -> Value {
    let pick = |name: &str| {
        windows.iter().find(|w| w.name == name).map(|w| {
            let seen = window_view(w, now);
            json!({ "utilization": seen["utilization"], "resetsAt": seen["resetsAt"], "status": seen["status"] })
        })
    };
    let (five, seven) = (pick("5h"), pick("7d"));
    if five.is_none() && seven.is_none() {
        return Value::Null;
    }
    let updated = a
        .extra
        .get("limits")
        .and_then(|l| l.get("updatedAt"))
        .or_else(|| a.extra.get("quota").and_then(|q| q.get("updatedAt")))
        .cloned();
    json!({ "fiveHour": five, "sevenDay": seven, "updatedAt": updated })
}

/// Requests and tokens per model: today, the current 5-hour window, and the last 30 days.
fn usage_view(a: &Account, now: i64) -> Value {
    use crate::engine::usage::Counts;
    let Some(u) = a.extra.get("usage") else {
        return Value::Null;
    };
    let sum = |buckets: Vec<&Value>| {
        let mut total = Counts::default();
        let mut by_model: std::collections::BTreeMap<String, Counts> = Default::default();
        for b in buckets {
            for (model, c) in b.as_object().into_iter().flatten() {
                // Field by field, as the bookkeeping reads them: one count the struct would not
                // take (`57.0`) made every count of the model 0 here.
                let c = c.as_object().map(Counts::from_stored).unwrap_or_default();
                total.add(&c);
                by_model.entry(model.clone()).or_default().add(&c);
            }
        }
        json!({ "total": total, "byModel": by_model })
    };
    let today = crate::engine::bookkeeping::day_of(now);
    let first = crate::engine::bookkeeping::first_usage_day(now);
    let days: Vec<&Value> = u
        .get("days")
        .and_then(Value::as_object)
        .map(|d| {
            d.iter()
                .filter(|(day, _)| day.as_str() >= first.as_str())
                .map(|(_, v)| v)
                .collect()
        })
        .unwrap_or_default();
    let windows = u.get("windows").and_then(Value::as_object);
    let current = windows.and_then(|w| {
        w.iter()
            .filter_map(|(k, v)| k.parse::<i64>().ok().map(|t| (t, v)))
            .filter(|(t, _)| *t > now)
            .min_by_key(|(t, _)| *t)
    });
    json!({
        "today": sum(u.get("days").and_then(|d| d.get(&today)).into_iter().collect()),
        "window": current.map(|(reset, v)| {
            let mut s = sum(vec![v]);
            s["resetsAt"] = json!(reset);
            s
        }),
        "last30Days": sum(days),
    })
}

/// An entry of the file that could not be read, as people see it: kept, listed, removable.
fn unreadable(index: usize, entry: &Entry, reason: &str) -> Value {
    let name = entry
        .email()
        .map(str::to_string)
        .unwrap_or_else(|| format!("#{index}"));
    json!({
        "email": name,
        "type": "unknown",
        "status": "invalid",
        "index": index,
        "rateLimitUntil": null,
        "priority": 0,
        "enabled": false,
        "added": null,
        "lastUsed": null,
        "expires": null,
        "lastError": format!("unreadable entry (kept as it is): {reason}"),
        "quota": null,
    })
}

/// Every entry in file order: accounts, and the unreadable entries marked `invalid`.
pub fn list(pool: &Pool, now: i64) -> Vec<Value> {
    pool.anthropic
        .iter()
        .enumerate()
        .map(|(i, e)| match e {
            Entry::Valid(a) => summary(a, now),
            Entry::Invalid { reason, .. } => unreadable(i, e, reason),
        })
        .collect()
}

/// The engine's view laid over `accounts` (as `list` makes them): `usable` as the engine chooses,
/// `heldUntil` / `heldBy` where it holds an account back beyond its stored cooldown (its reserve
/// line, a rest after a refusal), and an `auth-error` another program wrote told as
/// `authErrorTheirs` (the pool tries that login again once its backoff ends). Answers the
/// soonest end of such a hold.
pub fn engine_view(
    accounts: &mut [Value],
    pool: &Pool,
    engine: &crate::engine::Engine,
    now: i64,
) -> Option<i64> {
    let mut soonest: Option<i64> = None;
    // Each account's view by its email (the first with it, as a search would find): a search per
    // account took 41-55 s for 20,000 accounts (found by a review).
    let mut first: std::collections::HashMap<String, usize> = Default::default();
    for (i, v) in accounts.iter().enumerate() {
        if let Some(email) = v["email"].as_str() {
            first.entry(email.to_string()).or_insert(i);
        }
    }
    for a in pool.accounts() {
        let Some(view) = first
            .get(a.email.as_str())
            .and_then(|&i| accounts.get_mut(i))
        else {
            continue;
        };
        let (usable, held) = engine.held(pool, a, now);
        view["usable"] = usable.into();
        if a.auth_error_unverified() {
            view["authErrorTheirs"] = true.into();
            // Its backoff's end is when it is tried again: the soonest reset may be that.
            if let Some(t) = a.resting_until(now).filter(|_| !usable) {
                soonest = Some(soonest.map_or(t, |s| s.min(t)));
            }
        }
        // A stored cooldown is shown as stored: this process's jitter past it (seconds, and
        // another seed in each process) would only blur it.
        if let Some((until, why)) = held.filter(|(_, why)| *why != "cooldown") {
            view["heldUntil"] = until.into();
            view["heldBy"] = why.into();
            soonest = Some(soonest.map_or(until, |s| s.min(until)));
        }
    }
    soonest
}

pub fn status(pool: &Pool, location: &str, now: i64) -> Value {
    let count = |status: Status| {
        pool.accounts()
            .filter(|a| a.effective_status(now) == status)
            .count()
    };
    let invalid: Vec<Value> = pool
        .invalid_entries()
        .map(|(i, r)| json!({"index": i, "email": pool.anthropic[i].email(), "reason": r}))
        .collect();
    // When the next account comes back: a disabled one or one needing a login does not, whatever
    // its cooldown says.
    let soonest = pool
        .accounts()
        .filter(|a| a.effective_status(now) == Status::RateLimited)
        .filter_map(|a| a.resting_until(now))
        .min();
    json!({
        "path": location,
        "accounts": list(pool, now),
        "counts": {
            "active": count(Status::Active),
            "idle": count(Status::Idle),
            "rate-limited": count(Status::RateLimited),
            "auth-error": count(Status::AuthError),
            "disabled": count(Status::Disabled),
            "invalid": invalid.len(),
            "total": pool.accounts().count(),
            "usable": pool.accounts().filter(|a| a.usable_at(now)).count(),
        },
        "soonestReset": soonest,
        "lastFailover": last_failover(pool),
        "invalid": invalid,
        "caseClashes": pool.case_clashes(),
    })
}

/// Where the pool keeps what it records about itself (not about an account): under an
/// `_`-prefixed key, which other tools sharing the file (aidevops) skip.
pub const META_KEY: &str = "_oauthPool";

/// What the pool records about itself: the object under `_oauthPool`. Written as a list of that
/// one object: aidevops's `reset-cooldowns` (all providers, its default) walks every top-level
/// value as a list of accounts, and an object there (ours, after the first failover) made it fail
/// where the person had been told to run it. An older file's bare object is read too.
pub fn meta(pool: &Pool) -> Option<&Map<String, Value>> {
    match pool.extra.get(META_KEY)? {
        Value::Object(m) => Some(m),
        Value::Array(items) => items.iter().find_map(Value::as_object),
        _ => None,
    }
}

/// `meta` to write into, made (or an older file's bare object moved into its list) as needed;
/// a section of another shape (not ours) is replaced, as an unreadable record of ours.
pub fn meta_mut(pool: &mut Pool) -> Option<&mut Map<String, Value>> {
    let section = pool
        .extra
        .entry(META_KEY)
        .or_insert_with(|| Value::Array(Vec::new()));
    if !section.is_array() {
        let kept = match std::mem::take(section) {
            Value::Object(m) => vec![Value::Object(m)],
            _ => Vec::new(),
        };
        *section = Value::Array(kept);
    }
    let items = section.as_array_mut()?;
    if !items.iter().any(Value::is_object) {
        items.push(Value::Object(Map::new()));
    }
    items.iter_mut().find_map(Value::as_object_mut)
}

/// Whether a `lastFailover` is of the shape this pool records: only such a top-level section is
/// ours (an older version's) to move under `_oauthPool`; any other is another writer's.
pub fn is_recorded_failover(v: &Value) -> bool {
    v.get("at").is_some_and(Value::is_number)
        && v.get("from").is_some_and(Value::is_string)
        && v.get("to").is_none_or(|t| t.is_string() || t.is_null())
        && v.get("reason").is_some_and(Value::is_string)
}

/// The last failover this machine recorded (older files kept it at the top level). A section of
/// that name is the file's, kept verbatim: one not of the recorded shape (another writer's, a
/// hand edit) is no failover, rather than handed on as `{}` or a string that status then showed
/// as "undefined -> no other account: undefined".
pub fn last_failover(pool: &Pool) -> Option<Value> {
    meta(pool)
        .and_then(|m| m.get("lastFailover"))
        .filter(|v| is_recorded_failover(v))
        .or_else(|| {
            pool.extra
                .get("lastFailover")
                .filter(|v| is_recorded_failover(v))
        })
        .map(|f| {
            json!({ "at": f["at"], "from": f["from"], "to": f.get("to").cloned().unwrap_or(Value::Null), "reason": f["reason"] })
        })
}

/// Adds an OAuth account from a completed login; the same email again updates its tokens.
pub async fn add_oauth(store: &Store, tokens: &Tokens) -> Result<(String, bool)> {
    let email = login_email(tokens);
    let account = Account::new_oauth(
        &email,
        tokens.access.clone(),
        tokens.refresh.clone(),
        tokens.expires,
        now_ms(),
    );
    store
        .update(move |pool| {
            key_member_aside(pool, &account.email);
            let added = pool.upsert(account);
            Ok((stored_name(pool, email), added))
        })
        .await
}

/// A Console key member named as the login being added (a key labelled with its owner's email)
/// is moved to the key's own name, and the login added beside it. Laid over it, the entry became
/// the login, and the key, kept in it, served no request again and could not be added back.
fn key_member_aside(pool: &mut Pool, email: &str) {
    let Some(member) = pool.find_mut(email).filter(|a| a.is_api_key()) else {
        return;
    };
    let Some(key) = member.key.as_ref().filter(|k| !k.is_empty()) else {
        return;
    };
    let aside = format!("api-key-{}", key.fingerprint());
    tracing::warn!(account = %member.email, renamed = %aside, "a login took the name of a Console key member; the key member is renamed");
    member.email = aside;
}

/// Refuses a change that would leave a name quoting a credential: `name` (one given for the
/// account being made) holding a key or token of the pool's, or a member's name holding one of
/// `incoming`. Compared without case: an imported name is stored lower-cased.
fn names_hold_no_secret(
    pool: &Pool,
    name: Option<&str>,
    incoming: &[&Secret],
    what: &str,
) -> Result<()> {
    let holds = crate::secret::holds_piece;
    let mut known = pool.secrets();
    known.extend_from_slice(incoming);
    if name.is_some_and(|name| holds(name, &known)) {
        return Err(Error::InvalidArgument(format!(
            "that name holds a key or token (the one given, or another account's in the pool): a name is shown in lists, logs and the tool's answers; give an email or a label: nothing was {what}"
        )));
    }
    if let Some((i, _)) = pool
        .accounts_placed()
        .find(|(_, a)| holds(&a.email, incoming))
    {
        return Err(Error::InvalidArgument(format!(
            "the name of entry #{i} in the pool holds this credential: remove that entry first (`oauth-pool remove '#{i}'`) and add its own credential again under a name without this one: nothing was {what}"
        )));
    }
    Ok(())
}

/// A login imported from Claude Code's file: as `add_oauth`, but one login is one member. The
/// same file imported under a second name (`--email work`, then `--email team`, or once without
/// a name) made two members of one token family, each spending the refresh token the other then
/// had to adopt. The login already in the pool keeps its name; a name the person gave for it is
/// refused, as `add_api_key` refuses a key held under another name.
pub async fn add_imported(
    store: &Store,
    tokens: &Tokens,
    name_given: bool,
) -> Result<(String, bool)> {
    let email = login_email(tokens);
    let tag = crate::store::journal::tag(&tokens.refresh);
    let mut account = Account::new_oauth(
        &email,
        tokens.access.clone(),
        tokens.refresh.clone(),
        tokens.expires,
        now_ms(),
    );
    let refresh = tokens.refresh.clone();
    store
        .update(move |pool| {
            let normalize = crate::account::normalize_email;
            let holder = holder_of(pool, &refresh, |a| {
                (!a.is_api_key()).then_some(a.refresh.as_ref()).flatten()
            });
            // Imported again after the pool refreshed that login (and Claude Code was logged out
            // since), the file's tokens are the spent generation: written over the live ones,
            // they lost the login in both places. The journal knows the token spent (or out
            // now), and where its successor is. Asked under the pool's lock: asked before it, a
            // refresh whose write the import waited behind was not in it yet.
            let spent = crate::store::spent_now(&[(account.email.clone(), tag)]);
            if let (Some((_, spent)), None) = (spent.first(), &holder) {
                return Err(Error::LoginElsewhere(format!(
                    "Claude Code's file holds a refresh token that was already spent: the pool at {} refreshed it as {} on {}, and keeps the tokens that replaced it (a refresh token works once). The file is older than that login: log in to Claude Code again to import a new one (where this pool holds a login under that name, import it under another --email, or remove that one first); nothing was imported",
                    spent.store,
                    spent.email,
                    crate::account::iso_time_seconds(spent.at)
                )));
            }
            if let (Some(access), Some(refresh)) = (account.access.clone(), account.refresh.clone()) {
                names_hold_no_secret(pool, name_given.then_some(account.email.as_str()), &[&access, &refresh], "imported")?;
            }
            if let Some(holder) = holder.as_ref().filter(|h| normalize(h) != normalize(&account.email)) {
                if name_given {
                    return Err(Error::InvalidArgument(format!(
                        "that login is already in the pool as {holder}: remove {holder} first to import it under another name; nothing was imported"
                    )));
                }
                account.email = holder.clone();
            }
            // A login of the pool's own under that name (made with `add`, or another person's
            // under a mistyped --email) would be replaced by Claude Code's, which the two then
            // share: its own refresh token was lost. One marked as refused is what an import mends.
            if holder.is_none() {
                if let Some(own) = pool.find(&account.email).filter(|a| {
                    !a.is_api_key()
                        && a.refresh.as_ref().is_some_and(|r| !r.is_empty())
                        && a.status_enum() != Some(crate::account::Status::AuthError)
                }) {
                    return Err(Error::InvalidArgument(format!(
                        "{} already holds another login, which the pool refreshes on its own: Claude Code's would replace it, and the two would share one refresh token. Remove {} first to replace it (or import under another --email); nothing was imported",
                        own.email, own.email
                    )));
                }
            }
            key_member_aside(pool, &account.email);
            let email = account.email.clone();
            let added = pool.upsert(account);
            Ok((stored_name(pool, email), added))
        })
        .await
}

/// The name of the account whose credential (`held` of it) is `secret`, compared in constant time.
fn holder_of(
    pool: &Pool,
    secret: &Secret,
    held: impl Fn(&Account) -> Option<&Secret>,
) -> Option<String> {
    pool.accounts()
        .find(|a| {
            held(a).is_some_and(|h| {
                subtle::ConstantTimeEq::ct_eq(h.expose().as_bytes(), secret.expose().as_bytes())
                    .into()
            })
        })
        .map(|a| a.email.clone())
}

/// The name an entry `email` names is stored under: the login or key given again in another
/// case renews that entry, and was reported under the name as given (`updated ALICE@...` for
/// an account every list shows as `alice@...`).
fn stored_name(pool: &Pool, email: String) -> String {
    pool.find(&email).map_or(email, |a| a.email.clone())
}

/// A login of this process whose write failed after its code was spent.
struct KeptLogin {
    /// The number of the latest login of its account: an older one still waiting never
    /// overwrites a newer login.
    n: u64,
    /// When its write first failed (epoch ms), and why the last try failed; `None` while the
    /// first write is under way.
    failed: Option<(i64, String)>,
}

/// Logins of this process by store and email (see `KeptLogin`).
static KEPT_LOGINS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<(String, String), KeptLogin>>,
> = std::sync::LazyLock::new(Default::default);

/// Wakes the kept logins' retries when they are given up (`abandon_kept_logins`).
static ABANDONED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Numbers this login as the latest of its account in `store` (a newer one supersedes any kept).
fn latest_login(store: &Store, email: &str) -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let kept = KeptLogin { n, failed: None };
    crate::store::lock(&KEPT_LOGINS).insert((store.key(), email.to_string()), kept);
    n
}

fn is_latest_login(store: &Store, email: &str, n: u64) -> bool {
    crate::store::lock(&KEPT_LOGINS)
        .get(&(store.key(), email.to_string()))
        .is_some_and(|k| k.n == n)
}

/// Records how the latest try of login `n` went: written (it is no longer kept), or the reason
/// it still is not.
fn login_tried(store: &Store, email: &str, n: u64, failure: Option<String>) {
    let mut kept = crate::store::lock(&KEPT_LOGINS);
    let key = (store.key(), email.to_string());
    match (kept.get_mut(&key), failure) {
        (Some(k), Some(reason)) if k.n == n => {
            let since = k.failed.as_ref().map_or_else(now_ms, |(since, _)| *since);
            k.failed = Some((since, reason));
        }
        (Some(k), None) if k.n == n => {
            kept.remove(&key);
        }
        _ => {}
    }
}

/// The logins this process holds unwritten for `store` (`None`: for every store): email, since
/// when (epoch ms) and why the last write failed.
pub fn kept_logins(store: Option<&Store>) -> Vec<(String, i64, String)> {
    let key = store.map(Store::key);
    crate::store::lock(&KEPT_LOGINS)
        .iter()
        .filter(|((s, _), _)| key.as_ref().is_none_or(|k| k == s))
        .filter_map(|((_, email), k)| {
            let (since, reason) = k.failed.as_ref()?;
            Some((email.clone(), *since, reason.clone()))
        })
        .collect()
}

/// Gives up every login kept unwritten: a process about to end on purpose (the CLI, told to stop)
/// has said the login is lost, and its exit must not wait for them, nor write one afterwards.
/// Returns how many were given up.
pub fn abandon_kept_logins() -> usize {
    let mut kept = crate::store::lock(&KEPT_LOGINS);
    let before = kept.len();
    kept.retain(|_, k| k.failed.is_none());
    let given_up = before - kept.len();
    drop(kept);
    ABANDONED.notify_waiters();
    given_up
}

/// `add_oauth` for a login whose code is spent: a write that fails does not drop its tokens (the
/// person would have to log in again). The process keeps them and tries the write again until it
/// lands, for as long as it runs, and the error says so under the write's own code. `unwritten`
/// goes with the tokens, so that an exit waits a little for them.
pub async fn add_oauth_kept(
    store: &Store,
    tokens: Tokens,
    unwritten: crate::engine::credentials::Unwritten,
) -> Result<(String, bool)> {
    let email = login_email(&tokens);
    let n = latest_login(store, &email);
    let e = match add_oauth(store, &tokens).await {
        Ok(done) => {
            login_tried(store, &email, n, None);
            return Ok(done);
        }
        Err(e) => e,
    };
    let code = e.code();
    let reason = unwritten_reason(&e);
    tracing::warn!(account = %email, error = %reason, "a login could not be written; kept in memory and tried again");
    login_tried(store, &email, n, Some(reason.clone()));
    let (kept, account) = (store.clone(), email.clone());
    let retrying = async move {
        let _unwritten = unwritten;
        loop {
            let abandoned = ABANDONED.notified();
            tokio::select! {
                () = tokio::time::sleep(crate::engine::credentials::UNSAVED_RETRY) => {}
                () = abandoned => {}
            }
            if !is_latest_login(&kept, &account, n) {
                return;
            }
            match add_oauth(&kept, &tokens).await {
                Ok(_) => {
                    tracing::info!(account = %account, "wrote the login that could not be written before");
                    login_tried(&kept, &account, n, None);
                    return;
                }
                Err(e) => {
                    tracing::debug!(account = %account, error = %e, "the kept login still cannot be written");
                    login_tried(&kept, &account, n, Some(unwritten_reason(&e)));
                    // Given up while this write was tried: no wait for the next try.
                    if !is_latest_login(&kept, &account, n) {
                        return;
                    }
                }
            }
        }
    };
    if let Err(why) = crate::runtime::spawn(retrying) {
        // Nothing keeps the tokens: the error must not say that anything does.
        tracing::warn!(%why, "the login could not be kept for another write");
        login_tried(store, &email, n, None);
        return Err(e);
    }
    Err(Error::LoginUnsaved {
        email,
        reason,
        code,
    })
}

/// Why a login's write failed, as said to the person: a shortage of threads without its "the next
/// call tries again" (a new call cannot log this login in again, its code is spent).
fn unwritten_reason(e: &Error) -> String {
    match e {
        Error::NoThread(why) => crate::error::no_thread(why),
        other => other.to_string(),
    }
}

/// The name a login goes under.
fn login_email(tokens: &Tokens) -> String {
    // The server's word for the email is held to what names an account; otherwise the login
    // is kept under a name of ours (the tokens are what matter, and the user can rename it).
    tokens
        .email
        .as_deref()
        .map(str::trim)
        .filter(|e| {
            // A name holding a piece of the login's own tokens would carry them into every list,
            // log line and notice that names the account.
            let ok = crate::account::acceptable_server_email(e)
                && !crate::secret::holds_piece(e, &[&tokens.access, &tokens.refresh]);
            if !ok && !e.is_empty() {
                tracing::warn!("the token endpoint's email for this login is not usable as a name; kept under a generated one");
            }
            ok
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("unknown-{}@anthropic-pool", tokens.refresh.fingerprint()))
}

/// The value of a shell or `.env` line (`ANTHROPIC_API_KEY=sk-ant-...`, with `export` and
/// quotes) when it is one of Anthropic's credentials; anything else as it is. The whole line was
/// stored as the key, and `CLAUDE_CODE_OAUTH_TOKEN=sk-ant-oat01-...` passed the refusal of
/// OAuth tokens.
fn assigned_value(text: &str) -> String {
    let line = text.strip_prefix("export ").map_or(text, str::trim_start);
    let Some((name, value)) = line.split_once('=') else {
        return text.to_string();
    };
    let is_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let value = crate::secret::unwrapped_paste(value);
    if is_name && value.starts_with("sk-ant-") {
        value
    } else {
        text.to_string()
    }
}

/// The fewest characters a Console API key has after `sk-ant-apiNN-` (real ones have ~95).
const API_KEY_MIN_SECRET: usize = 20;

/// What follows `sk-ant-api` and its version (`03-`) in a Console API key; none for another text.
fn api_key_secret_part(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("sk-ant-api")?;
    let version = rest.bytes().take_while(u8::is_ascii_digit).count();
    let rest = &rest[version..];
    Some(rest.strip_prefix('-').unwrap_or(rest))
}

/// What a pasted credential is when it is one of Anthropic's, but no API key.
fn not_an_api_key(text: &str) -> Option<&'static str> {
    let kind = text.strip_prefix("sk-ant-")?;
    [
        ("oat", "an OAuth access token"),
        ("ort", "an OAuth refresh token"),
        ("admin", "an Admin API key"),
    ]
    .iter()
    .find(|(prefix, _)| kind.starts_with(prefix))
    .map(|(_, what)| *what)
}

pub async fn add_api_key(
    store: &Store,
    key: &Secret,
    email: Option<&str>,
) -> Result<(String, bool)> {
    // A key copied out of a shell line or a JSON file keeps its quotes; no key holds one, and
    // kept they made a member that every request sent with `"` around its key (a 401 each time).
    let secret = Secret::new(assigned_value(&crate::secret::unwrapped_paste(
        key.expose(),
    )));
    // A key with text before it (`Bearer `, `"key":`, a stray word) was stored whole and sent
    // as `x-api-key` with that text in front: a 401 each time, the member benched.
    if secret.expose().find("sk-ant-").is_some_and(|at| at > 0) {
        return Err(Error::InvalidArgument(
            "that holds a key after other text: paste the key alone (a Console API key starts with sk-ant-api); nothing was added".into(),
        ));
    }
    // A label after the key (`sk-ant-api03-... work`) was "not an API key", which it holds.
    if secret.expose().starts_with("sk-ant-") && secret.expose().contains(char::is_whitespace) {
        return Err(Error::InvalidArgument(
            "that holds a key and other text after it: paste the key alone, and give its name apart (--email on the command line, the name prompt in OpenCode); nothing was added".into(),
        ));
    }
    // A key pasted twice, or two joined by a comma, was stored whole and reported added: every
    // request's 401 then benched a member whose key is good (and the Console shows a key once).
    if secret.expose().matches("sk-ant-").nth(1).is_some() {
        return Err(Error::InvalidArgument(
            "that holds more than one key (pasted twice?): paste one key alone; nothing was added"
                .into(),
        ));
    }
    if secret.expose().starts_with("sk-ant-")
        && !secret
            .expose()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::InvalidArgument(
            "that holds a key and other characters with it (a Console API key is letters, digits, - and _ only): paste the key alone; nothing was added".into(),
        ));
    }
    if secret.expose().len() < 8 || !secret.is_token_shaped() {
        return Err(Error::InvalidArgument(
            // Kept short of a token's shape: every message leaves the process through the
            // scrubber, which showed `sk-ant-api03-...` as "[redacted]".
            "that does not look like an API key (a Console API key starts with sk-ant-api)".into(),
        ));
    }
    // A key cut short (`sk-ant-api03-`, a paste that lost its end) was stored and reported
    // added: every request's 401 then benched the member. A Console key has about a hundred
    // characters after its prefix.
    if let Some(rest) = api_key_secret_part(secret.expose()) {
        if rest.len() < API_KEY_MIN_SECRET {
            return Err(Error::InvalidArgument(format!(
                "that key is cut short ({} characters after its sk-ant-api prefix; a Console API key has about a hundred): paste it whole; nothing was added",
                rest.len()
            )));
        }
    }
    // An OAuth token or an Admin key is no API key: added as one, it went out as `x-api-key`, a
    // 401 each time, and a live refresh token (Claude Code's) sat in a member that never refreshes.
    if let Some(what) = not_an_api_key(secret.expose()) {
        return Err(Error::InvalidArgument(format!(
            "that is {what}, not a Console API key (which starts with sk-ant-api): {}; nothing was added",
            match what {
                "an Admin API key" => "the pool sends requests to the Messages API, which takes API keys only",
                _ => "add the login with `oauth-pool add` (or `oauth-pool import-claude-code`)",
            }
        )));
    }
    let given = email.is_some_and(|e| !e.trim().is_empty());
    let email = email
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("api-key-{}", secret.fingerprint()));
    if !crate::account::acceptable_email(&email) {
        return Err(Error::InvalidArgument(
            "that email cannot name an account: at most 254 characters, no control or invisible characters, and not starting with #".into(),
        ));
    }
    // A name is shown everywhere a key never is: lists, logs, toasts, and the OpenCode tool's
    // answers, which go to the model's provider. The key pasted into the name prompt as well
    // (OpenCode's login asks for both in a row) made it all of those.
    if given && crate::secret::scrub(&email, &[&secret]) != email {
        return Err(Error::InvalidArgument(
            "that name holds the key, a piece of it or another credential (sk-ant-...): a name is shown in lists, logs and the tool's answers; give an email or a label".into(),
        ));
    }
    let account = Account::new_api_key(&email, secret, now_ms());
    let named = email.clone();
    let (email, added) = store
        .update(move |pool| {
            // A key over an OAuth login would put the login aside: the user names the key.
            if pool
                .find(&named)
                .is_some_and(|a| !a.is_api_key() && a.refresh.is_some())
            {
                return Err(Error::InvalidArgument(format!(
                    "{} is an OAuth login; add the key under another email",
                    pool.find(&named)
                        .map_or(named.as_str(), |a| a.email.as_str())
                )));
            }
            // Nor another member's key or token (whatever its shape: `addApiKey` takes any key),
            // nor, the other way round, may another member's name hold this key: names are
            // quoted in lists, the tool's answers and the pool's errors.
            if let Some(key) = account.key.as_ref() {
                names_hold_no_secret(pool, given.then_some(named.as_str()), &[key], "added")?;
            }
            // One key is one limit: a second member holding it would only fail over to the
            // same refusal. The key already in the pool keeps its name.
            let holder = account.key.as_ref().and_then(|key| {
                holder_of(pool, key, |a| a.is_api_key().then_some(a.key.as_ref()).flatten())
            });
            // Another key under the name given (a key rotated): the new one takes the member's
            // place, and the one it held stays, disabled, as a member of its own key's name.
            // Replaced, it was gone for good (the Console shows a key once, when it is made) if
            // that was not what the person meant; `enable` serves it again, `remove` takes it out
            // once it is revoked. Enabled, it served before the new key (a member made anew has
            // priority 0, the rotated member's may be below), or in its stead when that was off.
            if let Some(old) = pool
                .find(&named)
                .filter(|a| holder.is_none() && a.is_api_key())
                .and_then(|a| a.key.clone())
                .filter(|k| !k.is_empty())
            {
                let aside = format!("api-key-{}", old.fingerprint());
                if pool.find(&aside).is_none() {
                    tracing::warn!(account = %named, kept = %aside, "a new key for a key member; the key it held is kept as a member of its own");
                    let mut kept = Account::new_api_key(&aside, old, now_ms());
                    kept.enabled = Some(false);
                    kept.status = Status::Disabled.as_str().into();
                    pool.anthropic
                        .push(crate::pool::Entry::Valid(Box::new(kept)));
                }
            }
            let mut account = account;
            let normalize = crate::account::normalize_email;
            if let Some(holder) = holder.filter(|h| normalize(h) != normalize(&named)) {
                if given {
                    return Err(Error::InvalidArgument(format!(
                        "that key is already in the pool as {holder}: remove {holder} first to add it under another name"
                    )));
                }
                account.email = holder;
            }
            let email = account.email.clone();
            let added = pool.upsert(account);
            Ok((stored_name(pool, email), added))
        })
        .await?;
    Ok((email, added))
}

/// Removes what `target` names: an email (exact match first; a case-only clash is refused as
/// ambiguous), also of an unreadable entry, or `#N` for the N-th entry. Answers how many entries
/// went, and the emails of the accounts among them (what the engine forgets about them).
pub async fn remove(store: &Store, target: &str) -> Result<(usize, Vec<String>)> {
    let target = target.to_string();
    store
        .update_existing(move |pool| {
            let emails = emails_of(pool, &target)?;
            Ok((pool.remove(&target)?, emails))
        })
        .await
}

/// The stored emails of every entry `target` names as remove, enable and priority resolve it
/// (`Pool::resolve`), unreadable entries' too where they hold one: what a permission rule for
/// one account is asked with. None when it names nothing (or several that differ in case,
/// which those refuse).
pub fn named(pool: &Pool, target: &str) -> Vec<String> {
    pool.resolve(target)
        .map(|found| {
            found
                .into_iter()
                .filter_map(|i| pool.anthropic[i].email().map(|e| e.trim().to_string()))
                .filter(|e| !e.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The emails of the readable accounts `target` names.
fn emails_of(pool: &Pool, target: &str) -> Result<Vec<String>> {
    Ok(pool
        .resolve(target)?
        .into_iter()
        .filter_map(|i| match &pool.anthropic[i] {
            Entry::Valid(a) => Some(a.email.clone()),
            Entry::Invalid { .. } => None,
        })
        .collect())
}

/// The readable accounts `target` names, for changes that need one; their emails as stored
/// (a target may be `#N`, or differ in case or spaces), for the caller to say whom it changed.
fn each_account(
    pool: &mut Pool,
    target: &str,
    mut change: impl FnMut(&mut Account),
) -> Result<Vec<String>> {
    let indexes = pool.resolve(target)?;
    let mut emails = Vec::with_capacity(indexes.len());
    for i in indexes {
        match &mut pool.anthropic[i] {
            Entry::Valid(a) => {
                change(a);
                emails.push(a.email.clone());
            }
            Entry::Invalid { reason, .. } => {
                return Err(Error::InvalidArgument(format!(
                    "the entry {target} is unreadable ({reason}): fix it in the file or remove it"
                )))
            }
        }
    }
    Ok(emails)
}

/// Enables or disables what `target` names; the emails of the accounts changed.
pub async fn set_enabled(store: &Store, target: &str, enabled: bool) -> Result<Vec<String>> {
    let target = target.to_string();
    store
        .update_existing(move |pool| {
            each_account(pool, &target, |a| {
                if enabled {
                    a.enabled = None;
                    if a.status_enum() == Some(Status::Disabled) {
                        // Disabling wrote over an auth-error of ours: while the refused
                        // credential is still the account's, it stays refused (only a new
                        // login clears it, and that removes `authErrorToken`).
                        let tag = a.credential_tag();
                        let refused = a
                            .extra
                            .get("authErrorToken")
                            .and_then(Value::as_str)
                            .is_some_and(|refused| tag.as_deref() == Some(refused));
                        a.status = if refused {
                            Status::AuthError
                        } else {
                            Status::Idle
                        }
                        .as_str()
                        .into();
                    }
                } else {
                    a.enabled = Some(false);
                    a.status = Status::Disabled.as_str().into();
                }
            })
        })
        .await
}

/// The emails of the accounts changed, as for `set_enabled`.
pub async fn set_priority(store: &Store, target: &str, priority: i64) -> Result<Vec<String>> {
    let target = target.to_string();
    store
        .update_existing(move |pool| each_account(pool, &target, |a| a.priority = Some(priority)))
        .await
}

/// Keeps `fraction` of every window for the account's owner (0 clears it); the emails changed.
pub async fn set_reserve(store: &Store, target: &str, fraction: f64) -> Result<Vec<String>> {
    if !fraction.is_finite() || !(0.0..=1.0).contains(&fraction) {
        return Err(Error::InvalidArgument(format!(
            "a reserve is a fraction from 0 to 1 (0.2 keeps 20 % of every window), got {fraction}"
        )));
    }
    let target = target.to_string();
    store
        .update_existing(move |pool| {
            each_account(pool, &target, |a| {
                if fraction == 0.0 {
                    a.extra.shift_remove("reserve");
                } else {
                    a.extra.insert("reserve".into(), json!(fraction));
                }
            })
        })
        .await
}

pub async fn reset_cooldowns(store: &Store) -> Result<usize> {
    store
        .update_existing(|pool| {
            let mut changed = 0;
            let now = crate::account::now_ms();
            for a in pool.accounts_mut() {
                // A running token-endpoint wait is a rest too: every process that met the 401
                // behind it leaves the account alone until then.
                let cooling = a.stored_cooldown_until().is_some()
                    || a.status_enum() == Some(Status::RateLimited)
                    || a.extra.contains_key("modelCooldowns")
                    || a.refresh_backoff_until(now).is_some();
                // Running processes keep rests of their own (after a 401 no new token answered)
                // that the store does not hold: this tells them to lift them.
                a.mark_cooldowns_reset(now);
                if cooling {
                    a.clear_cooldown();
                    a.extra.shift_remove("modelCooldowns");
                    if a.status_enum() == Some(Status::RateLimited) {
                        a.status = Status::Idle.as_str().into();
                    }
                    changed += 1;
                }
                a.extra.shift_remove("refreshBackoffUntil");
                a.extra.shift_remove("cooldownsSetAt");
            }
            Ok(changed)
        })
        .await
}

/// Reads Claude Code's `~/.claude/.credentials.json` (`claudeAiOauth`). The caller supplies the
/// email when the file has none (it usually has none). The file is read like any path a person
/// or a script hands us: a regular file, at most 1 MB, never a blocking open.
pub fn import_claude_code(credentials: &Path, email: Option<&str>) -> Result<Tokens> {
    let shown = credentials.display();
    // Not the pool's file: its read failing (a file of another user, EIO) is no POOL_IO,
    // which says the pool is broken.
    let refused = |e: ReadError| match e {
        ReadError::Io(io) => Error::InvalidArgument(format!(
            "Claude Code credentials {shown} cannot be read: {}; nothing was imported",
            io
        )),
        other => {
            Error::InvalidArgument(format!("Claude Code credentials {shown} refused: {other}"))
        }
    };
    let file = fsread::open_regular(credentials, true).map_err(refused)?;
    // Another user's login (a file readable to all, or a link to one): imported, its token family
    // was shared, and the pool's first refresh logged that user out. The file opened is asked,
    // whatever link led to it.
    if let Some(uid) = file
        .metadata()
        .ok()
        .as_ref()
        .and_then(fsread::foreign_owner)
    {
        return Err(Error::InvalidArgument(format!(
            "Claude Code credentials {shown} belong to another user (uid {uid}): their login is theirs to use, and a refresh here would log them out; nothing was imported"
        )));
    }
    let bytes = fsread::read_capped(&file, MAX_CREDENTIALS_FILE).map_err(refused)?;
    let v: Value = crate::pool::json_text(&bytes)
        .and_then(|text| serde_json::from_slice(text).map_err(|e| e.to_string()))
        .map_err(|e| Error::InvalidArgument(format!("{shown} is not JSON: {e}")))?;
    let o = v.get("claudeAiOauth").unwrap_or(&v);
    let s = |k: &str| o.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let access = s("accessToken").ok_or_else(|| {
        Error::InvalidArgument(format!("{shown} holds no claudeAiOauth.accessToken"))
    })?;
    let refresh = s("refreshToken").ok_or_else(|| {
        Error::InvalidArgument(format!("{shown} holds no claudeAiOauth.refreshToken"))
    })?;
    // Held to what a token endpoint's answer is held to (`oauth::parse_token_response`): a value
    // no header can carry (a space, a control character, megabytes) was stored, and then failed
    // every request of the account.
    for (name, token) in [("accessToken", access), ("refreshToken", refresh)] {
        if !Secret::new(token).is_token_shaped() {
            return Err(Error::InvalidArgument(format!(
                "{shown} holds a claudeAiOauth.{name} that is not a token (visible ASCII, at most {} characters): nothing was imported",
                crate::secret::MAX_TOKEN_LEN
            )));
        }
    }
    // Read as the pool reads its own times (a float, a number as text, seconds, an ISO date):
    // anything but a whole number read as 0, expired, and the first request refreshed at once,
    // spending the token family Claude Code shares and logging it out.
    let expires = o
        .get("expiresAt")
        .and_then(crate::account::epoch_ms_of)
        .unwrap_or(0);
    // A name given for the login is refused as `add_api_key` refuses one: it was put aside for a
    // name of the pool's, and the person did not get the name they gave.
    if email.is_some_and(|e| crate::secret::scrub_tokens(e) != e) {
        return Err(Error::InvalidArgument(
            "that name holds a credential (sk-ant-...): a name is shown in lists, logs and the tool's answers; give an email or a label: nothing was imported".into(),
        ));
    }
    let email = email
        .map(crate::account::normalize_email)
        .or_else(|| s("email").map(str::to_string));
    if let Some(e) = email
        .as_deref()
        .filter(|e| !crate::account::acceptable_email(e))
    {
        return Err(Error::InvalidArgument(format!(
            "{:?} cannot name an account: at most 254 characters, no control or invisible characters, and not starting with #",
            e.chars().take(64).collect::<String>()
        )));
    }
    Ok(Tokens {
        access: Secret::new(access),
        refresh: Secret::new(refresh),
        expires,
        email,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pasted_shell_line_gives_its_value_when_that_is_an_anthropic_credential() {
        // Made at run time: no token-shaped literal in the tree.
        let key = format!("{}-abcdefghijklmnop", ["sk", "ant", "api03"].join("-"));
        for line in [
            format!("ANTHROPIC_API_KEY={key}"),
            format!("export ANTHROPIC_API_KEY=\"{key}\""),
            format!("export  _KEY_2='{key}'"),
        ] {
            assert_eq!(assigned_value(&line), *key, "{line}");
        }
        assert_eq!(
            not_an_api_key(&assigned_value(&format!(
                "CLAUDE_CODE_OAUTH_TOKEN={}-abcdefgh",
                ["sk", "ant", "oat01"].join("-")
            ))),
            Some("an OAuth access token")
        );
        // Left as they are: a key holding `=` of its own, a name that is no shell name, a value
        // that is none of Anthropic's.
        for text in [
            "fake-key=tail",
            "2KEY=sk-ant-api03-x",
            "A-B=sk-ant-api03-x",
            "NAME=hunter2hunter2",
            key.as_str(),
        ] {
            assert_eq!(assigned_value(text), text);
        }
    }

    #[test]
    fn usage_counts_written_as_whole_floats_or_odd_are_read_one_by_one() {
        let now = now_ms();
        let today = crate::engine::bookkeeping::day_of(now);
        let pool = Pool::from_value(json!({"anthropic": [{
            "type": "oauth", "email": "a@x", "access": "a", "refresh": "r", "expires": now,
            "usage": {"days": {today.clone(): {
                "claude-sonnet-4-5": {"requests": 57.0, "input": 1000, "output": "ten"},
                "claude-opus-4-1": {"requests": 2, "input": 1.5},
            }}},
        }]}))
        .unwrap();
        let view = &list(&pool, now)[0]["usage"]["today"];
        assert_eq!(
            view["byModel"]["claude-sonnet-4-5"]["requests"], 57,
            "{view}"
        );
        assert_eq!(
            view["byModel"]["claude-sonnet-4-5"]["input"], 1000,
            "{view}"
        );
        assert_eq!(view["byModel"]["claude-sonnet-4-5"]["output"], 0, "{view}");
        assert_eq!(view["byModel"]["claude-opus-4-1"]["requests"], 2, "{view}");
        assert_eq!(view["total"]["requests"], 59, "{view}");
    }

    #[test]
    fn the_legacy_quota_shows_a_window_whose_reset_passed_as_started_over() {
        let now = now_ms();
        let pool = Pool::from_value(json!({"anthropic": [{
            "type": "oauth", "email": "a@x", "access": "a", "refresh": "r", "expires": now,
            "limits": {"updatedAt": now - 7_200_000, "windows": {
                "5h": {"status": "rejected", "utilization": 1.0, "reset": now - 60_000},
                "7d": {"status": "allowed", "utilization": 0.5, "reset": now + 86_400_000},
            }},
        }]}))
        .unwrap();
        let view = &list(&pool, now)[0];
        let five = &view["quota"]["fiveHour"];
        assert_eq!(
            (&five["status"], &five["utilization"], &five["resetsAt"]),
            (&Value::Null, &json!(0.0), &Value::Null),
            "{view}"
        );
        assert_eq!(five, &{
            let w = &view["windows"][0];
            json!({"utilization": w["utilization"], "resetsAt": w["resetsAt"], "status": w["status"]})
        });
        let seven = &view["quota"]["sevenDay"];
        assert_eq!(seven["status"], "allowed", "{view}");
        assert_eq!(seven["utilization"], 0.5, "{view}");
    }

    #[test]
    fn the_pool_s_own_record_is_written_as_a_list_of_one_object_and_read_in_either_form() {
        let ours = json!({"at": 1, "from": "a@x", "to": null, "reason": "429"});
        // An older file's bare object: read, and moved into the list when written, with what a
        // later version kept beside it.
        let mut pool = Pool::from_value(
            json!({"anthropic": [], "_oauthPool": {"lastFailover": ours, "later": 5}}),
        )
        .unwrap();
        assert_eq!(last_failover(&pool), Some(ours.clone()));
        meta_mut(&mut pool).unwrap().insert("next".into(), json!(1));
        assert_eq!(
            pool.extra[META_KEY],
            json!([{"lastFailover": ours, "later": 5, "next": 1}])
        );
        assert_eq!(last_failover(&pool), Some(ours.clone()));
        // Made as a list; one of another shape is replaced.
        for section in [None, Some(json!("x")), Some(json!([]))] {
            let mut pool = Pool::from_value(json!({"anthropic": []})).unwrap();
            if let Some(v) = section.clone() {
                pool.extra.insert(META_KEY.into(), v);
            }
            meta_mut(&mut pool)
                .unwrap()
                .insert("lastFailover".into(), ours.clone());
            assert_eq!(
                pool.extra[META_KEY],
                json!([{"lastFailover": ours}]),
                "{section:?}"
            );
        }
    }

    #[test]
    fn a_last_failover_section_not_of_the_recorded_shape_is_none() {
        let of = |v: Value| last_failover(&Pool::from_value(v).unwrap());
        for other in [
            json!({}),
            json!("yesterday"),
            json!({"at": "2024", "from": 3}),
        ] {
            assert_eq!(
                of(json!({"anthropic": [], "lastFailover": other})),
                None,
                "{other}"
            );
        }
        let ours = json!({"at": 1, "from": "a@x", "to": null, "reason": "429"});
        assert_eq!(
            of(json!({"anthropic": [], "_oauthPool": {"lastFailover": {}}, "lastFailover": ours})),
            Some(ours.clone())
        );
        let without_to = json!({"anthropic": [], "_oauthPool": {"lastFailover": {"at": 1, "from": "a@x", "reason": "429"}}});
        assert_eq!(of(without_to), Some(ours));
    }

    #[tokio::test]
    async fn a_name_holding_another_members_key_of_any_shape_is_refused() {
        // Found by a review: a label holding another member's key with punctuation in it
        // (`addApiKey` takes any key) was taken, and the tool's answers quoted it whole.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::file(dir.path().join("p.json"));
        let odd = Secret::new("Zq!9xY#4pL$7mN%2vB^8");
        add_api_key(&store, &odd, Some("first")).await.unwrap();
        for name in [
            "team Zq!9xY#4pL$7mN%2vB^8",
            "Zq!9xY#4pL$7mN%2vB^8",
            "team 9xY#4pL$7mN%2v",
            "team zq!9xy#4pl$7mn%2vb^8",
        ] {
            let err = add_api_key(&store, &Secret::new("Another-odd!key#0001"), Some(name))
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m.contains("another account's")),
                "{name}: {err}"
            );
        }
        assert_eq!(store.load().await.unwrap().accounts().count(), 1);
        add_api_key(&store, &Secret::new("Another-odd!key#0001"), Some("team"))
            .await
            .unwrap();
        // The other order: a name given first, the key it holds added after (found by a
        // review), also when the name holds it in other case.
        let store = Store::file(dir.path().join("q.json"));
        add_api_key(
            &store,
            &Secret::new("Plain!other#key01"),
            Some("team zq!9xy#4pl$7mn%2vb^8"),
        )
        .await
        .unwrap();
        let err = add_api_key(&store, &Secret::new("Zq!9xY#4pL$7mN%2vB^8"), Some("first"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("entry #0")),
            "{err}"
        );
        assert_eq!(store.load().await.unwrap().accounts().count(), 1);
    }

    #[tokio::test]
    async fn disable_then_enable_keeps_an_auth_error_of_the_same_credential() {
        // Found by the chaos test: `disable` wrote status "disabled" over "auth-error" and
        // `enable` then made it "idle", so a login that needs renewing looked usable and its
        // refused tokens were presented again.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::file(dir.path().join("p.json"));
        let t = Tokens {
            access: "a".into(),
            refresh: "r".into(),
            expires: now_ms() + 3_600_000,
            email: Some("a@x".into()),
        };
        add_oauth(&store, &t).await.unwrap();
        store
            .update(|pool| {
                let a = pool.find_mut("a@x").unwrap();
                a.status = Status::AuthError.as_str().into();
                let tag = a.credential_tag().unwrap();
                a.extra.insert("authErrorToken".into(), json!(tag));
                Ok(())
            })
            .await
            .unwrap();
        set_enabled(&store, "a@x", false).await.unwrap();
        set_enabled(&store, "a@x", true).await.unwrap();
        let pool = store.load().await.unwrap();
        let a = pool.find("a@x").unwrap();
        assert_eq!(a.status_enum(), Some(Status::AuthError), "{}", a.status);
        assert!(a.auth_error_is_ours());
        // A new login while disabled clears the mark: enabled again, it is usable.
        set_enabled(&store, "a@x", false).await.unwrap();
        add_oauth(
            &store,
            &Tokens {
                refresh: "r2".into(),
                ..t.clone()
            },
        )
        .await
        .unwrap();
        set_enabled(&store, "a@x", true).await.unwrap();
        let pool = store.load().await.unwrap();
        assert_eq!(pool.find("a@x").unwrap().status_enum(), Some(Status::Idle));
    }

    #[tokio::test]
    async fn no_add_or_import_puts_another_credential_out_of_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::file(dir.path().join("p.json"));
        let tokens = |refresh: &str, email: &str| Tokens {
            access: format!("access-of-{refresh}").into(),
            refresh: refresh.into(),
            expires: now_ms() + 3_600_000,
            email: Some(email.into()),
        };
        let refresh_of = |pool: &Pool, email: &str| {
            pool.find(email)
                .and_then(|a| a.refresh.as_ref().map(|r| r.expose().to_string()))
        };
        // A second key under a key member's name (a key rotated): it takes the member, and the
        // first stays, under its own key's name.
        let first = Secret::new("fake-console-key-first");
        add_api_key(&store, &first, Some("team")).await.unwrap();
        let second = Secret::new("fake-console-key-second");
        assert_eq!(
            add_api_key(&store, &second, Some("team")).await.unwrap(),
            ("team".into(), false)
        );
        let pool = store.load().await.unwrap();
        assert_eq!(pool.find("team").unwrap().key.as_ref(), Some(&second));
        let aside = format!("api-key-{}", first.fingerprint());
        assert_eq!(
            pool.find(&aside).and_then(|a| a.key.clone()),
            Some(first.clone())
        );
        // Kept disabled: enabled, a key rotated from a member set below the subscriptions
        // served ahead of the new one (it had priority 0).
        assert!(!pool.find(&aside).unwrap().is_enabled());
        assert!(pool.find("team").unwrap().is_enabled());
        // The same key under its own name again is no second key.
        assert_eq!(
            add_api_key(&store, &second, Some("team")).await.unwrap(),
            ("team".into(), false)
        );
        assert_eq!(store.load().await.unwrap().accounts().count(), 2);
        // A login named as a key member: both serve, the key under its own name.
        let key = Secret::new("fake-console-key-of-me");
        add_api_key(&store, &key, Some("me@x")).await.unwrap();
        assert_eq!(
            add_oauth(&store, &tokens("own", "me@x")).await.unwrap(),
            ("me@x".into(), true)
        );
        let pool = store.load().await.unwrap();
        assert!(!pool.find("me@x").unwrap().is_api_key());
        let aside = format!("api-key-{}", key.fingerprint());
        assert_eq!(
            pool.find(&aside).map(|a| (a.is_api_key(), a.key.clone())),
            Some((true, Some(key)))
        );
        // An import over a login of the pool's own (a typo'd --email, or `add` first): refused.
        let refused = add_imported(&store, &tokens("claude-code", "me@x"), true)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), "INVALID_ARGUMENT");
        assert!(
            refused.to_string().contains("already holds another login"),
            "{refused}"
        );
        assert_eq!(
            refresh_of(&store.load().await.unwrap(), "me@x").as_deref(),
            Some("own")
        );
        // Its own tokens again (imported before) update it; a login marked refused is replaced.
        add_imported(&store, &tokens("own", "me@x"), false)
            .await
            .unwrap();
        store
            .update(|pool| {
                pool.find_mut("me@x").unwrap().status = Status::AuthError.as_str().into();
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(
            add_imported(&store, &tokens("claude-code", "me@x"), false)
                .await
                .unwrap(),
            ("me@x".into(), false)
        );
        assert_eq!(
            refresh_of(&store.load().await.unwrap(), "me@x").as_deref(),
            Some("claude-code")
        );
        // A key with a label after it is told as such.
        let labelled = format!("{}-abcdefghijklmnop work", ["sk", "ant", "api03"].join("-"));
        let e = add_api_key(&store, &Secret::new(labelled), None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("other text after it"), "{e}");
        // A key pasted twice, or two joined, is refused, not stored whole and reported added.
        let key = format!("{}-abcdefghijklmnop", ["sk", "ant", "api03"].join("-"));
        for (paste, told) in [
            (format!("{key}{key}"), "more than one key"),
            (format!("{key},{key}x"), "more than one key"),
            (format!("{key};"), "letters, digits"),
            (format!("{key}|work"), "letters, digits"),
        ] {
            let e = add_api_key(&store, &Secret::new(paste.clone()), Some("k@x"))
                .await
                .unwrap_err();
            assert!(e.to_string().contains(told), "{paste}: {e}");
        }
        assert!(store.load().await.unwrap().find("k@x").is_none());
    }

    #[tokio::test]
    async fn management_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::file(dir.path().join("p.json"));
        let t = Tokens {
            access: "a".into(),
            refresh: "r".into(),
            expires: now_ms() + 3_600_000,
            email: Some("a@x".into()),
        };
        assert_eq!(add_oauth(&store, &t).await.unwrap(), ("a@x".into(), true));
        assert_eq!(add_oauth(&store, &t).await.unwrap(), ("a@x".into(), false));
        let key = Secret::new("fake-console-key-xyz");
        let (email, added) = add_api_key(&store, &key, None).await.unwrap();
        assert!(added && email.starts_with("api-key-"));
        assert!(add_api_key(&store, &Secret::new("short"), None)
            .await
            .is_err());
        // A key under an OAuth login's email (any case) is refused, the login untouched.
        let over = add_api_key(&store, &key, Some(" A@X ")).await.unwrap_err();
        assert_eq!(over.code(), "INVALID_ARGUMENT");
        assert!(over.to_string().contains("a@x is an OAuth login"), "{over}");
        let a = store.load().await.unwrap();
        assert_eq!(
            a.find("a@x").unwrap().refresh.as_ref().unwrap().expose(),
            "r"
        );
        // The same key again: without a name it is the member it already is; under another
        // name it is refused (two members of one key fail over to the same limit).
        let again = add_api_key(&store, &Secret::new("  fake-console-key-xyz \n"), None).await;
        assert_eq!(again.unwrap(), (email.clone(), false));
        let renamed = add_api_key(&store, &key, Some("team@x")).await.unwrap_err();
        assert_eq!(renamed.code(), "INVALID_ARGUMENT");
        assert!(renamed.to_string().contains(&email), "{renamed}");
        assert!(!renamed.to_string().contains(key.expose()), "{renamed}");
        let named_key = Secret::new("fake-console-key-named");
        let (team, _) = add_api_key(&store, &named_key, Some("team@x"))
            .await
            .unwrap();
        assert_eq!(
            add_api_key(&store, &named_key, None).await.unwrap(),
            (team, false)
        );
        let pool = store.load().await.unwrap();
        assert_eq!(pool.accounts().filter(|a| a.is_api_key()).count(), 2);
        remove(&store, "team@x").await.unwrap();
        for bad in ["#0", "evil\u{1b}]0;title\u{7}@x"] {
            let e = add_api_key(&store, &key, Some(bad)).await.unwrap_err();
            assert_eq!(e.code(), "INVALID_ARGUMENT", "{bad:?}");
        }
        // The key (or a credential) as its own name would be shown wherever names are.
        let real =
            Secret::new(["sk", "ant", "api03", "FAKEnameKEY0123456789abcdefghij-AA"].join("-"));
        for bad in [
            real.expose().to_string(),
            format!("  {}  ", real.expose()),
            format!("team {}", &real.expose()[10..30]),
            ["sk", "ant", "oat01", "another-credential-0123456789"].join("-"),
        ] {
            let e = add_api_key(&store, &real, Some(&bad)).await.unwrap_err();
            assert_eq!(e.code(), "INVALID_ARGUMENT", "{bad:?}");
            assert!(!e.to_string().contains(&real.expose()[13..]), "{e}");
        }
        assert!(store
            .load()
            .await
            .unwrap()
            .accounts()
            .all(|a| !a.email.contains("FAKEnameKEY")));
        // A login whose email the server made unusable is kept under a name of ours.
        let odd = Tokens {
            email: Some("x\u{1b}[2J@x".into()),
            refresh: "r-odd".into(),
            ..t.clone()
        };
        let (named, _) = add_oauth(&store, &odd).await.unwrap();
        assert!(
            named.starts_with("unknown-") && named.ends_with("@anthropic-pool"),
            "{named}"
        );
        remove(&store, &named).await.unwrap();
        set_priority(&store, "a@x", 3).await.unwrap();
        set_enabled(&store, "a@x", false).await.unwrap();
        let pool = store.load().await.unwrap();
        let s = status(&pool, &store.describe(), now_ms());
        assert_eq!(s["counts"]["disabled"], json!(1));
        assert_eq!(s["counts"]["total"], json!(2));
        let text = s.to_string();
        assert!(!text.contains("fake-console-key-xyz") && !text.contains("\"r\""));
        set_enabled(&store, "a@x", true).await.unwrap();
        store
            .update(|p| {
                let a = p.find_mut("a@x").unwrap();
                a.status = "rate-limited".into();
                a.rate_limit_until = Some(now_ms() + 60_000);
                Ok(())
            })
            .await
            .unwrap();
        let soonest = |pool: &Pool| status(pool, "", now_ms())["soonestReset"].as_i64();
        assert!(soonest(&store.load().await.unwrap()).is_some());
        // A disabled account is not coming back when its cooldown ends.
        set_enabled(&store, "a@x", false).await.unwrap();
        assert_eq!(soonest(&store.load().await.unwrap()), None);
        set_enabled(&store, "a@x", true).await.unwrap();
        assert_eq!(reset_cooldowns(&store).await.unwrap(), 1);
        assert_eq!(
            store.load().await.unwrap().find("a@x").unwrap().status,
            "idle"
        );
        assert_eq!(
            remove(&store, "nobody@x").await.unwrap_err().code(),
            "ACCOUNT_NOT_FOUND"
        );
        assert_eq!(
            remove(&store, "A@x").await.unwrap(),
            (1, vec!["a@x".to_string()])
        );
    }

    #[test]
    fn claude_code_credentials_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join(".credentials.json");
        std::fs::write(
            &creds,
            r#"{"claudeAiOauth":{"accessToken":"at","refreshToken":"rt","expiresAt":1800000000000,"scopes":[]}}"#,
        )
        .unwrap();
        let t = import_claude_code(&creds, Some("Me@X")).unwrap();
        assert_eq!(t.email.as_deref(), Some("me@x"));
        assert_eq!(t.expires, 1_800_000_000_000);
        std::fs::write(&creds, "{}").unwrap();
        assert!(import_claude_code(&creds, None).is_err());
        #[cfg(unix)]
        {
            let started = std::time::Instant::now();
            let err = import_claude_code(Path::new("/dev/zero"), None).unwrap_err();
            assert_eq!(err.code(), "INVALID_ARGUMENT");
            assert!(started.elapsed().as_secs() < 2);
        }
    }
}
