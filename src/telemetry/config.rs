//! What the standard `OTEL_*` variables ask of tracing, read once at
//! start-up. Pure: the environment comes in as a lookup function, so the
//! rules are plain unit tests.
//!
//! Per the OpenTelemetry configuration spec, a bad value is reported and
//! replaced by its default; it never stops the process.

use opentelemetry_sdk::trace::Sampler;

/// The span queue's bound when `OTEL_BSP_MAX_QUEUE_SIZE` does not say
/// (the spec's default).
pub const DEFAULT_QUEUE_SIZE: usize = 2048;

/// Where spans go when nothing says otherwise (the OTLP spec's gRPC default).
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4317";

/// The sampler named by `OTEL_TRACES_SAMPLER` (and `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    /// Sample every trace, ignoring the caller's decision.
    AlwaysOn,
    /// Sample nothing.
    AlwaysOff,
    /// Sample this share of traces by trace id, ignoring the caller.
    TraceIdRatio(f64),
    /// Follow the caller; sample every trace this process starts.
    ParentBasedAlwaysOn,
    /// Follow the caller; sample no trace this process starts.
    ParentBasedAlwaysOff,
    /// Follow the caller; sample this share of the traces this process starts.
    ParentBasedTraceIdRatio(f64),
}

impl SamplerChoice {
    /// The SDK sampler.
    pub fn sampler(self) -> Sampler {
        let parent_based = |root: Sampler| Sampler::ParentBased(Box::new(root));
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
            Self::ParentBasedAlwaysOn => parent_based(Sampler::AlwaysOn),
            Self::ParentBasedAlwaysOff => parent_based(Sampler::AlwaysOff),
            Self::ParentBasedTraceIdRatio(ratio) => parent_based(Sampler::TraceIdRatioBased(ratio)),
        }
    }
}

/// Tracing as the environment (and the binary's flags) configure it.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// Whether spans are exported at all.
    pub enabled: bool,
    /// An endpoint given on the command line: it beats the environment.
    /// `None` lets the exporter read `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    /// then `OTEL_EXPORTER_OTLP_ENDPOINT`, then use the default.
    pub endpoint_override: Option<String>,
    /// Where spans go, for the start-up log line.
    pub endpoint: String,
    /// `service.name` of every span.
    pub service_name: String,
    /// Whether the resource already names the service (so the binary's
    /// name must not override it).
    pub service_name_from_env: bool,
    /// Which traces are recorded.
    pub sampler: SamplerChoice,
    /// Most spans waiting for export; past it spans are dropped (and counted).
    pub queue_size: usize,
    /// Bad or unsupported settings, to log once logging works.
    pub warnings: Vec<String>,
}

impl TraceSettings {
    /// Reads the settings through `env` (normally `std::env::var`).
    /// `service` is the binary's name, used when neither
    /// `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names the service;
    /// `endpoint_flag` is a `--otlp-endpoint` override.
    pub fn from_env(
        service: &str,
        endpoint_flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let var = |name: &str| {
            env(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut warnings = Vec::new();

        let endpoint_override = endpoint_flag
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned);
        let env_endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let endpoint_configured = endpoint_override.is_some() || env_endpoint.is_some();
        let endpoint = endpoint_override
            .clone()
            .or(env_endpoint)
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());

        let sdk_disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let exporters: Vec<String> = var("OTEL_TRACES_EXPORTER")
            .map(|v| {
                v.split(',')
                    .map(|e| e.trim().to_ascii_lowercase())
                    .filter(|e| !e.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        for other in exporters
            .iter()
            .filter(|e| !matches!(e.as_str(), "otlp" | "none"))
        {
            warnings.push(format!(
                "OTEL_TRACES_EXPORTER={other} is not supported (only otlp over gRPC); ignoring it"
            ));
        }
        if let Some(protocol) = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .filter(|p| p != "grpc")
        {
            warnings.push(format!(
                "OTLP protocol {protocol:?} is not supported; exporting over grpc"
            ));
        }
        let enabled = !sdk_disabled
            && !exporters.iter().any(|e| e == "none")
            && (endpoint_configured || exporters.iter().any(|e| e == "otlp"));

        let named_in_resource = var("OTEL_RESOURCE_ATTRIBUTES").and_then(|attrs| {
            attrs.split(',').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                (key.trim() == "service.name" && !value.trim().is_empty())
                    .then(|| value.trim().to_owned())
            })
        });
        let from_env = var("OTEL_SERVICE_NAME").or(named_in_resource);
        let service_name_from_env = from_env.is_some();
        let service_name = from_env.unwrap_or_else(|| service.to_owned());

        let sampler = sampler(
            var("OTEL_TRACES_SAMPLER"),
            var("OTEL_TRACES_SAMPLER_ARG"),
            &mut warnings,
        );

        let queue_size = match var("OTEL_BSP_MAX_QUEUE_SIZE") {
            None => DEFAULT_QUEUE_SIZE,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    warnings.push(format!(
                        "OTEL_BSP_MAX_QUEUE_SIZE={v:?} is not a positive integer; using {DEFAULT_QUEUE_SIZE}"
                    ));
                    DEFAULT_QUEUE_SIZE
                }
            },
        };

        Self {
            enabled,
            endpoint_override,
            endpoint,
            service_name,
            service_name_from_env,
            sampler,
            queue_size,
            warnings,
        }
    }
}

