//! A local folder as object store: the embedded default.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use std::io::Write;

use tokio::fs;

use super::{validate_key, ObjectStore, ObjectStoreError};

pub struct FolderStore {
    root: PathBuf,
    staging: PathBuf,
}

impl FolderStore {
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, ObjectStoreError> {
        let root = root.into();
        let staging = root.join(".staging");
        fs::create_dir_all(&staging).await?;
        Ok(Self { root, staging })
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

#[async_trait::async_trait]
impl ObjectStore for FolderStore {
    async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        _content_type: &str,
    ) -> Result<(), ObjectStoreError> {
        let path = self.path(key)?;
        let staged = self.staging.join(uuid::Uuid::new_v4().simple().to_string());
        // One blocking task for the whole write: write beside, flush to disk, then rename,
        // so the object appears whole or not at all.
        tokio::task::spawn_blocking(move || {
            let result = (|| {
                let mut file = std::fs::File::create(&staged)?;
                file.write_all(&bytes)?;
                file.sync_data()?;
                drop(file);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::rename(&staged, &path)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&staged);
            }
            result
        })
        .await
        .map_err(|e| ObjectStoreError::Backend(format!("blocking task failed: {e}")))??;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectStoreError> {
        let path = self.path(key)?;
        fs::read(&path)
            .await
            .map(Bytes::from)
            .map_err(|e| not_found(key, e))
    }

    async fn exists(&self, key: &str) -> Result<bool, ObjectStoreError> {
        Ok(fs::try_exists(self.path(key)?).await?)
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectStoreError> {
        match fs::remove_file(self.path(key)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn health_check(&self) -> Result<(), ObjectStoreError> {
        let probe = self.staging.join(".health");
        fs::write(&probe, b"ok").await?;
        fs::remove_file(&probe).await?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("folder {}", display_path(&self.root))
    }
}

fn display_path(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
