//! Traces: the `[telemetry]` section and the OpenTelemetry pipeline behind `tracing`
//! (tracing-opentelemetry → batch processor → OTLP/HTTP with protobuf bodies).
//!
//! Off unless the section or the standard `OTEL_*` variables turn it on. Off means no
//! OpenTelemetry layer, no exporter thread, and no span made by Relaycord's own code
//! (see `relaycord_bus::trace`): logging is set up exactly as without this module. The
//! standard variables win over the file, as operators and the OpenTelemetry Operator
//! expect; docs/observability.md has the table.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use relaycord_bus::ConfigError;
use serde::Deserialize;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `[telemetry]`: OpenTelemetry traces, exported over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// Export traces. Also on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none` turn it off whatever this says.
    pub traces: bool,
    /// OTLP/HTTP base URL of the collector; spans go to `<endpoint>/v1/traces`. The
    /// `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` variables win.
    pub endpoint: String,
    /// Fraction of new traces recorded, 0.0 to 1.0; a trace begun upstream keeps its
    /// publisher's decision. `OTEL_TRACES_SAMPLER` (with `_ARG`) wins.
    pub sample_ratio: f64,
    /// The `service.name` of the spans; empty: `relaycord-<role>` (`relaycord-ingest`,
    /// `relaycord-sink`, `relaycord-interactions`). `OTEL_SERVICE_NAME` wins.
    pub service_name: String,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            traces: false,
            endpoint: "http://localhost:4318".to_owned(),
            sample_ratio: 1.0,
            service_name: String::new(),
        }
    }
}

impl TelemetrySection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::new(
                "telemetry.sample_ratio",
                "must be between 0.0 and 1.0 (0.01 records one trace in a hundred)",
            ));
        }
        let scheme = self.endpoint.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("http" | "https")) {
            return Err(ConfigError::new(
                "telemetry.endpoint",
                "must be an http:// or https:// URL, e.g. \"http://otel-collector:4318\"",
            ));
        }
        Ok(())
    }
}

/// What the section and the environment decide, when traces are on.
#[derive(Debug, PartialEq)]
struct Plan {
    /// Where spans are posted (for the log line).
    traces_url: String,
    /// Set on the exporter; `None` when a variable names it (the exporter reads those).
    endpoint: Option<String>,
    /// `None` when `OTEL_TRACES_SAMPLER` chooses (the SDK reads it).
    sample_ratio: Option<f64>,
    /// `None` when `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names the service.
    service_name: Option<String>,
}

fn plan(
    section: &TelemetrySection,
    role: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Plan>, ConfigError> {
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match var("OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(ConfigError::new(
                "OTEL_TRACES_EXPORTER",
                format!("{other:?} is not supported; use otlp (or none to turn traces off)"),
            ));
        }
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = var(name).filter(|p| p != "http/protobuf") {
            return Err(ConfigError::new(
                name,
                format!(
                    "{protocol:?} is not supported; use http/protobuf (port 4318 on a collector)"
                ),
            ));
        }
    }
    let traces_endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let otlp_endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT");
    if !section.traces && traces_endpoint.is_none() && otlp_endpoint.is_none() {
        return Ok(None);
    }
    let signal_url = |base: &str| format!("{}/v1/traces", base.trim_end_matches('/'));
    let (traces_url, endpoint) = match (traces_endpoint, otlp_endpoint) {
        (Some(url), _) => (url, None),
        (None, Some(base)) => (signal_url(&base), None),
        (None, None) => {
            let url = signal_url(&section.endpoint);
            (url.clone(), Some(url))
        }
    };
    let named_in_attributes = var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
        a.split(',')
            .any(|kv| kv.trim().starts_with("service.name="))
    });
    let service_name = if var("OTEL_SERVICE_NAME").is_some() || named_in_attributes {
        None
    } else if section.service_name.is_empty() {
        Some(format!("relaycord-{role}"))
    } else {
        Some(section.service_name.clone())
    };
    Ok(Some(Plan {
        traces_url,
        endpoint,
        sample_ratio: var("OTEL_TRACES_SAMPLER")
            .is_none()
            .then_some(section.sample_ratio),
        service_name,
    }))
}

/// How long a stopping process may spend sending its last spans: bounded, so that an
/// unreachable collector never eats the pod's termination grace period.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(3);

/// Keeps the exporter until the process ends, then sends the spans still batched.
#[must_use = "dropping it stops the exporter"]
pub struct Traces(Option<SdkTracerProvider>);

impl Drop for Traces {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(error) = provider.shutdown_with_timeout(FLUSH_AT_EXIT)
        {
            eprintln!("traces: the last spans may not have been exported: {error}");
        }
    }
}

