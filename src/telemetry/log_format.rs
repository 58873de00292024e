//! Log lines: `RUST_LOG`-style filters, human or JSON lines on stderr, and
//! the trace id (and span id) of the current OpenTelemetry span on every
//! line written inside one, so a log line leads to its trace in Jaeger and
//! back.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event, for people.
    #[default]
    Text,
    /// One JSON object per event, for log pipelines.
    Json,
}

/// The log layer: filtered by `RUST_LOG` (default `info`) on its own, so
/// the filter decides what is logged, not what is traced. Written to stderr:
/// stdout stays free for output a program is asked for.
pub fn log_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // No ANSI colours: lines are mostly read from files, and the trace id is
    // spliced into the finished line.
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(WithTraceId {
                inner: format::format().with_ansi(false),
                json: false,
            })
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .event_format(WithTraceId {
                inner: format::format().json(),
                json: true,
            })
            .with_filter(filter)
            .boxed(),
    }
}

/// The current OpenTelemetry span's ids as lowercase hex, if there is a
/// valid one (the tracing-opentelemetry layer makes a span's context
/// current while the span is entered).
pub fn current_trace_ids() -> Option<(String, String)> {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// An event format that adds `trace_id` and `span_id` to what `inner`
/// writes: ` trace_id=… span_id=…` at the end of a text line, two more
/// members of a JSON object.
#[derive(Debug, Clone)]
pub struct WithTraceId<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = current_trace_ids() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&splice(line, &trace_id, &span_id, self.json))
    }
}

/// Adds the ids to a finished line (which ends in a newline).
fn splice(mut line: String, trace_id: &str, span_id: &str, json: bool) -> String {
    let newline = line.ends_with('\n');
    if newline {
        line.pop();
    }
    if json {
        // The JSON formatter writes exactly one object; hex ids need no escaping.
        if line.ends_with('}') {
            line.pop();
            let empty = line.ends_with('{');
            line.push_str(&format!(
                "{}\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}",
                if empty { "" } else { "," }
            ));
        }
    } else {
        line.push_str(&format!(" trace_id={trace_id} span_id={span_id}"));
    }
    if newline {
        line.push('\n');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_gets_ids_at_the_end_of_the_line() {
        assert_eq!(
            splice("2024 INFO orders: placed\n".into(), "ab", "cd", false),
            "2024 INFO orders: placed trace_id=ab span_id=cd\n"
        );
    }

    #[test]
    fn json_gets_two_more_members() {
        let line = splice(
            "{\"level\":\"INFO\",\"fields\":{\"message\":\"x\"}}\n".into(),
            "ab",
            "cd",
            true,
        );
        let value: serde_json::Value = serde_json::from_str(&line).expect("still JSON");
        assert_eq!(value["trace_id"], "ab");
        assert_eq!(value["span_id"], "cd");
        assert_eq!(value["fields"]["message"], "x");
        assert!(line.ends_with("}\n"));
        let empty: serde_json::Value =
            serde_json::from_str(&splice("{}".into(), "ab", "cd", true)).expect("JSON");
        assert_eq!(empty["trace_id"], "ab");
    }
}
