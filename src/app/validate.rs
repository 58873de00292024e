//! Checks every shop service applies to the ids in its requests, written
//! once so every service answers a bad one the same way.

use tonic::Status;

/// Longest id or key a request may carry (request ids, order, payment and
/// reservation ids, idempotency keys).
pub const MAX_ID_LEN: usize = 128;

/// A required id: non-empty and at most [`MAX_ID_LEN`] bytes; the error
/// names `field`.
pub fn required_id(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: must not be empty"
        )));
    }
    optional_id(field, value)
}

/// An optional id: empty, or at most [`MAX_ID_LEN`] bytes.
pub fn optional_id(field: &str, value: &str) -> Result<(), Status> {
    if value.len() > MAX_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "{field}: longer than {MAX_ID_LEN} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_required_and_bounded() {
        assert!(required_id("request_id", "r1").is_ok());
        assert!(required_id("request_id", "")
            .unwrap_err()
            .message()
            .starts_with("request_id:"));
        assert!(optional_id("reference", "").is_ok());
        assert!(optional_id("reference", &"x".repeat(MAX_ID_LEN + 1)).is_err());
    }
}
