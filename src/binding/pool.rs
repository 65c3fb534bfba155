//! The pool from JavaScript: load, save, account changes, status.

use napi_derive::napi;
use serde_json::{json, Value};

use napi::bindgen_prelude::PromiseRaw;
use napi::Env;

use super::{js_error, promise, store_for, JsResult};
use crate::account::now_ms;
use crate::engine::Engine;
use crate::manage;
use crate::pool::{Pool, ReadCopy};

/// The pool as JSON text, which index.mjs hands to `JSON.parse`: numbers as `JSON.parse` reads
/// them (an integer past 2^53 as the nearest number: as a napi value it became a BigInt, which
/// `JSON.stringify` throws on and `savePool` refuses, while the file keeps it exact until
/// JavaScript writes the pool), and an own `"__proto__"` key an own key (set on a napi object,
/// it became the account's prototype: the account was no plain object, and `savePool` refused
/// the pool it had just loaded).
/// `from`: which pool it was read from (`Store::identity`), which `savePool` is handed back.
#[napi(object)]
pub struct LoadedPool {
    pub text: String,
    pub from: String,
}

#[napi(
    js_name = "loadPool",
    ts_return_type = "Promise<LoadedPool>",
    catch_unwind
)]
pub fn load_pool(env: &Env, path: Option<String>) -> JsResult<PromiseRaw<'_, LoadedPool>> {
    promise(env, async move {
        let store = store_for(path.as_deref()).map_err(js_error)?;
        let pool = store.load().await.map_err(js_error)?;
        let text = serde_json::to_string(&pool.into_loaded_value())
            .map_err(|e| js_error(crate::error::Error::PoolInvalid(e.to_string())))?;
        Ok(LoadedPool {
            text,
            from: store.identity().await,
        })
    })
}

/// `read_at`: when `loadPool` read the copy given (epoch ms), and `held`: its accounts as read
/// (`{ anthropic: [...] }`), which index.mjs keeps on the pool object it returned; accounts
/// added since are kept, those removed since stay out, fields changed since that the copy holds
/// as read take the stored values.
#[napi(js_name = "savePool", ts_return_type = "Promise<void>", catch_unwind)]
pub fn save_pool(
    env: &Env,
    pool: Value,
    path: Option<String>,
    read_at: Option<f64>,
    held: Option<Value>,
    read_from: Option<String>,
) -> JsResult<PromiseRaw<'_, ()>> {
    promise(env, async move {
        let store = store_for(path.as_deref()).map_err(js_error)?;
        // What was read says what was removed from that pool only, whichever way its path is
        // spelt (the variable, a relative path, a link): saved to another, the copy replaces it.
        let same_pool = match read_from {
            Some(from) => from == store.identity().await,
            None => false,
        };
        // Made by index.mjs from what loadPool gave; unreadable, nothing is left out.
        let held = held.filter(|_| same_pool).and_then(Pool::from_held);
        let pool = Pool::from_caller_read(pool, held.as_ref()).map_err(js_error)?;
        let read = ReadCopy {
            at: read_at.filter(|t| t.is_finite()).map(|t| t as i64),
            held,
            spent: Vec::new(),
        };
        store.save_read_at(pool, read).await.map_err(js_error)?;
        Engine::for_store(store).reset_memory();
        Ok(())
    })
}

#[napi(
    js_name = "listAccounts",
    ts_return_type = "Promise<any>",
    catch_unwind
)]
pub fn list_accounts(env: &Env, path: Option<String>) -> JsResult<PromiseRaw<'_, Value>> {
    promise(env, async move {
        let store = store_for(path.as_deref()).map_err(js_error)?;
        let pool = store.load().await.map_err(js_error)?;
        let now = now_ms();
        let mut accounts = manage::list(&pool, now);
        manage::engine_view(&mut accounts, &pool, &Engine::for_store(store), now);
        let mut accounts = Value::Array(accounts);
        as_javascript_numbers(&mut accounts);
        Ok(accounts)
    })
}

