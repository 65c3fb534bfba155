//! What a person is told about a request: failovers, cooldowns, accounts needing attention. They
//! travel with the answer (or the failure) to `onEvent`, the plugin's toasts and the logs.

use crate::secret::{scrub_tokens, shown_name};

/// Hears an event as it happens, not with the request's answer (a driver's channel to its
/// caller: a JavaScript callback, the gateway's log).
pub type Notice = std::sync::Arc<dyn Fn(Event) + Send + Sync>;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// An `auth-error` about a Console API key: what mends it is a working key under the
    /// account's name, not a login.
    #[serde(rename = "apiKey", skip_serializing_if = "std::ops::Not::not")]
    pub api_key: bool,
    pub message: String,
}

impl Event {
    /// Every message passes the token scrubber: parts of it (error details) came from servers.
    /// Names go as text leaving the process says them (hidden when one holds a secret of its
    /// pool's): the plugin words its notices from them.
    pub fn new(kind: &'static str, email: Option<&str>, message: impl AsRef<str>) -> Event {
        Event {
            kind,
            email: email.map(|e| crate::printable::capped(shown_name(e))),
            to: None,
            until: None,
            api_key: false,
            message: crate::printable::capped(scrub_tokens(message.as_ref())),
        }
    }

    pub fn to(mut self, to: &str) -> Event {
        self.to = Some(crate::printable::capped(shown_name(to)));
        self
    }

    pub fn until(mut self, until: i64) -> Event {
        self.until = Some(until);
        self
    }

    pub fn about_api_key(mut self) -> Event {
        self.api_key = true;
        self
    }
}