/// Sets up logging (`RUST_LOG` wins over `default_filter`) and, when the section or the
/// environment asks for them, traces for `role`.
pub fn init(
    default_filter: &str,
    section: &TelemetrySection,
    role: &str,
) -> anyhow::Result<Traces> {
    let env = |name: &str| std::env::var(name).ok();
    let Some(plan) = plan(section, role, &env)? else {
        crate::telemetry::init_logging(default_filter);
        return Ok(Traces(None));
    };
    // The exporter's client may speak https, and rustls needs its provider chosen.
    relaycord_bus::install_crypto_provider();
    let mut exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary);
    if let Some(endpoint) = &plan.endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build()?;
    let mut resource = Resource::builder();
    if let Some(name) = &plan.service_name {
        resource = resource.with_service_name(name.clone());
    }
    let mut provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build());
    if let Some(ratio) = plan.sample_ratio {
        provider = provider.with_sampler(Sampler::ParentBased(Box::new(
            Sampler::TraceIdRatioBased(ratio),
        )));
    }
    let provider = provider.build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    // Each layer has its own filter: RUST_LOG=warn quiets the log, not the spans.
    let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let spans = filter_fn(|meta| {
        meta.target().starts_with("relaycord") && *meta.level() <= tracing::Level::INFO
    });
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("relaycord"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false);
    let installed = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(logs),
        )
        .with(otel.with_filter(spans))
        .try_init();
    if installed.is_ok() {
        relaycord_bus::trace::enable();
        tracing::info!(
            endpoint = %relaycord_bus::redact::url_origin(&plan.traces_url),
            "exporting traces over OTLP/HTTP"
        );
    }
    Ok(Traces(Some(provider)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn plan_with(section: &TelemetrySection, vars: &[(&str, &str)]) -> Option<Plan> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        plan(section, "sink", &|name| vars.get(name).cloned()).unwrap()
    }

    #[test]
    fn off_unless_the_file_or_an_endpoint_variable_asks() {
        let section = TelemetrySection::default();
        assert_eq!(plan_with(&section, &[]), None);
        assert_eq!(plan_with(&section, &[("OTEL_SERVICE_NAME", "x")]), None);
        let on = plan_with(
            &section,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")],
        );
        assert_eq!(
            on,
            Some(Plan {
                traces_url: "http://c:4318/v1/traces".to_owned(),
                endpoint: None,
                sample_ratio: Some(1.0),
                service_name: Some("relaycord-sink".to_owned()),
            })
        );
        let on = TelemetrySection {
            traces: true,
            ..TelemetrySection::default()
        };
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(plan_with(&on, &[off]), None, "{off:?}");
        }
    }

    #[test]
    fn the_standard_variables_win_over_the_file() {
        let section = TelemetrySection {
            traces: true,
            endpoint: "http://file:4318".to_owned(),
            sample_ratio: 0.25,
            service_name: "from-file".to_owned(),
        };
        let from_file = plan_with(&section, &[]).unwrap();
        assert_eq!(
            from_file.endpoint.as_deref(),
            Some("http://file:4318/v1/traces")
        );
        assert_eq!(from_file.sample_ratio, Some(0.25));
        assert_eq!(from_file.service_name.as_deref(), Some("from-file"));
        let from_env = plan_with(
            &section,
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4318/t"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"),
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_RESOURCE_ATTRIBUTES", "a=b, service.name=svc"),
            ],
        )
        .unwrap();
        assert_eq!(from_env.traces_url, "http://env:4318/t");
        assert_eq!(
            (
                from_env.endpoint,
                from_env.sample_ratio,
                from_env.service_name
            ),
            (None, None, None)
        );
    }

    #[test]
    fn unsupported_exporters_and_protocols_are_named() {
        let on = TelemetrySection {
            traces: true,
            ..TelemetrySection::default()
        };
        let error = |vars: HashMap<&str, &str>| {
            plan(&on, "sink", &|name| vars.get(name).map(|v| (*v).to_owned()))
                .unwrap_err()
                .to_string()
        };
        let e = error(HashMap::from([("OTEL_TRACES_EXPORTER", "zipkin")]));
        assert!(
            e.starts_with("OTEL_TRACES_EXPORTER:") && e.contains("otlp"),
            "{e}"
        );
        let e = error(HashMap::from([("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]));
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL:"), "{e}");
    }

    #[test]
    fn section_values_are_checked() {
        let bad_ratio = TelemetrySection {
            sample_ratio: 1.5,
            ..TelemetrySection::default()
        };
        let e = bad_ratio.validate().unwrap_err().to_string();
        assert!(e.starts_with("telemetry.sample_ratio:"), "{e}");
        let bad_url = TelemetrySection {
            endpoint: "collector:4318".to_owned(),
            ..TelemetrySection::default()
        };
        let e = bad_url.validate().unwrap_err().to_string();
        assert!(e.starts_with("telemetry.endpoint:"), "{e}");
        TelemetrySection::default().validate().unwrap();
    }
}
