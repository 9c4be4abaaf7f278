use sea_orm_migration::{prelude::*, schema::*};

use crate::{
    m20261123_000002_create_jobs::Jobs, m20261123_000003_job_leases::Leases,
    m20261123_000004_lifecycle::Deliveries,
};

/// Fair queues: each queued job and pending delivery gets a `turn`, and claims take the
/// lowest turns first (see `store::fair`). The claim indexes cover the claim queries, so
/// both stay index-only; the partner indexes find a partner's last turn.
#[derive(DeriveMigrationName)]
pub struct Migration;

const JOBS_CLAIM: &str = "idx_jobs_claim";
const JOBS_PARTNER_TURN: &str = "idx_jobs_partner_turn";
const DELIVERIES_CLAIM: &str = "idx_deliveries_claim";
const DELIVERIES_PARTNER_TURN: &str = "idx_deliveries_partner_turn";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [Jobs::Table.into_iden(), Deliveries::Table.into_iden()] {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(big_integer(Fair::Turn).default(0))
                        .to_owned(),
                )
                .await?;
        }
        for index in [
            Index::create()
                .name(JOBS_CLAIM)
                .table(Jobs::Table)
                .col(Jobs::Status)
                .col(Fair::Turn)
                .col(Leases::RunAt)
                .col(Jobs::Id)
                .to_owned(),
            Index::create()
                .name(JOBS_PARTNER_TURN)
                .table(Jobs::Table)
                .col(Jobs::PartnerId)
                .col(Jobs::Status)
                .col(Fair::Turn)
                .to_owned(),
            Index::create()
                .name(DELIVERIES_CLAIM)
                .table(Deliveries::Table)
                .col(Deliveries::Status)
                .col(Fair::Turn)
                .col(Deliveries::NextAttemptAt)
                .col(Deliveries::Id)
                .col(Deliveries::Url)
                .to_owned(),
            Index::create()
                .name(DELIVERIES_PARTNER_TURN)
                .table(Deliveries::Table)
                .col(Deliveries::PartnerId)
                .col(Deliveries::Status)
                .col(Fair::Turn)
                .to_owned(),
        ] {
            manager.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table) in [
            (JOBS_CLAIM, Jobs::Table.into_iden()),
            (JOBS_PARTNER_TURN, Jobs::Table.into_iden()),
            (DELIVERIES_CLAIM, Deliveries::Table.into_iden()),
            (DELIVERIES_PARTNER_TURN, Deliveries::Table.into_iden()),
        ] {
            manager
                .drop_index(Index::drop().name(name).table(table).to_owned())
                .await?;
        }
        for table in [Jobs::Table.into_iden(), Deliveries::Table.into_iden()] {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .drop_column(Fair::Turn)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Fair {
    Turn,
}
