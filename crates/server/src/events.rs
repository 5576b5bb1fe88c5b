//! The event hub: lifecycle, logging and operation events, fanned out to every
//! `/1.0/events` listener.
//!
//! Senders never wait: a listener that falls behind by more than [`BACKLOG`] events
//! loses the oldest ones (and is told so in the log) rather than slowing the daemon.
//!
//! Log lines become `logging` events only while some listener takes that type: the
//! hub counts such listeners ([`EventHub::subscribe_for`]), and the logging layer
//! returns before building anything when there are none. Which lines are logging
//! events at all is decided by the filter the layer is given, the same `--log-level`
//! filter as the log output, so `tracing` never enables a call site for the events'
//! sake that the log does not want.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use api::types::{Event, EventLifecycle, EventLifecycleRequestor, EventLogging};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;
use trust::Identity;

/// How many events a slow listener may lag behind.
pub const BACKLOG: usize = 1024;

#[derive(Clone)]
pub struct EventHub {
    tx: broadcast::Sender<Event>,
    location: std::sync::Arc<arc_swap::ArcSwap<String>>,
    /// How many open listeners take `logging` events.
    logging_listeners: Arc<AtomicUsize>,
}

/// Held by a listener for as long as it listens: while it lives and its filter takes
/// `logging` events, log lines are turned into events.
pub struct Interest {
    logging: Option<Arc<AtomicUsize>>,
}

impl Drop for Interest {
    fn drop(&mut self) {
        if let Some(count) = &self.logging {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    pub fn new() -> Self {
        EventHub {
            tx: broadcast::channel(BACKLOG).0,
            location: Default::default(),
            logging_listeners: Default::default(),
        }
    }

    /// Sets the member name stamped on events as `location`.
    pub fn set_location(&self, name: &str) {
        if **self.location.load() != name {
            self.location.store(std::sync::Arc::new(name.to_string()));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Subscribes a listener with `filter`, registering its interest in `logging`
    /// events; keep the [`Interest`] for as long as the listener listens.
    pub fn subscribe_for(&self, filter: &Filter) -> (broadcast::Receiver<Event>, Interest) {
        let logging = filter.takes("logging").then(|| {
            self.logging_listeners.fetch_add(1, Ordering::Relaxed);
            self.logging_listeners.clone()
        });
        (self.tx.subscribe(), Interest { logging })
    }

    /// Re-publishes an event that originated on another member, as it was.
    pub fn relay(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    /// Whether `e` originated on this member (its location is this member's name now).
    pub fn is_own(&self, e: &Event) -> bool {
        **self.location.load() == e.location
    }

    /// This member's name as stamped on its own events.
    pub fn location(&self) -> String {
        (**self.location.load()).clone()
    }

    pub fn send(&self, kind: &str, project: &str, metadata: Value) {
        let event = Event {
            kind: kind.to_string(),
            timestamp: OffsetDateTime::now_utc(),
            metadata,
            location: (**self.location.load()).clone(),
            project: project.to_string(),
        };
        // No listener is not an error.
        let _ = self.tx.send(event);
    }

    /// A lifecycle event, with the requestor when there is one.
    pub fn lifecycle(
        &self,
        action: &str,
        source: &str,
        requestor: Option<&Identity>,
        context: Option<BTreeMap<String, Value>>,
    ) {
        let meta = EventLifecycle {
            action: action.to_string(),
            source: source.to_string(),
            context,
            requestor: requestor.map(|id| EventLifecycleRequestor {
                username: id.username.clone(),
                protocol: id.method.as_str().to_string(),
                address: id.address.clone(),
            }),
        };
        self.send(
            "lifecycle",
            "default",
            serde_json::to_value(meta).expect("lifecycle serializes"),
        );
    }

    /// A `tracing` layer that turns log records into `logging` events. Give it the
    /// same filter as the log output (`--log-level`): it logs what it is given.
    pub fn logging_layer(&self) -> LoggingLayer {
        LoggingLayer { hub: self.clone() }
    }
}

/// See [`EventHub::logging_layer`].
pub struct LoggingLayer {
    hub: EventHub,
}

impl<S: tracing::Subscriber> Layer<S> for LoggingLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if self.hub.logging_listeners.load(Ordering::Relaxed) == 0 {
            return;
        }
        let level = *event.metadata().level();
        let mut visitor = FieldVisitor::default();
        event.record(&mut visitor);
        let meta = EventLogging {
            message: visitor.message,
            level: level.as_str().to_ascii_lowercase(),
            context: visitor.context,
        };
        self.hub.send(
            "logging",
            "",
            serde_json::to_value(meta).expect("logging serializes"),
        );
    }
}

#[derive(Default)]
struct FieldVisitor {
    message: String,
    context: BTreeMap<String, String>,
}

impl Visit for FieldVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.record_str(field, &text);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.context.insert(field.name().to_string(), value.to_string());
        }
    }
}

