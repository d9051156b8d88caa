//! [`Control`]: the running configuration and its file, changed one call at a time.

use super::{writeback, ApiError};
use crate::config::{Config, Diagnostics};
use crate::server::{ApplyError, Server};
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Why a SIGHUP reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid listener file:\n{0}")]
    Invalid(Diagnostics),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// The running configuration and its file: what the control API reads and changes.
pub struct Control {
    path: PathBuf,
    server: Arc<Server>,
    /// Held across read-edit-validate-apply-write (and SIGHUP reloads): one change
    /// at a time, so none is lost.
    serial: tokio::sync::Mutex<()>,
    /// The configuration last applied (from the file, an API call or a reload).
    current: ArcSwap<Config>,
    pub(super) nonces: Mutex<super::auth::Nonces>,
    pub(super) throttle: Mutex<super::throttle::Throttle>,
}

impl Control {
    /// `config` is what `server` runs, loaded from `path`.
    pub fn new(path: PathBuf, server: Arc<Server>, config: Config) -> Control {
        Control {
            path,
            server,
            serial: tokio::sync::Mutex::new(()),
            current: ArcSwap::from_pointee(config),
            nonces: Mutex::default(),
            throttle: Mutex::default(),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.current.load_full()
    }

    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// SIGHUP: loads and applies the file, in turn with API changes.
    pub async fn reload(&self) -> Result<Arc<Config>, ReloadError> {
        let _turn = self.serial.lock().await;
        let config = Config::load(&self.path).map_err(ReloadError::Invalid)?;
        self.server.apply(&config)?;
        let config = Arc::new(config);
        self.current.store(config.clone());
        Ok(config)
    }

    /// One change: `edit` the file's document, validate the whole file, apply it,
    /// write it back. Any failure leaves the running set and the file as they were.
    pub async fn change<T>(
        &self,
        edit: impl FnOnce(&mut toml_edit::DocumentMut) -> Result<T, ApiError>,
    ) -> Result<(T, Arc<Config>), ApiError> {
        let _turn = self.serial.lock().await;
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| ApiError::internal(format!("cannot read {}: {e}", self.path.display())))?;
        let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| {
            ApiError::bad(
                "InvalidParameter",
                format!("the listener file is not valid TOML; fix it first: {e}"),
            )
        })?;
        let out = edit(&mut doc)?;
        let new_text = doc.to_string();
        let config = Config::parse(&new_text, self.path.parent())
            .map_err(|errors| ApiError::from_config(&errors))?;
        self.server.apply(&config).map_err(|e| match e {
            ApplyError::Bind(_) => ApiError::bad("InvalidListenerPort", e.to_string()),
            ApplyError::AccessLog(_) => ApiError::internal(e.to_string()),
        })?;
        let (path, written) = (self.path.clone(), new_text);
        let write =
            tokio::task::spawn_blocking(move || writeback::write_atomic(&path, &written)).await;
        if let Err(e) = write
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            let previous = self.current.load_full();
            if let Err(undo) = self.server.apply(&previous) {
                tracing::error!(error = %undo, "cannot restore the previous listeners");
            }
            return Err(ApiError::internal(format!(
                "cannot write {}: {e}",
                self.path.display()
            )));
        }
        tracing::info!(config = %self.path.display(), listeners = config.listeners.len(), "control API change applied and written");
        let config = Arc::new(config);
        self.current.store(config.clone());
        Ok((out, config))
    }
}
