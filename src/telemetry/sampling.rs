//! Whether a call gets spans at all, decided before any is made.
//!
//! Making a `tracing` span that the OpenTelemetry SDK then drops still
//! costs its registry slot, its attributes and its context: about a tenth
//! of a proxy hop's CPU. A proxy forwards the caller's `traceparent`
//! untouched anyway, so when nothing would be recorded it makes no span and
//! the trace stays whole: the next hop becomes the caller's child.

use std::sync::OnceLock;

use http::HeaderMap;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;

use super::config::SamplerChoice;
use super::propagation::extract_context;

/// The sampler of the exporting tracer; unset while nothing is exported.
static EXPORTING: OnceLock<SamplerChoice> = OnceLock::new();

/// Called once by `init` when spans are exported with `sampler`.
pub(crate) fn exporting_with(sampler: SamplerChoice) {
    let _ = EXPORTING.set(sampler);
}

/// What a call's trace context says about recording it in this process.
#[derive(Debug)]
pub enum Sampling {
    /// Nothing would be recorded: make no span and pass the caller's trace
    /// context on as it came.
    Skip,
    /// Make spans, children of the caller's context when there is one; the
    /// SDK's sampler has the last word.
    Record(Option<Context>),
}

/// Decides for a call with request `headers`, by the process's sampler:
/// with export off, or a sampler that follows a caller who did not sample,
/// or one that samples nothing, the call is skipped. Only the cheap cases
/// are decided here; whatever needs the SDK (ratios, roots) is recorded and
/// left to it.
pub fn sampling(headers: &HeaderMap) -> Sampling {
    let Some(&sampler) = EXPORTING.get() else {
        return Sampling::Skip;
    };
    decide(sampler, headers)
}

fn decide(sampler: SamplerChoice, headers: &HeaderMap) -> Sampling {
    if sampler == SamplerChoice::AlwaysOff {
        return Sampling::Skip;
    }
    // Parsed only when there is something to parse: most calls of an
    // untraced mesh carry no traceparent.
    let caller = headers
        .contains_key("traceparent")
        .then(|| extract_context(headers))
        .filter(|cx| cx.span().span_context().is_valid());
    let Some(caller) = caller else {
        // A root: only a sampler that starts no traces is sure to drop it.
        return match sampler {
            SamplerChoice::ParentBasedAlwaysOff => Sampling::Skip,
            _ => Sampling::Record(None),
        };
    };
    let follows_caller = matches!(
        sampler,
        SamplerChoice::ParentBasedAlwaysOn
            | SamplerChoice::ParentBasedAlwaysOff
            | SamplerChoice::ParentBasedTraceIdRatio(_)
    );
    if follows_caller && !caller.span().span_context().is_sampled() {
        return Sampling::Skip;
    }
    Sampling::Record(Some(caller))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    fn headers(traceparent: Option<&'static str>) -> HeaderMap {
        // The global propagator is what `extract_context` uses.
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let mut headers = HeaderMap::new();
        if let Some(value) = traceparent {
            headers.insert("traceparent", HeaderValue::from_static(value));
        }
        headers
    }

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    fn recorded(sampling: &Sampling) -> Option<bool> {
        match sampling {
            Sampling::Skip => None,
            Sampling::Record(parent) => Some(parent.is_some()),
        }
    }

    #[test]
    fn a_sampled_caller_is_followed_and_becomes_the_parent() {
        let decision = decide(SamplerChoice::ParentBasedAlwaysOn, &headers(Some(SAMPLED)));
        assert_eq!(recorded(&decision), Some(true));
        let Sampling::Record(Some(parent)) = decision else {
            unreachable!()
        };
        assert_eq!(
            parent.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn a_caller_that_did_not_sample_is_skipped_by_parent_based_samplers_only() {
        let h = headers(Some(UNSAMPLED));
        assert_eq!(
            recorded(&decide(SamplerChoice::ParentBasedAlwaysOn, &h)),
            None
        );
        assert_eq!(
            recorded(&decide(SamplerChoice::ParentBasedTraceIdRatio(1.0), &h)),
            None
        );
        assert_eq!(recorded(&decide(SamplerChoice::AlwaysOn, &h)), Some(true));
        assert_eq!(
            recorded(&decide(SamplerChoice::TraceIdRatio(0.5), &h)),
            Some(true)
        );
    }

    #[test]
    fn roots_are_left_to_the_sdk_unless_nothing_would_be_recorded() {
        let none = headers(None);
        assert_eq!(
            recorded(&decide(SamplerChoice::ParentBasedAlwaysOn, &none)),
            Some(false)
        );
        assert_eq!(
            recorded(&decide(SamplerChoice::ParentBasedTraceIdRatio(0.1), &none)),
            Some(false)
        );
        assert_eq!(
            recorded(&decide(SamplerChoice::ParentBasedAlwaysOff, &none)),
            None
        );
        assert_eq!(
            recorded(&decide(SamplerChoice::AlwaysOff, &headers(Some(SAMPLED)))),
            None
        );
        let garbage = headers(Some("not a traceparent"));
        assert_eq!(
            recorded(&decide(SamplerChoice::ParentBasedAlwaysOn, &garbage)),
            Some(false)
        );
    }
}
