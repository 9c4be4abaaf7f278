//! The composition root: builds every part from the configuration, binds the listener,
//! and runs until told to stop.

pub mod settings;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use poem::{
    listener::{Acceptor, Listener, TcpListener},
    EndpointExt,
};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{
        self, auth::KeyCache, listener::ConnectionTimeouts, AppState, RequestLimits, ScoringInfo,
    },
    budget::MemoryBudget,
    config::Config,
    delivery::DeliveryWorker,
    inference::{BatchObserver, Scorers},
    intake::{Intake, IntakeLimits},
    limits::{LimitDefaults, PartnerLimits},
    metrics, objects,
    outbound::{GuardedClient, OutboundPolicy, RedirectRule},
    scheduling::{self, Reconciler, Schedule},
    store::{partners, wakeups::Wakeups, Db},
    worker::JobWorker,
};

/// Which parts of platescore this process runs. API and worker nodes scale separately;
/// `all` (the default) runs both in one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// The HTTP API only.
    Api,
    /// Scoring, webhook delivery and the daily reconciliation; HTTP serves health probes only.
    Worker,
    #[default]
    All,
}

impl Role {
    fn serves_api(self) -> bool {
        matches!(self, Self::Api | Self::All)
    }

    fn runs_workers(self) -> bool {
        matches!(self, Self::Worker | Self::All)
    }
}

/// What a worker node runs beside the HTTP listener.
struct Background {
    scoring: ScoringInfo,
    jobs: Arc<JobWorker>,
    deliveries: Arc<DeliveryWorker>,
    reconciler: Arc<Reconciler>,
    schedule: Schedule,
}

pub struct Application {
    acceptor: poem::listener::TcpAcceptor,
    addr: SocketAddr,
    state: Arc<AppState>,
    max_body_bytes: u64,
    upload_memory: Arc<MemoryBudget>,
    body_timeout: Duration,
    timeouts: ConnectionTimeouts,
    drain_delay: Duration,
    role: Role,
    wakeups: Arc<Wakeups>,
    background: Option<Background>,
}

/// The client webhooks go out with: no redirects, the attempt timeout.
fn webhook_client(config: &Config, policy: &OutboundPolicy) -> anyhow::Result<GuardedClient> {
    Ok(GuardedClient::new(
        policy.clone(),
        RedirectRule::Refuse,
        Duration::from_millis(config.webhook_timeout_ms),
    )?)
}

