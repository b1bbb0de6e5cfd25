//! What the daemon's metrics server (`metrics.tcpListen`) answers: the registry with the disk
//! read at scrape time, and `/healthy`.

use crate::metrics::{ConstValue, Metrics, encode_const};
use crate::storage::Storage;
use dragonfly_common::metrics_http::Endpoints;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the daemon is serving: set once every server runs, cleared when it starts to drain.
#[derive(Debug, Default, Clone)]
pub(super) struct Up(Arc<AtomicBool>);

impl Up {
    pub(super) fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The disk at scrape time: what the stored tasks take, and what the filesystem has left.
struct DiskCollector(Storage);

impl std::fmt::Debug for DiskCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DiskCollector").finish()
    }
}

impl Collector for DiskCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A storage that cannot be read has no value to show; /healthy tells that story.
        if let Ok(used) = self.0.usage_bytes() {
            encode_const(
                &mut encoder,
                "disk_used_bytes",
                "Bytes the stored tasks take in the data directory",
                ConstValue::Gauge(i64::try_from(used).unwrap_or(i64::MAX)),
            )?;
        }
        if let Ok(d) = self.0.disk_usage() {
            encode_const(
                &mut encoder,
                "disk_available_bytes",
                "Bytes left on the filesystem of the data directory",
                ConstValue::Gauge(i64::try_from(d.available_bytes).unwrap_or(i64::MAX)),
            )?;
        }
        Ok(())
    }
}

/// Register the collectors that read the daemon's state at scrape time.
pub(super) fn collect(
    metrics: &Metrics,
    storage: &Storage,
    upload: Arc<crate::stats::UploadStats>,
) {
    metrics.register_upload_stats(upload);
    metrics.register_collector(DiskCollector(storage.clone()));
}

/// `/metrics` renders `metrics`; `/healthy` is 200 while every server runs (`up`) and the data
/// directory is there.
pub(super) fn endpoints(metrics: Arc<Metrics>, storage: &Storage, up: Up) -> Endpoints {
    let dir = storage.dir().to_path_buf();
    Endpoints {
        render: Arc::new(move || metrics.render()),
        healthy: Arc::new(move || {
            if !up.get() {
                return Err("the daemon is starting or shutting down".into());
            }
            std::fs::metadata(&dir)
                .map(|_| ())
                .map_err(|e| format!("data directory {}: {e}", dir.display()))
        }),
    }
}
