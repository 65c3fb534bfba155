//! What an answer means for the account that got it: the policy table, in one place.
//!
//! | answer | decision |
//! | --- | --- |
//! | 429 | cool the account (see `limits::cooldown_for_429`), move the request to the next account |
//! | 429 to token counting, a batch, a file, exhausting no window | rest only that endpoint on the account (its limits are its own), move on |
//! | 2xx event stream whose opening, before any content, is an `error` event of `rate_limit_error` (`usage::Opening`) | as a 429 that said nothing more: cool the account, move the request on (the opening is dropped; the caller saw nothing of it) |
//! | 429 whose body says `enforced_spend_limit_reached` | the key's monthly spend limit: rest the account until the month turns (at most 8 days at a time), move on |
//! | 401, OAuth, first time for this account | adopt a newer token or refresh, retry on the same account |
//! | 401 again, or 401 for an API key | the credential is refused: mark it (tied to that credential) with what the API said (`refusal_reason`), move on |
//! | 400 saying third-party apps draw from extra usage | deliver it, report it, do not rotate (every subscription would say the same); with a Console key the pool can use, every subscription rests in this process for `THIRD_PARTY_REST_MS`, so that the next requests go to the keys, until no key is left that can serve |
//! | 404 to a request naming a file, a batch (any account's own resource) while another account is left to ask | not this account's: ask the next one, nobody is benched (the last 404 is delivered) |
//! | 400 saying the organization's credit balance is too low, or that it has been disabled; 403 saying OAuth is not allowed for the login's organization | the account's own refusal: delivered as it is and nobody benched (the contract's 400 and 403), the account's `lastError` saying what mends it |
//! | anything else (2xx, an event stream's `overloaded_error`, 3xx, other 4xx, 529, 5xx) | deliver it as it is; nobody is benched |

use super::limits::{cooldown_for_429, cooldown_for_spend_limit, Cooldown, Limits};
use super::usage;

/// How the request was authenticated, which decides what a 401 means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A subscription login: an access token that a refresh can replace.
    OAuth,
    /// A Console API key: nothing to refresh.
    ApiKey,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Deliver,
    /// Deliver, and tell the person their subscription is refused for third-party use.
    DeliverThirdPartyRefusal,
    /// Rest the account and move the same request to the next one.
    CoolAndMove(Cooldown),
    /// Adopt or refresh the token, then retry on the same account (once).
    RefreshAndRetry,
    /// The credential is refused: mark the account and move on.
    RefusedAndMove,
    /// What the request asks for (a file, a batch) is not this account's: ask the next one.
    LookElsewhere,
    /// Deliver; the API refuses the account itself (`account_refusal`): say what mends it.
    DeliverAccountRefusal(AccountRefusal),
}

/// The statuses whose answer may be anything but "deliver it as it is" (the rows of the table
/// above): a driver must ask before delivering one of these; any other it may deliver first
/// and report (`judge`) right after, off the answer's path.
pub const DECISIVE: [u16; 5] = [400, 401, 403, 404, 429];

/// A 400, a 403 and a 429 need their body read to be understood, and a 401's says why the
/// credential was refused (the account's mark quotes it: "log in again" alone sent people round
/// a login that could not help); it is read bounded (`PEEK_LIMIT`).
pub fn needs_body(status: u16) -> bool {
    matches!(status, 400 | 401 | 403 | 429)
}

/// A refusal the API makes of the account itself, whatever the request. Delivered as the
/// contract has every 400 and 403 delivered, nobody benched: the account's `lastError` says it,
/// so that `list` and `status` tell the person what mends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountRefusal {
    /// 400: "Your credit balance is too low to access the Anthropic API." (a Console key's
    /// organization out of prepaid credits).
    OutOfCredit,
    /// 400 (or 403): "This organization has been disabled."
    OrganizationDisabled,
    /// 403: "OAuth authentication is not allowed for this organization." (a login's
    /// organization forbids subscription logins).
    OAuthNotAllowed,
}

