//! The rotating fetch, read top to bottom: choose an account -> make sure its token is fresh
//! -> send -> read the answer -> (maybe) move the same request to the next account -> hand the
//! answer back with its body still streaming.
//!
//! Policy in one place (see `ratelimit` for how 429s are read):
//! - 429: cool the account (shared through the file), retry on the next usable account.
//! - 401: adopt a newer token or refresh once, retry once on the same account; a second 401
//!   marks it `auth-error` and moves on.
//! - Everything else (200s, 400, 403, 529, other 5xx) goes back to the caller as it is; no
//!   account is benched for it. A third-party refusal (400) is recorded and not retried.
//! - Each account is tried at most once per call, so attempts never exceed accounts + one.
//! - Nothing is replayed once the caller has the answer: the body streams from here on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::account::{iso_time, now_ms};
use crate::config;
use crate::error::{Error, Result};
use crate::http;
use crate::oauth::OAUTH_BETA;
use crate::ratelimit::{cooldown_for_429, is_third_party_refusal, Limits};
use crate::runtime::{Credential, PoolRuntime};
use crate::select::{self, Candidate, Preference};

/// What JavaScript handed us.
pub struct OutgoingRequest {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
}

pub enum Body {
    Stream(reqwest::Response),
    Full(Bytes),
}

pub struct Answer {
    pub status: u16,
    pub status_text: String,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// The account that served it (None for pass-through requests to other hosts).
    pub account: Option<String>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    pub message: String,
}

/// Headers never forwarded: credentials (we set our own), hop-by-hop and length headers (the
/// client sets them), encoding (the client negotiates and decodes), and OpenCode's session
/// headers (ours to read, nobody else's business).
const DROPPED: &[&str] = &[
    "authorization",
    "x-api-key",
    "host",
    "connection",
    "keep-alive",
    "content-length",
    "transfer-encoding",
    "accept-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "x-session-affinity",
    "x-session-id",
    "x-parent-session-id",
];

/// Response headers that described the wire, not the body we hand over (decoded, re-framed).
const DROPPED_FROM_ANSWER: &[&str] = &[
    "content-encoding",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
];

/// Serves one request. The events (failovers, cooldowns, auth errors) come back even when the
/// request fails, so a person can be told why.
pub async fn pool_fetch(
    rt: &Arc<PoolRuntime>,
    req: OutgoingRequest,
    cancel: &CancellationToken,
) -> (Result<Answer>, Vec<Event>) {
    let mut events = Vec::new();
    let result = serve(rt, req, cancel, &mut events).await;
    (result, events)
}

