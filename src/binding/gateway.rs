//! The gateway from JavaScript: `serve()` starts it and resolves a handle (`url`, `close()`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use napi_derive::napi;

use napi::bindgen_prelude::PromiseRaw;
use napi::Env;

use super::{js_error, promise, store_for, JsResult};
use crate::error::Error;
use crate::gateway::{self, Gateway, GatewayOptions};

#[napi(object)]
pub struct ServeOptions {
    pub host: Option<String>,
    pub port: Option<u32>,
    pub path: Option<String>,
    pub allow_remote: Option<bool>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub header_timeout_ms: Option<u32>,
    pub body_timeout_ms: Option<u32>,
    pub max_connections: Option<u32>,
}

#[napi]
pub struct NativeGateway {
    inner: Arc<Gateway>,
    /// The key file this start made (`gateway::gateway_key`), for the CLI to say so.
    key_created: Option<String>,
    /// The environment's hook's hold on it, let go of by `close` (the hook itself is a few bytes
    /// until the environment goes): a closed gateway kept its engine and directory watch alive.
    owned: Arc<Mutex<Owned>>,
}

#[napi]
impl NativeGateway {
    #[napi(getter, catch_unwind)]
    pub fn url(&self) -> String {
        self.inner.url()
    }

    /// The gateway key file this start made, or null: clients holding an older key are refused.
    #[napi(getter, js_name = "keyCreated", catch_unwind)]
    pub fn key_created(&self) -> Option<String> {
        self.key_created.clone()
    }

    /// Stops accepting; streams in flight get `drainMs` (default 10 s) to finish.
    #[napi(ts_return_type = "Promise<void>", catch_unwind)]
    pub fn close<'env>(
        &self,
        env: &'env Env,
        drain_ms: Option<u32>,
    ) -> JsResult<PromiseRaw<'env, ()>> {
        let drain = Duration::from_millis(u64::from(drain_ms.unwrap_or(10_000)));
        let gateway = self.inner.clone();
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .gateway = None;
        promise(env, async move {
            gateway.close(drain).await;
            Ok(())
        })
    }
}

/// The gateway a JavaScript environment started, closed when that environment goes: a worker
/// thread that started one and was terminated (or exited) left it serving, with its port, for
/// the rest of the process, and nothing could close it any more.
#[derive(Default)]
struct Owned {
    gone: bool,
    gateway: Option<Arc<Gateway>>,
}

#[napi(ts_return_type = "Promise<NativeGateway>", catch_unwind)]
pub fn serve<'env>(
    env: &'env Env,
    options: Option<ServeOptions>,
) -> JsResult<PromiseRaw<'env, NativeGateway>> {
    let owned = Arc::new(Mutex::new(Owned::default()));
    env.add_env_cleanup_hook(owned.clone(), |owned| {
        let gateway = {
            let mut o = owned.lock().unwrap_or_else(PoisonError::into_inner);
            o.gone = true;
            o.gateway.take()
        };
        if let Some(gateway) = gateway {
            stop(gateway);
        }
    })?;
    promise(env, async move {
        let gateway = Arc::new(start(options).await?);
        let mut o = owned.lock().unwrap_or_else(PoisonError::into_inner);
        if o.gone {
            drop(o);
            stop(gateway);
            return Err(js_error(Error::Aborted));
        }
        o.gateway = Some(gateway.clone());
        drop(o);
        Ok(NativeGateway {
            key_created: gateway.key_created().map(|p| p.display().to_string()),
            inner: gateway,
            owned,
        })
    })
}

/// Stops accepting at once (the environment's thread must not wait), then finishes the close
/// (the last bookkeeping) on the runtime.
fn stop(gateway: Arc<Gateway>) {
    gateway.stop();
    let _ = crate::runtime::spawn(async move { gateway.close(Duration::ZERO).await });
}

async fn start(options: Option<ServeOptions>) -> JsResult<Gateway> {
    let o = options.unwrap_or(ServeOptions {
        host: None,
        port: None,
        path: None,
        allow_remote: None,
        tls_cert: None,
        tls_key: None,
        header_timeout_ms: None,
        body_timeout_ms: None,
        max_connections: None,
    });
    let store = store_for(o.path.as_deref()).map_err(js_error)?;
    let port = u16::try_from(o.port.unwrap_or(8787))
        .map_err(|_| js_error(Error::InvalidArgument("port must be 0 to 65535".into())))?;
    let tls = match (o.tls_cert, o.tls_key) {
        (Some(c), Some(k)) => Some((c.into(), k.into())),
        (None, None) => None,
        _ => {
            return Err(js_error(Error::InvalidArgument(
                "TLS needs both tlsCert and tlsKey (`--tls-cert` and `--tls-key`)".into(),
            )))
        }
    };
    let opts = GatewayOptions {
        host: o.host.unwrap_or_else(|| "127.0.0.1".into()),
        port,
        allow_remote: o.allow_remote.unwrap_or(false),
        tls,
        store,
        header_timeout: Duration::from_millis(
            u64::from(o.header_timeout_ms.unwrap_or(10_000)).max(100),
        ),
        body_timeout: Duration::from_millis(
            u64::from(o.body_timeout_ms.unwrap_or(60_000)).max(100),
        ),
        max_connections: o.max_connections.unwrap_or(512).max(1) as usize,
    };
    gateway::start(opts).await.map_err(js_error)
}

/// The gateway key clients must present (generated on first use), for `serve --show-key`.
#[napi(js_name = "gatewayKey", catch_unwind)]
pub fn gateway_key(path: Option<String>) -> JsResult<String> {
    let store = store_for(path.as_deref()).map_err(js_error)?;
    gateway::gateway_key(&store)
        .map(|(k, _)| k.expose().to_string())
        .map_err(js_error)
}
