//! Validation of `PlaceOrder` requests: every field checked and named
//! before an order exists, so the saga only ever runs on well-formed input.

use mesh::proto::shop::orders::v1::{OrderLine, PlaceOrderRequest};
use tonic::Status;

/// Most units of one line.
pub const MAX_QUANTITY: i32 = 1_000;

/// A validated `PlaceOrder`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    /// Makes the call idempotent.
    pub request_id: String,
    /// Who orders.
    pub customer_id: String,
    /// 1 to [`mesh::app::validate::MAX_LINES`] (the saga prices each with a call of its own) lines of distinct SKUs, 1 to [`MAX_QUANTITY`]
    /// units each.
    pub lines: Vec<OrderLine>,
}

impl OrderRequest {
    /// Whether `other` asks for the same order (lines in any order): a
    /// repeated `request_id` must not change what is ordered.
    pub fn same_order(&self, other: &Self) -> bool {
        fn sorted(lines: &[OrderLine]) -> Vec<(&str, i32)> {
            let mut lines: Vec<(&str, i32)> =
                lines.iter().map(|l| (l.sku.as_str(), l.quantity)).collect();
            lines.sort_unstable();
            lines
        }
        self.customer_id == other.customer_id && sorted(&self.lines) == sorted(&other.lines)
    }
}

use mesh::app::validate::required_id as id;

/// Validates a `PlaceOrder` request.
pub fn place_order(request: PlaceOrderRequest) -> Result<OrderRequest, Status> {
    id("request_id", &request.request_id)?;
    id("customer_id", &request.customer_id)?;
    mesh::app::validate::lines(
        request.lines.iter().map(|l| (l.sku.as_str(), l.quantity)),
        MAX_QUANTITY,
    )?;
    Ok(OrderRequest {
        request_id: request.request_id,
        customer_id: request.customer_id,
        lines: request.lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[(&str, i32)]) -> PlaceOrderRequest {
        PlaceOrderRequest {
            request_id: "req-1".into(),
            customer_id: "cus-1".into(),
            lines: lines
                .iter()
                .map(|&(sku, quantity)| OrderLine {
                    sku: sku.into(),
                    quantity,
                })
                .collect(),
        }
    }

    fn error(request: PlaceOrderRequest) -> String {
        let status = place_order(request).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        status.message().to_owned()
    }

    #[test]
    fn a_good_order_passes() {
        let order = place_order(request(&[("a", 1), ("b", MAX_QUANTITY)])).expect("valid");
        assert_eq!(order.lines.len(), 2);
    }

    #[test]
    fn bad_input_names_the_field() {
        let mut no_id = request(&[("a", 1)]);
        no_id.request_id.clear();
        assert!(error(no_id).starts_with("request_id"));
        let mut no_customer = request(&[("a", 1)]);
        no_customer.customer_id.clear();
        assert!(error(no_customer).starts_with("customer_id"));
        assert!(error(request(&[])).starts_with("lines:"));
        assert!(error(request(&[("a", 0)])).starts_with("lines[0].quantity"));
        assert!(error(request(&[("a", MAX_QUANTITY + 1)])).starts_with("lines[0].quantity"));
        assert!(error(request(&[("a", 1), ("a", 2)])).starts_with("lines[1].sku"));
        assert!(error(request(&[("", 1)])).starts_with("lines[0].sku"));
        let many: Vec<String> = (0..=mesh::app::validate::MAX_LINES)
            .map(|i| format!("s{i}"))
            .collect();
        let many: Vec<(&str, i32)> = many.iter().map(|s| (s.as_str(), 1)).collect();
        assert!(error(request(&many)).starts_with("lines:"));
    }

    #[test]
    fn same_order_ignores_line_order() {
        let a = place_order(request(&[("a", 1), ("b", 2)])).expect("valid");
        let b = place_order(request(&[("b", 2), ("a", 1)])).expect("valid");
        let c = place_order(request(&[("a", 1), ("b", 3)])).expect("valid");
        assert!(a.same_order(&b));
        assert!(!a.same_order(&c));
    }
}