impl AccountRefusal {
    /// What a person reads of it (the account's `lastError`, the failover's reason).
    pub fn describe(self) -> &'static str {
        match self {
            AccountRefusal::OutOfCredit => "its organization's credit balance is too low (400): add credits in the Console (Plans & Billing), or disable it (`oauth-pool disable`) while others serve",
            AccountRefusal::OrganizationDisabled => "the API says its organization has been disabled (400): disable or remove it (`oauth-pool disable`)",
            AccountRefusal::OAuthNotAllowed => "its organization does not allow OAuth logins (403): log in with an account of another organization, or use a Console key, and remove this one",
        }
    }
}

/// The account's own refusal a 400 or 403 says, read from the error's own message, where it
/// begins: a 400 quotes what it refuses (a tool's name, a prompt's words), and an echo of such
/// words must not rest an account.
pub fn account_refusal(status: u16, body: &[u8]) -> Option<AccountRefusal> {
    if status != 400 && status != 403 {
        return None;
    }
    let answer = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let error = &answer["error"];
    let message = error["message"].as_str()?.trim_start().to_ascii_lowercase();
    let kind = error["type"].as_str()?;
    let says = |start: &str| message.starts_with(start);
    match (status, kind) {
        (400, "invalid_request_error") if says("your credit balance is too low") => {
            Some(AccountRefusal::OutOfCredit)
        }
        (400 | 403, "invalid_request_error" | "permission_error")
            if says("this organization has been disabled")
                || says("this organisation has been disabled") =>
        {
            Some(AccountRefusal::OrganizationDisabled)
        }
        (403, "permission_error")
            if says("oauth authentication is not allowed for this organization") =>
        {
            Some(AccountRefusal::OAuthNotAllowed)
        }
        _ => None,
    }
}

/// How long, after a subscription's third-party refusal, a process sends its requests to the
/// pool's Console keys instead of its subscriptions (when it has a key it can use). Without it
/// the sticky subscription was chosen again for every request and every one was refused, the
/// key never asked; after it, one request finds out whether the refusal still stands.
pub const THIRD_PARTY_REST_MS: i64 = 60 * 60 * 1000;

/// How much of a 400 or a 429 is read to tell a third-party refusal from a bad request, or a
/// spend limit from a rate limit.
pub const PEEK_LIMIT: usize = 256 * 1024;

/// Whether the answer's head decides it, the body only refining the decision: a 429 is a 429
/// whatever its body says (which tells only a spend limit from a rate limit), and a 401 a 401
/// (its body gives only the reason quoted). Its body cut short or silent is judged by what came,
/// and the request still moves on.
pub fn head_decides(status: u16) -> bool {
    status == 429 || status == 401
}

/// Whether the answer is judged even when the caller left while its body was read: a 429's rest
/// stands (or the next request asks the account again), while a 401's refresh is the next
/// request's to make, not one nobody waits for.
pub fn judged_without_caller(status: u16) -> bool {
    status == 429
}

/// What a 401 said of its refusal (`error.message`, or an OAuth-style `error_description`),
/// cleaned for a terminal, the `presented` credential taken out of it (servers echo: whole, in
/// pieces, in base64 or hex) before it is cut short; `None` for a body that is not such an error.
pub fn refusal_reason(body: &[u8], presented: &[&crate::secret::Secret]) -> Option<String> {
    let answer = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let said = match &answer["error"] {
        serde_json::Value::Object(error) => error.get("message"),
        serde_json::Value::String(_) => answer.get("error_description"),
        _ => None,
    }?
    .as_str()?;
    let reason: String = said
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .filter(|&c| !c.is_control() && !crate::secret::is_invisible(c))
        .collect();
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    if reason.is_empty() {
        return None;
    }
    let reason = crate::echo::scrub_with_forms(&reason, presented);
    let reason = crate::secret::scrub_pieces(&reason, presented);
    Some(match reason.char_indices().nth(REASON_LIMIT) {
        Some((cut, _)) => format!("{}…", &reason[..cut]),
        None => reason,
    })
}