async fn serve(
    rt: &Arc<PoolRuntime>,
    req: OutgoingRequest,
    cancel: &CancellationToken,
    events: &mut Vec<Event>,
) -> Result<Answer> {
    let url = Url::parse(&req.url).map_err(|_| {
        Error::InvalidArgument(format!("not an absolute URL: {}", redact_query(&req.url)))
    })?;
    let method = reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("bad method {:?}", req.method)))?;
    let api = config::api_url()?;
    let find = |name: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let session = find("x-session-affinity").or_else(|| find("x-session-id"));
    let parent = find("x-parent-session-id");
    let base_headers = forwardable(&req.headers);

    if !config::same_origin(&url, &api) {
        // Not Anthropic's API: a plain fetch, never with a pool credential.
        let response = send(method, url, base_headers, req.body, cancel).await?;
        return Ok(answer(response, None, Vec::new()));
    }

    let mut tried: HashSet<String> = HashSet::new();
    let mut retried_401: HashSet<String> = HashSet::new();
    let mut retry_same: Option<String> = None;
    let mut previous: Option<(String, String)> = None;
    let mut pending_writes = Vec::new();

    loop {
        if cancel.is_cancelled() {
            return Err(Error::Aborted);
        }
        let pool = rt.snapshot().await?;
        let now = now_ms();
        let email = match retry_same.take() {
            Some(e) => e,
            None => {
                let candidates: Vec<Candidate> = pool
                    .accounts()
                    .map(|a| Candidate::from_account(a, rt.usable(a, now), rt.five_hour(a)))
                    .collect();
                let pinned = rt.pinned(session.as_deref(), parent.as_deref());
                let sticky = rt.sticky();
                let pref = Preference {
                    session: pinned.as_deref(),
                    sticky: sticky.as_deref(),
                    soft_threshold: soft_threshold(),
                };
                match select::choose(&candidates, &tried, &pref) {
                    Some(c) => c.email.clone(),
                    None => break,
                }
            }
        };
        if let Some((from, reason)) = previous.take() {
            events.push(Event {
                kind: "failover",
                email: Some(from.clone()),
                to: Some(email.clone()),
                until: None,
                message: format!("{from} {reason}; this request moved to {email}"),
            });
            rt.note_failover(&from, Some(&email), &reason);
            tracing::info!(from = %from, to = %email, reason = %reason, "failover");
        }

        let credential = match rt.credential(&pool, &email).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(account = %email, error = %e, "no usable credential");
                let kind = if e.code() == "OAUTH_INVALID_GRANT" {
                    "auth-error"
                } else {
                    "unavailable"
                };
                events.push(Event {
                    kind,
                    email: Some(email.clone()),
                    to: None,
                    until: None,
                    message: format!("{email}: {e}"),
                });
                rt.note_error(&email, &e.to_string());
                tried.insert(email.to_lowercase());
                previous = Some((email, "could not get a token".into()));
                continue;
            }
        };
        let (headers, bearer) = with_credential(&base_headers, &credential)?;
        let response = send(
            method.clone(),
            url.clone(),
            headers,
            req.body.clone(),
            cancel,
        )
        .await?;
        let status = response.status().as_u16();
        let limits = Limits::from_headers(response.headers(), SystemTime::now());

        match status {
            429 => {
                let cooldown = cooldown_for_429(&limits, now_ms());
                drop(response);
                tracing::info!(account = %email, until = %iso_time(cooldown.until), why = %cooldown.describe(), "rate limited");
                events.push(Event {
                    kind: "rate-limited",
                    email: Some(email.clone()),
                    to: None,
                    until: Some(cooldown.until),
                    message: format!(
                        "{email}: {} until {}",
                        cooldown.describe(),
                        iso_time(cooldown.until)
                    ),
                });
                pending_writes.extend(rt.cool(&email, &cooldown));
                tried.insert(email.to_lowercase());
                previous = Some((email, cooldown.describe()));
            }
            401 if bearer.is_some() && !retried_401.contains(&email.to_lowercase()) => {
                drop(response);
                retried_401.insert(email.to_lowercase());
                let rejected = bearer.unwrap_or_default();
                match rt.after_unauthorized(&email, &rejected).await {
                    Ok(_) => retry_same = Some(email),
                    Err(e) => {
                        tracing::warn!(account = %email, error = %e, "401 and no new token");
                        if e.code() != "OAUTH_INVALID_GRANT" {
                            rt.mark_auth_error(
                                &email,
                                &format!("401 from the API and no new token: {e}"),
                            )
                            .await;
                        }
                        events.push(auth_event(&email, &e.to_string()));
                        tried.insert(email.to_lowercase());
                        previous = Some((email, "was refused (401)".into()));
                    }
                }
            }
            401 => {
                drop(response);
                rt.mark_auth_error(
                    &email,
                    "the API refused the token twice (401): log in again",
                )
                .await;
                events.push(auth_event(&email, "refused twice after a fresh token"));
                tried.insert(email.to_lowercase());
                previous = Some((email, "was refused (401)".into()));
            }
            400 => {
                // Small by nature; read it to tell a third-party refusal from a bad request.
                let (status_text, resp_headers) = head_of(&response);
                let body = response.bytes().await.map_err(|e| Error::Network {
                    what: "the API",
                    detail: http::describe(&e),
                })?;
                if is_third_party_refusal(400, &body) {
                    let msg = format!(
                        "{email}: Anthropic refused this subscription for third-party apps (the 400 says usage is billed as extra usage); not retried on other accounts"
                    );
                    tracing::warn!(account = %email, "third-party use refused by Anthropic");
                    rt.note_error(&email, "third-party use refused by Anthropic (400)");
                    events.push(Event {
                        kind: "third-party-refused",
                        email: Some(email.clone()),
                        to: None,
                        until: None,
                        message: msg,
                    });
                }
                rt.served(&email, session.as_deref(), Some(&limits));
                finish(pending_writes).await;
                return Ok(Answer {
                    status,
                    status_text,
                    headers: resp_headers,
                    body: Body::Full(body),
                    account: Some(email),
                    events: std::mem::take(events),
                });
            }
            _ => {
                rt.served(&email, session.as_deref(), Some(&limits));
                finish(pending_writes).await;
                return Ok(answer(response, Some(email), std::mem::take(events)));
            }
        }
    }

    finish(pending_writes).await;
    exhausted(rt, events).await
}

