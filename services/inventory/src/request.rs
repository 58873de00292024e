//! Validation of incoming requests: every field checked and named before
//! the store sees it, so the store deals only in well-formed values.

use mesh::proto::shop::inventory::v1::{ReservationLine, ReserveRequest};
use tonic::Status;

use crate::store::{Line, MAX_STOCK};

pub use mesh::app::validate::sku;

/// Most units of one line.
pub const MAX_QUANTITY: i32 = 100_000;

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

/// The lines of a reserve request: 1 to [`mesh::app::validate::MAX_LINES`] distinct SKUs, each
/// with 1 to [`MAX_QUANTITY`] units.
pub fn reserve_lines(request: &ReserveRequest) -> Result<Vec<Line>, Status> {
    id("request_id", &request.request_id)?;
    mesh::app::validate::lines(
        request.lines.iter().map(|l| (l.sku.as_str(), l.quantity)),
        MAX_QUANTITY,
    )?;
    Ok(request
        .lines
        .iter()
        .map(|ReservationLine { sku, quantity }| Line {
            sku: sku.clone(),
            quantity: i64::from(*quantity),
        })
        .collect())
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
        let too_many: Vec<(String, i32)> = (0..=mesh::app::validate::MAX_LINES)
            .map(|i| (format!("s{i}"), 1))
            .collect();
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