/// How many characters of a 401's reason are kept.
const REASON_LIMIT: usize = 200;

/// How long the body of an answer whose head decides (`head_decides`) may stay silent before it
/// is judged without the rest: a 429's few hundred bytes come with its head, and a failover
/// waiting on the response timeout (5 minutes by default) is no failover.
pub const HEAD_DECIDES_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long in all the start of any body the engine needs (`needs_body`) is read before it is
/// judged on what came: a 400 whose body trickled a byte now and then held the caller with no
/// answer for hours (the read's timer restarts with each byte). A 400 then goes to the caller
/// with what was read, and the rest of its body follows as it comes.
pub const PEEK_PATIENCE: std::time::Duration = HEAD_DECIDES_PATIENCE;

/// Whether the answer is judged on its event stream's opening (`usage::Opening`, read up to
/// `usage::OPENING_LIMIT`, each read within the response timeout) as well as its head: a 2xx
/// event stream, where Anthropic says a rate limit met after the head in an `error` event.
pub fn reads_opening(status: u16, headers: &reqwest::header::HeaderMap) -> bool {
    usage::carried(status, headers) == Some(true)
}

/// How an account rests for a rate limit said in an event stream (an `error` event of
/// `rate_limit_error`, whether in the opening or after content began): as after a 429 that said
/// nothing more (no `retry-after`, no window), the 429 policy's own reading of that.
pub fn stream_limit_cooldown(
    now_ms: i64,
    family: Option<&str>,
    endpoint: Option<&str>,
) -> Cooldown {
    cooldown_for_429(&Limits::default(), now_ms, family, endpoint)
}

/// The `error.type` an event stream says when the account met its rate limit.
pub const STREAM_RATE_LIMIT: &str = "rate_limit_error";

/// What the answer is judged against: the request it answered, and the attempt.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// How the attempt was authenticated.
    pub kind: CredentialKind,
    /// Whether this account's token was refreshed for this request already.
    pub refreshed_already: bool,
    /// The model family asked for (scoped windows, a model's rests).
    pub family: Option<&'a str>,
    /// The API's limits of its own the request's endpoint falls under (`limits::endpoint_limits`).
    pub endpoint: Option<&'a str>,
    /// The request names an account's own resource (a file, a batch), and an account that has
    /// not been asked is left.
    pub elsewhere: bool,
}

/// `body`: the bounded start of a 400's, a 401's or a 429's body (`needs_body`); `said`: the `error.type`
/// of an `error` event in a 2xx event stream's opening (`reads_opening`).
pub fn decide(
    status: u16,
    limits: &Limits,
    body: Option<&[u8]>,
    said: Option<&str>,
    asked: Asked,
    now_ms: i64,
) -> Decision {
    let Asked {
        kind,
        refreshed_already,
        family,
        endpoint,
        elsewhere,
    } = asked;
    match status {
        429 if body.is_some_and(is_spend_limit) => {
            Decision::CoolAndMove(cooldown_for_spend_limit(limits, now_ms))
        }
        429 => Decision::CoolAndMove(cooldown_for_429(limits, now_ms, family, endpoint)),
        // The 200's head said nothing of the limit (its windows were read as served).
        200..=299 if said == Some(STREAM_RATE_LIMIT) => {
            Decision::CoolAndMove(stream_limit_cooldown(now_ms, family, endpoint))
        }
        401 if kind == CredentialKind::OAuth && !refreshed_already => Decision::RefreshAndRetry,
        401 => Decision::RefusedAndMove,
        400 if body.is_some_and(is_third_party_refusal) => Decision::DeliverThirdPartyRefusal,
        400 | 403 => body
            .and_then(|body| account_refusal(status, body))
            .map_or(Decision::Deliver, Decision::DeliverAccountRefusal),
        // Files and batches live in the account that made them; the API answers any other
        // account's request for one with a 404, which says nothing about the account.
        404 if elsewhere => Decision::LookElsewhere,
        _ => Decision::Deliver,
    }
}

