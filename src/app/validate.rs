//! Checks every shop service applies to the ids and order lines in its
//! requests, written once so every service answers a bad one the same way.

use std::collections::HashSet;

use tonic::Status;

/// Longest SKU accepted (the catalog's limit).
pub const MAX_SKU_LEN: usize = 64;

/// Most lines in one order or reservation.
pub const MAX_LINES: usize = 100;

/// A SKU: 1 to [`MAX_SKU_LEN`] printable ASCII characters, no spaces; the
/// error names `field`.
pub fn sku(field: &str, sku: &str) -> Result<(), Status> {
    if sku.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: must not be empty"
        )));
    }
    if sku.len() > MAX_SKU_LEN || !sku.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Status::invalid_argument(format!(
            "{field}: {sku:?} is not a sku (1 to {MAX_SKU_LEN} printable ASCII characters)"
        )));
    }
    Ok(())
}

/// Order lines as `(sku, quantity)`: 1 to [`MAX_LINES`], each a valid SKU
/// with 1 to `max_quantity` units, no SKU twice (the error says to merge
/// them); errors name `lines[i]`.
pub fn lines<'a>(
    lines: impl ExactSizeIterator<Item = (&'a str, i32)>,
    max_quantity: i32,
) -> Result<(), Status> {
    if lines.len() == 0 {
        return Err(Status::invalid_argument(
            "lines: at least one line is needed",
        ));
    }
    if lines.len() > MAX_LINES {
        return Err(Status::invalid_argument(format!(
            "lines: {} lines, at most {MAX_LINES}",
            lines.len()
        )));
    }
    let mut seen = HashSet::new();
    for (i, (s, quantity)) in lines.enumerate() {
        sku(&format!("lines[{i}].sku"), s)?;
        if !(1..=max_quantity).contains(&quantity) {
            return Err(Status::invalid_argument(format!(
                "lines[{i}].quantity: {quantity} is outside 1..={max_quantity}"
            )));
        }
        if !seen.insert(s) {
            return Err(Status::invalid_argument(format!(
                "lines[{i}].sku: {s} appears twice; merge the lines"
            )));
        }
    }
    Ok(())
}

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