fn sampler(name: Option<String>, arg: Option<String>, warnings: &mut Vec<String>) -> SamplerChoice {
    let mut ratio = || match arg.as_deref().map(str::parse::<f64>) {
        Some(Ok(r)) if (0.0..=1.0).contains(&r) => r,
        None => 1.0,
        Some(_) => {
            warnings.push(format!(
                "OTEL_TRACES_SAMPLER_ARG={:?} is not a ratio between 0 and 1; using 1.0",
                arg.as_deref().unwrap_or_default()
            ));
            1.0
        }
    };
    match name.map(|n| n.to_ascii_lowercase()).as_deref() {
        None | Some("parentbased_always_on") => SamplerChoice::ParentBasedAlwaysOn,
        Some("always_on") => SamplerChoice::AlwaysOn,
        Some("always_off") => SamplerChoice::AlwaysOff,
        Some("traceidratio") => SamplerChoice::TraceIdRatio(ratio()),
        Some("parentbased_always_off") => SamplerChoice::ParentBasedAlwaysOff,
        Some("parentbased_traceidratio") => SamplerChoice::ParentBasedTraceIdRatio(ratio()),
        Some(other) => {
            warnings.push(format!(
                "OTEL_TRACES_SAMPLER={other} is not supported; using parentbased_always_on"
            ));
            SamplerChoice::ParentBasedAlwaysOn
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)], flag: Option<&str>) -> TraceSettings {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TraceSettings::from_env("orders", flag, |name| vars.get(name).cloned())
    }

    #[test]
    fn off_unless_an_endpoint_or_the_exporter_asks() {
        let s = settings(&[], None);
        assert!(!s.enabled);
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert!(s.warnings.is_empty());

        assert!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://j:4317")], None).enabled);
        assert!(
            settings(
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://j:4317")],
                None
            )
            .enabled
        );
        assert!(settings(&[("OTEL_TRACES_EXPORTER", "otlp")], None).enabled);
        let flagged = settings(&[], Some("http://flag:4317"));
        assert!(flagged.enabled);
        assert_eq!(
            flagged.endpoint_override.as_deref(),
            Some("http://flag:4317")
        );
    }

    #[test]
    fn flag_beats_environment_and_off_switches_win() {
        let s = settings(
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317")],
            Some("http://flag:4317"),
        );
        assert_eq!(s.endpoint, "http://flag:4317");
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            let s = settings(
                &[off, ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317")],
                Some("x"),
            );
            assert!(!s.enabled, "{off:?} turns tracing off");
        }
        assert!(
            settings(
                &[
                    ("OTEL_SDK_DISABLED", "false"),
                    ("OTEL_TRACES_EXPORTER", "otlp")
                ],
                None
            )
            .enabled
        );
    }

    #[test]
    fn service_name_from_env_then_resource_then_binary() {
        assert_eq!(settings(&[], None).service_name, "orders");
        assert!(!settings(&[], None).service_name_from_env);
        let s = settings(
            &[("OTEL_RESOURCE_ATTRIBUTES", "a=b, service.name=shop-orders")],
            None,
        );
        assert_eq!(s.service_name, "shop-orders");
        assert!(s.service_name_from_env);
        let s = settings(
            &[
                ("OTEL_SERVICE_NAME", "orders-eu"),
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=shop-orders"),
            ],
            None,
        );
        assert_eq!(s.service_name, "orders-eu");
    }

    #[test]
    fn samplers_by_name_with_ratio() {
        let choice = |vars: &[(&str, &str)]| settings(vars, None).sampler;
        assert_eq!(choice(&[]), SamplerChoice::ParentBasedAlwaysOn);
        assert_eq!(
            choice(&[("OTEL_TRACES_SAMPLER", "always_on")]),
            SamplerChoice::AlwaysOn
        );
        assert_eq!(
            choice(&[("OTEL_TRACES_SAMPLER", "always_off")]),
            SamplerChoice::AlwaysOff
        );
        assert_eq!(
            choice(&[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25")
            ]),
            SamplerChoice::TraceIdRatio(0.25)
        );
        assert_eq!(
            choice(&[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.1")
            ]),
            SamplerChoice::ParentBasedTraceIdRatio(0.1)
        );
        assert_eq!(
            choice(&[("OTEL_TRACES_SAMPLER", "parentbased_always_off")]),
            SamplerChoice::ParentBasedAlwaysOff
        );
    }

    #[test]
    fn bad_values_warn_and_fall_back() {
        let s = settings(
            &[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
                ("OTEL_TRACES_EXPORTER", "zipkin"),
            ],
            None,
        );
        assert_eq!(s.sampler, SamplerChoice::ParentBasedTraceIdRatio(1.0));
        assert_eq!(s.queue_size, DEFAULT_QUEUE_SIZE);
        assert!(
            !s.enabled,
            "an unsupported exporter alone does not turn tracing on"
        );
        assert_eq!(s.warnings.len(), 3, "{:?}", s.warnings);

        let s = settings(&[("OTEL_TRACES_SAMPLER", "xray")], None);
        assert_eq!(s.sampler, SamplerChoice::ParentBasedAlwaysOn);
        assert_eq!(s.warnings.len(), 1);
        assert_eq!(
            settings(&[("OTEL_BSP_MAX_QUEUE_SIZE", "64")], None).queue_size,
            64
        );
    }
}
