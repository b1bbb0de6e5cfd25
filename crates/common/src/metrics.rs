//! Shared parts of the daemon's and the scheduler's Prometheus metrics: labels that take a
//! fixed set of values, with every series created up front and kept as a handle (counting is
//! one atomic add: no lock, no allocation), constant values read at scrape time, and the text
//! encoding. The HTTP side is [`crate::metrics_http`].

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// A label set: (name, value) pairs with static strings.
pub type Labels = Vec<(&'static str, &'static str)>;

/// A fixed set of label values, as the label's name and the values in index order.
pub trait LabelValues: Copy + 'static {
    /// The label's name.
    const NAME: &'static str;
    /// Every value, in the order of [`LabelValues::index`].
    const ALL: &'static [Self];
    /// The value as exported.
    fn as_str(self) -> &'static str;
    /// Its position in [`LabelValues::ALL`].
    fn index(self) -> usize;
}

#[macro_export]
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident, $label:literal, { $($(#[$vdoc:meta])* $variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }
        impl $crate::metrics::LabelValues for $name {
            const NAME: &'static str = $label;
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn as_str(self) -> &'static str {
                match self { $($name::$variant => $value),+ }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

/// A metric with one label: its family (registered) and a handle per value.
pub struct ByLabel<L: LabelValues, M> {
    handles: Vec<M>,
    _label: std::marker::PhantomData<L>,
}

impl<L: LabelValues, M: Clone> ByLabel<L, M> {
    /// Create every series of the family and keep a handle to each.
    pub fn new(family: &Family<Labels, M, impl Fn() -> M>) -> Self {
        ByLabel {
            handles: L::ALL
                .iter()
                .map(|v| family.get_or_create(&vec![(L::NAME, v.as_str())]).clone())
                .collect(),
            _label: std::marker::PhantomData,
        }
    }

    /// The series of these label values.
    pub fn get(&self, l: L) -> &M {
        &self.handles[l.index()]
    }
}

/// A metric with two labels: a handle per pair.
pub struct ByLabels<A: LabelValues, B: LabelValues, M> {
    handles: Vec<M>,
    _labels: std::marker::PhantomData<(A, B)>,
}

impl<A: LabelValues, B: LabelValues, M: Clone> ByLabels<A, B, M> {
    /// Create every series of the family and keep a handle to each.
    pub fn new(family: &Family<Labels, M, impl Fn() -> M>) -> Self {
        let mut handles = Vec::with_capacity(A::ALL.len() * B::ALL.len());
        for a in A::ALL {
            for b in B::ALL {
                let labels = vec![(A::NAME, a.as_str()), (B::NAME, b.as_str())];
                handles.push(family.get_or_create(&labels).clone());
            }
        }
        ByLabels {
            handles,
            _labels: std::marker::PhantomData,
        }
    }

    /// The series of these label values.
    pub fn get(&self, a: A, b: B) -> &M {
        &self.handles[a.index() * B::ALL.len() + b.index()]
    }
}

/// Encode one constant counter or gauge under `name`.
pub fn encode_const(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: ConstValue,
) -> Result<(), std::fmt::Error> {
    match value {
        ConstValue::Counter(v) => {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
        }
        ConstValue::Gauge(v) => {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        }
    }
}

/// A value read at scrape time.
#[derive(Debug, Clone, Copy)]
pub enum ConstValue {
    /// A monotonic count.
    Counter(u64),
    /// A level.
    Gauge(i64),
}

/// The git commit the binaries were built from, when the build set `GIT_COMMIT`.
pub const GIT_COMMIT: &str = match option_env!("GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Register `metric` as `name` and hand it back (the registry keeps a clone: metrics share
/// their value between clones).
pub fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Register `build_info`: a gauge at 1 with labels `version` and `git_commit`.
pub fn register_build_info(registry: &mut Registry, help: &str, version: &'static str) {
    let build = Family::<Labels, prometheus_client::metrics::gauge::Gauge>::default();
    build
        .get_or_create(&vec![("version", version), ("git_commit", GIT_COMMIT)])
        .set(1);
    registry.register("build_info", help, build);
}

/// The registry in the OpenMetrics text format (what `/metrics` serves).
pub fn render(registry: &std::sync::Mutex<Registry>) -> String {
    let mut out = String::new();
    match registry.lock() {
        Ok(r) => {
            if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
                tracing::warn!(error = %e, "cannot encode the metrics");
            }
        }
        Err(_) => tracing::warn!("the metrics registry is poisoned"),
    }
    out
}