/// A 400 that means "Anthropic does not allow this subscription to be used by third-party
/// apps": shown as such, never retried on another account.
pub fn is_third_party_refusal(body: &[u8]) -> bool {
    // Read from the error's own message: a 400 quotes what it refuses (a tool named
    // `third-party-search`, a beta's name), and matched anywhere in the body such an echo rested
    // every subscription for an hour and sent the traffic to the paid keys.
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let error = &answer["error"];
    if error["type"] != "invalid_request_error" {
        return false;
    }
    let message = error["message"].as_str().unwrap_or("").to_ascii_lowercase();
    ["third-party app", "third party app", "extra usage"]
        .iter()
        .any(|said| message.contains(said))
}

/// A 429 that is the Console key's monthly spend limit (`error.details.error_code`), which
/// lasts until the month turns: a throttle's few seconds would offer the key again and again.
/// Read from that field alone: matched anywhere in the body, a throttle whose message quoted the
/// code rested the account 8 days against its `retry-after` of seconds.
pub fn is_spend_limit(body: &[u8]) -> bool {
    // The cheap look first: nearly every 429 is a throttle that never names the code.
    if memchr::memmem::find(body, b"enforced_spend_limit_reached").is_none() {
        return false;
    }
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    answer["error"]["details"]["error_code"] == "enforced_spend_limit_reached"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::limits::CooldownKind;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn a_401s_reason_is_its_error_message_cleaned_and_cut() {
        let said = br#"{"type":"error","error":{"type":"authentication_error","message":"OAuth authentication is\ncurrently not supported.\u001b[2J\u200b"}}"#;
        assert_eq!(
            refusal_reason(said, &[]).as_deref(),
            Some("OAuth authentication is currently not supported.[2J")
        );
        let oauth_style =
            br#"{"error":"invalid_token","error_description":"The access token expired"}"#;
        assert_eq!(
            refusal_reason(oauth_style, &[]).as_deref(),
            Some("The access token expired")
        );
        let long = format!(
            r#"{{"error":{{"type":"authentication_error","message":"{}"}}}}"#,
            "é".repeat(500)
        );
        let cut = refusal_reason(long.as_bytes(), &[]).unwrap();
        assert_eq!(cut.chars().count(), REASON_LIMIT + 1);
        assert!(cut.ends_with('…'));
        for nothing in [
            &b"<html>401 Unauthorized</html>"[..],
            br#"{"error":{"type":"authentication_error"}}"#,
            br#"{"error":{"message":"  \n "}}"#,
            br#"{"error":{"message":42}}"#,
            b"",
        ] {
            assert_eq!(
                refusal_reason(nothing, &[]),
                None,
                "{}",
                String::from_utf8_lossy(nothing)
            );
        }
    }

    #[test]
    fn an_accounts_own_refusal_is_delivered_and_named_and_an_echo_of_its_words_is_not() {
        let none = Limits::default();
        let asked = |kind| Asked {
            kind,
            refreshed_already: false,
            family: None,
            endpoint: None,
            elsewhere: false,
        };
        let credit: &[u8] = br#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#;
        let disabled: &[u8] = br#"{"type":"error","error":{"type":"invalid_request_error","message":"This organization has been disabled."}}"#;
        let oauth: &[u8] = br#"{"type":"error","error":{"type":"permission_error","message":"OAuth authentication is not allowed for this organization."}}"#;
        // The contract's 400 and 403: delivered as they are, nobody benched; only named.
        for (status, body, refusal) in [
            (400, credit, AccountRefusal::OutOfCredit),
            (400, disabled, AccountRefusal::OrganizationDisabled),
            (403, oauth, AccountRefusal::OAuthNotAllowed),
        ] {
            for kind in [CredentialKind::ApiKey, CredentialKind::OAuth] {
                assert_eq!(
                    decide(status, &none, Some(body), None, asked(kind), NOW),
                    Decision::DeliverAccountRefusal(refusal)
                );
            }
        }
        // What the request said, quoted back, and a 403 of another kind (a model, a beta the
        // key may not use) are the request's: delivered, nothing said of the account.
        for (status, body) in [
            (400, &br#"{"type":"error","error":{"type":"invalid_request_error","message":"tools.0.name: 'Your credit balance is too low' is not valid"}}"#[..]),
            (400, br#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"},"note":"This organization has been disabled."}"#),
            (403, br#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}"#),
            (403, credit),
            (400, oauth),
            (403, b"<html>OAuth authentication is not allowed for this organization.</html>"),
        ] {
            assert_eq!(
                decide(status, &none, Some(body), None, asked(CredentialKind::ApiKey), NOW),
                Decision::Deliver,
                "{status} {}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(needs_body(403) && DECISIVE.contains(&403));
    }

    #[test]
    fn the_policy_table() {
        let none = Limits::default();
        let d = |status, body: Option<&[u8]>, kind, again| {
            let asked = Asked {
                kind,
                refreshed_already: again,
                family: None,
                endpoint: None,
                elsewhere: false,
            };
            decide(status, &none, body, None, asked, NOW)
        };
        assert!(matches!(
            d(429, None, CredentialKind::OAuth, false),
            Decision::CoolAndMove(Cooldown {
                kind: CooldownKind::Burst,
                ..
            })
        ));
        assert_eq!(
            d(401, None, CredentialKind::OAuth, false),
            Decision::RefreshAndRetry
        );
        assert_eq!(
            d(401, None, CredentialKind::OAuth, true),
            Decision::RefusedAndMove
        );
        assert_eq!(
            d(401, None, CredentialKind::ApiKey, false),
            Decision::RefusedAndMove
        );
        let refusal: &[u8] = br#"{"type":"error","error":{"type":"invalid_request_error","message":"Third-party apps now draw from your extra usage, not your plan limits."}}"#;
        assert_eq!(
            d(400, Some(refusal), CredentialKind::OAuth, false),
            Decision::DeliverThirdPartyRefusal
        );
        let out_of: &[u8] = br#"{"type":"error","error":{"type":"invalid_request_error","message":"You're out of extra usage. Add more at claude.ai/settings/usage and keep going."}}"#;
        assert_eq!(
            d(400, Some(out_of), CredentialKind::OAuth, false),
            Decision::DeliverThirdPartyRefusal
        );
        // What a 400 echoes of the request (a tool's name, a beta) is no refusal of the account.
        for echo in [
            &br#"{"type":"error","error":{"type":"invalid_request_error","message":"tools.0.name: 'third-party-search' is not valid"}}"#[..],
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"},"request":"third-party apps"}"#,
            b"<html>third-party apps draw from your extra usage</html>",
        ] {
            assert_eq!(
                d(400, Some(echo), CredentialKind::OAuth, false),
                Decision::Deliver,
                "{}",
                String::from_utf8_lossy(echo)
            );
        }
        assert_eq!(
            d(
                400,
                Some(b"prompt is too long"),
                CredentialKind::OAuth,
                false
            ),
            Decision::Deliver
        );
        for status in (100..600u16).filter(|s| !DECISIVE.contains(s)) {
            for kind in [CredentialKind::OAuth, CredentialKind::ApiKey] {
                assert_eq!(
                    d(status, Some(refusal), kind, false),
                    Decision::Deliver,
                    "{status}"
                );
            }
        }
        assert!(needs_body(400) && needs_body(401) && needs_body(429) && !needs_body(200));
        // A 404 moves on only for a request that names another account's resource, while an
        // account is left to ask; otherwise it is the answer.
        let asked = |elsewhere| Asked {
            kind: CredentialKind::ApiKey,
            refreshed_already: false,
            family: None,
            endpoint: None,
            elsewhere,
        };
        assert_eq!(
            decide(404, &none, None, None, asked(true), NOW),
            Decision::LookElsewhere
        );
        assert_eq!(
            decide(404, &none, None, None, asked(false), NOW),
            Decision::Deliver
        );
        for status in (100..600u16).filter(|s| *s != 404) {
            assert_ne!(
                decide(status, &none, None, None, asked(true), NOW),
                Decision::LookElsewhere,
                "{status}"
            );
        }
        let spend: &[u8] = br#"{"type":"error","error":{"type":"rate_limit_error","message":"You have reached your specified API usage limits.","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
        let Decision::CoolAndMove(c) = d(429, Some(spend), CredentialKind::ApiKey, false) else {
            panic!("a spend limit moves on");
        };
        assert_eq!(c.kind, CooldownKind::SpendLimit);
        assert!(
            c.until > NOW + 3_600_000,
            "until the month turns, not seconds"
        );
        assert!(c.until <= NOW + 8 * 24 * 3_600_000);
        assert!(c.scope.is_none());
        assert!((100..600u16).all(|s| !needs_body(s) || DECISIVE.contains(&s)));
    }

    #[test]
    fn a_rate_limit_said_in_an_event_streams_opening_is_a_429_that_said_nothing_more() {
        let asked = Asked {
            kind: CredentialKind::OAuth,
            refreshed_already: false,
            family: Some("sonnet"),
            endpoint: None,
            elsewhere: false,
        };
        // The 200's head may hold a retry-after or windows; the limit it did not know of rests
        // the account as a bare 429's does.
        let head = Limits::from_headers(
            &crate::engine::limits::tests::headers(&[("retry-after", "3600")]),
            std::time::SystemTime::now(),
        );
        let bare = decide(429, &Limits::default(), None, None, asked, NOW);
        assert_eq!(
            decide(200, &head, None, Some(STREAM_RATE_LIMIT), asked, NOW),
            bare
        );
        assert!(matches!(
            bare,
            Decision::CoolAndMove(Cooldown {
                kind: CooldownKind::Burst,
                ..
            })
        ));
        assert_eq!(
            Decision::CoolAndMove(stream_limit_cooldown(NOW, Some("sonnet"), None)),
            bare
        );
        for said in [None, Some("overloaded_error"), Some("api_error")] {
            assert_eq!(
                decide(200, &head, None, said, asked, NOW),
                Decision::Deliver
            );
        }
        // Only a 2xx's opening is read.
        for status in [304, 400, 500, 529] {
            assert_eq!(
                decide(status, &head, None, Some(STREAM_RATE_LIMIT), asked, NOW),
                Decision::Deliver,
                "{status}"
            );
        }
        let sse = crate::engine::limits::tests::headers(&[(
            "content-type",
            "text/event-stream; charset=utf-8",
        )]);
        let json = crate::engine::limits::tests::headers(&[("content-type", "application/json")]);
        assert!(reads_opening(200, &sse));
        assert!(!reads_opening(200, &json));
        assert!(!reads_opening(429, &sse));
    }

    #[test]
    fn a_throttle_of_an_endpoint_with_limits_of_its_own_rests_only_that() {
        use crate::engine::limits::{endpoint_limits, COUNT_TOKENS, MESSAGE_BATCHES};
        // The answers are read at the test's own now, as they are at the clock's: a reset
        // further off than 8 days from when it is read is capped.
        let read_at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(NOW as u64);
        let throttle = Limits::from_headers(
            &crate::engine::limits::tests::headers(&[("retry-after", "30")]),
            read_at,
        );
        let asked = |path: &str| {
            let endpoint = endpoint_limits(path);
            Asked {
                kind: CredentialKind::OAuth,
                refreshed_already: false,
                family: Some("sonnet"),
                endpoint,
                elsewhere: false,
            }
        };
        let rest =
            |path: &str, limits: &Limits| match decide(429, limits, None, None, asked(path), NOW) {
                Decision::CoolAndMove(c) => c,
                other => panic!("{path}: {other:?}"),
            };
        let c = rest("/v1/messages/count_tokens", &throttle);
        assert_eq!(
            (c.kind, c.scope.as_deref(), c.until),
            (CooldownKind::Burst, Some(COUNT_TOKENS), NOW + 30_000)
        );
        assert_eq!(
            rest("/v1/messages/batches", &throttle).scope.as_deref(),
            Some(MESSAGE_BATCHES)
        );
        // A message's throttle rests the whole account, as before.
        assert_eq!(rest("/v1/messages", &throttle).scope, None);
        // An exhausted account-wide window is the account's, whatever endpoint said so.
        let reset = (NOW / 1000 + 3600).to_string();
        let window = Limits::from_headers(
            &crate::engine::limits::tests::headers(&[
                ("anthropic-ratelimit-unified-5h-status", "rejected"),
                ("anthropic-ratelimit-unified-5h-reset", &reset),
            ]),
            read_at,
        );
        assert_eq!(rest("/v1/messages/count_tokens", &window).scope, None);
        // And an exhausted weekly window of the model is the model's: token counting for other
        // models goes on there.
        let scoped = Limits::from_headers(
            &crate::engine::limits::tests::headers(&[
                ("anthropic-ratelimit-unified-7d_sonnet-status", "rejected"),
                ("anthropic-ratelimit-unified-7d_sonnet-reset", &reset),
            ]),
            read_at,
        );
        assert_eq!(
            rest("/v1/messages/count_tokens", &scoped).scope.as_deref(),
            Some("sonnet")
        );
        // A request of no model refused by a scoped window rests what it asked for, its
        // endpoint: resting the window's scope rested nothing it would consult.
        let odd = Limits::from_headers(
            &crate::engine::limits::tests::headers(&[
                (
                    "anthropic-ratelimit-unified-7d_oauth_apps-status",
                    "rejected",
                ),
                ("anthropic-ratelimit-unified-7d_oauth_apps-reset", &reset),
            ]),
            read_at,
        );
        let no_model = Asked {
            family: None,
            ..asked("/v1/files")
        };
        let Decision::CoolAndMove(c) = decide(429, &odd, None, None, no_model, NOW) else {
            panic!("a 429 moves on");
        };
        assert_eq!(c.scope.as_deref(), Some(crate::engine::limits::FILES_API));
        // So is a spend limit.
        let spend: &[u8] =
            br#"{"error":{"details":{"error_code":"enforced_spend_limit_reached"}}}"#;
        let Decision::CoolAndMove(c) =
            decide(429, &throttle, Some(spend), None, asked("/v1/files"), NOW)
        else {
            panic!("a spend limit moves on");
        };
        assert_eq!((c.kind, c.scope), (CooldownKind::SpendLimit, None));
    }

    #[test]
    fn a_spend_limit_is_read_from_its_field_not_from_a_message_quoting_it() {
        assert!(is_spend_limit(
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"You have reached your specified API usage limits.","details":{"error_code":"enforced_spend_limit_reached"}}}"#
        ));
        for throttle in [
            &br#"{"type":"error","error":{"type":"rate_limit_error","message":"not enforced_spend_limit_reached: slow down"}}"#[..],
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"x","details":{"note":"enforced_spend_limit_reached"}}}"#,
            b"<html>enforced_spend_limit_reached</html>",
            br#"{"error":{"details":{"error_code":"enforced_spend_limit_reached""#,
        ] {
            assert!(!is_spend_limit(throttle), "{}", String::from_utf8_lossy(throttle));
        }
    }
}
