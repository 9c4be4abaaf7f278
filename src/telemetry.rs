//! Logging setup: human-readable text by default, JSON lines on request. `RUST_LOG` filters;
//! by default `info`, with ONNX Runtime's own chatter (`ort`) and PostgreSQL's notices
//! (`sqlx`) at `warn`.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,ort=warn,sqlx=warn"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