/// Integers past ±(2^53 − 1) (a priority another program wrote) as the nearest number, as
/// `JSON.parse` and `loadPool` give them: handed over as BigInts, they failed every
/// `JSON.stringify` of the answer (`list --json` with an uncoded error).
fn as_javascript_numbers(value: &mut Value) {
    const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
    match value {
        Value::Number(n)
            if !n.is_f64()
                && n.as_i64()
                    .is_none_or(|i| i.unsigned_abs() > MAX_SAFE_INTEGER) =>
        {
            if let Some(nearest) = n.as_f64().and_then(serde_json::Number::from_f64) {
                *n = nearest;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(as_javascript_numbers),
        Value::Object(fields) => fields.values_mut().for_each(as_javascript_numbers),
        _ => {}
    }
}

#[napi(js_name = "poolStatus", ts_return_type = "Promise<any>", catch_unwind)]
pub fn pool_status(env: &Env, path: Option<String>) -> JsResult<PromiseRaw<'_, Value>> {
    promise(env, async move {
        let store = store_for(path.as_deref()).map_err(js_error)?;
        let pool = store.load().await.map_err(js_error)?;
        let now = now_ms();
        let mut status = manage::status(&pool, &store.describe(), now);
        let kept_in = store.clone();
        let engine = Engine::for_store(store);
        // "Usable" as the engine will choose: reserves and refusals included, which the stored
        // fields alone do not say.
        let usable = pool
            .accounts()
            .filter(|a| engine.usable(&pool, a, now))
            .count();
        status["counts"]["usable"] = usable.into();
        if let Some(Value::Array(accounts)) = status.get_mut("accounts") {
            if let Some(held) = manage::engine_view(accounts, &pool, &engine, now) {
                let soonest = status["soonestReset"]
                    .as_i64()
                    .map_or(held, |s| s.min(held));
                status["soonestReset"] = soonest.into();
            }
        }
        let runtime = engine.runtime_status(&pool).await;
        if let (Value::Object(s), Value::Object(r)) = (&mut status, runtime) {
            s.extend(r);
        }
        // A login whose write failed after its code was spent is new tokens only this process
        // holds, like a refresh's that could not be saved.
        if let Some(Value::Array(unsaved)) = status.get_mut("unsavedTokens") {
            for (email, since, error) in manage::kept_logins(Some(&kept_in)) {
                unsaved.push(json!({ "email": email, "since": since, "error": error }));
            }
        }
        as_javascript_numbers(&mut status);
        Ok(status)
    })
}

#[napi(
    js_name = "removeAccount",
    ts_return_type = "Promise<number>",
    catch_unwind
)]
pub fn remove_account(
    env: &Env,
    email: String,
    path: Option<String>,
) -> JsResult<PromiseRaw<'_, u32>> {
    promise(env, async move {
        let store = store_for(path.as_deref()).map_err(js_error)?;
        let (n, removed) = manage::remove(&store, &email).await.map_err(js_error)?;
        // Only what was removed: another account's rest after a 401 no new token answered is
        // this process's alone, and its refused token would be sent again at once.
        let engine = Engine::for_store(store);
        for email in &removed {
            engine.forget(email);
        }
        Ok(n as u32)
    })
}

// These three answer the emails they changed, as stored: the CLI says whom `#2` or `ALICE@X`
// named rather than echoing what was typed.
#[napi(
    js_name = "setEnabled",
    ts_return_type = "Promise<string[]>",
    catch_unwind
)]
pub fn set_enabled(
    env: &Env,
    email: String,
    enabled: bool,
    path: Option<String>,
) -> JsResult<PromiseRaw<'_, Vec<String>>> {
    promise(env, async move {
        let store = store_for(path.as_deref()).map_err(js_error)?;
        let changed = manage::set_enabled(&store, &email, enabled)
            .await
            .map_err(js_error)?;
        let engine = Engine::for_store(store);
        for email in &changed {
            engine.forget(email);
        }
        Ok(changed)
    })
}

