//! Opens the storage backend `[storage]` names (docs/STORAGE.md): the embedded SQLite file in the
//! data folder by default, or a PostgreSQL server. Everything after this sees only `SharedStore`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kabar_core::config::StorageBackend;
use kabar_core::Config;
use kabar_storage::SharedStore;
use kabar_storage_postgres::{PgOptions, PgStore};
use kabar_storage_sqlite::SqliteStore;
use tracing::info;

/// Overrides `[storage] url`, so the database password need not sit in the config file.
const URL_ENV: &str = "KABAR_STORAGE_URL";

pub async fn open_store(config: &Config) -> Result<SharedStore> {
    match config.storage.backend {
        StorageBackend::Sqlite => {
            let data_dir = &config.data_dir;
            std::fs::create_dir_all(data_dir).with_context(|| {
                format!("cannot create data folder {} (choose another with --data)", data_dir.display())
            })?;
            let db = data_dir.join("kabar.db");
            let store = SqliteStore::open(&db).with_context(|| format!("cannot open database {}", db.display()))?;
            Ok(Arc::new(store))
        }
        StorageBackend::Postgres => {
            let url = match std::env::var(URL_ENV) {
                Ok(u) if !u.trim().is_empty() => u,
                _ => match &config.storage.url {
                    Some(u) if !u.trim().is_empty() => u.clone(),
                    _ => bail!(
                        "[storage] backend = \"postgres\" needs url = \"postgres://user:password@host:port/dbname\" \
                         in the config (or the {URL_ENV} environment variable); see docs/STORAGE.md"
                    ),
                },
            };
            let opts = PgOptions {
                pool_size: config.storage.pool_size.max(1),
                schema: config.storage.schema.clone(),
                connect_timeout: Duration::from_secs(config.storage.connect_timeout_secs.max(1)),
            };
            let store = PgStore::open(&url, &opts)
                .await
                .context("cannot open the PostgreSQL store ([storage] in the config, docs/STORAGE.md)")?;
            info!(store = ?store, pool_size = opts.pool_size, "storage: PostgreSQL");
            Ok(Arc::new(store))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_is_the_default_and_postgres_is_chosen_by_config() {
        assert_eq!(Config::default().storage.backend, StorageBackend::Sqlite);
        let c = Config::from_toml(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://k:p@db:5432/kabar\"\npool_size = 4\nschema = \"chat\"\n",
        )
        .expect("valid config");
        assert_eq!(c.storage.backend, StorageBackend::Postgres);
        assert_eq!(c.storage.url.as_deref(), Some("postgres://k:p@db:5432/kabar"));
        assert_eq!((c.storage.pool_size, c.storage.schema.as_deref()), (4, Some("chat")));
        assert!(Config::from_toml("[storage]\nbackend = \"mysql\"\n").is_err(), "unknown backends are refused");
    }
}
