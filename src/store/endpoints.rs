//! Webhook endpoints: a partner's destinations for finished jobs, their signing secrets
//! (with an overlap after rotation) and their health.

use chrono::{DateTime, Utc};
use entity::webhook_endpoint;
use sea_orm::{
    prelude::*,
    sea_query::{Expr, LockType},
    ActiveValue::Set,
    PaginatorTrait, QueryOrder, QuerySelect,
};

use super::{Db, StoreError};

/// What [`create`] did.
#[derive(Debug)]
pub enum CreateOutcome {
    Created(Box<webhook_endpoint::Model>),
    /// The partner already has `max` endpoints (deleted ones do not count).
    LimitReached,
}

impl CreateOutcome {
    /// The endpoint, when one was created.
    pub fn created(self) -> Option<webhook_endpoint::Model> {
        match self {
            Self::Created(endpoint) => Some(*endpoint),
            Self::LimitReached => None,
        }
    }
}

/// Creates an endpoint unless the partner already has `max`. The count and the insert are
/// one transaction, and a partner's creations take turns: PostgreSQL locks the partner's
/// row first; SQLite takes its write lock at `BEGIN`. So concurrent requests never pass
/// the limit together.
pub async fn create(
    db: &Db,
    partner_id: Uuid,
    url: String,
    description: Option<String>,
    secret: String,
    max: u64,
) -> Result<CreateOutcome, StoreError> {
    let txn = db.begin_write().await?;
    super::partners::lock_for_update(&txn, partner_id).await?;
    let existing = webhook_endpoint::Entity::find()
        .filter(webhook_endpoint::Column::PartnerId.eq(partner_id))
        .filter(webhook_endpoint::Column::DeletedAt.is_null())
        .count(&txn)
        .await?;
    if existing >= max {
        return Ok(CreateOutcome::LimitReached);
    }
    let now = Utc::now();
    let created = webhook_endpoint::ActiveModel {
        id: Set(Uuid::now_v7()),
        partner_id: Set(partner_id),
        url: Set(url),
        description: Set(description),
        secret: Set(secret),
        previous_secret: Set(None),
        previous_secret_expires_at: Set(None),
        failing_since: Set(None),
        disabled_at: Set(None),
        disabled_reason: Set(None),
        deleted_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await?;
    txn.commit().await?;
    Ok(CreateOutcome::Created(Box::new(created)))
}

/// A partner's endpoints that were not deleted, oldest first.
pub async fn list(db: &Db, partner_id: Uuid) -> Result<Vec<webhook_endpoint::Model>, StoreError> {
    Ok(webhook_endpoint::Entity::find()
        .filter(webhook_endpoint::Column::PartnerId.eq(partner_id))
        .filter(webhook_endpoint::Column::DeletedAt.is_null())
        .order_by_asc(webhook_endpoint::Column::Id)
        .all(db.reader())
        .await?)
}

/// Several endpoints by id, deleted or not.
pub async fn find_many(db: &Db, ids: &[Uuid]) -> Result<Vec<webhook_endpoint::Model>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(webhook_endpoint::Entity::find()
        .filter(webhook_endpoint::Column::Id.is_in(ids.iter().copied()))
        .all(db.reader())
        .await?)
}

/// Soft-deletes; false when the partner has no such endpoint.
pub async fn delete(db: &Db, partner_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
    let now = Utc::now();
    let result = webhook_endpoint::Entity::update_many()
        .col_expr(webhook_endpoint::Column::DeletedAt, Expr::value(now))
        .col_expr(webhook_endpoint::Column::UpdatedAt, Expr::value(now))
        .filter(webhook_endpoint::Column::Id.eq(id))
        .filter(webhook_endpoint::Column::PartnerId.eq(partner_id))
        .filter(webhook_endpoint::Column::DeletedAt.is_null())
        .exec(db.writer())
        .await?;
    Ok(result.rows_affected == 1)
}

/// Replaces the secret; the old one stays valid (and is still signed with) until
/// `overlap_until`. Returns the updated endpoint, or None when the partner has no such one.
pub async fn rotate_secret(
    db: &Db,
    partner_id: Uuid,
    id: Uuid,
    new_secret: String,
    overlap_until: DateTime<Utc>,
) -> Result<Option<webhook_endpoint::Model>, StoreError> {
    let result = webhook_endpoint::Entity::update_many()
        .col_expr(
            webhook_endpoint::Column::PreviousSecret,
            Expr::col(webhook_endpoint::Column::Secret),
        )
        .col_expr(
            webhook_endpoint::Column::PreviousSecretExpiresAt,
            Expr::value(overlap_until),
        )
        .col_expr(webhook_endpoint::Column::Secret, Expr::value(new_secret))
        .col_expr(webhook_endpoint::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(webhook_endpoint::Column::Id.eq(id))
        .filter(webhook_endpoint::Column::PartnerId.eq(partner_id))
        .filter(webhook_endpoint::Column::DeletedAt.is_null())
        .exec(db.writer())
        .await?;
    if result.rows_affected == 0 {
        return Ok(None);
    }
    Ok(webhook_endpoint::Entity::find_by_id(id)
        .one(db.writer())
        .await?)
}

/// What a partner changes of an endpoint; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct EndpointChanges {
    pub url: Option<String>,
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
}

