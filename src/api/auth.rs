//! Partner authentication: `Authorization: Bearer <key>` or `X-API-Key: <key>`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use entity::partner;
use poem::Request;
use poem_openapi::{auth, SecurityScheme};
use sha2::{Digest, Sha256};

use super::{
    problem::{ApiProblem, ProblemCode},
    AppState,
};

/// Remembers recently authenticated keys for a few seconds, so a burst of requests costs one
/// database lookup. Only successes are cached: a revoked key stops working within `ttl`.
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], (partner::Model, Instant)>>,
}

/// Bounds memory against a flood of distinct valid keys; the cache is simply cleared.
const MAX_CACHED_KEYS: usize = 10_000;

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, digest: &[u8; 32]) -> Option<partner::Model> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(digest)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(partner, _)| partner.clone())
    }

    fn put(&self, digest: [u8; 32], partner: partner::Model) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_CACHED_KEYS {
            entries.clear();
        }
        entries.insert(digest, (partner, Instant::now()));
    }
}

/// An authenticated caller: the partner, and which key it called with.
#[derive(Debug, Clone)]
pub struct Caller {
    pub partner: partner::Model,
    /// Lowercase hex SHA-256 of the key presented.
    pub key_sha256: String,
}

async fn check(req: &Request, key: &str) -> poem::Result<Caller> {
    let state = req
        .data::<Arc<AppState>>()
        .ok_or_else(|| ApiProblem::internal("application state missing"))?;
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let key_sha256 = hex::encode(digest);
    if let Some(partner) = state.key_cache.get(&digest) {
        return Ok(Caller {
            partner,
            key_sha256,
        });
    }
    match crate::store::partners::authenticate(&state.db, key).await {
        Ok(Some(partner)) => {
            state.key_cache.put(digest, partner.clone());
            Ok(Caller {
                partner,
                key_sha256,
            })
        }
        Ok(None) => Err(ApiProblem::new(
            ProblemCode::Unauthorized,
            "the API key is unknown or revoked",
        )
        .into()),
        Err(err) => Err(ApiProblem::from(err).into()),
    }
}

async fn check_bearer(req: &Request, bearer: auth::Bearer) -> poem::Result<Caller> {
    check(req, &bearer.token).await
}

async fn check_api_key(req: &Request, key: auth::ApiKey) -> poem::Result<Caller> {
    check(req, &key.key).await
}

/// An API key sent as a bearer token.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_bearer")]
pub struct BearerKey(Caller);

/// An API key sent in the `X-API-Key` header.
#[derive(SecurityScheme)]
#[oai(
    ty = "api_key",
    key_name = "X-API-Key",
    key_in = "header",
    checker = "check_api_key"
)]
pub struct HeaderKey(Caller);

#[derive(SecurityScheme)]
pub enum PartnerAuth {
    Bearer(BearerKey),
    Header(HeaderKey),
}

impl PartnerAuth {
    pub fn partner(&self) -> &partner::Model {
        &self.caller().partner
    }

    /// Hex SHA-256 of the key this request came with.
    pub fn key_sha256(&self) -> &str {
        &self.caller().key_sha256
    }

    fn caller(&self) -> &Caller {
        match self {
            Self::Bearer(BearerKey(caller)) | Self::Header(HeaderKey(caller)) => caller,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner() -> partner::Model {
        partner::Model {
            id: uuid::Uuid::new_v4(),
            name: "p".into(),
            key_prefix: "psk_abcdefgh".into(),
            key_hash: "0".repeat(64),
            created_at: chrono::Utc::now(),
            revoked_at: None,
            webhook_secret: None,
            is_admin: false,
            previous_key_prefix: None,
            previous_key_hash: None,
            previous_key_expires_at: None,
            rate_limit_per_second: None,
            rate_limit_burst: None,
            max_queued_jobs: None,
        }
    }

    #[test]
    fn the_key_cache_forgets_after_its_ttl() {
        let cache = KeyCache::new(Duration::from_secs(60));
        let p = partner();
        cache.put([1; 32], p.clone());
        assert_eq!(cache.get(&[1; 32]), Some(p.clone()));
        assert_eq!(cache.get(&[2; 32]), None);

        let expired = KeyCache::new(Duration::from_secs(60));
        expired.entries.lock().unwrap().insert(
            [1; 32],
            (p.clone(), Instant::now() - Duration::from_secs(61)),
        );
        assert_eq!(expired.get(&[1; 32]), None);

        let off = KeyCache::new(Duration::ZERO);
        off.put([1; 32], p);
        assert_eq!(off.get(&[1; 32]), None);
    }
}
