//! An S3 bucket (AWS or any S3-compatible server) as object store.
//! Credentials come from the usual AWS chain: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
//! profiles, or the instance role.

use aws_sdk_s3::{
    config::Credentials,
    error::{DisplayErrorContext, SdkError},
    primitives::ByteStream,
    Client,
};
use bytes::Bytes;

use super::{validate_key, ObjectStore, ObjectStoreError};

pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
}

fn backend<E: std::error::Error + 'static, R: std::fmt::Debug>(
    err: SdkError<E, R>,
) -> ObjectStoreError {
    ObjectStoreError::Backend(DisplayErrorContext(err).to_string())
}

pub struct S3Settings {
    pub bucket: String,
    pub prefix: String,
    pub endpoint_url: Option<String>,
    pub region: String,
    pub force_path_style: bool,
    /// Access key id and secret; the AWS credential chain when `None`.
    pub credentials: Option<(String, String)>,
}

impl S3Store {
    pub async fn connect(settings: S3Settings) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(settings.region));
        if let Some((id, secret)) = settings.credentials {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "platescore-config",
            ));
        }
        let shared = loader.load().await;
        let mut builder =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(settings.force_path_style);
        if let Some(endpoint) = settings.endpoint_url {
            builder = builder.endpoint_url(endpoint);
        }
        Self::from_client(
            Client::from_conf(builder.build()),
            settings.bucket,
            settings.prefix,
        )
    }

    pub fn from_client(client: Client, bucket: String, prefix: String) -> Self {
        Self {
            client,
            bucket,
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    fn full_key(&self, key: &str) -> Result<String, ObjectStoreError> {
        validate_key(key)?;
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{}", self.prefix, key)
        })
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), ObjectStoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key)?)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectStoreError> {
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key)?)
            .send()
            .await
            .map_err(|err| match err.as_service_error() {
                Some(e) if e.is_no_such_key() => ObjectStoreError::NotFound(key.to_string()),
                _ => backend(err),
            })?;
        let data = output
            .body
            .collect()
            .await
            .map_err(|e| ObjectStoreError::Backend(e.to_string()))?;
        Ok(data.into_bytes())
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectStoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key)?)
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn health_check(&self) -> Result<(), ObjectStoreError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}
