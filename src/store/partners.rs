//! Partners and their API keys. A key is shown once, at creation; only its SHA-256 is kept.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::Utc;
use entity::partner;
use rand::RngCore;
use sea_orm::{
    prelude::*, sea_query::Expr, ActiveValue::Set, Condition, DbBackend, QueryOrder, Statement,
    TransactionTrait,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{lock_for_transaction, AdvisoryLock, Db, StoreError};

const KEY_PREFIX: &str = "psk_";
/// Characters of a key that may be shown in listings (prefix plus 8).
const SHOWN_CHARS: usize = KEY_PREFIX.len() + 8;

/// A freshly created API key: 256 random bits.
pub struct NewApiKey(String);

impl NewApiKey {
    fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Creates a partner; an admin partner's key also opens the operator endpoints.
pub async fn create(
    db: &Db,
    name: &str,
    admin: bool,
) -> Result<(partner::Model, NewApiKey), StoreError> {
    // In a transaction, so that a failed commit is reported (see `jobs::insert`).
    let txn = db.writer().begin().await?;
    let created = insert(&txn, name, admin).await?;
    txn.commit().await?;
    Ok(created)
}

/// Creates an admin partner unless one or more partners exist already: once, however many
/// nodes start together (on PostgreSQL they take turns under an advisory lock; on SQLite
/// under the write lock, taken at `BEGIN`).
pub async fn create_first(
    db: &Db,
    name: &str,
) -> Result<Option<(partner::Model, NewApiKey)>, StoreError> {
    let txn = db.begin_write().await?;
    if db.is_postgres() {
        lock_for_transaction(&txn, AdvisoryLock::FirstPartner).await?;
    }
    if partner::Entity::find().count(&txn).await? > 0 {
        return Ok(None);
    }
    let created = insert(&txn, name, true).await?;
    txn.commit().await?;
    Ok(Some(created))
}

async fn insert(
    conn: &impl ConnectionTrait,
    name: &str,
    admin: bool,
) -> Result<(partner::Model, NewApiKey), StoreError> {
    let key = NewApiKey::generate();
    let model = partner::ActiveModel {
        id: Set(Uuid::new_v4()),
        name: Set(name.to_string()),
        key_prefix: Set(key.expose()[..SHOWN_CHARS].to_string()),
        key_hash: Set(hash_key(key.expose())),
        created_at: Set(Utc::now()),
        revoked_at: Set(None),
        webhook_secret: Set(None),
        is_admin: Set(admin),
        previous_key_prefix: Set(None),
        previous_key_hash: Set(None),
        previous_key_expires_at: Set(None),
        rate_limit_per_second: Set(None),
        rate_limit_burst: Set(None),
        max_queued_jobs: Set(None),
    }
    .insert(conn)
    .await?;
    Ok((model, key))
}

/// Makes a partner's writes that must see each other's counts take turns: on PostgreSQL,
/// locks the partner's row until `conn`'s transaction ends. `NO KEY UPDATE` is enough to
/// exclude the other takers, and unlike `UPDATE` it leaves alone the inserts whose foreign
/// key names the partner (jobs, deliveries). On SQLite it does nothing: the transaction
/// that calls it must hold the write lock already ([`Db::begin_write`]).
///
/// [`Db::begin_write`]: super::Db::begin_write
pub(crate) async fn lock_for_update<C: ConnectionTrait>(
    conn: &C,
    partner_id: Uuid,
) -> Result<(), StoreError> {
    if conn.get_database_backend() == DbBackend::Postgres {
        conn.query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id FROM partners WHERE id = $1 FOR NO KEY UPDATE",
            [partner_id.into()],
        ))
        .await?;
    }
    Ok(())
}

pub async fn list(db: &Db) -> Result<Vec<partner::Model>, StoreError> {
    Ok(partner::Entity::find()
        .order_by_asc(partner::Column::CreatedAt)
        .all(db.reader())
        .await?)
}

/// A partner, as the database has it now.
pub async fn find(db: &Db, id: Uuid) -> Result<Option<partner::Model>, StoreError> {
    Ok(partner::Entity::find_by_id(id).one(db.writer()).await?)
}

/// Revokes a partner's key. Returns false when no such partner exists.
pub async fn revoke(db: &Db, id: Uuid) -> Result<bool, StoreError> {
    let result = partner::Entity::update_many()
        .col_expr(partner::Column::RevokedAt, Expr::value(Utc::now()))
        .filter(partner::Column::Id.eq(id))
        .filter(partner::Column::RevokedAt.is_null())
        .exec(db.writer())
        .await?;
    if result.rows_affected > 0 {
        return Ok(true);
    }
    Ok(partner::Entity::find_by_id(id)
        .one(db.reader())
        .await?
        .is_some())
}

/// The active partner owning this key, if any: its current key, or its previous one until
/// the rotation's overlap ends.
pub async fn authenticate(
    db: &Db,
    presented_key: &str,
) -> Result<Option<partner::Model>, StoreError> {
    if !presented_key.starts_with(KEY_PREFIX) || presented_key.len() > 128 {
        return Ok(None);
    }
    let presented_hash = hash_key(presented_key);
    let found = partner::Entity::find()
        .filter(
            Condition::any()
                .add(partner::Column::KeyHash.eq(presented_hash.as_str()))
                .add(
                    Condition::all()
                        .add(partner::Column::PreviousKeyHash.eq(presented_hash.as_str()))
                        .add(partner::Column::PreviousKeyExpiresAt.gt(Utc::now())),
                ),
        )
        .filter(partner::Column::RevokedAt.is_null())
        .one(db.reader())
        .await?;
    // The lookup is by hash; compare again in constant time so no code path leaks timing.
    Ok(found.filter(|p| {
        let current = p.key_hash.as_bytes().ct_eq(presented_hash.as_bytes());
        let previous = p
            .previous_key_hash
            .as_deref()
            .unwrap_or_default()
            .as_bytes()
            .ct_eq(presented_hash.as_bytes());
        bool::from(current | previous)
    }))
}

