//! Durable controller state, behind a trait so another store (etcd, for several instances)
//! can replace the embedded one.
//!
//! The embedded store is redb: each save is one ACID transaction, so a crash at any moment
//! leaves either the previous state or the new one, never half of either.

use std::path::{Path, PathBuf};

use redb::{Database, TableDefinition};

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const KEY: &str = "controller";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("state store: {0}")]
    Io(String),
}

/// Where the controller's state lives between runs.
pub trait Store: Send + Sync {
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replaces the saved state atomically.
    fn save(&self, state: &[u8]) -> Result<(), StoreError>;
}

pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (creating if needed) `dir/state.redb`. Fails if another switchyard holds it.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: dir.to_path_buf(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(format!("cannot create it: {e}")))?;
        let file = dir.join("state.redb");
        let db = Database::create(&file).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("lock") || msg.contains("already open") || msg.contains("in use") {
                open_err(format!(
                    "{} is in use by another switchyard; give each instance its own --data-dir",
                    file.display()
                ))
            } else {
                open_err(format!("cannot open {}: {msg}", file.display()))
            }
        })?;
        Ok(RedbStore { db })
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let io = |e: &dyn std::fmt::Display| StoreError::Io(e.to_string());
        let tx = self.db.begin_read().map_err(|e| io(&e))?;
        let table = match tx.open_table(STATE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(io(&e)),
        };
        Ok(table
            .get(KEY)
            .map_err(|e| io(&e))?
            .map(|v| v.value().to_vec()))
    }

    fn save(&self, state: &[u8]) -> Result<(), StoreError> {
        let io = |e: &dyn std::fmt::Display| StoreError::Io(e.to_string());
        let tx = self.db.begin_write().map_err(|e| io(&e))?;
        {
            let mut table = tx.open_table(STATE).map_err(|e| io(&e))?;
            table.insert(KEY, state).map_err(|e| io(&e))?;
        }
        tx.commit().map_err(|e| io(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_survive_reopening_and_a_second_opener_is_refused() {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-store-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        {
            let s = RedbStore::open(&dir).unwrap();
            assert_eq!(s.load().unwrap(), None);
            s.save(b"one").unwrap();
            s.save(b"two").unwrap();
            assert!(
                RedbStore::open(&dir).is_err(),
                "a second instance must not share the store"
            );
        }
        let s = RedbStore::open(&dir).unwrap();
        assert_eq!(s.load().unwrap().as_deref(), Some(&b"two"[..]));
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