fn auth_event(email: &str, why: &str) -> Event {
    Event {
        kind: "auth-error",
        email: Some(email.to_string()),
        to: None,
        until: None,
        message: format!("{email} needs a new login: {why}"),
    }
}

/// `OAUTH_POOL_SOFT_THRESHOLD` (a fraction of the 5-hour window), default 0.9.
fn soft_threshold() -> f64 {
    crate::config::env("OAUTH_POOL_SOFT_THRESHOLD")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .unwrap_or(0.9)
}

async fn finish(writes: Vec<tokio::task::JoinHandle<()>>) {
    for w in writes {
        let _ = w.await;
    }
}

/// No account can take the request. If some are only cooling, answer one 429 whose
/// `retry-after` is the real wait; otherwise say plainly why nothing is usable.
async fn exhausted(rt: &Arc<PoolRuntime>, events: &mut Vec<Event>) -> Result<Answer> {
    let pool = rt.snapshot().await?;
    let now = now_ms();
    let soonest = pool
        .accounts()
        .filter_map(|a| rt.cooling_until(a, now).map(|t| (t, a.email.clone())))
        .min_by_key(|(t, _)| *t);
    if let Some((until, email)) = soonest {
        let secs = ((until - now) as f64 / 1000.0).ceil().max(1.0) as i64;
        let message = format!(
            "anthropic-pool: every account is rate-limited; the first one ({email}) is usable again in {secs} s (at {})",
            iso_time(until)
        );
        events.push(Event {
            kind: "all-cooling",
            email: Some(email),
            to: None,
            until: Some(until),
            message: message.clone(),
        });
        let body = serde_json::json!({
            "type": "error",
            "error": { "type": "rate_limit_error", "message": message }
        });
        return Ok(Answer {
            status: 429,
            status_text: "Too Many Requests".into(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("retry-after".into(), secs.to_string()),
                ("x-oauth-pool".into(), "all-accounts-cooling".into()),
            ],
            body: Body::Full(Bytes::from(body.to_string())),
            account: None,
            events: std::mem::take(events),
        });
    }
    let total = pool.accounts().count();
    let why = if total == 0 {
        format!(
            "anthropic-pool has no accounts in {}: add one with `opencode auth login` (Anthropic Pool) or `oauth-pool add`",
            rt.store().path().display()
        )
    } else {
        let states: Vec<String> = pool
            .accounts()
            .map(|a| {
                let s = if rt.usable(a, now) {
                    "refused this request".to_string()
                } else {
                    a.effective_status(now).as_str().to_string()
                };
                format!("{} ({s})", a.email)
            })
            .collect();
        format!(
            "anthropic-pool has no usable account: {}. Accounts in auth-error need a new login; disabled ones can be enabled with the model-accounts-pool tool",
            states.join(", ")
        )
    };
    Err(Error::NoUsableAccount(why))
}

