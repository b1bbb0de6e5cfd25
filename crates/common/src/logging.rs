//! Process logs of dfdaemon and the scheduler: JSON lines to `<logDir>/core.log` (the shape
//! Dragonfly users grep:
//! `{"level":"info","ts":"...","msg":"peer task done, cost: 12ms","task":"...","peer":"..."}`)
//! and human-readable lines on stderr.

use std::fmt;
use std::path::Path;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// One JSON object per event: level, ts, caller, msg, then the event's fields.
struct DragonflyJson;

struct Fields(serde_json::Map<String, serde_json::Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, serde_json::Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, serde_json::Value::String(value.to_string()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, value.into());
    }
}

impl Fields {
    fn insert(&mut self, field: &Field, value: serde_json::Value) {
        let key = if field.name() == "message" {
            "msg"
        } else {
            field.name()
        };
        self.0.insert(key.to_string(), value);
    }
}

impl<S, N> FormatEvent<S, N> for DragonflyJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut map = serde_json::Map::new();
        map.insert(
            "level".into(),
            meta.level().as_str().to_ascii_lowercase().into(),
        );
        map.insert(
            "ts".into(),
            humantime::format_rfc3339_millis(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
        map.insert(
            "caller".into(),
            format!(
                "{}:{}",
                meta.file().unwrap_or("?"),
                meta.line().unwrap_or(0)
            )
            .into(),
        );
        let mut fields = Fields(serde_json::Map::new());
        event.record(&mut fields);
        map.extend(fields.0);
        let line = serde_json::to_string(&map).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// Log to `<log_dir>/core.log` (JSON) and stderr; keep the guard alive while the process runs.
/// `RUST_LOG` overrides the level (`verbose` means debug).
pub fn init(
    log_dir: &Path,
    verbose: bool,
) -> std::io::Result<tracing_appender::non_blocking::WorkerGuard> {
    std::fs::create_dir_all(log_dir)?;
    let file = tracing_appender::rolling::never(log_dir, "core.log");
    let (writer, guard) = tracing_appender::non_blocking(file);
    let level = if verbose { "debug" } else { "info" };
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = tracing_subscriber::fmt::layer()
        .event_format(DragonflyJson)
        .with_writer(writer)
        .with_filter(filter());
    // Colours only on a terminal: under systemd (the journal) or `2>file` they are noise.
    let human = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_filter(filter());
    let _ = tracing_subscriber::registry()
        .with(json)
        .with(human)
        .try_init();
    Ok(guard)
}
