//! The event hub: lifecycle, logging and operation events, fanned out to every
//! `/1.0/events` listener.
//!
//! ```text
//!  send/relay ─ serialise once ─> logging channel  ──> listeners that take `logging`
//!                               └> activity channel ──> listeners that take the others
//! ```
//!
//! Senders never wait: a listener that falls behind by more than [`BACKLOG`] events
//! loses the oldest ones rather than slowing the daemon. Each event is serialised once,
//! however many listeners there are, and log lines wake only the listeners that take
//! them. What the hub itself has to say about listeners is logged under
//! [`QUIET_TARGET`], which never becomes an event: a warning about events must not make
//! more events. At most [`MAX_LISTENERS`] listeners are open at once.
//!
//! Log lines become `logging` events only while some listener takes that type (the
//! logging channel has a receiver), and the logging layer returns before building
//! anything when none does. Which lines are logging events at all is decided by the
//! filter the layer is given, the same `--log-level` filter as the log output, so
//! `tracing` never enables a call site for the events' sake that the log does not want.

use std::collections::BTreeMap;
use std::fmt::Write as _;
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
/// How many `/1.0/events` listeners may be open at once.
pub const MAX_LISTENERS: usize = 256;
/// The `tracing` target of what the hub says about listeners: logged, never published.
pub const QUIET_TARGET: &str = "stapes::events::listeners";

/// An event and its JSON, made once for every listener (cloning the text is cheap).
#[derive(Debug)]
pub struct Published {
    pub event: Event,
    pub json: axum::extract::ws::Utf8Bytes,
}

impl Published {
    fn new(event: Event) -> Arc<Published> {
        let json = serde_json::to_string(&event).expect("events serialize").into();
        Arc::new(Published { event, json })
    }
}

#[derive(Clone)]
pub struct EventHub {
    /// Everything but `logging`.
    activity: broadcast::Sender<Arc<Published>>,
    logging: broadcast::Sender<Arc<Published>>,
    location: std::sync::Arc<arc_swap::ArcSwap<String>>,
    listeners: Arc<tokio::sync::Semaphore>,
}

/// What one listener receives: the channels its filter needs.
pub struct Subscription {
    activity: Option<broadcast::Receiver<Arc<Published>>>,
    logging: Option<broadcast::Receiver<Arc<Published>>>,
}

