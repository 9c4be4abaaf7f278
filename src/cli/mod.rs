//! The command line: `serve` (the default), `migrate`, `healthcheck`, `partners`, `score`,
//! `eval`, `reconcile`, `bench`, `openapi`.
//! Results go to stdout, so scripts can capture them; messages for people go to stderr.

mod bench;
mod bench_http;
mod bench_lifecycle;
mod eval;
mod healthcheck;
mod score;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    api,
    config::Config,
    objects,
    scheduling::{Reconciler, SlotOutcome},
    startup::{self, Application, Role},
    store::{
        partners::{self, LimitChanges, LimitOverride},
        Db,
    },
    telemetry,
};

#[derive(Debug, Parser)]
#[command(
    name = "platescore",
    version,
    about = "Scores food photos for nutrition apps"
)]
pub struct Cli {
    /// A TOML configuration file; environment variables override it.
    #[arg(long, global = true, env = "PLATESCORE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API and run the workers (the default).
    Serve {
        /// `api`, `worker` or `all`.
        #[arg(long, value_enum, env = "PLATESCORE_ROLE", default_value = "all")]
        role: Role,
    },
    /// Run the reconciliation (stuck jobs, undelivered webhooks, failing endpoints,
    /// retention) now, print what it did as JSON, and exit.
    Reconcile {
        /// Required: without a schedule, `reconcile` only runs on demand.
        #[arg(long, required = true)]
        now: bool,
    },
    /// Apply pending database migrations, then exit. On PostgreSQL, concurrent runs take
    /// turns: the later ones find nothing to do.
    Migrate,
    /// Exit 0 when this node answers `GET /health/ready` with 200 (a container health check).
    Healthcheck {
        /// The URL to probe; default: `/health/ready` on loopback at the `listen` port.
        #[arg(long)]
        url: Option<url::Url>,
    },
    /// Manage partners and their API keys.
    #[command(subcommand)]
    Partners(PartnersCommand),
    /// Score photos (files or folders): one JSON line per image on stdout.
    Score {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The model (a folder name under `models_dir`); the default model when absent.
        #[arg(long)]
        model: Option<String>,
        /// Diet tags that shape the tips (repeatable): low_sodium, low_sugar, vegetarian,
        /// vegan, halal, pregnancy, low_fiber, iodine_restricted.
        #[arg(long = "diet")]
        diets: Vec<crate::inference::DietTag>,
        /// Language of the tips.
        #[arg(long, default_value = crate::inference::tips::DEFAULT_LANG)]
        lang: String,
    },
    /// Evaluate a model on labelled photos in `DIR/food/<label>/…` and `DIR/nonfood/<kind>/…`:
    /// food/not-food balanced accuracy, mean score per label, the healthy − indulgent gap,
    /// top-1 confusion.
    Eval {
        dir: PathBuf,
        /// The model (a folder name under `models_dir`); the default model when absent.
        #[arg(long)]
        model: Option<String>,
        /// Print the report as JSON, per-photo rows included.
        #[arg(long)]
        json: bool,
        /// A TOML with `healthy = [...]` and `indulgent = [...]` labels (a trailing `*`
        /// matches a prefix), for the gap between their mean scores.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Write one CSV row per photo here.
        #[arg(long)]
        csv: Option<PathBuf>,
    },
    /// Measure this machine: runtime throughput, preprocessing, batcher overhead.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print the OpenAPI document.
    Openapi {
        /// Write it to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Images per second of the model runtime alone, per batch size.
    Runtime {
        #[arg(long, value_delimiter = ',', default_value = "1,4,8,16,32")]
        batches: Vec<usize>,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Time to decode and resize one image file.
    Preprocess {
        file: PathBuf,
        #[arg(long, default_value_t = 30)]
        iterations: usize,
    },
    /// Throughput through the dynamic batcher against the runtime alone, at saturation.
    Batcher {
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// End to end (enqueue → webhook at a loopback receiver) against preprocessing plus
    /// inference alone; then latency at half of the saturated throughput.
    Pipeline {
        /// JPEG files or folders of them.
        #[arg(long, default_value = "tests/fixtures")]
        images: Vec<PathBuf>,
        #[arg(long, default_value_t = 400)]
        jobs: usize,
        /// Send the jobs over HTTP to a separate `platescore serve` (this executable, its
        /// defaults, a fresh data folder), closed loop, instead of the in-process node.
        #[arg(long)]
        http: bool,
        /// Clients sending at once, with `--http`.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Webhook delivery alone: drain this many outbox rows to a loopback receiver.
    Delivery {
        #[arg(long, default_value_t = 20_000)]
        deliveries: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum PartnersCommand {
    /// Create a partner and print its new API key (only the key, on stdout).
    Create {
        name: String,
        /// The key may also read the operator endpoints (`/admin/…`).
        #[arg(long)]
        admin: bool,
    },
    /// List partners.
    List,
    /// Revoke a partner's API key.
    Revoke { id: Uuid },
    /// Set a partner's own enqueue limits (each: a number, `unlimited`, or `default` for the
    /// configured one), print them, and exit. API nodes apply them within
    /// `auth_cache_seconds`.
    #[command(group(
        clap::ArgGroup::new("limits")
            .required(true)
            .multiple(true)
            .args(["per_second", "burst", "max_queued"])
    ))]
    SetLimit {
        id: Uuid,
        /// Enqueue requests a second (per API node).
        #[arg(long, value_name = "N|unlimited|default")]
        per_second: Option<LimitOverride>,
        /// Enqueue requests at once above the rate.
        #[arg(long, value_name = "N|default")]
        burst: Option<LimitOverride>,
        /// Jobs queued or in progress at once.
        #[arg(long, value_name = "N|unlimited|default")]
        max_queued: Option<LimitOverride>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Openapi { output }) = &cli.command {
        let spec = api::spec_json();
        match output {
            Some(path) => std::fs::write(path, spec)?,
            None => print!("{spec}"),
        }
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref())?;
    startup::settings::check(&config)?;
    telemetry::init(config.log_format);
    let command = cli.command.unwrap_or(Command::Serve {
        role: std::env::var("PLATESCORE_ROLE")
            .ok()
            .and_then(|r| <Role as clap::ValueEnum>::from_str(&r, true).ok())
            .unwrap_or_default(),
    });
    match command {
        Command::Serve { role } => serve(config, role).await,
        Command::Reconcile { .. } => reconcile_now(config).await,
        Command::Migrate => {
            let db = Db::connect(&config.database_url(), 1).await?;
            let applied = db.migrate().await?;
            eprintln!("{applied} migration(s) applied; the schema is up to date");
            Ok(())
        }
        Command::Healthcheck { url } => healthcheck::run(&config, url).await,
        Command::Partners(command) => manage_partners(&config, command).await,
        Command::Bench(command) => match command {
            BenchCommand::Runtime { batches, seconds } => {
                bench::runtime_throughput(&config, &batches, seconds)
            }
            BenchCommand::Preprocess { file, iterations } => {
                bench::preprocess_time(&config, &file, iterations)
            }
            BenchCommand::Batcher { seconds } => bench::batcher_overhead(&config, seconds).await,
            BenchCommand::Pipeline {
                images,
                jobs,
                http: false,
                ..
            } => bench_lifecycle::pipeline(&config, &images, jobs).await,
            BenchCommand::Pipeline {
                images,
                jobs,
                http: true,
                concurrency,
            } => bench_http::pipeline(&config, &images, jobs, concurrency).await,
            BenchCommand::Delivery { deliveries } => {
                bench_lifecycle::delivery(&config, deliveries).await
            }
        },
        Command::Score {
            paths,
            model,
            diets,
            lang,
        } => {
            let all_ok = score::run(&config, model.as_deref(), &paths, &diets, &lang).await?;
            anyhow::ensure!(all_ok, "some images could not be scored");
            Ok(())
        }
        Command::Eval {
            dir,
            model,
            json,
            labels,
            csv,
        } => {
            eval::run(
                &config,
                eval::EvalArgs {
                    dir,
                    model,
                    json,
                    labels,
                    csv,
                },
            )
            .await
        }
        Command::Openapi { .. } => unreachable!("handled above"),
    }
}

async fn serve(config: Config, role: Role) -> anyhow::Result<()> {
    // Handlers first, so that a stop that comes while the model loads drains once it has.
    let shutdown = CancellationToken::new();
    startup::shutdown_on_signal(shutdown.clone())?;
    let app = Application::build(&config, role).await?;
    if role != Role::Worker && config.creates_first_partner() {
        startup::create_first_partner(app.db(), app.addr()).await?;
    }
    app.run_until(shutdown).await
}

async fn reconcile_now(config: Config) -> anyhow::Result<()> {
    let db = Db::connect(&config.database_url(), 2).await?;
    db.check_migrated().await?;
    let reconciler = Reconciler::new(
        db,
        objects::open(&config).await?,
        api::webhook_payload_renderer(),
        startup::settings::reconcile(&config),
    );
    let now = reconciler.db().now().await;
    let stop = CancellationToken::new();
    match reconciler.run_slot(now, "manual", now, &stop).await? {
        SlotOutcome::Ran {
            counts,
            error: None,
            ..
        } => println!("{}", serde_json::to_string(&counts)?),
        SlotOutcome::Ran {
            error: Some(err), ..
        } => return Err(err.into()),
        _ => anyhow::bail!("a reconciliation already ran at this instant"),
    }
    Ok(())
}

async fn manage_partners(config: &Config, command: PartnersCommand) -> anyhow::Result<()> {
    let db = Db::connect(&config.database_url(), 2).await?;
    db.migrate().await?;
    match command {
        PartnersCommand::Create { name, admin } => {
            let name = name.trim();
            anyhow::ensure!(
                !name.is_empty() && name.len() <= 200,
                "a name is 1 to 200 characters"
            );
            let (partner, key) = partners::create(&db, name, admin).await?;
            eprintln!(
                "created partner `{}` ({}); its key is shown only now:",
                partner.name, partner.id
            );
            println!("{}", key.expose());
        }
        PartnersCommand::List => {
            println!(
                "{:<36}  {:<16}  {:<20}  {:<25}  status",
                "id", "key", "name", "created"
            );
            for p in partners::list(&db).await? {
                let mut status = match p.revoked_at {
                    Some(at) => format!("revoked {}", at.format("%Y-%m-%d")),
                    None => "active".to_string(),
                };
                if p.is_admin {
                    status.push_str(", admin");
                }
                for (name, column) in [
                    ("per_second", p.rate_limit_per_second),
                    ("burst", p.rate_limit_burst),
                    ("max_queued", p.max_queued_jobs),
                ] {
                    if column.is_some() {
                        status.push_str(&format!(", {name}={}", LimitOverride::of(column)));
                    }
                }
                println!(
                    "{:<36}  {:<16}  {:<20}  {:<25}  {status}",
                    p.id,
                    format!("{}…", p.key_prefix),
                    p.name,
                    p.created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                );
            }
        }
        PartnersCommand::Revoke { id } => {
            anyhow::ensure!(partners::revoke(&db, id).await?, "no partner {id}");
            eprintln!("revoked the key of partner {id}");
        }
        PartnersCommand::SetLimit {
            id,
            per_second,
            burst,
            max_queued,
        } => {
            anyhow::ensure!(
                burst != Some(LimitOverride::Unlimited),
                "--burst is a number or `default`"
            );
            let changes = LimitChanges {
                rate_per_second: per_second,
                burst,
                max_queued_jobs: max_queued,
            };
            let partner = partners::set_limits(&db, id, changes)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no partner {id}"))?;
            let own = |column| LimitOverride::of(column).to_string();
            println!(
                "per_second={} burst={} max_queued={}",
                own(partner.rate_limit_per_second),
                own(partner.rate_limit_burst),
                own(partner.max_queued_jobs)
            );
            eprintln!(
                "set the limits of partner `{}` ({id}); API nodes apply them within \
                 auth_cache_seconds ({} s)",
                partner.name, config.auth_cache_seconds
            );
        }
    }
    db.close().await;
    Ok(())
}
