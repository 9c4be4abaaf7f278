//! A partner's API keys, shown by their first characters only.

use chrono::Utc;
use entity::partner;
use poem_openapi::{Enum, Object};

use super::Timestamp;

/// Which of a partner's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ApiKeyRole {
    /// The key from the latest rotation (or creation).
    Current,
    /// The key before it, working until `expires_at`.
    Previous,
}

/// An API key that works now.
#[derive(Debug, Clone, Object)]
pub struct ApiKeySummary {
    /// The key's first characters, e.g. `psk_Ab3dEf9h`.
    pub prefix: String,
    pub role: ApiKeyRole,
    /// When the key stops working; null for the current key.
    #[oai(nullable)]
    pub expires_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Object)]
pub struct ApiKeyList {
    /// The current key first.
    pub keys: Vec<ApiKeySummary>,
}

impl From<&partner::Model> for ApiKeyList {
    fn from(partner: &partner::Model) -> Self {
        let mut keys = vec![ApiKeySummary {
            prefix: partner.key_prefix.clone(),
            role: ApiKeyRole::Current,
            expires_at: None,
        }];
        if let (Some(prefix), Some(expires_at)) = (
            &partner.previous_key_prefix,
            partner.previous_key_expires_at,
        ) {
            if expires_at > Utc::now() {
                keys.push(ApiKeySummary {
                    prefix: prefix.clone(),
                    role: ApiKeyRole::Previous,
                    expires_at: Some(Timestamp(expires_at)),
                });
            }
        }
        Self { keys }
    }
}

/// A new key, shown only now, and the keys that work from now on.
#[derive(Debug, Clone, Object)]
pub struct RotatedApiKey {
    /// `psk_…`: send it as `Authorization: Bearer <key>`.
    pub key: String,
    pub keys: Vec<ApiKeySummary>,
}
