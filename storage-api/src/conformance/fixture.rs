//! Temporary stores for the conformance cases.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::{Backend, BackendConfig, Durability, KvPair, Tree};

/// A backend opened on a fresh temporary directory, with helpers to reopen it.
pub struct Fixture<B: Backend> {
    /// The open backend (`None` only transiently inside [`reopen`](Fixture::reopen)).
    backend: Option<Arc<B>>,
    config: BackendConfig,
    // Dropped last: the backend must be closed before its directory disappears.
    _dir: tempfile::TempDir,
}

impl<B: Backend> Fixture<B> {
    /// The configuration the suite uses: 16 MiB cache, 20 ms buffered durability.
    pub fn config(path: PathBuf) -> BackendConfig {
        BackendConfig::new(path)
            .with_cache_size_mb(16)
            .with_durability(Durability::Buffered {
                interval: Duration::from_millis(20),
            })
    }

    /// Opens `B` on a fresh directory with [`Fixture::config`].
    pub fn new() -> Self {
        Self::with(|c| c)
    }

    /// Opens `B` on a fresh directory with an adjusted configuration.
    pub fn with(adjust: impl FnOnce(BackendConfig) -> BackendConfig) -> Self {
        let dir = tempfile::tempdir().expect("create temp dir");
        let config = adjust(Self::config(dir.path().join("store")));
        let backend = B::new(config.clone()).expect("open backend");
        Fixture {
            backend: Some(backend),
            config,
            _dir: dir,
        }
    }

    /// The backend.
    pub fn db(&self) -> &B {
        self.backend.as_deref().expect("backend is open")
    }

    /// A shared handle to the backend.
    pub fn arc(&self) -> Arc<B> {
        self.backend.clone().expect("backend is open")
    }

    /// The configuration the backend was opened with.
    pub fn config_used(&self) -> &BackendConfig {
        &self.config
    }

    /// Closes the backend and opens it again on the same directory.
    pub fn reopen(&mut self) {
        if let Some(b) = self.backend.take() {
            b.close().expect("close before reopen");
        }
        self.backend = Some(B::new(self.config.clone()).expect("reopen backend"));
    }

    /// The whole content of every tree, in [`Tree::ALL`] order.
    pub fn dump(&self) -> Vec<(Tree, Vec<KvPair>)> {
        dump(self.db())
    }
}

impl<B: Backend> Default for Fixture<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> Drop for Fixture<B> {
    fn drop(&mut self) {
        if let Some(b) = self.backend.take() {
            // Already closed by the case is fine.
            let _ = b.close();
        }
    }
}

/// The whole content of every tree of `db`.
pub fn dump<B: Backend>(db: &B) -> Vec<(Tree, Vec<KvPair>)> {
    Tree::ALL
        .into_iter()
        .map(|t| (t, db.scan(t, &[], &[], 0).expect("scan whole tree")))
        .collect()
}
