//! W3C trace context across the bus: the `traceparent` header that links a publisher's
//! span to its consumers' (docs/bus.md, docs/observability.md).
//!
//! Tracing is off unless the binary turns it on ([`enable`], after installing the
//! OpenTelemetry layer and the W3C propagator). While it is off, [`span!`](crate::span)
//! makes no span and nothing here touches a header: an event costs one relaxed load more.
//! Every publish goes through [`crate::OutgoingMessage`], which calls [`inject`] once, so
//! no publisher can forget the header.

use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::HeaderMap;
use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[doc(hidden)]
pub use tracing as __tracing;

/// The W3C header carrying trace id, parent span id and the sampled flag.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header of vendor trace state, set beside `traceparent` when the span has one.
pub const TRACESTATE: &str = "tracestate";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns span creation and header propagation on for the whole process. Only the binary
/// calls it, once its OpenTelemetry layer is installed: without the layer, spans would
/// have no trace context to carry.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether traces are being recorded in this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// An `INFO` span when tracing is on, else [`tracing::Span::none`] (which costs nothing:
/// no callsite is registered, no field formatted). Same syntax as `tracing::info_span!`.
#[macro_export]
macro_rules! span {
    ($($args:tt)*) => {
        if $crate::trace::enabled() {
            $crate::trace::__tracing::info_span!($($args)*)
        } else {
            $crate::trace::__tracing::Span::none()
        }
    };
}

/// Adds the current span's context (`traceparent`, and `tracestate` when set) to NATS
/// headers. Nothing when tracing is off or no span is current.
pub fn inject(headers: &mut HeaderMap) {
    if enabled() {
        let cx = Span::current().context();
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut NatsInjector(headers)));
    }
}

/// [`inject`] for HTTP requests (reqwest's and axum's header maps are `http`'s).
pub fn inject_http(headers: &mut http::HeaderMap) {
    if enabled() {
        let cx = Span::current().context();
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
    }
}

/// Makes `span` the child of the span that published `headers` (a consumer continuing
/// the publisher's trace). A message without a valid `traceparent` leaves `span` a root.
/// Call it before the span is first entered: a started span's parent cannot change.
pub fn continue_from(span: &Span, headers: Option<&HeaderMap>) {
    if let Some(headers) = headers.filter(|_| enabled()) {
        let cx = global::get_text_map_propagator(|p| p.extract(&NatsExtractor(headers)));
        // Fails only for a disabled span (filtered out): nothing to link then.
        let _ = span.set_parent(cx);
    }
}

/// [`continue_from`] for an incoming HTTP request.
pub fn continue_from_http(span: &Span, headers: &http::HeaderMap) {
    if enabled() {
        let cx = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
        let _ = span.set_parent(cx);
    }
}

struct NatsInjector<'a>(&'a mut HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

struct NatsExtractor<'a>(&'a HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::OutgoingMessage;
    use bytes::Bytes;

    /// A subscriber with the OpenTelemetry layer, recording into memory.
    fn traced() -> (
        impl tracing::Subscriber,
        InMemorySpanExporter,
        SdkTracerProvider,
    ) {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        global::set_text_map_propagator(TraceContextPropagator::new());
        enable();
        (
            tracing_subscriber::registry().with(layer),
            exporter,
            provider,
        )
    }

    #[test]
    fn a_published_message_carries_its_span_and_a_consumer_continues_it() {
        let (subscriber, exporter, provider) = traced();
        tracing::subscriber::with_default(subscriber, || {
            let publish = crate::span!("publish");
            let message = publish.in_scope(|| {
                OutgoingMessage::envelope_bytes("s", Bytes::from_static(b"{}"), None, None)
            });
            let parent = publish.context().span().span_context().clone();
            let header = message
                .headers
                .get(TRACEPARENT)
                .expect("traceparent")
                .as_str();
            assert_eq!(
                header,
                format!("00-{}-{}-01", parent.trace_id(), parent.span_id())
            );

            let deliver = crate::span!("deliver");
            continue_from(&deliver, Some(&message.headers));
            let child = deliver.context().span().span_context().clone();
            assert_eq!(child.trace_id(), parent.trace_id());
            drop((publish, deliver));
        });
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let deliver = spans.iter().find(|s| s.name == "deliver").unwrap();
        let publish = spans.iter().find(|s| s.name == "publish").unwrap();
        assert_eq!(deliver.parent_span_id, publish.span_context.span_id());
    }

    #[test]
    fn outside_any_span_nothing_is_added() {
        let (subscriber, _exporter, _provider) = traced();
        tracing::subscriber::with_default(subscriber, || {
            let message =
                OutgoingMessage::envelope_bytes("s", Bytes::from_static(b"{}"), None, None);
            assert!(message.headers.get(TRACEPARENT).is_none());
            let mut headers = http::HeaderMap::new();
            inject_http(&mut headers);
            assert!(headers.is_empty());
        });
    }
}
