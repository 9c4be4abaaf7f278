//! A local folder as object store: the embedded default.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use tokio::fs;

use super::{validate_key, ObjectStore, ObjectStoreError};

/// Prefix of files still being written; never a valid key part, so never listed as an object.
const STAGING_PREFIX: &str = ".staging-";

pub struct FolderStore {
    root: PathBuf,
}

impl FolderStore {
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, ObjectStoreError> {
        let root = root.into();
        fs::create_dir_all(&root).await?;
        Ok(Self { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf, ObjectStoreError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

fn not_found(key: &str, err: std::io::Error) -> ObjectStoreError {
    if err.kind() == std::io::ErrorKind::NotFound {
        ObjectStoreError::NotFound(key.to_string())
    } else {
        ObjectStoreError::Io(err)
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ObjectStoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ObjectStoreError::Backend(format!("blocking task failed: {e}")))?
        .map_err(ObjectStoreError::Io)
}

/// Writes beside the final path, flushes to disk, then renames: the object appears whole
/// or not at all, and a rename within one folder locks only that folder.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let staged = parent.join(format!("{STAGING_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = std::fs::File::create(&staged)?;
        file.write_all(bytes)?;
        file.sync_data()?;
        std::fs::rename(&staged, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    result
}

#[async_trait::async_trait]
impl ObjectStore for FolderStore {
    async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        _content_type: &str,
    ) -> Result<(), ObjectStoreError> {
        let path = self.path(key)?;
        blocking(move || {
            // Always written: a URL job fetched again after a crash may bring other bytes
            // under its key; the rename replaces the object whole.
            write_atomically(&path, &bytes)
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectStoreError> {
        let path = self.path(key)?;
        fs::read(&path)
            .await
            .map(Bytes::from)
            .map_err(|e| not_found(key, e))
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectStoreError> {
        match fs::remove_file(self.path(key)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn health_check(&self) -> Result<(), ObjectStoreError> {
        let probe = self.root.join(format!("{STAGING_PREFIX}health"));
        blocking(move || {
            // Removed even when writing failed (a full disk creates the file, then fails).
            let written = std::fs::write(&probe, b"ok");
            let removed = std::fs::remove_file(&probe);
            written.and(removed)
        })
        .await
    }

    fn describe(&self) -> String {
        let absolute = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        format!("folder {}", absolute.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_round_trip_and_deletes_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::open(dir.path()).await.unwrap();
        let key = "images/sha256/ab/abcdef";
        assert!(matches!(
            store.get(key).await,
            Err(ObjectStoreError::NotFound(_))
        ));
        store
            .put(key, Bytes::from_static(b"meal"), "image/jpeg")
            .await
            .unwrap();
        assert_eq!(store.get(key).await.unwrap(), Bytes::from_static(b"meal"));
        store.delete(key).await.unwrap();
        store.delete(key).await.unwrap();
        assert!(matches!(
            store.get(key).await,
            Err(ObjectStoreError::NotFound(_))
        ));
        store.health_check().await.unwrap();
        // Nothing staged is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("images/sha256/ab"))
            .unwrap()
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