#[napi(
    js_name = "setPriority",
    ts_return_type = "Promise<string[]>",
    catch_unwind
)]
pub fn set_priority(
    env: &Env,
    email: String,
    priority: i64,
    path: Option<String>,
) -> JsResult<PromiseRaw<'_, Vec<String>>> {
    promise(env, async move {
        let store = store_for(path.as_deref()).map_err(js_error)?;
        manage::set_priority(&store, &email, priority)
            .await
            .map_err(js_error)
    })
}

#[napi(
    js_name = "setReserve",
    ts_return_type = "Promise<string[]>",
    catch_unwind
)]
pub fn set_reserve(
    env: &Env,
    email: String,
    fraction: f64,
    path: Option<String>,
) -> JsResult<PromiseRaw<'_, Vec<String>>> {
    promise(env, async move {
        let store = store_for(path.as_deref()).map_err(js_error)?;
        manage::set_reserve(&store, &email, fraction)
            .await
            .map_err(js_error)
    })
}

/// The stored emails of the entries `target` names, as `removeAccount` would resolve it (the
/// OpenCode tool asks a person's rules with them): `#+1`, or a name with a trailing U+0085,
/// named an account to Rust and nobody to a JavaScript copy of the rule.
#[napi(
    js_name = "namedAccounts",
    ts_return_type = "Promise<string[]>",
    catch_unwind
)]
pub fn named_accounts(
    env: &Env,
    target: String,
    path: Option<String>,
) -> JsResult<PromiseRaw<'_, Vec<String>>> {
    promise(env, async move {
        let store = store_for(path.as_deref()).map_err(js_error)?;
        let pool = store.load().await.map_err(js_error)?;
        Ok(manage::named(&pool, &target))
    })
}

#[napi(
    js_name = "resetCooldowns",
    ts_return_type = "Promise<number>",
    catch_unwind
)]
pub fn reset_cooldowns(env: &Env, path: Option<String>) -> JsResult<PromiseRaw<'_, u32>> {
    promise(env, async move {
        let store = store_for(path.as_deref()).map_err(js_error)?;
        let n = manage::reset_cooldowns(&store).await.map_err(js_error)?;
        Engine::for_store(store).reset_memory();
        Ok(n as u32)
    })
}

/// Writes this process's pending bookkeeping (cooldowns, last use, quota) now, and returns once
/// every earlier write has finished.
#[napi(js_name = "flushPool", ts_return_type = "Promise<void>", catch_unwind)]
pub fn flush_pool(env: &Env, path: Option<String>) -> JsResult<PromiseRaw<'_, ()>> {
    promise(env, async move {
        let store = store_for(path.as_deref()).map_err(js_error)?;
        Engine::for_store(store)
            .flush_asked()
            .await
            .map_err(js_error)
    })
}

/// Writes what this process still has to write, blocking up to 2 s; run from the host's `exit`
/// event (lib/native.mjs), where nothing asynchronous runs any more. Returns how many pools had
/// something to write.
#[napi(js_name = "flushBeforeExit", catch_unwind)]
pub fn flush_before_exit() -> u32 {
    crate::engine::flush_before_exit(crate::engine::EXIT_FLUSH_LIMIT) as u32
}

/// `oauth-pool refresh <email>`: refreshes one account under the pool's lock protocol.
#[napi(
    js_name = "refreshAccount",
    ts_return_type = "Promise<any>",
    catch_unwind
)]
pub fn refresh_account(
    env: &Env,
    email: String,
    path: Option<String>,
) -> JsResult<PromiseRaw<'_, Value>> {
    promise(env, async move {
        let store = store_for(path.as_deref()).map_err(js_error)?;
        let report = Engine::for_store(store)
            .refresh_now(&email)
            .await
            .map_err(js_error)?;
        Ok(serde_json::json!({
            "email": report.email,
            "outcome": report.outcome,
            "expires": report.expires,
            "events": report.events,
        }))
    })
}
