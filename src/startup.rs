//! The composition root: builds every part from the configuration, binds the listener,
//! and runs until told to stop.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use poem::{
    listener::{Acceptor, Listener, TcpListener},
    Server,
};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{self, auth::KeyCache, AppState},
    config::Config,
    intake::{Intake, IntakeLimits},
    objects,
    outbound::OutboundPolicy,
    store::{partners, Db},
};

pub struct Application {
    acceptor: poem::listener::TcpAcceptor,
    addr: SocketAddr,
    state: Arc<AppState>,
    max_body_bytes: u64,
}

impl Application {
    /// Connects the database (migrating it if configured) and the object store, and binds
    /// the listener. Port 0 picks a free port: see [`Application::addr`].
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let db = Db::connect(&config.database_url(), config.database_max_connections).await?;
        if config.migrate_on_start {
            db.migrate().await?;
        } else {
            db.check_migrated().await?;
        }
        let objects = objects::open(config).await?;
        let intake = Intake::new(
            db.clone(),
            objects.clone(),
            OutboundPolicy::new(config.outbound_allow_list()?),
            IntakeLimits {
                max_image_pixels: config.max_image_pixels,
                max_metadata_bytes: config.max_metadata_bytes,
            },
        );
        let acceptor = TcpListener::bind(config.listen_addr()?)
            .into_acceptor()
            .await?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .ok_or_else(|| anyhow::anyhow!("listener has no socket address"))?;
        tracing::info!(%addr, database = %redact(&config.database_url()), objects = %objects.describe(), "platescore ready");
        Ok(Self {
            acceptor,
            addr,
            state: Arc::new(AppState {
                db,
                objects,
                intake,
                key_cache: KeyCache::new(Duration::from_secs(config.auth_cache_seconds)),
            }),
            max_body_bytes: config.max_upload_bytes,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn db(&self) -> &Db {
        &self.state.db
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests (up to 10 s).
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let app = api::app(self.state.clone(), self.max_body_bytes);
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(
                app,
                shutdown.cancelled_owned(),
                Some(Duration::from_secs(10)),
            )
            .await?;
        Ok(())
    }
}

/// On a fresh install, create a first partner and show its key once.
pub async fn ensure_first_partner(db: &Db, addr: SocketAddr) -> anyhow::Result<()> {
    if partners::count(db).await? > 0 {
        return Ok(());
    }
    let (partner, key) = partners::create(db, "default").await?;
    let key = key.expose();
    eprintln!(
        "\nCreated a first partner `{}` ({}). Its API key is shown only now:\n\n    {key}\n\n\
         Try it:\n\n    curl -s -H 'Authorization: Bearer {key}' -F image=@meal.jpg http://{addr}/enqueue\n",
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

/// Cancels the token on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutting down");
        token.cancel();
    });
}