/// Which events one listener wants: `?type=` and project filtering as Incus does.
#[derive(Debug, Clone)]
pub struct Filter {
    pub types: Vec<String>,
    pub project: String,
    pub all_projects: bool,
    /// Only events that originated on this member (for relays between members): checked
    /// against the member's name when each event is sent, since a member that has just
    /// joined may be asked for its events before it knows its name.
    pub only_own: bool,
}

impl Filter {
    pub fn from_query(q: &std::collections::HashMap<String, String>) -> Self {
        let types = q
            .get("type")
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        Filter {
            types,
            project: q
                .get("project")
                .cloned()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "default".into()),
            all_projects: q.get("all-projects").is_some_and(|v| v == "true" || v == "1"),
            only_own: false,
        }
    }

    /// Whether this listener wants events of type `kind` at all.
    pub fn takes(&self, kind: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == kind)
    }

    pub fn accepts(&self, e: &Event) -> bool {
        if !self.takes(&e.kind) {
            return false;
        }
        self.all_projects || e.project.is_empty() || e.project == self.project
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, project: &str) -> Event {
        Event {
            kind: kind.into(),
            timestamp: OffsetDateTime::UNIX_EPOCH,
            metadata: Value::Null,
            location: String::new(),
            project: project.into(),
        }
    }

    #[test]
    fn filter_by_type_and_project() {
        let q = |s: &[(&str, &str)]| s.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let f = Filter::from_query(&q(&[("type", "lifecycle")]));
        assert!(f.accepts(&event("lifecycle", "default")));
        assert!(!f.accepts(&event("logging", "")));
        assert!(!f.accepts(&event("lifecycle", "p1")));
        let all = Filter::from_query(&q(&[("all-projects", "true")]));
        assert!(all.accepts(&event("lifecycle", "p1")));
        let p1 = Filter::from_query(&q(&[("project", "p1")]));
        assert!(p1.accepts(&event("lifecycle", "p1")) && !p1.accepts(&event("lifecycle", "default")));
    }

    fn listener(types: &str) -> Filter {
        let q = [("type".to_string(), types.to_string())].into();
        Filter::from_query(&q)
    }

    /// Log lines become events only for listeners that take `logging`, and only at
    /// the levels the layer's filter lets through.
    #[test]
    fn logging_events_follow_listeners_and_the_filter() {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::Layer as _;
        let hub = EventHub::new();
        let filter = tracing_subscriber::filter::LevelFilter::INFO;
        let subscriber = tracing_subscriber::registry().with(hub.logging_layer().with_filter(filter));
        tracing::subscriber::with_default(subscriber, || {
            let (mut lifecycle_only, interest) = hub.subscribe_for(&listener("lifecycle"));
            assert_eq!(hub.logging_listeners.load(Ordering::Relaxed), 0);
            tracing::info!("nobody takes this");
            assert!(lifecycle_only.try_recv().is_err(), "no event built");

            let (mut all, all_interest) = hub.subscribe_for(&listener(""));
            let (mut logging, logging_interest) = hub.subscribe_for(&listener("logging"));
            assert_eq!(hub.logging_listeners.load(Ordering::Relaxed), 2);
            tracing::debug!("below the filter");
            tracing::info!(key = "v", "wanted");
            let e = logging.try_recv().expect("a logging event");
            assert_eq!(e.kind, "logging");
            assert_eq!(e.metadata["message"], "wanted");
            assert_eq!(e.metadata["level"], "info");
            assert_eq!(e.metadata["context"]["key"], "v");
            assert!(logging.try_recv().is_err(), "the debug line made no event");
            assert_eq!(
                all.try_recv().expect("the same event").metadata["message"],
                "wanted"
            );

            drop((all_interest, logging_interest, interest));
            assert_eq!(hub.logging_listeners.load(Ordering::Relaxed), 0);
            tracing::info!("nobody listens again");
            assert!(logging.try_recv().is_err());
            // The broadcast reaches every receiver (filters apply when sending on the
            // websocket): only the line made while someone took `logging` is there.
            assert_eq!(lifecycle_only.try_recv().unwrap().metadata["message"], "wanted");
            assert!(lifecycle_only.try_recv().is_err());
        });
    }

    #[tokio::test]
    async fn lifecycle_carries_requestor() {
        let hub = EventHub::new();
        hub.set_location("node1");
        let mut rx = hub.subscribe();
        let id = Identity {
            method: trust::AuthMethod::Tls,
            username: "fp".into(),
            address: "127.0.0.9".into(),
            cert_type: Some("client".into()),
        };
        hub.lifecycle("config-updated", "/1.0", Some(&id), None);
        let e = rx.recv().await.unwrap();
        assert_eq!(e.location, "node1");
        assert_eq!(e.metadata["requestor"]["address"], "127.0.0.9");
        assert_eq!(e.metadata["requestor"]["protocol"], "tls");
    }
}