fn forwardable(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let lower = k.to_ascii_lowercase();
        if DROPPED.contains(&lower.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(lower.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// The account's credential on a copy of the caller's headers. OAuth: bearer (marked
/// sensitive), and `oauth-2025-04-20` merged into the caller's betas. API key: `x-api-key`.
fn with_credential(
    base: &HeaderMap,
    credential: &Credential,
) -> Result<(HeaderMap, Option<crate::secret::Secret>)> {
    let mut headers = base.clone();
    let bad =
        |_| Error::InvalidArgument("the stored credential is not a valid header value".into());
    match credential {
        Credential::Bearer(token) => {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(bad)?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
            let mut betas: Vec<String> = headers
                .get_all("anthropic-beta")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if !betas.iter().any(|b| b == OAUTH_BETA) {
                betas.insert(0, OAUTH_BETA.to_string());
            }
            betas.dedup();
            headers.remove("anthropic-beta");
            let merged = HeaderValue::from_str(&betas.join(","))
                .map_err(|_| Error::InvalidArgument("bad anthropic-beta header".into()))?;
            headers.insert("anthropic-beta", merged);
            Ok((headers, Some(token.clone())))
        }
        Credential::ApiKey(key) => {
            let mut value = HeaderValue::from_str(key.expose()).map_err(bad)?;
            value.set_sensitive(true);
            headers.insert("x-api-key", value);
            Ok((headers, None))
        }
    }
}

async fn send(
    method: reqwest::Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Bytes>,
    cancel: &CancellationToken,
) -> Result<reqwest::Response> {
    let client = http::api_client()?;
    let mut builder = client.request(method, url).headers(headers);
    if let Some(b) = body {
        builder = builder.body(b);
    }
    let timeout = http::response_timeout();
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Aborted),
        r = tokio::time::timeout(timeout, builder.send()) => match r {
            Ok(r) => r.map_err(|e| Error::Network { what: "the API", detail: http::describe(&e) }),
            Err(_) => Err(Error::Network {
                what: "the API",
                detail: format!("no response headers within {} ms", timeout.as_millis()),
            }),
        },
    }
}

fn head_of(response: &reqwest::Response) -> (String, Vec<(String, String)>) {
    let status_text = response
        .status()
        .canonical_reason()
        .unwrap_or("")
        .to_string();
    let headers = response
        .headers()
        .iter()
        .filter(|(k, _)| !DROPPED_FROM_ANSWER.contains(&k.as_str()))
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    (status_text, headers)
}

fn answer(response: reqwest::Response, account: Option<String>, events: Vec<Event>) -> Answer {
    let (status_text, headers) = head_of(&response);
    Answer {
        status: response.status().as_u16(),
        status_text,
        headers,
        body: Body::Stream(response),
        account,
        events,
    }
}

fn redact_query(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn credentials_replace_the_callers_and_betas_merge() {
        let base = forwardable(&[
            ("X-Api-Key".into(), "".into()),
            ("Authorization".into(), "Bearer caller".into()),
            (
                "anthropic-beta".into(),
                "interleaved-thinking-2025-05-14, fine-grained-tool-streaming-2025-05-14".into(),
            ),
            ("x-session-affinity".into(), "ses_1".into()),
            ("content-type".into(), "application/json".into()),
        ]);
        assert!(base.get("x-session-affinity").is_none());
        let (h, bearer) = with_credential(&base, &Credential::Bearer(Secret::new("tok"))).unwrap();
        assert_eq!(bearer.unwrap().expose(), "tok");
        assert_eq!(
            h.get("authorization").unwrap().to_str().unwrap(),
            "Bearer tok"
        );
        assert!(h.get("authorization").unwrap().is_sensitive());
        assert!(h.get("x-api-key").is_none());
        assert_eq!(
            h.get("anthropic-beta").unwrap().to_str().unwrap(),
            "oauth-2025-04-20,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"
        );
        assert!(!format!("{h:?}").contains("tok"));
        let (h, bearer) =
            with_credential(&base, &Credential::ApiKey(Secret::new("sk-key"))).unwrap();
        assert!(bearer.is_none());
        assert!(h.get("authorization").is_none());
        assert_eq!(h.get("x-api-key").unwrap().to_str().unwrap(), "sk-key");
        assert!(!h
            .get("anthropic-beta")
            .unwrap()
            .to_str()
            .unwrap()
            .contains(OAUTH_BETA));
    }
}
