use sea_orm_migration::{prelude::*, schema::*};

use crate::{m20261123_000001_create_partners::Partners, m20261123_000002_create_jobs::Jobs};

/// What partners integrate against:
/// - a job's `client_reference`, unique per partner;
/// - the index behind `GET /jobs?updated_since=` (a partner's jobs in the order they changed);
/// - the previous API key of a rotation, valid until its overlap ends;
/// - tombstones of erased jobs.
#[derive(DeriveMigrationName)]
pub struct Migration;

const CLIENT_REFERENCE: &str = "uq_jobs_partner_client_reference";
const UPDATED_AT: &str = "idx_jobs_partner_updated_at_id";
const PREVIOUS_KEY: &str = "idx_partners_previous_key_hash";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    .add_column(string_len_null(Contract::ClientReference, 128))
                    .to_owned(),
            )
            .await?;
        // NULL references are distinct in a unique index on both SQLite and PostgreSQL.
        manager
            .create_index(
                Index::create()
                    .name(CLIENT_REFERENCE)
                    .table(Jobs::Table)
                    .col(Jobs::PartnerId)
                    .col(Contract::ClientReference)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(UPDATED_AT)
                    .table(Jobs::Table)
                    .col(Jobs::PartnerId)
                    .col(Jobs::UpdatedAt)
                    .col(Jobs::Id)
                    .to_owned(),
            )
            .await?;
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [
            string_len_null(Contract::PreviousKeyPrefix, 32),
            string_len_null(Contract::PreviousKeyHash, 64),
            timestamp_with_time_zone_null(Contract::PreviousKeyExpiresAt),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Partners::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name(PREVIOUS_KEY)
                    .table(Partners::Table)
                    .col(Contract::PreviousKeyHash)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ErasedJobs::Table)
                    .col(uuid(ErasedJobs::Id).primary_key())
                    .col(uuid(ErasedJobs::PartnerId))
                    .col(timestamp_with_time_zone(ErasedJobs::ErasedAt))
                    .col(string_len_null(ErasedJobs::ImageKey, 200))
                    .foreign_key(
                        ForeignKey::create()
                            .from(ErasedJobs::Table, ErasedJobs::PartnerId)
                            .to(Partners::Table, Partners::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ErasedJobs::Table).to_owned())
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name(PREVIOUS_KEY)
                    .table(Partners::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            Contract::PreviousKeyPrefix,
            Contract::PreviousKeyHash,
            Contract::PreviousKeyExpiresAt,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Partners::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        for name in [UPDATED_AT, CLIENT_REFERENCE] {
            manager
                .drop_index(Index::drop().name(name).table(Jobs::Table).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    .drop_column(Contract::ClientReference)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Contract {
    ClientReference,
    PreviousKeyPrefix,
    PreviousKeyHash,
    PreviousKeyExpiresAt,
}

#[derive(DeriveIden)]
enum ErasedJobs {
    Table,
    Id,
    PartnerId,
    ErasedAt,
    ImageKey,
}
