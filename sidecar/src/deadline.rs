//! The `grpc-timeout` header (gRPC over HTTP/2 spec: `TimeoutValue` of at
//! most 8 digits, then a unit H, M, S, m, u or n).

use std::time::Duration;

use http::HeaderValue;

/// The header's name.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Parses a `grpc-timeout` value; `None` if malformed (the spec says to
/// treat that as no timeout rather than fail the call).
pub fn parse(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Encodes `timeout` in the finest unit that fits in 8 digits, rounding
/// up so the upstream never gets more time than is left.
pub fn encode(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos().max(1);
    let units: [(u128, &str); 6] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
        (3_600_000_000_000, "H"),
    ];
    for (scale, unit) in units {
        let amount = nanos.div_ceil(scale);
        if amount <= MAX {
            return HeaderValue::from_str(&format!("{amount}{unit}"))
                .unwrap_or_else(|_| HeaderValue::from_static("99999999H"));
        }
    }
    HeaderValue::from_static("99999999H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_refuses_garbage() {
        let p = |s: &str| parse(&HeaderValue::from_str(s).unwrap());
        assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(p("2M"), Some(Duration::from_secs(120)));
        assert_eq!(p("3S"), Some(Duration::from_secs(3)));
        assert_eq!(p("250m"), Some(Duration::from_millis(250)));
        assert_eq!(p("7u"), Some(Duration::from_micros(7)));
        assert_eq!(p("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S"] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn encodes_in_eight_digits_rounding_up() {
        assert_eq!(encode(Duration::from_millis(200)), "200000u");
        assert_eq!(encode(Duration::from_nanos(1500)), "1500n");
        assert_eq!(encode(Duration::from_secs(7200)), "7200000m");
        let back = parse(&encode(Duration::from_millis(123_456_789))).unwrap();
        assert!(back >= Duration::from_millis(123_456_789));
    }
}