/// Gives a partner a new key, if `current_key_sha256` is still its current key (so a
/// previous key, or a caller racing another rotation, cannot rotate): the current one keeps
/// working until `overlap_until`, and a previous one still in its overlap stops now.
/// Returns the partner as it now is, with the new key (shown only now).
pub async fn rotate_key(
    db: &Db,
    id: Uuid,
    current_key_sha256: &str,
    overlap_until: chrono::DateTime<Utc>,
) -> Result<Option<(partner::Model, NewApiKey)>, StoreError> {
    let key = NewApiKey::generate();
    let rotated = partner::Entity::update_many()
        .col_expr(
            partner::Column::PreviousKeyPrefix,
            Expr::col(partner::Column::KeyPrefix),
        )
        .col_expr(
            partner::Column::PreviousKeyHash,
            Expr::col(partner::Column::KeyHash),
        )
        .col_expr(
            partner::Column::PreviousKeyExpiresAt,
            Expr::value(overlap_until),
        )
        .col_expr(
            partner::Column::KeyPrefix,
            Expr::value(key.expose()[..SHOWN_CHARS].to_string()),
        )
        .col_expr(
            partner::Column::KeyHash,
            Expr::value(hash_key(key.expose())),
        )
        .filter(partner::Column::Id.eq(id))
        .filter(partner::Column::KeyHash.eq(current_key_sha256))
        .filter(partner::Column::RevokedAt.is_null())
        .exec(db.writer())
        .await?;
    if rotated.rows_affected == 0 {
        return Ok(None);
    }
    let partner = find(db, id).await?.ok_or(StoreError::PartnerNotFound(id))?;
    Ok(Some((partner, key)))
}

/// The partner's signing secret for per-job webhook URLs. `candidate` is stored if the
/// partner has none yet; concurrent callers all get the one that was stored first.
pub async fn webhook_secret(db: &Db, id: Uuid, candidate: String) -> Result<String, StoreError> {
    let existing = partner::Entity::find_by_id(id)
        .one(db.reader())
        .await?
        .and_then(|p| p.webhook_secret);
    if let Some(secret) = existing {
        return Ok(secret);
    }
    partner::Entity::update_many()
        .col_expr(partner::Column::WebhookSecret, Expr::value(candidate))
        .filter(partner::Column::Id.eq(id))
        .filter(partner::Column::WebhookSecret.is_null())
        .exec(db.writer())
        .await?;
    partner::Entity::find_by_id(id)
        .one(db.writer())
        .await?
        .and_then(|p| p.webhook_secret)
        .ok_or(StoreError::PartnerNotFound(id))
}

/// A partner's own value for one of its limits, as its column holds it: NULL for the
/// configured default, 0 for no limit, else the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitOverride {
    Default,
    Unlimited,
    Exactly(u32),
}

/// The largest limit a column holds.
pub const MAX_LIMIT: u32 = i32::MAX as u32;

impl LimitOverride {
    /// What a limit column holds, read.
    pub fn of(column: Option<i32>) -> Self {
        match column {
            None => Self::Default,
            Some(n) if n <= 0 => Self::Unlimited,
            Some(n) => Self::Exactly(n as u32),
        }
    }

    fn column(self) -> Option<i32> {
        match self {
            Self::Default => None,
            Self::Unlimited => Some(0),
            Self::Exactly(n) => Some(n.clamp(1, MAX_LIMIT) as i32),
        }
    }
}

impl std::str::FromStr for LimitOverride {
    type Err = String;

    /// A positive number, `unlimited`, or `default`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "default" => Ok(Self::Default),
            "unlimited" => Ok(Self::Unlimited),
            number => match number.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(Self::Exactly(n)),
                _ => Err(format!(
                    "`{text}`: expected a number from 1 to {MAX_LIMIT}, `unlimited` or `default`"
                )),
            },
        }
    }
}

impl std::fmt::Display for LimitOverride {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Unlimited => f.write_str("unlimited"),
            Self::Exactly(n) => write!(f, "{n}"),
        }
    }
}

/// Which of a partner's limits to change; `None` leaves one as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitChanges {
    pub rate_per_second: Option<LimitOverride>,
    pub burst: Option<LimitOverride>,
    pub max_queued_jobs: Option<LimitOverride>,
}

/// Sets a partner's own limits. Returns the partner as it now is, or `None` when there is
/// no such partner. API nodes see the change once their cached copy of the partner expires
/// (`auth_cache_seconds`).
pub async fn set_limits(
    db: &Db,
    id: Uuid,
    changes: LimitChanges,
) -> Result<Option<partner::Model>, StoreError> {
    let mut update = partner::Entity::update_many().filter(partner::Column::Id.eq(id));
    for (column, change) in [
        (partner::Column::RateLimitPerSecond, changes.rate_per_second),
        (partner::Column::RateLimitBurst, changes.burst),
        (partner::Column::MaxQueuedJobs, changes.max_queued_jobs),
    ] {
        if let Some(change) = change {
            update = update.col_expr(column, Expr::value(change.column()));
        }
    }
    update.exec(db.writer()).await?;
    find(db, id).await
}