impl Subscription {
    /// The next event from either channel.
    pub async fn recv(&mut self) -> Result<Arc<Published>, broadcast::error::RecvError> {
        async fn next(
            rx: &mut Option<broadcast::Receiver<Arc<Published>>>,
        ) -> Result<Arc<Published>, broadcast::error::RecvError> {
            match rx {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            e = next(&mut self.activity) => e,
            e = next(&mut self.logging) => e,
        }
    }

    /// An event already waiting, if any.
    pub fn try_recv(&mut self) -> Result<Arc<Published>, broadcast::error::TryRecvError> {
        use broadcast::error::TryRecvError;
        let mut last = Err(TryRecvError::Empty);
        for rx in [&mut self.activity, &mut self.logging].into_iter().flatten() {
            match rx.try_recv() {
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Closed) => last = Err(TryRecvError::Closed),
                other => return other,
            }
        }
        last
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
            activity: broadcast::channel(BACKLOG).0,
            logging: broadcast::channel(BACKLOG).0,
            location: Default::default(),
            listeners: Arc::new(tokio::sync::Semaphore::new(MAX_LISTENERS)),
        }
    }

    /// Sets the member name stamped on events as `location`.
    pub fn set_location(&self, name: &str) {
        if **self.location.load() != name {
            self.location.store(std::sync::Arc::new(name.to_string()));
        }
    }

    /// The channels `filter` needs.
    pub fn subscribe(&self, filter: &Filter) -> Subscription {
        Subscription {
            activity: filter.takes_activity().then(|| self.activity.subscribe()),
            logging: filter.takes("logging").then(|| self.logging.subscribe()),
        }
    }

    /// A place for one more `/1.0/events` listener, held while it is open; `None` when
    /// [`MAX_LISTENERS`] are open.
    pub fn listener_place(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.listeners.clone().try_acquire_owned().ok()
    }

    /// Whether `e` originated on this member (its location is this member's name now).
    pub fn is_own(&self, e: &Event) -> bool {
        **self.location.load() == e.location
    }

    /// Re-publishes an event that originated on another member, as it was.
    pub fn relay(&self, event: Event) {
        self.publish(event);
    }

    fn publish(&self, event: Event) {
        let tx = if event.kind == "logging" {
            &self.logging
        } else {
            &self.activity
        };
        // No listener is not an error; and nothing is serialised for nobody.
        if tx.receiver_count() > 0 {
            let _ = tx.send(Published::new(event));
        }
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
        self.publish(event);
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
        if self.hub.logging.receiver_count() == 0 || event.metadata().target() == QUIET_TARGET {
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
    /// against the member's name when each event is sent ([`EventHub::is_own`]), since a
    /// member that has just joined may be asked for its events before it knows its name.
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

    /// Whether this listener takes events of `kind`.
    pub fn takes(&self, kind: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == kind)
    }

    /// Whether it takes any kind but `logging`.
    fn takes_activity(&self) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t != "logging")
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
            let lifecycle_only = hub.subscribe(&listener("lifecycle"));
            assert_eq!(hub.logging.receiver_count(), 0);
            tracing::info!("nobody takes this");
            assert_eq!(hub.logging.len(), 0, "no event built");

            let mut all = hub.subscribe(&listener(""));
            let mut logging = hub.subscribe(&listener("logging"));
            assert_eq!(hub.logging.receiver_count(), 2);
            tracing::debug!("below the filter");
            tracing::info!(key = "v", "wanted");
            let e = logging.try_recv().expect("a logging event");
            assert_eq!(e.event.kind, "logging");
            assert_eq!(e.event.metadata["message"], "wanted");
            assert_eq!(e.event.metadata["level"], "info");
            assert_eq!(e.event.metadata["context"]["key"], "v");
            assert!(logging.try_recv().is_err(), "the debug line made no event");
            assert_eq!(
                all.try_recv().expect("the same event").event.metadata["message"],
                "wanted"
            );

            drop((all, logging, lifecycle_only));
            assert_eq!(hub.logging.receiver_count(), 0);
            tracing::info!("nobody listens again");
            assert_eq!(hub.logging.len(), 0);
        });
    }

    #[tokio::test]
    async fn listeners_get_only_the_channels_they_take() {
        let hub = EventHub::new();
        let q = |s: &[(&str, &str)]| s.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let mut lifecycle = hub.subscribe(&Filter::from_query(&q(&[("type", "lifecycle")])));
        assert!(lifecycle.logging.is_none() && lifecycle.activity.is_some());
        let logging = hub.subscribe(&Filter::from_query(&q(&[("type", "logging")])));
        assert!(logging.logging.is_some() && logging.activity.is_none());
        let all = hub.subscribe(&Filter::from_query(&q(&[])));
        assert!(all.logging.is_some() && all.activity.is_some());
        hub.send("logging", "", Value::Null);
        hub.send("lifecycle", "default", Value::Null);
        let e = lifecycle.recv().await.unwrap();
        assert_eq!(e.event.kind, "lifecycle");
        assert_eq!(e.json.as_str(), serde_json::to_string(&e.event).unwrap());
        assert!(lifecycle.try_recv().is_err());
    }

    #[test]
    fn nothing_is_built_for_nobody_and_listeners_are_capped() {
        let hub = EventHub::new();
        hub.send("lifecycle", "default", Value::Null);
        assert_eq!(hub.activity.len(), 0);
        let places: Vec<_> = (0..MAX_LISTENERS).map_while(|_| hub.listener_place()).collect();
        assert_eq!(places.len(), MAX_LISTENERS);
        assert!(hub.listener_place().is_none());
        drop(places);
        assert!(hub.listener_place().is_some());
    }

    #[tokio::test]
    async fn lifecycle_carries_requestor() {
        let hub = EventHub::new();
        hub.set_location("node1");
        let mut rx = hub.subscribe(&Filter::from_query(&Default::default()));
        let id = Identity {
            method: trust::AuthMethod::Tls,
            username: "fp".into(),
            address: "127.0.0.9".into(),
            cert_type: Some("client".into()),
        };
        hub.lifecycle("config-updated", "/1.0", Some(&id), None);
        let e = rx.recv().await.unwrap().event.clone();
        assert_eq!(e.location, "node1");
        assert_eq!(e.metadata["requestor"]["address"], "127.0.0.9");
        assert_eq!(e.metadata["requestor"]["protocol"], "tls");
    }
}
