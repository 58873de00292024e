//! Validation of incoming requests: every field checked and named before
//! the store sees it, so the store deals only in well-formed values.

use std::collections::HashSet;

use mesh::proto::shop::inventory::v1::{ReservationLine, ReserveRequest};
use tonic::Status;

use crate::store::{Line, MAX_STOCK};

/// Longest SKU accepted (the catalog's limit).
pub const MAX_SKU_LEN: usize = 64;
/// Most lines in one reservation.
pub const MAX_LINES: usize = 100;
/// Most units of one line.
pub const MAX_QUANTITY: i32 = 100_000;

/// Checks a SKU: 1 to [`MAX_SKU_LEN`] printable ASCII characters, no spaces.
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

/// Checks an id chosen by a caller or by us: non-empty and bounded.
pub fn id(field: &str, id: &str) -> Result<(), Status> {
    mesh::app::validate::required_id(field, id)
}

/// Checks a stock adjustment's delta against the stock bound.
pub fn delta(delta: i64) -> Result<(), Status> {
    if (-MAX_STOCK..=MAX_STOCK).contains(&delta) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "delta: {delta} is outside -{MAX_STOCK}..={MAX_STOCK}"
        )))
    }
}

/// The lines of a reserve request: 1 to [`MAX_LINES`] distinct SKUs, each
/// with 1 to [`MAX_QUANTITY`] units.
pub fn reserve_lines(request: &ReserveRequest) -> Result<Vec<Line>, Status> {
    id("request_id", &request.request_id)?;
    if request.lines.is_empty() {
        return Err(Status::invalid_argument(
            "lines: at least one line is needed",
        ));
    }
    if request.lines.len() > MAX_LINES {
        return Err(Status::invalid_argument(format!(
            "lines: {} lines, at most {MAX_LINES}",
            request.lines.len()
        )));
    }
    let mut seen = HashSet::new();
    request
        .lines
        .iter()
        .enumerate()
        .map(|(i, ReservationLine { sku: s, quantity })| {
            sku(&format!("lines[{i}].sku"), s)?;
            if !(1..=MAX_QUANTITY).contains(quantity) {
                return Err(Status::invalid_argument(format!(
                    "lines[{i}].quantity: {quantity} is outside 1..={MAX_QUANTITY}"
                )));
            }
            if !seen.insert(s.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "lines[{i}].sku: {s} appears twice; merge the lines"
                )));
            }
            Ok(Line {
                sku: s.clone(),
                quantity: i64::from(*quantity),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[(&str, i32)]) -> ReserveRequest {
        ReserveRequest {
            request_id: "req-1".into(),
            lines: lines
                .iter()
                .map(|&(sku, quantity)| ReservationLine {
                    sku: sku.into(),
                    quantity,
                })
                .collect(),
        }
    }

    fn message(lines: &[(&str, i32)]) -> String {
        reserve_lines(&request(lines))
            .unwrap_err()
            .message()
            .to_owned()
    }

    #[test]
    fn good_lines_pass() {
        let lines = reserve_lines(&request(&[("a", 1), ("b", 2)])).expect("valid");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].quantity, 2);
    }

    #[test]
    fn bad_lines_name_the_field() {
        assert!(message(&[]).starts_with("lines:"));
        assert!(message(&[("a", 0)]).starts_with("lines[0].quantity"));
        assert!(message(&[("a", 1), ("", 1)]).starts_with("lines[1].sku"));
        assert!(message(&[("a", 1), ("a", 1)]).starts_with("lines[1].sku"));
        let too_many: Vec<(String, i32)> = (0..=MAX_LINES).map(|i| (format!("s{i}"), 1)).collect();
        let too_many: Vec<(&str, i32)> = too_many.iter().map(|(s, q)| (s.as_str(), *q)).collect();
        assert!(message(&too_many).starts_with("lines:"));
        let mut no_id = request(&[("a", 1)]);
        no_id.request_id.clear();
        assert!(reserve_lines(&no_id)
            .unwrap_err()
            .message()
            .starts_with("request_id"));
    }
}
