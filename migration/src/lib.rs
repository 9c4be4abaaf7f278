//! Schema migrations. They use sea-query's schema builder only, never the `entity` crate,
//! so each migration stays what it was when written. On PostgreSQL a release's migrations run
//! in one transaction under an advisory lock (`Db::migrate`), so each must be transactional:
//! no `CREATE INDEX CONCURRENTLY`, no `use_transaction() = Some(false)`.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_create_partners;
mod m20261123_000002_create_jobs;
mod m20261123_000003_job_leases;
mod m20261123_000004_lifecycle;
mod m20261123_000005_job_diets;
mod m20261123_000006_overview_indexes;
mod m20261130_000007_partner_contract;
mod m20261130_000008_partner_limits;
mod m20261130_000009_reconcile_leases;
mod m20261130_000010_fair_queues;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_partners::Migration),
            Box::new(m20261123_000002_create_jobs::Migration),
            Box::new(m20261123_000003_job_leases::Migration),
            Box::new(m20261123_000004_lifecycle::Migration),
            Box::new(m20261123_000005_job_diets::Migration),
            Box::new(m20261123_000006_overview_indexes::Migration),
            Box::new(m20261130_000007_partner_contract::Migration),
            Box::new(m20261130_000008_partner_limits::Migration),
            Box::new(m20261130_000009_reconcile_leases::Migration),
            Box::new(m20261130_000010_fair_queues::Migration),
        ]
    }
}
