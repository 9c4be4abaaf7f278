//! Object storage for uploaded images: a local folder or any S3-compatible bucket.
//! Each job's image has a key of its own (`images/<partner id>/<job id>`), so deleting one
//! job's image can never take another job's, however their uploads and deletions interleave
//! (identical uploads are stored once per job). Images written by earlier releases keep their
//! content-addressed keys (`images/sha256/ab/abcd…`) and go when their last job goes: no new
//! job refers to them, so that check cannot race an upload.

mod folder;
mod s3;

use std::sync::Arc;

use bytes::Bytes;

pub use folder::FolderStore;
pub use s3::{S3Settings, S3Store};

use crate::config::{Config, ObjectStoreLocation};

#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    #[error("object `{0}` not found")]
    NotFound(String),
    #[error("invalid object key `{0}`")]
    InvalidKey(String),
    #[error("object store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("object store backend: {0}")]
    Backend(String),
}

impl ObjectStoreError {
    /// The store's disk is full (or over its quota): nothing was stored, and storing may
    /// succeed once space is freed.
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Io(err) if matches!(
            err.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ))
    }
}

#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Stores `bytes` under `key`, replacing what was there. Readers never see a partial
    /// object.
    async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), ObjectStoreError>;
    async fn get(&self, key: &str) -> Result<Bytes, ObjectStoreError>;
    /// Removes the object; removing a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<(), ObjectStoreError>;
    /// Cheap round trip that proves the store is reachable and usable.
    async fn health_check(&self) -> Result<(), ObjectStoreError>;
    /// Where the objects live, for logs.
    fn describe(&self) -> String;
}

/// The key of a job's image.
pub fn image_key(partner_id: uuid::Uuid, job_id: uuid::Uuid) -> String {
    format!("images/{partner_id}/{job_id}")
}

/// Keys are ours, but check them anyway: a key must never escape the store's root.
fn validate_key(key: &str) -> Result<(), ObjectStoreError> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ObjectStoreError::InvalidKey(key.to_string()))
    }
}

/// Opens the store the configuration names.
pub async fn open(config: &Config) -> Result<Arc<dyn ObjectStore>, ObjectStoreError> {
    let location = config
        .object_store_location()
        .map_err(|e| ObjectStoreError::Backend(e.to_string()))?;
    Ok(match location {
        ObjectStoreLocation::Folder(root) => Arc::new(FolderStore::open(root).await?),
        ObjectStoreLocation::S3 { bucket, prefix } => {
            let credentials = match (&config.s3_access_key_id, &config.s3_secret_access_key) {
                (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
                _ => None,
            };
            Arc::new(
                S3Store::connect(S3Settings {
                    bucket,
                    prefix,
                    endpoint_url: config.s3_endpoint_url.clone(),
                    region: config.s3_region.clone(),
                    force_path_style: config.s3_force_path_style,
                    credentials,
                })
                .await,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_root() {
        for bad in ["", "../x", "a//b", "a/../b", "/abs", "a/./b", "a b", "a\\b"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        validate_key(&image_key(uuid::Uuid::nil(), uuid::Uuid::now_v7())).unwrap();
    }

    #[test]
    fn a_full_disk_is_full_and_nothing_else_is() {
        let io = |err| ObjectStoreError::Io(err).is_full();
        // ENOSPC and EDQUOT, as the folder store meets them.
        #[cfg(target_os = "linux")]
        {
            assert!(io(std::io::Error::from_raw_os_error(28)));
            assert!(io(std::io::Error::from_raw_os_error(122)));
        }
        assert!(io(std::io::ErrorKind::StorageFull.into()));
        assert!(!io(std::io::ErrorKind::PermissionDenied.into()));
        assert!(!ObjectStoreError::Backend("connection refused".into()).is_full());
    }
}
