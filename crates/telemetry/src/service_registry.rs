//! The service registry's families (`fincore registry serve`, `fincore_registry_*`): streams,
//! keys and publishers held, pushes sent and their bytes before and after compression, pushes
//! sent again, subscriptions found behind by reconciliation, payloads compressed; the xDS
//! endpoint's responses, refusals by its clients, and records it could not route; config
//! values pushed to watchers.
//!
//! Owns these families and how a sample of the registry's own counters moves them (counters
//! only ever move forward to the sampled total). Must not know the registry's types: a sample
//! is plain numbers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The registry's figures at one moment: gauges as they are, counters as totals since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistrySample {
    pub streams: u64,
    pub keys: u64,
    pub publishers: u64,
    pub pushes: u64,
    pub push_plain_bytes: u64,
    pub push_sent_bytes: u64,
    pub push_retries: u64,
    pub reconciled: u64,
    pub compressions: u64,
    pub xds_responses: u64,
    pub xds_nacks: u64,
    pub xds_unroutable: u64,
    pub values_pushed: u64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FormLabels {
    /// `plain` (what the payloads would have taken) or `sent`.
    form: &'static str,
}

#[derive(Debug, Default)]
pub(crate) struct RegistryFamilies {
    streams: Gauge,
    keys: Gauge,
    publishers: Gauge,
    pushes: Counter,
    push_bytes: Family<FormLabels, Counter>,
    push_retries: Counter,
    reconciled: Counter,
    compressions: Counter,
    xds_responses: Counter,
    xds_nacks: Counter,
    xds_unroutable: Counter,
    values_pushed: Counter,
}

/// Moves `counter` forward to `total` (never back).
fn advance(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

impl RegistryFamilies {
    pub(crate) fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("registry");
        registry.register("streams", "Client streams open", self.streams.clone());
        registry.register(
            "keys",
            "Data keys held (a key stays, empty, after its last publisher)",
            self.keys.clone(),
        );
        registry.register("publishers", "Records published", self.publishers.clone());
        registry.register("pushes", "Pushes sent to subscribers", self.pushes.clone());
        registry.register(
            "push_bytes",
            "Payload bytes of the pushes sent: as sent, and as they would be uncompressed",
            self.push_bytes.clone(),
        );
        registry.register(
            "push_retries",
            "Pushes sent again for want of an acknowledgement",
            self.push_retries.clone(),
        );
        registry.register(
            "reconciled",
            "Subscriptions a reconciliation found behind their key and pushed again",
            self.reconciled.clone(),
        );
        registry.register(
            "compressions",
            "Payloads compressed (each key, version and zone once)",
            self.compressions.clone(),
        );
        registry.register(
            "xds_responses",
            "xDS discovery responses sent",
            self.xds_responses.clone(),
        );
        registry.register(
            "xds_nacks",
            "xDS discovery responses refused by their clients (NACK)",
            self.xds_nacks.clone(),
        );
        registry.register(
            "xds_unroutable",
            "Records left out of xDS assignments: their address is no IP socket address",
            self.xds_unroutable.clone(),
        );
        registry.register(
            "values_pushed",
            "Config values pushed to watchers (relayed from the config center)",
            self.values_pushed.clone(),
        );
    }

    pub(crate) fn sample(&self, sample: &RegistrySample) {
        self.streams.set(crate::gauge(sample.streams));
        self.keys.set(crate::gauge(sample.keys));
        self.publishers.set(crate::gauge(sample.publishers));
        advance(&self.pushes, sample.pushes);
        // One series at a time: a family's guard must be gone before the next lookup (a new
        // series takes the family's write lock).
        for (form, total) in [
            ("plain", sample.push_plain_bytes),
            ("sent", sample.push_sent_bytes),
        ] {
            advance(&self.push_bytes.get_or_create(&FormLabels { form }), total);
        }
        advance(&self.push_retries, sample.push_retries);
        advance(&self.reconciled, sample.reconciled);
        advance(&self.compressions, sample.compressions);
        advance(&self.xds_responses, sample.xds_responses);
        advance(&self.xds_nacks, sample.xds_nacks);
        advance(&self.xds_unroutable, sample.xds_unroutable);
        advance(&self.values_pushed, sample.values_pushed);
    }
}