impl Application {
    /// Connects the database (migrating it if configured) and the object store, loads the
    /// model on worker nodes, and binds the listener. Port 0 picks a free port: see
    /// [`Application::addr`].
    pub async fn build(config: &Config, role: Role) -> anyhow::Result<Self> {
        let db = Db::connect(&config.database_url(), config.database_max_connections).await?;
        if config.migrate_on_start {
            let applied = db.migrate().await?;
            tracing::info!(applied, "database schema up to date");
        } else {
            db.check_migrated().await?;
        }
        let objects = objects::open(config).await?;
        let policy = OutboundPolicy::new(config.outbound_allow_list()?);
        let wakeups = Wakeups::new(db.clone());
        let render = api::webhook_payload_renderer();
        let models = Arc::new(settings::catalogue(config)?);
        let intake = Intake::new(
            db.clone(),
            objects.clone(),
            policy.clone(),
            wakeups.clone(),
            IntakeLimits {
                max_image_pixels: config.max_image_pixels,
                max_metadata_bytes: config.max_metadata_bytes,
            },
            models.clone(),
        );
        let background = if role.runs_workers() {
            let batch_sizes: BatchObserver =
                Arc::new(|size| metrics::get().batch_size.observe(size as f64));
            let scorers = Arc::new(Scorers::load(
                &models,
                &settings::scorer(config),
                Some(batch_sizes),
                config.preload_models,
            )?);
            let scoring = ScoringInfo::of(scorers.clone());
            metrics::get().set_model_info(&scoring.runtime, &scoring.model_version);
            let fetcher = GuardedClient::new(
                policy.clone(),
                RedirectRule::Follow(MAX_IMAGE_REDIRECTS),
                IMAGE_FETCH_TIMEOUT,
            )?;
            let webhook_client = webhook_client(config, &policy)?;
            Some(Background {
                scoring,
                jobs: JobWorker::new(
                    db.clone(),
                    objects.clone(),
                    scorers.clone(),
                    fetcher,
                    wakeups.clone(),
                    render.clone(),
                    settings::worker(config, scorers.default_scorer()),
                ),
                deliveries: DeliveryWorker::new(
                    db.clone(),
                    webhook_client,
                    wakeups.clone(),
                    settings::delivery(config)?,
                ),
                reconciler: Reconciler::new(
                    db.clone(),
                    objects.clone(),
                    render.clone(),
                    settings::reconcile(config),
                ),
                schedule: settings::reconcile_schedule(config)?,
            })
        } else {
            None
        };
        let acceptor = TcpListener::bind(config.listen_addr()?)
            .into_acceptor()
            .await?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .ok_or_else(|| anyhow::anyhow!("listener has no socket address"))?;
        let scoring = background.as_ref().map(|b| b.scoring.clone());
        tracing::info!(
            %addr,
            ?role,
            database = %redact(&config.database_url()),
            objects = %objects.describe(),
            runtime = %scoring.as_ref().map_or("none (API only)", |s| s.runtime.as_str()),
            model = %scoring.as_ref().map_or("-", |s| s.model_version.as_str()),
            "platescore ready"
        );
        Ok(Self {
            acceptor,
            addr,
            state: Arc::new(AppState {
                db,
                objects,
                intake,
                key_cache: KeyCache::new(Duration::from_secs(config.auth_cache_seconds)),
                render,
                webhook_client: webhook_client(config, &policy)?,
                key_rotation_overlap: chrono::Duration::hours(i64::from(
                    config.key_rotation_overlap_hours,
                )),
                draining: CancellationToken::new(),
                overview_minutes: Default::default(),
                metrics_token: config.metrics_token.clone().filter(|t| !t.is_empty()),
                scoring,
                models,
                limits: PartnerLimits::new(LimitDefaults {
                    rate_per_second: config.partner_rate_limit_per_second,
                    burst: config.partner_rate_limit_burst,
                    max_queued_jobs: config.partner_max_queued_jobs,
                }),
            }),
            max_body_bytes: config.max_upload_bytes,
            upload_memory: Arc::new(MemoryBudget::new(config.upload_memory_budget_bytes)),
            body_timeout: Duration::from_secs(config.http_body_timeout_seconds),
            timeouts: ConnectionTimeouts {
                header: Duration::from_secs(config.http_header_timeout_seconds),
                idle: Duration::from_secs(config.http_idle_timeout_seconds),
            },
            drain_delay: Duration::from_millis(config.shutdown_drain_ms),
            role,
            wakeups,
            background,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn db(&self) -> &Db {
        &self.state.db
    }

    /// Serves until `shutdown` is cancelled. Then workers stop claiming, readiness turns
    /// false for `shutdown_drain_ms` while requests are still served, in-flight jobs finish
    /// or are released within the grace period, webhook attempts in flight end, a
    /// reconciliation in progress stops and releases its slot for another node to take
    /// over, and the listener drains its requests (up to 10 s).
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(background) = self.background {
            self.wakeups.spawn_listener(shutdown.clone());
            tasks.spawn(background.jobs.run(shutdown.clone()));
            tasks.spawn(background.deliveries.run(shutdown.clone()));
            let reconciliation =
                scheduling::start(background.reconciler, background.schedule, shutdown.clone())
                    .await?;
            tasks.spawn(reconciliation.stopped());
        }
        let app = if self.role.serves_api() {
            api::app(
                self.state.clone(),
                RequestLimits {
                    max_body_bytes: self.max_body_bytes,
                    upload_memory: self.upload_memory.clone(),
                    body_timeout: self.body_timeout,
                },
            )
            .map_to_response()
            .boxed()
        } else {
            api::probes_app(self.state.clone())
                .map_to_response()
                .boxed()
        };
        let stop_listening = CancellationToken::new();
        let mut server = tokio::spawn(api::listener::serve(
            self.acceptor,
            app,
            self.timeouts,
            stop_listening.clone(),
            Duration::from_secs(10),
        ));
        tokio::select! {
            _ = shutdown.cancelled() => {}
            // The listener failed on its own: stop everything else too.
            served = &mut server => {
                shutdown.cancel();
                while tasks.join_next().await.is_some() {}
                served??;
                return Ok(());
            }
        }
        // Readiness turns false while the node still serves, so load balancers stop sending
        // it requests before it stops listening; workers have stopped claiming already.
        self.state.draining.cancel();
        tokio::time::sleep(self.drain_delay).await;
        while tasks.join_next().await.is_some() {}
        stop_listening.cancel();
        server.await??;
        Ok(())
    }
}

/// Redirects an image URL may take, each re-checked by the outbound guard.
const MAX_IMAGE_REDIRECTS: usize = 3;
const IMAGE_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// On an empty database, create a first admin partner and show its key once, on stderr.
pub async fn create_first_partner(db: &Db, addr: SocketAddr) -> anyhow::Result<()> {
    let Some((partner, key)) = partners::create_first(db, "default").await? else {
        return Ok(());
    };
    let key = key.expose();
    eprintln!(
        "\nCreated a first partner `{}` ({}). Its API key is shown only now:\n\n    {key}\n\n\
         Try it:\n\n    curl -s -H 'Authorization: Bearer {key}' -F image=@meal.jpg http://{addr}/enqueue\n\n\
         It is an admin key: it opens the operators' dashboard at http://{addr}/dashboard\n",
        partner.name, partner.id
    );
    Ok(())
}

/// A database URL without its password, for logs.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// Cancels the token on SIGTERM or SIGINT. The handlers are in place when this returns:
/// call it before anything slow, because a container's PID 1 loses the signals it has no
/// handler for, and its stop would wait for SIGKILL.
pub fn shutdown_on_signal(token: CancellationToken) -> std::io::Result<()> {
    #[cfg(unix)]
    let stopped = {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
    };
    #[cfg(not(unix))]
    let stopped = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::spawn(async move {
        stopped.await;
        tracing::info!("shutting down");
        token.cancel();
    });
    Ok(())
}