/// Applies a partner's changes in one transaction: a new URL also applies to the
/// deliveries not yet delivered; re-enabling makes those deliveries due now with a fresh
/// schedule. Returns the endpoint as it now is, or None when the partner has no such one.
pub async fn update(
    db: &Db,
    partner_id: Uuid,
    id: Uuid,
    changes: EndpointChanges,
    now: DateTime<Utc>,
) -> Result<Option<webhook_endpoint::Model>, StoreError> {
    let txn = db.begin_write().await?;
    let mut query = webhook_endpoint::Entity::find_by_id(id)
        .filter(webhook_endpoint::Column::PartnerId.eq(partner_id))
        .filter(webhook_endpoint::Column::DeletedAt.is_null());
    if db.is_postgres() {
        // Concurrent changes take turns, so each sees whether the other re-enabled it.
        query = query.lock(LockType::NoKeyUpdate);
    }
    let Some(endpoint) = query.one(&txn).await? else {
        return Ok(None);
    };
    let was_enabled = endpoint.disabled_at.is_none();
    let mut active: webhook_endpoint::ActiveModel = endpoint.into();
    active.updated_at = Set(now);
    if let Some(url) = &changes.url {
        active.url = Set(url.clone());
        super::deliveries::retarget_undelivered(&txn, id, url, now).await?;
    }
    if let Some(description) = changes.description {
        active.description = Set(description);
    }
    match changes.enabled {
        Some(true) if !was_enabled => {
            active.disabled_at = Set(None);
            active.disabled_reason = Set(None);
            active.failing_since = Set(None);
            super::deliveries::resume_undelivered(&txn, id, now).await?;
        }
        Some(false) if was_enabled => {
            active.disabled_at = Set(Some(now));
            active.disabled_reason = Set(Some("manual".into()));
        }
        _ => {}
    }
    let updated = active.update(&txn).await?;
    txn.commit().await?;
    Ok(Some(updated))
}

/// What an attempt taught us about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointHealth {
    Succeeded,
    Failed,
    /// The receiver answered 410 Gone: stop sending there.
    Gone,
}

pub async fn record_health(
    db: &Db,
    id: Uuid,
    health: EndpointHealth,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let update = webhook_endpoint::Entity::update_many()
        .filter(webhook_endpoint::Column::Id.eq(id))
        .col_expr(webhook_endpoint::Column::UpdatedAt, Expr::value(now));
    let update = match health {
        EndpointHealth::Succeeded => update
            .col_expr(
                webhook_endpoint::Column::FailingSince,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(webhook_endpoint::Column::FailingSince.is_not_null()),
        EndpointHealth::Failed => update
            .col_expr(webhook_endpoint::Column::FailingSince, Expr::value(now))
            .filter(webhook_endpoint::Column::FailingSince.is_null()),
        EndpointHealth::Gone => update
            .col_expr(webhook_endpoint::Column::DisabledAt, Expr::value(now))
            .col_expr(
                webhook_endpoint::Column::DisabledReason,
                Expr::value("gone"),
            )
            .filter(webhook_endpoint::Column::DisabledAt.is_null()),
    };
    update.exec(db.writer()).await?;
    Ok(())
}

/// Disables endpoints that have failed continuously since before `cutoff`; returns how many.
pub async fn disable_failing_since(
    db: &Db,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let result = webhook_endpoint::Entity::update_many()
        .col_expr(webhook_endpoint::Column::DisabledAt, Expr::value(now))
        .col_expr(
            webhook_endpoint::Column::DisabledReason,
            Expr::value("failing"),
        )
        .col_expr(webhook_endpoint::Column::UpdatedAt, Expr::value(now))
        .filter(webhook_endpoint::Column::FailingSince.lt(cutoff))
        .filter(webhook_endpoint::Column::DisabledAt.is_null())
        .filter(webhook_endpoint::Column::DeletedAt.is_null())
        .exec(db.writer())
        .await?;
    Ok(result.rows_affected)
}

/// Whether deliveries may be sent to this endpoint.
pub fn is_active(endpoint: &webhook_endpoint::Model) -> bool {
    endpoint.disabled_at.is_none() && endpoint.deleted_at.is_none()
}
