//! Why a job attempt failed, with its stable code, and whether trying again may help.

use crate::{
    imaging::HeaderError, inference::InferenceError, objects::ObjectStoreError,
    outbound::FetchError, store::StoreError,
};

#[derive(Debug, Clone)]
pub struct JobFailure {
    pub code: &'static str,
    pub message: String,
    pub transient: bool,
}

impl JobFailure {
    pub fn permanent(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            transient: false,
        }
    }

    pub fn transient(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            transient: true,
        }
    }
}

impl From<FetchError> for JobFailure {
    fn from(err: FetchError) -> Self {
        let message = format!("fetching image_url: {err}");
        match &err {
            FetchError::Forbidden(_) => Self::permanent("url_forbidden_host", message),
            FetchError::Timeout => Self::transient("image_fetch_timeout", message),
            FetchError::TooLarge { .. } => Self::permanent("image_too_large", message),
            _ if err.is_transient() => Self::transient("image_fetch_failed", message),
            _ => Self::permanent("image_fetch_failed", message),
        }
    }
}

impl From<HeaderError> for JobFailure {
    fn from(err: HeaderError) -> Self {
        Self::permanent(err.code(), err.to_string())
    }
}

impl From<InferenceError> for JobFailure {
    fn from(err: InferenceError) -> Self {
        match &err {
            InferenceError::Image(_) => Self::permanent(err.code(), err.to_string()),
            _ => Self::transient(err.code(), err.to_string()),
        }
    }
}

impl From<ObjectStoreError> for JobFailure {
    fn from(err: ObjectStoreError) -> Self {
        match &err {
            ObjectStoreError::NotFound(_) | ObjectStoreError::InvalidKey(_) => {
                Self::permanent("image_missing", err.to_string())
            }
            _ => Self::transient("storage_unavailable", err.to_string()),
        }
    }
}

impl From<StoreError> for JobFailure {
    fn from(err: StoreError) -> Self {
        Self::transient("database_unavailable", err.to_string())
    }
}
